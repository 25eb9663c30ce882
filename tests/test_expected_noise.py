"""Expected-noise front end (larnd_diff.sim.expected_noise) against the reference's noisy front end.

* expected_readout vs a Monte-Carlo average of the reference ``front_end`` (noise on) on hand-made waveforms:
  well above threshold, near threshold, sub-threshold with a long flat tail, a slow pulse giving several samples;
  tolerances from the MC's sampling errors expected under the model;
* readout_log_likelihood: the probabilities of all outcomes of a tiny case sum to one, equal an independent
  brute-force integral, and match the MC frequency of the most common pattern;
* the small closed forms (ADC moments, tail tick moments, log of a normal interval) against direct sums;
* every backend: same values as numpy (float64; float32 to its precision), gradients vs central finite
  differences in float64, no NaN (empty rows, zero waveforms, no stored ticks, impossible patterns, NaN ticks).
"""
from __future__ import annotations

import math

import eagerpy as ep
import numpy as np
import pytest
from scipy.special import log_ndtr as scipy_log_ndtr

from larnd_diff import ops
from larnd_diff.detector import module0
from larnd_diff.sim import expected_noise as en

DET = module0()
FEE = DET.electronics
DIFFERENTIABLE = ("torch", "jax", "tensorflow")
TOTAL = 1000          # ticks the front end runs over in these tests (6003 in larnd-sim; the tail is analytic)


def pulse(total_e, start, width, n_ticks=300):
    q = np.zeros(n_ticks)
    q[start:start + width] = total_e / width
    return q


def reference_mc(charge, reps, n_seeds, total_ticks=TOTAL):
    """Reference front end, noise on: (ticks, adc) of shape (reps * n_seeds, n_rows, 10), -1 / NaN empty."""
    from larnd_diff.reference.electronics import E_CHARGE, digitize, front_end
    from larnd_diff.reference.rng import create_streams, n_streams

    dt = DET.t_sampling
    wf = np.ascontiguousarray(np.tile(charge, (reps, 1)) * E_CHARGE / dt)
    ticks, adcs = [], []
    for seed in range(1, n_seeds + 1):
        state = create_streams(n_streams(len(wf)), np.uint64(seed))
        q, t, _ = front_end(wf, total_ticks, dt, FEE.threshold_e, FEE.integration_ticks(dt), FEE.max_adc_values,
                            FEE.reset_noise_e, FEE.uncorrelated_noise_e, state, True)
        ticks.append(t.reshape(reps, len(charge), -1))
        adcs.append(np.where(t >= 0, digitize(np.where(t >= 0, q, 0.0), FEE), np.nan).reshape(reps, len(charge), -1))
    return np.concatenate(ticks), np.concatenate(adcs)


def tensor(backend, a, dtype="float64"):
    return ops.get_backend(backend).asarray(np.asarray(a), dtype)


def numpy_of(t):
    return ops.to_numpy(t)


# ---------------------------------------------------------------------------------------------- vs Monte Carlo
MC_WAVEFORMS = {"above": pulse(20000, 50, 10), "near": pulse(7500, 50, 10), "tail": pulse(5000, 50, 5),
                "slow": pulse(18000, 40, 150)}


@pytest.fixture(scope="module")
def mc_case():
    charge = np.stack(list(MC_WAVEFORMS.values()))
    ticks, adc = reference_mc(charge, reps=1000, n_seeds=4)
    er = en.expected_readout(tensor("numpy", charge), DET, total_ticks=TOTAL, max_samples=3)
    return charge, ticks, adc, {k: numpy_of(getattr(er, k)) for k in er._fields}


def _pull_mean(values, mean, var):
    n = len(values)
    return (np.mean(values) - mean) / math.sqrt(max(var, 1e-12) / n)


def test_expected_readout_vs_reference_monte_carlo(mc_case):
    charge, ticks, adc, m = mc_case
    n = ticks.shape[0]
    dt = DET.adc_tick_us
    for r, name in enumerate(MC_WAVEFORMS):
        for k in range(3):
            filled = ticks[:, r, k] >= 0
            p = m["filled"][r, k]
            err = math.sqrt(max(p * (1 - p), 1.0 / n) / n)
            assert abs(filled.mean() - p) < 4.5 * err, (name, k, filled.mean(), p)
            if filled.sum() < 50:
                continue
            a, t = adc[filled, r, k], ticks[filled, r, k] * dt
            assert abs(_pull_mean(a, m["adc_mean"][r, k], m["adc_var"][r, k])) < 4.5, (name, k, a.mean())
            assert abs(a.var() / m["adc_var"][r, k] - 1) < 4.5 * math.sqrt(2.0 / len(a)) + 0.02, (name, k, a.var())
            if name != "tail":   # tail triggers: heavy-tailed times (checked by their mean only)
                assert abs(_pull_mean(t, m["time_mean"][r, k], m["time_var"][r, k])) < 4.5, (name, k, t.mean())
    counts = (ticks >= 0).sum(axis=2)
    for r, name in enumerate(MC_WAVEFORMS):
        err = math.sqrt(max(m["n_samples_var"][r], 1.0 / n) / n)
        assert abs(counts[:, r].mean() - m["n_samples_mean"][r]) < 4.5 * err, name
    # the cases cover what they claim
    assert m["hit_probability"][0] > 0.999 and 0.3 < m["hit_probability"][1] < 0.95
    assert 0.01 < m["hit_probability"][2] < 0.3 and m["filled"][3, 1] > 0.5


def test_tail_trigger_time_vs_monte_carlo(mc_case):
    """Sub-threshold row: its hits are noise triggers in the flat tail, their mean time from the truncated
    geometric law per baseline node."""
    _, ticks, _, m = mc_case
    t = ticks[:, 2, 0]
    t = t[t >= 0] * DET.adc_tick_us
    assert len(t) > 100
    assert abs(_pull_mean(t, m["time_mean"][2, 0], m["time_var"][2, 0])) < 4.5
    assert t.max() > 20.0          # noise triggers well after the pulse (tick 55), as the model's tail has


def _track(start, end, n, dedx):
    from larnd_diff.io import SEGMENT_DTYPE

    pts = np.asarray(start, float) + np.linspace(0, 1, n + 1)[:, None] * (np.asarray(end, float) - start)
    seg = np.zeros(n, SEGMENT_DTYPE)
    for i, ax in enumerate("xyz"):
        seg[f"{ax}_start"], seg[f"{ax}_end"] = pts[:-1, i], pts[1:, i]
        seg[ax] = 0.5 * (pts[:-1, i] + pts[1:, i])
    seg["dx"] = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    seg["dEdx"] = dedx
    seg["dE"] = dedx * seg["dx"]
    return seg


def test_expected_readout_vs_noisy_reference_forward():
    """The whole noisy reference forward (``reference.simulate(noise=True)``, 64 seeds) on a short track: per
    pixel, the hit frequency, the first sample's mean ADC and mean time (us, from the Hits) and the mean number of
    samples against expected_readout of the noiseless waveforms (``return_waveforms``): checks the conventions
    between them (charge units, time = tick x 600/6003 us, ADC, rows by pixel) besides the noise model.
    Pixels of 23, 17, 14, 9.9, 8.3 and 4.8 ke: hit probabilities 1, 1, 1, 0.999, 0.92 and 0.017 (the rest 0),
    1.75 samples on average on the first."""
    from larnd_diff.reference import simulate
    from larnd_diff.reference.electronics import E_CHARGE

    seg = _track([0.1, -20.1, -27.0], [1.6, -19.4, -24.0], 8, 0.7)
    _, waves = simulate(seg, detector=DET, return_waveforms=True)
    assert len(waves) == 1
    charge = waves[0].waveforms * DET.t_sampling / E_CHARGE
    row_of = {tuple(p): r for r, p in enumerate(waves[0].pixels.tolist())}
    er = en.expected_readout(tensor("numpy", charge), DET)
    m = {k: numpy_of(getattr(er, k)) for k in er._fields}
    n_seeds = 64
    n_rows = len(charge)
    hits = np.zeros(n_rows)
    adc_sum, time_sum, count_sum = np.zeros(n_rows), np.zeros(n_rows), np.zeros(n_rows)
    for seed in range(1, n_seeds + 1):
        h = simulate(seg, detector=DET, noise=True, seed=seed).numpy()
        rows = [row_of[tuple(p)] for p in np.asarray(h.pixel).tolist()]
        assert len(set(rows)) == len(rows)                 # one chunk: one hit row per pixel
        filled = np.isfinite(np.asarray(h.time))
        for i, r in enumerate(rows):
            hits[r] += filled[i, 0]
            adc_sum[r] += h.adc[i, 0]
            time_sum[r] += h.time[i, 0]
            count_sum[r] += filled[i].sum()
    p = m["hit_probability"]
    assert np.sum(p > 0.99) >= 4 and np.any((p > 0.5) & (p < 0.95)) and np.any((p > 0.005) & (p < 0.05))
    assert np.max(m["n_samples_mean"]) > 1.5                              # the case covers what it claims
    pulls = []
    for r in range(n_rows):
        err = math.sqrt(max(p[r] * (1 - p[r]), 1.0 / n_seeds) / n_seeds)
        pulls.append((hits[r] / n_seeds - p[r]) / err)
        count_err = math.sqrt(max(m["n_samples_var"][r], 1.0 / n_seeds) / n_seeds)
        pulls.append((count_sum[r] / n_seeds - m["n_samples_mean"][r]) / count_err)
        if hits[r] >= 20:
            k = hits[r]
            pulls.append((adc_sum[r] / k - m["adc_mean"][r, 0]) / math.sqrt(max(m["adc_var"][r, 0], 1e-6) / k))
            pulls.append((time_sum[r] / k - m["time_mean"][r, 0]) / math.sqrt(max(m["time_var"][r, 0], 1e-8) / k))
    pulls = np.asarray(pulls)
    assert np.max(np.abs(pulls)) < 4.5, pulls
    assert np.mean(pulls ** 2) < 3.0, np.mean(pulls ** 2)


# ---------------------------------------------------------------------------------------------- likelihood
TINY_TOTAL = 120


def _all_single_patterns(n_ticks):
    ticks, adcs = np.meshgrid(np.arange(n_ticks), np.arange(81, 257), indexing="ij")
    obs_t = np.full((ticks.size, 2), -1, np.int64)
    obs_a = np.full((ticks.size, 2), np.nan)
    obs_t[:, 0], obs_a[:, 0] = ticks.ravel(), adcs.ravel()
    return obs_t, obs_a


def test_likelihood_sums_to_one_over_outcomes():
    """9 ke in 5 ticks, 120 ticks of readout: at most one sample, nothing can trigger after it. The
    probabilities of 'no sample' and of every (tick, count) of one sample add up to one."""
    q = pulse(9000, 30, 5, n_ticks=60)
    obs_t, obs_a = _all_single_patterns(TINY_TOTAL)
    rows = np.tile(q, (len(obs_t) + 1, 1))
    obs_t = np.concatenate([obs_t, np.full((1, 2), -1)])
    obs_a = np.concatenate([obs_a, np.full((1, 2), np.nan)])
    ll = numpy_of(en.readout_log_likelihood(tensor("numpy", rows), DET, obs_t, obs_a, total_ticks=TINY_TOTAL,
                                            outlier_probability=0.0))
    assert np.all(np.isfinite(ll))
    assert abs(np.exp(ll).sum() - 1.0) < 2e-5


def _brute_force_single(q, n, adc, total, sigma_r=900.0, n_grid=20001):
    """P(first sample at tick n with count adc, nothing after) by a fine integral over the baseline (plain
    numpy, independent of the module); 'nothing after' = no trigger on noise alone (probability ~1e-14 here)."""
    thr, sd = FEE.threshold_e, FEE.uncorrelated_noise_e
    r = np.linspace(-8 * sigma_r, 8 * sigma_r, n_grid)
    w = np.exp(-0.5 * (r / sigma_r) ** 2)
    w /= w.sum()
    c = np.cumsum(np.concatenate([q, np.zeros(total - len(q))]))
    z = (thr - r[:, None] - c[None, :n + 1]) / sd
    log_p = scipy_log_ndtr(z[:, :n]).sum(axis=1) + scipy_log_ndtr(-z[:, n])
    alpha = FEE.gain_mv_per_e * FEE.adc_counts / (FEE.v_ref_mv - FEE.v_cm_mv)
    beta = (FEE.v_pedestal_mv - FEE.v_cm_mv) * FEE.adc_counts / (FEE.v_ref_mv - FEE.v_cm_mv)
    lo = max(thr, (adc - 0.5 - beta) / alpha)
    hi = (adc + 0.5 - beta) / alpha
    mean = r + c[min(n + 18, total - 1)] + (q[n] if n < len(q) else 0.0)
    from scipy.special import ndtr

    p_adc = ndtr((hi - mean) / sd) - ndtr((lo - mean) / sd)
    return float(np.sum(w * np.exp(log_p) * p_adc))


@pytest.mark.parametrize("n_nodes, tol_pulse, tol_tail", [(en.NOISE_NODES, 1e-5, 5e-3), (80, 1e-5, 2e-5)])
def test_likelihood_equals_brute_force_integral(n_nodes, tol_pulse, tol_tail):
    """Samples on the pulse (probabilities 0.006-0.24) and noise hits in the tail (2e-5, 1e-7): the tail's
    baseline integrand is a narrow step, the quadrature's error there 0.2 % at 40 nodes."""
    q = pulse(9000, 30, 5, n_ticks=60)
    cases = [(33, 85), (32, 85), (34, 85), (33, 87), (34, 82), (45, 81), (100, 81)]
    obs_t = np.full((len(cases), 1), -1, np.int64)
    obs_a = np.full((len(cases), 1), np.nan)
    for i, (n, a) in enumerate(cases):
        obs_t[i, 0], obs_a[i, 0] = n, a
    ll = numpy_of(en.readout_log_likelihood(tensor("numpy", np.tile(q, (len(cases), 1))), DET, obs_t, obs_a,
                                            total_ticks=TINY_TOTAL, outlier_probability=0.0, n_nodes=n_nodes))
    for (n, a), value in zip(cases, ll):
        exact = _brute_force_single(q, n, a, TINY_TOTAL)
        tol = tol_pulse if n < 40 else tol_tail
        assert exact > 1e-8 and abs(np.exp(value) / exact - 1) < tol, (n, a, np.exp(value), exact)


def test_likelihood_vs_monte_carlo_frequency():
    q = pulse(9000, 30, 5, n_ticks=60)
    ticks, adc = reference_mc(q[None, :], reps=2000, n_seeds=2, total_ticks=TINY_TOTAL)
    one = (ticks[:, 0, 0] >= 0) & (ticks[:, 0, 1] < 0)
    keys, counts = np.unique(np.stack([ticks[one, 0, 0], adc[one, 0, 0]], axis=1), axis=0, return_counts=True)
    obs_t = np.full((3, 1), -1, np.int64)
    obs_a = np.full((3, 1), np.nan)
    top = np.argsort(-counts)[:3]
    obs_t[:, 0], obs_a[:, 0] = keys[top, 0], keys[top, 1]
    ll = numpy_of(en.readout_log_likelihood(tensor("numpy", np.tile(q, (3, 1))), DET, obs_t, obs_a,
                                            total_ticks=TINY_TOTAL, outlier_probability=0.0))
    n = ticks.shape[0]
    for p, c in zip(np.exp(ll), counts[top]):
        assert abs(c / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (c / n, p)


# ---------------------------------------------------------------------------------------------- closed forms
def test_adc_moments_equal_direct_sums():
    from scipy.special import ndtr

    alpha, beta = en.adc_scale(FEE)
    means = np.array([6000.0, 6900.0, 7300.0, 12345.0, 90000.0, 178000.0, 185000.0])
    p_store, p_fail, moments, ref = en.adc_moments(tensor("numpy", means), FEE, 500.0, orders=3)
    counts = np.arange(81, 257)
    lo, hi = en.adc_count_bounds_e(counts, FEE)
    for i, m in enumerate(means):
        p = ndtr((hi - m) / 500.0) - ndtr((lo - m) / 500.0)
        r = numpy_of(ref)[i]
        assert abs(numpy_of(p_store)[i] - p.sum()) < 1e-12
        assert abs(numpy_of(p_store)[i] + numpy_of(p_fail)[i] - 1) < 1e-12
        for k in range(3):
            assert abs(numpy_of(moments[k])[i] - np.sum(p * (counts - r) ** (k + 1))) < 1e-9, (m, k)
    assert np.isclose(alpha * FEE.threshold_e + beta, 80.949, atol=1e-3)


def test_log_adc_count_probability_in_the_tails():
    from scipy.special import log_ndtr

    lo, hi = en.adc_count_bounds_e(np.array([81.0, 100.0, 256.0]), FEE)
    assert np.isinf(hi[2]) and lo[0] == FEE.threshold_e
    for mean in (-50000.0, 7000.0, 26000.0, 400000.0):
        got = numpy_of(en.log_adc_count_probability(tensor("numpy", np.full(2, mean)), lo[:2], hi[:2], 500.0))
        for j in range(2):
            a, b = (lo[j] - mean) / 500.0, (hi[j] - mean) / 500.0
            expect = log_ndtr(-a) + np.log1p(-np.exp(log_ndtr(-b) - log_ndtr(-a))) if a > 0 else \
                log_ndtr(b) + np.log1p(-np.exp(log_ndtr(a) - log_ndtr(b)))
            assert abs(got[j] - expect) < 1e-9 * max(1.0, abs(expect)), (mean, j)
    assert np.all(np.isnan(en.adc_count_bounds_e(np.array([80.0, 257.0, 90.5]), FEE)[0]))


@pytest.mark.parametrize("p", [0.0, 1e-9, 1e-4, 0.05, 0.7, 1 - 1e-12])
@pytest.mark.parametrize("n", [1, 7, 1000, 6000])
def test_tail_trigger_tick_moments_equal_direct_sums(p, n):
    log_p = np.log1p(-p)
    m = np.arange(n)
    w = np.exp(m * log_p) * p if p > 0 else np.ones(n)
    if w.sum() == 0:
        w = np.exp((m - 0) * log_p)
    w = w / w.sum()
    mean, var = en.tail_trigger_tick_moments(tensor("numpy", np.array([log_p])), tensor("numpy", np.array([n * 1.0])))
    expect_mean = np.sum(w * m)
    expect_var = np.sum(w * (m - expect_mean) ** 2)
    assert abs(numpy_of(mean)[0] - expect_mean) < 1e-6 * max(1.0, expect_mean)
    assert abs(numpy_of(var)[0] - expect_var) < 1e-6 * max(1.0, expect_var)


def test_log1mexp_accuracy():
    x = np.array([-1e-300, -1e-12, -1e-5, -0.3, -0.7, -2.0, -40.0, -800.0])
    got = numpy_of(en.log1mexp(tensor("numpy", x)))
    expect = np.log(-np.expm1(np.maximum(x, -700)))
    expect[-1] = 0.0
    assert np.allclose(got[1:], expect[1:], rtol=1e-12)
    assert got[0] == pytest.approx(math.log(1e-30))        # clipped at -1e-30: finite


# ---------------------------------------------------------------------------------------------- every backend
GRAD_T, GRAD_TOTAL = 80, 300


def _grad_case():
    """Three rows: above threshold with its sample, near threshold without one, sub-threshold with a tail hit."""
    q = np.stack([pulse(15000, 20, 6, GRAD_T), pulse(6800, 20, 8, GRAD_T), pulse(4500, 20, 4, GRAD_T)])
    obs_t = np.array([[22, -1], [-1, -1], [150, -1]])
    obs_a = np.array([[93.0, np.nan], [np.nan, np.nan], [82.0, np.nan]])
    return q, obs_t, obs_a


def _ll_sum(t, obs_t, obs_a):
    return ep.sum(en.readout_log_likelihood(t, DET, obs_t, obs_a, total_ticks=GRAD_TOTAL))


def _readout_sum(t):
    er = en.expected_readout(t, DET, total_ticks=GRAD_TOTAL, max_samples=2)
    return ep.sum(er.hit_probability) + 0.1 * ep.sum(er.adc_mean[:, 0]) + ep.sum(er.time_mean[:, 0]) + \
        ep.sum(er.n_samples_var)


def _fd(f, q, ticks, h=0.5):
    out = []
    for r, k in ticks:
        up, down = q.copy(), q.copy()
        up[r, k] += h
        down[r, k] -= h
        out.append((f(up) - f(down)) / (2 * h))
    return np.array(out)


FD_TICKS = [(0, 20), (0, 23), (1, 22), (1, 27), (2, 21), (2, 23), (0, 40)]


@pytest.fixture(scope="module")
def fd_reference():
    q, obs_t, obs_a = _grad_case()
    f_ll = lambda a: float(numpy_of(_ll_sum(tensor("numpy", a), obs_t, obs_a)).item())  # noqa: E731
    f_ro = lambda a: float(numpy_of(_readout_sum(tensor("numpy", a))).item())  # noqa: E731
    return dict(ll=(f_ll(q), _fd(f_ll, q, FD_TICKS)), readout=(f_ro(q), _fd(f_ro, q, FD_TICKS)))


def test_gradients_vs_finite_differences(backend, fd_reference):
    if backend not in DIFFERENTIABLE:
        pytest.skip("numpy is forward-only")
    q, obs_t, obs_a = _grad_case()
    b = ops.get_backend(backend)
    for name, fn in (("ll", lambda p: _ll_sum(p["q"], obs_t, obs_a)), ("readout", lambda p: _readout_sum(p["q"]))):
        value, grads = b.value_and_grad(fn, {"q": b.asarray(q, "float64")})
        g = numpy_of(grads["q"])
        assert np.all(np.isfinite(g))
        ref_value, ref_fd = fd_reference[name]
        assert abs(float(numpy_of(value)) - ref_value) < 1e-9 * max(1.0, abs(ref_value))
        got = np.array([g[r, k] for r, k in FD_TICKS])
        assert np.allclose(got, ref_fd, rtol=2e-4, atol=1e-7), (name, got, ref_fd)


def _degenerate_case():
    q = np.zeros((6, 40))
    q[1, 5] = np.nan                         # NaN tick counts as zero charge
    q[2, 10:14] = 3000.0                     # 12 ke: a sample expected...
    q[3, 10:14] = 3000.0
    q[5, 0:4] = 4000.0
    obs_t = np.full((6, 3), -1, np.int64)
    obs_a = np.full((6, 3), np.nan)
    obs_t[0, 0], obs_a[0, 0] = 30, 90.0      # a hit where there is no charge: only the outlier floor
    obs_t[3, :2], obs_a[3, :2] = [12, 20], [95.0, 95.0]    # impossible: closer than 21 ticks
    obs_t[5, 0], obs_a[5, 0] = 3, 40.0       # impossible count
    return q, obs_t, obs_a


def test_no_nan_and_outlier_floor(backend):
    q, obs_t, obs_a = _degenerate_case()
    b = ops.get_backend(backend)
    ll = numpy_of(en.readout_log_likelihood(tensor(backend, q), DET, obs_t, obs_a, total_ticks=200))
    assert np.all(np.isfinite(ll))
    floor = math.log(1e-6) - math.log(200 * 176)
    assert abs(ll[0] - floor) < 1e-6 and abs(ll[3] - (floor - math.log(200 * 176))) < 1e-6
    assert ll[1] > -1e-6 and ll[4] > -1e-6   # zero charge, no hit: certain
    assert ll[2] < -5                        # 12 ke and no hit: the model says unlikely
    er = en.expected_readout(tensor(backend, q), DET, total_ticks=200)
    for name in er._fields:
        assert np.all(np.isfinite(numpy_of(getattr(er, name)))), name
    empty = en.readout_log_likelihood(tensor(backend, np.zeros((2, 0))), DET, np.full((2, 1), -1),
                                      np.full((2, 1), np.nan), total_ticks=100)
    assert np.allclose(numpy_of(empty), 0.0, atol=1e-6)
    if backend in DIFFERENTIABLE:
        clean = np.nan_to_num(q)
        for fn in (lambda p: ep.sum(en.readout_log_likelihood(p["q"], DET, obs_t, obs_a, total_ticks=200)),
                   lambda p: ep.sum(en.expected_readout(p["q"], DET, total_ticks=200).adc_var)):
            _, grads = b.value_and_grad(fn, {"q": b.asarray(clean, "float64")})
            assert np.all(np.isfinite(numpy_of(grads["q"])))


def test_backends_agree_with_numpy_and_float32(backend):
    q, obs_t, obs_a = _grad_case()
    ref = numpy_of(en.readout_log_likelihood(tensor("numpy", q), DET, obs_t, obs_a, total_ticks=GRAD_TOTAL))
    got = numpy_of(en.readout_log_likelihood(tensor(backend, q), DET, obs_t, obs_a, total_ticks=GRAD_TOTAL))
    assert np.allclose(got, ref, rtol=1e-10, atol=1e-10)
    got32 = numpy_of(en.readout_log_likelihood(tensor(backend, q, "float32"), DET, obs_t, obs_a,
                                               total_ticks=GRAD_TOTAL))
    assert got32.dtype == np.float32 and np.allclose(got32, ref, rtol=2e-4, atol=2e-4)
    er = en.expected_readout(tensor(backend, q, "float32"), DET, total_ticks=GRAD_TOTAL, max_samples=2)
    er64 = en.expected_readout(tensor("numpy", q), DET, total_ticks=GRAD_TOTAL, max_samples=2)
    assert np.allclose(numpy_of(er.hit_probability), numpy_of(er64.hit_probability), atol=2e-5)
    assert np.allclose(numpy_of(er.time_mean), numpy_of(er64.time_mean), rtol=1e-4, atol=1e-3)


def test_observed_samples_matches_rows_by_event_and_pixel():
    from larnd_diff.hits import Hits

    dt = DET.adc_tick_us
    time = np.full((3, 10), np.nan)
    adc = np.full((3, 10), np.nan)
    time[0, :2], adc[0, :2] = [35 * dt, 70 * dt], [90.0, 85.0]
    time[1, 0], adc[1, 0] = 12 * dt, 100.0
    time[2, 0], adc[2, 0] = 50 * dt, 81.0
    hits = Hits(event_id=np.array([0, 1, 2]), pixel=np.array([[1, 2], [1, 2], [7, 7]]), adc=adc, time=time)
    rows = np.array([[1, 2], [5, 5], [1, 2]])
    events = np.array([0, 0, 1])
    obs_t, obs_a, unmatched = en.observed_samples(hits, rows, events, DET)
    assert unmatched == 1
    assert obs_t[0, :3].tolist() == [35, 70, -1] and obs_a[0, 1] == 85.0
    assert np.all(obs_t[1] == -1) and np.all(np.isnan(obs_a[1]))
    assert obs_t[2, 0] == 12 and obs_a[2, 0] == 100.0


def test_plan_of_observed_cycles():
    """Restarts 21 ticks after each sample; no open cycle after the tenth sample (the front end stops);
    impossible patterns flagged."""
    from larnd_diff.sim import expected_noise_plan as plan_mod

    q = np.zeros((4, 400))
    q[:, 10:300] = 400.0
    win = plan_mod.row_windows(q, 1000)
    ticks = np.full((4, 11), -1)
    ticks[0, :10] = 20 + 25 * np.arange(10)
    ticks[1, :2] = [20, 40]                   # closer than 21 ticks
    ticks[2, :11] = 20 + 25 * np.arange(11)   # an eleventh sample
    ticks[3, :1] = [5]
    cycles, possible = plan_mod.observed_cycles(win, ticks, max_samples=10)
    assert possible.tolist() == [True, False, False, True]
    obs = cycles.trigger >= 0
    assert cycles.start[obs][:10].tolist() == [0] + (ticks[0, :9] + 21).tolist()
    end = ~obs
    assert cycles.start[end][0] == 1000 and cycles.length[end][0] == 0 and cycles.tail[end][0] == 0
    assert cycles.start[end][3] == 26 and cycles.head[obs][-1] == 5    # head ticks 0-4 before the sample at 5
