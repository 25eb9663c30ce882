"""Validate the expected-noise front end against the reference's noisy front end, many noise seeds.

The reference pipeline (``larnd_diff.reference.simulate(..., return_waveforms=True)``, larnd-sim precision) gives
each chunk's pixel waveforms; the same waveforms go (a) through the reference ``front_end`` with noise on, once
per noise seed (xoroshiro128+ streams seeded 1 .. S, one stream per pixel row, all 6003 ticks), and (b) through
``expected_readout`` (the charge per tick in electrons, numpy backend, float64). Per pixel row:

* hit probability: pull (p_MC - p) / sqrt(p (1 - p) / S) over rows with >= 5 expected hits and misses; rows with
  fewer on one side are pooled (observed vs expected rare outcomes, Poisson);
* mean and variance of the first sample's ADC given a hit, over rows with >= 20 MC hits: pulls with the MC's
  statistical errors (sqrt(var / n) for a mean, sqrt((mu4 - var^2) / n) for a variance, var and mu4 the
  model's: errors estimated from the sample itself collapse with it where nearly all entries are equal);
* the first sample's trigger time (us): mean and variance given a trigger within the pulse (tick <= the row's last
  charged tick), the probability of a trigger in the flat tail after it (binomial, as the hit probability) and
  the mean time given one there. (All first samples together, the time variance is dominated by rare tail
  triggers hundreds of ticks late: 1000 samples neither estimate it nor its error reliably.)
* mean and variance of the number of stored samples (all seeds).

chi^2/ndf per quantity and the worst pulls, for (a) generated muons (the cost benchmark's batch,
``select_tracks(generate_muons(n_events=10, tracks_per_event=10, seed=1))``) and (b) events of the Geant4 mixed
sample. Rows with less than 500 e- in total (hit probability < 1e-9 by the model) are left out. Also: how often
a failed conversion is hidden before a stored sample (what ``readout_log_likelihood`` neglects), from a Numba
re-implementation of the front end that counts failures (written here for that purpose; its mean number of samples
per row is compared with the model's in the JSON).

    python benchmarks/validate_noise_model.py --seeds 1000 --mixed-events 0 1 2
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from numba import njit, prange, uint64

RESULTS = Path(__file__).resolve().parent / "results"
QUANTITIES = ("hit_probability", "adc_mean", "adc_var", "time_mean", "time_var", "tail_probability", "tail_time_mean",
              "n_samples_mean", "n_samples_var")


# ---------------------------------------------------------------------------------------------- inputs
def muon_sample():
    import larnd_diff as ld

    return ld.select_tracks(ld.generate_muons(n_events=10, tracks_per_event=10, seed=1))


def mixed_sample(events):
    import larnd_diff as ld

    segs = ld.load_segments("/work/shared/data/mixed_sample.h5")
    ids = np.unique(segs["eventID"])[list(events)]
    return segs[np.isin(segs["eventID"], ids)]


def reference_charge(segs, detector):
    """Per processed chunk of the reference pipeline: pixel waveforms as charge per tick (e-), (n_rows, 6003)."""
    from larnd_diff.reference import simulate
    from larnd_diff.reference.electronics import E_CHARGE

    _, chunks = simulate(segs, detector=detector, return_waveforms=True)
    return [c.waveforms * detector.t_sampling / E_CHARGE for c in chunks if len(c.waveforms)]


# ---------------------------------------------------------------------------------------------- Monte Carlo
class Moments:
    """Per-row sums over seeds: counts, and power sums (orders 1-4) of the first sample's ADC - 128 (all first
    samples), of its time - centre for a trigger in the pulse (tick <= the row's last charged tick) and in the
    flat tail after it, and of the number of samples."""

    def __init__(self, n_rows, time_centre, last_tick):
        self.n = 0
        self.hits = np.zeros(n_rows)
        self.tail_hits = np.zeros(n_rows)
        self.adc = np.zeros((n_rows, 4))
        self.time = np.zeros((n_rows, 4))
        self.tail_time = np.zeros((n_rows, 4))
        self.count = np.zeros((n_rows, 4))
        self.time_centre, self.last_tick = time_centre, last_tick

    def add(self, adc0, tick0, n_samples, adc_tick_us):
        hit = tick0 >= 0
        tail = hit & (tick0 > self.last_tick)
        pulse = hit & ~tail
        t = tick0 * adc_tick_us - self.time_centre
        self.n += 1
        self.hits += hit
        self.tail_hits += tail
        for k in range(4):
            self.adc[:, k] += np.where(hit, (np.nan_to_num(adc0) - 128.0) ** (k + 1), 0.0)
            self.time[:, k] += np.where(pulse, t ** (k + 1), 0.0)
            self.tail_time[:, k] += np.where(tail, t ** (k + 1), 0.0)
            self.count[:, k] += n_samples.astype(np.float64) ** (k + 1)

    @staticmethod
    def central(sums, n):
        """(mean offset, variance, fourth central moment) from power sums over n entries."""
        n = np.maximum(n, 1)
        m1, m2, m3, m4 = (sums[:, k] / n for k in range(4))
        var = np.maximum(m2 - m1 ** 2, 0.0)
        mu4 = m4 - 4 * m3 * m1 + 6 * m2 * m1 ** 2 - 3 * m1 ** 4
        return m1, var, np.maximum(mu4, var ** 2)

    @staticmethod
    def merge(parts):
        out = Moments(0, np.zeros(0), np.zeros(0))
        out.n = parts[0].n
        for attr in ("hits", "tail_hits", "adc", "time", "tail_time", "count", "time_centre", "last_tick"):
            setattr(out, attr, np.concatenate([getattr(m, attr) for m in parts]))
        return out


def reference_monte_carlo(charge, detector, seeds, time_centre, last_tick):
    """Moments of the reference front end's output over ``seeds`` noise seeds (charge (n, 6003) e-)."""
    from larnd_diff.reference.electronics import E_CHARGE, digitize, front_end
    from larnd_diff.reference.rng import create_streams, n_streams

    fee = detector.electronics
    dt = detector.t_sampling
    wf = np.ascontiguousarray(charge * E_CHARGE / dt)
    mom = Moments(len(wf), time_centre, last_tick)
    for seed in seeds:
        state = create_streams(n_streams(len(wf)), np.uint64(seed))
        q, ticks, counts = front_end(wf, detector.n_ticks_event, dt, fee.threshold_e, fee.integration_ticks(dt),
                                     fee.max_adc_values, fee.reset_noise_e, fee.uncorrelated_noise_e, state, True)
        hit = ticks[:, 0] >= 0
        adc0 = np.where(hit, digitize(np.where(hit, q[:, 0], 0.0), fee), np.nan)
        mom.add(adc0, ticks[:, 0], counts, detector.adc_tick_us)
    return mom


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


# ---------------------------------------------------------------------------------------------- comparison
def _central(raw):
    """(mean, variance, fourth central moment) from raw moments [m1, m2, m3, m4] (arrays)."""
    m1, m2, m3, m4 = raw
    var = np.maximum(m2 - m1 ** 2, 0.0)
    return m1, var, np.maximum(m4 - 4 * m3 * m1 + 6 * m2 * m1 ** 2 - 3 * m1 ** 4, var ** 2)


def model_quantities(sums, first, detector):
    """Model values per row from expected_noise_chain.slot_sums (numpy (n, K, 2, 9), orders=4) and the rows' first
    explicit ticks: the quantities compared and, for the MC's expected sampling errors, the model's variances
    and fourth central moments."""
    dt = detector.adc_tick_us
    s0 = sums[:, 0]
    safe = lambda p: np.maximum(p, 1e-300)  # noqa: E731
    p_pulse, p_tail = s0[:, 0, 0], s0[:, 1, 0]
    hit = p_pulse + p_tail
    adc_mean, adc_var, adc_mu4 = _central([(s0[:, 0, k] + s0[:, 1, k]) / safe(hit) for k in range(1, 5)])
    tau_mean, tau_var, tau_mu4 = _central([s0[:, 0, 4 + k] / safe(p_pulse) for k in range(1, 5)])
    filled = sums[:, :, :, 0].sum(axis=2)
    p_n = -np.diff(np.concatenate([np.ones((len(hit), 1)), filled, np.zeros((len(hit), 1))], axis=1), axis=1)
    n = np.arange(p_n.shape[1])
    n_mean, n_var, n_mu4 = _central([(p_n * n ** k).sum(axis=1) for k in range(1, 5)])
    return dict(hit_probability=hit, adc_mean=128.0 + adc_mean, adc_var=adc_var, adc_mu4=adc_mu4,
                time_mean=(first + tau_mean) * dt, time_var=tau_var * dt ** 2, time_mu4=tau_mu4 * dt ** 4,
                tail_probability=p_tail, tail_time_mean=(first + s0[:, 1, 5] / safe(p_tail)) * dt,
                tail_time_var=np.maximum(s0[:, 1, 6] / safe(p_tail) - (s0[:, 1, 5] / safe(p_tail)) ** 2, 0) * dt ** 2,
                n_samples_mean=n_mean, n_samples_var=n_var, n_samples_mu4=n_mu4)


def _binomial(p, successes, n, name, out):
    p = np.clip(p, 0.0, 1.0)
    well = (n * p >= 5) & (n * (1 - p) >= 5)
    out[name] = dict(rows=np.flatnonzero(well), model=p[well], mc=successes[well] / n,
                     pull=(successes[well] / n - p[well]) / np.sqrt(p[well] * (1 - p[well]) / n))
    rare_hit = ~well & (n * p < 5)
    rare_miss = ~well & ~rare_hit
    out[f"{name}_rare"] = dict(rows_rare_successes=int(rare_hit.sum()),
                               expected_successes=float(np.sum(n * p[rare_hit])),
                               observed_successes=int(np.sum(successes[rare_hit])),
                               rows_rare_failures=int(rare_miss.sum()),
                               expected_failures=float(np.sum(n * (1 - p[rare_miss]))),
                               observed_failures=int(np.sum(n - successes[rare_miss])))


def _moments(name, sums, n_entries, centre, model, min_n, out):
    """Pulls of a mean and (when the model gives its fourth moment) a variance over ``n_entries`` MC entries,
    with the MC's sampling errors expected under the model: sqrt(var / n) for the mean, and for the unbiased
    sample variance s^2 the exact sqrt((mu4 - var^2 (n - 3) / (n - 1)) / n) (errors estimated from the MC
    sample itself collapse with it where nearly all entries are equal)."""
    m1, var, _ = Moments.central(sums, n_entries)
    mean = m1 + centre
    n = np.maximum(n_entries, 2)
    var = var * n / (n - 1)
    err_mean = np.sqrt(model[f"{name}_var"] / n)
    sel = (n_entries >= min_n) & (err_mean > 0)
    out[f"{name}_mean"] = dict(rows=np.flatnonzero(sel), model=model[f"{name}_mean"][sel], mc=mean[sel],
                               pull=(mean[sel] - model[f"{name}_mean"][sel]) / err_mean[sel])
    if f"{name}_mu4" not in model:
        return
    err_var = np.sqrt(np.maximum(model[f"{name}_mu4"] - model[f"{name}_var"] ** 2 * (n - 3) / (n - 1), 0.0) / n)
    sel = (n_entries >= min_n) & (err_var > 0)
    out[f"{name}_var"] = dict(rows=np.flatnonzero(sel), model=model[f"{name}_var"][sel], mc=var[sel],
                              pull=(var[sel] - model[f"{name}_var"][sel]) / err_var[sel])


def compare(model, mom: Moments, min_hits: int = 20):
    """Per-quantity pulls of the model against the MC (dict of arrays over rows)."""
    n = mom.n
    out = {}
    _binomial(model["hit_probability"], mom.hits, n, "hit_probability", out)
    _binomial(model["tail_probability"], mom.tail_hits, n, "tail_probability", out)
    _moments("adc", mom.adc, mom.hits, 128.0, model, min_hits, out)
    _moments("time", mom.time, mom.hits - mom.tail_hits, mom.time_centre, model, min_hits, out)
    _moments("tail_time", mom.tail_time, mom.tail_hits, mom.time_centre, model, min_hits, out)
    _moments("n_samples", mom.count, np.full(len(mom.hits), n), 0.0, model, 1, out)
    return out


def summarise(pulls, total_charge, n_worst: int = 5):
    summary = {}
    for q in QUANTITIES:
        d = pulls[q]
        pull = d["pull"]
        worst = np.argsort(-np.abs(pull))[:n_worst]
        summary[q] = dict(ndf=int(len(pull)), chi2=float(np.sum(pull ** 2)),
                          chi2_ndf=float(np.mean(pull ** 2)) if len(pull) else None,
                          mean_pull=float(np.mean(pull)) if len(pull) else None,
                          worst=[dict(row=int(d["rows"][i]), total_charge_e=float(total_charge[d["rows"][i]]),
                                      model=float(d["model"][i]), mc=float(d["mc"][i]), pull=float(pull[i]))
                                 for i in worst])
    summary["rare_outcomes"] = dict(hit=pulls["hit_probability_rare"], tail=pulls["tail_probability_rare"])
    return summary


def run_sample(name, segs, detector, seeds, n_nodes, fail_reps, min_charge):
    from larnd_diff import ops
    from larnd_diff.sim.expected_noise_chain import slot_sums

    t0 = time.time()
    charges = reference_charge(segs, detector)
    n_all = sum(len(c) for c in charges)
    kept = [c.sum(axis=1) >= min_charge for c in charges]
    charges = [c[k] for c, k in zip(charges, kept) if k.any()]
    n_rows = sum(len(c) for c in charges)
    print(f"[{name}] {len(charges)} chunks, {n_all} pixel rows, {n_rows} with >= {min_charge} e- "
          f"({time.time() - t0:.0f} s)", flush=True)
    nb = ops.get_backend("numpy")
    models, moms, t_model, t_mc = [], [], 0.0, 0.0
    for c in charges:
        last = int(np.max(np.nonzero(np.any(c != 0, axis=0))[0], initial=0)) + 25
        t1 = time.time()
        sums, win, _ = slot_sums(nb.asarray(c[:, :last], "float64"), detector, n_nodes=n_nodes, orders=4)
        models.append(model_quantities(ops.to_numpy(sums), win.first, detector))
        t_model += time.time() - t1
        t1 = time.time()
        moms.append(reference_monte_carlo(c, detector, seeds, np.nan_to_num(models[-1]["time_mean"]), win.last))
        t_mc += time.time() - t1
        print(f"[{name}] chunk of {len(c)} rows: model {t_model:.0f} s, MC {t_mc:.0f} s", flush=True)
    model = {k: np.concatenate([m[k] for m in models]) for k in models[0]}
    mom = Moments.merge(moms)
    total = np.concatenate([c.sum(axis=1) for c in charges])
    result = dict(sample=name, n_rows_all=n_all, n_rows=n_rows, min_charge_e=min_charge, n_seeds=len(seeds),
                  n_nodes=n_nodes, model_s=t_model, mc_s=t_mc, rows_with_hits_in_mc=int(np.sum(mom.hits > 0)),
                  summary=summarise(compare(model, mom), total))
    if fail_reps:
        fee = detector.electronics
        stored = hidden = after = 0
        n_real = 0
        clone_samples = 0.0
        for c in charges:
            s, h, a = failure_counts(np.ascontiguousarray(c), detector.n_ticks_event, fail_reps, 12345,
                                     fee.threshold_e, fee.integration_ticks(detector.t_sampling), fee.reset_noise_e,
                                     fee.uncorrelated_noise_e, fee.max_adc_values)
            stored += int(np.sum(s > 0))
            hidden += int(np.sum(h > 0))
            after += int(np.sum((a > 0)))
            n_real += s.size
            clone_samples += float(np.sum(s)) / fail_reps
        result["failures"] = dict(
            realisations=n_real, with_samples=stored,
            hidden_failure_before_a_stored_sample=hidden / n_real,
            hidden_failure_given_samples=hidden / max(stored, 1),
            failure_after_last_sample=after / n_real,
            samples_clone=clone_samples, samples_model=float(np.sum(model["n_samples_mean"])),
            samples_reference_mc=float(np.sum(mom.count[:, 0]) / mom.n),
            note="row-realisations of a re-implemented front end (xorshift64* normals) that counts failed "
                 "conversions; readout_log_likelihood neglects the 'hidden' ones (their paths' probability is "
                 "missing from the factor of the sample after them)")
    return result


def markdown(results):
    lines = ["| quantity | " + " | ".join(f"{r['sample']} chi2/ndf (ndf)" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for q in QUANTITIES:
        cells = []
        for r in results:
            s = r["summary"][q]
            cells.append("–" if s["chi2_ndf"] is None else f"{s['chi2_ndf']:.2f} ({s['ndf']})")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--mixed-events", type=int, nargs="*", default=[0, 1, 2],
                    help="indices of the mixed sample's events to use (sorted eventIDs)")
    ap.add_argument("--skip-muons", action="store_true")
    ap.add_argument("--failure-reps", type=int, default=200)
    ap.add_argument("--min-charge", type=float, default=500.0,
                    help="rows with less total charge (e-) are left out (P_hit < 1e-9 by the model)")
    ap.add_argument("--out", default=str(RESULTS / "noise_model_validation.json"))
    args = ap.parse_args(argv)

    from larnd_diff.detector import module0
    from larnd_diff.sim.expected_noise import NOISE_NODES

    det = module0()
    n_nodes = args.nodes or NOISE_NODES
    seeds = list(range(1, args.seeds + 1))
    results = []
    if not args.skip_muons:
        results.append(run_sample("muons", muon_sample(), det, seeds, n_nodes, args.failure_reps, args.min_charge))
    if args.mixed_events:
        res = run_sample("mixed", mixed_sample(args.mixed_events), det, seeds, n_nodes, args.failure_reps,
                         args.min_charge)
        res["mixed_events"] = args.mixed_events
        results.append(res)
    table = markdown(results)
    print(table)
    out = dict(command="python benchmarks/validate_noise_model.py " + " ".join(argv or __import__("sys").argv[1:]),
               results=results, table=table)
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
