"""Fused CPU kernels (Numba) for the hot loop of the induced current: rows x z samples x ticks.

:func:`larnd_diff.sim.induce.block_waveforms` evaluates, for every in-pad sample row of a (segment, pixel) pair,
the charge weight and arrival time of each z sample, deposits them on the tick axis and solves the
exponential-decay recurrence of the current template. Written with EagerPy tensors, that is a dozen passes over
(row, z) and (row, tick) arrays: memory-bound, and on a CPU some 20x slower than the Numba reference doing the
same arithmetic in registers. Here the same arithmetic runs as one Numba loop nest per pair, and the reverse-mode
derivative is a second hand-written loop nest (adjoint recurrences over ticks), so nothing of size rows x ticks
is ever stored: the backward pass needs only the per-row inputs.

Interface (see :func:`row_waveforms`): per-row float inputs stacked as ``rowf`` (R, len(ROW_FIELDS)), in
``ROW_FIELDS`` order; host integers per row (pair, n_z, n_win) and the evaluation start t0 per row (us, no
gradient); rows of one pair contiguous, real rows first. Output: induced charge per tick (electrons) on each
pair's window, (n_pairs, width). Arithmetic in float64 whatever the input dtype.

The EagerPy implementation stays the portable one (GPU, any backend) and the oracle these kernels are tested
against (tests/test_sim_fused.py): same values to rounding, same gradients.

The row inputs themselves can be formed here too (:func:`expand_rows`, the arithmetic of
``induce.expand_rows`` with a hand-written vector-Jacobian product): :func:`charge_forward` /
:func:`charge_backward` take the per-pair inputs (``induce.PAIR_FIELDS``) of every pair of an event batch, expand
the rows, evaluate the waveforms and add them onto the output rows' tick axis in one host call, so that the
framework's graph holds per-pair values only (a few thousand numbers instead of ~15 per row of ~10^5 rows).
"""
from __future__ import annotations

import math
import types

import numpy as np

from larnd_diff.sim.induce import (MIN_TIME_CONSTANT_US, PAIR_FIELDS, TEMPLATE_A, TEMPLATE_B, TEMPLATE_C,
                                   TEMPLATE_DELAY)

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a hard dependency of the package
    numba = None
    prange = range

#: Per-row float inputs of the kernels, in column order of ``rowf``.
#: Gaussian exponent coefficients q0 + q1 k + q2 k^2 of z sample k; erf arguments u0 + u1 k and u_len;
#: coef = charge normalisation (electrons per tick per unit current, 0 on padded rows); h_z (cm) the z step;
#: z_an (cm) the anode relative to the first z sample; vdrift (cm/us); delay (us) of the current template;
#: tau_fast, tau_slow (us) its time constants and amp the fast fraction.
ROW_FIELDS = ("q0", "q1", "q2", "u0", "u1", "u_len", "coef", "h_z", "z_an", "vdrift", "delay", "tau_fast",
              "tau_slow", "amp")
Q0, Q1, Q2, U0, U1, ULEN, COEF, HZ, ZAN, VD, DELAY, TF, TS, AMP = range(len(ROW_FIELDS))
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
#: LLVM fast-math flags of the CPU forward/backward kernels: contraction to FMA, reciprocal multiplication, no
#: signed zeros.
FAST_MATH = frozenset({"contract", "arcp", "nsz"})


def available() -> bool:
    return numba is not None


# ---------------------------------------------------------------------------------------------- scalar physics
# Plain Python, compiled twice: for the CPU kernels below (numba.njit) and for the CUDA kernels of
# larnd_diff.sim.fused_cuda (numba.cuda.jit(device=True)), see :func:`compile_scalars`.
#: A z sample (or a whole row) whose induced charge, summed over every tick, is provably below this many
#: electrons is skipped (value and gradient): some 40 % of the in-pad rows of a muon sample lie so many
#: sigma from the track. The largest possible total omission per pixel (~1e-9 e) is 12 orders of magnitude
#: below one ADC count (~700 e) and below the float64 rounding of any waveform that reaches the threshold.
NEGLIGIBLE_ELECTRONS = 1e-12
#: The relaxed onset is evaluated on the ticks where sigmoid(s y) differs from the hard step by more than
#: e^-16 = 1e-7 of the z sample's own current (a 10 ke waveform moves by < 1e-3 e; one ADC count is ~700 e).
ONSET_TOLERANCE = 16.0


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
    at the sample's bucket m (see ``_backward``); gw: the cotangent of the pair's waveform (ticks), read by the
    smooth onset's ticks.
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
# The per-row inputs from the per-pair ones (induce.expand_rows, same arithmetic in the same order: the same
# values), and its vector-Jacobian product. Column indices of ``pairf`` (induce.PAIR_FIELDS):
(P_X0, P_SX, P_Y0, P_SY, P_XP, P_YP, P_AX, P_AY, P_UX, P_UY, P_UZ, P_WT, P_WL, P_TWO_A, P_RZ0, P_RZ0_UZ_WL,
 P_E1X, P_E1Y, P_E1Z, P_SQRT_A, P_NORM, P_Q2, P_U1, P_ULEN, P_HZ, P_ZAN, P_VD) = range(len(PAIR_FIELDS))
#: Row fields copied from the pair: (row column, pair column).
PASSED_ON = ((Q2, P_Q2), (U1, P_U1), (ULEN, P_ULEN), (HZ, P_HZ), (ZAN, P_ZAN), (VD, P_VD))


def polynomial(c, x, y):
    """c0 + c1 x + c2 y + c3 x y + c4 x^2 + c5 y^2 (induce.template_polynomial)."""
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


def polynomial_slopes(c, x, y):
    """(d/dx, d/dy) of :func:`polynomial`."""
    return c[1] + c[3] * y + 2.0 * c[4] * x, c[2] + c[3] * x + 2.0 * c[5] * y


def clip_slope(value, bound, upper):
    """Derivative of min(value, bound) (``upper``) or max(value, bound) in value: 1 inside, 1/2 at the tie (as
    the frameworks' minimum / maximum), 0 outside."""
    if value == bound:
        return 0.5
    return 1.0 if (value < bound) == upper else 0.0


def sign(x):
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


def expand_row(p, i, j, valid, out):
    """Row inputs (ROW_FIELDS) of the in-pad sample (i, j) of the pair with inputs ``p`` into ``out``."""
    x_i = p[P_X0] + i * p[P_SX]
    y_j = p[P_Y0] + j * p[P_SY]
    dx, dy = abs(p[P_XP] - x_i), abs(p[P_YP] - y_j)
    out[AMP] = min(polynomial(TEMPLATE_A, dx, dy), 1.0)
    out[TF] = max(polynomial(TEMPLATE_B, dx, dy), MIN_TIME_CONSTANT_US)
    out[TS] = max(polynomial(TEMPLATE_C, dx, dy), MIN_TIME_CONSTANT_US)
    out[DELAY] = polynomial(TEMPLATE_DELAY, dx, dy)
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
    acc[P_NORM] += g[COEF] * valid
    # forward values
    x_i = p[P_X0] + i * p[P_SX]
    y_j = p[P_Y0] + j * p[P_SY]
    ddx, ddy = p[P_XP] - x_i, p[P_YP] - y_j
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
        coefs = TEMPLATE_A if c == 0 else (TEMPLATE_B if c == 1 else (TEMPLATE_C if c == 2 else TEMPLATE_DELAY))
        value = polynomial(coefs, dx, dy)
        if c == 0:
            g_value = g[AMP] * clip_slope(value, 1.0, True)
        elif c == 1:
            g_value = g[TF] * clip_slope(value, MIN_TIME_CONSTANT_US, False)
        elif c == 2:
            g_value = g[TS] * clip_slope(value, MIN_TIME_CONSTANT_US, False)
        else:
            g_value = g[DELAY]
        sx, sy = polynomial_slopes(coefs, dx, dy)
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
_NO_ONSET = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

SCALARS = (arrival, gauss_floor, row_negligible, entry, bucket, onset_window, onset_constants, onset, next_exp,
           entry_gradient, onset_deposits, polynomial, polynomial_slopes, clip_slope, sign, expand_row,
           expand_row_gradient)


def compile_scalars(decorate, extra=None) -> dict:
    """The functions of :data:`SCALARS` compiled with ``decorate`` (e.g. numba.njit), calling each other's
    compiled versions: a namespace (dict) to rebind kernels into with :func:`rebind`."""
    namespace = dict(globals())
    namespace.update(extra or {})
    for fn in SCALARS:
        namespace[fn.__name__] = decorate(rebind(fn, namespace))
    return namespace


def rebind(fn, namespace):
    """``fn`` with its global names looked up in ``namespace`` (so numba compiles calls to the right target)."""
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


def add(arr, i, j, value):
    """arr[i, j] += value (the CPU binding; the CUDA kernels bind an atomic add under this name)."""
    arr[i, j] += value


def cotangent(gw, n):
    """gw[n], the cotangent of window tick n (the CPU binding; the CUDA kernels bind a read that is 0 past the
    event's last tick)."""
    return gw[n]


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
            oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else _NO_ONSET
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
            oc = onset_constants(f, dt, sharpness, k_fast, k_slow) if sharpness > 0 else _NO_ONSET
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
    _inline = njit(inline="always", cache=True)
    _CPU = compile_scalars(_inline, extra={"add": _inline(add), "cotangent": _inline(cotangent)})
    # The hot loops may fuse multiply-adds and multiply by reciprocals (a few ulp per operation, float64): ~20 %
    # less time for forward + gradient on 2 cores. No flag that assumes away NaN or inf: both must propagate.
    _fast = njit(inline="always", cache=True, fastmath=set(FAST_MATH))
    _HOT = compile_scalars(_fast, extra={"add": _fast(add), "cotangent": _fast(cotangent)})
    _forward = njit(parallel=True, cache=True, fastmath=set(FAST_MATH))(rebind(_forward, _HOT))
    _backward = njit(parallel=True, cache=True, fastmath=set(FAST_MATH))(rebind(_backward, _HOT))
    # a few flops per row or tick: serial (waking the worker threads would cost more)
    _place = njit(cache=True)(_place)
    _pick = njit(cache=True)(_pick)
    _expand_rows = njit(cache=True)(rebind(_expand_rows, _CPU))
    _expand_rows_backward = njit(cache=True)(rebind(_expand_rows_backward, _CPU))


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
#: Host integers per pair of :func:`charge_forward`, columns of ``table``: first in-pad sample (ix0, iy0) and the
#: nx x ny samples from there (the pair's rows), z samples, window ticks, output row and its tick of window tick 0.
PAIR_TABLE = ("ix0", "iy0", "nx", "ny", "n_z", "n_win", "out_row", "placement")
T_IX0, T_IY0, T_NX, T_NY, T_NZ, T_NWIN, T_ROW, T_PLACE = range(len(PAIR_TABLE))


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
