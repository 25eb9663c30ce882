"""The arithmetic of the fused induced-current kernels, written once as plain-Python scalar functions.

Compiled twice (:mod:`larnd_diff.retarget`): by ``numba.njit`` for the CPU kernels (:mod:`larnd_diff.sim.fused`)
and by ``numba.cuda.jit(device=True)`` for the CUDA kernels (:mod:`larnd_diff.sim.fused_cuda`), which differ only in
their drivers. One row is one in-pad sample (x_i, y_j) of a (segment, pixel) pair, its inputs ``f`` in
:data:`~larnd_diff.sim.induce_layout.ROW_FIELDS` order; its z samples k deposit charge on the pair's window ticks.

Per z sample: the charge weight and arrival time (:func:`entry`), its bucket tick (:func:`bucket`), the relaxed
onset's correction around the arrival (:func:`onset_deposits`) and the sample's share of the gradient
(:func:`entry_gradient`); per row: the row's inputs from its pair's (:func:`expand_row`, the arithmetic of
:func:`larnd_diff.sim.induce.expand_rows`) and the vector-Jacobian product of that (:func:`expand_row_gradient`).

``add`` and ``cotangent`` are the CPU versions of the two operations the targets do differently (a plain add and
a plain read here; an atomic add and a read that is 0 past the event's last tick on the GPU): not compiled with
:data:`SCALARS`, each target binds its own.
"""
from __future__ import annotations

import math

from larnd_diff.response import (AMPLITUDE_A, DELAY_US, MIN_TAU_US, TAU_B_US, TAU_C_US, pad_polynomial,
                                 pad_polynomial_slopes)
from larnd_diff.sim.induce_layout import (AMP, COEF, DELAY, HZ, ONSET_TOLERANCE, P_AX, P_AY, P_E1X, P_E1Y, P_E1Z,
                                          P_EDGE,
                                          P_HZ, P_NORM, P_Q2, P_RZ0, P_RZ0_UZ_WL, P_SQRT_A, P_SX, P_SY, P_TWO_A,
                                          P_U1, P_ULEN, P_UX, P_UY, P_UZ, P_VD, P_WL, P_WT, P_X0, P_XP, P_Y0, P_YP,
                                          P_ZAN, Q0, Q1, Q2, TF, TS, U0, U1, ULEN, VD, ZAN)

TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

#: A z sample (or a whole row) whose induced charge, summed over every tick, is provably below this many
#: electrons is skipped (value and gradient): some 40 % of the in-pad rows of a muon sample lie so many
#: sigma from the track. The largest possible total omission per pixel (~1e-9 e) is 12 orders of magnitude
#: below one ADC count (~700 e) and below the float64 rounding of any waveform that reaches the threshold.
NEGLIGIBLE_ELECTRONS = 1e-12


def arrival(f, k):
    """Arrival time t_s (us) of z sample k at the anode, current-template delay included."""
    return (abs(float(k) * f[HZ] - f[ZAN]) - 0.5) / f[VD] + f[DELAY]


def gauss_floor(f, dt):
    """Below this value of exp(-(q0 + q1 k + q2 k^2)) a z sample induces < NEGLIGIBLE_ELECTRONS in total: its
    weight is at most 2 |coef| gauss, and a unit weight induces at most sum_tau |frac| / (tau (1 - e^{-dt/tau}))
    over all ticks (doubled for the relaxed onset's tail)."""
    per_weight = 0.0
    for c in range(2):
        tau = f[TF] if c == 0 else f[TS]
        frac = f[AMP] if c == 0 else 1.0 - f[AMP]
        per_weight += abs(frac) / (tau * (1.0 - math.exp(-dt / tau)))
    return NEGLIGIBLE_ELECTRONS / (4.0 * abs(f[COEF]) * per_weight + 1e-300)


def row_negligible(f, n_z, floor):
    """True when every z sample of the row is below ``floor`` (minimum of the exponent's parabola over k)."""
    if f[COEF] == 0.0:
        return True
    q1, q2 = f[Q1], f[Q2]
    k = -q1 / (2.0 * q2) if q2 > 0 else (0.0 if q1 >= 0 else n_z - 1.0)
    k = min(max(k, 0.0), n_z - 1.0)
    return math.exp(-(f[Q0] + k * (q1 + k * q2))) * n_z < floor


def entry(f, k, floor):
    """(w, t_s, gauss, erf sum, u, live) of z sample k: charge weight, arrival time (us), the weight's parts,
    and whether it matters (gauss >= ``floor``; a negligible sample has w = 0 and no erf evaluated)."""
    kk = float(k)
    gauss = math.exp(-(f[Q0] + kk * (f[Q1] + kk * f[Q2])))
    u = f[U0] + kk * f[U1]
    t_s = arrival(f, k)
    if gauss < floor:
        return 0.0, t_s, gauss, 0.0, u, False
    erfs = math.erf(f[ULEN] - u) + math.erf(u)
    return f[COEF] * gauss * erfs, t_s, gauss, erfs, u, True


def bucket(t_s, t0, n_win, dt):
    """(m_raw, m): the last tick before the arrival t_s (-1 or less: arrives before the window) and that tick
    clamped to the window's last one."""
    m_raw = int(math.ceil((t_s - t0) / dt)) - 1
    return m_raw, min(m_raw, n_win - 1)


def onset_window(k_max, tau, sharpness, dt):
    """Ticks on each side of an arrival where the sigmoid onset differs from the hard stop by more than
    e^-ONSET_TOLERANCE of the sample's own current (at most the block's ``k_max``, sized for the largest tau)."""
    return min(k_max, int(math.ceil(ONSET_TOLERANCE * tau / (sharpness * dt))) + 1)


def onset_constants(f, dt, sharpness, k_fast, k_slow):
    """Per-row constants of the relaxed onset, for the fast then the slow exponential: (ticks on each side,
    e^{dt/tau}, e^{s dt/tau} (capped), e^{-(ticks - 1) dt/tau}) - computed once per row, not per z sample."""
    kf = onset_window(k_fast, f[TF], sharpness, dt)
    ks = onset_window(k_slow, f[TS], sharpness, dt)
    return (float(kf), math.exp(dt / f[TF]), math.exp(min(sharpness * dt / f[TF], 700.0)),
            math.exp(-(kf - 1) * dt / f[TF]),
            float(ks), math.exp(dt / f[TS]), math.exp(min(sharpness * dt / f[TS], 700.0)),
            math.exp(-(ks - 1) * dt / f[TS]))


def onset(y, e_y, x_sy, after, sharpness):
    """(soft - hard, its derivative in y) of the relaxed onset at y = (t_s - T_n)/tau, given e_y = e^{-y} and
    x_sy = e^{-s y}; ``after``: tick n past the hard bucket (no hard term there)."""
    sig = 1.0 / (1.0 + x_sy)
    dsig = sharpness * x_sy * sig * sig                   # d sigmoid(s y) / dy
    if y > -10.0:
        d_soft = dsig * e_y - sig * e_y
        diff = sig * e_y if after else -e_y * x_sy * sig   # sigmoid - 1 = -x / (1 + x)
    else:
        e10 = math.exp(10.0)
        d_soft = dsig * e10
        diff = sig * e10
    if after:
        return diff, d_soft
    return diff, d_soft + (e_y if y > 0.0 else 0.0)


def next_exp(x, step, sy):
    """e^{-s y} after a tick: x e^{s dt/tau} while both stay in the normal range, else recomputed (capped at
    e^700; a subnormal start or an overflowing step would carry its rounding into every later tick)."""
    if 1e-250 < x < 1e250:
        x = x * step
        if 1e-250 < x < 1e250:
            return x
    return math.exp(min(-sy, 700.0))


def entry_gradient(f, k, w, t_s, gauss, erfs, u, m_raw, m, t0, n_win, dt, sharpness, oc,
                   h_fast, k_fast_sum, h_slow, k_slow_sum, gw, acc):
    """Add the z sample k's share of d loss / d f (len(ROW_FIELDS)) to ``acc``.

    oc: the row's :func:`onset_constants`; h_*, k_*_sum: the adjoint recurrences H(m), K(m) of each exponential
    at the sample's bucket m (see :func:`larnd_diff.sim.fused._backward`); gw: the cotangent of the pair's
    waveform (ticks), read by the smooth onset's ticks.
    """
    dw = 0.0
    dt_s = 0.0
    for c in range(2):
        tau = f[TF] if c == 0 else f[TS]
        frac = f[AMP] if c == 0 else 1.0 - f[AMP]
        hh = h_fast if c == 0 else h_slow
        kh = k_fast_sum if c == 0 else k_slow_sum
        lag = t_s - (t0 + m * dt)
        e = math.exp(-lag / tau)
        big_p = w * frac / tau
        d_p = e * hh                                       # d loss / d P
        d_tau = -big_p / tau * d_p + big_p * e * (lag * hh + dt * kh) / (tau * tau)
        dt_s += -big_p * e * hh / tau
        dw += frac / tau * d_p
        d_frac = w / tau * d_p
        if sharpness > 0:
            k_side = int(oc[0] if c == 0 else oc[4])
            step_e, step_x, shift = (oc[1], oc[2], oc[3]) if c == 0 else (oc[5], oc[6], oc[7])
            lag_raw = t_s - (t0 + m_raw * dt)
            y = lag_raw / tau + (k_side - 1) * dt / tau
            e_y = (e if m == m_raw else math.exp(-lag_raw / tau)) * shift
            x_sy = math.exp(min(-sharpness * y, 700.0))
            for d in range(-k_side + 1, k_side + 1):
                n = m_raw + d
                if 0 <= n < n_win:
                    diff, d_diff = onset(y, e_y, x_sy, d > 0, sharpness)
                    gn = cotangent(gw, n)
                    d_base = gn * diff
                    d_y = gn * big_p * d_diff
                    dt_s += d_y / tau
                    d_tau += -d_y * y / tau - d_base * big_p / tau
                    dw += d_base * frac / tau
                    d_frac += d_base * w / tau
                y -= dt / tau
                e_y *= step_e
                x_sy = next_exp(x_sy, step_x, sharpness * y)
        acc[TF if c == 0 else TS] += d_tau
        acc[AMP] += d_frac if c == 0 else -d_frac
    kk = float(k)
    acc[COEF] += dw * gauss * erfs
    dq = -dw * w
    acc[Q0] += dq
    acc[Q1] += kk * dq
    acc[Q2] += kk * kk * dq
    de = dw * f[COEF] * gauss
    e_hi = TWO_OVER_SQRT_PI * math.exp(-(f[ULEN] - u) ** 2)
    du = de * (TWO_OVER_SQRT_PI * math.exp(-u * u) - e_hi)
    acc[ULEN] += de * e_hi
    acc[U0] += du
    acc[U1] += kk * du
    arg = kk * f[HZ] - f[ZAN]
    sgn = 1.0 if arg > 0 else (-1.0 if arg < 0 else 0.0)
    acc[DELAY] += dt_s
    acc[HZ] += dt_s * sgn * kk / f[VD]
    acc[ZAN] -= dt_s * sgn / f[VD]
    acc[VD] -= dt_s * (abs(arg) - 0.5) / (f[VD] * f[VD])


def onset_deposits(f, w, t_s, m_raw, t0, n_win, dt, sharpness, oc, wave, pair):
    """The relaxed onset's correction (soft - hard) of one z sample on the ticks around its arrival, added to
    wave[pair, n] with ``add`` of the compile target (a plain add on CPU, an atomic add on the GPU).
    oc: the row's :func:`onset_constants`."""
    lag_raw = t_s - (t0 + m_raw * dt)
    for c in range(2):
        tau = f[TF] if c == 0 else f[TS]
        base = w * (f[AMP] if c == 0 else 1.0 - f[AMP]) / tau
        k_side = int(oc[0] if c == 0 else oc[4])
        step_e, step_x, shift = (oc[1], oc[2], oc[3]) if c == 0 else (oc[5], oc[6], oc[7])
        # walk n = m_raw - k_side + 1 ... m_raw + k_side, y falling by dt/tau: e^{-y}, e^{-s y} by multiplication
        y = lag_raw / tau + (k_side - 1) * dt / tau
        e_y = math.exp(-lag_raw / tau) * shift
        x_sy = math.exp(min(-sharpness * y, 700.0))
        for d in range(-k_side + 1, k_side + 1):
            n = m_raw + d
            if 0 <= n < n_win:
                diff, _ = onset(y, e_y, x_sy, d > 0, sharpness)
                add(wave, pair, n, base * diff)
            y -= dt / tau
            e_y *= step_e
            x_sy = next_exp(x_sy, step_x, sharpness * y)


# ---------------------------------------------------------------------------------------------- row expansion
# The per-row inputs from the per-pair inputs (induce.expand_rows, same arithmetic in the same order: the same
# values), and its vector-Jacobian product. Column indices of ``pairf``: induce_layout.P_*.

#: Row fields copied from the pair: (row column, pair column).
PASSED_ON = ((Q2, P_Q2), (U1, P_U1), (ULEN, P_ULEN), (HZ, P_HZ), (ZAN, P_ZAN), (VD, P_VD))


def clip_slope(value, bound, upper):
    """Derivative of min(value, bound) (``upper``) or max(value, bound) in value: 1 inside, 1/2 at the tie (as
    the frameworks' minimum / maximum), 0 outside."""
    if value == bound:
        return 0.5
    return 1.0 if (value < bound) == upper else 0.0


def sign(x):
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


def pad_edge_weight(d, step, edge):
    """Share of the grid cell of width |step| centred ``d`` (cm) from the pixel centre that lies in the pad of
    half-width ``edge`` (cm): 1 inside, 0 outside, linear across the edge, so that the pad's sum over the sampling
    grid changes continuously when the grid moves; ``edge`` 0 = larnd-sim's hard selection (weight 1, the planner
    keeps only the samples inside)."""
    if edge <= 0.0:
        return 1.0
    return min(max((edge - abs(d)) / abs(step) + 0.5, 0.0), 1.0)


def pad_edge_slopes(d, step, edge):
    """(d w / d d, d w / d step) of :func:`pad_edge_weight` (0 where the weight is clamped)."""
    if edge <= 0.0:
        return 0.0, 0.0
    v = (edge - abs(d)) / abs(step) + 0.5
    if v <= 0.0 or v >= 1.0:
        return 0.0, 0.0
    return -sign(d) / abs(step), -(v - 0.5) * sign(step) / abs(step)


def expand_row(p, i, j, valid, out):
    """Row inputs (ROW_FIELDS) of the in-pad sample (i, j) of the pair with inputs ``p`` into ``out``."""
    x_i = p[P_X0] + i * p[P_SX]
    y_j = p[P_Y0] + j * p[P_SY]
    valid *= pad_edge_weight(p[P_XP] - x_i, p[P_SX], p[P_EDGE]) * pad_edge_weight(p[P_YP] - y_j, p[P_SY], p[P_EDGE])
    dx, dy = abs(p[P_XP] - x_i), abs(p[P_YP] - y_j)
    out[AMP] = min(pad_polynomial(AMPLITUDE_A, dx, dy), 1.0)
    out[TF] = max(pad_polynomial(TAU_B_US, dx, dy), MIN_TAU_US)
    out[TS] = max(pad_polynomial(TAU_C_US, dx, dy), MIN_TAU_US)
    out[DELAY] = pad_polynomial(DELAY_US, dx, dy)
    ux, uy, uz, w_t, w_l = p[P_UX], p[P_UY], p[P_UZ], p[P_WT], p[P_WL]
    rx, ry = x_i - p[P_AX], y_j - p[P_AY]
    s0 = (rx * ux * w_t + ry * uy * w_t + p[P_RZ0_UZ_WL]) / p[P_TWO_A]
    e0x, e0y, e0z = rx - s0 * ux, ry - s0 * uy, p[P_RZ0] - s0 * uz
    out[Q0] = (e0x * e0x + e0y * e0y) * w_t / 2 + e0z * e0z * w_l / 2
    out[Q1] = (e0x * p[P_E1X] + e0y * p[P_E1Y]) * w_t + e0z * p[P_E1Z] * w_l
    out[U0] = p[P_SQRT_A] * s0
    out[COEF] = p[P_NORM] * valid
    for rc, pc in PASSED_ON:
        out[rc] = p[pc]


def expand_row_gradient(p, i, j, valid, g, acc):
    """Add d loss / d p of one row to ``acc`` (len(PAIR_FIELDS)), given g = d loss / d row inputs."""
    for rc, pc in PASSED_ON:
        acc[pc] += g[rc]
    # forward values
    x_i = p[P_X0] + i * p[P_SX]
    y_j = p[P_Y0] + j * p[P_SY]
    ddx, ddy = p[P_XP] - x_i, p[P_YP] - y_j
    # coef = norm valid w_x w_y (pad-edge weights of the sample's distances to the pixel centre and the grid steps)
    w_x, w_y = pad_edge_weight(ddx, p[P_SX], p[P_EDGE]), pad_edge_weight(ddy, p[P_SY], p[P_EDGE])
    acc[P_NORM] += g[COEF] * valid * w_x * w_y
    g_w = g[COEF] * p[P_NORM] * valid
    if g_w != 0.0 and p[P_EDGE] > 0.0:
        wd_x, ws_x = pad_edge_slopes(ddx, p[P_SX], p[P_EDGE])
        wd_y, ws_y = pad_edge_slopes(ddy, p[P_SY], p[P_EDGE])
        g_ddx_w, g_ddy_w = g_w * w_y * wd_x, g_w * w_x * wd_y
        acc[P_XP] += g_ddx_w
        acc[P_YP] += g_ddy_w
        acc[P_X0] -= g_ddx_w
        acc[P_Y0] -= g_ddy_w
        acc[P_SX] += g_w * w_y * ws_x - g_ddx_w * i
        acc[P_SY] += g_w * w_x * ws_y - g_ddy_w * j
    dx, dy = abs(ddx), abs(ddy)
    ux, uy, uz, w_t, w_l = p[P_UX], p[P_UY], p[P_UZ], p[P_WT], p[P_WL]
    e1x, e1y, e1z = p[P_E1X], p[P_E1Y], p[P_E1Z]
    rx, ry = x_i - p[P_AX], y_j - p[P_AY]
    num = rx * ux * w_t + ry * uy * w_t + p[P_RZ0_UZ_WL]
    s0 = num / p[P_TWO_A]
    e0x, e0y, e0z = rx - s0 * ux, ry - s0 * uy, p[P_RZ0] - s0 * uz
    # u0 = sqrt(a) s0
    acc[P_SQRT_A] += g[U0] * s0
    g_s0 = g[U0] * p[P_SQRT_A]
    # q1 = (e0x e1x + e0y e1y) w_t + e0z e1z w_l
    gq1 = g[Q1]
    g_e0x, g_e0y, g_e0z = gq1 * e1x * w_t, gq1 * e1y * w_t, gq1 * e1z * w_l
    acc[P_E1X] += gq1 * e0x * w_t
    acc[P_E1Y] += gq1 * e0y * w_t
    acc[P_E1Z] += gq1 * e0z * w_l
    acc[P_WT] += gq1 * (e0x * e1x + e0y * e1y)
    acc[P_WL] += gq1 * e0z * e1z
    # q0 = (e0x^2 + e0y^2) w_t / 2 + e0z^2 w_l / 2
    gq0 = g[Q0]
    g_e0x += gq0 * e0x * w_t
    g_e0y += gq0 * e0y * w_t
    g_e0z += gq0 * e0z * w_l
    acc[P_WT] += gq0 * (e0x * e0x + e0y * e0y) / 2
    acc[P_WL] += gq0 * e0z * e0z / 2
    # e0 = r - s0 u
    acc[P_RZ0] += g_e0z
    g_s0 -= g_e0x * ux + g_e0y * uy + g_e0z * uz
    acc[P_UX] -= g_e0x * s0
    acc[P_UY] -= g_e0y * s0
    acc[P_UZ] -= g_e0z * s0
    g_rx, g_ry = g_e0x, g_e0y
    # s0 = (rx ux w_t + ry uy w_t + rz0 uz w_l) / 2a
    g_num = g_s0 / p[P_TWO_A]
    acc[P_TWO_A] -= g_num * s0
    g_rx += g_num * ux * w_t
    g_ry += g_num * uy * w_t
    acc[P_UX] += g_num * rx * w_t
    acc[P_UY] += g_num * ry * w_t
    acc[P_WT] += g_num * (rx * ux + ry * uy)
    acc[P_RZ0_UZ_WL] += g_num
    acc[P_AX] -= g_rx
    acc[P_AY] -= g_ry
    # current template at (|x_p - x_i|, |y_p - y_j|)
    g_dx, g_dy = 0.0, 0.0
    for c in range(4):
        coefs = AMPLITUDE_A if c == 0 else (TAU_B_US if c == 1 else (TAU_C_US if c == 2 else DELAY_US))
        value = pad_polynomial(coefs, dx, dy)
        if c == 0:
            g_value = g[AMP] * clip_slope(value, 1.0, True)
        elif c == 1:
            g_value = g[TF] * clip_slope(value, MIN_TAU_US, False)
        elif c == 2:
            g_value = g[TS] * clip_slope(value, MIN_TAU_US, False)
        else:
            g_value = g[DELAY]
        sx, sy = pad_polynomial_slopes(coefs, dx, dy)
        g_dx += g_value * sx
        g_dy += g_value * sy
    g_ddx, g_ddy = g_dx * sign(ddx), g_dy * sign(ddy)
    acc[P_XP] += g_ddx
    acc[P_YP] += g_ddy
    g_xi = g_rx - g_ddx
    g_yj = g_ry - g_ddy
    acc[P_X0] += g_xi
    acc[P_SX] += g_xi * i
    acc[P_Y0] += g_yj
    acc[P_SY] += g_yj * j


#: Placeholder onset constants of the hard preset (never read).
NO_ONSET = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

SCALARS = (arrival, gauss_floor, row_negligible, entry, bucket, onset_window, onset_constants, onset, next_exp,
           entry_gradient, onset_deposits, pad_polynomial, pad_polynomial_slopes, clip_slope, sign, pad_edge_weight,
           pad_edge_slopes, expand_row, expand_row_gradient)


def add(arr, i, j, value):
    """arr[i, j] += value (the CPU binding; the CUDA kernels bind an atomic add under this name)."""
    arr[i, j] += value


def cotangent(gw, n):
    """gw[n], the cotangent of window tick n (the CPU binding; the CUDA kernels bind a read that is 0 past the
    event's last tick)."""
    return gw[n]

