"""Fused CPU kernels (Numba) for the hot loop of the induced current: rows x z samples x ticks.

:func:`larnd_diff.sim.induce.entry_waveforms` evaluates, for every in-pad sample row of a (segment, pixel) pair,
the charge weight and arrival time of each z sample, deposits them on the tick axis and solves the
exponential-decay recurrence of the current template. Written with EagerPy tensors, that is a dozen passes over
(row, z) and (row, tick) arrays: memory-bound, and on a CPU some 20x slower than the Numba reference doing the
same arithmetic in registers. Here the same arithmetic runs as one Numba loop nest per pair, and the reverse-mode
derivative is a second hand-written loop nest (adjoint recurrences over ticks), so nothing of size rows x ticks
is ever stored: the backward pass needs only the per-row inputs.

The arithmetic is :mod:`larnd_diff.sim.fused_scalars` (compiled here for the CPU, and for the GPU by
:mod:`larnd_diff.sim.fused_cuda`); this module holds the CPU drivers: parallel loops over the pairs, the
recurrences over ticks, the placement on the output rows.

Interface (see :func:`forward`): per-row float inputs stacked as ``rowf`` (R, len(ROW_FIELDS)), in
``ROW_FIELDS`` order (:mod:`larnd_diff.sim.induce_layout`); host integers per row (pair, n_z, n_win) and the
evaluation start t0 per row (us, no gradient); rows of one pair contiguous, real rows first. Output: induced
charge per tick (electrons) on each pair's window, (n_pairs, width). Arithmetic in float64 whatever the input
dtype.

The EagerPy implementation stays the portable one (GPU, any backend) and the oracle these kernels are tested
against (tests/test_sim_fused.py): same values to rounding, same gradients.

The row inputs themselves can be formed here too (:func:`expand_rows`, the arithmetic of
``induce.expand_rows`` with a hand-written vector-Jacobian product): :func:`charge_forward` /
:func:`charge_backward` take the per-pair inputs (``PAIR_FIELDS``) of every pair of an event batch, expand
the rows, evaluate the waveforms and add them onto the output rows' tick axis in one host call, so that the
framework's graph holds per-pair values only (a few thousand numbers instead of ~15 per row of ~10^5 rows).
"""
from __future__ import annotations

import math

import numpy as np

from larnd_diff.retarget import compile_scalars, rebind
from larnd_diff.sim import fused_scalars
from larnd_diff.sim.fused_scalars import (NO_ONSET, add, bucket, cotangent, entry, entry_gradient, expand_row,
                                          expand_row_gradient, gauss_floor, onset_constants, onset_deposits,
                                          row_negligible)
from larnd_diff.sim.induce_layout import (AMP, PAIR_TABLE, ROW_FIELDS, T_IX0, T_IY0, T_NWIN, T_NX, T_NY, T_NZ,
                                          T_PLACE, T_ROW, TF, TS)

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a hard dependency of the package
    numba = None
    prange = range

#: LLVM fast-math flags of the CPU forward/backward kernels: contraction to FMA, reciprocal multiplication, no
#: signed zeros.
FAST_MATH = frozenset({"contract", "arcp", "nsz"})


def available() -> bool:
    return numba is not None


# ---------------------------------------------------------------------------------------------- CPU kernels
def _forward(rowf, pair, n_z, n_win, t0, row_start, width, dt, sharpness, k_fast, k_slow):
    """Induced charge per tick of each pair: prange over pairs, per row the deposits of its z samples at their
    buckets, then the reverse recurrence F_n = D_n + e^{-dt/tau} F_{n+1} per exponential."""
    n_pairs = row_start.size - 1
    out = np.zeros((n_pairs, width))
    for p in prange(n_pairs):
        dep_f = np.zeros(width)
        dep_s = np.zeros(width)
        for r in range(row_start[p], row_start[p + 1]):
            f = rowf[r]
            floor = gauss_floor(f, dt)
            if row_negligible(f, n_z[r], floor):
                continue
            tau_f, tau_s, amp = f[TF], f[TS], f[AMP]
            oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else NO_ONSET
            top = -1
            for k in range(n_z[r]):
                w, t_s, _, _, _, live = entry(f, k, floor)
                m_raw, m = bucket(t_s, t0[r], n_win[r], dt)
                if m_raw < 0 or not live:
                    continue
                lag = t_s - (t0[r] + m * dt)
                dep_f[m] += w * amp / tau_f * math.exp(-lag / tau_f)
                dep_s[m] += w * (1.0 - amp) / tau_s * math.exp(-lag / tau_s)
                top = max(top, m)
                if sharpness > 0:
                    onset_deposits(f, w, t_s, m_raw, t0[r], n_win[r], dt, sharpness, oc, out, p)
            rho_f, rho_s = math.exp(-dt / tau_f), math.exp(-dt / tau_s)
            acc_f, acc_s = 0.0, 0.0
            for n in range(top, -1, -1):
                acc_f = dep_f[n] + rho_f * acc_f
                acc_s = dep_s[n] + rho_s * acc_s
                dep_f[n] = 0.0
                dep_s[n] = 0.0
                out[p, n] += acc_f + acc_s
    return out


def _backward(rowf, pair, n_z, n_win, t0, row_start, width, dt, sharpness, k_fast, k_slow, g_wave):
    """d loss / d rowf for the cotangent ``g_wave`` (n_pairs, width) of :func:`_forward`'s output.

    Per row and exponential (decay rho = e^{-dt/tau}): a sample with bucket m and prefactor P e^{-lag/tau}
    feeds ticks n <= m with P e^{-(t_s - T_n)/tau}, so d/dP needs H(m) = sum_{n<=m} G_n rho^(m-n) and d/dtau
    also K(m) = sum_{n<=m} G_n (m-n) rho^(m-n): forward recurrences H(m) = G_m + rho H(m-1),
    K(m) = rho (K(m-1) + H(m-1)).
    """
    n_pairs = row_start.size - 1
    grad = np.zeros(rowf.shape)
    for p in prange(n_pairs):
        h_f = np.zeros(width)
        h_s = np.zeros(width)
        k_f = np.zeros(width)
        k_s = np.zeros(width)
        gw = g_wave[p]
        for r in range(row_start[p], row_start[p + 1]):
            f = rowf[r]
            floor = gauss_floor(f, dt)
            if row_negligible(f, n_z[r], floor):
                continue
            rho_f, rho_s = math.exp(-dt / f[TF]), math.exp(-dt / f[TS])
            oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else NO_ONSET
            hf = hs = kf = ks = 0.0
            filled = 0                      # the recurrences are run lazily, up to the latest bucket read
            acc = grad[r]
            for k in range(n_z[r]):
                w, t_s, gauss, erfs, u, live = entry(f, k, floor)
                m_raw, m = bucket(t_s, t0[r], n_win[r], dt)
                if m_raw < 0 or not live:
                    continue
                for n in range(filled, m + 1):
                    kf = rho_f * (kf + hf)
                    ks = rho_s * (ks + hs)
                    hf = gw[n] + rho_f * hf
                    hs = gw[n] + rho_s * hs
                    h_f[n], h_s[n], k_f[n], k_s[n] = hf, hs, kf, ks
                filled = max(filled, m + 1)
                entry_gradient(f, k, w, t_s, gauss, erfs, u, m_raw, m, t0[r], n_win[r], dt, sharpness, oc,
                               h_f[m], k_f[m], h_s[m], k_s[m], gw, acc)
    return grad


def _expand_rows(pairf, pair, ri, rj, valid):
    """Row inputs (R, len(ROW_FIELDS)) of every row from the per-pair inputs."""
    out = np.empty((pair.size, len(ROW_FIELDS)))
    for r in range(pair.size):
        expand_row(pairf[pair[r]], float(ri[r]), float(rj[r]), valid[r], out[r])
    return out


def _expand_rows_backward(pairf, row_start, ri, rj, valid, g_rowf):
    """d loss / d pairf from d loss / d row inputs (rows of a pair contiguous)."""
    grad = np.zeros(pairf.shape)
    for p in range(row_start.size - 1):
        for r in range(row_start[p], row_start[p + 1]):
            expand_row_gradient(pairf[p], float(ri[r]), float(rj[r]), valid[r], g_rowf[r], grad[p])
    return grad


def _place(out, wave, out_row, placement, n_win):
    """out[out_row[p], placement[p] + n] += wave[p, n] for n < n_win[p], pairs in order (serial: pairs share
    rows, and the order of the sums is that of a scatter-add over the pairs in order)."""
    n_ticks = out.shape[1]
    for p in range(wave.shape[0]):
        r, a = out_row[p], placement[p]
        for n in range(min(n_win[p], n_ticks - a)):
            out[r, a + n] += wave[p, n]


def _pick(g, out_row, placement, n_win, width):
    """The cotangent of each pair's window from that of the rows' waveforms (the transpose of :func:`_place`)."""
    g_wave = np.zeros((out_row.size, width))
    n_ticks = g.shape[1]
    for p in range(out_row.size):
        r, a = out_row[p], placement[p]
        for n in range(min(n_win[p], n_ticks - a, width)):
            g_wave[p, n] = g[r, a + n]
    return g_wave


if numba is not None:
    # The scalars are inlined into the drivers, which compile them under their own options (and cache them: the
    # scalars themselves are not cached, numba's cache would not tell their two option sets apart).
    _inline = njit(inline="always")
    _CPU = compile_scalars(fused_scalars, _inline, {"add": _inline(add), "cotangent": _inline(cotangent)})
    # The hot loops may fuse multiply-adds and multiply by reciprocals (a few ulp per operation, float64): ~20 %
    # less time for forward + gradient on 2 cores. No flag that assumes away NaN or inf: both must propagate.
    _fast = njit(inline="always", fastmath=set(FAST_MATH))
    _HOT = compile_scalars(fused_scalars, _fast, {"add": _fast(add), "cotangent": _fast(cotangent)})
    _forward = njit(parallel=True, cache=True, fastmath=set(FAST_MATH))(rebind(_forward, {**globals(), **_HOT}))
    _backward = njit(parallel=True, cache=True, fastmath=set(FAST_MATH))(rebind(_backward, {**globals(), **_HOT}))
    # a few flops per row or tick: serial (waking the worker threads would cost more)
    _place = njit(cache=True)(_place)
    _pick = njit(cache=True)(_pick)
    _expand_rows = njit(cache=True)(rebind(_expand_rows, {**globals(), **_CPU}))
    _expand_rows_backward = njit(cache=True)(rebind(_expand_rows_backward, {**globals(), **_CPU}))


class RowLayout:
    """Host integers of a block for the kernels; the rows of a pair are contiguous and in pair order
    (padded rows belong to the last pair and have coef = 0)."""

    def __init__(self, pair, n_z, n_win, t0, n_pairs: int, width: int):
        pair = np.asarray(pair, np.int64)
        if pair.size and np.any(np.diff(pair) < 0):
            raise ValueError("fused kernels need the rows of a pair to be contiguous and in pair order")
        self.pair = pair
        self.n_z = np.asarray(n_z, np.int64)
        self.n_win = np.asarray(n_win, np.int64)
        self.t0 = np.asarray(t0, np.float64)
        self.row_start = np.searchsorted(pair, np.arange(n_pairs + 1)).astype(np.int64)
        self.width = int(width)

    def args(self):
        return self.pair, self.n_z, self.n_win, self.t0, self.row_start, self.width


def forward(rowf: np.ndarray, layout: RowLayout, dt: float, sharpness, k_fast: int, k_slow: int) -> np.ndarray:
    """Induced charge per tick (electrons), (n_pairs, width), float64."""
    return _forward(np.ascontiguousarray(rowf, np.float64), *layout.args(), float(dt),
                    float(sharpness or 0.0), int(k_fast), int(k_slow))


def backward(rowf: np.ndarray, layout: RowLayout, dt: float, sharpness, k_fast: int, k_slow: int,
             g_wave: np.ndarray) -> np.ndarray:
    """d loss / d rowf (R, len(ROW_FIELDS)) for the cotangent ``g_wave`` of :func:`forward`, float64."""
    return _backward(np.ascontiguousarray(rowf, np.float64), *layout.args(), float(dt), float(sharpness or 0.0),
                     int(k_fast), int(k_slow), np.ascontiguousarray(g_wave, np.float64))


def expand_rows(pairf: np.ndarray, layout: RowLayout, i, j, valid) -> np.ndarray:
    """Row inputs (R, len(ROW_FIELDS)), float64, of the rows (pair, i, j, valid) from the per-pair inputs
    ``pairf`` (n_pairs, len(PAIR_FIELDS)) (``induce.expand_rows`` on the host)."""
    return _expand_rows(np.ascontiguousarray(pairf, np.float64), layout.pair, np.asarray(i, np.int64),
                        np.asarray(j, np.int64), np.asarray(valid, np.float64))


def expand_rows_backward(pairf: np.ndarray, layout: RowLayout, i, j, valid, g_rowf: np.ndarray) -> np.ndarray:
    """d loss / d pairf for the cotangent ``g_rowf`` of :func:`expand_rows`, float64."""
    return _expand_rows_backward(np.ascontiguousarray(pairf, np.float64), layout.row_start, np.asarray(i, np.int64),
                                 np.asarray(j, np.int64), np.asarray(valid, np.float64),
                                 np.ascontiguousarray(g_rowf, np.float64))


def pair_forward(pairf, layout: RowLayout, i, j, valid, dt, sharpness, k_fast, k_slow) -> np.ndarray:
    """:func:`forward` from the per-pair inputs: the rows expanded on the host (nothing per row is stored)."""
    return forward(expand_rows(pairf, layout, i, j, valid), layout, dt, sharpness, k_fast, k_slow)


def pair_backward(pairf, layout: RowLayout, i, j, valid, dt, sharpness, k_fast, k_slow, g_wave) -> np.ndarray:
    """d loss / d pairf for the cotangent ``g_wave`` of :func:`pair_forward` (rows expanded again)."""
    rowf = expand_rows(pairf, layout, i, j, valid)
    return expand_rows_backward(pairf, layout, i, j, valid,
                                backward(rowf, layout, dt, sharpness, k_fast, k_slow, g_wave))


# ---------------------------------------------------------------------------------------------- whole event
def group_rows(table, t0, width):
    """RowLayout and (i, j, valid) of the rows of the pairs in ``table`` (rows of a pair contiguous, no padding)."""
    counts = table[:, T_NX] * table[:, T_NY]
    r_pair = np.repeat(np.arange(len(table)), counts)
    local = np.arange(r_pair.size) - (np.cumsum(counts) - counts)[r_pair]
    ny = table[r_pair, T_NY]
    i = table[r_pair, T_IX0] + local // ny
    j = table[r_pair, T_IY0] + local % ny
    layout = RowLayout(r_pair, table[r_pair, T_NZ], table[r_pair, T_NWIN], np.asarray(t0)[r_pair], len(table),
                       width)
    return layout, i, j, np.ones(r_pair.size)


def charge_forward(pairf, table, t0, groups, n_rows, n_ticks, dt, sharpness, k_fast, k_slow) -> np.ndarray:
    """Induced charge per tick (electrons) of every output row, (n_rows, n_ticks), float64, from the per-pair
    inputs ``pairf`` (n_pairs, len(PAIR_FIELDS)), the host integers ``table`` (n_pairs, len(PAIR_TABLE)) and
    evaluation starts ``t0`` (n_pairs,) us. groups: [(first, stop, width)] consecutive pair ranges evaluated
    together (windows of at most ``width`` ticks; sized to the memory budget); their waveforms are added to the
    rows in pair order."""
    table = np.asarray(table, np.int64)
    out = np.zeros((int(n_rows), int(n_ticks)))
    for lo, hi, width in groups:
        layout, i, j, valid = group_rows(table[lo:hi], t0[lo:hi], width)
        wave = pair_forward(pairf[lo:hi], layout, i, j, valid, dt, sharpness, k_fast, k_slow)
        _place(out, wave, table[lo:hi, T_ROW], table[lo:hi, T_PLACE], table[lo:hi, T_NWIN])
    return out


def charge_backward(pairf, table, t0, groups, dt, sharpness, k_fast, k_slow, g) -> np.ndarray:
    """d loss / d pairf for the cotangent ``g`` (n_rows, n_ticks) of :func:`charge_forward`, float64."""
    table = np.asarray(table, np.int64)
    g = np.ascontiguousarray(g, np.float64)
    grad = np.zeros(pairf.shape)
    for lo, hi, width in groups:
        layout, i, j, valid = group_rows(table[lo:hi], t0[lo:hi], width)
        g_wave = _pick(g, table[lo:hi, T_ROW], table[lo:hi, T_PLACE], table[lo:hi, T_NWIN], int(width))
        grad[lo:hi] = pair_backward(pairf[lo:hi], layout, i, j, valid, dt, sharpness, k_fast, k_slow, g_wave)
    return grad


__all__ = ["ROW_FIELDS", "PAIR_TABLE", "RowLayout", "available", "forward", "backward", "expand_rows",
           "expand_rows_backward", "pair_forward", "pair_backward", "charge_forward", "charge_backward"]

