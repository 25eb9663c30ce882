"""The fused induced-current kernels of :mod:`larnd_diff.sim.fused` on an NVIDIA GPU (numba-cuda).

Same scalar physics (compiled from the same Python functions), different parallel layout: one thread per
in-pad row, no scratch arrays. Along z the arrival time t_s(k) = (|k h_z - z_an| - 0.5)/v + delay is V-shaped
(monotone on each side of the anode's k), so a row's samples come out time-ordered from two pointers: the
forward pass walks ticks downwards, merging the samples into the decaying running sums and atomically adding
them to the pair's waveform; the backward pass walks ticks upwards with the adjoint sums H, K and hands each
sample its gradient when its bucket is reached. Work per row: n_z samples + the window's ticks.

Used for torch tensors on a CUDA device (zero-copy through ``__cuda_array_interface__``); numba.cuda is
imported lazily, so importing this module needs no GPU.
"""
from __future__ import annotations

import math
from functools import lru_cache

from larnd_diff.sim import fused
from larnd_diff.sim.fused import (_NO_ONSET, AMP, HZ, TF, TS, ZAN, arrival, bucket, entry, entry_gradient,
                                  gauss_floor, onset_constants, onset_deposits, row_negligible)

try:   # the kernels below are compiled with these names rebound to numba.cuda (see _kernels)
    from larnd_diff.reference import cuda_kernels as _numpy_shim  # noqa: F401  (NumPy compatibility shim)
    from numba import cuda, float64
except Exception:   # pragma: no cover - numba-cuda missing or broken: is_available() says so
    cuda = float64 = None

THREADS = 128


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


def add(arr, i, j, value):
    """The CUDA binding of :func:`larnd_diff.sim.fused.add`: an atomic add."""
    cuda.atomic.add(arr, (i, j), value)


@lru_cache(maxsize=None)
def _kernels():
    device = cuda.jit(device=True)
    ns = fused.compile_scalars(device, extra={"cuda": cuda, "float64": float64})
    for fn in (add, _turn, _bucket_of):
        ns[fn.__name__] = device(fused.rebind(fn, ns))
    return cuda.jit(fused.rebind(_forward_kernel, ns)), cuda.jit(fused.rebind(_backward_kernel, ns))


def _dev(x):
    return cuda.as_cuda_array(x) if hasattr(x, "__cuda_array_interface__") else x


def _launch(kernel, n_rows, *args):
    if n_rows:
        kernel[max(1, -(-n_rows // THREADS)), THREADS](*(_dev(a) for a in args))


def forward(rowf, pair, n_z, n_win, t0, dt, sharpness, k_fast, k_slow, out):
    """Add the block's induced charge per tick into ``out`` (n_pairs, width) float64; all arguments are CUDA
    arrays (anything with ``__cuda_array_interface__``): rowf (R, 14) float64, pair / n_z / n_win int64,
    t0 float64 (R,)."""
    fwd, _ = _kernels()
    _launch(fwd, rowf.shape[0], rowf, pair, n_z, n_win, t0, float(dt), float(sharpness or 0.0), int(k_fast),
            int(k_slow), out)


def backward(rowf, pair, n_z, n_win, t0, dt, sharpness, k_fast, k_slow, g_wave, grad):
    """Write d loss / d rowf into ``grad`` (R, 14) float64 for the cotangent ``g_wave`` (n_pairs, width)."""
    _, bwd = _kernels()
    _launch(bwd, rowf.shape[0], rowf, pair, n_z, n_win, t0, float(dt), float(sharpness or 0.0), int(k_fast),
            int(k_slow), g_wave, grad)


__all__ = ["is_available", "forward", "backward"]
