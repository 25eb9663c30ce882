"""Closed forms of one conversion cycle of the expected-noise front end (:mod:`larnd_diff.sim.expected_noise`).

Elementwise functions of EagerPy tensors (and the numpy quadrature grid): the baseline nodes, logs of normal
intervals, the ADC count probabilities and moments of a conversion, the trigger tick moments in a flat tail.
Shared by the cycle kernels (:mod:`larnd_diff.sim.expected_noise_cycles`), the Markov chain
(:mod:`larnd_diff.sim.expected_noise_chain`) and the likelihood; imports none of them.
"""
from __future__ import annotations

import math

import eagerpy as ep
import numpy as np

from larnd_diff import ops

#: Default number of baseline nodes. A uniform grid (trapezoid rule in the Gaussian weight) converges
#: exponentially for these integrands, Gauss-Hermite does not: the survival over thousands of flat ticks is a
#: step in R about 140 e- wide (tail hit probability of a 5 ke pixel: 10 % off with 16 Gauss-Hermite nodes,
#: 1e-4 with 48 uniform ones). On a realistic batch, 40 nodes: log-likelihood within 1.6e-4 per row of 160
#: nodes, its derivative with respect to the charge scale within 5e-7 (32 nodes: 1.3e-3, 1.1e-4;
#: benchmarks/results/noise_model_accuracy.json).
NOISE_NODES = 40
#: Half-width of the node grid in baseline sigmas.
NODE_HALF_WIDTH = 6.0
#: ADC counts summed exactly around the converted charge's mean (+-7.5 conversion sigmas; the rest < 1e-13).
ADC_WINDOW = 9


def baseline_nodes(n_nodes: int = NOISE_NODES, half_width: float = NODE_HALF_WIDTH):
    """Standard-normal quadrature: nodes x_j uniform on [-half_width, half_width] and log weights
    proportional to exp(-x^2/2), normalised to sum 1 (numpy float64). A baseline R ~ N(0, sigma^2) is integrated
    as sum_j w_j f(sigma x_j)."""
    if n_nodes < 2:
        raise ValueError("n_nodes must be at least 2")
    x = np.linspace(-half_width, half_width, int(n_nodes))
    log_w = -0.5 * x * x
    log_w -= np.log(np.sum(np.exp(log_w - log_w.max()))) + log_w.max()
    return x, log_w


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, accurate for x near 0 and for x << 0 (x clipped to <= -1e-30: finite)."""
    x = ep.minimum(x, -1e-30)
    near = x > -math.log(2.0)
    x_near = ep.where(near, x, -1.0)
    x_far = ep.where(near, -1.0, x)
    t = ep.tanh(0.5 * x_near)                     # expm1(x) = 2 t / (1 - t): no cancellation for small |x|
    return ep.where(near, ep.log(-2.0 * t / (1.0 - t)), ep.log1p(-ep.exp(x_far)))


def log_normal_interval(lo, hi):
    """log(Phi(hi) - Phi(lo)) for lo < hi (standardised bounds), accurate in both tails: intervals above the
    median are mirrored below it, where the two CDF values are not both close to 1."""
    upper = (lo + hi) > 0
    lo_m = ep.where(upper, -hi, lo)
    hi_m = ep.where(upper, -lo, hi)
    log_hi = ops.log_ndtr(hi_m)
    return log_hi + log1mexp(ops.log_ndtr(lo_m) - log_hi)


def adc_scale(electronics):
    """(counts per electron, counts at zero charge) of larnd-sim's digitisation: x = alpha V + beta."""
    e = electronics
    alpha = e.gain_mv_per_e * e.adc_counts / (e.v_ref_mv - e.v_cm_mv)
    beta = (e.v_pedestal_mv - e.v_cm_mv) * e.adc_counts / (e.v_ref_mv - e.v_cm_mv)
    return alpha, beta


def adc_count_bounds_e(adc: np.ndarray, electronics):
    """Charge interval (e-) of a stored sample that digitises to each count (numpy): [lo, hi) with
    lo = max(threshold, V(count - 1/2)) and hi = V(count + 1/2) (+inf at the 256 cap); NaN for counts no stored
    sample can have (below digitize(threshold), above the cap, not integers)."""
    e = electronics
    alpha, beta = adc_scale(e)
    adc = np.asarray(adc, np.float64)
    lo = np.maximum((adc - 0.5 - beta) / alpha, e.threshold_e)
    hi = np.where(adc >= e.adc_counts, np.inf, (adc + 0.5 - beta) / alpha)
    valid = np.isfinite(adc) & (adc == np.round(adc)) & (adc <= e.adc_counts) & (hi > lo)
    return np.where(valid, lo, np.nan), np.where(valid, hi, np.nan)


def log_adc_count_probability(mean_e, lo_e, hi_e, sigma_e: float):
    """log P(lo <= V < hi) for V ~ N(mean, sigma^2): the probability that a conversion of mean ``mean_e`` is
    stored with the count whose charge interval is [lo_e, hi_e) (:func:`adc_count_bounds_e`; hi may be huge)."""
    return log_normal_interval((lo_e - mean_e) / sigma_e, (hi_e - mean_e) / sigma_e)


def adc_moments(mean_e, electronics, sigma_e: float, orders: int = 2, n_terms: int = ADC_WINDOW):
    """Moments of the stored ADC count of a conversion V ~ N(mean, sigma^2) (elementwise):
    (p_store, p_fail, [E[(ADC - ref)^k 1{stored}] for k = 1 .. orders], ref) about a local reference count
    ``ref`` (no gradient), exact up to < 1e-12. For a stored sample ADC = 81 + sum_{a=82}^{256} 1{x >= a - 1/2}
    (x = alpha V + beta), so E[(ADC - ref)^k 1{stored}] = (81 - ref)^k P(stored) + sum_a ((a - ref)^k -
    (a - 1 - ref)^k) P(x >= a - 1/2); the ``n_terms`` counts around the mean are summed explicitly, those below
    have probability 1 and those above 0 to that precision."""
    e = electronics
    alpha, beta = adc_scale(e)
    s = alpha * sigma_e
    lowest = math.floor(alpha * e.threshold_e + beta) + 2          # 82: first count above the threshold's count
    mu = alpha * mean_e + beta
    a0 = ep.clip(ops.ceil(ops.stop_gradient(mu) + 0.5 - 7.5 * s), float(lowest), float(e.adc_counts + 1 - n_terms))
    ref = a0 - 1.0
    p_fail = _ndtr((e.threshold_e - mean_e) / sigma_e)
    p_store = _ndtr((mean_e - e.threshold_e) / sigma_e)
    below = a0 - lowest
    # counts below the window (probability 1) with the threshold's: (81 - ref)^k (p_store - 1)
    moments = [(-1.0) ** (k + 1) * below ** k * p_fail for k in range(1, orders + 1)]
    for i in range(n_terms):
        p = _ndtr((mu - (a0 + (i - 0.5))) / s)
        moments = [m + float((i + 1) ** k - i ** k) * p for k, m in zip(range(1, orders + 1), moments)]
    return p_store, p_fail, moments, ref


def tail_trigger_tick_moments(log_survival, n_ticks):
    """Mean and variance of the tick offset m of a trigger in a flat tail of ``n_ticks`` ticks with per-tick
    survival exp(log_survival), given a trigger there: P(m) ~ p^m (1 - p), m = 0 .. n - 1 (truncated
    geometric). With lambda = -log p: mean = h(lambda) - n h(n lambda), var = v(lambda) - n^2 v(n lambda),
    h(x) = 1/(e^x - 1) - 1/x, v(x) = 1/(4 sinh^2(x/2)) - 1/x^2 (series below x = 0.1; uniform at lambda = 0)."""
    lam = -log_survival
    n = n_ticks
    return _h(lam) - n * _h(n * lam), _v(lam) - n * n * _v(n * lam)


def _h(x):
    small = x < 0.1
    xs = ep.where(small, x, 0.1)
    xl = ep.where(small, 0.1, x)
    series = -0.5 + xs / 12.0 - xs ** 3 / 720.0 + xs ** 5 / 30240.0
    em = ep.exp(-xl)
    return ep.where(small, series, em / (1.0 - em) - 1.0 / xl)


def _v(x):
    small = x < 0.1
    xs = ep.where(small, x, 0.1)
    xl = ep.where(small, 0.1, x)
    series = -1.0 / 12.0 + xs ** 2 / 240.0 - xs ** 4 / 6048.0
    em = ep.exp(-xl)
    return ep.where(small, series, em / (1.0 - em) ** 2 - 1.0 / (xl * xl))


def _ndtr(x):
    return 0.5 * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def logsumexp(x, axis):
    """log(sum(exp(x))) along ``axis`` (the maximum is a constant for the gradient: exact)."""
    m = ops.stop_gradient(ep.max(x, axis=axis, keepdims=True))
    return ep.log(ep.sum(ep.exp(x - m), axis=axis)) + ep.squeeze(m, axis=axis)
