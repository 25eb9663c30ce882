"""Host (Numba) search of the self-trigger cycles of :func:`larnd_diff.sim.electronics.electronics`.

Which tick triggers, where the conversion window ends and which cycles store a sample are integer decisions
without a derivative. The vectorised EagerPy search re-scans every pixel's whole waveform once per cycle
(10-20 masked passes over (n_rows, n_ticks) tensors); here one loop per pixel walks its ticks once, on
detached values of the same running integral, making the same comparisons in the same precision, so the
decisions are identical. The differentiable charge and crossing of each stored sample are then gathered
from the framework tensors at the returned ticks (:func:`larnd_diff.sim.electronics.electronics`).
"""
from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a hard dependency of the package
    njit = None
    prange = range


def _row_cycles(r, q, q_disc, clean, nans, last_tick, threshold, zero, window, dead_ticks, n_slots, n_cycles,
                base_first, base_after_success, base_after_failure, conversion_noise,
                trig, end, start, baseline, conversion, stored_nan, count):
    """The conversion cycles of the front end (the reference's: :func:`larnd_diff.reference.scalars.pixel_triggers`)
    for pixel row r, filling slot s = 0..count[r]-1 with the trigger tick ``trig``, the window's last tick ``end``,
    the cycle's start tick ``start`` (charge before it is q[start - 1]), the baseline and conversion noise
    (electrons) and whether the window holds a NaN tick.

    q, q_disc, clean: cumulative charge, the same plus discriminator noise, and the charge per tick with NaN -> 0
    (n_rows, n_ticks), all of one float dtype (``threshold``, ``zero`` and the noise arrays in that dtype too: the
    arithmetic is that of the framework's). nans: cumulative NaN count (n_rows, n_ticks). Baselines: per row and
    cycle, the first cycle's, the one after a stored sample and the one after a failed conversion (zeros without
    noise); conversion_noise per row and cycle. Plain Python, compiled for the host loop below and for the GPU
    (:mod:`larnd_diff.sim.trigger_cuda`, one thread per row).
    """
    n_ticks = q.shape[1]
    last = last_tick[r]
    live = last >= 0
    first = 0
    base = base_first[r]
    stored_n = 0
    for cycle in range(n_cycles):
        if not live:
            break
        s0 = min(first, n_ticks)
        before = q[r, s0 - 1] if s0 > 0 else zero
        nans_before = nans[r, s0 - 1] if s0 > 0 else 0
        target = threshold - base + before
        trigger = n_ticks
        for n in range(s0, n_ticks):
            if q_disc[r, n] >= target:
                trigger = n
                break
        t_c = min(trigger, n_ticks - 1)
        e = max(min(t_c + window, last), t_c)
        fired = trigger <= last and nans[r, t_c] == nans_before
        if not fired:
            break
        in_window_nan = nans[r, e] != nans[r, t_c]
        charge = base + (q[r, e] - before) + clean[r, t_c] + conversion_noise[r, cycle]
        ok = in_window_nan or not charge < threshold      # a NaN charge is stored, like the reference
        if ok:
            trig[r, stored_n] = t_c
            end[r, stored_n] = e
            start[r, stored_n] = s0
            baseline[r, stored_n] = base
            conversion[r, stored_n] = conversion_noise[r, cycle]
            stored_nan[r, stored_n] = in_window_nan
            stored_n += 1
        first = e + 1 + (dead_ticks if ok else 1)
        live = stored_n < n_slots and first <= last
        base = base_after_success[r, min(cycle + 1, n_cycles - 1)] if ok else base_after_failure[r, cycle]
    count[r] = stored_n


def _cycles(q, q_disc, clean, nans, last_tick, threshold, zero, window, dead_ticks, n_slots, n_cycles,
            base_first, base_after_success, base_after_failure, conversion_noise,
            trig, end, start, baseline, conversion, stored_nan, count):
    """:func:`_row_cycles` for every pixel row (rows in parallel)."""
    for r in prange(q.shape[0]):
        _row_cycles(r, q, q_disc, clean, nans, last_tick, threshold, zero, window, dead_ticks, n_slots, n_cycles,
                    base_first, base_after_success, base_after_failure, conversion_noise,
                    trig, end, start, baseline, conversion, stored_nan, count)


#: The plain Python per-row search (compiled for the GPU by :mod:`larnd_diff.sim.trigger_cuda`).
ROW_CYCLES = _row_cycles
if njit is not None:
    _row_cycles = njit(inline="always", cache=True)(_row_cycles)
    _cycles = njit(parallel=True, cache=True)(_cycles)


def self_trigger_cycles(q, q_disc, clean, nan_count, last_tick, threshold, window, dead_ticks, n_slots, n_cycles,
                        noise=None):
    """Host search of the conversion cycles on detached NumPy arrays (see :func:`_cycles`).

    noise: None or (reset, failed_reset, conversion) per row and cycle (n_rows, n_cycles) in electrons.
    Returns a dict of (n_rows, n_slots) arrays: trig, end, start (int64), baseline (float), window_nan (bool),
    conversion (float, only with noise), and count (n_rows,) int64; slots at and after count hold zeros.
    """
    dtype = q.dtype
    n_rows = q.shape[0]
    q, q_disc, clean = (np.ascontiguousarray(a, dtype) for a in (q, q_disc, clean))
    if noise is None:
        zeros = np.zeros((n_rows, n_cycles), dtype)
        reset, failed_reset, conversion = zeros, zeros, zeros
    else:
        reset, failed_reset, conversion = (np.ascontiguousarray(a, dtype) for a in noise)
    out = dict(trig=np.zeros((n_rows, n_slots), np.int64), end=np.zeros((n_rows, n_slots), np.int64),
               start=np.zeros((n_rows, n_slots), np.int64), baseline=np.zeros((n_rows, n_slots), dtype),
               conversion=np.zeros((n_rows, n_slots), dtype),
               window_nan=np.zeros((n_rows, n_slots), np.bool_), count=np.zeros(n_rows, np.int64))
    _cycles(q, q_disc, clean, np.ascontiguousarray(nan_count, np.int64), np.ascontiguousarray(last_tick, np.int64),
            dtype.type(threshold), dtype.type(0.0), int(window), int(dead_ticks), int(n_slots), int(n_cycles),
            np.ascontiguousarray(reset[:, 0]), reset, failed_reset, conversion,
            out["trig"], out["end"], out["start"], out["baseline"], out["conversion"], out["window_nan"],
            out["count"])
    if noise is None:
        del out["conversion"]
    return out


__all__ = ["self_trigger_cycles"]
