"""The fused induced-current kernels of :mod:`larnd_diff.sim.fused` on an NVIDIA GPU (numba-cuda).

Same scalar physics (compiled from the same Python functions), different parallel layout: one thread per
in-pad row, no scratch arrays. Along z the arrival time t_s(k) = (|k h_z - z_an| - 0.5)/v + delay is V-shaped
(monotone on each side of the anode's k), so a row's samples come out time-ordered from two pointers: the
forward pass walks ticks downwards, merging the samples into the decaying running sums and atomically adding
them to the pair's waveform; the backward pass walks ticks upwards with the adjoint sums H, K and hands each
sample its gradient when its bucket is reached. Work per row: n_z samples + the window's ticks.

The whole event as on the CPU (:func:`larnd_diff.sim.fused.charge_forward`): the rows are expanded from the
per-pair inputs on the GPU (one thread per row; the gradient summed per pair by one thread per pair), and the
pairs' windows are placed onto the rows' tick axis by atomic adds. So the framework sees one op per simulation,
whose input is the per-pair table: nothing per row is stored for the gradient.

Used for torch tensors on a CUDA device (zero-copy through ``__cuda_array_interface__``); numba.cuda is
imported lazily, so importing this module needs no GPU.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from larnd_diff.sim import fused
from larnd_diff.sim.fused import (_NO_ONSET, AMP, HZ, ROW_FIELDS, T_IX0, T_IY0, T_NWIN, T_NY, T_NZ, T_PLACE, T_ROW,
                                  TF, TS, ZAN, arrival, bucket, entry, entry_gradient, expand_row,
                                  expand_row_gradient, gauss_floor, onset_constants, onset_deposits, row_negligible)
from larnd_diff.sim.induce import PAIR_FIELDS

try:   # the kernels below are compiled with these names rebound to numba.cuda (see _kernels)
    from larnd_diff.reference import cuda_kernels as _numpy_shim  # noqa: F401  (NumPy compatibility shim)
    from numba import cuda, float64
except Exception:   # pragma: no cover - numba-cuda missing or broken: is_available() says so
    cuda = float64 = None

THREADS = 128
#: Per-pair inputs (columns of ``pairf``); a compile-time constant of the kernels.
N_PAIR = len(PAIR_FIELDS)


def is_available() -> bool:
    """True when numba-cuda can launch kernels here."""
    try:
        return cuda is not None and bool(cuda.is_available())
    except Exception:   # no driver
        return False


def _turn(f, n_z):
    """First z sample beyond the anode (k h_z - z_an > 0); t_s falls before it and rises after it."""
    k = int(f[ZAN] / f[HZ]) + 1 if f[HZ] > 0 else n_z
    k = min(max(k, 0), n_z)
    while k > 0 and (k - 1) * f[HZ] - f[ZAN] > 0:
        k -= 1
    while k < n_z and k * f[HZ] - f[ZAN] <= 0:
        k += 1
    return k


def _bucket_of(f, k, t0, n_win, dt):
    """m_raw of z sample k."""
    m_raw, _ = bucket(arrival(f, k), t0, n_win, dt)
    return m_raw


def _forward_kernel(rowf, pair, n_z, n_win, t0, dt, sharpness, k_fast, k_slow, out):
    r = cuda.grid(1)
    if r >= rowf.shape[0]:
        return
    f = rowf[r]
    p, nz, nw, t0r = pair[r], n_z[r], n_win[r], t0[r]
    floor = gauss_floor(f, dt)
    if row_negligible(f, nz, floor):
        return
    tau_f, tau_s, amp = f[TF], f[TS], f[AMP]
    rho_f, rho_s = math.exp(-dt / tau_f), math.exp(-dt / tau_s)
    oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else _NO_ONSET
    turn = _turn(f, nz)
    ka, kb = 0, nz - 1                         # time-descending pointers: k up to turn - 1, k down to turn
    ma = _bucket_of(f, ka, t0r, nw, dt) if ka < turn else -1
    mb = _bucket_of(f, kb, t0r, nw, dt) if kb >= turn else -1
    n = min(max(ma, mb), nw - 1)
    acc_f = 0.0
    acc_s = 0.0
    while n >= 0:
        acc_f *= rho_f
        acc_s *= rho_s
        for side in range(2):
            while (ka < turn and min(ma, nw - 1) == n) if side == 0 else (kb >= turn and min(mb, nw - 1) == n):
                k = ka if side == 0 else kb
                w, t_s, _, _, _, live = entry(f, k, floor)
                m_raw, m = bucket(t_s, t0r, nw, dt)
                if live:
                    lag = t_s - (t0r + m * dt)
                    acc_f += w * amp / tau_f * math.exp(-lag / tau_f)
                    acc_s += w * (1.0 - amp) / tau_s * math.exp(-lag / tau_s)
                    if sharpness > 0:
                        onset_deposits(f, w, t_s, m_raw, t0r, nw, dt, sharpness, oc, out, p)
                if side == 0:
                    ka += 1
                    ma = _bucket_of(f, ka, t0r, nw, dt) if ka < turn else -1
                else:
                    kb -= 1
                    mb = _bucket_of(f, kb, t0r, nw, dt) if kb >= turn else -1
        cuda.atomic.add(out, (p, n), acc_f + acc_s)
        n -= 1


def _backward_kernel(rowf, pair, n_z, n_win, t0, dt, sharpness, k_fast, k_slow, g_wave, grad):
    r = cuda.grid(1)
    if r >= rowf.shape[0]:
        return
    f = rowf[r]
    acc = cuda.local.array(14, float64)
    for i in range(14):
        acc[i] = 0.0
    p, nz, nw, t0r = pair[r], n_z[r], n_win[r], t0[r]
    floor = gauss_floor(f, dt)
    if not row_negligible(f, nz, floor):
        gw = g_wave[p]
        rho_f, rho_s = math.exp(-dt / f[TF]), math.exp(-dt / f[TS])
        oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else _NO_ONSET
        turn = _turn(f, nz)
        ka, kb = turn - 1, turn                # time-ascending pointers: k down to 0, k up to nz - 1
        ma = _bucket_of(f, ka, t0r, nw, dt) if ka >= 0 else -1
        mb = _bucket_of(f, kb, t0r, nw, dt) if kb < nz else -1
        while ka >= 0 and ma < 0:              # not arrived within the window: no contribution
            ka -= 1
            ma = _bucket_of(f, ka, t0r, nw, dt) if ka >= 0 else -1
        while kb < nz and mb < 0:
            kb += 1
            mb = _bucket_of(f, kb, t0r, nw, dt) if kb < nz else -1
        top = -1
        if ka >= 0:
            top = min(_bucket_of(f, 0, t0r, nw, dt), nw - 1)
        if kb < nz:
            top = max(top, min(_bucket_of(f, nz - 1, t0r, nw, dt), nw - 1))
        hf = 0.0
        hs = 0.0
        kf = 0.0
        ks = 0.0
        for n in range(top + 1):
            kf = rho_f * (kf + hf)
            ks = rho_s * (ks + hs)
            hf = gw[n] + rho_f * hf
            hs = gw[n] + rho_s * hs
            for side in range(2):
                while (ka >= 0 and min(ma, nw - 1) == n) if side == 0 else (kb < nz and min(mb, nw - 1) == n):
                    k = ka if side == 0 else kb
                    w, t_s, gauss, erfs, u, live = entry(f, k, floor)
                    m_raw, m = bucket(t_s, t0r, nw, dt)
                    if live:
                        entry_gradient(f, k, w, t_s, gauss, erfs, u, m_raw, m, t0r, nw, dt, sharpness, oc,
                                       hf, kf, hs, ks, gw, acc)
                    if side == 0:
                        ka -= 1
                        ma = _bucket_of(f, ka, t0r, nw, dt) if ka >= 0 else -1
                    else:
                        kb += 1
                        mb = _bucket_of(f, kb, t0r, nw, dt) if kb < nz else -1
    for i in range(14):
        grad[r, i] = acc[i]


def _row_of(row_start, r):
    """The pair p whose rows hold row r: row_start[p] <= r < row_start[p + 1] (binary search)."""
    lo, hi = 0, row_start.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if row_start[mid] <= r:
            lo = mid
        else:
            hi = mid
    return lo


def _sample_of(table, row_start, p, r):
    """In-pad sample (i, j) of row r of pair p (the pair's nx x ny samples, j fastest)."""
    local = r - row_start[p]
    ny = table[p, T_NY]
    return table[p, T_IX0] + local // ny, table[p, T_IY0] + local % ny


def _rows_kernel(pairf, table, t0, row_start, rowf, pair, n_z, n_win, t0_row):
    """Every row's inputs from its pair's (:func:`larnd_diff.sim.fused.expand_row`) and its integers for the
    waveform kernels, one thread per row; the rows are enumerated from the pair table on the GPU."""
    r = cuda.grid(1)
    if r >= rowf.shape[0]:
        return
    p = _row_of(row_start, r)
    i, j = _sample_of(table, row_start, p, r)
    expand_row(pairf[p], float(i), float(j), 1.0, rowf[r])
    pair[r] = p
    n_z[r] = table[p, T_NZ]
    n_win[r] = table[p, T_NWIN]
    t0_row[r] = t0[p]


def _expand_backward_kernel(pairf, table, row_start, g_rowf, grad):
    """d loss / d pairf, one thread per pair summing over its rows (contiguous): no atomics."""
    p = cuda.grid(1)
    if p >= grad.shape[0]:
        return
    acc = cuda.local.array(N_PAIR, float64)
    for c in range(N_PAIR):
        acc[c] = 0.0
    for r in range(row_start[p], row_start[p + 1]):
        i, j = _sample_of(table, row_start, p, r)
        expand_row_gradient(pairf[p], float(i), float(j), 1.0, g_rowf[r], acc)
    for c in range(N_PAIR):
        grad[p, c] = acc[c]


def _window_cell(table, idx, width, n_ticks):
    """Cell ``idx`` of a flat (pairs, width) window array: pair p, window tick n, the output row and tick it
    maps to, and whether it lies inside the pair's window and the row's ticks."""
    p = idx // width
    n = idx - p * width
    tick = table[p, T_PLACE] + n
    return p, n, table[p, T_ROW], tick, n < table[p, T_NWIN] and tick < n_ticks


def _place_kernel(wave, table, out):
    """out[row, placement + n] += wave[p, n] for n < n_win of pair p (atomic: pairs share rows)."""
    idx = cuda.grid(1)
    if idx < wave.shape[0] * wave.shape[1]:
        p, n, row, tick, inside = _window_cell(table, idx, wave.shape[1], out.shape[1])
        if inside:
            cuda.atomic.add(out, (row, tick), wave[p, n])


def _pick_kernel(g, table, g_wave):
    """The transpose of :func:`_place_kernel`: each pair's window of the rows' cotangent."""
    idx = cuda.grid(1)
    if idx < g_wave.shape[0] * g_wave.shape[1]:
        p, n, row, tick, inside = _window_cell(table, idx, g_wave.shape[1], g.shape[1])
        if inside:
            g_wave[p, n] = g[row, tick]


def _zero_kernel(a):
    idx = cuda.grid(1)
    if idx < a.shape[0] * a.shape[1]:
        a[idx // a.shape[1], idx % a.shape[1]] = 0


def add(arr, i, j, value):
    """The CUDA binding of :func:`larnd_diff.sim.fused.add`: an atomic add."""
    cuda.atomic.add(arr, (i, j), value)


@lru_cache(maxsize=None)
def _kernels():
    device = cuda.jit(device=True)
    ns = fused.compile_scalars(device, extra={"cuda": cuda, "float64": float64, "N_PAIR": N_PAIR})
    for fn in (add, _turn, _bucket_of, _row_of, _sample_of, _window_cell):
        ns[fn.__name__] = device(fused.rebind(fn, ns))
    return {fn.__name__.strip("_").replace("_kernel", ""): cuda.jit(fused.rebind(fn, ns))
            for fn in (_forward_kernel, _backward_kernel, _rows_kernel, _expand_backward_kernel, _place_kernel,
                       _pick_kernel, _zero_kernel)}


def as_device(x):
    """A numba view of anything with ``__cuda_array_interface__`` (zero-copy); other arrays unchanged."""
    return cuda.as_cuda_array(x) if hasattr(x, "__cuda_array_interface__") else x


def _launch(kernel, n_rows, *args):
    if n_rows:
        kernel[max(1, -(-n_rows // THREADS)), THREADS](*(as_device(a) for a in args))


# ---------------------------------------------------------------------------------------------- whole event
class EventLayout:
    """The host integers of :func:`larnd_diff.sim.fused.charge_forward` moved to the GPU once per simulation (for
    its forward and backward pass), three copies in all: the pair table (``fused.PAIR_TABLE`` columns), the
    evaluation starts and, per group of pairs, the first row of each pair (the rows themselves are enumerated
    on the GPU)."""

    def __init__(self, table, t0, groups):
        table = np.ascontiguousarray(table, np.int64)
        counts = table[:, fused.T_NX] * table[:, fused.T_NY]
        starts, self.groups, at = [], [], 0
        for lo, hi, width in groups:
            row_start = np.concatenate([[0], np.cumsum(counts[lo:hi])]).astype(np.int64)
            starts.append(row_start)
            self.groups.append((int(lo), int(hi), int(width), int(row_start[-1]), at))
            at += row_start.size
        self.table = cuda.to_device(table)
        self.t0 = cuda.to_device(np.ascontiguousarray(t0, np.float64))
        self.row_start = cuda.to_device(np.concatenate(starts) if starts else np.zeros(1, np.int64))


def _zeros_numba(shape, dtype):
    a = cuda.device_array(shape, dtype)
    flat = a.reshape((a.shape[0], -1)) if len(shape) > 1 else a.reshape((a.shape[0], 1))
    _launch(_kernels()["zero"], flat.shape[0] * flat.shape[1], flat)
    return a


def _rows(pf, layout, lo, hi, n_rows, at, zeros):
    """Row inputs and row integers of one group (the inputs of the waveform kernels)."""
    rowf = zeros((n_rows, len(ROW_FIELDS)), np.float64)
    pair, n_z, n_win = (zeros((n_rows,), np.int64) for _ in range(3))
    t0_row = zeros((n_rows,), np.float64)
    _launch(_kernels()["rows"], n_rows, pf[lo:hi], layout.table[lo:hi], layout.t0[lo:hi],
            layout.row_start[at:at + hi - lo + 1], rowf, pair, n_z, n_win, t0_row)
    return rowf, pair, n_z, n_win, t0_row


def charge_forward(pairf, layout: EventLayout, dt, sharpness, k_fast, k_slow, out, zeros=None):
    """Add the induced charge per tick (electrons) of every output row into ``out`` (n_rows, n_ticks) float64,
    from the per-pair inputs ``pairf`` (n_pairs, len(PAIR_FIELDS)) float64, both CUDA arrays: per group, rows
    expanded, waveforms evaluated and placed on the rows' ticks, all on the GPU (the CPU's
    :func:`larnd_diff.sim.fused.charge_forward`). ``zeros(shape, dtype)``: a zeroed CUDA array for the scratch
    space (e.g. from the framework's caching allocator; default numba's)."""
    k, zeros = _kernels(), zeros or _zeros_numba
    args = (float(dt), float(sharpness or 0.0), int(k_fast), int(k_slow))
    pf = as_device(pairf)
    for lo, hi, width, n_rows, at in layout.groups:
        rows = _rows(pf, layout, lo, hi, n_rows, at, zeros)
        wave = zeros((hi - lo, width), np.float64)
        _launch(k["forward"], n_rows, *rows, *args, wave)
        _launch(k["place"], (hi - lo) * width, wave, layout.table[lo:hi], out)


def charge_backward(pairf, layout: EventLayout, dt, sharpness, k_fast, k_slow, g, grad, zeros=None):
    """Write d loss / d pairf into ``grad`` (n_pairs, len(PAIR_FIELDS)) float64 for the cotangent ``g``
    (n_rows, n_ticks) of :func:`charge_forward` (rows expanded again; nothing per row was kept)."""
    k, zeros = _kernels(), zeros or _zeros_numba
    args = (float(dt), float(sharpness or 0.0), int(k_fast), int(k_slow))
    pf, gr = as_device(pairf), as_device(grad)
    for lo, hi, width, n_rows, at in layout.groups:
        g_wave = zeros((hi - lo, width), np.float64)
        _launch(k["pick"], (hi - lo) * width, g, layout.table[lo:hi], g_wave)
        rows = _rows(pf, layout, lo, hi, n_rows, at, zeros)
        g_rowf = zeros((n_rows, len(ROW_FIELDS)), np.float64)
        _launch(k["backward"], n_rows, *rows, *args, g_wave, g_rowf)
        _launch(k["expand_backward"], hi - lo, pf[lo:hi], layout.table[lo:hi], layout.row_start[at:at + hi - lo + 1],
                g_rowf, gr[lo:hi])


__all__ = ["is_available", "EventLayout", "charge_forward", "charge_backward"]
