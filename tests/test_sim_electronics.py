"""Front-end electronics (larnd_diff.sim.electronics) against the larnd-sim front end.

* a scalar, tick-by-tick model of the reference front end written in this file (the steps of the module docstring
  of larnd_diff/sim/electronics.py),
  compared exactly on synthetic waveforms (threshold, double count, dead ticks, failed conversions, NaN,
  10-sample cap, truncated window, padded inputs);
* the real larnd-sim waveforms of test_inputs chunks 0 and 1 (../shared/reference): trigger ticks, converted
  charges and ADC values;
* the ADC modes: straight-through = round forward, continuous gradient;
* the smooth preset: forward equal to hard, gradients vs central finite differences and across backends;
* jax.jit traces once; noise is seeded and statistically sensible.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.detector import module0
from larnd_diff.sim.config import HARD, SMOOTH
from larnd_diff.sim.electronics import digitize, electronics

DET = module0()
FEE = DET.electronics
THR = FEE.threshold_e
WINDOW = FEE.integration_ticks(DET.t_sampling)
E_CHARGE = 1.602e-19
DIFFERENTIABLE = ("torch", "jax", "tensorflow")


# ---------------------------------------------------------------------------------------------- helpers
def tensor(backend, array, dtype="float64"):
    return ops.get_backend(backend).asarray(np.asarray(array), dtype)


def run(backend, waveforms, relaxation=HARD, **kw):
    """electronics on a numpy (n_rows, n_ticks) array; numpy outputs.

    On jax, small inputs are padded to (64, 1024) with ``active_ticks`` marking the real length (exercising
    it), so that eager jax compiles each op for one shape only instead of once per test.
    """
    n_rows, n_ticks = waveforms.shape
    active = kw.pop("active_ticks", None)
    if backend == "jax" and n_rows <= 64 and n_ticks <= 1024 and not kw.get("noise") and \
            (active is None or isinstance(active, int)):
        padded = np.zeros((64, 1024))
        padded[:n_rows, :n_ticks] = waveforms
        waveforms, active = padded, min(n_ticks, n_ticks if active is None else active)
    out = electronics(tensor(backend, waveforms), DET, relaxation, active_ticks=active, **kw)
    return tuple(ops.to_numpy(o)[:n_rows] for o in out)


def scalar_front_end(w, active=None, dead_success=2, dead_fail=1):
    """Tick-by-tick model of larnd-sim fee.py without noise: list of (trigger tick, charge e-, crossing n*)."""
    n_ticks = len(w) if active is None else min(active, len(w))
    samples, n, acc = [], 0, 0.0
    while n < n_ticks:
        acc += w[n]
        if not acc >= THR:          # NaN never triggers
            n += 1
            continue
        trigger, before = n, acc - w[n]
        last = min(trigger + WINDOW, n_ticks - 1)
        for m in range(trigger, last + 1):
            acc += w[m]
        n = last + 1
        if acc < THR:               # failed conversion (NaN is stored)
            n += dead_fail
            acc = 0.0
            continue
        if len(samples) == FEE.max_adc_values:
            break
        fraction = (THR - before) / w[trigger] if w[trigger] > 0 else 1.0
        samples.append((trigger, acc, trigger - 1 + min(max(fraction, 0.0), 1.0)))
        acc = 0.0
        n += dead_success
    return samples


def scalar_digitize(q):
    millivolts = max(q * FEE.gain_mv_per_e + FEE.v_pedestal_mv - FEE.v_cm_mv, 0.0)
    v = millivolts * FEE.adc_counts / (FEE.v_ref_mv - FEE.v_cm_mv)
    return min(float(np.round(v)), 256.0)


def expected_arrays(waveforms, active=None):
    n_rows = len(waveforms)
    tick = np.full((n_rows, 10), -1)
    charge = np.full((n_rows, 10), np.nan)
    for r, w in enumerate(waveforms):
        for k, (t, q, _) in enumerate(scalar_front_end(w, active)):
            tick[r, k], charge[r, k] = t, q
    return tick, charge


def ticks_of(time):
    return np.where(np.isnan(time), -1, np.round(time / DET.adc_tick_us)).astype(int)


def assert_matches_scalar(backend, waveforms, active=None, **kw):
    adc, time, charge = run(backend, waveforms, active_ticks=active, **kw)
    exp_tick, exp_charge = expected_arrays(waveforms, active)
    np.testing.assert_array_equal(ticks_of(time), exp_tick)
    filled = exp_tick >= 0
    np.testing.assert_array_equal(np.isnan(charge) & filled, np.isnan(exp_charge) & filled)
    np.testing.assert_allclose(charge[filled], exp_charge[filled], rtol=1e-12, atol=1e-6)
    assert np.isnan(charge[~filled]).all() and np.isnan(adc[~filled]).all() and np.isnan(time[~filled]).all()
    exp_adc = np.array([scalar_digitize(q) if not np.isnan(q) else np.nan for q in exp_charge[filled]])
    np.testing.assert_array_equal(adc[filled], exp_adc)
    return adc, time, charge


def pulse_train(n_ticks, pulses):
    w = np.zeros(n_ticks)
    for tick, q in pulses:
        w[tick] += q
    return w


# ---------------------------------------------------------------------------------------------- closed forms
def test_digitize_closed_forms(backend):
    q = tensor(backend, [0.0, 7000.0, 179_000.0, 1e6, -1e6])
    np.testing.assert_array_equal(ops.to_numpy(digitize(q, FEE)), [74, 81, 255, 256, 0])
    cont = ops.to_numpy(digitize(q, FEE, "continuous"))
    np.testing.assert_allclose(cont[:2], [(580 - 288) * 256 / 1012, (28 + 292) * 256 / 1012], rtol=1e-14)
    assert cont[3] == 256 and cont[4] == 0


def _digitize_probe_charges():
    """Charges across the whole ADC range: negative (clip at 0), around the threshold, ties of the unrounded
    value (x.5), random values and saturation (clip at 256)."""
    def charge_for(value):
        return (value * (FEE.v_ref_mv - FEE.v_cm_mv) / FEE.adc_counts - 292.0) / FEE.gain_mv_per_e
    rng = np.random.default_rng(7)
    return np.concatenate([[-1e6, -5_000.0, 0.0, THR, 179_000.0, 179_600.0, 1e6],
                           [charge_for(v + 0.5) for v in range(74, 256)],
                           rng.uniform(-10_000.0, 200_000.0, 500)])


def test_straight_through_forward_equals_round(backend):
    q = tensor(backend, _digitize_probe_charges())
    rounded = ops.to_numpy(digitize(q, FEE, "round"))
    straight = ops.to_numpy(digitize(q, FEE, "straight-through"))
    np.testing.assert_array_equal(straight, rounded)            # bit for bit, integer counts
    assert np.array_equal(straight, np.round(straight))
    q32 = tensor(backend, _digitize_probe_charges(), "float32")
    np.testing.assert_array_equal(ops.to_numpy(digitize(q32, FEE, "straight-through")),
                                  ops.to_numpy(digitize(q32, FEE, "round")))


def test_straight_through_gradient_equals_continuous(backend):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} has no autodiff")
    import eagerpy as ep
    charges = _digitize_probe_charges()
    weights = tensor(backend, np.random.default_rng(8).uniform(0.5, 2.0, len(charges)))
    b = ops.get_backend(backend)

    def grad_of(mode):
        def loss(p):
            return ep.sum(weights * digitize(p["q"] * p["scale"], FEE, mode))
        value, grads = b.value_and_grad(loss, {"q": b.asarray(charges, "float64"), "scale": np.float64(1.0)})
        return float(ops.to_numpy(value)), ops.to_numpy(grads["q"]), float(ops.to_numpy(grads["scale"]))

    v_cont, gq_cont, gs_cont = grad_of("continuous")
    v_st, gq_st, gs_st = grad_of("straight-through")
    _, gq_round, gs_round = grad_of("round")
    np.testing.assert_array_equal(gq_st, gq_cont)
    np.testing.assert_allclose(gs_st, gs_cont, rtol=1e-14)
    assert np.all(gq_round == 0) and gs_round == 0.0              # rounding alone has no gradient
    # the continuous slope: gain x counts / (V_ref - V_cm) per electron inside [0, 256], zero where clipped
    slope = FEE.gain_mv_per_e * FEE.adc_counts / (FEE.v_ref_mv - FEE.v_cm_mv)
    w = ops.to_numpy(weights)
    unrounded = ops.to_numpy(digitize(tensor(backend, charges), FEE, "continuous"))
    inside = (unrounded > 0) & (unrounded < FEE.adc_counts)
    np.testing.assert_allclose(gq_st[inside], w[inside] * slope, rtol=1e-14)
    assert np.all(gq_st[~inside] == 0)
    # the forward values differ only by the rounding
    assert v_st != v_cont and abs(v_st - v_cont) <= 0.5 * np.sum(w)


def test_unknown_adc_mode_lists_the_modes():
    q = tensor("numpy", [1000.0])
    with pytest.raises(ValueError, match="'round', 'continuous' or 'straight-through'"):
        digitize(q, FEE, "stochastic")


def test_presets_adc_modes():
    assert HARD.adc == "round" and SMOOTH.adc == "straight-through"
    assert SMOOTH.replace(adc="continuous").adc == "continuous"
    assert SMOOTH.replace(adc="continuous").onset_sharpness == SMOOTH.onset_sharpness


def test_round_half_even_in_digitize(backend):
    # charges whose unrounded ADC value is exactly 82.5 and 83.5 (ties go to the even neighbour)
    def charge_for(value):
        return (value * (FEE.v_ref_mv - FEE.v_cm_mv) / FEE.adc_counts - 292.0) / FEE.gain_mv_per_e
    q = tensor(backend, [charge_for(82.5), charge_for(83.5)])
    unrounded = ops.to_numpy(digitize(q, FEE, "continuous"))
    if np.all(unrounded == [82.5, 83.5]):   # only meaningful when the charges hit the ties exactly
        np.testing.assert_array_equal(ops.to_numpy(digitize(q, FEE)), [82, 84])


# ---------------------------------------------------------------------------------------------- synthetic
def test_threshold_on_running_integral(backend):
    w = np.zeros((4, 200))
    w[0, 50] = THR - 1.0                         # below threshold forever: no sample
    w[1, 50] = THR                               # reaches threshold exactly: trigger (>=)
    w[2, [40, 60, 80]] = THR / 3                 # running integral crosses at the third tick
    w[3, [40, 60, 80]] = THR / 3 - 1.0           # never reaches it
    adc, time, charge = assert_matches_scalar(backend, w)
    assert np.isnan(adc[0]).all() and np.isnan(adc[3]).all()
    assert ticks_of(time)[1, 0] == 50 and ticks_of(time)[2, 0] == 80
    assert charge[1, 0] == 2 * THR                # trigger tick counted twice
    np.testing.assert_allclose(charge[2, 0], THR + THR / 3, rtol=1e-14)


def test_double_count_and_window(backend):
    w = pulse_train(300, [(100, 10_000.0), (100 + WINDOW, 1_000.0), (100 + WINDOW + 1, 50_000.0)])
    _adc, time, charge = assert_matches_scalar(backend, w[None])
    # trigger tick twice + last tick of the window (n_c + 18); n_c + 19 falls in the dead time
    assert charge[0, 0] == 21_000.0 and ticks_of(time)[0, 0] == 100
    assert np.isnan(charge[0, 1])


def test_dead_ticks_after_success(backend):
    n_c = 100
    w = pulse_train(300, [(n_c, 10_000.0), (n_c + 19, 3_000.0), (n_c + 20, 3_000.0),
                          (n_c + 21, 3_500.0), (n_c + 22, 3_500.0)])
    _adc, time, charge = assert_matches_scalar(backend, w[None])
    assert ticks_of(time)[0, :2].tolist() == [n_c, n_c + 22]
    assert charge[0, 1] == 3 * 3_500.0


def test_failed_conversion_one_dead_tick(backend):
    # negative charge in the window makes the conversion fail (noise off); one dead tick, then integration again
    n_c = 10
    w = pulse_train(200, [(n_c, 8_000.0), (n_c + 2, -10_000.0), (n_c + 19, 7_000.0), (n_c + 20, 7_000.0)])
    _adc, time, charge = assert_matches_scalar(backend, w[None])
    assert ticks_of(time)[0, 0] == n_c + 20 and charge[0, 0] == 14_000.0


def test_ten_sample_cap(backend):
    w = pulse_train(1000, [(30 * k + 5, 20_000.0) for k in range(15)])
    adc, time, _charge = assert_matches_scalar(backend, w[None])
    assert (~np.isnan(adc[0])).sum() == 10
    assert ticks_of(time)[0].tolist() == [30 * k + 5 for k in range(10)]


def test_saturation(backend):
    w = pulse_train(100, [(10, 200_000.0)])
    adc, _, _ = assert_matches_scalar(backend, w[None])
    assert adc[0, 0] == 256
    adc_c, _, _ = run(backend, w[None], SMOOTH)
    assert adc_c[0, 0] == 256


def test_window_truncated_at_end(backend):
    w = pulse_train(120, [(115, 8_000.0), (117, 100.0), (119, 200.0)])
    _adc, time, charge = assert_matches_scalar(backend, w[None])
    assert ticks_of(time)[0, 0] == 115 and charge[0, 0] == 16_300.0


def test_nan_semantics(backend):
    w = np.zeros((4, 300))
    w[0, 20] = np.nan
    w[0, 100] = 50_000.0                          # NaN before the trigger: silenced for good
    w[1, 100] = 50_000.0
    w[1, 105] = np.nan                            # NaN inside the window: a stored NaN sample ...
    w[1, 200] = 50_000.0                          # ... and integration goes on
    w[2, 100] = 50_000.0
    w[2, 119] = np.nan                            # NaN on a dead tick: harmless
    w[2, 200] = 50_000.0
    w[3, 150] = 50_000.0                          # clean row beside them
    adc, time, charge = assert_matches_scalar(backend, w)
    assert np.isnan(time[0]).all()
    assert ticks_of(time)[1, :2].tolist() == [100, 200] and np.isnan(charge[1, 0]) and np.isnan(adc[1, 0])
    assert charge[1, 1] == 100_000.0
    assert ticks_of(time)[2, :2].tolist() == [100, 200] and not np.isnan(charge[2, :2]).any()


def random_waveforms(seed, n_rows, n_ticks, max_pulses, pulse_e, p_negative, p_nan):
    """Rows of random exponential pulses (20 ticks, tau 4 ticks, mean height pulse_e electrons per tick), with
    a fraction p_negative of ticks flipped to -3x (failed conversions) and p_nan of them NaN."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_rows, n_ticks))
    for r in range(n_rows):
        for _ in range(rng.integers(0, max_pulses)):
            start = rng.integers(0, n_ticks - 20)
            w[r, start:start + 20] += rng.exponential(1.0) * pulse_e * np.exp(-np.arange(20) / 4.0)
    w[rng.random(w.shape) < p_negative] *= -3.0
    w[rng.random(w.shape) < p_nan] = np.nan
    return w


def test_random_waveforms_match_scalar_model(backend):
    w = random_waveforms(7, 60, 800, 25, 2_000.0, p_negative=0.002, p_nan=0.0002)
    assert_matches_scalar(backend, w)
    assert_matches_scalar(backend, w, active=611)     # padded input: ticks >= 611 do not exist


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_host_search_equals_vectorized(backend, dtype):
    """The host (Numba) trigger search and the vectorised EagerPy one: identical samples, with NaN ticks,
    negative ticks, saturation of the 10 slots, padded ticks, noise and both trigger relaxations."""
    w = random_waveforms(3, 40, 700, 30, 3_000.0, p_negative=0.003, p_nan=0.0005)
    b = ops.get_backend(backend)
    for relaxation in (HARD, SMOOTH):
        for noise, active in ((False, None), (False, 611), (True, None)):
            out = {}
            for search in ("host", "vectorized"):
                kw = dict(noise=True, rng=b.rng(9)) if noise else {}
                out[search] = [ops.to_numpy(o) for o in electronics(tensor(backend, w, dtype), DET, relaxation,
                                                                    active_ticks=active, trigger_search=search,
                                                                    **kw)]
            for host, vectorized in zip(out["host"], out["vectorized"]):
                np.testing.assert_array_equal(host, vectorized)
            assert np.sum(~np.isnan(out["host"][0])) > len(w)


def test_active_ticks_per_row(backend):
    w = pulse_train(200, [(150, 20_000.0)])[None].repeat(3, axis=0)
    active = tensor(backend, np.array([100, 151, 200]), "int64")
    _, time, charge = run(backend, w, active_ticks=active)
    assert np.isnan(time[0]).all()
    assert ticks_of(time)[1, 0] == 150 and charge[1, 0] == 40_000.0   # window truncated at tick 150
    assert ticks_of(time)[2, 0] == 150


# ---------------------------------------------------------------------------------------------- real larnd-sim
def reference_chunk(shared, k):
    """(waveforms in e- per tick, reference tick, charge e-, adc) of test_inputs chunk k."""
    d = np.load(shared / "reference" / "ref_test_cap_nonoise.npz")
    integral = d[f"b{k}_integral_list"]
    w = np.zeros((integral.shape[0], DET.n_ticks_event))
    w[d[f"b{k}_ps_rows"], d[f"b{k}_ps_cols"]] = d[f"b{k}_ps_vals"] * DET.t_sampling / E_CHARGE
    first = sum(d[f"b{j}_integral_list"].shape[0] for j in range(k))
    adc = d["adc"][first:first + integral.shape[0]]
    times = d[f"b{k}_adc_ticks_list"]     # trigger tick x 600/6003 + 600 x event index (chunk k = event k)
    offset = DET.event_slot_us * k
    filled = integral != 0
    tick = np.where(filled, np.round((times - offset) / DET.adc_tick_us), -1).astype(int)
    return w, tick, np.where(filled, integral / E_CHARGE, np.nan), adc, times, offset


_JITTED = {}
_PADDED_ROWS = 3540      # rows of chunk 1; chunk 0 is padded with empty pixels so jax compiles one shape


def _electronics_fn(backend, relaxation):
    """electronics on a padded (3540, 6003) input; jax: jitted once per relaxation (eager dispatch of big
    arrays is slow), other backends eager."""
    key = (backend, relaxation)
    if key not in _JITTED:
        fn = lambda w: electronics(w, DET, relaxation)
        _JITTED[key] = ops.get_backend(backend).jit(fn) if backend == "jax" else fn
    jitted = _JITTED[key]

    def call(w):
        padded = np.zeros((max(_PADDED_ROWS, len(w)), w.shape[1]))
        padded[: len(w)] = w
        return tuple(ops.to_numpy(o)[: len(w)] for o in jitted(tensor(backend, padded)))

    return call


@pytest.mark.parametrize("chunk", [0, 1])
def test_reference_waveforms_hard(backend, shared, chunk):
    w, ref_tick, ref_charge, ref_adc, ref_time, offset = reference_chunk(shared, chunk)
    adc, time, charge = _electronics_fn(backend, HARD)(w)
    filled = ref_tick >= 0
    assert ticks_of(time).tolist() == ref_tick.tolist()                  # every trigger tick identical
    np.testing.assert_array_equal(time[filled] + offset, ref_time[filled])   # tick x 600/6003 us, bit for bit
    rel = np.abs(charge[filled] - ref_charge[filled]) / ref_charge[filled]
    assert rel.max() < 1e-12, rel.max()
    np.testing.assert_array_equal(np.where(filled, adc, 74.0), ref_adc)  # reference empty slot = 74


def test_reference_waveforms_float32(backend, shared):
    if backend == "jax":
        pytest.skip("eager jax on a full chunk is slow; float32 arithmetic is the same code path")
    w, ref_tick, ref_charge, ref_adc, _, _ = reference_chunk(shared, 0)
    adc, time, charge = (ops.to_numpy(o) for o in electronics(tensor(backend, w, "float32"), DET, HARD))
    filled = ref_tick >= 0
    assert time.dtype == np.float32
    assert ticks_of(time).tolist() == ref_tick.tolist()
    assert (np.abs(charge[filled] - ref_charge[filled]) / ref_charge[filled]).max() < 1e-5
    assert np.abs(adc[filled] - ref_adc[filled]).max() <= 1


@pytest.mark.parametrize("chunk", [0])
def test_reference_waveforms_smooth_forward(backend, shared, chunk):
    # on the same waveforms the smooth front end (interpolated trigger, straight-through ADC) has the reference's
    # forward values: same trigger ticks, same integer ADC counts; the continuous ADC is within the rounding
    w, ref_tick, _, ref_adc, _, _ = reference_chunk(shared, chunk)
    adc, time, _ = _electronics_fn(backend, SMOOTH)(w)
    filled = ref_tick >= 0
    assert ticks_of(time).tolist() == ref_tick.tolist()
    np.testing.assert_array_equal(adc[filled], ref_adc[filled])
    assert np.isnan(adc[~filled]).all()
    adc_c, _, _ = _electronics_fn(backend, SMOOTH.replace(adc="continuous"))(w)
    assert np.abs(adc_c[filled] - ref_adc[filled]).max() <= 0.5
    assert np.isnan(adc_c[~filled]).all()


# ---------------------------------------------------------------------------------------------- smooth gradients
def _gradient_waveforms():
    """Realistic pulses (two-exponential shapes on 400 ticks) with several conversions per row."""
    rng = np.random.default_rng(3)
    t = np.arange(40)
    shape = np.exp(-t / 6.0) - np.exp(-t / 1.5)
    w = np.zeros((12, 400))
    for r in range(12):
        for start in rng.choice(np.arange(0, 360, 45), size=3, replace=False):
            w[r, start:start + 40] += rng.uniform(800.0, 6_000.0) * shape
    return w


def _loss_np(adc, time):
    filled = ~np.isnan(adc)
    return np.sum((adc[filled] / 100.0) ** 2) + np.sum(np.tanh(time[filled] / 7.0 - 3.0))


def _surrogate_values(w, scale):
    """Per sample: continuous ADC, hard trigger time and interpolated crossing time (scalar model)."""
    adc, hard, crossing = (np.full((len(w), 10), np.nan) for _ in range(3))
    for r, row in enumerate(w * scale):
        for k, (tick, q, n_star) in enumerate(scalar_front_end(row)):
            adc[r, k] = min(max(q * FEE.gain_mv_per_e + 292.0, 0.0) * 256 / 1012, 256.0)
            hard[r, k], crossing[r, k] = tick * DET.adc_tick_us, n_star * DET.adc_tick_us
    return adc, hard, crossing


def _straight_through_fd(w, h=1e-5):
    """Central finite-difference gradient of the loss with the smooth preset's straight-through ADC and time: the
    ADC's forward value is the rounded count and its derivative that of the continuous value; the time's forward
    value is the hard tick time and its derivative that of the crossing, so
    d loss / d scale = sum g'(adc_rounded) d adc_continuous / d scale + sum f'(t_hard) d t_crossing / d scale."""
    up, down, mid = _surrogate_values(w, 1 + h), _surrogate_values(w, 1 - h), _surrogate_values(w, 1.0)
    filled = ~np.isnan(mid[0])
    d_adc = (up[0][filled] - down[0][filled]) / (2 * h)
    adc_part = np.sum(2 * np.round(mid[0][filled]) / 100.0 ** 2 * d_adc)
    d_crossing = (up[2][filled] - down[2][filled]) / (2 * h)
    slope = (1 - np.tanh(mid[1][filled] / 7.0 - 3.0) ** 2) / 7.0
    return adc_part + np.sum(slope * d_crossing)


def _smooth_loss(w_tensor, scale):
    import eagerpy as ep
    adc, time, _ = electronics(w_tensor * scale, DET, SMOOTH)
    filled = ep.logical_not(ep.isnan(adc))
    adc0 = ep.where(filled, adc, 0.0)
    time_term = ep.where(filled, ep.tanh(ep.where(filled, time, 0.0) / 7.0 - 3.0), 0.0)
    return ep.sum((adc0 / 100.0) ** 2) + ep.sum(time_term)


def _smooth_value_and_grad(backend, w, scale=1.0):
    wt = tensor(backend, w)
    value, grads = ops.get_backend(backend).value_and_grad(lambda p: _smooth_loss(wt, p["scale"]),
                                                           {"scale": np.float64(scale)})
    return float(ops.to_numpy(value)), float(ops.to_numpy(grads["scale"]))


@pytest.fixture(scope="module")
def gradient_case():
    w = _gradient_waveforms()
    h = 1e-5
    fd = _straight_through_fd(w, h)
    ticks = [[s[0] for s in scalar_front_end(row * f)] for f in (1 - h, 1.0, 1 + h) for row in w]
    n = len(w)
    assert ticks[:n] == ticks[n:2 * n] == ticks[2 * n:], "a trigger tick moved within the finite-difference step"
    return w, fd, {}


def test_smooth_gradient_matches_finite_differences(backend, gradient_case):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} has no autodiff")
    w, fd, cache = gradient_case
    value, grad = _cached_gradient(cache, backend, w)
    adc, time, _ = run(backend, w, SMOOTH)
    exp_tick, _ = expected_arrays(w)
    assert (exp_tick >= 0).sum() >= 30                             # several conversions per row
    np.testing.assert_allclose(value, _loss_np(adc, time), rtol=1e-12)
    assert abs(grad - fd) <= 1e-7 * abs(fd), (grad, fd)


def test_smooth_gradient_agrees_across_backends(backend, gradient_case):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} has no autodiff")
    other = "tensorflow" if backend == "torch" else "torch"
    pytest.importorskip(other)
    w, _, cache = gradient_case
    value, grad = _cached_gradient(cache, backend, w)
    value_o, grad_o = _cached_gradient(cache, other, w)
    assert abs(value - value_o) <= 1e-12 * abs(value_o)
    assert abs(grad - grad_o) <= 1e-6 * abs(grad_o), (backend, grad, other, grad_o)


def _cached_gradient(cache, backend, w):
    if backend not in cache:
        cache[backend] = _smooth_value_and_grad(backend, w)
    return cache[backend]


def test_smooth_time_gradient_is_the_interpolated_crossing(backend):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} has no autodiff")
    import eagerpy as ep
    # one tick crosses: running integral A before it, step s at it -> n* = n_c - 1 + (thr - theta A)/(theta s)
    a, step, n_c = 4_000.0, 6_000.0, 50
    w = pulse_train(200, [(n_c - 5, a), (n_c, step)])
    wt = tensor(backend, w[None])

    def first_time(p):
        _, time, _ = electronics(wt * p["scale"], DET, SMOOTH)
        return ep.sum(ep.where(ep.isnan(time), 0.0, time)[:, :1])

    value, grads = ops.get_backend(backend).value_and_grad(first_time, {"scale": np.float64(1.0)})
    assert float(ops.to_numpy(value)) == n_c * DET.adc_tick_us        # forward: the hard tick time
    expected = -THR / step * DET.adc_tick_us                           # d n*/d theta at theta = 1, in us
    np.testing.assert_allclose(float(ops.to_numpy(grads["scale"])), expected, rtol=1e-12)


def test_hard_preset_has_no_time_gradient(backend):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} has no autodiff")
    import eagerpy as ep
    wt = tensor(backend, pulse_train(200, [(45, 4_000.0), (50, 6_000.0)])[None])

    def first_time(p):
        _, time, charge = electronics(wt * p["scale"], DET, HARD)
        return ep.sum(ep.where(ep.isnan(time), 0.0, time)) + 0.0 * ep.sum(ep.where(ep.isnan(charge), 0.0, charge))

    _, grads = ops.get_backend(backend).value_and_grad(first_time, {"scale": np.float64(1.0)})
    assert float(ops.to_numpy(grads["scale"])) == 0.0


# ---------------------------------------------------------------------------------------------- compilation
def test_jax_jit_traces_once(backend):
    if backend != "jax":
        pytest.skip("jax.jit test")
    b = ops.get_backend("jax")
    jitted = b.jit(lambda w: electronics(w, DET, SMOOTH))
    w = _gradient_waveforms()
    first = [ops.to_numpy(o) for o in jitted(tensor("jax", w))]
    second = [ops.to_numpy(o) for o in jitted(tensor("jax", 1.1 * w))]
    assert jitted.trace_count == 1
    eager = [ops.to_numpy(o) for o in electronics(tensor("jax", w), DET, SMOOTH)]
    for a, e in zip(first, eager):
        np.testing.assert_allclose(a, e, rtol=1e-13, equal_nan=True)
    assert not np.array_equal(first[0], second[0], equal_nan=True)


def test_tf_function_traces_once(backend):
    if backend != "tensorflow":
        pytest.skip("tf.function test")
    b = ops.get_backend("tensorflow")
    jitted = b.jit(lambda w: electronics(w, DET, HARD))
    w = _gradient_waveforms()
    out = [ops.to_numpy(o) for o in jitted(tensor("tensorflow", w))]
    exp_tick, _ = expected_arrays(w)
    assert ticks_of(out[1]).tolist() == exp_tick.tolist()
    assert jitted.trace_count == 1


# ---------------------------------------------------------------------------------------------- noise
def test_noise_seeded_and_reproducible(backend):
    b = ops.get_backend(backend)
    w = _gradient_waveforms()
    a = run(backend, w, noise=True, rng=b.rng(11))
    again = run(backend, w, noise=True, rng=b.rng(11))
    other = run(backend, w, noise=True, rng=b.rng(12))
    for x, y in zip(a, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], other[2], equal_nan=True)


def test_noise_statistics(backend):
    b = ops.get_backend(backend)
    n_rows = 300
    w = np.zeros((n_rows, 600))
    w[: n_rows // 2, 300] = 20_000.0            # a big pulse on half of the pixels, nothing on the others
    adc, time, charge = run(backend, w, noise=True, rng=b.rng(5))
    hits = ~np.isnan(adc)
    assert hits[n_rows // 2:].sum() == 0        # threshold 7 ke- is 7 sigma of the noise: no noise hits
    assert (hits[: n_rows // 2].sum(axis=1) == 1).all()
    assert (ticks_of(time)[: n_rows // 2, 0] == 300).all()
    q = charge[: n_rows // 2, 0]
    # converted charge = 2 x 20 ke- (double count) + reset noise (900) + conversion noise (500)
    sigma = math.hypot(FEE.reset_noise_e, FEE.uncorrelated_noise_e)
    assert abs(q.mean() - 40_000.0) < 4 * sigma / math.sqrt(len(q))
    assert 0.8 * sigma < q.std() < 1.2 * sigma


def test_noise_near_threshold_fails_some_conversions(backend):
    b = ops.get_backend(backend)
    # 3.6 ke- on one tick: the running integral sits at 3.6 ke- (+ reset noise), the discriminator sees it
    # tick after tick with fresh noise and rarely triggers; with a second tick later a trigger comes
    # with a sizeable charge. Check that outputs stay finite, ordered and within the 10 slots.
    rng = np.random.default_rng(1)
    w = np.zeros((300, 600))
    for r in range(300):
        for t in rng.choice(np.arange(10, 580), size=12, replace=False):
            w[r, t] = rng.uniform(2_000.0, 5_000.0)
    adc, time, charge = run(backend, w, noise=True, rng=b.rng(2))
    hits = ~np.isnan(adc)
    assert hits.any()
    # slots fill from the left, times increase along a row, every stored charge passed the threshold
    assert (np.diff(hits.astype(int), axis=1) <= 0).all()
    assert (np.diff(time, axis=1)[hits[:, 1:]] > 0).all()
    assert (charge[hits] >= THR).all()
    noiseless = run(backend, w)
    # noise changes individual hits but not the overall hit count much
    n0, n1 = (~np.isnan(noiseless[0])).sum(), hits.sum()
    assert abs(n1 - n0) < 0.1 * n0


def test_noise_on_real_waveforms_like_the_reference(backend, shared):
    # larnd-sim as-is, test_inputs chunk 1: 720 hits without noise, 736 with (+2.2%); chunk 0: 328 -> 324.
    # Our noise on the captured chunk-1 waveforms must change the hit count and ADC sum by a similar few percent.
    w, ref_tick, _, ref_adc, _, _ = reference_chunk(shared, 1)
    # keep it quick: pixels that collect at least 2 ke- (the others cannot reach 7 ke- with 1 ke- of noise),
    # and the ticks up to the last charge
    keep = np.nansum(w, axis=1) >= 2_000.0
    assert (ref_tick[~keep] < 0).all()
    last = np.nonzero(np.nan_to_num(w[keep]).any(axis=0))[0].max() + 30
    w, ref_tick, ref_adc = w[keep, :last], ref_tick[keep], ref_adc[keep]
    b = ops.get_backend(backend)
    adc = ops.to_numpy(electronics(tensor(backend, w), DET, HARD, noise=True, rng=b.rng(4))[0])
    hits, hits0 = (~np.isnan(adc)).sum(), (ref_tick >= 0).sum()
    assert abs(hits / hits0 - 1) < 0.04, (hits, hits0)
    assert abs(np.nansum(adc) / ref_adc[ref_adc > 74].sum() - 1) < 0.04


# The GPU trigger search (larnd_diff.sim.trigger_cuda) under numba's CUDA simulator, any machine: a subprocess,
# because NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported.
_CUDASIM_SCRIPT = r"""
import sys, json
import numpy as np
sys.path.insert(0, sys.argv[1])
from numba import cuda
from larnd_diff.sim import trigger_host, trigger_cuda
rng = np.random.default_rng(4)
out = {}
for case in ("plain", "noise", "nan"):
    n_rows, n_ticks, n_slots, n_cycles = 6, 400, 10, 20
    per_tick = np.where(rng.random((n_rows, n_ticks)) < 0.05, rng.exponential(3000.0, (n_rows, n_ticks)), 0.0)
    if case == "nan":
        per_tick[2, 150:170] = np.nan
    nan = np.isnan(per_tick)
    clean = np.where(nan, 0.0, per_tick)
    q = np.cumsum(clean, axis=1)
    q_disc = q + (rng.normal(0, 500.0, q.shape) if case == "noise" else 0.0)
    nan_count = np.cumsum(nan, axis=1).astype(np.int64)
    last = np.full(n_rows, n_ticks - 1, np.int64); last[4] = 250
    noise = None if case != "noise" else tuple(rng.normal(0, 500.0, (n_rows, n_cycles)) for _ in range(3))
    args = (5000.0, 18, 4, n_slots, n_cycles)
    ref = trigger_host.self_trigger_cycles(q, q_disc, clean, nan_count, last, *args, noise=noise)
    d = lambda a: cuda.to_device(np.ascontiguousarray(a))
    got = trigger_cuda.self_trigger_cycles(d(q), d(q_disc), d(clean), d(nan_count), d(last), *args,
                                           noise=None if noise is None else tuple(d(a) for a in noise))
    got = {k: v.copy_to_host() for k, v in got.items()}
    got["window_nan"] = got["window_nan"].astype(bool)
    out[case] = dict(samples=int(ref["count"].sum()), keys=sorted(ref) == sorted(got),
                     equal=all(np.array_equal(ref[k], got[k]) for k in ref))
print("RESULT" + json.dumps(out))
"""


def test_gpu_trigger_search_matches_host_under_the_simulator(backend):
    """The same per-row search compiled for CUDA gives the host search's outputs exactly: without noise, with
    discriminator, reset and conversion noise, and with a NaN stretch in one row and a row cut short."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if backend != "numpy":
        pytest.skip("framework-independent kernel: tested once, in the numpy environment")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CUDASIM_SCRIPT, str(repo)], capture_output=True, text=True,
                          env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), timeout=600, cwd=repo)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for case, r in json.loads(lines[-1][len("RESULT"):]).items():
        assert r["samples"] > 0 and r["keys"] and r["equal"], (case, r)
