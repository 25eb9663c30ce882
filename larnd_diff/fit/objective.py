"""The objective: what the fit minimises — the loss between the model's hits and the target's, per batch.

Parts (each a small object with its own options):

* :class:`Model`: the differentiable simulator as the fit uses it (framework, dtype, device, relaxation, the
  parameters held fixed, whether vdrift follows eField, Monte-Carlo noise in the model).
* :class:`SimulatedTarget` (closures: hits simulated once per batch from true parameter values, by the fit's
  own simulator or the Numba reference, with or without electronics noise) and :class:`DataTarget` (hits of
  data, cut per batch).
* :class:`HitsLoss`: a loss of :mod:`larnd_diff.losses` (or any ``loss(model_hits, target_hits)``) on the
  model's hits.
* :class:`Objective`: the segments packed into batches of whole tracks (:func:`larnd_diff.selection.make_batches`),
  the target of each batch (cached), and the batch loss at given parameter values.

Randomness (noise seeds) derives from the objective's ``seed`` and the position in the fit (:func:`derived_seed`),
so the position is the whole random state: nothing else needs saving for a bit-identical resume.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from ..hits import Hits
from ..params import SPECS
from .options import Option, parse_loss_scales

__all__ = ["Model", "SimulatedTarget", "DataTarget", "HitsLoss", "Objective", "derived_seed", "resolve_loss",
           "resolve_relaxation", "content_hash"]


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple (stable across runs and platforms; no global RNG)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def content_hash(*arrays) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes (a fit's fingerprint covers the content of its inputs)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype.descr if a.dtype.names else a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def resolve_relaxation(relaxation):
    """A relaxation preset name or Relaxation; "smooth-continuous" is the smooth preset with real-valued ADC and
    the sigmoid onset in the value too (a continuous loss, as central differences need)."""
    from ..sim.config import PRESETS, SMOOTH

    if isinstance(relaxation, str) and relaxation == "smooth-continuous" and relaxation not in PRESETS:
        return SMOOTH.replace(adc="continuous", onset="soft")
    return relaxation


def resolve_loss(loss) -> Callable:
    """A loss callable ``loss(sim_hits, target_hits) -> scalar`` from a callable or a name in larnd_diff.losses."""
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
    from .. import losses as _losses

    for candidate in (loss, f"{loss}_loss"):  # "sdtw_adc" -> losses.sdtw_adc_loss
        fn = getattr(_losses, candidate, None)
        if callable(fn) and candidate in getattr(_losses, "__all__", [candidate]):
            return fn
    known = sorted(n[:-5] for n in getattr(_losses, "__all__", []) if n.endswith("_loss"))
    raise KeyError(f"unknown loss {loss!r}; known: {known} (or pass a callable loss(sim_hits, target_hits))")


def _unwrap(x):
    return getattr(x, "raw", x)


def _pixel_keys(pixels) -> np.ndarray:
    """One int64 per pixel (I, J)."""
    pixels = np.asarray(pixels, np.int64).reshape(-1, 2)
    return (pixels[:, 0] << 20) | pixels[:, 1]


# ============================================================================================== model
def _simulate(segments, params, *, backend, dtype, device, relaxation, noise, seed):
    from ..api import simulate

    return simulate(segments, backend=backend, device=device, params=params, noise=noise,
                    relaxation=resolve_relaxation(relaxation), dtype=dtype, seed=seed)


@dataclass(frozen=True)
class Model:
    """The differentiable simulator of the fit. ``simulator`` replaces it by a stand-in with the signature of
    :func:`larnd_diff.fit.toy.toy_simulator` (tests, demos). ``readout``: (n, 2) pixel ids (I, J) that the
    target's detector reads out (:func:`larnd_diff.packets.readout_pixels`); the model's rows on other pixels are
    dropped, since data say nothing about them (None: every pixel is read out)."""

    backend: str = "torch"
    dtype: str = "float64"
    device: Any = None
    relaxation: Any = "smooth"
    link_vdrift: bool = False
    fixed: Mapping[str, float] = field(default_factory=dict)
    noise: bool = False
    simulator: Optional[Callable] = None
    readout: Optional[Any] = field(default=None, compare=False)

    OPTIONS = (
        Option("backend", "--backend", "framework of the differentiable simulator"),
        Option("device", "--device", "framework device (cpu, cuda:0, ...)"),
        Option("dtype", "--dtype", "float64 or float32", choices=("float64", "float32")),
        Option("relaxation", "--relaxation", "simulator relaxation: smooth (the reference's values: hard current "
               "onset, integer ADC; straight-through gradients), smooth-continuous (real-valued ADC and sigmoid "
               "onset in the value), continuous (smooth-continuous with linear pad edges, fixed z step and averaged "
               "tick phases: every value continuous in the parameters, not larnd-sim's), hard",
               choices=("smooth", "smooth-continuous", "continuous", "hard")),
        Option("link_vdrift", "--link-vdrift", "drift velocity follows eField through the mobility model (default: "
               "on when eField is fitted; unlinked, kb and eField are degenerate: they enter recombination only as "
               "kb/eField)", action="store_optional_bool"),
        Option("model_noise", "--model-noise", "simulate the model with electronics noise (Monte Carlo, a new "
               "seed every iteration)", action="store_true"),
        Option("fixed", "", "values of parameters held fixed (default nominal)"),
        Option("simulator", "", "a stand-in simulator (the signature of larnd_diff.fit.toy.toy_simulator)"),
        Option("readout", "", "(n, 2) pixel ids the target's detector reads out; model rows elsewhere are dropped"),
    )

    def keywords(self) -> dict:
        out = {"backend": self.backend, "dtype": self.dtype, "link_vdrift": self.link_vdrift,
               "fixed": dict(self.fixed), "model_noise": self.noise,
               "relaxation": self.relaxation if isinstance(self.relaxation, str) else repr(self.relaxation)}
        if self.readout is not None:
            out["readout_sha256"] = content_hash(np.asarray(self.readout, np.int64))
        return out

    def read_out(self, pixels) -> Optional[np.ndarray]:
        """Boolean mask of the rows whose pixels (n, 2) are read out, or None when every pixel is."""
        if self.readout is None:
            return None
        return np.isin(_pixel_keys(pixels), _pixel_keys(self.readout))

    def params(self, fitted: Mapping[str, Any]):
        """The parameter mapping handed to the simulator: fitted values (floats or tensors) + fixed ones."""
        values = {**dict(self.fixed), **dict(fitted)}
        if self.link_vdrift:
            from ..params import Params

            return Params(values, link_vdrift=True)
        return values

    def hits(self, segments, fitted: Mapping[str, Any], *, noise: bool, seed: int) -> Hits:
        sim = self.simulator or _simulate
        out = sim(segments, self.params(fitted), backend=self.backend, dtype=self.dtype, device=self.device,
                  relaxation=self.relaxation, noise=noise, seed=seed)
        if self.readout is None:
            return out
        from ..ops import to_numpy

        keep = self.read_out(np.asarray(to_numpy(out.pixel)))  # host-side pixel ids only: adc may be traced (jax)
        if keep.all():
            return out
        from ..ops import gather

        index = np.flatnonzero(keep)
        return Hits(**{f: None if getattr(out, f) is None else _unwrap(gather(getattr(out, f), index, 0))
                       for f in ("event_id", "pixel", "adc", "time", "charge", "backtrack")})

    def waveforms(self, segments, fitted: Mapping[str, Any], *, chunk_size=None):
        """The noiseless induced charge per tick of every pixel row, (n_rows, n_ticks) electrons (a framework
        tensor that carries the autodiff graph), with the rows' pixel ids (n_rows, 2) and event ids (NumPy)."""
        from ..sim import simulate
        from ..sim.config import SimConfig

        config = SimConfig(relaxation=resolve_relaxation(self.relaxation), dtype=self.dtype, chunk_size=chunk_size)
        _, charge, plan = simulate(segments, backend=self.backend, device=self.device, params=self.params(fitted),
                                   config=config, return_waveforms=True)
        keep = self.read_out(plan.rows)
        if keep is None or keep.all():
            return charge, plan.rows, plan.row_event
        from ..ops import gather

        index = np.flatnonzero(keep)
        return _unwrap(gather(charge, index, 0)), np.asarray(plan.rows)[index], np.asarray(plan.row_event)[index]

    def to_backend(self, hits: Hits) -> Hits:
        """NumPy hits -> this model's tensors (floats in the fit's dtype, ids as int64)."""
        from ..ops import get_backend

        b = get_backend(self.backend)
        h = hits.numpy()
        conv = {}
        for name in ("event_id", "pixel", "adc", "time", "charge", "backtrack"):
            v = getattr(h, name)
            if v is None:
                conv[name] = None
                continue
            dt = self.dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else "int64"
            conv[name] = b.raw_asarray(np.asarray(v), dt, self.device)
        return Hits(**conv)


# ============================================================================================== targets
@dataclass(frozen=True)
class SimulatedTarget:
    """A closure's target: hits simulated once per batch with the true parameter ``values`` (those not given:
    nominal), by ``simulator`` "same" (the fit's own model) or "reference" (the Numba oracle, larnd-sim's
    semantics), with electronics ``noise`` (one fixed realisation per batch)."""

    values: Mapping[str, float]
    simulator: str = "same"
    noise: bool = False
    precision: str = "float64"
    chunk_size: Optional[int] = 600

    OPTIONS = (
        Option("target_simulator", "--target-simulator", "simulate parameter targets with the fit's simulator "
               "(same) or the Numba reference", choices=("same", "reference")),
        Option("target_noise", "--target-noise", "simulated targets with electronics noise", action="store_true"),
        Option("target_precision", "--target-precision", "arithmetic of a reference-simulated target: larnd-sim "
               "(its float32 map, as the real code) or float64", choices=("larnd-sim", "float64")),
    )

    def __post_init__(self):
        if self.simulator not in ("same", "reference"):
            raise ValueError(f"target_simulator must be 'same' or 'reference', got {self.simulator!r}")

    def keywords(self) -> dict:
        return {"target": dict(self.values), "target_simulator": self.simulator, "target_noise": self.noise,
                "target_precision": self.precision, "target_chunk_size": self.chunk_size}

    def hits(self, model: Model, batches, b: int, seed: int) -> Hits:
        segs = batches[b]
        noise_seed = derived_seed(seed, "target", b)
        if self.simulator == "reference":
            from ..api import simulate

            return simulate(segs, backend="reference", params=model.params(self.values), noise=self.noise,
                            seed=noise_seed, precision=self.precision, chunk_size=self.chunk_size)
        return model.hits(segs, self.values, noise=self.noise, seed=noise_seed).numpy()


@dataclass(frozen=True)
class DataTarget:
    """Hits of data. The rows of a batch are the rows whose backtracked segments lie in the batch when
    ``backtrack`` is present, else the rows of the batch's events."""

    data: Hits

    def keywords(self) -> dict:
        d = self.data.numpy()
        return {"target": None, "target_sha256": content_hash(d.event_id, d.pixel, d.adc, d.time)}

    def hits(self, model: Model, batches, b: int, seed: int) -> Hits:
        if self.data.backtrack is not None:
            bt = np.asarray(self.data.backtrack)
            mask = np.isin(bt, batches.rows(b)).reshape(len(bt), -1).any(axis=1)
        else:
            mask = np.isin(np.asarray(self.data.event_id), np.unique(batches[b]["eventID"]))
        return self.data.select(mask)


# ============================================================================================== loss
@dataclass(frozen=True)
class HitsLoss:
    """A loss on the model's hits: a name of :mod:`larnd_diff.losses` (with keyword ``options``) or a callable
    ``loss(model_hits, target_hits) -> scalar``."""

    loss: Any = "sdtw_adc"
    options: Mapping[str, Any] = field(default_factory=dict)

    OPTIONS = (
        Option("loss", "--loss", "a loss of larnd_diff.losses, e.g. sdtw_adc (the paper's), sdtw (x, y, t, ADC), "
               "chamfer, mmd"),
        Option("loss_options", "--loss-scales", "feature scales of the sdtw/chamfer/mmd losses, e.g. adc=1.5,t=0.3 "
               "(x, y in cm, t in us, adc in counts)", parse=parse_loss_scales, metavar="F=S,..."),
    )

    @property
    def name(self) -> str:
        return self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", repr(self.loss))

    def keywords(self) -> dict:
        return {"loss": self.name, "loss_options": {k: (dict(v) if isinstance(v, Mapping) else v)
                                                    for k, v in dict(self.options).items()}}

    @functools.cached_property
    def function(self) -> Callable:
        fn = resolve_loss(self.loss)
        return functools.partial(fn, **dict(self.options)) if self.options else fn

    def __call__(self, model: Model, segments, fitted, target: Hits, *, noise_seed: int):
        sim = model.hits(segments, fitted, noise=model.noise, seed=noise_seed)
        return _unwrap(self.function(sim, target))


# ============================================================================================== objective
class Objective:
    """The segments in batches, their targets (cached: simulated or cut once) and the batch loss.

    ``loss(b, fitted, noise_seed)`` is the loss of batch ``b`` with the fitted parameters ``fitted`` (physical
    values: floats or framework scalars that carry the autodiff graph), a raw framework scalar.
    """

    def __init__(self, segments, target, model: Model, loss=None, *, batch_length_cm: float = 100.0,
                 seed: int = 0):
        from ..selection import make_batches

        if len(segments) == 0:
            raise ValueError("no segments to fit")
        self.segments, self.model = segments, model
        self.target = target if isinstance(target, (SimulatedTarget, DataTarget)) else DataTarget(target)
        self.loss_part = loss if loss is not None else HitsLoss()
        self.seed, self.batch_length_cm = int(seed), float(batch_length_cm)
        self.batches = make_batches(segments, length_cm=batch_length_cm, seed=self.seed)
        self._targets: Dict[int, Hits] = {}
        self._target_owner: Optional["Objective"] = None

    def share_targets(self, owner: "Objective") -> None:
        """Take the target hits from ``owner`` (simulated once, by ``owner``'s model): a warm-up stage on another
        relaxation fits the same target as the main stage (larnd_diff/fit/stages.py)."""
        if owner.batches.lengths_cm.shape != self.batches.lengths_cm.shape or not np.array_equal(
                owner.batches.lengths_cm, self.batches.lengths_cm):
            raise ValueError("share_targets: the two objectives batch the segments differently")
        if (owner.model.dtype, owner.model.device, owner.model.backend) != (self.model.dtype, self.model.device,
                                                                           self.model.backend):
            raise ValueError("share_targets: the two models differ in framework, dtype or device")
        self._target_owner = owner

    @property
    def n_batches(self) -> int:
        return len(self.batches)

    @property
    def true_values(self) -> Optional[Dict[str, float]]:
        """The target's parameter values when it is simulated (closures), else None."""
        return dict(self.target.values) if isinstance(self.target, SimulatedTarget) else None

    def target_hits(self, b: int) -> Hits:
        if self._target_owner is not None:
            return self._target_owner.target_hits(b)
        if b not in self._targets:
            self._targets[b] = self.model.to_backend(self.target.hits(self.model, self.batches, b, self.seed))
        return self._targets[b]

    def loss(self, b: int, fitted: Mapping[str, Any], noise_seed: int = 0):
        target = self.target_hits(b)
        return self.loss_part(self.model, self.batches[b], fitted, target, noise_seed=noise_seed)

    def model_seed(self, epoch: int, b: int) -> int:
        return derived_seed(self.seed, "model", epoch, b)

    def keywords(self) -> dict:
        return {"seed": self.seed, "batch_length_cm": self.batch_length_cm, "n_batches": self.n_batches,
                "segments_sha256": content_hash(self.segments), **self.model.keywords(),
                **self.loss_part.keywords(), **self.target.keywords()}


def true_values(target: Mapping[str, float], names) -> Dict[str, float]:
    """A closure's target values: every fitted parameter nominal unless given."""
    values = {n: float(SPECS[n].nominal) for n in names}
    values.update({k: float(v) for k, v in target.items()})
    return values
