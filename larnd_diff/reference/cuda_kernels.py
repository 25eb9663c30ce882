"""numba-cuda kernels of the reference: induced current per (segment, pixel) pair, waveform sums, LArPix front end.

Imported only by :mod:`larnd_diff.reference.cuda` (importing this module imports ``numba.cuda``). Every device
function is a line-by-line port of its CPU twin in :mod:`.induce` / :mod:`.electronics`: same float64 variables,
same float32 roundings (``f32``), same operation order; where the CPU version emulates the GPU's fused
multiply-adds with ``llvm.fma.f64`` these call ``cuda.fma``. The CUDA compiler additionally contracts other
float64 ``a*b + c`` patterns on its own (NVVM's default), which the CPU version does not: those are the only
intended differences (last-ulp effects, see the GPU test for the measured agreement).

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``cuda.fma`` is an unfused ``a*b + c``; there the exact
CPU ``fma`` of :mod:`.numerics` is called instead, so the simulator reproduces the CPU reference.

Units: lengths cm, times us, currents C/us, charges C (electrons only where named ``*_e``).
"""
from __future__ import annotations

import math

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda <= 0.30 registers an overload of np.row_stack (an alias of np.vstack that NumPy 2.5 removed) when
    # its typing registries load, which then fails: give it the alias back before numba.cuda is imported.
    np.row_stack = np.vstack

from numba import config, cuda, float32, float64  # noqa: E402
from numba.cuda.random import xoroshiro128p_normal_float32  # noqa: E402

from .induce import (  # noqa: E402
    AMPLITUDE_A, DELAY_US, E_CHARGE, MAX_DELAY_US, NEGLIGIBLE_CURRENT, TAU_B_US, TAU_C_US, Z_SAMPLING_CM,
    _EXP_UNDERFLOW, _MIN_TAU_US)

SIMULATOR = bool(config.ENABLE_CUDASIM)
#: Capacity of the per-thread x / y grid buffers (larnd-sim's sampled_points is 30).
MAX_POINTS = 32
#: sqrt(8 pi^3), the Gaussian normalisation of the charge density.
_SQRT_8_PI3 = math.sqrt(8 * math.pi * math.pi * math.pi)
_SQRT_PI = math.sqrt(math.pi)

if SIMULATOR:
    from .numerics import fma as _exact_fma

    @cuda.jit(device=True)
    def fused(a, b, c):
        """a*b + c with one rounding (simulator: the CPU reference's exact fma)."""
        return _exact_fma(a, b, c)
else:
    @cuda.jit(device=True)
    def fused(a, b, c):
        """a*b + c with one rounding (hardware fma.rn.f64)."""
        return cuda.fma(a, b, c)


# ------------------------------------------------------------------------------------------- float helpers ---
@cuda.jit(device=True)
def f32(x, single):
    """x rounded to float32 (held as float64) when ``single``."""
    if single:
        return float64(float32(x))
    return x


@cuda.jit(device=True)
def mad(a, b, c, fuse):
    """float64 a*b + c, fused when ``fuse``."""
    if fuse:
        return fused(float64(a), float64(b), float64(c))
    return a * b + c


@cuda.jit(device=True)
def mad32(a, b, c, single, fuse):
    """float32 a*b + c of float32-valued inputs: fused, or product and sum each rounded."""
    if fuse:
        return f32(fused(a, b, c), single)
    return f32(f32(a * b, single) + c, single)


@cuda.jit(device=True)
def norm3(a, b, c, single):
    """sqrt(a^2 + b^2 + c^2) of a float32 vector as fma(c, c, fma(a, a, b*b)) (plain double when not single)."""
    sq = mad32(c, c, mad32(a, a, f32(b * b, single), single, single), single, single)
    return f32(math.sqrt(sq), single)


@cuda.jit(device=True)
def norm2(a, b, single):
    """sqrt(a^2 + b^2) of a float32 vector as fma(a, a, b*b)."""
    return f32(math.sqrt(mad32(a, a, f32(b * b, single), single, single)), single)


# ------------------------------------------------------------------------------------------ current model ---
@cuda.jit(device=True)
def pad_polynomial(c, x, y):
    """c0 + c1 x + c2 y + c3 x y + c4 x^2 + c5 y^2 (x, y in cm from the pad centre), left to right."""
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


@cuda.jit(device=True)
def arrival_time(t0_us, x, y):
    """Time (us) the charge drifting to the virtual plane at t0 reaches the pad at offsets (x, y) cm."""
    c = DELAY_US
    return t0_us + c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


@cuda.jit(device=True)
def larger(a, b):
    """max(a, b) as numba's builtin evaluates it (b if b > a else a; NaN handling identical)."""
    return b if b > a else a


@cuda.jit(device=True)
def smaller(a, b):
    """min(a, b) as numba's builtin evaluates it (b if b < a else a)."""
    return b if b < a else a


@cuda.jit(device=True)
def step_sign(v):
    return 1.0 if v >= 0 else -1.0


# ------------------------------------------------------------------------------------------------ geometry ---
@cuda.jit(device=True)
def z_interval(start, end, x_p, y_p, tolerance, single):
    """(z_poca, z_lo, z_hi) cm of the segment's line passing within ``tolerance`` cm (xy) of the pad centre;
    (0, 0, 0) for no overlap or x_start == x_end (Q). Port of :func:`.induce.z_interval`."""
    if start[0] > end[0]:
        s, e = end, start
    elif start[0] < end[0]:
        s, e = start, end
    else:
        return 0.0, 0.0, 0.0
    xs, ys, zs = s
    xe, ye, ze = e
    ddx = f32(xe - xs, single)
    ddy = f32(ye - ys, single)
    ddz = f32(ze - zs, single)
    m = f32(ddy / ddx, single)
    if single:
        numer = f32(fused(xe, ys, -f32(xs * ye, single)), single)
    else:
        numer = xe * ys + -(xs * ye)
    q = f32(numer / ddx, single)
    mq = f32(m * q, single)
    mm1 = f32(m * m, single) + 1.0
    x_poca = (-(-x_p - m * y_p) - mq) / mm1
    length = norm3(ddx, ddy, ddz, single)
    dir_x = f32(ddx / length, single)
    dir_z = f32(ddz / length, single)
    if x_poca < xs:
        doca = math.sqrt((x_p - xs) * (x_p - xs) + (y_p - ys) * (y_p - ys))
        x_poca = xs
    elif x_poca > xe:
        doca = math.sqrt((x_p - xe) * (x_p - xe) + (y_p - ye) * (y_p - ye))
        x_poca = xe
    else:
        doca = abs(m * x_p - y_p + q) / math.sqrt(mm1)
    z_poca = zs + (x_poca - xs) / dir_x * dir_z
    if tolerance > doca:
        length_2d = norm2(ddx, ddy, single)
        dir2_x = f32(ddx / length_2d, single)
        half = math.sqrt(tolerance * tolerance - doca * doca)
        l_plus = (x_poca + half * dir2_x - xs) / dir_x
        l_minus = (x_poca - half * dir2_x - xs) / dir_x
        z_plus = zs + dir_z * l_plus
        z_minus = zs + dir_z * l_minus
        return z_poca, smaller(z_minus, z_plus), larger(z_minus, z_plus)
    return 0.0, 0.0, 0.0


@cuda.jit(device=True)
def impact_tolerance(sigma_t, pitch):
    """Largest xy distance (cm) of the segment from the pad centre that still induces: 2 max(5 sqrt2 sT, p/sqrt2)."""
    a = 5 * sigma_t
    return larger(math.sqrt(a * a + a * a), math.sqrt(pitch * pitch + pitch * pitch) / 2) * 2


# ------------------------------------------------------------------------------------- one (segment, pixel) ---
@cuda.jit(device=True)
def pair_current(out, buck_b, buck_c, seg_start, seg_end, sigma_t, sigma_l, n_e, t0_tick, z_anode, x_p, y_p,
                 pitch, vdrift, t_sampling, n_points, single):
    """Induced current (C/us) of one segment on one pad at ticks t0_tick + k dt into ``out`` (float32-rounded when
    ``single``); returns n, the number of leading ticks written (out[:n]). ``buck_b``/``buck_c`` are zeroed
    scratch rows of len(out). Charge density hoisted per grid point, running-sum time accumulation per (x, y)
    column, exactly as :func:`.induce.pair_signal`."""
    n_ticks = out.shape[0]
    if seg_start[2] < seg_end[2]:
        a_pt, b_pt = seg_start, seg_end
    else:
        a_pt, b_pt = seg_end, seg_start
    sg0 = f32(b_pt[0] - a_pt[0], single)
    sg1 = f32(b_pt[1] - a_pt[1], single)
    sg2 = f32(b_pt[2] - a_pt[2], single)
    length = norm3(sg0, sg1, sg2, single)
    ux = f32(sg0 / length, single)
    uy = f32(sg1 / length, single)
    uz = f32(sg2 / length, single)
    tolerance = impact_tolerance(sigma_t, pitch)
    z_poca, z_lo, z_hi = z_interval(a_pt, b_pt, x_p, y_p, tolerance, single)
    if z_poca == 0:
        return 0
    z_first = z_lo - 4 * sigma_l
    z_last = z_hi + 4 * sigma_l
    l_lo = (z_lo - a_pt[2]) / uz
    l_hi = (z_hi - a_pt[2]) / uz
    x_lo = a_pt[0] + l_lo * ux
    y_lo = a_pt[1] + l_lo * uy
    x_hi = a_pt[0] + l_hi * ux
    y_hi = a_pt[1] + l_hi * uy
    y_step = (abs(y_hi - y_lo) + 8 * sigma_t) / (n_points - 1)
    x_step = (abs(x_hi - x_lo) + 8 * sigma_t) / (n_points - 1)
    n_z = larger(n_points, int(math.ceil(abs(z_last - z_first) / Z_SAMPLING_CM)))
    z_step = (z_last - z_first) / (n_z - 1)
    if math.isnan(x_step) or math.isnan(y_step) or math.isnan(z_step) or math.isnan(x_lo) or math.isnan(y_lo):
        for k in range(n_ticks):
            out[k] = math.nan
        return n_ticks
    half_pitch = pitch / 2
    sign_x = step_sign(ux)
    sign_y = step_sign(uy)
    volume = abs(x_step) * abs(y_step) * abs(z_step)

    sx = sigma_t
    sz = sigma_l
    a_coef = (f32(ux * ux, single) / (2 * sx * sx) + f32(uy * uy, single) / (2 * sx * sx)
              + f32(uz * uz, single) / (2 * sz * sz))
    factor = n_e / length / (f32(f32(sx * sx, single) * sz, single) * _SQRT_8_PI3)
    if factor == 0:
        return 0
    log_factor = math.log(factor)
    sqrt_a_2 = 2 * math.sqrt(a_coef)
    two_a_len = 2 * a_coef * length
    log_int_max = math.log(2 * _SQRT_PI / sqrt_a_2)
    log_skip = _EXP_UNDERFLOW
    if volume > 0 and math.isfinite(volume):
        log_skip = larger(log_skip, math.log(NEGLIGIBLE_CURRENT * _MIN_TAU_US / (volume * E_CHARGE)))
    ssx = f32(sx * sx, single)
    ssz = f32(sz * sz, single)

    # in-pad x and y grid columns: offset from the pad centre, b and delta terms of the density
    xd_in = cuda.local.array(MAX_POINTS, float64)
    bx_in = cuda.local.array(MAX_POINTS, float64)
    dx_in = cuda.local.array(MAX_POINTS, float64)
    yd_in = cuda.local.array(MAX_POINTS, float64)
    by_in = cuda.local.array(MAX_POINTS, float64)
    dy_in = cuda.local.array(MAX_POINTS, float64)
    nx = 0
    for ix in range(n_points):
        x = x_lo + sign_x * mad(ix, x_step, -4 * sigma_t, single)
        x_dist = abs(x_p - x)
        if x_dist > half_pitch:
            continue
        rx = x - a_pt[0]
        xd_in[nx] = x_dist
        bx_in[nx] = rx / ssx * ux
        dx_in[nx] = rx * rx / (2 * sx * sx)
        nx += 1
    ny = 0
    for iy in range(n_points):
        y = y_lo + sign_y * mad(iy, y_step, -4 * sigma_t, single)
        y_dist = abs(y_p - y)
        if y_dist > half_pitch:
            continue
        ry = y - a_pt[1]
        yd_in[ny] = y_dist
        by_in[ny] = ry / ssx * uy
        dy_in[ny] = ry * ry / (2 * sx * sx)
        ny += 1
    if nx == 0 or ny == 0:
        return 0

    # ticks that can see current: up to the latest arrival
    t0_far = (larger(abs(z_first - z_anode), abs(z_last - z_anode)) - 0.5) / vdrift
    n_ticks = smaller(n_ticks, larger(1, int(math.ceil((t0_far + MAX_DELAY_US - t0_tick) / t_sampling)) + 2))
    for k in range(n_ticks):
        out[k] = 0.0
        buck_b[k] = 0.0
        buck_c[k] = 0.0
    k_last = -1
    for jx in range(nx):
        xd = xd_in[jx]
        for jy in range(ny):
            yd = yd_in[jy]
            amp = smaller(pad_polynomial(AMPLITUDE_A, xd, yd), 1.0)
            tau_b = pad_polynomial(TAU_B_US, xd, yd)
            tau_c = pad_polynomial(TAU_C_US, xd, yd)
            k_hi = -1
            for iz in range(n_z):
                z = mad(iz, z_step, z_first, single)
                rz = z - a_pt[2]
                b = -(bx_in[jx] + by_in[jy] + rz / ssz * uz)
                delta = dx_in[jx] + dy_in[jy] + rz * rz / (2 * sz * sz)
                gauss = b * b / (4 * a_coef) - delta + log_factor
                if gauss + log_int_max < log_skip:
                    continue
                integral = _SQRT_PI * (-math.erf(b / sqrt_a_2) + math.erf((b + two_a_len) / sqrt_a_2)) / sqrt_a_2
                if integral == 0:
                    continue
                charge = math.exp(gauss + math.log(integral)) * volume
                if charge == 0:
                    continue
                t_s = arrival_time((abs(z - z_anode) - 0.5) / vdrift, xd, yd)
                if not t_s > t0_tick:
                    continue
                # bucket: the last tick strictly before the arrival
                k = int(math.ceil((t_s - t0_tick) / t_sampling)) - 1
                if k >= n_ticks:
                    k = n_ticks - 1
                if k < 0:
                    k = 0
                while k + 1 < n_ticks and t0_tick + (k + 1) * t_sampling < t_s:
                    k += 1
                while k > 0 and not t0_tick + k * t_sampling < t_s:
                    k -= 1
                t_k = t0_tick + k * t_sampling
                buck_b[k] += charge * math.exp(-((-t_k + t_s) / tau_b))
                buck_c[k] += charge * math.exp(-((-t_k + t_s) / tau_c))
                if k > k_hi:
                    k_hi = k
            if k_hi < 0:
                continue
            decay_b = math.exp(-t_sampling / tau_b)
            decay_c = math.exp(-t_sampling / tau_c)
            run_b = 0.0
            run_c = 0.0
            for k in range(k_hi, -1, -1):
                run_b = run_b * decay_b + buck_b[k]
                run_c = run_c * decay_c + buck_c[k]
                buck_b[k] = 0.0
                buck_c[k] = 0.0
                out[k] += (amp * (run_b / tau_b) + (1 - amp) * (run_c / tau_c)) * E_CHARGE
            if k_hi > k_last:
                k_last = k_hi
    for k in range(k_last + 1):
        out[k] = f32(out[k], single)
    return k_last + 1


@cuda.jit
def induced_current_kernel(pair_seg, pix_xy, seg_start, seg_end, sigma_t, sigma_l, n_e, t0_tick, z_anode, pitch,
                           vdrift, t_sampling, n_points, single, signals, buck_b, buck_c, n_live):
    """One thread per (segment, pixel) pair p: signals[p, :n_live[p]] = current (C/us) at the segment's ticks."""
    p = cuda.grid(1)
    if p >= pair_seg.shape[0]:
        return
    s = pair_seg[p]
    start = (seg_start[s, 0], seg_start[s, 1], seg_start[s, 2])
    end = (seg_end[s, 0], seg_end[s, 1], seg_end[s, 2])
    n_live[p] = pair_current(signals[p], buck_b[p], buck_c[p], start, end, sigma_t[s], sigma_l[s], n_e[s],
                             t0_tick[s], z_anode[s], pix_xy[p, 0], pix_xy[p, 1], pitch, vdrift, t_sampling,
                             n_points, single)


@cuda.jit
def zero_fill_kernel(a):
    """a[:, :] = 0 (float64, 2-D). Grid (rows, column blocks), threads along the columns."""
    i = cuda.blockIdx.x
    j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if i < a.shape[0] and j < a.shape[1]:
        a[i, j] = 0.0


@cuda.jit
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


# ------------------------------------------------------------------------------------------------ front end ---
@cuda.jit(device=True)
def noise_charge(states, row, sigma_e, noisy):
    """One float32 normal draw of the row's xoroshiro128+ stream times sigma electrons, in C (0, no draw, when
    not ``noisy``)."""
    if noisy:
        return float64(xoroshiro128p_normal_float32(states, row)) * sigma_e * E_CHARGE
    return 0.0


@cuda.jit(device=True)
def tick_charge(waveforms, row, i, t_sampling):
    """Charge (C) of tick i of the row: current x dt, zero past the stored ticks."""
    if i < waveforms.shape[1]:
        return waveforms[row, i] * t_sampling
    return 0.0


@cuda.jit
def front_end_kernel(waveforms, n_ticks, t_sampling, threshold_c, interval, reset_e, uncorr_e, states, noisy,
                     charges, ticks, counts):
    """One thread per pixel row: LArPix self-trigger, hold window (trigger tick integrated twice; Q), 2-tick dead
    time; fills charges (C) / trigger ticks of up to charges.shape[1] samples and counts. Port of
    :func:`.electronics.pixel_triggers`."""
    row = cuda.grid(1)
    if row >= waveforms.shape[0]:
        return
    max_samples = charges.shape[1]
    for j in range(max_samples):
        charges[row, j] = math.nan
        ticks[row, j] = -1
    n_stored = waveforms.shape[1]
    k = 0
    q_sum = noise_charge(states, row, reset_e, noisy)
    i = 0
    while i < n_ticks:
        if i >= n_stored and not noisy:
            break
        q_sum += tick_charge(waveforms, row, i, t_sampling)
        q_noise = noise_charge(states, row, uncorr_e, noisy)
        if q_sum + q_noise >= threshold_c:
            trigger = i
            integrate_end = i + interval
            while i <= integrate_end and i < n_ticks:
                q_sum += tick_charge(waveforms, row, i, t_sampling)
                i += 1
            converted = q_sum + noise_charge(states, row, uncorr_e, noisy)
            if converted < threshold_c:
                i += 1
                q_sum = noise_charge(states, row, uncorr_e, noisy)
                continue
            if k >= max_samples:
                break
            charges[row, k] = converted
            ticks[row, k] = trigger
            k += 1
            q_sum = noise_charge(states, row, reset_e, noisy)
            i += 2
        else:
            i += 1
    counts[row] = k


def host_states(state_u64: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 xoroshiro128+ states (:func:`.rng.create_streams`) as numba-cuda's state records."""
    from numba.cuda.random import xoroshiro128p_dtype

    out = np.empty(state_u64.shape[0], xoroshiro128p_dtype)
    out["s0"] = state_u64[:, 0]
    out["s1"] = state_u64[:, 1]
    return out
