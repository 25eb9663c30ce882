"""Expected-noise LArPix front end: the reference's electronics noise (spec 4.5 steps 1-7) integrated analytically.

The reference front end draws, per pixel row, a reset baseline R (900 e- at the start and after a stored sample,
500 e- after a failed conversion), a fresh 500 e- discriminator term at every tick's comparison (never
accumulated) and a 500 e- term at each conversion. Instead of drawing them, this module returns the probability
of what the front end reads out, given the row's noiseless charge per tick:

* given the cycle's baseline R, the per-tick comparisons are independent, so the first trigger of a cycle that
  starts at tick s is at n with probability prod_{k=s}^{n-1} Phi(z_k) (1 - Phi(z_n)),
  z_k = (thr - R - (C_k - C_{s-1})) / 500 e-; R is integrated out by quadrature on a uniform grid of nodes
  (:func:`baseline_nodes`);
* given R and the trigger tick, the converted charge V is Gaussian (sd 500 e-) around
  R + C_{min(n+18, N-1)} - C_{s-1} + q_n (the trigger tick counted twice): the probability of each ADC count
  (round half to even, the 256 cap, V >= thr for a stored sample) is a difference of normal CDFs, and the
  failure probability and the ADC moments are closed forms (:func:`log_adc_count_probability`,
  :func:`adc_moments`);
* after the row's last charge the cumulative charge is flat until the last tick of the readout (6003 ticks in
  larnd-sim, far beyond the simulator's stored ticks): the survival over that tail is a power of one factor and
  the tail trigger's tick a truncated geometric distribution (:func:`tail_trigger_tick_moments`);
* cycles are independent given their restart tick and baseline type (renewal): :func:`readout_log_likelihood`
  factorises over observed samples, :func:`expected_readout` runs a Markov chain over restart ticks
  (:mod:`larnd_diff.sim.expected_noise_chain`).

Which ticks are evaluated one by one (and which count as a flat head or tail) is planned on the host from
detached values (:mod:`larnd_diff.sim.expected_noise_plan`); the arithmetic runs on the charge's backend with
EagerPy and :mod:`larnd_diff.ops` only (numpy, torch, jax, tensorflow; CPU or GPU; float64 or float32), smooth in
the charge by construction: no straight-through estimator, no rounding in the forward pass.

Written by hand: no maintained library computes the readout distribution of a self-triggering integrate-and-
reset front end with per-tick discriminator noise, and the generic tools (hidden Markov model or
sequential Monte Carlo libraries) would need the state discretised on a charge grid per tick, which is neither
exact nor differentiable in the charge.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import expected_noise_cycles as cyc
from larnd_diff.sim import expected_noise_plan as plan_mod

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
LOG_ZERO = cyc.LOG_ZERO


class ExpectedReadout(NamedTuple):
    """Expected readout per pixel row, each a tensor of the charge's backend and dtype.

    hit_probability   (n_rows,) probability of at least one stored sample
    n_samples_mean    (n_rows,) expected number of stored samples
    n_samples_var     (n_rows,) its variance
    filled            (n_rows, K) probability that sample slot k is filled
    adc_mean          (n_rows, K) mean ADC count of slot k given that it is filled (0 where its probability is
                      below 1e-100, 1e-15 in float32)
    adc_var           (n_rows, K) its variance
    time_mean         (n_rows, K) mean trigger time (us from the event start) given filled
    time_var          (n_rows, K) its variance (us^2)
    """

    hit_probability: ep.Tensor
    n_samples_mean: ep.Tensor
    n_samples_var: ep.Tensor
    filled: ep.Tensor
    adc_mean: ep.Tensor
    adc_var: ep.Tensor
    time_mean: ep.Tensor
    time_var: ep.Tensor


# ---------------------------------------------------------------------------------------------- small physics
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


# ---------------------------------------------------------------------------------------------- public API
def _prepare(charge_per_tick, detector, total_ticks, n_nodes):
    x = ep.astensor(charge_per_tick)
    if x.ndim != 2:
        raise ValueError(f"charge_per_tick must be (n_rows, n_ticks), got shape {x.shape}")
    n_total = int(detector.n_ticks_event if total_ticks is None else total_ticks)
    host = _host_value(x)
    win = plan_mod.row_windows(host, n_total)
    ch = cyc.charge_tensors(x, n_total, has_nan=bool(np.isnan(host).any()))
    nodes, log_w = baseline_nodes(n_nodes)
    dtype = ops.dtype_name(x)
    return x, host, win, ch, ops.asarray(x, nodes, dtype), ops.asarray(x, log_w, dtype)


def _host_value(x) -> np.ndarray:
    try:
        return np.asarray(ops.to_numpy(ops.stop_gradient(x)), np.float64)
    except Exception as err:  # abstract values (inside jax.jit / tf.function)
        raise ValueError("the expected-noise front end plans its ticks on the host: it needs concrete charge "
                         "values (call it outside jax.jit / tf.function)") from err


def readout_log_likelihood(charge_per_tick, detector, obs_tick, obs_adc, *, total_ticks=None,
                           n_nodes: int = NOISE_NODES, outlier_probability: float = 1e-6):
    """Log-likelihood of each pixel row's observed samples under the reference's electronics noise, (n_rows,).

    charge_per_tick      (n_rows, n_ticks) noiseless induced charge in electrons per 0.1 us tick (EagerPy or raw
                         framework tensor; the simulator's ``simulate(..., return_waveforms=True)`` output);
                         ticks past n_ticks up to ``total_ticks`` count as zero charge. NaN ticks count as 0.
    detector             :class:`larnd_diff.detector.Detector` (electronics constants).
    obs_tick             (n_rows, K) int trigger ticks of the observed samples in time order, -1 = empty slot
                         (time / ``detector.adc_tick_us``, rounded); a row without samples is a pixel without hits.
    obs_adc              (n_rows, K) observed ADC counts (integers as floats), NaN = empty.
    total_ticks          ticks the front end runs over (default ``detector.n_ticks_event`` = 6003).
    n_nodes              baseline quadrature nodes (:func:`baseline_nodes`).
    outlier_probability  eps of the mixture (1 - eps) L_model + eps L_outlier, L_outlier = prod over the row's
                         samples of 1 / (total_ticks x 176 counts) (1 for a row without samples): keeps rows the
                         model cannot explain (a hit where it has no charge, an impossible pattern) finite.

    The likelihood of a row is prod_k P(first stored sample of the cycle from s_k at tick n_k with count a_k)
    x P(no stored sample from s_{K+1} to the end), with s_1 = 0 and s_{k+1} = n_k + 21 (900 e- baseline after a
    stored sample): each factor sums over the baseline nodes the survival to n_k - 1, the trigger at n_k and
    the count's probability (the same node). Exact, except (sizes in benchmarks/results/noise_model_*.json):
    - a cycle that triggers and fails before an observed sample (500 e- restart) is not followed: the factor
      counts only the direct path. Such hidden failures occurred in none of 4.5e5 row-readouts of the
      reference front end on muons and on the Geant4 mixed sample (noise_model_validation.json);
    - in the last factor a failed conversion counts as the end of the readout (its restart is assumed to store
      nothing): exact wherever the charge after a failure cannot reach threshold; on a slow pulse (18 ke over
      150 ticks, a track along the drift) P(no sample) is 9.5e-4 instead of 7e-6 (noise_model_accuracy.json);
    - ticks before the row's cumulative charge reaches 1000 e- count as flat at that level, ticks after its
      last charge (within 1 e-) at its total (expected_noise_plan): <= 1.5e-4 per row in log L;
    - the baseline integral is a quadrature (:data:`NOISE_NODES`): <= 1.6e-4 per row with 40 nodes.
    Gradients with respect to the charge are finite everywhere (padding, empty rows, impossible patterns).
    """
    x, host, win, ch, nodes, log_w = _prepare(charge_per_tick, detector, total_ticks, n_nodes)
    dtype = ops.dtype_name(x)
    fee = detector.electronics
    window = fee.integration_ticks(detector.t_sampling)
    ticks = np.asarray(obs_tick if isinstance(obs_tick, np.ndarray) else ops.to_numpy(obs_tick))
    adc = np.asarray(obs_adc if isinstance(obs_adc, np.ndarray) else ops.to_numpy(obs_adc), np.float64)
    n_rows = host.shape[0]
    if ticks.ndim != 2 or ticks.shape[0] != n_rows or adc.shape != ticks.shape:
        raise ValueError(f"obs_tick and obs_adc must both be (n_rows={n_rows}, K); got {ticks.shape}, {adc.shape}")
    ticks = np.where(np.isfinite(adc), ticks, -1).astype(np.int64)
    cycles, possible = plan_mod.observed_cycles(win, ticks, fee.max_adc_values)
    n_obs = int(np.sum(cycles.trigger >= 0))
    obs_rows, obs_k = np.nonzero((ticks >= 0) & possible[:, None])
    lo_obs, hi_obs = adc_count_bounds_e(adc[obs_rows, obs_k], fee)
    possible[obs_rows[~np.isfinite(lo_obs)]] = False
    lo_obs = np.nan_to_num(lo_obs, nan=fee.threshold_e)
    hi_obs = np.minimum(np.nan_to_num(hi_obs, nan=fee.threshold_e + 1.0), 1e9)   # the cap's +inf: far enough

    reach = fee.threshold_e + NODE_HALF_WIDTH * fee.reset_noise_e + plan_mod.DEAD_SIGMAS * fee.uncorrelated_noise_e
    end_cycles = _cut_dead(plan_mod.Cycles(*(a[n_obs:] for a in cycles)), win, reach)
    g = cyc.Gather(ch)
    obs_host = cyc.observed_inputs(g, plan_mod.Cycles(*(a[:n_obs] for a in cycles)), win, lo_obs, hi_obs, fee,
                                   window)
    end_blocks = cyc.blocks(end_cycles, win, fee, like=x)
    end_host = [cyc.open_inputs(g, blk, window) for _, blk in end_blocks]
    values = g.values(x)
    consts = dict(thr=fee.threshold_e, sigma_d=fee.uncorrelated_noise_e)
    observed = cyc.compiled(cyc.observed_kernel, x, static=consts)
    pieces = [(np.arange(n_obs), observed(values, cyc.to_tensors(x, dtype, obs_host), nodes, log_w, **consts))]
    open_end = cyc.compiled(cyc.open_end_kernel, x, static=consts)
    for (idx, _), host_arrays in zip(end_blocks, end_host):
        pieces.append((idx + n_obs, open_end(values, cyc.to_tensors(x, dtype, host_arrays), nodes, log_w, **consts)))
    per_cycle = cyc.scatter_cycles(pieces, len(cycles.row), x)
    model = ops.segment_sum(per_cycle, ops.asarray(x, cycles.row, "int64"), n_rows)
    model = ep.where(ops.asarray(x, possible, "bool"), model, LOG_ZERO)
    if outlier_probability <= 0:
        return _like_input(model, charge_per_tick)
    counts = (ticks >= 0).sum(axis=1)
    log_outlier = -counts * math.log(float(win.n_total) * (fee.adc_counts - 80))
    a = model + math.log1p(-outlier_probability)
    b = ops.asarray(x, log_outlier + math.log(outlier_probability), dtype)
    top = ep.maximum(a, b)
    return _like_input(top + ep.log(ep.exp(a - top) + ep.exp(b - top)), charge_per_tick)


def expected_readout(charge_per_tick, detector, *, total_ticks=None, n_nodes: int = NOISE_NODES,
                     max_samples=None) -> ExpectedReadout:
    """Expected readout of each pixel row under the reference's electronics noise (:class:`ExpectedReadout`).

    charge_per_tick, detector, total_ticks, n_nodes as in :func:`readout_log_likelihood`; ``max_samples``
    slots (default ``detector.electronics.max_adc_values`` = 10, the reference's cap).

    A Markov chain over cycles (:mod:`larnd_diff.sim.expected_noise_chain`): from every restart tick that can still
    trigger and both baseline types, the first-trigger distribution, the stored / failed split and the ADC and
    time moments; failed conversions restart within the same slot (followed exactly), stored ones move to the
    next slot. Exact up to the head / tail flattening and the quadrature (as the likelihood) and the absorbing
    restarts after the row's charge (< 1e-8). Costs O(restart ticks x explicit ticks x nodes) per row: meant for
    validation and moment losses, not the inner loop of a fit (use :func:`readout_log_likelihood` there).
    """
    from larnd_diff.sim.expected_noise_chain import expected_readout as chain_readout

    return chain_readout(charge_per_tick, detector, total_ticks=total_ticks, n_nodes=n_nodes, max_samples=max_samples)


def observed_samples(hits, row_pixel, row_event, detector):
    """Observed samples of ``hits`` (data, or the reference's noisy output) on the simulator's pixel rows:
    (obs_tick (n_rows, K) int64, obs_adc (n_rows, K), n_unmatched) for :func:`readout_log_likelihood`.

    row_pixel (n_rows, 2) and row_event (n_rows,) are the simulator's rows (``plan.rows``, ``plan.row_event`` of
    ``simulate(..., return_waveforms=True)``). Hit rows are matched by (event, pixel), repeated pairs (a pixel in
    two chunks of an event) in order; trigger ticks are time / ``detector.adc_tick_us`` rounded. Hit rows without
    a simulator row (the model has no charge there) are counted in ``n_unmatched`` and left out.
    """
    h = hits.numpy()
    time, adc = np.asarray(h.time, np.float64), np.asarray(h.adc, np.float64)
    k = time.shape[1] if time.ndim == 2 else 0
    n_rows = len(row_event)
    obs_tick = np.full((n_rows, k), -1, np.int64)
    obs_adc = np.full((n_rows, k), np.nan)
    slots = {}
    for r, key in enumerate(zip(np.asarray(row_event).tolist(), map(tuple, np.asarray(row_pixel).tolist()))):
        slots.setdefault(key, []).append(r)
    unmatched = 0
    for i, key in enumerate(zip(np.asarray(h.event_id).tolist(), map(tuple, np.asarray(h.pixel).tolist()))):
        rows = slots.get(key)
        if not rows:
            unmatched += 1
            continue
        r = rows.pop(0)
        filled = np.isfinite(time[i]) & np.isfinite(adc[i])
        obs_tick[r] = np.where(filled, np.rint(np.nan_to_num(time[i]) / detector.adc_tick_us), -1)
        obs_adc[r] = np.where(filled, adc[i], np.nan)
    return obs_tick, obs_adc, unmatched


def _padded(a, count, fill=np.nan):
    out = np.full(count, fill)
    out[:len(a)] = a
    return out


def _cut_dead(cycles: plan_mod.Cycles, win, reach_e) -> plan_mod.Cycles:
    """Open cycles evaluated only up to the tick where no node can have survived (plan.dead_end)."""
    if len(cycles.row) == 0 or win.n_stored == 0:
        return cycles
    hi = cycles.lo + cycles.length - 1
    end = plan_mod.dead_end(win, cycles.row, cycles.start, cycles.lo, hi, np.full(len(cycles.row), reach_e))
    return cycles._replace(length=np.maximum(end - cycles.lo + 1, 0))


def _like_input(t, original):
    return t if isinstance(original, ep.Tensor) else t.raw


__all__ = ["ExpectedReadout", "NOISE_NODES", "adc_count_bounds_e", "adc_moments", "baseline_nodes",
           "expected_readout", "log_adc_count_probability", "log_normal_interval", "log1mexp", "observed_samples",
           "readout_log_likelihood", "tail_trigger_tick_moments"]
