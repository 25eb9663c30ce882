"""Calibration: fit detector parameters by gradient descent so that simulated hits match target hits.

    import larnd_diff as ld
    from larnd_diff.fit import fit
    segs = ld.generate_muons(n_events=20, seed=1)
    res = fit(segs, target={"Ab": 0.85, "lifetime": 3000.0}, params=("Ab", "lifetime"), max_iter=300,
              checkpoint_dir="fit_out")
    res.params, res.relative_error(), res.correlation

The recipe (the paper's, arXiv 2309.04639, unless said otherwise)
------------------------------------------------------------------
* **Parameters** are fitted in normalised form: the optimiser sees ``p / nominal`` (so every parameter starts
  near 1 and one learning rate fits all). Any subset of :data:`~larnd_diff.params.PARAMETERS` can be fitted;
  ``fixed`` sets the others (default nominal). ``init`` gives the start (default nominal).
* **Batches** are whole tracks packed into ~``batch_length_cm`` of track
  (:func:`larnd_diff.selection.make_batches`,
  a fixed partition); every epoch visits all batches in a seeded order (``Batches.epoch_order``). One iteration =
  one batch = one optimiser step.
* **Target.** Either a :class:`~larnd_diff.hits.Hits` (data; the rows of a batch are the rows whose backtracked
  segments lie in the batch when ``backtrack`` is present, else the rows of the batch's events), or a dict of
  "true" parameter values: the target of each batch is then simulated once with those values (``target_simulator``
  "same" = the differentiable simulator of the fit, or "reference" = the Numba oracle) and cached.
  ``target_noise`` adds electronics noise to that simulated target (fixed seed per batch: one data realisation).
* **Model noise.** The paper recommends a noise-free model, the default. ``model_noise=True`` instead simulates
  the model with electronics noise too (a new seed every iteration, derived from ``seed``, epoch and batch) — the
  "expected-noise model term": the stochastic gradient then averages over noise, as the data contain it, at the
  cost of gradient variance. Use it only when the target is noisy data.
* **Optimiser**: the framework's own Adam (lr 5e-2, exponential decay 0.95 per epoch, global-norm clipping 1),
  see :mod:`larnd_diff.backends.optim`.
* **NaN/inf** loss or gradient: the step is not taken; the iteration is recorded (``"skipped": true`` in the
  history, with the reason), counted in ``FitResult.n_skipped`` and reported at the end. Never silent.

Fault tolerance
---------------
* The **history** is a JSON-lines file written and flushed after every iteration (``history_path``, default
  ``<checkpoint_dir>/history.jsonl``): iteration, epoch, batch, lr, loss, gradient global norm, every parameter
  value (physical units, the values the loss was evaluated at) and its gradient (normalised units), wall time of
  the step, and ``max_rel_err`` to the target values when those are known.
* A **checkpoint** (``<checkpoint_dir>/checkpoint.pkl``: parameters, optimiser state, iteration = epoch/batch
  position, skipped-step record, byte offset of the history) is written atomically (temporary file, fsync,
  ``os.replace``) every ``checkpoint_every`` iterations, at the end, and when the loop is left by an exception
  (Ctrl-C, a failing callback) in a consistent state. There is no random state to store: the only randomness
  (noise seeds, epoch orders) is derived from ``seed`` and the position, so the position is the RNG state.
* ``resume=True`` continues from the checkpoint (or starts afresh when there is none): the history file is cut
  back to the checkpoint's offset, so iterations redone after a hard kill are not duplicated. On a deterministic
  backend (float64, CPU) the final parameters are **bit-identical** to an uninterrupted fit. A checkpoint of a
  different fit configuration is refused; an existing checkpoint is never overwritten by a fresh fit unless
  ``overwrite=True`` (a fit never loses finished work).

Uncertainties
-------------
At the end (``hessian=True``) the Hessian H of the mean batch loss over ``hessian_batches`` (default all) with
respect to the normalised parameters is computed at the final point: forward-over-reverse (jvp of the gradient)
where the framework can push tangents through the simulator, else central finite differences of gradients
(step ``hessian_step``, default 1e-3, in normalised units: large enough to step over the small-scale roughness
that sample ordering and thresholds give the simulated loss), see :func:`larnd_diff.backends.optim.hessian`;
``hessian_method``
says which. **Convention:** the loss is read as a negative log-likelihood, ``L = -ln p + const``, so the
covariance of the normalised parameters is ``H^-1`` (a loss that is chi^2 would need ``2 H^-1``, one that is a
mean over N hits ``H^-1 / N``: rescale with ``covariance_scale``). The physical covariance is
``D H^-1 D`` with ``D = diag(nominal)``; the correlation matrix does not depend on the scale. When H is not
positive definite (a flat or degenerate direction, e.g. kb and eField enter recombination only as kb/eField when
vdrift is not linked to eField) the pseudo-inverse is used and ``hessian_posdef`` is False.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .hits import Hits
from .params import FIT_PARAMETERS, SPECS

__all__ = ["fit", "Calibrator", "FitResult", "closure", "random_targets", "toy_simulator", "toy_loss",
           "plot_trajectories", "plot_convergence_band", "plot_loss", "read_history", "CHECKPOINT_NAME",
           "HISTORY_NAME", "PAPER_RECIPE", "CLOSURE_RECIPE", "RECIPES", "ADAPT_DEFAULTS", "resolve_relaxation",
           "resolve_bounds"]

CHECKPOINT_NAME = "checkpoint.pkl"
#: Default relative parameter step of the central differences of ``fd_params``.
FD_STEP = 0.02
HISTORY_NAME = "history.jsonl"
_CHECKPOINT_VERSION = 1


# ============================================================================================== results
@dataclass
class FitResult:
    """What a fit returns. Parameter dicts are in physical units unless named ``normalized``."""

    names: List[str]
    params: Dict[str, float]
    normalized: Dict[str, float]
    init: Dict[str, float]
    target: Optional[Dict[str, float]]
    history: List[dict]
    iterations: int
    epochs: float
    n_batches: int
    n_skipped: int
    skipped_iterations: List[int]
    wall_time_s: float
    backend: str
    hessian: Optional[np.ndarray] = None
    hessian_method: Optional[str] = None
    hessian_posdef: Optional[bool] = None
    covariance: Optional[np.ndarray] = None             # normalised units (p / nominal)
    covariance_physical: Optional[np.ndarray] = None
    correlation: Optional[np.ndarray] = None
    errors: Optional[Dict[str, float]] = None          # sqrt(diag covariance_physical)
    checkpoint_path: Optional[str] = None
    history_path: Optional[str] = None
    stopped_early: bool = False
    stop_reason: str = ""
    bounds: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # the box of the fit (physical units)
    at_bounds: Dict[str, str] = field(default_factory=dict)  # {name: "lower" | "upper"} held by a bound at the end

    def relative_error(self) -> Dict[str, float]:
        """(fitted - target) / target per parameter (needs a target given as parameter values)."""
        if self.target is None:
            raise ValueError("relative errors need a target given as parameter values")
        return {n: (self.params[n] - self.target[n]) / self.target[n] for n in self.names}

    def max_relative_error(self) -> float:
        return max(abs(v) for v in self.relative_error().values())

    def wall_time_to(self, tolerance: float = 0.01) -> Optional[float]:
        """Wall time (s, from the start of the fit) at which every parameter was first within ``tolerance``."""
        it = self.iterations_to(tolerance)
        if it is None:
            return None
        if it == 0:
            return 0.0
        # record i holds the values after i iterations, reached when step i - 1 ended
        done = [r for r in self.history if int(r["iteration"]) == it - 1]
        return float(done[0].get("elapsed_s", float("nan"))) if done else self.wall_time_s

    def iterations_to(self, tolerance: float = 0.01) -> Optional[int]:
        """Number of optimiser iterations after which every parameter was first within ``tolerance`` (relative)
        of its target; None if never. History record i holds the values after i iterations."""
        if self.target is None:
            raise ValueError("iterations_to needs a target given as parameter values")
        for rec in self.history:
            if _max_rel(rec["params"], self.target, self.names) < tolerance:
                return int(rec["iteration"])
        if self.max_relative_error() < tolerance:
            return self.iterations
        return None

    def summary(self) -> str:
        lines = [f"{self.iterations} iterations ({self.epochs:.2f} epochs of {self.n_batches} batches) on "
                 f"{self.backend} in {self.wall_time_s:.1f} s; {self.n_skipped} step(s) skipped for NaN/inf"]
        for n in self.names:
            err = f" +- {self.errors[n]:.4g}" if self.errors else ""
            tgt = f"  target {self.target[n]:.6g} ({(self.params[n] / self.target[n] - 1) * 100:+.3f} %)" \
                if self.target else ""
            lines.append(f"  {n:>10s} = {self.params[n]:.6g}{err} {SPECS[n].unit}{tgt}")
        for n, side in self.at_bounds.items():
            lines.append(f"  warning: {n} ended on its {side} bound: the bound, not the data, holds it there")
        if self.hessian_method:
            lines.append(f"  Hessian by {self.hessian_method}; positive definite: {self.hessian_posdef}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("hessian", "covariance", "covariance_physical", "correlation"):
            if out[k] is not None:
                out[k] = np.asarray(out[k]).tolist()
        return out


def _max_rel(values: Mapping[str, float], target: Mapping[str, float], names: Sequence[str]) -> float:
    return max(abs(values[n] - target[n]) / abs(target[n]) for n in names)


# ============================================================================================== helpers
def _check_names(names: Sequence[str], where: str) -> None:
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown} in {where}; known parameters: {sorted(SPECS)}")


def _derived_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple (stable across runs and platforms; no global RNG)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _unwrap(x):
    return getattr(x, "raw", x)


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _atomic_pickle(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` so that a reader sees the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_history(path) -> List[dict]:
    """The records of a history JSON-lines file (a torn last line, from a hard kill, is ignored)."""
    out = []
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
    return out


def resolve_relaxation(relaxation):
    """A relaxation preset name, "smooth-continuous" (the smooth preset with real-valued, unrounded ADC counts and
    the sigmoid onset in the value too: the fitted loss is then a continuous function of the parameters, as finite
    differences need), or a Relaxation object."""
    if isinstance(relaxation, str) and relaxation == "smooth-continuous":
        from .sim.config import SMOOTH

        return SMOOTH.replace(adc="continuous", onset="soft")
    return relaxation


def resolve_bounds(bounds, names: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """Box constraints on fitted parameters, physical units: None -> none; "ranges" -> every fitted parameter's
    physical range (:data:`larnd_diff.params.PARAMETERS`, the paper's Table I); a mapping ``{name: (lo, hi)}``
    (None for an open side) for some of them. Parameters not fitted are ignored, like ``step_scales``."""
    if bounds is None:
        return {}
    if isinstance(bounds, str):
        if bounds != "ranges":
            raise ValueError(f"bounds must be None, 'ranges' or {{name: (lo, hi)}}, got {bounds!r}")
        return {n: (float(SPECS[n].low), float(SPECS[n].high)) for n in names}
    if not isinstance(bounds, Mapping):
        raise TypeError(f"bounds must be None, 'ranges' or a mapping {{name: (lo, hi)}}, got {type(bounds).__name__}")
    _check_names(list(bounds), "bounds")
    out = {}
    for n, pair in bounds.items():
        if n not in names:
            continue
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            raise ValueError(f"bounds[{n!r}] must be a pair (lo, hi), got {pair!r}") from None
        lo = -math.inf if lo is None else float(lo)
        hi = math.inf if hi is None else float(hi)
        if not lo < hi:
            raise ValueError(f"bounds[{n!r}]: need lo < hi, got ({lo:g}, {hi:g})")
        out[n] = (lo, hi)
    return out


def _relaxation_name(relaxation) -> str:
    return relaxation if isinstance(relaxation, str) else repr(relaxation)


def _default_simulator(segments, params, *, backend, dtype, device, relaxation, noise, seed):
    from .api import simulate

    return simulate(segments, backend=backend, device=device, params=params, noise=noise,
                    relaxation=resolve_relaxation(relaxation), dtype=dtype, seed=seed)


def _reference_simulator(segments, params, *, noise, seed, **_):
    from .api import simulate

    return simulate(segments, backend="reference", params=params, noise=noise, seed=seed,
                    precision="float64")


#: Defaults of the per-parameter step adaptation (``adapt_steps``, see ``Calibrator._adapt``).
ADAPT_DEFAULTS: Dict[str, float] = {"window": 10, "low": 0.2, "high": 0.6, "shrink": 0.5, "grow": 1.5, "max": 1.0,
                                    "min": 1e-3, "tstat": 0.0}

#: The paper's recipe (arXiv 2309.04639): Adam on p / nominal, lr 5e-2 decaying x0.95 per epoch, global-norm clip 1,
#: Soft-DTW on the ADC sequences, 100 cm mini-batches, the smooth relaxation. The defaults of :func:`fit`.
PAPER_RECIPE: Dict[str, Any] = {"optimizer": "adam", "parameterization": "linear", "lr": 5e-2, "lr_decay": 0.95,
                                "clip_norm": 1.0, "loss": "sdtw_adc", "batch_length_cm": 100.0,
                                "relaxation": "smooth", "stop_tol": None, "stop_window": 20, "step_scales": None,
                                "adapt_steps": None, "loss_options": None, "fd_params": (),
                                "fd_until": None, "bounds": None}
#: The closure recipe (the defaults of ``larnd-diff closure``; measured closures in the README):
#: full-matrix Adam on ln(p / nominal) with eField's step scaled by 0.1 and per-parameter step factors adapted
#: from the trajectory, lr 5e-2 decaying x0.99 per epoch, Soft-DTW divergence on (x, y, t, ADC) with the ADC
#: scale 1.5 counts, the whole sample as one batch (deterministic steps), continuous ADC, and the stopping rule.
#: Far from the optimum, hits appearing or vanishing at the trigger threshold are invisible to reverse mode and
#: can give tran_diff's gradient the wrong sign (tran_diff and lifetime then run away); near the optimum reverse
#: mode is right and central differences would only add the loss's jumps. So tran_diff's gradient is a central
#: difference of the loss for the first 100 iterations (``fd_params``, ``fd_until``), reverse mode after.
#: The parameters are kept in their Table I ranges (``bounds``): on this short sample lifetime and long_diff can
#: compensate each other along a valley that leaves the ranges; held by the box, the paths fall back into the
#: basin more often, and a fit that still fails ends on a bound, which ``FitResult.at_bounds`` reports.
CLOSURE_RECIPE: Dict[str, Any] = {"optimizer": "adam-full", "parameterization": "log", "lr": 5e-2,
                                  "lr_decay": 0.99, "clip_norm": 1.0, "loss": "sdtw",
                                  "loss_options": {"scales": {"adc": 1.5}},
                                  "batch_length_cm": 1.0e6, "relaxation": "smooth-continuous",
                                  "stop_tol": 2e-3, "stop_window": 20, "step_scales": {"eField": 0.1},
                                  "adapt_steps": {"shrink": 0.7, "tstat": 2.0},
                                  "fd_params": ("tran_diff",), "fd_until": 100, "bounds": "ranges"}
RECIPES: Dict[str, Dict[str, Any]] = {"paper": PAPER_RECIPE, "closure": CLOSURE_RECIPE}


def _resolve_loss(loss) -> Callable:
    """A loss callable ``loss(sim_hits, target_hits) -> scalar`` from a callable or a name in larnd_diff.losses."""
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
    try:
        from . import losses as _losses
    except ImportError as exc:
        raise ImportError(f"loss {loss!r} needs larnd_diff.losses, which cannot be imported ({exc}); "
                          f"pass a callable loss(sim_hits, target_hits) instead") from exc
    getter = getattr(_losses, "get_loss", None)
    if getter is not None:
        return getter(loss)
    for candidate in (loss, f"{loss}_loss"):  # "sdtw_adc" -> losses.sdtw_adc_loss
        fn = getattr(_losses, candidate, None)
        if callable(fn) and candidate in getattr(_losses, "__all__", [candidate]):
            return fn
    known = sorted(n[:-5] for n in getattr(_losses, "__all__", []) if n.endswith("_loss"))
    raise KeyError(f"unknown loss {loss!r}; known: {known} (or pass a callable loss(sim_hits, target_hits))")


def _hits_to_backend(hits: Hits, backend, dtype: str, device) -> Hits:
    """NumPy target hits -> the fit backend's tensors (floats in ``dtype``, ids as int64)."""
    h = hits.numpy()
    conv = {}
    for name in ("event_id", "pixel", "adc", "time", "charge", "backtrack"):
        v = getattr(h, name)
        if v is None:
            conv[name] = None
            continue
        dt = dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else "int64"
        conv[name] = backend.raw_asarray(np.asarray(v), dt, device)
    return Hits(**conv)


def _target_rows(target: Hits, rows: np.ndarray, event_ids: np.ndarray) -> np.ndarray:
    """Rows of a data target that belong to a batch (see the module docstring)."""
    if target.backtrack is not None:
        bt = np.asarray(target.backtrack)
        return np.isin(bt, rows).reshape(len(bt), -1).any(axis=1)
    return np.isin(np.asarray(target.event_id), event_ids)


# ============================================================================================== toy model
def toy_simulator(segments, params, *, backend="torch", dtype="float64", device=None, relaxation=None,
                  noise=False, seed=0):
    """A closed-form, differentiable stand-in for the simulator (tests and demos of the fit loop only).

    One "hit" per segment: drift distance d = 30.43 - |z| cm, v = eField x mobility (always linked, so eField is
    identifiable from times), t = d / v; charge Q = dE * MeVToElectrons * Ab / (1 + kb dEdx / (eField rho)) *
    exp(-t / lifetime); adc = Q x [1, (sigma_L / 0.1 cm)^2, (sigma_T / 0.1 cm)^2] / 1000 with sigma^2 = 2 D t;
    time = [t, t, t]. It has the parameter dependences of the real physics, nothing else.
    """
    import eagerpy as ep

    from .ops import get_backend
    from .params import Params, electron_mobility

    b = get_backend(backend)
    p = Params(dict(params))

    def col(name):
        return b.asarray(np.asarray(segments[name], dtype=np.float64), dtype, device)

    def par(name):
        v = p[name]
        return ep.astensor(_unwrap(v)) if not isinstance(v, (int, float)) else v

    z, de, dedx = col("z"), col("dE"), col("dEdx")
    efield = par("eField")
    v = efield * electron_mobility(efield, par("temperature"))
    d = 30.43 - z.abs()
    t = d / v
    recomb = par("Ab") / (1 + par("kb") * dedx / (efield * par("lArDensity")))
    q = de * par("MeVToElectrons") * recomb * ep.exp(-t / par("lifetime")) / 1000.0
    s_l = 2 * par("long_diff") * t / 0.01
    s_t = 2 * par("tran_diff") * t / 0.01
    adc = ep.stack([q, q * s_l, q * s_t], axis=1)
    time_ = ep.stack([t, t, t], axis=1)
    if noise:
        adc = adc + b.rng(seed, device).normal(adc.shape, dtype) * 0.5
    n = len(segments)
    ev = np.asarray(segments["eventID"], dtype=np.int64)
    return Hits(event_id=ev, pixel=np.stack([np.arange(n), np.zeros(n, np.int64)], 1), adc=adc.raw,
                time=time_.raw, backtrack=np.arange(n).reshape(n, 1, 1).repeat(3, 1))


def toy_loss(sim: Hits, target: Hits):
    """Mean squared difference of adc and of time (in units of 10 us) between rows in the same order."""
    import eagerpy as ep

    a, ta = ep.astensor(_unwrap(sim.adc)), ep.astensor(_unwrap(target.adc))
    t, tt = ep.astensor(_unwrap(sim.time)), ep.astensor(_unwrap(target.time))
    return (((a - ta) ** 2).mean() + (((t - tt) / 10.0) ** 2).mean()).raw


# ============================================================================================== calibrator
class Calibrator:
    """One fit: holds the configuration, the batches, the cached targets and the optimiser; ``run()`` fits.

    See :func:`fit` for the arguments. Everything the loop needs lives on the instance (no module state).
    """

    def __init__(self, segments, target, *, params: Sequence[str] = FIT_PARAMETERS, backend: str = "torch",
                 loss="sdtw_adc", init: Optional[Mapping[str, float]] = None, lr: float = 5e-2,
                 lr_decay: float = 0.95, clip_norm: Optional[float] = 1.0, epochs: Optional[int] = None,
                 max_iter: Optional[int] = None, batch_length_cm: float = 100.0, seed: int = 0,
                 relaxation="smooth", dtype: str = "float64", device=None, checkpoint_dir=None,
                 checkpoint_every: int = 10, checkpoint_on_error: bool = True, resume: bool = False,
                 overwrite: bool = False, history_path=None, progress: bool = True, target_noise: bool = False,
                 target_simulator: str = "same", model_noise: bool = False,
                 fixed: Optional[Mapping[str, float]] = None, link_vdrift: Optional[bool] = None,
                 simulator: Optional[Callable] = None, callback: Optional[Callable] = None,
                 hessian: bool = True, hessian_batches: Optional[Sequence[int]] = None,
                 hessian_step: float = 1e-3, covariance_scale: float = 1.0, parameterization: str = "linear",
                 optimizer: str = "adam", stop_tol: Optional[float] = None, stop_window: int = 20,
                 step_scales: Optional[Mapping[str, float]] = None,
                 optimizer_options: Optional[Mapping[str, float]] = None,
                 adapt_steps: Optional[Mapping[str, float]] = None, loss_options: Optional[Mapping[str, Any]] = None,
                 time_budget_s: Optional[float] = None, fd_params: Sequence[str] = (), fd_step: float = FD_STEP,
                 fd_switch: Optional[int] = None, fd_until: Optional[int] = None, bounds=None):
        from .ops import get_backend
        from .selection import make_batches

        self.names = list(params)
        if not self.names:
            raise ValueError("params is empty: name at least one parameter to fit")
        _check_names(self.names, "params")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"params lists a parameter twice: {self.names}")
        self.fixed = dict(fixed or {})
        _check_names(list(self.fixed), "fixed")
        clash = sorted(set(self.fixed) & set(self.names))
        if clash:
            raise ValueError(f"parameter(s) {clash} are both fitted and fixed")
        self.init = {n: float(SPECS[n].nominal) for n in self.names}
        if init:
            _check_names(list(init), "init")
            extra = sorted(set(init) - set(self.names))
            if extra:
                raise ValueError(f"init gives parameter(s) {extra} that are not fitted ({self.names})")
            self.init.update({k: float(v) for k, v in init.items()})
        self.nominal = {n: float(SPECS[n].nominal) for n in self.names}
        self.bounds = resolve_bounds(bounds, self.names)
        outside = {n: v for n, v in self.init.items() if n in self.bounds
                   and not self.bounds[n][0] <= v <= self.bounds[n][1]}
        if outside:
            raise ValueError("init outside the bounds: " + ", ".join(
                f"{n} = {v:g} not in [{self.bounds[n][0]:g}, {self.bounds[n][1]:g}]" for n, v in outside.items()))
        if parameterization not in ("linear", "log"):
            raise ValueError(f"parameterization must be 'linear' (p / nominal, the paper's) or 'log' "
                             f"(ln(p / nominal)), got {parameterization!r}")
        self.parameterization = parameterization
        self.optimizer = optimizer
        self.optimizer_options = dict(optimizer_options or {})
        if adapt_steps and optimizer != "adam-full":
            raise ValueError("adapt_steps needs optimizer='adam-full' (per-parameter step factors)")
        self.adapt_steps = None if not adapt_steps else {**ADAPT_DEFAULTS, **dict(adapt_steps)}
        step_scales = {k: float(v) for k, v in (step_scales or {}).items() if k in self.names}
        bad = {k: v for k, v in step_scales.items() if not v > 0}
        if bad:
            raise ValueError(f"step_scales must be > 0, got {bad}")
        self.step_scales = {n: step_scales.get(n, 1.0) for n in self.names}
        if parameterization == "log" and any(lo <= 0 for lo, _ in self.bounds.values()):
            raise ValueError(f"log parameterization needs positive lower bounds, got {self.bounds}")
        if stop_tol is not None and not stop_tol > 0:
            raise ValueError(f"stop_tol must be > 0 or None, got {stop_tol}")
        if int(stop_window) < 1:
            raise ValueError(f"stop_window must be >= 1, got {stop_window}")
        self.stop_tol, self.stop_window = (None if stop_tol is None else float(stop_tol)), int(stop_window)
        self.time_budget_s = None if time_budget_s is None else float(time_budget_s)
        _check_names(list(fd_params or ()), "fd_params")
        self.fd_params = [n for n in self.names if n in set(fd_params or ())]  # like step_scales: the fitted ones
        if not float(fd_step) > 0:
            raise ValueError(f"fd_step must be > 0 (relative change of the parameter), got {fd_step}")
        self.fd_step = float(fd_step)
        if fd_switch is not None and int(fd_switch) < 1:
            raise ValueError(f"fd_switch must be >= 1 or None, got {fd_switch}")
        self.fd_switch = None if fd_switch is None else int(fd_switch)
        if fd_until is not None and int(fd_until) < 1:
            raise ValueError(f"fd_until must be >= 1 or None, got {fd_until}")
        self.fd_until = None if fd_until is None else int(fd_until)

        if epochs is None and max_iter is None:
            raise ValueError("give epochs, max_iter or both (the fit stops at whichever comes first)")
        self.backend = get_backend(backend)
        if self.backend.name == "numpy":
            from .backends.base import NotSupported

            raise NotSupported("numpy", "grad", "fitting needs gradients and NumPy is forward-only",
                               ["torch", "jax", "tensorflow"])
        self.lr, self.lr_decay, self.clip_norm = float(lr), float(lr_decay), clip_norm
        self.seed, self.dtype, self.device, self.relaxation = int(seed), dtype, device, relaxation
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))
        self.loss_options = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (loss_options or {}).items()}
        self.loss_fn = _resolve_loss(loss)
        if self.loss_options:
            import functools

            self.loss_fn = functools.partial(self.loss_fn, **self.loss_options)
        self.simulator = simulator or _default_simulator
        # None = link when eField is fitted: unlinked, eField enters recombination only as kb / eField
        self.model_noise = bool(model_noise)
        self.link_vdrift = ("eField" in self.names) if link_vdrift is None else bool(link_vdrift)
        self.callback, self.progress = callback, progress
        self.want_hessian, self.hessian_batches = hessian, hessian_batches
        self.hessian_step, self.covariance_scale = float(hessian_step), float(covariance_scale)

        if len(segments) == 0:
            raise ValueError("no segments to fit")
        self.segments = segments
        self.batches = make_batches(segments, length_cm=batch_length_cm, seed=self.seed)
        self.batch_length_cm = float(batch_length_cm)
        nb = len(self.batches)
        self.n_batches = nb
        total = [int(max_iter)] if max_iter is not None else []
        if epochs is not None:
            total.append(int(epochs) * nb)
        self.total_iterations = min(total)

        self.target_params, self.target_hits = self._parse_target(target)
        if target_simulator not in ("same", "reference"):
            raise ValueError(f"target_simulator must be 'same' or 'reference', got {target_simulator!r}")
        self.target_simulator, self.target_noise = target_simulator, bool(target_noise)
        self._target_cache: Dict[int, Hits] = {}

        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else 0
        self.checkpoint_on_error = bool(checkpoint_on_error)
        self.resume, self.overwrite = bool(resume), bool(overwrite)
        if history_path is None and self.checkpoint_dir is not None:
            history_path = self.checkpoint_dir / HISTORY_NAME
        self.history_path = Path(history_path) if history_path is not None else None

    # ------------------------------------------------------------------------------------------ target
    def _parse_target(self, target):
        if isinstance(target, Hits):
            return None, target.numpy()
        if isinstance(target, Mapping):
            _check_names(list(target), "target")
            values = {n: float(SPECS[n].nominal) for n in self.names}
            values.update({k: float(v) for k, v in target.items()})
            return values, None
        raise TypeError(f"target must be a Hits object (data) or a dict of parameter values, "
                        f"got {type(target).__name__}")

    def _model_params(self, fitted: Mapping[str, Any]):
        """Physical parameter mapping handed to the simulator (fitted values + fixed ones)."""
        values = {**self.fixed, **fitted}
        if self.link_vdrift:
            from .params import Params

            return Params(values, link_vdrift=True)
        return values

    def _target_for(self, b: int) -> Hits:
        cached = self._target_cache.get(b)
        if cached is not None:
            return cached
        segs = self.batches[b]
        if self.target_hits is not None:
            mask = _target_rows(self.target_hits, self.batches.rows(b), np.unique(segs["eventID"]))
            hits = self.target_hits.select(mask)
        else:
            values = {k: v for k, v in self.target_params.items()}
            sim = _reference_simulator if self.target_simulator == "reference" else self.simulator
            hits = sim(segs, self._model_params(values), backend=self.backend.name, dtype=self.dtype,
                       device=self.device, relaxation=self.relaxation, noise=self.target_noise,
                       seed=_derived_seed(self.seed, "target", b)).numpy()
        hits = _hits_to_backend(hits, self.backend, self.dtype, self.device)
        self._target_cache[b] = hits
        return hits

    # ------------------------------------------------------------------------------------------ loss
    def batch_loss(self, b: int, normalized: Mapping[str, Any], noise_seed: int = 0):
        """Loss of batch ``b`` at normalised parameters (raw or EagerPy framework scalars); a raw scalar."""
        self._target_for(b)  # simulate (and cache) the target outside the differentiated region
        fitted = {n: self._to_physical_tensor(normalized[n], n) for n in self.names}
        sim = self.simulator(self.batches[b], self._model_params(fitted), backend=self.backend.name,
                             dtype=self.dtype, device=self.device, relaxation=self.relaxation,
                             noise=self.model_noise, seed=noise_seed)
        return _unwrap(self.loss_fn(sim, self._target_for(b)))

    def _loss_and_grad(self, opt, b: int, noise_seed: int, st: Optional["_LoopState"] = None):
        self._target_for(b)
        value, grads = self.backend.value_and_grad(
            lambda p: self.backend.wrap(self.batch_loss(b, p, noise_seed)), opt.params())
        loss = float(self.backend.to_numpy(value))
        g = {n: float(np.asarray(self.backend.to_numpy(grads[n])).reshape(())) for n in self.names}
        active = [n for n in self.fd_params if st is None or self._fd_active(st, n)]
        if active:
            fd = self._fd_gradient(opt, b, noise_seed, active)
            if st is not None and self.fd_switch is not None:
                for n in active:  # a count of consecutive iterations where both gradients point the same way
                    st.fd_agree[n] = st.fd_agree.get(n, 0) + 1 if fd[n] * g[n] > 0 else 0
            g.update(fd)
            grads = dict(g)
        return loss, g, grads

    def _fd_active(self, st: "_LoopState", name: str) -> bool:
        """Whether ``name`` still takes central differences at this iteration. They are for the far field, where
        hits appearing or vanishing at the threshold bias reverse mode; near the optimum, where the hit sets
        match, reverse mode is exact and the differences only add the loss's jumps (and, across the kinked minimum
        of the absolute-difference cost, shift it). So they stop for good at iteration ``fd_until``, or once
        central difference and reverse mode agreed in sign ``fd_switch`` iterations in a row."""
        if self.fd_until is not None and st.iteration >= self.fd_until:
            return False
        return self.fd_switch is None or st.fd_agree.get(name, 0) < self.fd_switch

    def _fd_gradient(self, opt, b: int, noise_seed: int, names: Sequence[str]) -> Dict[str, float]:
        """Central differences of the batch loss for ``fd_params``, with a step of ``fd_step`` relative change of
        the parameter: they see what reverse mode cannot, the loss's jumps when pixels cross the trigger
        threshold (hits appear or vanish), which bias the reverse-mode gradient of the transverse diffusion far
        from the optimum. Two forward passes per parameter."""
        here = opt.values()
        out = {}
        for n in names:
            h = self.fd_step / self.step_scales[n] if self.parameterization == "log" else self.fd_step
            side = []
            for sign in (1.0, -1.0):
                point = {k: self.backend.raw_asarray(v + (sign * h if k == n else 0.0), self.dtype, self.device)
                         for k, v in here.items()}
                side.append(float(self.backend.to_numpy(self.batch_loss(b, point, noise_seed))))
            out[n] = (side[0] - side[1]) / (2.0 * h)
        return out

    # ------------------------------------------------------------------------------------------ bookkeeping
    def _fingerprint(self) -> dict:
        return {"names": self.names, "backend": self.backend.name, "lr": self.lr, "lr_decay": self.lr_decay,
                "clip_norm": self.clip_norm, "seed": self.seed, "batch_length_cm": self.batch_length_cm,
                "n_batches": self.n_batches, "n_segments": int(len(self.segments)), "dtype": self.dtype,
                "loss": self.loss_name, "loss_options": self.loss_options, "init": self.init,
                "target": self.target_params,
                "fixed": self.fixed, "link_vdrift": self.link_vdrift, "model_noise": self.model_noise,
                "target_noise": self.target_noise, "target_simulator": self.target_simulator,
                "parameterization": self.parameterization, "optimizer": self.optimizer,
                "optimizer_options": self.optimizer_options, "adapt_steps": self.adapt_steps,
                "stop_tol": self.stop_tol, "stop_window": self.stop_window, "step_scales": self.step_scales,
                "relaxation": _relaxation_name(self.relaxation), "fd_params": self.fd_params,
                "fd_step": self.fd_step, "fd_switch": self.fd_switch,
                "fd_until": self.fd_until, "bounds": {n: list(b) for n, b in self.bounds.items()}}

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.checkpoint_dir / CHECKPOINT_NAME if self.checkpoint_dir is not None else None

    def _physical(self, internal: Mapping[str, float]) -> Dict[str, float]:
        """Physical values from the optimiser's coordinates u: p = nominal x s u (linear) or nominal x exp(s u)
        (log), s the parameter's step scale."""
        sc = self.step_scales
        if self.parameterization == "log":
            return {n: math.exp(sc[n] * float(internal[n])) * self.nominal[n] for n in self.names}
        return {n: sc[n] * float(internal[n]) * self.nominal[n] for n in self.names}

    def _coordinate(self, name: str, value: float) -> float:
        """The optimiser's coordinate of one physical value (an infinite value, an open bound, stays infinite)."""
        if math.isinf(value):
            return value
        ratio = float(value) / self.nominal[name]
        return (math.log(ratio) if self.parameterization == "log" else ratio) / self.step_scales[name]

    def _internal(self, values: Mapping[str, float]) -> Dict[str, float]:
        """The optimiser's coordinates of physical values."""
        return {n: self._coordinate(n, values[n]) for n in self.names}

    def _internal_bounds(self):
        """The bounds in the optimiser's coordinates: ({name: lower}, {name: upper}); open sides are +-inf."""
        return ({n: self._coordinate(n, lo) for n, (lo, _) in self.bounds.items()},
                {n: self._coordinate(n, hi) for n, (_, hi) in self.bounds.items()})

    def _to_physical_tensor(self, u, name: str):
        """Physical value of one optimiser coordinate, as a framework scalar that keeps the autodiff graph."""
        u = _unwrap(u)
        s = self.step_scales[name]
        if self.parameterization == "log":
            import eagerpy as ep

            return (ep.astensor(u) * s).exp().raw * self.nominal[name] if s != 1.0 else \
                ep.astensor(u).exp().raw * self.nominal[name]
        return u * (s * self.nominal[name])

    def _save(self, opt, st: "_LoopState", hist=None) -> None:
        if self.checkpoint_path is None:
            return
        if hist is not None and not hist.closed:  # the history up to the offset is on disk before the checkpoint
            hist.flush()
            os.fsync(hist.fileno())
        _atomic_pickle(self.checkpoint_path, {
            "version": _CHECKPOINT_VERSION, "fingerprint": self._fingerprint(), "iteration": st.iteration,
            "n_skipped": st.n_skipped, "skipped": list(st.skipped), "history_bytes": st.history_bytes,
            "wall_time_s": st.wall_time_s, "optimizer": opt.state(), "stopped_early": st.stopped_early,
            "recent": [list(v) for v in st.recent], "trail": [list(v) for v in st.trail],
            "stop_reason": st.stop_reason, "fd_agree": dict(st.fd_agree)})

    def _load(self) -> Optional[dict]:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        ck = _read_checkpoint(self.checkpoint_dir)
        if ck.get("version") != _CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {ck.get('version')} is not {_CHECKPOINT_VERSION}")
        mine, theirs = self._fingerprint(), ck["fingerprint"]
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"{path} belongs to a different fit (differs in {diff}); use another "
                             f"checkpoint_dir or resume with the same settings")
        return ck

    def _open_history(self, st: "_LoopState"):
        """Open the history file for appending, cut back to the checkpointed offset; load earlier records."""
        if self.history_path is None:
            return None
        path = self.history_path
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if not st.history_bytes and size and not self.overwrite and not self.resume:
            raise FileExistsError(f"{path} holds the history of an earlier fit; pass overwrite=True to replace it "
                                  f"or choose another history_path")
        if st.history_bytes:
            if size < st.history_bytes:
                raise ValueError(f"{path} is shorter ({size} bytes) than its checkpoint says "
                                 f"({st.history_bytes}); "
                                 f"it was truncated or replaced after the checkpoint was written")
            with open(path, "r+b") as fh:
                fh.truncate(st.history_bytes)
            st.records = read_history(path)
        return open(path, "ab" if st.history_bytes else "wb")

    # ------------------------------------------------------------------------------------------ run
    def _start(self):
        from .backends.optim import make_optimizer

        opt = make_optimizer(self.backend.name, self._internal(self.init),
                             lr=self.lr, lr_decay=self.lr_decay, clip_norm=self.clip_norm, dtype=self.dtype,
                             device=self.device, method=self.optimizer, **self.optimizer_options)
        st = _LoopState()
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_dir (the history alone cannot restore the optimiser)")
        exists = self.checkpoint_path is not None and self.checkpoint_path.exists()
        if exists and not self.resume and not self.overwrite:
            raise FileExistsError(f"{self.checkpoint_path} holds an earlier fit; pass resume=True to continue it, "
                                  f"overwrite=True to discard it, or use another checkpoint_dir")
        ck = self._load() if exists and self.resume else None
        if ck is not None:  # a fit stopped early by its callback continues when resumed
            opt.load_state(ck["optimizer"])
            st.iteration, st.n_skipped, st.skipped = ck["iteration"], ck["n_skipped"], list(ck["skipped"])
            st.history_bytes, st.wall_time_s = ck["history_bytes"], ck["wall_time_s"]
            st.recent = [list(v) for v in ck.get("recent", [])]
            st.trail = [list(v) for v in ck.get("trail", [])]
            st.fd_agree = dict(ck.get("fd_agree", {}))
        return opt, st

    def _adapt(self, opt, st: "_LoopState", lr: float, grad: Mapping[str, float]) -> None:
        """Per-parameter step factors (``adapt_steps``; Rprop's idea on windows): every ``window`` iterations,
        a parameter whose net movement over the window is below ``low`` x its possible movement (sum of lr x
        factor) is oscillating about its optimum: its factor is multiplied by ``shrink``; one that moved
        more than ``high`` x is still travelling: its factor grows by ``grow`` (up to ``max``). With ``tstat``
        > 0, a parameter whose gradient over the window has a steady sign (|mean| > tstat x standard error) is
        on a slope, not at its bottom: it is never shrunk and grows instead (weak parameters such as the
        diffusion constants move slowly through noisy gradients and would otherwise freeze on a plateau).
        Stiff parameters (eField, the charge scale) settle and stop shaking the hits, while slow ones keep
        their step. Needs no target: only the optimiser's own trajectory."""
        cfg = self.adapt_steps
        if cfg is None:
            return
        w, k = int(cfg["window"]), len(self.names)
        values = opt.values()
        st.trail.append([float(values[n]) for n in self.names] + [float(grad[n]) for n in self.names] + [float(lr)])
        del st.trail[:-(w + 1)]
        if st.iteration % w or len(st.trail) <= w:
            return
        arr = np.asarray(st.trail)
        factors = opt.factors()
        capacity = arr[1:, -1].sum()  # the lr of the steps that moved trail[0] -> trail[-1]
        grads = arr[1:, k:2 * k]      # the gradients of those steps
        mean, sd = grads.mean(axis=0), grads.std(axis=0)
        tstat = np.abs(mean) / (sd / math.sqrt(w) + 1e-300)
        new = {}
        for i, n in enumerate(self.names):
            ratio = abs(arr[-1, i] - arr[0, i]) / (capacity * factors[n])
            pulled = cfg["tstat"] > 0 and tstat[i] > cfg["tstat"]  # a steady pull: on a slope, not at the bottom
            f = factors[n]
            if ratio < cfg["low"] and not pulled:
                f *= cfg["shrink"]
            elif ratio > cfg["high"] or pulled:
                f = min(f * cfg["grow"], cfg["max"])
            new[n] = max(f, cfg["min"])
        opt.set_factors(new)

    def _converged(self, opt, st: "_LoopState") -> bool:
        """The stopping rule (needs no target): every fitted parameter stayed within ``stop_tol`` over the last
        ``stop_window`` iterations, in the optimiser's coordinates (log: relative change; linear: p / nominal)."""
        if self.stop_tol is None:
            return False
        values = opt.values()
        st.recent.append([self.step_scales[n] * float(values[n]) for n in self.names])
        del st.recent[:-(self.stop_window + 1)]
        if len(st.recent) <= self.stop_window:
            return False
        arr = np.asarray(st.recent)
        spread = float((arr.max(axis=0) - arr.min(axis=0)).max())
        if spread < self.stop_tol:
            st.stop_reason = (f"converged: every parameter moved less than {self.stop_tol:g} "
                              f"({self.parameterization} coordinates) over the last {self.stop_window} iterations")
            return True
        return False

    def _record(self, st, it, epoch, k, b, lr, loss, g, gnorm, values, skipped, reason, dt):
        rec = {"iteration": it, "epoch": epoch, "batch_in_epoch": k, "batch": b,
               "batch_length_cm": float(self.batches.lengths_cm[b]), "lr": lr, "loss": loss,
               "grad_norm": gnorm, "params": self._physical(values), "grad": g, "skipped": skipped,
               "reason": reason, "step_time_s": dt}
        if self.target_params is not None:
            rec["max_rel_err"] = _max_rel(rec["params"], self.target_params, self.names)
        return rec

    def run(self) -> FitResult:
        opt, st = self._start()
        hist = self._open_history(st)
        bar = self._progress_bar(st)
        t_session = time.perf_counter()
        wall_before = st.wall_time_s
        consistent = True
        try:
            while st.iteration < self.total_iterations and not st.stopped_early:
                consistent = False
                rec = self._step(opt, st)
                self._adapt(opt, st, rec["lr"], rec["grad"])
                if self.adapt_steps is not None:
                    rec["step_factors"] = opt.factors()  # the factors of the next step
                consistent = True
                rec["elapsed_s"] = wall_before + time.perf_counter() - t_session  # wall time of the fit so far
                self._write(hist, st, rec)
                st.wall_time_s = wall_before + time.perf_counter() - t_session
                self._update_bar(bar, rec)
                if self._converged(opt, st):
                    st.stopped_early = True
                elif self.time_budget_s is not None and st.wall_time_s >= self.time_budget_s:
                    st.stopped_early = True
                    st.stop_reason = f"time budget of {self.time_budget_s:g} s"
                if self.callback is not None and self.callback(rec) is True:
                    st.stopped_early = True
                    st.stop_reason = st.stop_reason or "callback"
                if self.checkpoint_every and st.iteration % self.checkpoint_every == 0:
                    self._save(opt, st, hist)
        except BaseException:
            if consistent and self.checkpoint_on_error:
                st.wall_time_s = wall_before + time.perf_counter() - t_session
                self._save(opt, st, hist)
            raise
        finally:
            if hist is not None:
                hist.close()
            if bar is not None:
                bar.close()
        st.wall_time_s = wall_before + time.perf_counter() - t_session
        self._save(opt, st)
        if st.n_skipped:
            warnings.warn(f"{st.n_skipped} of {st.iteration} fit steps were skipped because the loss or a "
                          f"gradient was NaN/inf (iterations {st.skipped[:20]}"
                          f"{' ...' if st.n_skipped > 20 else ''})",
                          RuntimeWarning, stacklevel=2)
        return self._result(opt, st)

    def _step(self, opt, st: "_LoopState") -> dict:
        it = st.iteration
        epoch, k = divmod(it, self.n_batches)
        if opt.epoch != epoch or it == 0:
            opt.set_epoch(epoch)
        b = int(self.batches.epoch_order(epoch)[k])
        values = opt.values()
        t0 = time.perf_counter()
        reason = None
        try:
            loss, g, grads = self._loss_and_grad(opt, b, _derived_seed(self.seed, "model", epoch, b), st)
        except FloatingPointError as exc:  # numpy-level overflow in a backend counts as a non-finite step
            loss, g, grads, reason = float("nan"), {n: float("nan") for n in self.names}, None, f"error: {exc}"
        gnorm = float(math.sqrt(sum(v * v for v in g.values())))
        if reason is None and not _finite(loss):
            reason = "loss is not finite"
        elif reason is None and not all(_finite(v) for v in g.values()):
            reason = "gradient is not finite: " + ", ".join(n for n in self.names if not _finite(g[n]))
        lr = opt.lr
        if reason is None:
            opt.step(grads)
            if self.bounds:
                opt.clamp(*self._internal_bounds())
        else:
            st.n_skipped += 1
            st.skipped.append(it)
        st.iteration = it + 1
        return self._record(st, it, epoch, k, b, lr, loss, g, gnorm, values, reason is not None, reason,
                            time.perf_counter() - t0)

    def _write(self, hist, st: "_LoopState", rec: dict) -> None:
        st.records.append(rec)
        if hist is None:
            return
        line = (json.dumps(rec, allow_nan=True) + "\n").encode("utf-8")
        hist.write(line)
        hist.flush()
        st.history_bytes += len(line)

    def _progress_bar(self, st):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_iterations, initial=st.iteration, desc=f"fit[{self.backend.name}]",
                    unit="it", dynamic_ncols=True)

    def _update_bar(self, bar, rec):
        if bar is None:
            return
        ref = self.target_params or self.init
        dev = _max_rel(rec["params"], ref, self.names)
        key = "max_rel_err" if self.target_params is not None else "max_rel_dev_init"
        bar.set_postfix({"loss": f"{rec['loss']:.4g}", key: f"{dev:.2%}"}, refresh=False)
        bar.update(1)

    # ------------------------------------------------------------------------------------------ result
    def _result(self, opt, st: "_LoopState") -> FitResult:
        internal = opt.values()
        physical = self._physical(internal)
        normalized = {n: physical[n] / self.nominal[n] for n in self.names}
        res = FitResult(names=list(self.names), params=physical, normalized=normalized,
                        init=dict(self.init), target=dict(self.target_params) if self.target_params else None,
                        history=st.records, iterations=st.iteration, epochs=st.iteration / self.n_batches,
                        n_batches=self.n_batches, n_skipped=st.n_skipped, skipped_iterations=list(st.skipped),
                        wall_time_s=st.wall_time_s, backend=self.backend.name,
                        checkpoint_path=str(self.checkpoint_path) if self.checkpoint_path else None,
                        history_path=str(self.history_path) if self.history_path else None,
                        stopped_early=st.stopped_early,
                        stop_reason=st.stop_reason or ("max_iter/epochs" if st.iteration >= self.total_iterations
                                                       else ""),
                        bounds=dict(self.bounds), at_bounds=self._at_bounds(physical))
        if self.want_hessian:
            self._add_uncertainties(res, internal)
        return res

    def _at_bounds(self, physical: Mapping[str, float]) -> Dict[str, str]:
        out = {}
        for n, (lo, hi) in self.bounds.items():
            for side, edge in (("lower", lo), ("upper", hi)):
                if math.isfinite(edge) and abs(physical[n] - edge) <= 1e-9 * abs(edge):
                    out[n] = side
        return out

    def full_loss(self, normalized: Mapping[str, Any], batches: Optional[Sequence[int]] = None):
        """Mean batch loss over ``batches`` (default all) at normalised parameters (framework scalars)."""
        idx = list(range(self.n_batches)) if batches is None else [int(b) for b in batches]
        total = None
        for b in idx:
            v = self.batch_loss(b, normalized)
            total = v if total is None else total + v
        return total / len(idx)

    def loss_at(self, values: Mapping[str, float], batches: Optional[Sequence[int]] = None) -> float:
        """Mean batch loss at physical parameter ``values`` of the fitted parameters (forward only; for scans)."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise KeyError(f"loss_at needs values for {missing}")
        internal = {n: self.backend.raw_asarray(v, self.dtype, self.device)
                    for n, v in self._internal({n: values[n] for n in self.names}).items()}
        return float(self.backend.to_numpy(self.full_loss(internal, batches)))

    def _add_uncertainties(self, res: FitResult, internal: Mapping[str, float]) -> None:
        """Hessian in the optimiser's coordinates u at the final point -> covariances. With the log
        parameterization, d p / d u = p, so the normalised covariance is J cov_u J with J = diag(p / nominal)."""
        from .backends.optim import hessian

        for b in (range(self.n_batches) if self.hessian_batches is None else self.hessian_batches):
            self._target_for(int(b))
        h, method = hessian(self.backend.name, lambda p: self.full_loss(p, self.hessian_batches), internal,
                            step=self.hessian_step, dtype=self.dtype, device=self.device)
        res.hessian, res.hessian_method = h, method
        cov_u, posdef = covariance_from_hessian(h, self.covariance_scale)
        jac = np.array([self.step_scales[n] * (res.normalized[n] if self.parameterization == "log" else 1.0)
                        for n in self.names])
        cov = cov_u * np.outer(jac, jac)
        d = np.array([self.nominal[n] for n in self.names])
        res.hessian_posdef = posdef
        res.covariance = cov
        res.covariance_physical = cov * np.outer(d, d)
        res.correlation = correlation_from_covariance(cov)
        var = np.diag(res.covariance_physical)
        res.errors = {n: (float(math.sqrt(var[i])) if var[i] > 0 else float("nan"))
                      for i, n in enumerate(self.names)}
        if not posdef:
            warnings.warn(f"the Hessian at the fitted point is not positive definite (eigenvalues "
                          f"{np.round(np.linalg.eigvalsh(h), 6).tolist()}, method {method}): not a minimum of the "
                          f"loss, or a flat/degenerate direction; the covariance is a pseudo-inverse and errors "
                          f"of "
                          f"directions with non-positive variance are NaN", RuntimeWarning, stacklevel=3)


@dataclass
class _LoopState:
    iteration: int = 0
    n_skipped: int = 0
    skipped: List[int] = field(default_factory=list)
    history_bytes: int = 0
    wall_time_s: float = 0.0
    stopped_early: bool = False
    records: List[dict] = field(default_factory=list)
    recent: List[List[float]] = field(default_factory=list)   # last stop_window + 1 parameter vectors
    trail: List[List[float]] = field(default_factory=list)    # last adapt window + 1 (values..., lr)
    stop_reason: str = ""
    fd_agree: Dict[str, int] = field(default_factory=dict)   # fd_params: consecutive sign agreements (fd_switch)


def covariance_from_hessian(h: np.ndarray, scale: float = 1.0):
    """(scale * H^-1, positive_definite); the pseudo-inverse when H is not positive definite."""
    h = np.asarray(h, dtype=np.float64)
    try:
        np.linalg.cholesky(h)
        return scale * np.linalg.inv(h), True
    except np.linalg.LinAlgError:
        return scale * np.linalg.pinv(h, hermitian=True), False


def correlation_from_covariance(cov: np.ndarray) -> np.ndarray:
    """cov_ij / sqrt(cov_ii cov_jj); NaN where a variance is not positive (a flat or wrong-sign direction)."""
    var = np.diag(cov).astype(np.float64)
    sd = np.where(var > 0, np.sqrt(np.abs(var)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cov / np.outer(sd, sd)


# ============================================================================================== entry point
def fit(segments, target, params: Sequence[str] = FIT_PARAMETERS, backend: str = "torch", loss="sdtw_adc",
        init: Optional[Mapping[str, float]] = None, lr: float = 5e-2, lr_decay: float = 0.95,
        clip_norm: Optional[float] = 1.0, epochs: Optional[int] = None, max_iter: Optional[int] = None,
        batch_length_cm: float = 100.0, seed: int = 0, relaxation="smooth", dtype: str = "float64",
        device=None, checkpoint_dir=None, resume: bool = False, history_path=None, progress: bool = True,
        target_noise: bool = False, callback: Optional[Callable[[dict], Any]] = None, **options) -> FitResult:
    """Fit ``params`` of the simulator to ``target`` by Adam on mini-batches of tracks; see the module docstring.

    segments        segments table (simulation frame), e.g. after :func:`larnd_diff.selection.select_tracks`.
    target          :class:`~larnd_diff.hits.Hits` (data) or ``{name: true value}`` (closure; target simulated).
    params          names of the parameters to fit (any subset of ``larnd_diff.params.PARAMETERS``).
    backend         "torch", "jax" or "tensorflow" (numpy cannot fit: no gradients).
    loss            a name in :mod:`larnd_diff.losses` (default "sdtw_adc") or ``loss(sim_hits, target_hits)``.
    init            start values (physical units; default nominal).
    lr, lr_decay, clip_norm   Adam learning rate, its decay factor per epoch, the global gradient-norm clip.
    epochs, max_iter          stop after this many epochs / iterations (whichever first; at least one given).
    batch_length_cm, seed     mini-batch size in cm of track; seed of batching, epoch orders and noise.
    relaxation, dtype, device simulator settings for the model (and a target simulated with "same").
    checkpoint_dir, resume    where checkpoints (and by default the history) go; continue from there.
    history_path    JSON-lines history (default ``<checkpoint_dir>/history.jsonl``; None without a directory).
    progress        tqdm progress bar with the loss and the max relative parameter deviation.
    target_noise    simulate a parameter-dict target with electronics noise.
    callback        ``callback(record)`` after every iteration (record = the history entry); returning True
                    stops the fit early (checkpointed, resumable); raising aborts it (checkpointed).
    options         further :class:`Calibrator` keywords: checkpoint_every (10), checkpoint_on_error (True),
                    overwrite, target_simulator ("same" | "reference"), model_noise, fixed,
                    link_vdrift (vdrift = eField x mobility; default: when eField is fitted),
                    simulator (a stand-in with the signature of :func:`toy_simulator`), hessian (True),
                    hessian_batches, hessian_step, covariance_scale,
                    optimizer ("adam": the framework's Adam, the paper's; "adam-full": full-matrix Adam,
                    :class:`larnd_diff.backends.optim.FullMatrixAdam`),
                    parameterization ("linear": p / nominal, the paper's; "log": ln(p / nominal)),
                    stop_tol, stop_window (stop when every parameter moved less than stop_tol, in the
                    optimiser's coordinates, over the last stop_window iterations; None = off),
                    step_scales ({name: s}: coordinates u = ln(p / nominal) / s, a smaller step for s < 1),
                    adapt_steps (per-parameter step factors from the trajectory, see ``Calibrator._adapt``;
                    a dict overriding :data:`ADAPT_DEFAULTS`, or None = off; needs "adam-full"),
                    optimizer_options (beta1, beta2, rel_eps of "adam-full"),
                    loss_options (keywords for a named loss, e.g. {"scales": {"adc": 1.5}} for "sdtw"),
                    time_budget_s (stop after this much wall time, checkpointed and resumable),
                    fd_params, fd_step (parameters whose gradient is taken by central differences of the
                    batch loss with a relative step fd_step, 0.02: reverse mode cannot see hits appearing at
                    the trigger threshold; two forward passes each), fd_until (back to reverse mode for good
                    from this iteration on; None = never), fd_switch (back to reverse mode for good once both
                    agreed in sign fd_switch iterations in a row; None = never),
                    bounds (None; "ranges" = each parameter's physical range, the paper's Table I; or
                    {name: (lo, hi)}: after every step the parameters are projected onto the box; a fit that
                    ends on a bound says so in ``FitResult.at_bounds`` and its summary).
    :data:`PAPER_RECIPE` and :data:`CLOSURE_RECIPE` are keyword sets for this function:
    ``fit(segs, target, **CLOSURE_RECIPE, max_iter=400)``.
    """
    cal = Calibrator(segments, target, params=params, backend=backend, loss=loss, init=init, lr=lr,
                     lr_decay=lr_decay, clip_norm=clip_norm, epochs=epochs, max_iter=max_iter,
                     batch_length_cm=batch_length_cm, seed=seed, relaxation=relaxation, dtype=dtype, device=device,
                     checkpoint_dir=checkpoint_dir, resume=resume, history_path=history_path, progress=progress,
                     target_noise=target_noise, callback=callback, **options)
    return cal.run()


# ============================================================================================== closure
def random_targets(n: int, params: Sequence[str] = FIT_PARAMETERS, seed: int = 0) -> List[Dict[str, float]]:
    """``n`` target points drawn uniformly in the parameters' Table I ranges (seeded)."""
    _check_names(list(params), "params")
    rng = np.random.default_rng(_derived_seed("closure-targets", seed))
    return [{p: float(rng.uniform(SPECS[p].low, SPECS[p].high)) for p in params} for _ in range(n)]


def closure(segments, n_targets: int = 10, params: Sequence[str] = FIT_PARAMETERS, seed: int = 0,
            targets: Optional[Sequence[Mapping[str, float]]] = None, checkpoint_dir=None,
            tolerance: float = 0.01, only: Optional[Sequence[int]] = None, **fit_options) -> dict:
    """Closure test: fit from nominal to ``n_targets`` random targets (or the given ``targets``).

    ``only`` runs a subset of the target list by index (the others are not fitted); target ``i`` always gets the
    same fit seed and checkpoint sub-directory, so a closure can be split over processes or machines.

    Returns ``{"targets": [{"index", "target", "fitted", "relative_error", "iterations", "iterations_to_1pct",
    "wall_time_s", "n_skipped", "max_relative_error"}, ...]}`` (iterations_to_1pct uses ``tolerance``), plus the
    FitResults under the key ``"results"`` (not JSON; drop it before dumping).
    """
    targets = list(targets) if targets is not None else random_targets(n_targets, params, seed)
    chosen = range(len(targets)) if only is None else [int(i) for i in only]
    bad = [i for i in chosen if not 0 <= i < len(targets)]
    if bad:
        raise ValueError(f"only: target index(es) {bad} outside 0..{len(targets) - 1}")
    rows, results = [], []
    for i in chosen:
        tgt = targets[i]
        ck = Path(checkpoint_dir) / f"target_{i:03d}" if checkpoint_dir is not None else None
        res = fit(segments, dict(tgt), params=params, seed=seed + i, checkpoint_dir=ck, **fit_options)
        results.append(res)
        rows.append({"index": i, "target": dict(tgt), "fitted": res.params, "relative_error": res.relative_error(),
                     "max_relative_error": res.max_relative_error(), "iterations": res.iterations,
                     "iterations_to_1pct": res.iterations_to(tolerance), "wall_time_s": res.wall_time_s,
                     "wall_time_to_1pct_s": res.wall_time_to(tolerance),
                     "n_skipped": res.n_skipped, "stop_reason": res.stop_reason, "at_bounds": res.at_bounds,
                     "hessian_method": res.hessian_method,
                     "correlation": None if res.correlation is None else np.asarray(res.correlation).tolist()})
    return {"targets": rows, "results": results}


# ============================================================================================== plots
def _figure(nrows=1, ncols=1, size=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _history_of(obj) -> List[dict]:
    if isinstance(obj, FitResult):
        return obj.history
    if isinstance(obj, (str, Path)):
        return read_history(obj)
    return list(obj)


def plot_trajectories(result, path, target: Optional[Mapping[str, float]] = None) -> None:
    """One panel per parameter: value vs iteration (normalised by nominal), the target as a dashed line, the
    bounds of the fit (if any) as dotted lines."""
    hist = _history_of(result)
    target = target or (result.target if isinstance(result, FitResult) else None)
    bounds = result.bounds if isinstance(result, FitResult) else {}
    names = list(hist[0]["params"]) if hist else []
    ncols = min(3, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig, axes = _figure(nrows, ncols, (4.0 * ncols, 3.0 * nrows))
    it = [r["iteration"] for r in hist]
    for i, n in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        ax.plot(it, [r["params"][n] / SPECS[n].nominal for r in hist], lw=1)
        if target and n in target:
            ax.axhline(target[n] / SPECS[n].nominal, color="k", ls="--", lw=1, label="target")
        for edge in bounds.get(n, ()):
            if math.isfinite(edge):
                ax.axhline(edge / SPECS[n].nominal, color="0.5", ls=":", lw=1)
        ax.set_title(f"{n} [{SPECS[n].unit or '1'}]", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("value / nominal")
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _read_checkpoint(directory: Path) -> dict:
    with open(directory / CHECKPOINT_NAME, "rb") as fh:
        return pickle.load(fh)


def plot_convergence_band(results: Sequence, path, tolerance: float = 0.01) -> None:
    """Max relative distance to the target over parameters vs iteration for several fits (Fig. 16 style):
    each fit as a thin line, the median and the min-max band over fits, the tolerance as a dashed line.
    ``results``: FitResults, or directories of closure fits (``<checkpoint-dir>/target_*``: the history alone
    is enough, the checkpoint is read only for histories without the recorded distance)."""
    fig, axes = _figure()
    ax = axes[0][0]
    curves = []
    labelled = len(results) <= 10  # few fits: one colour and a legend entry each
    for i, r in enumerate(results):
        if isinstance(r, (str, Path)):  # a fit's checkpoint directory (e.g. one target of a split closure)
            hist = read_history(Path(r) / HISTORY_NAME)
            if hist and all("max_rel_err" in h for h in hist):  # a closure's history carries the distance
                y = np.array([h["max_rel_err"] for h in hist])
            else:
                fingerprint = _read_checkpoint(Path(r))["fingerprint"]
                tgt, names = fingerprint["target"], fingerprint["names"]
                y = np.array([_max_rel(h["params"], tgt, names) for h in hist])
        else:
            hist, tgt, names = r.history, r.target, r.names
            y = np.array([_max_rel(h["params"], tgt, names) for h in hist] + [r.max_relative_error()])
        curves.append(y)
        if labelled:
            ax.plot(np.arange(len(y)), y, color=f"C{i + 1}", alpha=0.8, lw=0.9, label=f"target {i}")
        else:
            ax.plot(np.arange(len(y)), y, color="tab:blue", alpha=0.25, lw=0.8)
    if curves:  # fits of different lengths (early stops): per iteration, the band is over the fits still running
        n = max(len(c) for c in curves)
        stack = np.full((len(curves), n), np.nan)
        for i, c in enumerate(curves):
            stack[i, :len(c)] = c
        x = np.arange(n)
        ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color="tab:blue", alpha=0.2,
                        label="min-max over fits")
        ax.plot(x, np.nanmedian(stack, 0), color="tab:blue", lw=1.5, label="median")
    ax.axhline(tolerance, color="k", ls="--", lw=1, label=f"{tolerance:.1%}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("max relative distance to target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_loss(result, path) -> None:
    """Loss per iteration (skipped steps marked) and its running mean over one epoch-ish window."""
    hist = _history_of(result)
    fig, axes = _figure()
    ax = axes[0][0]
    it = np.array([r["iteration"] for r in hist])
    loss = np.array([r["loss"] for r in hist], dtype=float)
    ax.plot(it, loss, lw=0.8, label="batch loss")
    if len(loss) >= 5:
        w = max(2, min(len(loss) // 10, 50))
        ax.plot(it[w - 1:], np.convolve(loss, np.ones(w) / w, "valid"), lw=1.5, label=f"mean of {w}")
    bad = [r["iteration"] for r in hist if r.get("skipped")]
    if bad:
        ax.plot(bad, np.zeros(len(bad)), "rx", label="skipped (NaN/inf)")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
