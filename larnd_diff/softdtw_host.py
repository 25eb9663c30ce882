"""Soft-DTW on the host: the dynamic programme and its E-matrix backward as Numba loops (float64).

The wavefront formulation of :mod:`larnd_diff.softdtw` is what a GPU wants, but each of its n + m sequential
steps is a few dozen small framework operations: on a CPU (and for the hit sequences of a fit, a few hundred to
a few thousand long, on a GPU too) that per-step overhead dominates - 0.3-0.7 s per loss for ~1,000 hits.
The same recursions as plain loops over the cost matrix take milliseconds. Used by ``soft_dtw(...,
kernel="host")`` (the default where it applies) through the backend's ``host_vjp``.

Definitions as in :mod:`larnd_diff.softdtw`; the backward is Cuturi & Blondel's Algorithm 2:
E[i, j] = E[i+1, j] a + E[i, j+1] b + E[i+1, j+1] c with a = exp((R[i+1, j] - R[i, j] - C[i+1, j]) / gamma)
etc., E[n, m] = 1, and d sdtw / d C = E.
"""
from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency of the package
    njit = None


def available() -> bool:
    return njit is not None


def _forward(c, nx, ny, gamma):
    """R tables (B, N+1, M+1) and values R[b, nx_b, ny_b] (inf for empty items)."""
    batch, n_max, m_max = c.shape
    r = np.full((batch, n_max + 1, m_max + 1), np.inf)
    val = np.full(batch, np.inf)
    for b in prange(batch):
        n, m = nx[b], ny[b]
        if n == 0 or m == 0:
            continue
        r[b, 0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                a, bb, cc = r[b, i - 1, j - 1], r[b, i - 1, j], r[b, i, j - 1]
                low = min(a, min(bb, cc))
                s = math.exp((low - a) / gamma) + math.exp((low - bb) / gamma) + math.exp((low - cc) / gamma)
                r[b, i, j] = c[b, i - 1, j - 1] + low - gamma * math.log(s)
        val[b] = r[b, n, m]
    return val, r


def _backward(c, r, nx, ny, gamma, cot):
    """d loss / d C (B, N, M) for the cotangent ``cot`` (B,) of the values."""
    batch, n_max, m_max = c.shape
    grad = np.zeros((batch, n_max, m_max))
    for b in prange(batch):
        n, m = nx[b], ny[b]
        if n == 0 or m == 0 or cot[b] == 0.0:
            continue
        e = np.zeros((n + 2, m + 2))
        e[n, m] = 1.0
        for i in range(n, 0, -1):
            for j in range(m, 0, -1):
                if i == n and j == m:
                    continue
                acc = 0.0
                rij = r[b, i, j]
                if i < n:
                    acc += e[i + 1, j] * math.exp((r[b, i + 1, j] - rij - c[b, i, j - 1]) / gamma)
                if j < m:
                    acc += e[i, j + 1] * math.exp((r[b, i, j + 1] - rij - c[b, i - 1, j]) / gamma)
                if i < n and j < m:
                    acc += e[i + 1, j + 1] * math.exp((r[b, i + 1, j + 1] - rij - c[b, i, j]) / gamma)
                e[i, j] = acc
        for i in range(n):
            for j in range(m):
                grad[b, i, j] = e[i + 1, j + 1] * cot[b]
    return grad


if njit is not None:
    _forward = njit(parallel=True, cache=True)(_forward)
    _backward = njit(parallel=True, cache=True)(_backward)


def sdtw_values(c: np.ndarray, nx: np.ndarray, ny: np.ndarray, gamma: float) -> np.ndarray:
    """Soft-DTW values (B,) of cost matrices ``c`` (B, N, M) with item lengths nx, ny."""
    val, _ = _forward(np.ascontiguousarray(c, np.float64), np.asarray(nx, np.int64), np.asarray(ny, np.int64),
                      float(gamma))
    return val


def sdtw_grad(c: np.ndarray, nx: np.ndarray, ny: np.ndarray, gamma: float, cot: np.ndarray) -> np.ndarray:
    """d (cot . values) / d c: the expected-alignment matrices E scaled by the cotangent (recomputes R)."""
    c = np.ascontiguousarray(c, np.float64)
    nx, ny = np.asarray(nx, np.int64), np.asarray(ny, np.int64)
    _, r = _forward(c, nx, ny, float(gamma))
    return _backward(c, r, nx, ny, float(gamma), np.asarray(cot, np.float64).reshape(-1))


__all__ = ["available", "sdtw_values", "sdtw_grad"]
