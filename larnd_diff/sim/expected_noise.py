"""Expected-noise LArPix front end: the electronics noise of the reference front end integrated analytically.

The noisy front end is :func:`larnd_diff.reference.scalars.pixel_triggers` (run per row by
:func:`larnd_diff.reference.electronics.front_end` with ``noisy=True``); its digitisation is
:func:`larnd_diff.reference.electronics.digitize`.

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

Modules, each importing only modules named after it: this one (the likelihood, :func:`observed_samples`, and the
names below re-exported), :mod:`larnd_diff.sim.expected_noise_chain` (the Markov chain, :class:`ExpectedReadout`),
:mod:`larnd_diff.sim.expected_noise_cycles` (the cycles' tensors and kernels),
:mod:`larnd_diff.sim.expected_noise_math` (closed forms of one cycle, the baseline nodes) and
:mod:`larnd_diff.sim.expected_noise_plan` (the host plan).
"""
from __future__ import annotations

import math

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import expected_noise_cycles as cyc
from larnd_diff.sim import expected_noise_plan as plan_mod
from larnd_diff.sim.expected_noise_chain import ExpectedReadout
from larnd_diff.sim.expected_noise_chain import expected_readout as chain_readout
from larnd_diff.sim.expected_noise_math import (NODE_HALF_WIDTH, NOISE_NODES, adc_count_bounds_e, adc_moments,
                                                baseline_nodes, log1mexp, log_adc_count_probability,
                                                log_normal_interval, tail_trigger_tick_moments)
from larnd_diff.sim.expected_noise_math import ADC_WINDOW, adc_scale, logsumexp  # noqa: F401 (re-exported here)

LOG_ZERO = cyc.LOG_ZERO


# ---------------------------------------------------------------------------------------------- public API
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
    x, host, win, ch, nodes, log_w = cyc.prepare(charge_per_tick, detector, total_ticks, n_nodes)
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
