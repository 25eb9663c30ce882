"""The reference's kernel arithmetic, written once as plain-Python scalar functions and compiled twice
(:mod:`larnd_diff.retarget`): by ``numba.njit`` for the CPU kernels (:mod:`.induce`, :mod:`.electronics`) and by
``numba.cuda.jit(device=True)`` for the CUDA kernels (:mod:`.cuda_kernels`). Only the drivers differ (parallel
loops, thread indexing, scratch memory, launches).

Induced current of one (segment, pixel) pair (:func:`pair_current`): the charge density of the diffused
segment (:func:`charge_density`) is sampled on larnd-sim's Riemann grid (30 x 30 x N_z points of a box around the
piece of segment that passes near the pad) and folded with the two-exponential current template
(:mod:`larnd_diff.response`) at the 0.1 us ticks. Two implementation notes:

* The density does not depend on time, so it is evaluated once per grid point (larnd-sim re-evaluates it for
  every tick). Points whose density upper bound gives a current below ``NEGLIGIBLE_CURRENT`` (1e-60 C/us, far
  below the smallest float32 subnormal of the stored signal) or underflows to zero are skipped.
* For one (x, y) grid column the template is A exp(-(t_s(z) - t)/B)/B + (1 - A) exp(-(t_s(z) - t)/C)/C for
  t < t_s(z). Summed over z this is evaluated backwards in time with a decaying running sum per exponential
  (S_k = S_{k+1} exp(-dt/tau) + charge arriving during (T_k, T_{k+1}]), i.e. O(N_z + ticks) per column instead of
  O(N_z x ticks). Only factors <= 1 multiply the running sums, so the recursion is stable; it agrees with the
  direct sum to ~1e-15 relative (the summation order differs from larnd-sim's, far below the float32 storage of
  the per-pair signal). Ticks after the last arrival are exactly zero and are not visited.

Precision: every quantity is held in a float64 variable. With ``single=True`` the quantities larnd-sim
computes in float32 are rounded to float32 (:func:`f32`: the correctly rounded float32 result of the same +, -, *,
/ or sqrt), and the multiply-adds the GPU compiler contracts into FMAs where that changes the result are evaluated
with one rounding (``fma``; LLVM's rule fadd(fmul(a, b), c) -> fma(a, b, c), the first operand's product first): the
xy intercept, the float32 segment lengths sqrt(fma(c, c, fma(a, a, b*b))), and the float64 grid coordinates
fma(i, step, -4 sigma) / fma(k, z_step, z_first). With them the per-pixel currents of the captured test_inputs
events agree with the GPU to <= 5e-9 of the row maximum (most rows bit-identical). ``single=False`` computes
everything in float64 without contractions.

``fma_rn`` (a*b + c with one rounding) and ``normal_f32`` (a float32 normal draw of a row's xoroshiro128+ stream)
are the CPU versions here; the CUDA kernels bind the hardware ``fma.rn.f64`` and numba-cuda's generator. There the
compiler also contracts other float64 ``a*b + c`` on its own (NVVM's default), which the CPU does not: the only
intended difference between the two builds (``tests/test_reference_cuda.py``). ``larger``/``smaller`` are
numba's builtin max/min on the CPU (``b if b > a else a``), spelled out because the CUDA target lowers the
builtins to fmax/fmin, which treat NaN differently.

Units: lengths cm, times us, currents C/us, charges C (electrons only where named ``*_e``).
"""
from __future__ import annotations

import math

from numba import float32, float64

from ..response import AMPLITUDE_A, DELAY_US, MAX_DELAY_US, MIN_TAU_US, TAU_B_US, TAU_C_US, pad_polynomial
from .numerics import fma_rn
from .rng import normal_f32

#: Electron charge in C (larnd-sim consts.e_charge).
E_CHARGE = 1.602e-19
#: z sampling target of the Riemann grid in cm (written as t_sampling/2 in larnd-sim, used as a length).
Z_SAMPLING_CM = 0.1 / 2.0
#: Grid points whose density bound gives a current below this (C/us) are skipped: 1e15 times below the smallest
#: float32 subnormal of larnd-sim's per-pair signal store, so they cannot change any stored value.
NEGLIGIBLE_CURRENT = 1e-60
# exp(x) == 0.0 in float64 for x below this (the smallest subnormal is exp(-745.13)).
_EXP_UNDERFLOW = -746.0
#: sqrt(8 pi^3), the Gaussian normalisation of the charge density, and sqrt(pi).
_SQRT_8_PI3 = math.sqrt(8 * math.pi * math.pi * math.pi)
_SQRT_PI = math.sqrt(math.pi)
#: Rows of the in-pad column scratch of :func:`pair_current` (x then y: offset from the pad centre, the b and
#: delta terms of the density), each as long as the grid (larnd-sim's sampled_points, 30).
IN_PAD_TERMS = 6
X_DIST, X_B, X_DELTA, Y_DIST, Y_B, Y_DELTA = range(IN_PAD_TERMS)


# ------------------------------------------------------------------------------------------- float helpers ---
def f32(x, single):
    """x rounded to float32 (held as float64) when ``single``; x unchanged otherwise."""
    if single:
        return float64(float32(x))
    return x


def mad(a, b, c, fma):
    """float64 a*b + c, with one rounding (the GPU compiler's contraction) when ``fma``."""
    if fma:
        return fma_rn(float64(a), float64(b), float64(c))
    return a * b + c


def mad32(a, b, c, single, fma):
    """float32 a*b + c of float32-valued inputs: with one rounding when ``fma``, else product and sum each
    rounded (plain float64 a*b + c when not ``single``)."""
    if fma:
        return f32(fma_rn(float64(a), float64(b), float64(c)), single)
    return f32(f32(a * b, single) + c, single)


def norm3(a, b, c, single):
    """sqrt(a^2 + b^2 + c^2) of a float32 vector as the GPU forms it, fma(c, c, fma(a, a, b*b)) (plain float64
    when not ``single``)."""
    sq = mad32(c, c, mad32(a, a, f32(b * b, single), single, single), single, single)
    return f32(math.sqrt(sq), single)


def norm2(a, b, single):
    """sqrt(a^2 + b^2) of a float32 vector as fma(a, a, b*b)."""
    return f32(math.sqrt(mad32(a, a, f32(b * b, single), single, single)), single)


def unit_vector(dx, dy, dz, single):
    """(length, ux, uy, uz) of the float32 vector (dx, dy, dz)."""
    length = norm3(dx, dy, dz, single)
    return length, f32(dx / length, single), f32(dy / length, single), f32(dz / length, single)


def larger(a, b):
    """max(a, b) as numba's builtin evaluates it on the CPU (b if b > a else a)."""
    return b if b > a else a


def smaller(a, b):
    """min(a, b) as numba's builtin evaluates it on the CPU (b if b < a else a)."""
    return b if b < a else a


def step_sign(v):
    return 1.0 if v >= 0 else -1.0


# ------------------------------------------------------------------------------------------ current model ---
def arrival_time(t0_us, x, y):
    """t_s = t0 + delay(x, y) (us) for a landing (x, y) cm from the pad centre, summed left to right from t0 as
    larnd-sim does: the delay polynomial with t0 added to its constant term first."""
    c = DELAY_US
    return pad_polynomial((t0_us + c[0], c[1], c[2], c[3], c[4], c[5]), x, y)


def truncated_exponential(t, t_s, tau):
    """exp(-(t_s - t)/tau)/tau for t < t_s, else 0 (per us; integrates to 1 over t)."""
    y = (-t + t_s) / tau
    if y > 0:
        return math.exp(-y) / tau
    return 0.0


def current_model(t, t0, x, y):
    """Induced-current fraction per us at time t for charge reaching the virtual plane at t0, landing (x, y) cm
    from the pad centre (|x|, |y| <= p/2). The kernels fold it into running sums (:func:`column_current`)."""
    a = smaller(pad_polynomial(AMPLITUDE_A, x, y), 1.0)
    b = pad_polynomial(TAU_B_US, x, y)
    c = pad_polynomial(TAU_C_US, x, y)
    t_s = arrival_time(t0, x, y)
    return a * truncated_exponential(t, t_s, b) + (1 - a) * truncated_exponential(t, t_s, c)


# ----------------------------------------------------------------------------------------- charge density ---
def density_a(ux, uy, uz, sx, sy, sz, single):
    """a = sum_i u_i^2 / (2 sigma_i^2) (cm^-2) of the closed form (:func:`charge_density`), u_i^2 in float32."""
    return (f32(ux * ux, single) / (2 * sx * sx) + f32(uy * uy, single) / (2 * sy * sy)
            + f32(uz * uz, single) / (2 * sz * sz))


def density_norm(q, length, sx, sy, sz, single):
    """F = Q / (L sigma_x sigma_y sigma_z sqrt(8 pi^3)) (electrons / cm^4), the product of sigmas in float32."""
    return q / length / (f32(f32(sx * sy, single) * sz, single) * _SQRT_8_PI3)


def line_integral(b, sqrt_a_2, two_a_len):
    """I = sqrt(pi) [erf((b + 2 a L) / (2 sqrt a)) - erf(b / (2 sqrt a))] / (2 sqrt a) (cm)."""
    return _SQRT_PI * (-math.erf(b / sqrt_a_2) + math.erf((b + two_a_len) / sqrt_a_2)) / sqrt_a_2


def charge_density(x, y, z, q, start, segment, sigmas, single):
    """Electrons per cm^3 at (x, y, z) of q electrons spread uniformly on the segment start -> start + segment
    and diffused by an axis-aligned Gaussian of widths ``sigmas`` (cm). Closed form (the kernels
    hoist its parts out of the grid loops: :func:`pair_current`)."""
    sx, sy, sz = sigmas
    length, ux, uy, uz = unit_vector(segment[0], segment[1], segment[2], single)
    a = density_a(ux, uy, uz, sx, sy, sz, single)
    factor = density_norm(q, length, sx, sy, sz, single)
    rx, ry, rz = x - start[0], y - start[1], z - start[2]
    b = -(rx / f32(sx * sx, single) * ux + ry / f32(sy * sy, single) * uy + rz / f32(sz * sz, single) * uz)
    delta = rx * rx / (2 * sx * sx) + ry * ry / (2 * sy * sy) + rz * rz / (2 * sz * sz)
    integral = line_integral(b, 2 * math.sqrt(a), 2 * a * length)
    if factor != 0 and integral != 0:
        return math.exp(b * b / (4 * a) - delta + math.log(factor) + math.log(integral))
    return 0.0


# ------------------------------------------------------------------------------------------------ geometry ---
def impact_tolerance(sigma_t, pitch):
    """Largest xy distance (cm) of the segment from the pad centre that still induces:
    2 max(5 sqrt2 sigma_T, p sqrt2 / 2)."""
    a = 5 * sigma_t
    return larger(math.sqrt(a * a + a * a), math.sqrt(pitch * pitch + pitch * pitch) / 2) * 2


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
    q = f32(mad32(xe, ys, -f32(xs * ye, single), single, single) / ddx, single)
    mq = f32(m * q, single)
    mm1 = f32(m * m, single) + 1.0
    x_poca = (-(-x_p - m * y_p) - mq) / mm1
    _, dir_x, _, dir_z = unit_vector(ddx, ddy, ddz, single)
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


def line_point_at_z(start, ux, uy, uz, z):
    """(x, y) of the segment's line at drift coordinate z (NaN for a segment parallel to the anode; Q)."""
    l = (z - start[2]) / uz
    return start[0] + l * ux, start[1] + l * uy


def in_pad_samples(terms, first, lo, step, sign, centre, start, u, sigma, sigma_sq, half_pitch, n_points,
                   single):
    """The grid's samples along one axis (x or y) that fall on the pad, in order: their distance from the pad
    centre and their b and delta terms of the density, into terms[first], terms[first + 1], terms[first + 2].
    Returns how many there are (samples exactly on the pad edge count)."""
    n = 0
    for i in range(n_points):
        x = lo + sign * mad(i, step, -4 * sigma, single)
        dist = abs(centre - x)
        if dist > half_pitch:
            continue
        r = x - start
        terms[first, n] = dist
        terms[first + 1, n] = r / sigma_sq * u
        terms[first + 2, n] = r * r / (2 * sigma * sigma)
        n += 1
    return n


# ----------------------------------------------------------------------------------- one (segment, pixel) ---
def sample_charge(b, delta, density):
    """Charge (electrons) of one grid point, rho dV, from its b and delta terms and the pair's ``density``
    constants (a, ln F, 2 sqrt a, 2 a L, the log of the integral's bound, the skip level, dV); 0 for a point
    whose density bound is negligible (:data:`NEGLIGIBLE_CURRENT`) or whose density underflows."""
    a_coef, log_factor, sqrt_a_2, two_a_len, log_int_max, log_skip, volume = density
    gauss = b * b / (4 * a_coef) - delta + log_factor
    if gauss + log_int_max < log_skip:
        return 0.0
    integral = line_integral(b, sqrt_a_2, two_a_len)
    if integral == 0:
        return 0.0
    return math.exp(gauss + math.log(integral)) * volume


def tick_before(t_s, t0_tick, t_sampling, n_ticks):
    """The last tick k (of 0..n_ticks-1, at t0_tick + k dt) strictly before the arrival t_s, clamped to the
    window's last tick; t_s must be after tick 0."""
    k = int(math.ceil((t_s - t0_tick) / t_sampling)) - 1
    if k >= n_ticks:
        k = n_ticks - 1
    if k < 0:
        k = 0
    while k + 1 < n_ticks and t0_tick + (k + 1) * t_sampling < t_s:
        k += 1
    while k > 0 and not t0_tick + k * t_sampling < t_s:
        k -= 1
    return k


def column_current(out, buck_b, buck_c, k_hi, amp, tau_b, tau_c, t_sampling):
    """Add the current (C/us) of one (x, y) column to out[:k_hi + 1] from its charge deposits per tick (buck_b,
    buck_c: the charge arriving in each tick's interval, discounted to the tick by each exponential), by the
    running sums backwards in time; the deposits are cleared."""
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


def pair_current(out, buck_b, buck_c, terms, seg_start, seg_end, sigma_t, sigma_l, n_e, t0_tick, z_anode, x_p,
                 y_p, pitch, vdrift, t_sampling, n_points, single):
    """Current (C/us) induced by one segment on the pad centred at (x_p, y_p) at ticks t0_tick + k dt, into
    ``out`` (float32-rounded when ``single``). Returns n, the number of leading ticks that can be non-zero: only
    out[:n] is written. Scratch: ``buck_b``, ``buck_c`` as long as ``out`` (any content), ``terms``
    (IN_PAD_TERMS, >= n_points). t0_tick: the segment's evaluation start (:func:`.induce.first_tick_time`)."""
    n_ticks = out.shape[0]
    if seg_start[2] < seg_end[2]:
        a_pt, b_pt = seg_start, seg_end
    else:
        a_pt, b_pt = seg_end, seg_start
    length, ux, uy, uz = unit_vector(f32(b_pt[0] - a_pt[0], single), f32(b_pt[1] - a_pt[1], single),
                                     f32(b_pt[2] - a_pt[2], single), single)
    tolerance = impact_tolerance(sigma_t, pitch)
    z_poca, z_lo, z_hi = z_interval(a_pt, b_pt, x_p, y_p, tolerance, single)
    if z_poca == 0:
        return 0

    # sampling grid: a box of n_points x n_points x n_z samples around the piece of line near the pad
    z_first = z_lo - 4 * sigma_l
    z_last = z_hi + 4 * sigma_l
    x_lo, y_lo = line_point_at_z(a_pt, ux, uy, uz, z_lo)
    x_hi, y_hi = line_point_at_z(a_pt, ux, uy, uz, z_hi)
    y_step = (abs(y_hi - y_lo) + 8 * sigma_t) / (n_points - 1)
    x_step = (abs(x_hi - x_lo) + 8 * sigma_t) / (n_points - 1)
    n_z = larger(n_points, int(math.ceil(abs(z_last - z_first) / Z_SAMPLING_CM)))
    z_step = (z_last - z_first) / (n_z - 1)
    if math.isnan(x_step) or math.isnan(y_step) or math.isnan(z_step) or math.isnan(x_lo) or math.isnan(y_lo):
        for k in range(n_ticks):
            out[k] = math.nan
        return n_ticks
    volume = abs(x_step) * abs(y_step) * abs(z_step)

    # charge density, hoisted per axis (same sums, same order as the closed form of charge_density)
    sz = sigma_l
    a_coef = density_a(ux, uy, uz, sigma_t, sigma_t, sz, single)
    factor = density_norm(n_e, length, sigma_t, sigma_t, sz, single)
    if factor == 0:
        return 0
    sqrt_a_2 = 2 * math.sqrt(a_coef)
    log_int_max = math.log(2 * _SQRT_PI / sqrt_a_2)
    # skip a point when even its density upper bound exp(gauss + log_int_max) induces a negligible current
    log_skip = _EXP_UNDERFLOW
    if volume > 0 and math.isfinite(volume):
        log_skip = larger(log_skip, math.log(NEGLIGIBLE_CURRENT * MIN_TAU_US / (volume * E_CHARGE)))
    density = (a_coef, math.log(factor), sqrt_a_2, 2 * a_coef * length, log_int_max, log_skip, volume)
    ss_t = f32(sigma_t * sigma_t, single)
    ss_z = f32(sz * sz, single)
    half_pitch = pitch / 2
    nx = in_pad_samples(terms, X_DIST, x_lo, x_step, step_sign(ux), x_p, a_pt[0], ux, sigma_t, ss_t, half_pitch,
                        n_points, single)
    ny = in_pad_samples(terms, Y_DIST, y_lo, y_step, step_sign(uy), y_p, a_pt[1], uy, sigma_t, ss_t, half_pitch,
                        n_points, single)
    if nx == 0 or ny == 0:
        return 0

    # Ticks that can see current: up to the latest arrival (|z - z_anode| is largest at an end of the grid; the
    # pad delay is <= MAX_DELAY_US). Beyond it larnd-sim's current is exactly zero.
    t0_far = (larger(abs(z_first - z_anode), abs(z_last - z_anode)) - 0.5) / vdrift
    n_ticks = smaller(n_ticks, larger(1, int(math.ceil((t0_far + MAX_DELAY_US - t0_tick) / t_sampling)) + 2))
    for k in range(n_ticks):
        out[k] = 0.0
        buck_b[k] = 0.0
        buck_c[k] = 0.0
    k_last = -1
    for jx in range(nx):
        xd = terms[X_DIST, jx]
        for jy in range(ny):
            yd = terms[Y_DIST, jy]
            amp = smaller(pad_polynomial(AMPLITUDE_A, xd, yd), 1.0)
            tau_b = pad_polynomial(TAU_B_US, xd, yd)
            tau_c = pad_polynomial(TAU_C_US, xd, yd)
            k_hi = -1
            for iz in range(n_z):
                z = mad(iz, z_step, z_first, single)
                rz = z - a_pt[2]
                b = -(terms[X_B, jx] + terms[Y_B, jy] + rz / ss_z * uz)
                delta = terms[X_DELTA, jx] + terms[Y_DELTA, jy] + rz * rz / (2 * sz * sz)
                charge = sample_charge(b, delta, density)
                if charge == 0:
                    continue
                t_s = arrival_time((abs(z - z_anode) - 0.5) / vdrift, xd, yd)
                if not t_s > t0_tick:
                    continue  # arrives before the first tick: no current at any tick
                k = tick_before(t_s, t0_tick, t_sampling, n_ticks)
                t_k = t0_tick + k * t_sampling
                buck_b[k] += charge * math.exp(-((-t_k + t_s) / tau_b))
                buck_c[k] += charge * math.exp(-((-t_k + t_s) / tau_c))
                k_hi = larger(k_hi, k)
            if k_hi >= 0:
                column_current(out, buck_b, buck_c, k_hi, amp, tau_b, tau_c, t_sampling)
                k_last = larger(k_last, k_hi)
    for k in range(k_last + 1):
        out[k] = f32(out[k], single)
    return k_last + 1


# ------------------------------------------------------------------------------------------------ front end ---
def noise_charge(state, row, sigma_e, noisy):
    """One float32 normal draw of the row's stream times sigma electrons, in C (0, and no draw, when not
    ``noisy``)."""
    if noisy:
        return float64(normal_f32(state, row)) * sigma_e * E_CHARGE
    return 0.0


def tick_charge(waveform, i, t_sampling):
    """Charge (C) of tick i: current x dt, zero past the stored ticks."""
    if i < waveform.shape[0]:
        return waveform[i] * t_sampling
    return 0.0


def pixel_triggers(waveform, n_ticks, t_sampling, threshold_c, interval, max_samples, reset_e, uncorr_e, state, row,
                   noisy, charges, ticks):
    """LArPix front end of one pixel: discriminate and integrate the waveform (C/us per tick) of
    ``n_ticks`` ticks, zero beyond len(waveform). Fills ``charges`` (C) and ``ticks`` (trigger tick indices) and
    returns the number of samples.

    The trigger tick is integrated twice (once before the comparison, once in the hold window; Q); after a stored
    sample two ticks are dead and the integrator restarts with reset noise; after a failed conversion one tick is
    skipped and it restarts with uncorrelated noise only.
    """
    n_stored = waveform.shape[0]
    k = 0
    q_sum = noise_charge(state, row, reset_e, noisy)
    i = 0
    while i < n_ticks:
        if i >= n_stored and not noisy:
            break   # q_sum < threshold here and no more charge: nothing can trigger (noise draws need every tick)
        q_sum += tick_charge(waveform, i, t_sampling)
        q_noise = noise_charge(state, row, uncorr_e, noisy)
        if q_sum + q_noise >= threshold_c:
            trigger = i
            integrate_end = i + interval
            while i <= integrate_end and i < n_ticks:
                q_sum += tick_charge(waveform, i, t_sampling)
                i += 1
            converted = q_sum + noise_charge(state, row, uncorr_e, noisy)
            if converted < threshold_c:
                i += 1
                q_sum = noise_charge(state, row, uncorr_e, noisy)
                continue
            if k >= max_samples:
                break
            charges[k] = converted
            ticks[k] = trigger
            k += 1
            q_sum = noise_charge(state, row, reset_e, noisy)
            i += 2
        else:
            i += 1
    return k


SCALARS = (f32, mad, mad32, norm3, norm2, unit_vector, larger, smaller, step_sign, pad_polynomial, arrival_time,
           truncated_exponential, current_model, density_a, density_norm, line_integral, charge_density,
           impact_tolerance, z_interval, line_point_at_z, in_pad_samples, sample_charge, tick_before, column_current,
           pair_current, noise_charge, tick_charge, pixel_triggers)
