"""Closed-form checks of the Numba reference (spec 7.1): every stage against formulas worked out by hand."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from larnd_diff.detector import module0
from larnd_diff.io import SEGMENT_DTYPE
from larnd_diff.reference import drift, quench, simulate
from larnd_diff.reference.electronics import digitize, front_end
from larnd_diff.reference.induce import charge_density, current_model, truncated_exponential
from larnd_diff.reference.scalars import E_CHARGE
from larnd_diff.reference.pixels import bresenham_pixels, neighbourhood_pixels, pixel_center, pixel_of_point
from larnd_diff.reference.quench import birks_recombination, box_recombination
from larnd_diff.response import AMPLITUDE_A, DELAY_US, TAU_B_US, TAU_C_US, pad_polynomial

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DET = module0()
V = 0.1587
E_RHO = 0.5 * 1.38


def make_segments(starts, ends, dE=1.0, event=0):
    """Segments (simulation frame) from start/end points in cm; dEdx = dE / length."""
    starts, ends = np.atleast_2d(starts).astype(np.float64), np.atleast_2d(ends).astype(np.float64)
    seg = np.zeros(len(starts), SEGMENT_DTYPE)
    seg["eventID"] = event
    for i, ax in enumerate("xyz"):
        seg[f"{ax}_start"] = starts[:, i]
        seg[f"{ax}_end"] = ends[:, i]
        seg[ax] = (starts[:, i] + ends[:, i]) / 2
    length = np.linalg.norm(ends - starts, axis=1)
    seg["dx"] = length
    seg["dE"] = dE
    seg["dEdx"] = np.where(length > 0, dE / np.where(length > 0, length, 1), 0)
    return seg


# ------------------------------------------------------------------------------------------------ quenching ---
def test_birks_closed_form_and_limits():
    assert birks_recombination(0.0, 0.8, 0.0486, 0.5, 1.38) == pytest.approx(0.8, rel=1e-12)
    assert birks_recombination(2.0, 0.8, 0.0486, 0.5, 1.38) == pytest.approx(0.70122, abs=1e-5)
    r = birks_recombination(1e10, 0.8, 0.0486, 0.5, 1.38)
    assert 0 < r < 1e-6


def test_box_closed_form():
    xi = 0.207 * 2.1 / E_RHO
    assert box_recombination(2.1, 0.93, 0.207, 0.5, 1.38) == pytest.approx(math.log(0.93 + xi) / xi, rel=1e-12)
    assert box_recombination(2.1, 0.93, 0.207, 0.5, 1.38) == pytest.approx(0.7059, abs=1e-4)
    assert 0 <= box_recombination(1e10, 0.93, 0.207, 0.5, 1.38) < 1e-6


@pytest.mark.parametrize("model", ["birks", "box"])
def test_quench_truncates_to_u4(model):
    seg = make_segments(np.zeros((5, 3)) + [0, 0, -20], np.zeros((5, 3)) + [0.3, 0, -20], dE=1.0)
    seg["dEdx"] = [0.5, 1.0, 2.0, 10.0, 100.0]
    seg["dE"] = [0.1, 1.0, 2.5, 7.3, 50.0]
    out = quench(seg, model=model)
    if model == "birks":
        r = 0.8 / (1 + 0.0486 * seg["dEdx"].astype(np.float64) / E_RHO)
    else:
        xi = 0.207 * seg["dEdx"].astype(np.float64) / E_RHO
        r = np.log(0.93 + xi) / xi
    expect = np.trunc(r * seg["dE"].astype(np.float64) * 4.237e4)
    assert out["n_electrons"].dtype == np.uint32
    np.testing.assert_array_equal(out["n_electrons"], expect.astype(np.uint32))
    assert seg["n_electrons"].sum() == 0, "quench must return a copy"


def test_quench_params_override():
    seg = make_segments([0, 0, -20], [0.3, 0, -20], dE=2.0)
    a = quench(seg)["n_electrons"][0]
    b = quench(seg, params={"Ab": 0.88})["n_electrons"][0]
    assert b / a == pytest.approx(0.88 / 0.8, rel=1e-5)


# ------------------------------------------------------------------------------------------------- drifting ---
def test_drift_lifetime_sigmas_and_times():
    z_a = DET.tpc_borders[0, 2, 0]   # -30.431
    starts = np.array([[1.0, 2.0, -25.0], [1.0, 2.0, -10.0], [-3.0, 5.0, 20.0]])
    ends = np.array([[1.5, 2.2, -26.0], [1.2, 2.5, -4.0], [-3.1, 5.5, 25.0]])
    seg = quench(make_segments(starts, ends, dE=3.0))
    out = drift(seg)
    np.testing.assert_array_equal(out["pixel_plane"], [0, 0, 1])
    for i in range(3):
        plane = out["pixel_plane"][i]
        za = DET.tpc_borders[plane, 2, 0]
        z = np.float64(seg["z"][i])
        d = abs(z - za)
        t_drift = (d - 0.5) / V
        assert out["n_electrons"][i] == np.uint32(np.float64(seg["n_electrons"][i]) * np.exp(-t_drift / 2200))
        assert out["tran_diff"][i] == pytest.approx(math.sqrt(2 * 8.8e-6 * d / V), rel=1e-6)
        assert out["long_diff"][i] == pytest.approx(math.sqrt(2 * 4e-6 * d / V), rel=1e-6)
        assert out["t"][i] == pytest.approx(t_drift, rel=1e-6)
        ends_d = [abs(np.float64(seg["z_start"][i]) - za) - 0.5, abs(np.float64(seg["z_end"][i]) - za) - 0.5]
        assert out["t_start"][i] == pytest.approx(min(ends_d) / V, rel=1e-6)
        assert out["t_end"][i] == pytest.approx(max(ends_d) / V, rel=1e-6)
    assert z_a == pytest.approx(-30.431)


def test_full_drift_sigmas():
    """Spec section 1: sigma_T = 0.05794 cm, sigma_L = 0.03906 cm over the full 30.27225 cm drift."""
    z = DET.tpc_borders[0, 2, 0] + 30.27225
    out = drift(quench(make_segments([0, 0, z], [0.1, 0, z])))
    assert out["tran_diff"][0] == pytest.approx(0.05794, abs=2e-5)
    assert out["long_diff"][0] == pytest.approx(0.03906, abs=2e-5)


def test_drift_outside_tpc_flags_plane():
    out = drift(quench(make_segments([0, 500, 0], [0.1, 500, 0])))
    assert out["pixel_plane"][0] == np.uint32(0xFFFFFFFF)


# ------------------------------------------------------------------------------------------- pixel geometry ---
def test_pixel_geometry():
    assert DET.n_pixels == (140, 280)
    assert DET.pixel_pitch == pytest.approx(0.4434)
    b = DET.tpc_borders
    np.testing.assert_allclose(b[0], [[-31.039, 31.039], [-83.8626, 40.2154], [-30.431, -0.15875]], atol=1e-9)
    np.testing.assert_allclose(b[1], [[-31.039, 31.039], [-83.8626, 40.2154], [30.431, 0.15875]], atol=1e-9)
    x_lo, y_lo = np.ascontiguousarray(b[:, 0, 0]), np.ascontiguousarray(b[:, 1, 0])
    for i, j in [(0, 0), (139, 279), (140, 0), (279, 17), (57, 123)]:
        x, y = pixel_center(i, j, x_lo, y_lo, 0.4434, 140)
        assert pixel_of_point(x, y, i // 140, x_lo[i // 140], y_lo[i // 140], 0.4434, 140) == (i, j)
    assert pixel_center(0, 0, x_lo, y_lo, 0.4434, 140)[0] == pytest.approx(-31.039 + 0.2217)


def test_bresenham_and_neighbourhood():
    line = bresenham_pixels(10, 20, 14, 22, 280)
    np.testing.assert_array_equal(line, [[10, 20], [11, 21], [12, 21], [13, 22], [14, 22]])  # ties round up
    line = bresenham_pixels(5, 5, 5, 2, 280)      # pure J steps, going down
    np.testing.assert_array_equal(line, [[5, 5], [5, 4], [5, 3], [5, 2]])
    one = neighbourhood_pixels(np.array([[50, 50]]), 2, 140, 280, 2)
    assert len(one) == 25 and tuple(one[0]) == (48, 48) and tuple(one[1]) == (48, 49)
    corner = neighbourhood_pixels(np.array([[0, 0]]), 2, 140, 280, 2)
    assert len(corner) == 9                         # I, J >= 0 only
    fold = neighbourhood_pixels(np.array([[139, 100]]), 2, 140, 280, 2)
    assert (fold[:, 0] >= 140).sum() == 10          # (Q) plane folded into I: 140, 141 are TPC-1 pixels
    top = neighbourhood_pixels(np.array([[279, 279]]), 2, 140, 280, 2)
    assert top[:, 0].max() == 279 and top[:, 1].max() == 279
    two = neighbourhood_pixels(np.array([[50, 50], [-1, -1], [51, 50]]), 2, 140, 280, 2)
    assert len(two) == 30 and len({tuple(p) for p in two}) == 30


# -------------------------------------------------------------------------------------------- charge model ---
@njit(cache=True)
def _integrate_density(q, start, segment, sigmas, lo, hi, n):
    h = (hi - lo) / n
    total = 0.0
    for i in range(n):
        x = lo + (i + 0.5) * h
        for j in range(n):
            y = lo + (j + 0.5) * h
            for k in range(n):
                z = lo + (k + 0.5) * h
                total += charge_density(x, y, z, q, start, segment, sigmas, False)
    return total * h ** 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_integrates_to_charge(seed):
    rng = np.random.default_rng(seed)
    start = tuple(rng.uniform(-1, 1, 3))
    segment = tuple(rng.uniform(-1, 1, 3))
    sigmas = tuple(rng.uniform(0.15, 0.5, 3))
    q = 1.0e5
    total = _integrate_density(q, start, segment, sigmas, -5.0, 5.0, 120)
    assert total == pytest.approx(q, rel=0.05)


@njit(cache=True)
def _integrate_current(t0, x, y, dt, n):
    total = 0.0
    for i in range(n):
        total += current_model(t0 - 200.0 + (i + 0.5) * dt, t0, x, y)
    return total * dt


@pytest.mark.parametrize("xy", [(0.0, 0.0), (0.2217, 0.2217), (0.2217, 0.0), (0.1, 0.1), (0.05, 0.2)])
def test_current_model_integrates_to_one(xy):
    x, y = xy
    assert _integrate_current(10.0, x, y, 1e-4, 2_100_000) == pytest.approx(1.0, rel=1e-3)
    for c in (TAU_B_US, TAU_C_US):
        tau = pad_polynomial(c, x, y)
        t_s = 5.0
        ts = np.linspace(t_s - 60 * tau, t_s, 400_001)
        vals = np.array([truncated_exponential(t, t_s, tau) for t in ts[::100]])
        assert vals[-1] == 0.0                      # strict: zero at t = t_s
        dense = np.exp(-(t_s - ts[:-1]) / tau) / tau
        assert np.sum(dense) * (ts[1] - ts[0]) == pytest.approx(1.0, rel=1e-3)


def test_current_model_pad_values():
    """Spec 4.4.6 tabulated values at the pad centre and a corner."""
    assert min(pad_polynomial(AMPLITUDE_A, 0, 0), 1) == 1.0
    assert pad_polynomial(TAU_B_US, 0.2217, 0.2217) == pytest.approx(0.0872, abs=1e-4)
    assert pad_polynomial(TAU_C_US, 0.2217, 0.2217) == pytest.approx(3.7497, abs=1e-4)
    assert pad_polynomial(DELAY_US, 0.2217, 0.0) == pytest.approx(3.3713, abs=1e-4)


def test_waveform_charge_matches_electrons():
    """Sum of waveform x dt over all pixels = sum n_e e within 5% (generated tracks at several drift distances)."""
    rng = np.random.default_rng(3)
    n = 12
    starts = np.column_stack([rng.uniform(-20, 20, n), rng.uniform(-60, 20, n), rng.uniform(-29, -5, n)])
    ends = starts + rng.normal(0, 1.0, (n, 3))
    seg = make_segments(starts, ends, dE=2.0)
    hits, waves = simulate(seg, return_waveforms=True)
    total = sum(np.nansum(w.waveforms) for w in waves) * DET.t_sampling
    n_e = drift(quench(seg))["n_electrons"].astype(np.float64).sum()
    assert total == pytest.approx(n_e * E_CHARGE, rel=0.05)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found (real inputs live beside the checkout)")
def test_waveform_charge_on_file_segments():
    import h5py
    from larnd_diff.io import swap_xz
    with h5py.File(SHARED / "data" / "module0_corsika.h5") as f:
        seg = swap_xz(f["segments"][:])
    seg = seg[np.isin(seg["eventID"], np.unique(seg["eventID"])[:6])]
    seg = seg[seg["z_start"] != seg["z_end"]]      # those would silence pixels with NaN (spec 4.4.3)
    hits, waves = simulate(seg, return_waveforms=True)
    total = sum(np.nansum(w.waveforms) for w in waves) * DET.t_sampling
    n_e = drift(quench(seg))
    n_e = n_e["n_electrons"][n_e["x_start"] != n_e["x_end"]].astype(np.float64).sum()
    assert total == pytest.approx(n_e * E_CHARGE, rel=0.05)


# ------------------------------------------------------------------------------------------------ front end ---
EL = DET.electronics


def run_fee(waveform):
    wf = np.atleast_2d(np.asarray(waveform, np.float64))
    state = np.zeros((1, 2), np.uint64)
    return front_end(wf, wf.shape[1], 0.1, EL.threshold_e, EL.integration_ticks(0.1), EL.max_adc_values, 900.0,
                     500.0, state, False)


def electrons_per_tick(n_e):
    """Current (C/us) that deposits n_e electrons in one 0.1 us tick."""
    return n_e * E_CHARGE / 0.1


def test_digitize_pedestal_threshold_saturation():
    q = np.array([0.0, 7000.0, 179_000.0, 180_500.0, 1e7]) * E_CHARGE
    np.testing.assert_array_equal(digitize(q, EL), [74, 81, 255, 256, 256])
    assert EL.adc_pedestal() == pytest.approx(73.866, abs=1e-3)


def test_trigger_tick_and_double_counted_charge():
    wf = np.zeros(6003)
    wf[100:200] = electrons_per_tick(1000.5)           # 1000.5 e per tick (no exact tie with 7000 e)
    charges, ticks, counts = run_fee(wf)
    assert ticks[0, 0] == 106                          # cumulative 7000 e reached at tick 106
    # integrated through tick 106 + 18 = 124 (25 ticks) + the trigger tick counted again
    assert charges[0, 0] / E_CHARGE == pytest.approx(26 * 1000.5, rel=1e-12)
    # restart after two dead ticks (125, 126): from tick 127 on, 7 ticks to reach 7000 e again -> tick 133
    assert ticks[0, 1] == 133
    assert counts[0] == 4                              # then 160 and 187 (charge ends at tick 199)
    np.testing.assert_array_equal(ticks[0, :4], [106, 133, 160, 187])
    assert charges[0, 3] / E_CHARGE == pytest.approx(20 * 1000.5, rel=1e-12)


def test_ten_sample_cap_and_time_scale():
    wf = np.full(6003, electrons_per_tick(5000.0))
    charges, ticks, counts = run_fee(wf)
    assert counts[0] == 10
    np.testing.assert_array_equal(ticks[0], 1 + 22 * np.arange(10))   # trigger, 18 + 2 dead ticks, 2 ticks
    seg = make_segments([0.1, -20.1, -28.0], [0.3, -20.0, -28.2], dE=2.0)
    hits = simulate(seg)
    assert len(hits) > 0
    tick = hits.time[~np.isnan(hits.time)] / DET.adc_tick_us
    np.testing.assert_allclose(tick, np.round(tick), atol=1e-9)   # time = tick x 600/6003 us, no event offset
    assert DET.adc_tick_us == pytest.approx(600 / 6003)


def test_failed_conversion_skips_one_tick():
    wf = np.zeros(6003)
    wf[10] = electrons_per_tick(8000.0)                # trigger at tick 10 (counted twice: 16000 e) ...
    wf[11] = electrons_per_tick(-20000.0)              # ... but the window ends below threshold: failed
    wf[29] = electrons_per_tick(50000.0)               # tick 10 + 19: never integrated
    wf[30] = electrons_per_tick(7500.0)                # integration restarts at tick 30
    charges, ticks, counts = run_fee(wf)
    assert counts[0] == 1 and ticks[0, 0] == 30
    assert charges[0, 0] / E_CHARGE == pytest.approx(15000.0, rel=1e-12)


def test_noise_off_below_threshold_gives_nothing():
    wf = np.zeros(6003)
    wf[50] = electrons_per_tick(6999.0)
    assert run_fee(wf)[2][0] == 0


# ------------------------------------------------------------------------------------------------ edge cases ---
def test_edge_cases():
    inside = make_segments([0.1, -20.1, -28.0], [0.3, -20.0, -28.2], dE=2.0)
    outside = make_segments([0.1, 500.0, -28.0], [0.3, 500.1, -28.2], dE=2.0)
    both = np.concatenate([inside, outside])
    a, b = simulate(inside), simulate(both)
    np.testing.assert_array_equal(a.adc, b.adc)            # a segment outside every TPC induces nothing
    assert len(simulate(inside[:0])) == 0
    with pytest.raises(KeyError, match="lack the field"):
        simulate(np.zeros(2, [("x", "f4")]))
    with pytest.raises(ValueError, match="precision"):
        simulate(inside, precision="half")


def test_parallel_segment_silences_pixel():
    """(Q) z_start == z_end gives NaN currents on the pixels within tolerance: no hits there afterwards."""
    track = make_segments([0.1, -20.1, -28.0], [0.3, -20.0, -28.2], dE=2.0)
    flat = make_segments([0.15, -20.05, -28.1], [0.25, -20.05, -28.1], dE=0.01)
    hits, waves = simulate(np.concatenate([track, flat]), return_waveforms=True)
    assert np.isnan(waves[0].waveforms).any()
    clean = simulate(track)
    assert len(hits) < len(clean)


def test_parameters_move_outputs():
    """Ab scales the collected charge; vdrift moves the hit times as drift distance / vdrift."""
    seg = make_segments([0.1, -20.1, -20.0], [0.5, -20.0, -20.3], dE=3.0)
    base = simulate(seg)
    more = simulate(seg, params={"Ab": 0.88})
    assert np.nansum(more.charge) > np.nansum(base.charge)
    fast = simulate(seg, params={"vdrift": 0.17})
    t_base, t_fast = np.nanmin(base.time), np.nanmin(fast.time)
    drift_cm = abs(-20.15 - DET.tpc_borders[0, 2, 0]) - 0.5
    assert t_base - t_fast == pytest.approx(drift_cm / 0.1587 - drift_cm / 0.17, abs=0.6)
