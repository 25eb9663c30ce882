"""Backtracking of ADC samples to the segments that induced them."""
from __future__ import annotations

import numpy as np
from numba import njit

from .numerics import JIT


@njit(**JIT)
def segments_per_pixel(pair_row, pair_seg, n_rows, width):
    """For each unique pixel row, the first ``width`` chunk segments (ascending) whose pixel list contains it."""
    out = np.full((n_rows, width), -1, np.int64)
    count = np.zeros(n_rows, np.int64)
    for r in range(pair_row.shape[0]):
        row = pair_row[r]
        c = count[row]
        if c < width and (c == 0 or out[row, c - 1] != pair_seg[r]):
            out[row, c] = pair_seg[r]
            count[row] = c + 1
    return out


@njit(**JIT)
def backtrack_samples(track_map, sample_time_us, n_samples, t_start, t_end, t_lo_pad, t_hi_pad, seg_rows):
    """Segments (rows of the input table) whose padded arrival window contains each stored sample's time:
    t_start - t_lo_pad < t < t_end + t_hi_pad. Shape (n, K, width); -1 where none (and for empty slots)."""
    n, k_max = sample_time_us.shape
    width = track_map.shape[1]
    out = np.full((n, k_max, width), -1, np.int64)
    for p in range(n):
        for k in range(n_samples[p]):
            t = sample_time_us[p, k]
            c = 0
            for j in range(width):
                s = track_map[p, j]
                if s < 0:
                    continue
                if t_start[s] - t_lo_pad < t < t_end[s] + t_hi_pad:
                    out[p, k, c] = seg_rows[s]
                    c += 1
    return out
