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
"""
from __future__ import annotations

import math

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a hard dependency of the package
    numba = None

#: Per-row float inputs of the kernels, in column order of ``rowf``.
#: Gaussian exponent coefficients q0 + q1 k + q2 k^2 of z sample k; erf arguments u0 + u1 k and u_len;
#: coef = charge normalisation (electrons per tick per unit current, 0 on padded rows); h_z (cm) the z step;
#: z_an (cm) the anode relative to the first z sample; vdrift (cm/us); delay (us) of the current template;
#: tau_fast, tau_slow (us) its time constants and amp the fast fraction.
ROW_FIELDS = ("q0", "q1", "q2", "u0", "u1", "u_len", "coef", "h_z", "z_an", "vdrift", "delay", "tau_fast",
              "tau_slow", "amp")
Q0, Q1, Q2, U0, U1, ULEN, COEF, HZ, ZAN, VD, DELAY, TF, TS, AMP = range(len(ROW_FIELDS))
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def available() -> bool:
    return numba is not None


if numba is not None:
    @njit(cache=True, inline="always")
    def _sigmoid(z):
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    @njit(cache=True, inline="always")
    def _onset(y, e_y, x_sy, after, sharpness):
        """(soft - hard, its derivative in y) of the relaxed onset at y = (t_s - T_n)/tau, given
        e_y = e^{-y} and x_sy = e^{-s y}; ``after``: tick n past the hard bucket (no hard term there)."""
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

    @njit(cache=True, inline="always")
    def _next_exp(x, step, sy):
        """e^{-s y} after a tick by multiplication; recomputed (capped at e^700) when that leaves the safe range."""
        x = x * step
        if x < 1e-250 or x > 1e250:
            x = math.exp(min(-sy, 700.0))
        return x

    @njit(cache=True, inline="always")
    def _entry(f, k):
        """Charge weight w, arrival time t_s (us) and the weight's parts (gauss, erf sum, u) of z sample k."""
        kk = float(k)
        gauss = math.exp(-(f[Q0] + kk * (f[Q1] + kk * f[Q2])))
        u = f[U0] + kk * f[U1]
        erfs = math.erf(f[ULEN] - u) + math.erf(u)
        w = f[COEF] * gauss * erfs
        t_s = (abs(kk * f[HZ] - f[ZAN]) - 0.5) / f[VD] + f[DELAY]
        return w, t_s, gauss, erfs, u

    @njit(cache=True, parallel=True)
    def _forward(rowf, pair, n_z, n_win, t0, row_start, width, dt, sharpness, k_fast, k_slow):
        n_pairs = row_start.size - 1
        out = np.zeros((n_pairs, width))
        smooth = sharpness > 0
        for p in prange(n_pairs):
            dep_f = np.zeros(width)
            dep_s = np.zeros(width)
            wave = out[p]
            for r in range(row_start[p], row_start[p + 1]):
                f = rowf[r]
                if f[COEF] == 0.0:
                    continue
                tau_f, tau_s, amp = f[TF], f[TS], f[AMP]
                top = -1
                for k in range(n_z[r]):
                    w, t_s, _, _, _ = _entry(f, k)
                    m_raw = int(math.ceil((t_s - t0[r]) / dt)) - 1
                    if m_raw < 0:
                        continue
                    m = min(m_raw, n_win[r] - 1)
                    lag = t_s - (t0[r] + m * dt)
                    dep_f[m] += w * amp / tau_f * math.exp(-lag / tau_f)
                    dep_s[m] += w * (1.0 - amp) / tau_s * math.exp(-lag / tau_s)
                    top = max(top, m)
                    if smooth:
                        for c in range(2):
                            tau = tau_f if c == 0 else tau_s
                            base = w * (amp if c == 0 else 1.0 - amp) / tau
                            k_side = k_fast if c == 0 else k_slow
                            # walk the ticks n = m_raw - k_side + 1 ... m_raw + k_side with y falling by dt/tau:
                            # e^{-y} and e^{-s y} by multiplication instead of two exps per tick
                            y = (t_s - (t0[r] + (m_raw - k_side + 1) * dt)) / tau
                            e_y, x_sy = math.exp(-y), math.exp(min(-sharpness * y, 700.0))
                            step_e, step_x = math.exp(dt / tau), math.exp(sharpness * dt / tau)
                            for d in range(-k_side + 1, k_side + 1):
                                n = m_raw + d
                                if 0 <= n < n_win[r]:
                                    diff, _ = _onset(y, e_y, x_sy, d > 0, sharpness)
                                    wave[n] += base * diff
                                y -= dt / tau
                                e_y *= step_e
                                x_sy = _next_exp(x_sy, step_x, sharpness * y)
                rho_f, rho_s = math.exp(-dt / tau_f), math.exp(-dt / tau_s)
                acc_f, acc_s = 0.0, 0.0
                for n in range(top, -1, -1):
                    acc_f = dep_f[n] + rho_f * acc_f
                    acc_s = dep_s[n] + rho_s * acc_s
                    dep_f[n] = 0.0
                    dep_s[n] = 0.0
                    wave[n] += acc_f + acc_s
        return out

    @njit(cache=True, parallel=True)
    def _backward(rowf, pair, n_z, n_win, t0, row_start, width, dt, sharpness, k_fast, k_slow, g_wave):
        """d loss / d rowf for the cotangent ``g_wave`` (n_pairs, width) of :func:`_forward`'s output.

        Per row and exponential (decay rho = e^{-dt/tau}): an entry with bucket m and prefactor P e^{-lag/tau}
        feeds ticks n <= m with P e^{-(t_s - T_n)/tau}, so d/dP needs H(m) = sum_{n<=m} G_n rho^(m-n) and d/dtau
        also K(m) = sum_{n<=m} G_n (m-n) rho^(m-n): forward recurrences H(m) = G_m + rho H(m-1),
        K(m) = rho (K(m-1) + H(m-1)).
        """
        n_pairs = row_start.size - 1
        grad = np.zeros(rowf.shape)
        smooth = sharpness > 0
        for p in prange(n_pairs):
            h_f = np.zeros(width)
            h_s = np.zeros(width)
            k_f = np.zeros(width)
            k_s = np.zeros(width)
            gw = g_wave[p]
            for r in range(row_start[p], row_start[p + 1]):
                f = rowf[r]
                if f[COEF] == 0.0:
                    continue
                tau_f, tau_s, amp = f[TF], f[TS], f[AMP]
                rho_f, rho_s = math.exp(-dt / tau_f), math.exp(-dt / tau_s)
                top = min(width, n_win[r])
                hf = hs = kf = ks = 0.0
                for n in range(top):
                    kf = rho_f * (kf + hf)
                    ks = rho_s * (ks + hs)
                    hf = gw[n] + rho_f * hf
                    hs = gw[n] + rho_s * hs
                    h_f[n], h_s[n], k_f[n], k_s[n] = hf, hs, kf, ks
                d_tf = d_ts = d_amp = 0.0
                d_coef = d_q0 = d_q1 = d_q2 = d_u0 = d_u1 = d_ulen = 0.0
                d_hz = d_zan = d_vd = d_delay = 0.0
                for k in range(n_z[r]):
                    w, t_s, gauss, erfs, u = _entry(f, k)
                    m_raw = int(math.ceil((t_s - t0[r]) / dt)) - 1
                    if m_raw < 0:
                        continue
                    m = min(m_raw, n_win[r] - 1)
                    lag = t_s - (t0[r] + m * dt)
                    dw = 0.0
                    dt_s = 0.0
                    for c in range(2):
                        tau = tau_f if c == 0 else tau_s
                        frac = amp if c == 0 else 1.0 - amp
                        hh = h_f[m] if c == 0 else h_s[m]
                        kh = k_f[m] if c == 0 else k_s[m]
                        e = math.exp(-lag / tau)
                        big_p = w * frac / tau
                        d_p = e * hh                          # d loss / d P
                        d_tau = -big_p / tau * d_p + big_p * e * (lag * hh + dt * kh) / (tau * tau)
                        dt_s += -big_p * e * hh / tau
                        dw += frac / tau * d_p
                        d_frac = w / tau * d_p
                        if smooth:
                            k_side = k_fast if c == 0 else k_slow
                            base = w * frac / tau
                            y = (t_s - (t0[r] + (m_raw - k_side + 1) * dt)) / tau
                            e_y, x_sy = math.exp(-y), math.exp(min(-sharpness * y, 700.0))
                            step_e, step_x = math.exp(dt / tau), math.exp(sharpness * dt / tau)
                            for d in range(-k_side + 1, k_side + 1):
                                n = m_raw + d
                                if 0 <= n < n_win[r]:
                                    diff, d_diff = _onset(y, e_y, x_sy, d > 0, sharpness)
                                    gn = gw[n]
                                    d_base = gn * diff
                                    d_y = gn * base * d_diff
                                    dt_s += d_y / tau
                                    d_tau += -d_y * y / tau - d_base * base / tau
                                    dw += d_base * frac / tau
                                    d_frac += d_base * w / tau
                                y -= dt / tau
                                e_y *= step_e
                                x_sy = _next_exp(x_sy, step_x, sharpness * y)
                        if c == 0:
                            d_tf += d_tau
                            d_amp += d_frac
                        else:
                            d_ts += d_tau
                            d_amp -= d_frac
                    kk = float(k)
                    d_coef += dw * gauss * erfs
                    dq = -dw * w
                    d_q0 += dq
                    d_q1 += kk * dq
                    d_q2 += kk * kk * dq
                    de = dw * f[COEF] * gauss
                    e_hi = _TWO_OVER_SQRT_PI * math.exp(-(f[ULEN] - u) ** 2)
                    du = de * (_TWO_OVER_SQRT_PI * math.exp(-u * u) - e_hi)
                    d_ulen += de * e_hi
                    d_u0 += du
                    d_u1 += kk * du
                    arg = kk * f[HZ] - f[ZAN]
                    sgn = 1.0 if arg > 0 else (-1.0 if arg < 0 else 0.0)
                    d_delay += dt_s
                    d_hz += dt_s * sgn * kk / f[VD]
                    d_zan -= dt_s * sgn / f[VD]
                    d_vd -= dt_s * (abs(arg) - 0.5) / (f[VD] * f[VD])
                gr = grad[r]
                gr[Q0], gr[Q1], gr[Q2], gr[U0], gr[U1], gr[ULEN] = d_q0, d_q1, d_q2, d_u0, d_u1, d_ulen
                gr[COEF], gr[HZ], gr[ZAN], gr[VD], gr[DELAY] = d_coef, d_hz, d_zan, d_vd, d_delay
                gr[TF], gr[TS], gr[AMP] = d_tf, d_ts, d_amp
        return grad


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


__all__ = ["ROW_FIELDS", "RowLayout", "available", "forward", "backward"]
