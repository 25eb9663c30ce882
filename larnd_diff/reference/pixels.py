"""Pixels under each segment : Bresenham line of "active" pixels plus a square neighbourhood.

Pixel ids are (I, J) with I = ix + n_x * plane (the plane folded into I) and J = iy. Lists are sized exactly
(the "cap" behaviour: no capacity overflow).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .numerics import JIT


@njit(**JIT)
def pixel_of_point(x, y, plane, x_lo, y_lo, pitch, n_x):
    """(I, J) of the point (x, y) cm in TPC ``plane`` (Python floor division, as larnd-sim's ``//``)."""
    i = int((x - x_lo) // pitch) + n_x * plane
    j = int((y - y_lo) // pitch)
    return i, j


@njit(**JIT)
def pixel_center(i, j, x_lo_by_plane, y_lo_by_plane, pitch, n_x):
    """Centre (x, y) cm of pixel (I, J): ((I - n_x plane) p + x_lo) + p/2, (J p + y_lo) + p/2."""
    plane = i // n_x
    x = (i - n_x * plane) * pitch + x_lo_by_plane[plane] + pitch / 2
    y = j * pitch + y_lo_by_plane[plane] + pitch / 2
    return x, y


@njit(**JIT)
def bresenham_pixels(i0, j0, i1, j1, n_y):
    """Active pixels from (i0, j0) to (i1, j1): integer Bresenham, the error term stepping when D >= 0.

    Returns an (M + 1, 2) array; slots whose pixel is outside I >= 0, 0 <= J <= n_y hold (-1, -1).
    """
    di = i1 - i0
    dj = j1 - j0
    si = 1 if di > 0 else -1
    sj = 1 if dj > 0 else -1
    major_is_i = abs(di) > abs(dj)
    big = abs(di) if major_is_i else abs(dj)
    small = abs(dj) if major_is_i else abs(di)
    out = np.full((big + 1, 2), -1, np.int64)
    err = 2 * small - big
    offset = 0
    for s in range(big + 1):
        if major_is_i:
            i = i0 + s * si
            j = j0 + offset * sj
        else:
            j = j0 + s * sj
            i = i0 + offset * si
        if i >= 0 and 0 <= j <= n_y:
            out[s, 0] = i
            out[s, 1] = j
        if err >= 0:
            offset += 1
            err -= 2 * big
        err += 2 * small
    return out


@njit(**JIT)
def neighbourhood_pixels(active, radius, n_x, n_y, n_planes):
    """Distinct pixels within +-radius (x offset outer loop, y inner) of the active pixels, in build order."""
    cap = active.shape[0] * (2 * radius + 1) ** 2
    out = np.empty((cap, 2), np.int64)
    n = 0
    for s in range(active.shape[0]):
        i = active[s, 0]
        j = active[s, 1]
        if i == -1 and j == -1:
            continue
        for a in range(-radius, radius + 1):
            for b in range(-radius, radius + 1):
                ii = i + a
                jj = j + b
                if ii < 0 or jj < 0 or jj >= n_y or ii // n_x >= n_planes:
                    continue
                seen = False
                for k in range(n):
                    if out[k, 0] == ii and out[k, 1] == jj:
                        seen = True
                        break
                if not seen:
                    out[n, 0] = ii
                    out[n, 1] = jj
                    n += 1
    return out[:n]


@njit(**JIT)
def segment_pixel_pairs(x_start, y_start, x_end, y_end, plane, x_lo, y_lo, pitch, n_x, n_y, n_planes, radius):
    """All (segment, I, J) pairs of a chunk in larnd-sim's list order; returns (seg_index, pixels (n, 2))."""
    n_seg = x_start.shape[0]
    lists = []
    total = 0
    for s in range(n_seg):
        p = plane[s]
        if p < 0 or p >= n_planes:
            # outside every TPC: larnd-sim indexes out of bounds here (undefined); such a segment induces nothing
            lists.append(np.empty((0, 2), np.int64))
            continue
        i0, j0 = pixel_of_point(x_start[s], y_start[s], p, x_lo[p], y_lo[p], pitch, n_x)
        i1, j1 = pixel_of_point(x_end[s], y_end[s], p, x_lo[p], y_lo[p], pitch, n_x)
        nb = neighbourhood_pixels(bresenham_pixels(i0, j0, i1, j1, n_y), radius, n_x, n_y, n_planes)
        lists.append(nb)
        total += nb.shape[0]
    seg = np.empty(total, np.int64)
    pix = np.empty((total, 2), np.int64)
    k = 0
    for s in range(n_seg):
        nb = lists[s]
        for r in range(nb.shape[0]):
            seg[k] = s
            pix[k, 0] = nb[r, 0]
            pix[k, 1] = nb[r, 1]
            k += 1
    return seg, pix


def neighbourhood_radius(tran_sigma_max, pitch):
    """larnd-sim's radius: ceil(5 sigma_T,max / p) + 1 (2 for module0)."""
    return int(math.ceil(5 * float(tran_sigma_max) / pitch)) + 1


def unique_pixels(pix: np.ndarray):
    """Distinct (I, J) sorted lexicographically and, for each input pair, its row in that list."""
    if len(pix) == 0:
        return np.empty((0, 2), np.int64), np.empty(0, np.int64)
    uniq, inverse = np.unique(pix, axis=0, return_inverse=True)
    return uniq.astype(np.int64), inverse.reshape(-1).astype(np.int64)
