"""Backends side by side on one input: agreement with the reference, gradients, time and memory.

    import larnd_diff as ld
    from larnd_diff import compare
    segs = ld.generate_muons(n_events=2, seed=1)
    result = compare.compare(segs, backends=["numpy", "torch"], device=None, repeat=2)
    print(compare.format_table(result))
    compare.plot(result, "compare.png")

The same from the command line: ``larnd-diff compare [INPUT.h5] --backends torch jax --device cuda:0 --json
out.json --figure out.png`` (``examples/compare_backends.py`` is a thin script over this module).

What is measured, per backend (the simulator in ``dtype``, default float64):

* ``hard_vs_reference``: the ``hard`` preset against the Numba reference in float64 (``precision="float64"``);
  ``hard_vs_reference_larnd_sim``: against the reference in larnd-sim precision (its float32 map).
* ``smooth_vs_reference``: the ``smooth`` preset (continuous ADC) against the float64 reference, and
  ``mean_abs_dadc_vs_unrounded``: against the reference's ADC before rounding (what the smooth preset models).
* Times (seconds, median over ``repeat`` runs after one warm-up run, whose time is ``*_first_s``; every timed call
  ends by copying its result to the host, so asynchronous GPU work is included): ``forward_hard_s``,
  ``forward_smooth_s``, ``forward_grad6_s`` (smooth preset, the sum of the ADC values and its gradient w.r.t. the six
  fit parameters, reverse mode; not on numpy, which is forward-only).
* Peak memory over the timed runs (``peak_bytes_*``): on a GPU the framework allocator's peak
  (``torch.cuda.max_memory_allocated``, ``tf.config.experimental.get_memory_info``; jax has no reset, so its figure
  is ``peak_bytes_in_use`` since the process started); on the CPU the growth of the process's resident set size
  over its value at the start of the timed runs (sampled every few ms).
* ``gradient_agreement``: per parameter, the largest relative difference of a backend's gradient from the first
  differentiable backend's (1e-6 is the acceptance bar in float64).

Agreement figures (:func:`agreement`) follow ``tests/test_sim_parity.py``: hit pixels are matched by
(event, I, J) over the union of both sides; an empty ADC slot reads as the pedestal 74 (``digitize(0)``, as in
larnd-sim outputs); a row is *identical* when all its slots are equal, *within_1* when no slot differs by more than
one count; ``mean_abs_dadc_per_hit_pixel`` is the sum of |dADC| over the slots, averaged over the hit pixels.

JSON (``to_json``) keys: ``version``, ``input`` (source, n_segments, n_events, track_cm), ``device``, ``dtype``,
``repeat``, ``machine``, ``reference`` (forward_s, hit_pixels), ``backends`` (name -> the figures above plus
``device``, ``memory``, ``loss``, ``gradients``), ``gradient_agreement`` (when two or more backends have gradients),
``notes`` (name -> remark, e.g. numpy kept on the CPU).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from .backends.base import parse_device
from .compare_figures import pixel_differences, plot, plot_event_comparison
from .hits import PEDESTAL, adc_rows
from .params import FIT_PARAMETERS, SPECS

__all__ = ["CompareError", "PEDESTAL", "adc_rows", "agreement", "unrounded_adc", "check_backends", "is_gpu",
           "check_device", "placement", "timed", "PeakMemory", "loss_and_grads", "compare", "format_table", "to_json",
           "plot", "load_input", "pixel_differences", "plot_event_comparison", "JSON_KEYS", "BACKEND_KEYS"]

JSON_VERSION = 1
#: Top-level keys of the JSON result, and the keys every backend entry has.
JSON_KEYS = ("version", "input", "device", "dtype", "repeat", "machine", "reference", "backends", "notes")
BACKEND_KEYS = ("device", "memory", "hard_vs_reference", "hard_vs_reference_larnd_sim", "smooth_vs_reference",
                "forward_hard_s", "forward_hard_first_s", "forward_smooth_s", "forward_smooth_first_s",
                "peak_bytes_forward")


class CompareError(ValueError):
    """A request the comparison cannot run (unknown or uninstalled backend, a GPU that is not there)."""


# ============================================================================================== agreement
def agreement(ours, ref, ref_adc=None) -> dict:
    """Figures comparing two Hits (see the module docstring): hit_pixels, only_ours, only_reference, identical,
    within_1, mean_abs_dadc_per_hit_pixel. ``ref_adc`` replaces the reference's ADC (e.g. :func:`unrounded_adc`)."""
    a = adc_rows(ours)
    b = adc_rows(ref, ref_adc)
    keys = sorted(set(a) | set(b))
    width = next(iter(a.values() or b.values()), np.zeros(10)).shape[0]
    empty = np.full(width, PEDESTAL)
    diff = np.array([np.abs(a.get(k, empty) - b.get(k, empty)) for k in keys]) if keys else np.zeros((0, width))
    n = max(len(keys), 1)
    return {"hit_pixels": len(keys), "only_ours": len(set(a) - set(b)), "only_reference": len(set(b) - set(a)),
            "identical": float(np.sum(np.all(diff == 0, axis=1)) / n),
            "within_1": float(np.sum(np.all(diff <= 1, axis=1)) / n),
            "mean_abs_dadc_per_hit_pixel": float(diff.sum() / n)}


def unrounded_adc(ref, detector=None) -> Optional[np.ndarray]:
    """The reference's ADC before rounding, from its converted charge (electrons); None without charges."""
    if ref.charge is None:
        return None
    from .detector import module0

    el = (detector or module0()).electronics
    q = np.asarray(ref.numpy().charge, np.float64)
    v = np.maximum(q * el.gain_mv_per_e + el.v_pedestal_mv - el.v_cm_mv, 0) * el.adc_counts / (el.v_ref_mv - el.v_cm_mv)
    return np.minimum(v, el.adc_counts)


# ============================================================================================== backends, devices
def check_backends(names: Iterable[str]) -> List[str]:
    """Canonical names of the requested backends; a :class:`CompareError` naming the problem and the installed
    backends when one is unknown or its framework is not installed."""
    from .ops import available_backends, get_backend, known_backends

    out = []
    for name in names:
        if name == "reference":
            raise CompareError("'reference' is what every backend is compared with; name simulator backends "
                               f"({', '.join(known_backends())})")
        try:
            canonical = get_backend(name).name
        except ImportError as exc:  # BackendUnavailable
            raise CompareError(f"backend {name!r} is not installed here: {exc}; installed backends: "
                               f"{', '.join(available_backends()) or 'none'}") from None
        except (ValueError, TypeError) as exc:
            raise CompareError(f"{exc}; installed backends: {', '.join(available_backends()) or 'none'}") from None
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise CompareError("no backend to compare")
    return out


def is_gpu(backend: str, device) -> bool:
    """Whether ``device`` (None = the framework's default device) is a GPU for ``backend`` (never for a backend that
    drives no GPU)."""
    from .ops import get_backend

    b = get_backend(backend)
    if not b.has_feature("gpu"):
        return False
    return parse_device(b.default_device() if device is None else device)[0]


def _spec_is_gpu(device) -> bool:
    """Whether a device spec names a GPU ("cuda:0", "gpu", "/GPU:0")."""
    return parse_device(device)[0]


def check_device(backend: str, device) -> None:
    """A clear :class:`CompareError` when a GPU device is asked of a framework that sees none (TensorFlow would
    otherwise fall back to the CPU silently)."""
    from .ops import get_backend

    if device is None or not is_gpu(backend, device):
        return
    n = get_backend(backend).gpu_count()
    if parse_device(device)[1] >= n:
        raise CompareError(f"device {device!r} asked of {backend}, which sees {n} GPU(s) here")


def placement(backend: str, device):
    """A context manager that makes ``device`` the framework's default placement as well (None: no change):
    ``Backend.placement`` (TensorFlow runs an eager op on the GPU whenever there is one, whatever device its inputs
    were created on, so a CPU run there needs ``tf.device``; jax puts arrays created without a device on its
    default device; torch and numpy place by their inputs: nothing to do)."""
    from .ops import get_backend

    if device is None:
        return contextlib.nullcontext()
    return get_backend(backend).placement(device)


# ============================================================================================== time, memory
def timed(fn: Callable, repeat: int = 2, monitor=None):
    """(result of the last call, first-call seconds, median seconds of ``repeat`` further calls, their times).

    The first call is the warm-up (compilation, caches); ``monitor`` (a context manager, e.g. :class:`PeakMemory`)
    wraps the timed calls only.
    """
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    with monitor if monitor is not None else contextlib.nullcontext():
        for _ in range(max(int(repeat), 1)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return out, first, float(statistics.median(times)), times


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)


class PeakMemory:
    """Peak memory of the code run inside ``with PeakMemory(backend, device) as m:`` -> ``m.peak_bytes``.

    GPU: the framework allocator's peak (``Backend.reset_peak_memory`` on entry where the framework can reset it,
    ``Backend.peak_memory`` on exit; jax reports its peak since the process started). CPU: the largest resident-set
    growth over the value on entry, sampled by a thread every ``interval`` seconds (and the process's peak RSS when
    that rose). ``m.kind`` says which.
    """

    def __init__(self, backend: str, device=None, interval: float = 0.005):
        from .ops import get_backend

        self.backend, self.device, self.interval = backend, device, interval
        self._b = get_backend(backend)
        self.gpu = is_gpu(backend, device)
        self.kind = f"{backend} GPU allocator peak" if self.gpu else "CPU resident-set growth"
        if self.gpu and not self._b.implements("reset_peak_memory"):
            self.kind = f"{backend} GPU allocator peak since process start ({backend} cannot reset it)"
        self.peak_bytes: Optional[int] = None

    def __enter__(self):
        if self.gpu:
            self._b.reset_peak_memory(self._gpu_index())
            return self
        self._base = _rss_bytes()
        self._max_rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _gpu_index(self) -> int:
        return parse_device(self.device)[1] if self.device is not None else 0

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self.gpu:
            try:
                self.peak_bytes = self._b.peak_memory(self._gpu_index())
            except Exception:  # a framework without the statistic: report none rather than fail the comparison
                self.peak_bytes = None
            return False
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, _rss_bytes())
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if max_rss > self._max_rss0:  # a short spike the sampler missed
            peak = max(peak, max_rss * (1 if sys.platform == "darwin" else 1024))
        self.peak_bytes = int(max(peak - self._base, 0))
        return False


# ============================================================================================== one backend
def _host(x):
    """Copy to the host (forces asynchronous GPU work to finish)."""
    from .ops import to_numpy

    return to_numpy(x)


def loss_and_grads(segs, backend: str, device=None, dtype: str = "float64", detector=None):
    """Sum of the smooth-preset ADC values and its gradient w.r.t. the six fit parameters (at nominal)."""
    import larnd_diff as ld
    from .ops import get_backend, nan_to_num

    b = get_backend(backend)

    def loss(p):
        hits = ld.simulate(segs, backend=backend, device=device, relaxation="smooth", dtype=dtype,
                           detector=detector, params={k: v.raw for k, v in p.items()})
        return nan_to_num(b.wrap(hits.adc)).sum()

    with placement(backend, device):
        start = {k: b.asarray(np.asarray(SPECS[k].nominal), dtype, device) for k in FIT_PARAMETERS}
        value, grads = b.value_and_grad(loss, start)
    return float(_host(value)), {k: float(np.asarray(_host(g)).reshape(())) for k, g in grads.items()}


def _compare_backend(segs, name, device, dtype, repeat, ref64, ref_ls, unrounded, grad, detector, log) -> dict:
    import larnd_diff as ld
    from .ops import get_backend

    b = get_backend(name)
    dev = device if b.has_feature("gpu") else None
    row = {"device": str(dev if dev is not None else b.default_device()), "dtype": dtype}

    def forward(relaxation):
        def run():
            with placement(name, dev):
                h = ld.simulate(segs, backend=name, device=dev, relaxation=relaxation, dtype=dtype,
                                detector=detector)
            return h.numpy()  # to the host: includes the device's asynchronous work
        return run

    for relax in ("hard", "smooth"):
        log(f"  {name}: forward ({relax})")
        mem = PeakMemory(name, dev)
        hits, first, med, times = timed(forward(relax), repeat, mem)
        row[f"forward_{relax}_first_s"], row[f"forward_{relax}_s"] = first, med
        row[f"forward_{relax}_times_s"] = times
        row[f"peak_bytes_forward_{relax}"] = mem.peak_bytes
        if relax == "hard":
            row["hard_vs_reference"] = agreement(hits, ref64)
            row["hard_vs_reference_larnd_sim"] = agreement(hits, ref_ls)
        else:
            fig = agreement(hits, ref64)
            if unrounded is not None:
                fig["mean_abs_dadc_vs_unrounded"] = agreement(hits, ref64, unrounded)["mean_abs_dadc_per_hit_pixel"]
            row["smooth_vs_reference"] = fig
    row["peak_bytes_forward"] = max((v for v in (row["peak_bytes_forward_hard"], row["peak_bytes_forward_smooth"])
                                     if v is not None), default=None)
    row["memory"] = mem.kind
    if grad and b.supports("grad"):
        log(f"  {name}: forward + gradient of {len(FIT_PARAMETERS)} parameters (smooth)")
        mem = PeakMemory(name, dev)
        (value, grads), first, med, times = timed(lambda: loss_and_grads(segs, name, dev, dtype, detector),
                                                  repeat, mem)
        row["forward_grad6_first_s"], row["forward_grad6_s"], row["forward_grad6_times_s"] = first, med, times
        row["peak_bytes_grad"] = mem.peak_bytes
        row["loss"], row["gradients"] = value, grads
    return row


# ============================================================================================== the comparison
def _machine() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count()}


def _track_cm(segs) -> float:
    return float(np.sum(np.asarray(segs["dx"], np.float64)))


def compare(segs, backends: Optional[Sequence[str]] = None, device=None, repeat: int = 2, dtype: str = "float64",
            grad: bool = True, detector=None, source: str = "segments",
            progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run every backend of ``backends`` (default: every installed one) on ``segs``; the JSON-ready result.

    device    framework device for every backend ("cpu", "cuda:0", ...; None = each framework's default); numpy
              always runs on the CPU.
    repeat    timed runs after the warm-up run (median reported).
    dtype     the simulator's float type ("float64" or "float32"); the reference is float64 (and larnd-sim).
    grad      also time forward + gradient (differentiable backends).
    progress  ``progress(message)`` for progress lines (the CLI prints them to stderr).
    """
    import larnd_diff as ld
    from .ops import available_backends, get_backend

    log = progress or (lambda msg: None)
    names = check_backends(backends if backends else available_backends())
    if dtype not in ("float64", "float32"):
        raise CompareError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    notes = {}
    for n in names:
        if not get_backend(n).has_feature("gpu"):
            if device is not None and parse_device(device)[0]:
                notes[n] = f"{n} runs on the CPU only: compared on the CPU, not on {device}"
            continue
        check_device(n, device)
    if len(segs) == 0:
        raise CompareError("the input has no segments")

    log(f"reference (Numba, float64 and larnd-sim precision) on {len(segs)} segments, {_track_cm(segs):.1f} cm")
    _, ref_first, ref_s, _ = timed(lambda: ld.simulate(segs, precision="float64", detector=detector), 1)
    ref64 = ld.simulate(segs, precision="float64", detector=detector).numpy()
    ref_ls = ld.simulate(segs, precision="larnd-sim", detector=detector).numpy()
    unrounded = unrounded_adc(ref64, detector)
    out = {"version": JSON_VERSION,
           "input": {"source": source, "n_segments": int(len(segs)),
                     "n_events": int(len(np.unique(segs["eventID"]))) if "eventID" in segs.dtype.names else None,
                     "track_cm": _track_cm(segs)},
           "device": None if device is None else str(device), "dtype": dtype, "repeat": int(repeat),
           "machine": _machine(),
           "reference": {"forward_s": ref_s, "forward_first_s": ref_first, "hit_pixels": len(ref64),
                         "precision": "float64"},
           "backends": {}, "notes": notes}
    for name in names:
        where = (device or "the framework's default") if get_backend(name).has_feature("gpu") else "cpu"
        log(f"{name} ({dtype}, device {where})")
        out["backends"][name] = _compare_backend(segs, name, device, dtype, repeat, ref64, ref_ls, unrounded, grad,
                                                 detector, log)
    with_grads = [(n, r["gradients"]) for n, r in out["backends"].items() if "gradients" in r]
    if len(with_grads) > 1:
        base_name, base = with_grads[0]
        rel = {k: max(abs(g[k] - base[k]) / max(abs(base[k]), 1e-300) for _, g in with_grads[1:])
               for k in FIT_PARAMETERS}
        out["gradient_agreement"] = {"relative_to": base_name, "backends": [n for n, _ in with_grads],
                                     "max_relative_difference": rel,
                                     "worst": float(max(rel.values()))}
    return out


def to_json(result: dict, path=None) -> str:
    """The result as JSON text (NaN-free: missing figures are null); written to ``path`` when given."""
    text = json.dumps(result, indent=1, default=_json_default)
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return text


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fmt_bytes(v) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _fmt_s(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_table(result: dict) -> str:
    """A plain-text table of the result (one line per backend, then the gradient agreement)."""
    inp = result["input"]
    lines = [f"input: {inp['source']}: {inp['n_segments']} segments, {inp['track_cm']:.1f} cm of track; "
             f"simulator {result['dtype']}; reference forward {result['reference']['forward_s']:.3g} s, "
             f"{result['reference']['hit_pixels']} hit pixels",
             f"{'backend':11s} {'device':9s} {'hard=ref':>9s} {'hard±1':>8s} {'hard=ls':>8s} {'sm|dADC|':>9s} "
             f"{'unround':>8s} {'fwd[s]':>8s} {'smooth[s]':>9s} {'fwd+grad[s]':>11s} {'MB fwd':>7s} {'MB grad':>7s}"]
    for name, r in result["backends"].items():
        h, s = r["hard_vs_reference"], r["smooth_vs_reference"]
        unround = s.get("mean_abs_dadc_vs_unrounded", float("nan"))
        lines.append(f"{name:11s} {r['device'][:9]:9s} {h['identical']:9.2%} {h['within_1']:8.2%} "
                     f"{r['hard_vs_reference_larnd_sim']['identical']:8.2%} "
                     f"{s['mean_abs_dadc_per_hit_pixel']:9.3f} {unround:8.3f} "
                     f"{_fmt_s(r['forward_hard_s']):>8s} {_fmt_s(r['forward_smooth_s']):>9s} "
                     f"{_fmt_s(r.get('forward_grad6_s')):>11s} {_fmt_bytes(r.get('peak_bytes_forward')):>7s} "
                     f"{_fmt_bytes(r.get('peak_bytes_grad')):>7s}")
    g = result.get("gradient_agreement")
    if g:
        lines.append(f"gradients vs {g['relative_to']} (max relative difference): "
                     + ", ".join(f"{k} {v:.1e}" for k, v in g["max_relative_difference"].items()))
    for name, why in result.get("notes", {}).items():
        lines.append(f"note: {name}: {why}")
    lines.append("hard=ref / hard±1: ADC rows identical to / within one count of the float64 reference; hard=ls: "
                 "identical to the larnd-sim-precision reference; sm|dADC|: smooth preset, mean |dADC| per hit pixel "
                 "(unround: vs the reference's unrounded ADC); MB: peak memory (" +
                 "; ".join(sorted({r['memory'] for r in result['backends'].values()})) + ")")
    return "\n".join(lines)


# ============================================================================================== input
def load_input(path=None, events: int = 2, seed: int = 1, swap_xz: bool = True, outside: str = "error"):
    """(segments, description): the segments of an HDF5 file, or ``events`` generated 1 GeV muons."""
    import larnd_diff as ld

    if path:
        return ld.load_segments(str(path), swap_xz=swap_xz, outside=outside), str(path)
    return ld.generate_muons(n_events=events, seed=seed), f"generated 1 GeV muons ({events} events, seed {seed})"
