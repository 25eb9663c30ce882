"""The Numba reference on a CUDA GPU (numba-cuda).

Same algorithm, same outputs as :func:`larnd_diff.reference.simulate`.

Host side (CPU, the reference's own functions): quenching, drifting, pixel lists, unique pixels, signal windows,
digitisation, backtracking. Device side (:mod:`.cuda_kernels`): the induced current, one thread per
(segment, pixel) pair with the charge density hoisted out of the time loop and the running-sum time accumulation
of the CPU version; the per-pixel waveform sums, one thread per (pixel, tick) adding the pairs in list order; the
LArPix front end, one thread per pixel row (as larnd-sim's ``get_adc_values``).

``numba.cuda`` is imported lazily: importing this module needs no GPU. :func:`is_available` tells whether a CUDA
GPU (or numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) is usable.

Agreement with the CPU version: identical where both round the same way; the CUDA compiler contracts more
float64 multiply-adds than the CPU emulates and libdevice's erf/exp/log differ from glibc's in the last ulp, so a
few per-pair currents differ at the 1e-16 relative level before their float32 rounding (measured figures: the GPU
test, ``tests/test_reference_cuda.py``).
"""
from __future__ import annotations

import numpy as np

from ..hits import Hits
from ..retarget import numba_cuda
from .induce import first_tick_time
from .pipeline import chunk_hits, chunk_pairs, chunks, prepare, stream_seed
from .rng import create_streams, n_streams
from .scalars import E_CHARGE

#: Device memory bound (bytes) of one block of pairs: signal rows plus the two running-sum scratch rows (float64).
PAIR_BLOCK_BYTES = 3 * 2**30
#: Threads per block of the pair kernel (heavy register use) and of the per-row kernels.
PAIR_THREADS = 64
ROW_THREADS = 128
TICK_THREADS = 128


def is_available() -> bool:
    """True when numba-cuda can run kernels here (a CUDA GPU with its driver, or the CUDA simulator)."""
    try:
        cuda = numba_cuda()
    except Exception:   # numba-cuda missing or broken
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def _kernels():
    from . import cuda_kernels
    return cuda_kernels.kernels()


def _blocks(n, threads):
    return max(1, -(-int(n) // threads))


def _t0_ticks(t_start, dt, pad):
    """Per-segment evaluation start T0 (us) of :func:`.induce.first_tick_time` (floor to the tick grid; Q)."""
    return np.array([first_tick_time(float(t), dt, pad) for t in t_start], np.float64)


def chunk_waveforms_gpu(segs, det, vdrift, single):
    """Device waveforms of one chunk: (unique pixels (n, 2), device array (n, n_stored) C/us or None,
    pair_row, pair_seg). Mirrors :func:`.pipeline.chunk_waveforms` with the pair currents and sums on the GPU."""
    from numba import cuda

    from .cuda_kernels import MAX_POINTS
    if det.sampled_points > MAX_POINTS:
        raise ValueError(f"the CUDA kernels sample at most {MAX_POINTS} points per axis, not {det.sampled_points}")
    k = _kernels()
    plan = chunk_pairs(segs, det, vdrift)
    uniq, pair_seg, pair_row = plan.pixels, plan.pair_seg, plan.pair_row
    if len(uniq) == 0:
        return uniq, None, pair_row, pair_seg
    dt = det.t_sampling
    start_tick, n_stored = plan.start_tick, plan.n_stored
    centres = np.ascontiguousarray(plan.centres, np.float64)

    # per-segment inputs, float64 (the float32 fields widen exactly)
    seg_start = np.stack([segs[f"{a}_start"].astype(np.float64) for a in "xyz"], axis=1)
    seg_end = np.stack([segs[f"{a}_end"].astype(np.float64) for a in "xyz"], axis=1)
    d_start, d_end = cuda.to_device(seg_start), cuda.to_device(seg_end)
    d_sig_t = cuda.to_device(segs["tran_diff"].astype(np.float64))
    d_sig_l = cuda.to_device(segs["long_diff"].astype(np.float64))
    d_ne = cuda.to_device(segs["n_electrons"].astype(np.float64))
    d_t0 = cuda.to_device(_t0_ticks(segs["t_start"].astype(np.float64), dt, det.time_padding))
    d_za = cuda.to_device(plan.z_anode.astype(np.float64))

    waveforms = cuda.device_array((len(uniq), n_stored), np.float64)
    k.zero_fill_kernel[(len(uniq), _blocks(n_stored, TICK_THREADS)), TICK_THREADS](waveforms)
    width = max(plan.time_max, 1)
    block = max(1, PAIR_BLOCK_BYTES // (24 * width))
    for b0 in range(0, len(pair_seg), block):
        seg_b = np.ascontiguousarray(pair_seg[b0:b0 + block])
        row_b = pair_row[b0:b0 + block]
        n = len(seg_b)
        signals = cuda.device_array((n, width), np.float64)
        buck_b = cuda.device_array((n, width), np.float64)
        buck_c = cuda.device_array((n, width), np.float64)
        n_live = cuda.device_array(n, np.int64)
        k.induced_current_kernel[_blocks(n, PAIR_THREADS), PAIR_THREADS](
            cuda.to_device(seg_b), cuda.to_device(centres[b0:b0 + block]), d_start, d_end, d_sig_t, d_sig_l, d_ne,
            d_t0, d_za, float(det.pixel_pitch), float(vdrift), float(dt), int(det.sampled_points), bool(single),
            signals, buck_b, buck_c, n_live)
        # pairs of each pixel row, in list order (a stable sort keeps it)
        order = np.argsort(row_b, kind="stable").astype(np.int64)
        row_ptr = np.zeros(len(uniq) + 1, np.int64)
        np.cumsum(np.bincount(row_b, minlength=len(uniq)), out=row_ptr[1:])
        k.pixel_waveform_kernel[(len(uniq), _blocks(n_stored, TICK_THREADS)), TICK_THREADS](
            waveforms, signals, n_live, cuda.to_device(row_ptr), cuda.to_device(order),
            cuda.to_device(start_tick[seg_b]))
        del signals, buck_b, buck_c
    return uniq, waveforms, pair_row, pair_seg


def front_end_gpu(waveforms, det, noise, state):
    """Front end of every row of the device ``waveforms``: charges (n, K) C (NaN empty), ticks (n, K), counts."""
    from numba import cuda
    k = _kernels()
    el = det.electronics
    dt = det.t_sampling
    n = waveforms.shape[0]
    charges = cuda.device_array((n, el.max_adc_values), np.float64)
    ticks = cuda.device_array((n, el.max_adc_values), np.int64)
    counts = cuda.device_array(n, np.int64)
    from .cuda_kernels import host_states

    d_states = cuda.to_device(host_states(state))
    k.front_end_kernel[_blocks(n, ROW_THREADS), ROW_THREADS](
        waveforms, int(det.n_ticks_event), float(dt), float(el.threshold_e * E_CHARGE), int(el.integration_ticks(dt)),
        float(el.reset_noise_e), float(el.uncorrelated_noise_e), d_states, bool(noise), charges, ticks, counts)
    return charges.copy_to_host(), ticks.copy_to_host(), counts.copy_to_host()


def simulate(segments, detector=None, params=None, *, noise=False, seed=0, precision="larnd-sim", chunk_size=600,
             progress=False):
    """:func:`larnd_diff.reference.simulate` with the induced current, the waveform sums and the front end run as
    CUDA kernels. Same arguments (no ``return_waveforms``), same :class:`larnd_diff.hits.Hits` (times in us,
    charges in electrons, backtrack = rows of ``segments``)."""
    if not is_available():
        raise RuntimeError("no CUDA GPU usable by numba-cuda here (larnd_diff.reference.cuda.is_available())")
    det, vdrift, drifted, single = prepare(segments, detector, params, precision)
    t_hi_pad = det.time_padding + 0.5 / vdrift
    parts = []
    for i_event, ev, _, rows, segs in chunks(drifted, chunk_size, progress, "reference (cuda)"):
        uniq, wf, pair_row, pair_seg = chunk_waveforms_gpu(segs, det, vdrift, single)
        if len(uniq) == 0:
            continue
        state = create_streams(n_streams(len(uniq)), stream_seed(seed, i_event)) if noise else \
            np.zeros((1, 2), np.uint64)
        charges, ticks, _ = front_end_gpu(wf, det, noise, state)
        del wf
        parts.append(chunk_hits(ev, uniq, charges, ticks, pair_row, pair_seg, segs, rows, det, t_hi_pad))
    return Hits.concatenate(parts, det.electronics.max_adc_values)


__all__ = ["simulate", "is_available", "chunk_waveforms_gpu", "front_end_gpu"]
