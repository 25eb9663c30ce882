"""The fused induced-current kernels of :mod:`larnd_diff.sim.fused` on an NVIDIA GPU (numba-cuda).

Same scalar physics (compiled from the same Python functions), different parallel layout: one thread per
in-pad row, the whole event in one kernel launch per pass, no scratch arrays. Each thread enumerates its row
from the pair table (binary search over the pairs' first rows), expands the row's inputs from its pair's
(:func:`larnd_diff.sim.fused_scalars.expand_row`) and evaluates its waveform. Along z the arrival time
t_s(k) = (|k h_z - z_an| - 0.5)/v + delay is V-shaped (monotone on each side of the anode's k), so a row's
samples come out time-ordered from two pointers: the forward pass walks ticks downwards, merging the samples
into the decaying running sums and atomically adding them onto the output row's ticks; the backward pass walks
ticks upwards with the adjoint sums H, K, reading the output rows' cotangent in place, hands each sample its
gradient when its bucket is reached and adds the row's gradient, taken back to the pair's inputs, atomically to
its pair. Work per row: n_z samples + the window's ticks. So the framework sees one op per simulation, whose
input is the per-pair table: nothing per row is stored for the gradient.

Used for torch tensors on a CUDA device (zero-copy through ``__cuda_array_interface__``); the kernels are
compiled on first use, so importing this module needs no GPU.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from larnd_diff.retarget import compile_scalars, numba_cuda, rebind
from larnd_diff.sim import fused_scalars
from larnd_diff.sim.fused_scalars import (NO_ONSET, arrival, bucket, entry, entry_gradient, expand_row,
                                          expand_row_gradient, gauss_floor, onset_constants, onset_deposits,
                                          row_negligible)
from larnd_diff.sim.induce_layout import (AMP, HZ, PAIR_FIELDS, ROW_FIELDS, T_IX0, T_IY0, T_NWIN, T_NX, T_NY, T_NZ,
                                          T_PLACE, T_ROW, TF, TS, ZAN)

try:   # the kernels below are compiled with these names rebound to numba.cuda (see _kernels)
    cuda = numba_cuda()
    from numba import float64
except Exception:   # pragma: no cover - numba-cuda missing or broken: is_available() says so
    cuda = float64 = None

#: Threads per block and the register cap of the row kernels. Measured on an H100 (muon sample, smooth, float32
#: forward + gradient, README): uncapped, the backward kernel takes 254 registers per thread (2 blocks of 128 per
#: SM) and 8.1 ms; capped at 128 (a few hundred bytes spilled to the L1-cached local memory) 5.0 ms, at 96 the
#: same; the forward 1.6 -> 1.4 ms. Blocks of 32, 64 or 128 threads: within 3 %; 32 the fastest.
THREADS = 32
MAX_REGISTERS = 128
#: Per-pair inputs (columns of ``pairf``) and per-row inputs: compile-time constants of the kernels.
N_PAIR = len(PAIR_FIELDS)
N_ROW = len(ROW_FIELDS)


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


def _row_forward(f, nz, nw, t0r, dt, sharpness, k_fast, k_slow, target):
    """Add one row's induced charge per window tick into target[0, n] (``add``: atomic, dropped past the end of
    ``target``)."""
    floor = gauss_floor(f, dt)
    if row_negligible(f, nz, floor):
        return
    tau_f, tau_s, amp = f[TF], f[TS], f[AMP]
    rho_f, rho_s = math.exp(-dt / tau_f), math.exp(-dt / tau_s)
    oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else NO_ONSET
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
                        onset_deposits(f, w, t_s, m_raw, t0r, nw, dt, sharpness, oc, target, 0)
                if side == 0:
                    ka += 1
                    ma = _bucket_of(f, ka, t0r, nw, dt) if ka < turn else -1
                else:
                    kb -= 1
                    mb = _bucket_of(f, kb, t0r, nw, dt) if kb >= turn else -1
        add(target, 0, n, acc_f + acc_s)
        n -= 1


def _row_backward(f, nz, nw, t0r, dt, sharpness, k_fast, k_slow, gw, acc):
    """Add d loss / d f of one row to ``acc`` (len(ROW_FIELDS)) for the cotangent ``gw`` of its window ticks
    (``cotangent``: 0 past the end of ``gw``)."""
    floor = gauss_floor(f, dt)
    if row_negligible(f, nz, floor):
        return
    rho_f, rho_s = math.exp(-dt / f[TF]), math.exp(-dt / f[TS])
    oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else NO_ONSET
    turn = _turn(f, nz)
    ka, kb = turn - 1, turn                    # time-ascending pointers: k down to 0, k up to nz - 1
    ma = _bucket_of(f, ka, t0r, nw, dt) if ka >= 0 else -1
    mb = _bucket_of(f, kb, t0r, nw, dt) if kb < nz else -1
    while ka >= 0 and ma < 0:                  # not arrived within the window: no contribution
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
        gn = cotangent(gw, n)
        hf = gn + rho_f * hf
        hs = gn + rho_s * hs
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


def _sample_of(table, row_start, r):
    """(p, i, j): the pair p of row r and the row's in-pad sample (i, j) (the pair's nx x ny samples, j fastest)."""
    p = _row_of(row_start, r)
    local = r - row_start[p]
    ny = table[p, T_NY]
    return p, table[p, T_IX0] + local // ny, table[p, T_IY0] + local % ny


def _forward_kernel(pairf, table, t0, row_start, dt, sharpness, k_fast, k_slow, out):
    """Every row's induced charge added onto its output row's ticks, one thread per row: the row is enumerated
    from the pair table, its inputs expanded from its pair's (:func:`larnd_diff.sim.fused_scalars.expand_row`),
    its waveform evaluated and added in place (atomic: the rows of a pixel share its ticks)."""
    r = cuda.grid(1)
    if r >= row_start[row_start.shape[0] - 1]:
        return
    p, i, j = _sample_of(table, row_start, r)
    f = cuda.local.array(N_ROW, float64)
    expand_row(pairf[p], float(i), float(j), 1.0, f)
    row, place = table[p, T_ROW], table[p, T_PLACE]
    _row_forward(f, table[p, T_NZ], table[p, T_NWIN], t0[p], dt, sharpness, k_fast, k_slow,
                 out[row:row + 1, place:])


def _backward_kernel(pairf, table, t0, row_start, dt, sharpness, k_fast, k_slow, g, grad):
    """d loss / d pairf for the cotangent ``g`` of :func:`_forward_kernel`, one thread per row: the row's
    gradient (its window's cotangent read in place) taken back to its pair's inputs and added atomically."""
    r = cuda.grid(1)
    if r >= row_start[row_start.shape[0] - 1]:
        return
    p, i, j = _sample_of(table, row_start, r)
    f = cuda.local.array(N_ROW, float64)
    acc = cuda.local.array(N_ROW, float64)
    for c in range(N_ROW):
        acc[c] = 0.0
    expand_row(pairf[p], float(i), float(j), 1.0, f)
    row, place = table[p, T_ROW], table[p, T_PLACE]
    _row_backward(f, table[p, T_NZ], table[p, T_NWIN], t0[p], dt, sharpness, k_fast, k_slow, g[row, place:], acc)
    acc_p = cuda.local.array(N_PAIR, float64)
    for c in range(N_PAIR):
        acc_p[c] = 0.0
    expand_row_gradient(pairf[p], float(i), float(j), 1.0, acc, acc_p)
    for c in range(N_PAIR):
        if acc_p[c] != 0.0:
            cuda.atomic.add(grad, (p, c), acc_p[c])


def add(arr, i, j, value):
    """The CUDA binding of :func:`larnd_diff.sim.fused_scalars.add`: an atomic add, nothing past the array's end."""
    if j < arr.shape[1]:
        cuda.atomic.add(arr, (i, j), value)


def cotangent(gw, n):
    """The CUDA binding of :func:`larnd_diff.sim.fused_scalars.cotangent`: 0 past the event's last tick."""
    return gw[n] if n < gw.shape[0] else 0.0


@lru_cache(maxsize=None)
def _kernels():
    device = cuda.jit(device=True)
    # One namespace for every CUDA-side function (numba's CUDA simulator swaps the ``cuda`` module in the
    # kernel's globals once per launch; a separate dict would be swapped per call, racing between threads).
    namespace = dict(globals())
    bindings = {fn.__name__: device(rebind(fn, namespace)) for fn in (add, cotangent)}
    namespace.update(compile_scalars(fused_scalars, device, bindings))
    for fn in (_turn, _bucket_of, _row_of, _sample_of, _row_forward, _row_backward):
        namespace[fn.__name__] = device(rebind(fn, namespace))
    from numba import config

    # (numba's CUDA simulator takes no register cap)
    jit = cuda.jit if config.ENABLE_CUDASIM or not MAX_REGISTERS else cuda.jit(max_registers=MAX_REGISTERS)
    return {fn.__name__.strip("_").replace("_kernel", ""): jit(rebind(fn, namespace))
            for fn in (_forward_kernel, _backward_kernel)}


def as_device(x):
    """A numba view of anything with ``__cuda_array_interface__`` (zero-copy); other arrays unchanged."""
    return cuda.as_cuda_array(x) if hasattr(x, "__cuda_array_interface__") else x


def _launch(kernel, n_threads, *args):
    if n_threads:
        kernel[max(1, -(-n_threads // THREADS)), THREADS](*(as_device(a) for a in args))


# ---------------------------------------------------------------------------------------------- whole event
class EventLayout:
    """The host integers of :func:`larnd_diff.sim.fused.charge_forward` moved to the GPU once per simulation (for
    its forward and backward pass), three copies in all: the pair table (``induce_layout.PAIR_TABLE`` columns),
    the evaluation starts and the first row of each pair (the rows themselves are enumerated on the GPU)."""

    def __init__(self, table, t0, upload=None):
        """``upload``: NumPy array -> GPU array (anything with ``__cuda_array_interface__``); default numba's
        ``cuda.to_device`` (a synchronous copy: it waits for the GPU's queue). The simulator passes the framework's
        asynchronous copy through pinned memory."""
        upload = upload or cuda.to_device
        table = np.ascontiguousarray(table, np.int64)
        counts = table[:, T_NX] * table[:, T_NY]
        row_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_rows = int(row_start[-1])
        self.table = upload(table)
        self.t0 = upload(np.ascontiguousarray(t0, np.float64))
        self.row_start = upload(row_start)


def charge_forward(pairf, layout: EventLayout, dt, sharpness, k_fast, k_slow, out):
    """Add the induced charge per tick (electrons) of every output row into ``out`` (n_rows, n_ticks) float64,
    from the per-pair inputs ``pairf`` (n_pairs, len(PAIR_FIELDS)) float64, both CUDA arrays: rows expanded,
    waveforms evaluated and added onto the rows' ticks in one kernel launch (the CPU's
    :func:`larnd_diff.sim.fused.charge_forward`). No scratch memory."""
    _launch(_kernels()["forward"], layout.n_rows, pairf, layout.table, layout.t0, layout.row_start, float(dt),
            float(sharpness or 0.0), int(k_fast), int(k_slow), out)


def charge_backward(pairf, layout: EventLayout, dt, sharpness, k_fast, k_slow, g, grad):
    """Add d loss / d pairf into ``grad`` (n_pairs, len(PAIR_FIELDS)) float64, zeros on entry, for the cotangent
    ``g`` (n_rows, n_ticks) of :func:`charge_forward`, in one kernel launch (rows expanded again; nothing per row
    was kept). The per-pair sums are atomic, so their order (the last bits) varies between calls."""
    _launch(_kernels()["backward"], layout.n_rows, pairf, layout.table, layout.t0, layout.row_start, float(dt),
            float(sharpness or 0.0), int(k_fast), int(k_slow), g, grad)


__all__ = ["is_available", "EventLayout", "charge_forward", "charge_backward"]
