"""Validate the expected-noise front end against the reference's noisy front end, many noise seeds.

The reference pipeline (``larnd_diff.reference.simulate(..., return_waveforms=True)``, larnd-sim precision) gives
each pixel row's noiseless charge per tick; the same rows go (a) through the reference ``front_end`` with noise on,
once per noise seed (xoroshiro128+ streams seeded 1 .. S, one stream per pixel row, all 6003 ticks), and (b)
through the expected-noise chain (``expected_noise_chain.slot_sums``, the computation behind ``expected_readout``,
with moments up to order 4 for the sampling errors; numpy backend, float64, default quadrature nodes) and through
``readout_log_likelihood`` (the probability of an empty readout). Per pixel row:

* hit probability (chain, and 1 - exp(log L(no sample)) of the likelihood): pull (p_MC - p) / sqrt(p (1 - p) / S)
  over rows with >= 5 expected hits and misses; rows with fewer on one side are pooled (observed vs expected
  rare outcomes, Poisson);
* mean and variance of the first sample's ADC given a hit, over rows with >= 20 MC hits: pulls with the MC's
  sampling errors expected under the model: sqrt(var / n) for the mean; the variance is tested by the MC's mean
  squared deviation from the model's mean, an average with error sqrt((mu4 - var^2) / n) and Gaussian pulls (the
  sample variance's pulls are not where the law is nearly two-valued at p ~ 1/2: see ``_moments``);
* the first sample's trigger time (us): mean and variance given a trigger within the pulse (tick <= the row's last
  charged tick), the probability of a trigger in the flat tail after it (binomial, as the hit probability) and
  the mean time given one there. (All first samples together, the time variance is dominated by rare tail
  triggers hundreds of ticks late: 1000 samples neither estimate it nor its error reliably.)
* mean and variance of the number of stored samples (all seeds), where >= 5 realisations are expected both on and
  off its most likely value; the realisations off it in the other rows are pooled (observed vs expected).

chi^2/ndf, ndf, p-value (scipy.stats.chi2) and the worst pulls per quantity, for (a) generated muons (the cost
benchmark's batch, ``select_tracks(generate_muons(n_events=10, tracks_per_event=10, seed=1))``) and (b) events of
the Geant4 mixed sample (``data/mixed_sample.h5`` under the shared folder: ``--shared``, else
$LARND_DIFF_SHARED, else ``../shared`` beside the checkout, as the tests find it). Rows with less than 500 e- in
total are left out (the model's expected number of MC hits in all of them is reported). Also: how often a failed
conversion is hidden before a stored sample (what ``readout_log_likelihood`` neglects), from a Numba
re-implementation of the front end that counts failures (its mean number of samples is compared with the
reference MC's and the model's in the JSON), with the rows where they happen.

``--procs N`` spreads the model's rows and then the noise seeds over N processes (spawn, one Numba thread each);
the merged moment sums do not depend on N. The model costs about 1700 CPU seconds (muons and mixed events 0-2; its
heaviest row, a 1900-tick pixel of the mixed sample, 160-290 s and 9.6 GB alone), the reference MC about 1 CPU
second per seed and the failure clone about 3 per seed (first 200 seeds): 1000 seeds take about 6-7 minutes on 16
free cores, < 100 GB. ``--rows-out F.npz`` keeps the per-row model values and MC sums; ``--from-rows F.npz`` redoes
the comparison from them without running. Needs numpy, numba, scipy, h5py, tqdm, eagerpy and the package only
(no torch).

    python benchmarks/validate_noise_model.py --seeds 1000 --procs 16

writes benchmarks/results/noise_model_validation.json (no NaN: null where undefined) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit, prange, uint64

from larnd_diff.fit.recorder import json_safe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUANTITIES = ("hit_probability", "likelihood_hit_probability", "adc_mean", "adc_var", "time_mean", "time_var",
              "tail_probability", "tail_time_mean", "n_samples_mean", "n_samples_var")
MIN_HITS = 20          # MC entries needed for the pulls of a conditional mean or variance
MOMENT_ORDERS = 4      # power sums kept per quantity (the variance's sampling error needs the fourth moment)
HIST_BINS = 11         # stored-sample counts 0 .. 10


def shared_dir(option: str | None = None) -> Path:
    """The shared data folder: ``option``, else $LARND_DIFF_SHARED, else ../shared beside the checkout."""
    if option:
        return Path(option)
    env = os.environ.get("LARND_DIFF_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


# ---------------------------------------------------------------------------------------------- inputs
def muon_sample():
    import larnd_diff as ld

    return ld.select_tracks(ld.generate_muons(n_events=10, tracks_per_event=10, seed=1))


def mixed_sample(path: Path, events):
    import larnd_diff as ld

    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --shared DIR or set LARND_DIFF_SHARED (or --mixed-events with no "
                         "index to skip the mixed sample)")
    segs = ld.load_segments(str(path))
    ids = np.unique(segs["eventID"])[list(events)]
    return segs[np.isin(segs["eventID"], ids)]


def reference_rows(segs, detector, min_charge, n_left=200):
    """Noiseless charge per tick (e-) of every pixel row of the reference pipeline's chunks with at least
    ``min_charge`` in total, truncated after the last charged tick (the front end and the model both take ticks
    past the stored ones as zero): (charge (n, width), the ``n_left`` most charged rows left out, count left out)."""
    from larnd_diff.reference import simulate
    from larnd_diff.reference.electronics import E_CHARGE

    _, chunks = simulate(segs, detector=detector, return_waveforms=True)
    kept, left, n_out = [], [], 0
    for c in chunks:
        if not len(c.waveforms):
            continue
        w = c.waveforms * detector.t_sampling / E_CHARGE
        total = w.sum(axis=1)
        kept.append(w[total >= min_charge])
        out = np.flatnonzero(total < min_charge)
        n_out += len(out)
        left.append(w[out[np.argsort(-total[out])[:n_left]]])
    left = dense(left)
    return dense(kept), left[np.argsort(-left.sum(axis=1))[:n_left]], n_out


def dense(parts):
    """Rows of several (n_i, 6003) arrays in one, cut after the last tick that any of them charges."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros((0, 1))
    width = max(int(np.max(np.nonzero(np.any(p != 0, axis=0))[0], initial=0)) + 1 for p in parts)
    return np.ascontiguousarray(np.concatenate([p[:, :width] for p in parts]))


def row_cost(charge, head_e=1000.0, restart_e=1000.0):
    """Rough cost of a row in the chain (states x explicit ticks): ticks from where the cumulative charge reaches
    ``head_e`` to its last charge, and restart ticks up to ``restart_e`` before its total (load balancing only)."""
    cum = np.cumsum(charge, axis=1)
    total = cum[:, -1:]
    charged = np.sum((cum >= head_e) & (cum < total - 1e-6), axis=1) + 1
    restarts = np.sum((cum >= head_e) & (cum <= total - restart_e), axis=1) + 1
    return (1 + 2 * restarts) * charged


# ---------------------------------------------------------------------------------------------- Monte Carlo
class Moments:
    """Per-row sums over seeds: counts, and power sums (orders 1-4) of the first sample's ADC - 128 (all first
    samples), of its time - centre for a trigger in the pulse (tick <= the row's last charged tick) and in the
    flat tail after it, of the number of samples, and the histogram of the number of samples."""

    FIELDS = ("hits", "tail_hits", "adc", "time", "tail_time", "count", "count_hist")

    def __init__(self, n_rows):
        self.n = 0
        self.hits = np.zeros(n_rows)
        self.tail_hits = np.zeros(n_rows)
        self.adc = np.zeros((n_rows, MOMENT_ORDERS))
        self.time = np.zeros((n_rows, MOMENT_ORDERS))
        self.tail_time = np.zeros((n_rows, MOMENT_ORDERS))
        self.count = np.zeros((n_rows, MOMENT_ORDERS))
        self.count_hist = np.zeros((n_rows, HIST_BINS))

    def add(self, adc0, tick0, n_samples, time_centre, last_tick, adc_tick_us):
        hit = tick0 >= 0
        tail = hit & (tick0 > last_tick)
        pulse = hit & ~tail
        t = tick0 * adc_tick_us - time_centre
        a = np.where(hit, np.nan_to_num(adc0) - 128.0, 0.0)
        c = n_samples.astype(np.float64)
        self.n += 1
        self.hits += hit
        self.tail_hits += tail
        for k in range(MOMENT_ORDERS):
            self.adc[:, k] += np.where(hit, a ** (k + 1), 0.0)
            self.time[:, k] += np.where(pulse, t ** (k + 1), 0.0)
            self.tail_time[:, k] += np.where(tail, t ** (k + 1), 0.0)
            self.count[:, k] += c ** (k + 1)
        self.count_hist[np.arange(len(n_samples)), np.minimum(n_samples, HIST_BINS - 1)] += 1

    def merge(self, other: Moments):
        self.n += other.n
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))


@njit(inline="always")
def _next(s):
    x = s[0]
    x ^= x >> uint64(12)
    x ^= x << uint64(25)
    x ^= x >> uint64(27)
    s[0] = x
    return x * uint64(0x2545F4914F6CDD1D)


@njit(inline="always")
def _normal(s):
    u1 = ((_next(s) >> uint64(11)) + uint64(1)) * (1.0 / 9007199254740993.0)
    u2 = (_next(s) >> uint64(11)) * (1.0 / 9007199254740992.0)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(parallel=True, cache=True)
def failure_counts(charge, n_total, n_rep, seed, thr, window, reset_e, unc_e, max_samples):
    """Front end of spec 4.5 (noise on, xorshift64* normals) counting failed conversions: per (rep, row) the
    samples stored, the failures before the last stored sample (hidden between observed samples) and after it."""
    n, t_stored = charge.shape
    stored = np.zeros((n_rep, n), np.int64)
    hidden = np.zeros((n_rep, n), np.int64)
    after = np.zeros((n_rep, n), np.int64)
    for job in prange(n_rep * n):
        rep, r = job // n, job % n
        s = np.empty(1, np.uint64)
        z = uint64(seed) * uint64(0x9E3779B97F4A7C15) + uint64(job) * uint64(0xBF58476D1CE4E5B9) + uint64(1)
        z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
        s[0] = (z ^ (z >> uint64(31))) | uint64(1)
        q = reset_e * _normal(s)
        i, k, fails = 0, 0, 0
        while i < n_total:
            if i < t_stored:
                q += charge[r, i]
            if q + unc_e * _normal(s) >= thr:
                end = min(i + window, n_total - 1)
                while i <= end:
                    if i < t_stored:
                        q += charge[r, i]
                    i += 1
                if q + unc_e * _normal(s) < thr:
                    fails += 1
                    i += 1
                    q = unc_e * _normal(s)
                    continue
                if k >= max_samples:
                    break
                k += 1
                hidden[rep, r] += fails
                fails = 0
                q = reset_e * _normal(s)
                i += 2
            else:
                i += 1
        stored[rep, r] = k
        after[rep, r] = fails
    return stored, hidden, after


# ---------------------------------------------------------------------------------------------- worker tasks
_WORK: dict = {}


def _init_worker(samples, one_thread):
    """Pool initializer (also called in-process for --procs 1): the rows' charge (e-) per sample."""
    if one_thread:
        import numba

        numba.set_num_threads(1)
    from larnd_diff.detector import module0

    _WORK.clear()
    _WORK["samples"] = samples
    _WORK["detector"] = module0()


def model_task(args):
    """Model quantities of rows ``idx`` of a sample: slot sums of the chain (orders 4) and log P(no sample) of the
    likelihood; returns (name, idx, quantities, cpu seconds)."""
    from larnd_diff import ops
    from larnd_diff.sim.expected_noise import readout_log_likelihood
    from larnd_diff.sim.expected_noise_chain import slot_sums

    name, idx, n_nodes = args
    t0 = time.process_time()
    det = _WORK["detector"]
    charge = _WORK["samples"][name][idx]
    width = int(np.max(np.nonzero(np.any(charge != 0, axis=0))[0], initial=0)) + 1
    charge = np.ascontiguousarray(charge[:, :width])
    nb = ops.get_backend("numpy")
    sums, win, _ = slot_sums(nb.asarray(charge, "float64"), det, n_nodes=n_nodes, orders=MOMENT_ORDERS)
    q = model_quantities(ops.to_numpy(sums), win.first, win.last, det)
    empty_t = np.full((len(idx), 1), -1, np.int64)
    empty_a = np.full((len(idx), 1), np.nan)
    log_empty = readout_log_likelihood(nb.asarray(charge, "float64"), det, empty_t, empty_a, n_nodes=n_nodes,
                                       outlier_probability=0.0)
    q["likelihood_hit_probability"] = -np.expm1(ops.to_numpy(log_empty))
    return name, idx, q, time.process_time() - t0


def mc_task(args):
    """Reference front end (noise on) for seeds lo .. hi - 1 on every sample, and the failure-counting clone for
    those <= failure_reps: (lo, hi, {name: Moments}, {name: failure sums}, cpu seconds of the reference, of the
    clone)."""
    from larnd_diff.reference.electronics import E_CHARGE, digitize, front_end
    from larnd_diff.reference.rng import create_streams, n_streams

    lo, hi, split, failure_reps = args
    t0 = time.process_time()
    det = _WORK["detector"]
    fee = det.electronics
    dt = det.t_sampling
    window = fee.integration_ticks(dt)
    moments, failures = {}, {}
    clone_cpu = 0.0
    for name, charge in _WORK["samples"].items():
        centre, last = split[name]
        wf = np.ascontiguousarray(charge * (E_CHARGE / dt))
        mom = Moments(len(charge))
        fail = np.zeros((4, len(charge)))
        for seed in range(lo, hi):
            state = create_streams(n_streams(len(wf)), np.uint64(seed))
            q, ticks, counts = front_end(wf, det.n_ticks_event, dt, fee.threshold_e, window, fee.max_adc_values,
                                         fee.reset_noise_e, fee.uncorrelated_noise_e, state, True)
            hit = ticks[:, 0] >= 0
            adc0 = np.where(hit, digitize(np.where(hit, q[:, 0], 0.0), fee), np.nan)
            mom.add(adc0, ticks[:, 0], counts, centre, last, det.adc_tick_us)
            if seed <= failure_reps:
                t1 = time.process_time()
                s, h, a = failure_counts(charge, det.n_ticks_event, 1, seed, fee.threshold_e, window,
                                         fee.reset_noise_e, fee.uncorrelated_noise_e, fee.max_adc_values)
                fail += [s[0] > 0, h[0] > 0, a[0] > 0, s[0]]
                clone_cpu += time.process_time() - t1
        moments[name], failures[name] = mom, fail
    return lo, hi, moments, failures, time.process_time() - t0 - clone_cpu, clone_cpu


def _pool(procs, samples):
    """(map_unordered, close) over ``procs`` spawned workers, or in this process for procs <= 1."""
    if procs <= 1:
        _init_worker(samples, False)
        return (lambda fn, tasks: map(fn, tasks)), (lambda: None)
    one = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in one}
    os.environ.update(one)               # inherited by the spawned workers (this process's Numba is already set up)
    try:
        pool = mp.get_context("spawn").Pool(procs, initializer=_init_worker, initargs=(samples, True))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return (lambda fn, tasks: pool.imap_unordered(fn, tasks)), pool.close


# ---------------------------------------------------------------------------------------------- comparison
def _central(raw):
    """(mean, variance, fourth central moment) from raw moments [m1, m2, m3, m4] (arrays)."""
    m1, m2, m3, m4 = raw
    var = np.maximum(m2 - m1 ** 2, 0.0)
    return m1, var, np.maximum(m4 - 4 * m3 * m1 + 6 * m2 * m1 ** 2 - 3 * m1 ** 4, var ** 2)


def model_quantities(sums, first, last, detector):
    """Model values per row from expected_noise_chain.slot_sums (numpy (n, K, 2, 9), orders=4) and the rows'
    first and last explicit ticks: the quantities compared and, for the MC's expected sampling errors, the
    model's variances and fourth central moments."""
    dt = detector.adc_tick_us
    s0 = sums[:, 0]
    safe = lambda p: np.maximum(p, 1e-300)  # noqa: E731
    p_pulse, p_tail = s0[:, 0, 0], s0[:, 1, 0]
    hit = p_pulse + p_tail
    o = MOMENT_ORDERS
    adc_mean, adc_var, adc_mu4 = _central([(s0[:, 0, k] + s0[:, 1, k]) / safe(hit) for k in range(1, o + 1)])
    tau_mean, tau_var, tau_mu4 = _central([s0[:, 0, o + k] / safe(p_pulse) for k in range(1, o + 1)])
    filled = sums[:, :, :, 0].sum(axis=2)
    p_n = -np.diff(np.concatenate([np.ones((len(hit), 1)), filled, np.zeros((len(hit), 1))], axis=1), axis=1)
    n = np.arange(p_n.shape[1])
    n_mean, n_var, n_mu4 = _central([(p_n * n ** k).sum(axis=1) for k in range(1, o + 1)])
    return dict(hit_probability=hit, adc_mean=128.0 + adc_mean, adc_var=adc_var, adc_mu4=adc_mu4,
                time_mean=(first + tau_mean) * dt, time_var=tau_var * dt ** 2, time_mu4=tau_mu4 * dt ** 4,
                tail_probability=p_tail, tail_time_mean=(first + s0[:, 1, o + 1] / safe(p_tail)) * dt,
                tail_time_var=np.maximum(s0[:, 1, o + 2] / safe(p_tail) - (s0[:, 1, o + 1] / safe(p_tail)) ** 2, 0)
                * dt ** 2,
                n_samples_mean=n_mean, n_samples_var=n_var, n_samples_mu4=n_mu4, n_samples_p_mode=p_n.max(axis=1),
                n_samples_mode=p_n.argmax(axis=1), first_tick=first.astype(np.float64),
                last_tick=last.astype(np.float64))


def _poisson_p(observed, expected):
    """Two-sided Poisson p-value of ``observed`` counts when ``expected`` are expected (None if nothing is)."""
    from scipy.stats import poisson

    if expected <= 0:
        return None if observed == 0 else 0.0
    p = poisson.sf(observed - 1, expected) if observed >= expected else poisson.cdf(observed, expected)
    return float(min(1.0, 2.0 * p))


def _binomial(p, successes, n, name, out):
    p = np.clip(p, 0.0, 1.0)
    well = (n * p >= 5) & (n * (1 - p) >= 5)
    out[name] = dict(rows=np.flatnonzero(well), model=p[well], mc=successes[well] / n,
                     pull=(successes[well] / n - p[well]) / np.sqrt(p[well] * (1 - p[well]) / n))
    rare_hit = ~well & (n * p < 5)
    rare_miss = ~well & ~rare_hit
    exp_s, obs_s = float(np.sum(n * p[rare_hit])), int(np.sum(successes[rare_hit]))
    exp_f, obs_f = float(np.sum(n * (1 - p[rare_miss]))), int(np.sum(n - successes[rare_miss]))
    out[f"{name}_rare"] = dict(rows_rare_successes=int(rare_hit.sum()), expected_successes=exp_s,
                               observed_successes=obs_s, p_value_successes=_poisson_p(obs_s, exp_s),
                               rows_rare_failures=int(rare_miss.sum()), expected_failures=exp_f,
                               observed_failures=obs_f, p_value_failures=_poisson_p(obs_f, exp_f))


def _moments(name, sums, n_entries, centre, model, min_n, out, use=None):
    """Pulls of a mean and (when the model gives its fourth moment) a variance over ``n_entries`` MC entries,
    with the MC's sampling errors expected under the model. Mean: sqrt(var / n). Variance: the MC's mean squared
    deviation from the model's mean, whose error is sqrt((mu4 - var^2) / n) and whose pulls are Gaussian by the
    central limit theorem (it is an average). The sample variance s^2 is not an average: where the distribution is
    nearly two-valued with p ~ 1/2 (0 or 1 samples, two ADC counts) its first-order term vanishes and s^2 - var
    ~ -(mean - mu)^2, a one-sided tail (pulls of -5.8 on rows whose mean was 3 sigma off). Rows where
    mu4 - var^2 < 1e-9 var^2 (a two-point law at p = 1/2, no spread to test beyond the mean's) are left out.
    (Errors estimated from the MC sample itself would collapse with it where nearly all entries are equal.)"""
    n_safe = np.maximum(n_entries, 1)
    m1 = sums[:, 0] / n_safe
    m2 = sums[:, 1] / n_safe
    mean = m1 + centre
    n = np.maximum(n_entries, 2)
    err_mean = np.sqrt(model[f"{name}_var"] / n)
    use = np.ones(len(n_entries), bool) if use is None else use
    sel = (n_entries >= min_n) & (err_mean > 0) & use
    out[f"{name}_mean"] = dict(rows=np.flatnonzero(sel), model=model[f"{name}_mean"][sel], mc=mean[sel],
                               pull=(mean[sel] - model[f"{name}_mean"][sel]) / err_mean[sel])
    if f"{name}_mu4" not in model:
        return
    var = model[f"{name}_var"]
    d = np.nan_to_num(model[f"{name}_mean"] - centre)
    msd = m2 - 2.0 * d * m1 + d * d
    spread = model[f"{name}_mu4"] - var ** 2
    err_var = np.sqrt(np.maximum(spread, 0.0) / n)
    sel = (n_entries >= min_n) & (spread > 1e-9 * var ** 2) & (err_var > 0) & use
    out[f"{name}_var"] = dict(rows=np.flatnonzero(sel), model=var[sel], mc=msd[sel],
                              pull=(msd[sel] - var[sel]) / err_var[sel])


def compare(model, mom: Moments, min_hits: int = MIN_HITS):
    """Per-quantity pulls of the model against the MC (dict of arrays over rows)."""
    n = mom.n
    out = {}
    _binomial(model["hit_probability"], mom.hits, n, "hit_probability", out)
    _binomial(model["likelihood_hit_probability"], mom.hits, n, "likelihood_hit_probability", out)
    _binomial(model["tail_probability"], mom.tail_hits, n, "tail_probability", out)
    centre = np.nan_to_num(model["time_mean"])
    _moments("adc", mom.adc, mom.hits, 128.0, model, min_hits, out)
    _moments("time", mom.time, mom.hits - mom.tail_hits, centre, model, min_hits, out)
    _moments("tail_time", mom.tail_time, mom.tail_hits, centre, model, min_hits, out)
    # the number of samples: Gaussian pulls where >= 5 realisations are expected off its most likely value and
    # on it; elsewhere (counts all but certain) the realisations off that value are pooled (Poisson)
    off_mode = n * (1 - model["n_samples_p_mode"])
    well = (off_mode >= 5) & (n * model["n_samples_p_mode"] >= 5)
    _moments("n_samples", mom.count, np.full(len(mom.hits), n), 0.0, model, 1, out, use=well)
    observed_off = n - mom.count_hist[np.arange(len(well)), model["n_samples_mode"]]
    exp_off, obs_off = float(off_mode[~well].sum()), int(observed_off[~well].sum())
    out["n_samples_rare"] = dict(rows=int((~well).sum()), expected_off_mode=exp_off, observed_off_mode=obs_off,
                                 p_value=_poisson_p(obs_off, exp_off))
    return out


def summarise(pulls, total_charge, n_worst: int = 5):
    from scipy.stats import chi2

    summary = {}
    for q in QUANTITIES:
        d = pulls[q]
        pull = d["pull"]
        ndf = len(pull)
        c2 = float(np.sum(pull ** 2))
        worst = np.argsort(-np.abs(pull))[:n_worst]
        summary[q] = dict(ndf=ndf, chi2=c2, chi2_ndf=c2 / ndf if ndf else None,
                          p_value=float(chi2.sf(c2, ndf)) if ndf else None,
                          mean_pull=float(np.mean(pull)) if ndf else None,
                          worst_abs_pull=float(np.max(np.abs(pull))) if ndf else None,
                          worst=[dict(row=int(d["rows"][i]), total_charge_e=float(total_charge[d["rows"][i]]),
                                      model=float(d["model"][i]), mc=float(d["mc"][i]), pull=float(pull[i]))
                                 for i in worst])
    summary["rare_outcomes"] = dict(hit=pulls["hit_probability_rare"],
                                    likelihood_hit=pulls["likelihood_hit_probability_rare"],
                                    tail=pulls["tail_probability_rare"], n_samples=pulls["n_samples_rare"])
    return summary


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def markdown(results):
    head = "| quantity | " + " | ".join(f"{r['sample']}: chi2/ndf | ndf | worst pull | p" for r in results) + " |"
    lines = [head, "|---|" + "---|---|---|---|" * len(results)]
    for q in QUANTITIES:
        cells = []
        for r in results:
            s = r["summary"][q]
            cells.append(f"{_fmt(s['chi2_ndf'], '.2f')} | {s['ndf']} | {_fmt(s['worst_abs_pull'], '.1f')} | "
                         f"{_fmt(s['p_value'], '.2g')}")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    for key, label in (("hit", "rare hits"), ("tail", "rare tail triggers")):
        cells = []
        for r in results:
            d = r["summary"]["rare_outcomes"][key]
            cells.append(f"obs {d['observed_successes']} / exp {d['expected_successes']:.1f} | "
                         f"{d['rows_rare_successes']} rows | | {_fmt(d['p_value_successes'], '.2g')}")
        lines.append(f"| {label} (pooled) | " + " | ".join(cells) + " |")
    cells = []
    for r in results:
        d = r["summary"]["rare_outcomes"]["n_samples"]
        cells.append(f"obs {d['observed_off_mode']} / exp {d['expected_off_mode']:.1f} | {d['rows']} rows | | "
                     f"{_fmt(d['p_value'], '.2g')}")
    lines.append("| n_samples off its mode (pooled) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- driver
def model_tasks(samples, procs, n_nodes):
    """Rows grouped into tasks of similar cost (largest first), about four per process or one row each where a
    row alone exceeds that."""
    tasks, costs = [], []
    for name, charge in samples.items():
        cost = row_cost(charge).astype(np.float64)
        order = np.argsort(-cost, kind="stable")
        budget = max(cost.sum() / (4 * max(procs, 1)), 1.0)
        start = 0
        while start < len(order):
            stop = start + 1
            acc = cost[order[start]]
            while stop < len(order) and acc + cost[order[stop]] <= budget:
                acc += cost[order[stop]]
                stop += 1
            tasks.append((name, np.sort(order[start:stop]), n_nodes))
            costs.append(acc)
            start = stop
    return [tasks[i] for i in np.argsort(-np.asarray(costs), kind="stable")]


def compute_model(imap, samples, procs, n_nodes):
    """Model quantities of every row (tasks over the pool): (models, cpu s, largest task's cpu s, wall s)."""
    from tqdm import tqdm

    t0 = time.time()
    parts = {name: [] for name in samples}
    model_cpu = model_max = 0.0
    n_total_rows = sum(len(c) for c in samples.values())
    with tqdm(total=n_total_rows, desc="model (rows)", unit="row", file=sys.stdout, mininterval=5) as bar:
        for name, idx, q, cpu in imap(model_task, model_tasks(samples, procs, n_nodes)):
            parts[name].append((idx, q))
            model_cpu += cpu
            model_max = max(model_max, cpu)
            bar.update(len(idx))
    models = {}
    for name, pieces in parts.items():
        n = len(samples[name])
        models[name] = {k: np.empty(n, dtype=pieces[0][1][k].dtype) for k in pieces[0][1]}
        for idx, q in pieces:
            for k, v in q.items():
                models[name][k][idx] = v
    return models, model_cpu, model_max, time.time() - t0


def reused_model(path, samples, n_nodes):
    """The model quantities of an earlier run's --rows-out file (deterministic: they do not depend on the seeds),
    after checking that it covers the same rows (count and total charge of each) with the same quadrature."""
    raw = load_rows(path)
    for name, charge in samples.items():
        if name not in raw["models"] or raw["info"][name]["n_nodes"] != n_nodes or \
                len(raw["totals"][name]) != len(charge) or not np.allclose(raw["totals"][name], charge.sum(axis=1),
                                                                           rtol=1e-12, atol=0.0):
            raise SystemExit(f"{path} does not hold the model of these {name} rows (other sample or --nodes)")
    t = raw["timing"]
    print(f"model values of {len(samples)} sample(s) from {path} ({t['model_cpu_s']:.0f} cpu-s there)", flush=True)
    return ({name: raw["models"][name] for name in samples}, t["model_cpu_s"], t["model_largest_task_cpu_s"],
            t["model_wall_s"])


def run(args):
    from tqdm import tqdm

    from larnd_diff.detector import module0
    from larnd_diff.sim.expected_noise import NOISE_NODES

    det = module0()
    n_nodes = args.nodes or NOISE_NODES
    t_start = time.time()
    segments = {}
    if not args.skip_muons:
        segments["muons"] = muon_sample()
    if args.mixed_events:
        segments["mixed"] = mixed_sample(shared_dir(args.shared) / "data" / "mixed_sample.h5", args.mixed_events)
    if not segments:
        raise SystemExit("nothing to validate: no muons (--skip-muons) and no mixed events")
    samples, left_out, info = {}, {}, {}
    for name, segs in segments.items():
        t0 = time.time()
        samples[name], left_out[name], n_out = reference_rows(segs, det, args.min_charge)
        info[name] = dict(segments=len(segs), n_rows=len(samples[name]), n_rows_left_out=n_out,
                          reference_s=time.time() - t0)
        print(f"[{name}] {len(segs)} segments: {len(samples[name])} pixel rows with >= {args.min_charge:g} e-, "
              f"{n_out} with less ({time.time() - t0:.0f} s)", flush=True)

    imap, close = _pool(args.procs, samples)
    if args.model_from:
        models, model_cpu, model_max, model_wall = reused_model(args.model_from, samples, n_nodes)
    else:
        models, model_cpu, model_max, model_wall = compute_model(imap, samples, args.procs, n_nodes)
    split = {name: (np.nan_to_num(m["time_mean"]), m["last_tick"]) for name, m in models.items()}

    # Monte Carlo: blocks of seeds
    t0 = time.time()
    seeds = np.arange(1, args.seeds + 1)
    block = max(1, min(args.block, -(-args.seeds // max(args.procs, 1))))
    mc_args = [(int(b[0]), int(b[-1]) + 1, split, args.failure_reps) for b in np.array_split(seeds, -(-len(seeds)
                                                                                              // block))]
    moments = {name: Moments(len(c)) for name, c in samples.items()}
    failures = {name: np.zeros((4, len(c))) for name, c in samples.items()}
    mc_cpu = clone_cpu = 0.0
    with tqdm(total=args.seeds, desc="reference MC (seeds)", unit="seed", file=sys.stdout, mininterval=5) as bar:
        for lo, hi, moms, fails, cpu, cpu_clone in imap(mc_task, mc_args):
            for name in samples:
                moments[name].merge(moms[name])
                failures[name] += fails[name]
            mc_cpu += cpu
            clone_cpu += cpu_clone
            bar.update(hi - lo)
    mc_wall = time.time() - t0
    close()

    reps = min(args.failure_reps, args.seeds)
    timing = dict(procs=args.procs, seeds=args.seeds, model_cpu_s=model_cpu, model_largest_task_cpu_s=model_max,
                  model_wall_s=model_wall, mc_cpu_s=mc_cpu, mc_wall_s=mc_wall,
                  mc_cpu_s_per_seed=mc_cpu / max(args.seeds, 1), clone_cpu_s_per_seed=clone_cpu / max(reps, 1),
                  reference_s=sum(i["reference_s"] for i in info.values()), total_wall_s=time.time() - t_start)
    timing["estimate_s"] = {f"{s}_seeds_{n}_procs": estimate(timing, s, n, args.failure_reps)
                            for s, n in ((1000, 16), (1000, 2))}
    if args.model_from:
        timing["model_from"] = args.model_from            # model times are that run's; this one ran the MC only
    for name in samples:
        info[name].update(min_charge_e=args.min_charge, n_seeds=args.seeds, n_nodes=n_nodes, failure_reps=reps,
                          left_out_rows=left_out_check(left_out[name], info[name]["n_rows_left_out"], det, n_nodes,
                                                       args.seeds))
        if name == "mixed":
            info[name]["mixed_events"] = list(args.mixed_events)
    return dict(info=info, models=models, moments=moments, failures=failures,
                totals={name: c.sum(axis=1) for name, c in samples.items()}, timing=timing)


def report(raw):
    """Per sample: the run's facts, the per-quantity summary and the failure counts (dicts for the JSON)."""
    results = []
    for name, info in raw["info"].items():
        model, mom, total = raw["models"][name], raw["moments"][name], raw["totals"][name]
        res = dict(sample=name, **info, rows_with_hits_in_mc=int(np.sum(mom.hits > 0)),
                   summary=summarise(compare(model, mom), total))
        if info["failure_reps"]:
            res["failures"] = failure_summary(raw["failures"][name], info["failure_reps"], total, model, mom)
        results.append(res)
    return results


def save_rows(raw, path):
    """Per-row model values and MC sums of a run (npz), so that the comparison can be redone (--from-rows)."""
    arrays = {"meta": np.array(json.dumps(json_safe(dict(info=raw["info"], timing=raw["timing"],
                                                      command=raw["command"]))))}
    for name in raw["info"]:
        arrays[f"{name}/n"] = np.array(raw["moments"][name].n)
        arrays[f"{name}/total"] = raw["totals"][name]
        arrays[f"{name}/failures"] = raw["failures"][name]
        for k, v in raw["models"][name].items():
            arrays[f"{name}/model/{k}"] = v
        for f in Moments.FIELDS:
            arrays[f"{name}/moments/{f}"] = getattr(raw["moments"][name], f)
    np.savez_compressed(path, **arrays)


def load_rows(path):
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    raw = dict(info=meta["info"], timing=meta["timing"], command=meta["command"], models={}, moments={},
               failures={}, totals={})
    for name in meta["info"]:
        raw["models"][name] = {k.split("/")[-1]: z[k] for k in z.files if k.startswith(f"{name}/model/")}
        mom = Moments(len(z[f"{name}/total"]))
        mom.n = int(z[f"{name}/n"])
        for f in Moments.FIELDS:
            setattr(mom, f, z[f"{name}/moments/{f}"])
        raw["moments"][name] = mom
        raw["failures"][name] = z[f"{name}/failures"]
        raw["totals"][name] = z[f"{name}/total"]
    return raw


def failure_summary(fail, reps, total_charge, model, mom: Moments, n_worst: int = 10):
    """Failed conversions seen by the clone over ``reps`` seeds (per row: realisations with samples, with a hidden
    failure, with a failure after the last sample, samples): rates, the rows where hidden failures occur, and the
    clone's mean number of samples against the model's and the reference MC's (the clone's check)."""
    with_samples, hidden, after, n_samples = fail
    n_real = reps * len(total_charge)
    rate = hidden / max(reps, 1)
    worst = np.argsort(-rate, kind="stable")[:n_worst]
    return dict(
        realisations=int(n_real), with_samples=int(with_samples.sum()),
        hidden_failure_before_a_stored_sample=hidden.sum() / max(n_real, 1),
        hidden_failure_given_samples=hidden.sum() / max(with_samples.sum(), 1),
        failure_after_last_sample=after.sum() / max(n_real, 1),
        rows_with_hidden_failures=int(np.sum(hidden > 0)), rows_with_hidden_rate_above_1pc=int(np.sum(rate > 0.01)),
        worst_rows=[dict(row=int(r), total_charge_e=float(total_charge[r]), hidden_rate=float(rate[r]),
                         samples_mean=float(model["n_samples_mean"][r])) for r in worst if hidden[r] > 0],
        samples_clone=float(n_samples.sum()) / max(reps, 1), samples_model=float(np.sum(model["n_samples_mean"])),
        samples_reference_mc=float(np.sum(mom.count[:, 0]) / mom.n),
        note="row-realisations of a re-implemented front end (xorshift64* normals) that counts failed conversions; "
             "readout_log_likelihood neglects the 'hidden' ones (a failed conversion before an observed sample: "
             "their paths' probability is missing from the factor of the sample after them); expected_readout "
             "follows them")


def estimate(timing, seeds, procs, failure_reps):
    """Wall time of a run with ``seeds`` seeds on ``procs`` free cores from this run's CPU times (the model no
    faster than its largest task)."""
    model = max(timing["model_cpu_s"] / procs, timing["model_largest_task_cpu_s"])
    mc = (seeds * timing["mc_cpu_s_per_seed"] + min(failure_reps, seeds) * timing["clone_cpu_s_per_seed"]) / procs
    return timing["reference_s"] + model + mc


def left_out_check(charge, n_rows, detector, n_nodes, n_seeds):
    """The rows left out (too little charge), from the most charged of them (``charge``): the model's largest hit
    probability and the bound it gives on the expected number of MC hits in all ``n_rows`` over the seeds."""
    from larnd_diff import ops
    from larnd_diff.sim.expected_noise import expected_readout

    if len(charge) == 0:
        return dict(rows=n_rows, rows_evaluated=0, max_hit_probability=None, expected_mc_hits_bound=0.0)
    er = expected_readout(ops.get_backend("numpy").asarray(charge, "float64"), detector, n_nodes=n_nodes,
                          max_samples=1)
    p = ops.to_numpy(er.hit_probability)
    return dict(rows=n_rows, rows_evaluated=len(charge), max_total_charge_e=float(charge.sum(axis=1).max()),
                max_hit_probability=float(p.max()), expected_mc_hits_bound=float(p.max() * n_rows * n_seeds))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1000, help="noise seeds (1 .. N) of the reference MC")
    ap.add_argument("--procs", type=int, default=1, help="processes for the model's rows and the seeds")
    ap.add_argument("--block", type=int, default=10, help="seeds per MC task")
    ap.add_argument("--nodes", type=int, default=None, help="baseline quadrature nodes (default: the model's)")
    ap.add_argument("--shared", default=None,
                    help="shared data folder (default: $LARND_DIFF_SHARED, else ../shared beside the checkout)")
    ap.add_argument("--mixed-events", type=int, nargs="*", default=[0, 1, 2],
                    help="indices of the mixed sample's events to use (sorted eventIDs); none: skip the sample")
    ap.add_argument("--skip-muons", action="store_true")
    ap.add_argument("--failure-reps", type=int, default=200,
                    help="seeds (the first ones) also run through the failure-counting front end")
    ap.add_argument("--min-charge", type=float, default=500.0,
                    help="rows with less total charge (e-) are left out (their expected hits are reported)")
    ap.add_argument("--out", default=str(RESULTS / "noise_model_validation.json"))
    ap.add_argument("--rows-out", default=None, help="also write the per-row model values and MC sums (npz)")
    ap.add_argument("--model-from", default=None,
                    help="reuse the model values of a --rows-out file made on the same samples (only the MC runs)")
    ap.add_argument("--from-rows", default=None,
                    help="redo the comparison from a --rows-out file instead of running (other options ignored)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    command = "python benchmarks/validate_noise_model.py " + " ".join(argv)
    if args.from_rows:
        raw = load_rows(args.from_rows)
        command = f"{raw['command']} (compared again: {command})"
    else:
        raw = run(args)
        raw["command"] = command
    if args.rows_out:
        save_rows(raw, args.rows_out)
    results, timing = report(raw), raw["timing"]
    table = markdown(results)
    print(table)
    print(f"model {timing['model_cpu_s']:.0f} cpu-s (largest task {timing['model_largest_task_cpu_s']:.0f}), "
          f"reference MC {timing['mc_cpu_s_per_seed']:.2f} cpu-s per seed, failure clone "
          f"{timing['clone_cpu_s_per_seed']:.2f} (all samples); 1000 seeds on 16 free cores: about "
          f"{timing['estimate_s']['1000_seeds_16_procs'] / 60:.1f} min; that run {timing['total_wall_s']:.0f} s "
          f"on {timing['procs']} process(es)")
    out = dict(command=command, timing=timing,
               results=results, table=table)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(out), indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
