"""numba-cuda kernels of the reference: induced current per (segment, pixel) pair, waveform sums, LArPix front end.

Imported only by :mod:`larnd_diff.reference.cuda` (importing this module imports ``numba.cuda``). The arithmetic
is :mod:`.scalars`, the same functions the CPU kernels compile (:mod:`.induce`, :mod:`.electronics`), compiled
here as device functions (:func:`kernels`); this module holds only the GPU drivers: thread indexing, scratch
memory and the kernels' layout. The one-rounding multiply-add ``fma_rn`` is the hardware ``fma.rn.f64`` and the
noise draws come from numba-cuda's xoroshiro128+ generator. The CUDA compiler additionally contracts other
float64 ``a*b + c`` patterns on its own (NVVM's default), which the CPU version does not: those are the only
intended differences (last-ulp effects, see the GPU test for the measured agreement).

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``cuda.fma`` is a plain ``a*b + c`` (two roundings);
there the exact CPU ``fma_rn`` of :mod:`.numerics` is bound instead, so the simulator reproduces the CPU reference.

Units: lengths cm, times us, currents C/us, charges C.
"""
from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from numba import config, float64

from ..retarget import compile_scalars, numba_cuda, rebind
from . import scalars
from .numerics import fma_rn
from .scalars import IN_PAD_TERMS, pair_current, pixel_triggers  # rebound to device functions: kernels()

cuda = numba_cuda()
from numba.cuda.random import xoroshiro128p_normal_float32  # noqa: E402  (after numba_cuda's NumPy shim)

SIMULATOR = bool(config.ENABLE_CUDASIM)
#: Capacity of the per-thread in-pad grid scratch (larnd-sim's sampled_points is 30).
MAX_POINTS = 32


def hardware_fma(a, b, c):
    """a*b + c with one rounding (fma.rn.f64)."""
    return cuda.fma(a, b, c)


def induced_current_kernel(pair_seg, pix_xy, seg_start, seg_end, sigma_t, sigma_l, n_e, t0_tick, z_anode, pitch,
                           vdrift, t_sampling, n_points, single, signals, buck_b, buck_c, n_live):
    """One thread per (segment, pixel) pair p: signals[p, :n_live[p]] = current (C/us) at the segment's ticks
    (:func:`.scalars.pair_current`; buck_b, buck_c: scratch rows as long as the signal rows)."""
    p = cuda.grid(1)
    if p >= pair_seg.shape[0]:
        return
    s = pair_seg[p]
    terms = cuda.local.array((IN_PAD_TERMS, MAX_POINTS), float64)
    start = (seg_start[s, 0], seg_start[s, 1], seg_start[s, 2])
    end = (seg_end[s, 0], seg_end[s, 1], seg_end[s, 2])
    n_live[p] = pair_current(signals[p], buck_b[p], buck_c[p], terms, start, end, sigma_t[s], sigma_l[s], n_e[s],
                             t0_tick[s], z_anode[s], pix_xy[p, 0], pix_xy[p, 1], pitch, vdrift, t_sampling,
                             n_points, single)


def zero_fill_kernel(a):
    """a[:, :] = 0 (float64, 2-D). Grid (rows, column blocks), threads along the columns."""
    i = cuda.blockIdx.x
    j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if i < a.shape[0] and j < a.shape[1]:
        a[i, j] = 0.0


def pixel_waveform_kernel(waveforms, signals, n_live, row_ptr, row_pairs, pair_start_tick):
    """One thread per (pixel row, tick): waveform[row, tick] += signal of each of the row's pairs (C/us), pairs
    in list order (row_pairs[row_ptr[row]:row_ptr[row + 1]]), so the float64 sums equal the CPU's.
    Grid (rows, tick blocks), threads along the ticks."""
    row = cuda.blockIdx.x
    tick = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if row >= waveforms.shape[0] or tick >= waveforms.shape[1]:
        return
    w = waveforms[row, tick]
    for m in range(row_ptr[row], row_ptr[row + 1]):
        p = row_pairs[m]
        k = tick - pair_start_tick[p]
        if k >= 0 and k < n_live[p]:
            w += signals[p, k]
    waveforms[row, tick] = w


def front_end_kernel(waveforms, n_ticks, t_sampling, threshold_c, interval, reset_e, uncorr_e, states, noisy,
                     charges, ticks, counts):
    """One thread per pixel row: :func:`.scalars.pixel_triggers` (LArPix self-trigger, hold window, dead time),
    charges (C) / trigger ticks of up to charges.shape[1] samples (NaN / -1 empty) and their count."""
    row = cuda.grid(1)
    if row >= waveforms.shape[0]:
        return
    for j in range(charges.shape[1]):
        charges[row, j] = math.nan
        ticks[row, j] = -1
    counts[row] = pixel_triggers(waveforms[row], n_ticks, t_sampling, threshold_c, interval, charges.shape[1],
                                 reset_e, uncorr_e, states, row, noisy, charges[row], ticks[row])


@lru_cache(maxsize=None)
def kernels() -> SimpleNamespace:
    """The kernels above, compiled (lazily, once per process) with :mod:`.scalars` as device functions."""
    device = cuda.jit(device=True)
    namespace = dict(globals())   # (one namespace: numba's CUDA simulator swaps the cuda module in it per launch)
    bindings = {"fma_rn": fma_rn if SIMULATOR else device(rebind(hardware_fma, namespace)),
                "normal_f32": xoroshiro128p_normal_float32}
    namespace.update(compile_scalars(scalars, device, bindings))
    return SimpleNamespace(**{fn.__name__: cuda.jit(rebind(fn, namespace))
                              for fn in (induced_current_kernel, zero_fill_kernel, pixel_waveform_kernel,
                                         front_end_kernel)})


def host_states(state_u64: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 xoroshiro128+ states (:func:`.rng.create_streams`) as numba-cuda's state records."""
    from numba.cuda.random import xoroshiro128p_dtype

    out = np.empty(state_u64.shape[0], xoroshiro128p_dtype)
    out["s0"] = state_u64[:, 0]
    out["s1"] = state_u64[:, 1]
    return out
