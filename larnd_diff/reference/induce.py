"""Induced current of diffused line segments on pixel pads: the CPU kernels.

The arithmetic is :mod:`.scalars` (one (segment, pixel) pair: :func:`.scalars.pair_current`), compiled here by
numba for the CPU; this module adds the drivers: the signal time windows, a parallel loop over the pairs and the
per-pixel waveform sums. :mod:`.cuda_kernels` compiles the same functions for a CUDA GPU.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..retarget import compile_scalars
from . import scalars
from .numerics import JIT
from .scalars import IN_PAD_TERMS

#: The scalar functions compiled for the CPU, not cached on disk themselves: numba's cache keys a function by its
#: code and argument types only, not by its compile options, and the simulator compiles some of the same functions
#: (:mod:`larnd_diff.response`) with fast-math. The drivers below are cached, the scalars' code inside them.
CPU = compile_scalars(scalars, njit(**{**JIT, "cache": False}))
#: The closed forms of the current model and the charge density, compiled.
charge_density = CPU["charge_density"]
current_model = CPU["current_model"]
truncated_exponential = CPU["truncated_exponential"]
pair_current = CPU["pair_current"]


# ------------------------------------------------------------------------------------------- time windows ---
@njit(**JIT)
def signal_window(t_start_us, t_end_us, vdrift, t_sampling, time_padding, t_max_us):
    """(w_start, w_end) in us: padded arrival window rounded (half-even) to the tick grid and clamped."""
    w_end = min(t_max_us, np.rint((t_end_us + time_padding + 0.5 / vdrift) / t_sampling) * t_sampling)
    w_start = max(0.0, np.rint((t_start_us - time_padding) / t_sampling) * t_sampling)
    return w_start, w_end


@njit(**JIT)
def signal_windows(t_start, t_end, vdrift, t_sampling, time_padding, t_max_us):
    """Per-segment placement start (us) and the chunk's number of ticks time_max = max ceil(window / dt)."""
    n = t_start.shape[0]
    starts = np.empty(n, np.float64)
    time_max = 0
    for s in range(n):
        w0, w1 = signal_window(np.float64(t_start[s]), np.float64(t_end[s]), vdrift, t_sampling, time_padding,
                               t_max_us)
        starts[s] = w0
        time_max = max(time_max, int(math.ceil((w1 - w0) / t_sampling)))
    return starts, time_max


@njit(**JIT)
def first_tick_time(t_start_us, t_sampling, time_padding):
    """Evaluation start T0 = max(0, floor((t_start - pad)/dt) dt) (floor, unlike the rounded placement; Q)."""
    return max(0.0, (t_start_us - time_padding) // t_sampling * t_sampling)


# --------------------------------------------------------------------------------------------- pair signals ---
@njit(parallel=True, **JIT)
def pair_signals(seg_index, pix_xy, x_start, y_start, z_start, x_end, y_end, z_end, sigma_t, sigma_l, n_e,
                 t_start, z_anode, pitch, vdrift, t_sampling, time_padding, n_points, n_ticks, single):
    """Signals (n_pairs, n_ticks) C/us of all (segment, pixel-centre) pairs at their segment's ticks, in parallel
    over pairs; row r is valid up to n_live[r] (returned second)."""
    n = seg_index.shape[0]
    out = np.empty((n, n_ticks))
    n_live = np.zeros(n, np.int64)
    for r in prange(n):
        s = seg_index[r]
        n_live[r] = pair_current(out[r], np.empty(n_ticks), np.empty(n_ticks),
                                 np.empty((IN_PAD_TERMS, n_points)),
                                 (np.float64(x_start[s]), np.float64(y_start[s]), np.float64(z_start[s])),
                                 (np.float64(x_end[s]), np.float64(y_end[s]), np.float64(z_end[s])),
                                 np.float64(sigma_t[s]), np.float64(sigma_l[s]), np.float64(n_e[s]),
                                 first_tick_time(np.float64(t_start[s]), t_sampling, time_padding), z_anode[s],
                                 pix_xy[r, 0], pix_xy[r, 1], pitch, vdrift, t_sampling, n_points, single)
    return out, n_live


@njit(**JIT)
def accumulate_waveforms(waveforms, signals, n_live, pair_row, pair_seg, start_tick):
    """waveform[row, start_tick[seg] + k] += signal[pair, k] (float64 sums, pairs in list order)."""
    for r in range(signals.shape[0]):
        row = pair_row[r]
        t0 = start_tick[pair_seg[r]]
        for k in range(min(n_live[r], waveforms.shape[1] - t0)):
            waveforms[row, t0 + k] += signals[r, k]
