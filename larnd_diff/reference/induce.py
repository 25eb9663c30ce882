"""Induced current of diffused line segments on pixel pads (spec 4.4).

For every (segment, pixel) pair the charge density of the diffused segment (:func:`charge_density`) is sampled on
larnd-sim's Riemann grid (30 x 30 x N_z points of a box around the segment piece that passes near the pad) and
folded with the two-exponential current template (:func:`current_model`) at the 0.1 us ticks.

Two implementation notes:

* The density does not depend on time, so it is evaluated once per grid point (larnd-sim re-evaluates it for
  every tick). Points whose density upper bound gives a current below ``NEGLIGIBLE_CURRENT`` (1e-60 C/us, far
  below the smallest float32 subnormal of the stored signal) or underflows to zero are skipped.
* For one (x, y) grid column the template is A exp(-(t_s(z) - t)/B)/B + (1 - A) exp(-(t_s(z) - t)/C)/C for
  t < t_s(z). Summed over z this is evaluated backwards in time with a decaying running sum per exponential
  (S_k = S_{k+1} exp(-dt/tau) + charge arriving during (T_k, T_{k+1}]), i.e. O(N_z + ticks) per column instead of
  O(N_z x ticks). Only factors <= 1 multiply the running sums, so the recursion is stable; it agrees with the
  direct sum to ~1e-15 relative (the summation order differs from larnd-sim's, far below the float32 storage of
  the per-pair signal). Ticks after the last arrival are exactly zero and are not visited.

Precision: with ``single=True`` the quantities larnd-sim computes in float32 (spec 4.8) are rounded to float32,
and the fused multiply-adds the GPU compiler forms (LLVM's rule: fadd(fmul(a, b), c) -> fma(a, b, c), the first
operand's product fused first) are emulated where they change the result: the xy intercept (spec 4.8), the
float32 segment lengths sqrt(fma(c, c, fma(a, a, b*b))) of the kernel, the density and z_interval (3-D and 2-D),
and the float64 grid coordinates fma(i, step, -4 sigma) / fma(k, z_step, z_first). With them the per-pixel currents
of the captured test_inputs events agree with the GPU to <= 5e-9 of the row maximum (most rows bit-identical);
other contraction sites made no measurable difference and are left unfused. ``single=False`` computes everything
in float64 without contractions.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .numerics import JIT, f32, fma, fma_f32

#: Electron charge in C (larnd-sim consts.e_charge).
E_CHARGE = 1.602e-19
#: z sampling target of the Riemann grid in cm (written as t_sampling/2 in larnd-sim, used as a length).
Z_SAMPLING_CM = 0.1 / 2.0
#: Template polynomials P(x, y) = c0 + c1 x + c2 y + c3 x y + c4 x^2 + c5 y^2 (x, y offsets from the pad centre).
AMPLITUDE_A = (1.060, -0.909, -0.909, 5.856, 0.207, 0.207)
TAU_B_US = (0.679, -1.083, -1.083, 8.772, -5.521, -5.521)
TAU_C_US = (2.644, -9.174, -9.174, 13.483, 45.887, 45.887)
DELAY_US = (2.948, -2.705, -2.705, 4.825, 20.814, 20.814)
#: Upper bound of the delay polynomial over the pad (its maximum, at a corner, is 4.032 us).
MAX_DELAY_US = 4.1
# exp(x) == 0.0 in float64 for x below this (the smallest subnormal is exp(-745.13)).
_EXP_UNDERFLOW = -746.0
#: Grid points whose density bound gives a current below this (C/us) are skipped: 1e15 times below the smallest
#: float32 subnormal of larnd-sim's per-pair signal store, so they cannot change any stored value.
NEGLIGIBLE_CURRENT = 1e-60
#: Lower bound (us) of the fast time constant B over the pad (its minimum, at a corner, is 0.0872 us).
_MIN_TAU_US = 0.05


# ------------------------------------------------------------------------------------------- time windows ---
@njit(**JIT)
def signal_window(t_start_us, t_end_us, vdrift, t_sampling, time_padding, t_max_us):
    """(w_start, w_end) in us: padded arrival window rounded (half-even) to the tick grid and clamped."""
    w_end = min(t_max_us, np.rint((t_end_us + time_padding + 0.5 / vdrift) / t_sampling) * t_sampling)
    w_start = max(0.0, np.rint((t_start_us - time_padding) / t_sampling) * t_sampling)
    return w_start, w_end


@njit(**JIT)
def signal_windows(t_start, t_end, vdrift, t_sampling, time_padding, t_max_us):
    """Per-segment placement start (us) and the chunk's number of ticks time_max = max ceil(window / dt)."""
    n = t_start.shape[0]
    starts = np.empty(n, np.float64)
    time_max = 0
    for s in range(n):
        w0, w1 = signal_window(np.float64(t_start[s]), np.float64(t_end[s]), vdrift, t_sampling, time_padding,
                               t_max_us)
        starts[s] = w0
        time_max = max(time_max, int(math.ceil((w1 - w0) / t_sampling)))
    return starts, time_max


@njit(**JIT)
def first_tick_time(t_start_us, t_sampling, time_padding):
    """Evaluation start T0 = max(0, floor((t_start - pad)/dt) dt) (floor, unlike the rounded placement; Q)."""
    return max(0.0, (t_start_us - time_padding) // t_sampling * t_sampling)


# ------------------------------------------------------------------------------------------ current model ---
@njit(**JIT)
def pad_polynomial(c, x, y):
    """c0 + c1 x + c2 y + c3 x y + c4 x^2 + c5 y^2, summed left to right."""
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


@njit(**JIT)
def arrival_time(t0_us, x, y):
    """t_s = t0 + delay(x, y): the time the charge reaches the pad (us), summed left to right from t0."""
    c = DELAY_US
    return t0_us + c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


@njit(**JIT)
def truncated_exponential(t, t_s, tau):
    """exp(-(t_s - t)/tau)/tau for t < t_s, else 0 (per us; integrates to 1 over t)."""
    y = (-t + t_s) / tau
    if y > 0:
        return math.exp(-y) / tau
    return 0.0


@njit(**JIT)
def current_model(t, t0, x, y):
    """Induced-current fraction per us at time t for charge reaching the virtual plane at t0, landing (x, y) cm
    from the pad centre (|x|, |y| <= p/2)."""
    a = min(pad_polynomial(AMPLITUDE_A, x, y), 1.0)
    b = pad_polynomial(TAU_B_US, x, y)
    c = pad_polynomial(TAU_C_US, x, y)
    t_s = arrival_time(t0, x, y)
    return a * truncated_exponential(t, t_s, b) + (1 - a) * truncated_exponential(t, t_s, c)


@njit(**JIT)
def mad(a, b, c, fused):
    """a*b + c, with a single rounding when ``fused`` (the GPU compiler's contraction)."""
    if fused:
        return fma(a, b, c)
    return a * b + c


@njit(**JIT)
def mad32(a, b, c, single, fused):
    """float32 a*b + c (inputs hold float32 values): fused, or product and sum each rounded."""
    if fused:
        return f32(fma(a, b, c), single)
    return f32(f32(a * b, single) + c, single)


@njit(**JIT)
def norm3(a, b, c, single, fused=False):
    """sqrt(a^2 + b^2 + c^2), every operation in float32 when ``single`` (inputs hold float32 values).
    Contracted as fma(c, c, fma(a, a, b*b)) when ``fused``."""
    sq = mad32(c, c, mad32(a, a, f32(b * b, single), single, fused), single, fused)
    return f32(math.sqrt(sq), single)


@njit(**JIT)
def norm2(a, b, single, fused=False):
    """sqrt(a^2 + b^2), in float32 when ``single``; fma(a, a, b*b) when ``fused``."""
    return f32(math.sqrt(mad32(a, a, f32(b * b, single), single, fused)), single)


# ----------------------------------------------------------------------------------------- charge density ---
@njit(**JIT)
def charge_density(x, y, z, q, start, segment, sigmas, single):
    """Electrons per cm^3 at (x, y, z) of q electrons spread uniformly on the segment start -> start + segment
    and diffused by an axis-aligned Gaussian of widths ``sigmas`` (cm). Closed form of spec 4.4.5."""
    dx, dy, dz = segment
    sx, sy, sz = sigmas
    length = norm3(dx, dy, dz, single, single)
    ux = f32(dx / length, single)
    uy = f32(dy / length, single)
    uz = f32(dz / length, single)
    a = (f32(ux * ux, single) / (2 * sx * sx) + f32(uy * uy, single) / (2 * sy * sy)
         + f32(uz * uz, single) / (2 * sz * sz))
    factor = q / length / (f32(f32(sx * sy, single) * sz, single) * math.sqrt(8 * math.pi * math.pi * math.pi))
    sqrt_a_2 = 2 * math.sqrt(a)
    rx, ry, rz = x - start[0], y - start[1], z - start[2]
    b = -(rx / f32(sx * sx, single) * ux + ry / f32(sy * sy, single) * uy + rz / f32(sz * sz, single) * uz)
    delta = rx * rx / (2 * sx * sx) + ry * ry / (2 * sy * sy) + rz * rz / (2 * sz * sz)
    integral = math.sqrt(math.pi) * (-math.erf(b / sqrt_a_2) + math.erf((b + 2 * a * length) / sqrt_a_2)) / sqrt_a_2
    if factor != 0 and integral != 0:
        return math.exp(b * b / (4 * a) - delta + math.log(factor) + math.log(integral))
    return 0.0


# ------------------------------------------------------------------------------------------------ geometry ---
@njit(**JIT)
def z_interval(start, end, x_p, y_p, tolerance, single):
    """z range of the segment's line whose xy projection passes within ``tolerance`` cm of (x_p, y_p).

    Returns (z_poca, z_lo, z_hi); (0, 0, 0) means "no overlap" (also for segments with x_start == x_end; Q).
    The interval is not clipped to the segment ends.
    """
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
    q = f32(fma_f32(xe, ys, -f32(xs * ye, single), single) / ddx, single)
    mq = f32(m * q, single)
    mm1 = f32(m * m, single) + 1.0
    x_poca = (-(-x_p - m * y_p) - mq) / mm1
    length = norm3(ddx, ddy, ddz, single, single)
    dir_x = f32(ddx / length, single)
    dir_z = f32(ddz / length, single)
    if x_poca < xs:
        doca = math.sqrt((x_p - xs) ** 2 + (y_p - ys) ** 2)
        x_poca = xs
    elif x_poca > xe:
        doca = math.sqrt((x_p - xe) ** 2 + (y_p - ye) ** 2)
        x_poca = xe
    else:
        doca = abs(m * x_p - y_p + q) / math.sqrt(mm1)
    z_poca = zs + (x_poca - xs) / dir_x * dir_z
    if tolerance > doca:
        length_2d = norm2(ddx, ddy, single, single)
        dir2_x = f32(ddx / length_2d, single)
        half = math.sqrt(tolerance ** 2 - doca ** 2)
        l_plus = (x_poca + half * dir2_x - xs) / dir_x
        l_minus = (x_poca - half * dir2_x - xs) / dir_x
        z_plus = zs + dir_z * l_plus
        z_minus = zs + dir_z * l_minus
        return z_poca, min(z_minus, z_plus), max(z_minus, z_plus)
    return 0.0, 0.0, 0.0


@njit(**JIT)
def impact_tolerance(sigma_t, pitch):
    """Max xy distance (cm) of a segment from the pad centre to induce: 2 max(5 sqrt2 sigma_T, p sqrt2 / 2)."""
    return max(math.sqrt((5 * sigma_t) ** 2 + (5 * sigma_t) ** 2), math.sqrt(pitch ** 2 + pitch ** 2) / 2) * 2


@njit(**JIT)
def line_point_at_z(start, direction, z):
    """(x, y) of the segment's line at drift coordinate z (NaN for a segment parallel to the anode; Q)."""
    l = (z - start[2]) / direction[2]
    return start[0] + l * direction[0], start[1] + l * direction[1]


@njit(**JIT)
def step_sign(v):
    return 1.0 if v >= 0 else -1.0


# ----------------------------------------------------------------------------------------- one pair signal ---
@njit(**JIT)
def pair_signal(out, seg_start, seg_end, sigma_t, sigma_l, n_e, t_start_us, z_anode, x_p, y_p, pitch, vdrift,
                t_sampling, time_padding, n_points, single):
    """Current (C/us) induced by one segment on one pixel at ticks T0 + k dt, k < len(out), written into ``out``
    (float32-rounded when ``single``). Returns the number n of leading ticks that can be non-zero: only
    out[:n] is written."""
    n_ticks = out.shape[0]
    if seg_start[2] < seg_end[2]:
        a_pt, b_pt = seg_start, seg_end
    else:
        a_pt, b_pt = seg_end, seg_start
    seg = (f32(b_pt[0] - a_pt[0], single), f32(b_pt[1] - a_pt[1], single), f32(b_pt[2] - a_pt[2], single))
    length = norm3(seg[0], seg[1], seg[2], single, single)
    direction = (f32(seg[0] / length, single), f32(seg[1] / length, single), f32(seg[2] / length, single))
    tolerance = impact_tolerance(sigma_t, pitch)
    z_poca, z_lo, z_hi = z_interval(a_pt, b_pt, x_p, y_p, tolerance, single)
    if z_poca == 0:
        return 0
    z_first = z_lo - 4 * sigma_l
    z_last = z_hi + 4 * sigma_l
    x_lo, y_lo = line_point_at_z(a_pt, direction, z_lo)
    x_hi, y_hi = line_point_at_z(a_pt, direction, z_hi)
    y_step = (abs(y_hi - y_lo) + 8 * sigma_t) / (n_points - 1)
    x_step = (abs(x_hi - x_lo) + 8 * sigma_t) / (n_points - 1)
    n_z = max(n_points, int(math.ceil(abs(z_last - z_first) / Z_SAMPLING_CM)))
    z_step = (z_last - z_first) / (n_z - 1)
    if math.isnan(x_step) or math.isnan(y_step) or math.isnan(z_step) or math.isnan(x_lo) or math.isnan(y_lo):
        for k in range(n_ticks):
            out[k] = np.nan
        return n_ticks
    t0_tick = first_tick_time(t_start_us, t_sampling, time_padding)
    half_pitch = pitch / 2
    sign_x = step_sign(direction[0])
    sign_y = step_sign(direction[1])
    volume = abs(x_step) * abs(y_step) * abs(z_step)

    # charge density, hoisted per axis (same sums, same order as the closed form)
    sx, sy, sz = sigma_t, sigma_t, sigma_l
    ux, uy, uz = direction  # equal to the density's own direction cosines (same float32 ops)
    a_coef = (f32(ux * ux, single) / (2 * sx * sx) + f32(uy * uy, single) / (2 * sy * sy)
              + f32(uz * uz, single) / (2 * sz * sz))
    factor = n_e / length / (f32(f32(sx * sy, single) * sz, single) * math.sqrt(8 * math.pi * math.pi * math.pi))
    if factor == 0:
        return 0
    log_factor = math.log(factor)
    sqrt_a_2 = 2 * math.sqrt(a_coef)
    two_a_len = 2 * a_coef * length
    log_int_max = math.log(2 * math.sqrt(math.pi) / sqrt_a_2)
    # skip a point when even its density upper bound exp(gauss + log_int_max) induces a negligible current
    log_skip = _EXP_UNDERFLOW
    if volume > 0 and math.isfinite(volume):
        log_skip = max(log_skip, math.log(NEGLIGIBLE_CURRENT * _MIN_TAU_US / (volume * E_CHARGE)))
    ssx, ssy, ssz = f32(sx * sx, single), f32(sy * sy, single), f32(sz * sz, single)

    xs_in = np.empty(n_points)
    xd_in = np.empty(n_points)
    bx_in = np.empty(n_points)
    dx_in = np.empty(n_points)
    nx = 0
    for ix in range(n_points):
        x = x_lo + sign_x * mad(ix, x_step, -4 * sigma_t, single)
        x_dist = abs(x_p - x)
        if x_dist > half_pitch:
            continue
        rx = x - a_pt[0]
        xs_in[nx] = x
        xd_in[nx] = x_dist
        bx_in[nx] = rx / ssx * ux
        dx_in[nx] = rx * rx / (2 * sx * sx)
        nx += 1
    yd_in = np.empty(n_points)
    by_in = np.empty(n_points)
    dy_in = np.empty(n_points)
    ny = 0
    for iy in range(n_points):
        y = y_lo + sign_y * mad(iy, y_step, -4 * sigma_t, single)
        y_dist = abs(y_p - y)
        if y_dist > half_pitch:
            continue
        ry = y - a_pt[1]
        yd_in[ny] = y_dist
        by_in[ny] = ry / ssy * uy
        dy_in[ny] = ry * ry / (2 * sy * sy)
        ny += 1
    if nx == 0 or ny == 0:
        return 0
    t0_z = np.empty(n_z)
    bz = np.empty(n_z)
    dz = np.empty(n_z)
    for iz in range(n_z):
        z = mad(iz, z_step, z_first, single)
        t0_z[iz] = (abs(z - z_anode) - 0.5) / vdrift
        rz = z - a_pt[2]
        bz[iz] = rz / ssz * uz
        dz[iz] = rz * rz / (2 * sz * sz)

    # Ticks that can see current: up to the latest arrival (|z - z_anode| is largest at an end of the grid; the
    # pad delay is <= 4.032 us). Beyond it larnd-sim's current is exactly zero.
    t0_far = (max(abs(z_first - z_anode), abs(z_last - z_anode)) - 0.5) / vdrift
    n_ticks = min(n_ticks, max(1, int(math.ceil((t0_far + MAX_DELAY_US - t0_tick) / t_sampling)) + 2))
    # tick times exactly as larnd-sim forms them
    tick_t = np.empty(n_ticks)
    for k in range(n_ticks):
        tick_t[k] = t0_tick + k * t_sampling
    acc = np.zeros(n_ticks)
    buck_b = np.zeros(n_ticks)
    buck_c = np.zeros(n_ticks)
    k_last = -1
    for jx in range(nx):
        xd = xd_in[jx]
        for jy in range(ny):
            yd = yd_in[jy]
            amp = min(pad_polynomial(AMPLITUDE_A, xd, yd), 1.0)
            tau_b = pad_polynomial(TAU_B_US, xd, yd)
            tau_c = pad_polynomial(TAU_C_US, xd, yd)
            k_hi = -1
            for iz in range(n_z):
                b = -(bx_in[jx] + by_in[jy] + bz[iz])
                delta = dx_in[jx] + dy_in[jy] + dz[iz]
                gauss = b * b / (4 * a_coef) - delta + log_factor
                if gauss + log_int_max < log_skip:
                    continue
                integral = math.sqrt(math.pi) * (-math.erf(b / sqrt_a_2) + math.erf((b + two_a_len) / sqrt_a_2)) \
                    / sqrt_a_2
                if integral == 0:
                    continue
                rho = math.exp(gauss + math.log(integral))
                charge = rho * volume
                if charge == 0:
                    continue
                t_s = arrival_time(t0_z[iz], xd, yd)
                if not t_s > tick_t[0]:
                    continue  # arrives before the first tick: no current at any tick
                # bucket: the last tick strictly before the arrival (clamped to the window's last tick)
                k = int(math.ceil((t_s - tick_t[0]) / t_sampling)) - 1
                if k >= n_ticks:
                    k = n_ticks - 1
                if k < 0:
                    k = 0
                while k + 1 < n_ticks and tick_t[k + 1] < t_s:
                    k += 1
                while k > 0 and not tick_t[k] < t_s:
                    k -= 1
                buck_b[k] += charge * math.exp(-((-tick_t[k] + t_s) / tau_b))
                buck_c[k] += charge * math.exp(-((-tick_t[k] + t_s) / tau_c))
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
                acc[k] += (amp * (run_b / tau_b) + (1 - amp) * (run_c / tau_c)) * E_CHARGE
            if k_hi > k_last:
                k_last = k_hi
    for k in range(k_last + 1):
        out[k] = f32(acc[k], single)
    return k_last + 1


@njit(parallel=True, **JIT)
def pair_signals(seg_index, pix_xy, x_start, y_start, z_start, x_end, y_end, z_end, sigma_t, sigma_l, n_e,
                 t_start, z_anode, pitch, vdrift, t_sampling, time_padding, n_points, n_ticks, single):
    """Signals (n_pairs, n_ticks) of all (segment, pixel-centre) pairs, in parallel over pairs."""
    n = seg_index.shape[0]
    out = np.empty((n, n_ticks))   # row r is valid up to n_live[r]
    n_live = np.zeros(n, np.int64)
    for r in prange(n):
        s = seg_index[r]
        n_live[r] = pair_signal(out[r], (np.float64(x_start[s]), np.float64(y_start[s]), np.float64(z_start[s])),
                                (np.float64(x_end[s]), np.float64(y_end[s]), np.float64(z_end[s])),
                                np.float64(sigma_t[s]), np.float64(sigma_l[s]), np.float64(n_e[s]),
                                np.float64(t_start[s]), z_anode[s], pix_xy[r, 0], pix_xy[r, 1], pitch, vdrift,
                                t_sampling, time_padding, n_points, single)
    return out, n_live


@njit(**JIT)
def accumulate_waveforms(waveforms, signals, n_live, pair_row, pair_seg, start_tick):
    """waveform[row, start_tick[seg] + k] += signal[pair, k] (float64 sums, pairs in list order)."""
    for r in range(signals.shape[0]):
        row = pair_row[r]
        t0 = start_tick[pair_seg[r]]
        for k in range(min(n_live[r], waveforms.shape[1] - t0)):
            waveforms[row, t0 + k] += signals[r, k]
