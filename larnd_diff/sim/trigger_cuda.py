"""The self-trigger search of :mod:`larnd_diff.sim.trigger_host` on an NVIDIA GPU (numba-cuda).

The same per-row function (:data:`larnd_diff.sim.trigger_host.ROW_CYCLES`, plain Python) compiled as a CUDA
device function, one thread per pixel row, reading the framework's running integrals in place
(``__cuda_array_interface__``): the waveforms never leave the GPU, only the few integers and baselines of the
stored samples come back to the host. Same comparisons in the same precision as the host search (the scalars are
passed in the waveforms' dtype), so the decisions are identical.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from larnd_diff.retarget import rebind
from larnd_diff.sim import trigger_host
from larnd_diff.sim.fused_cuda import THREADS, as_device, is_available

try:
    from numba import cuda
except Exception:   # pragma: no cover - numba-cuda missing: is_available() says so
    cuda = None

#: The per-row search; rebound to its CUDA device compilation inside the kernel (:func:`_kernel`).
row_cycles = trigger_host.ROW_CYCLES
#: Output arrays of the search: name -> dtype (window_nan as int8 on the GPU, bool on the host).
_OUTPUTS = {"trig": np.int64, "end": np.int64, "start": np.int64, "baseline": None, "conversion": None,
            "window_nan": np.int8}


def _kernel_body(q, q_disc, clean, nans, last_tick, threshold, zero, window, dead_ticks, n_slots, n_cycles,
                 base_first, base_after_success, base_after_failure, conversion_noise,
                 trig, end, start, baseline, conversion, stored_nan, count):
    r = cuda.grid(1)
    if r < q.shape[0]:
        row_cycles(r, q, q_disc, clean, nans, last_tick, threshold, zero, window, dead_ticks, n_slots, n_cycles,
                   base_first, base_after_success, base_after_failure, conversion_noise,
                   trig, end, start, baseline, conversion, stored_nan, count)


@lru_cache(maxsize=None)
def _kernel():
    ns = {"cuda": cuda}
    ns["row_cycles"] = cuda.jit(device=True)(rebind(trigger_host.ROW_CYCLES, dict(vars(trigger_host))))
    return cuda.jit(rebind(_kernel_body, ns))


def self_trigger_cycles(q, q_disc, clean, nan_count, last_tick, threshold, window, dead_ticks, n_slots, n_cycles,
                        noise=None, zeros=None):
    """:func:`larnd_diff.sim.trigger_host.self_trigger_cycles` on CUDA arrays (anything with
    ``__cuda_array_interface__``): q, q_disc, clean (n_rows, n_ticks) of one float dtype, nan_count int64 of the
    same shape, last_tick (n_rows,) int64, noise None or (reset, failed_reset, conversion) (n_rows, n_cycles) in
    the float dtype. ``zeros(shape, numpy dtype)``: zeroed CUDA arrays for the outputs (default numba's).
    Returns the host search's dict with the outputs left on the GPU, as ``zeros`` made them (nothing is copied
    or synchronised here); ``window_nan`` is int8 (0/1), not bool."""
    dev = as_device
    q, q_disc, clean, nan_count, last_tick = (dev(a) for a in (q, q_disc, clean, nan_count, last_tick))
    dtype = np.dtype(q.dtype)
    n_rows = q.shape[0]
    alloc = zeros or (lambda shape, dt: cuda.to_device(np.zeros(shape, dt)))
    if noise is None:
        none = dev(alloc((n_rows, n_cycles), dtype))    # zero reset and conversion noise
        reset, failed_reset, conversion = none, none, none
    else:
        reset, failed_reset, conversion = (dev(a) for a in noise)
    out = {k: alloc((n_rows, n_slots), dt or dtype) for k, dt in _OUTPUTS.items()}
    out["count"] = alloc((n_rows,), np.int64)
    if n_rows:
        o = {k: dev(v) for k, v in out.items()}
        _kernel()[max(1, -(-n_rows // THREADS)), THREADS](
            q, q_disc, clean, nan_count, last_tick, dtype.type(threshold), dtype.type(0.0), int(window),
            int(dead_ticks), int(n_slots), int(n_cycles), reset[:, 0], reset, failed_reset, conversion,
            o["trig"], o["end"], o["start"], o["baseline"], o["conversion"], o["window_nan"], o["count"])
    if noise is None:
        del out["conversion"]
    return out


__all__ = ["is_available", "self_trigger_cycles"]
