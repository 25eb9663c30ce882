"""Parity of the Numba reference with the outputs of the real larnd-sim (GPU run, ../shared/reference).

Targets (spec 7.4): quench + drift bit-exact; ADC rows identical on >= 99 % of hit pixels and within +-1 count on
the rest; hit times identical where the ADC row is identical; hits per event within 0.5 %. The achieved figures
are printed (pytest -s) and recorded as test properties.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from larnd_diff.detector import module0
from larnd_diff.io import swap_xz
from larnd_diff.reference import drift, quench, simulate
from larnd_diff.reference.scalars import E_CHARGE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REF = SHARED / "reference"
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"{REF} not found: the real larnd-sim outputs live in "
                                                         "../shared beside the checkout")
DET = module0()
TICK = DET.adc_tick_us
EMPTY_ADC = 74.0
FILES = {"test": "test_cap_nonoise", "corsika": "corsika_cap_nonoise"}


# ------------------------------------------------------------------------------------------------- helpers ---
@lru_cache(maxsize=None)
def load_ref(tag: str) -> dict:
    with np.load(REF / f"ref_{tag}.npz") as f:
        data = {k: f[k] for k in f.files}
    data["meta"] = json.loads((REF / f"meta_{tag}.json").read_text())
    return data


def ref_row_events(ref) -> np.ndarray:
    """eventID of every reference pixel row (rows are concatenated per processed chunk)."""
    return np.concatenate([np.full(b["n_unique"], b["eventIDs"][0]) for b in ref["meta"]["batches"]])


def ref_hits(ref) -> dict:
    """{(event, I, J): (adc, trigger ticks, backtracked rows)} of reference rows with at least one sample."""
    events = ref_row_events(ref)
    order = np.unique(ref["segs_in"]["eventID"])
    adc = ref["adc"]
    charge = np.concatenate([ref[f"b{k}_integral_list"] for k in range(len(ref["meta"]["batches"]))]) / E_CHARGE
    out = {}
    for r in np.nonzero((adc > EMPTY_ADC).any(axis=1))[0]:
        n = int((adc[r] > EMPTY_ADC).sum())
        ev = int(events[r])
        offset = DET.event_slot_us * np.searchsorted(order, ev)
        ticks = np.rint((ref["ticks"][r, :n] - offset) / TICK).astype(np.int64)
        key = (ev, int(ref["unique_pix"][r, 0]), int(ref["unique_pix"][r, 1]))
        out[key] = (adc[r, :n], ticks, ref["track_ids"][r, :n].astype(np.int64), charge[r, :n])
    return out


def sim_hits(hits) -> dict:
    out = {}
    for r in range(len(hits)):
        n = int(hits.n_samples[r])
        key = (int(hits.event_id[r]), int(hits.pixel[r, 0]), int(hits.pixel[r, 1]))
        out[key] = (hits.adc[r, :n], np.rint(hits.time[r, :n] / TICK).astype(np.int64), hits.backtrack[r, :n],
                    hits.charge[r, :n])
    return out


def compare(ref: dict, mine: dict) -> dict:
    """Parity figures between two {(event, I, J): (adc, ticks, backtrack)} maps."""
    keys = set(ref) | set(mine)
    identical = within_one = time_same = bt_same = 0
    time_diff_ticks, charge_rel = [], [0.0]
    for k in keys:
        if k not in ref or k not in mine:
            continue
        a, b = ref[k], mine[k]
        if len(a[0]) != len(b[0]):
            continue
        if np.array_equal(a[0], b[0]):
            identical += 1
            if np.array_equal(a[1], b[1]):
                time_same += 1
                charge_rel.append(float(np.max(np.abs(a[3] - b[3]) / a[3])))
            else:
                time_diff_ticks.append(int(np.max(np.abs(a[1] - b[1]))))
            bt_same += np.array_equal(a[2], b[2])
        elif np.max(np.abs(a[0] - b[0])) <= 1:
            within_one += 1
    events = sorted({k[0] for k in keys})
    per_event = {e: (sum(1 for k in ref if k[0] == e), sum(1 for k in mine if k[0] == e)) for e in events}
    worst = max(abs(m - r) / max(r, 1) for r, m in per_event.values())
    n = len(keys)
    return dict(pixels=n, ref_pixels=len(ref), sim_pixels=len(mine), identical=identical, within_one=within_one,
                other=n - identical - within_one, identical_frac=identical / n,
                within_one_frac=(identical + within_one) / n, time_identical=time_same,
                time_identical_frac=time_same / max(identical, 1), time_diff_ticks=time_diff_ticks,
                backtrack_identical=bt_same, worst_hits_per_event_rel=worst, worst_charge_rel=max(charge_rel),
                ref_samples=int(sum(len(v[0]) for v in ref.values())),
                sim_samples=int(sum(len(v[0]) for v in mine.values())))


@lru_cache(maxsize=None)
def simulated(tag: str, precision: str = "larnd-sim", noise: bool = False, seed: int = 0):
    segs = swap_xz(load_ref(tag)["segs_in"])
    return simulate(segs, precision=precision, noise=noise, seed=seed)


def report(record_property, name, figures):
    print(f"\n{name}: " + ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in figures.items()))
    record_property(name, json.dumps(figures))


# ----------------------------------------------------------------------------------------- quench + drift ---
@pytest.mark.parametrize("which", sorted(FILES))
def test_quench_drift_bit_exact(which):
    ref = load_ref(FILES[which])
    out = drift(quench(swap_xz(ref["segs_in"])))
    expect = ref["tracks_out"]
    for field in ("pixel_plane", "n_electrons", "long_diff", "tran_diff", "t", "t_start", "t_end",
                  "x_start", "y_start", "z_start", "x_end", "y_end", "z_end"):
        np.testing.assert_array_equal(out[field], expect[field], err_msg=field)


# -------------------------------------------------------------------------------------------- ADC parity ---
@pytest.mark.parametrize("which", sorted(FILES))
def test_adc_parity(which, record_property):
    tag = FILES[which]
    fig = compare(ref_hits(load_ref(tag)), sim_hits(simulated(tag)))
    report(record_property, f"parity_{which}", fig)
    assert fig["identical_frac"] >= 0.99
    assert fig["other"] == 0, "every non-identical ADC row must be within +-1 count with the same sample count"
    assert fig["worst_hits_per_event_rel"] <= 0.005
    # Hit times: identical where the ADC row is identical (measured: all). The margin allows a one-tick move where
    # an ulp-level libm difference on another machine puts the cumulative charge across 7000 e.
    assert fig["time_identical_frac"] >= 0.999
    assert all(d == 1 for d in fig["time_diff_ticks"])
    assert fig["backtrack_identical"] == fig["identical"]
    assert fig["worst_charge_rel"] <= 1e-6   # converted charge (electrons) where ADC and time agree (measured 5e-10)


def test_first_hits_event0():
    """Spec 7.3: first hit pixels of event 0 (ADC, time, converted charge)."""
    hits = simulated(FILES["test"]).event(0)
    expect = [((0, 52), 95, 112.54373, 20606.0), ((0, 53), 95, 111.64418, 20516.2),
              ((0, 112), 92, 186.10695, 17828.2), ((0, 113), 100, 186.60670, 25416.7),
              ((1, 51), 103, 113.84308, 28860.5), ((2, 49), 108, 116.04198, 33676.4)]
    for (i, j), adc, t, q in expect:
        r = np.nonzero((hits.pixel[:, 0] == i) & (hits.pixel[:, 1] == j))[0][0]
        assert hits.adc[r, 0] == adc
        assert hits.time[r, 0] == pytest.approx(t, abs=1e-5)
        assert hits.charge[r, 0] == pytest.approx(q, abs=0.1)


@pytest.mark.parametrize("event", [0, 1])
def test_waveforms_match_captured(event, record_property):
    """Per-pixel currents of events 0 and 1 against the captured GPU waveforms (spec 7.4: rtol 5e-3 of the row
    maximum on hit pixels; identical NaN pattern)."""
    ref = load_ref(FILES["test"])
    segs = swap_xz(ref["segs_in"])
    _, waves = simulate(segs[segs["eventID"] == event], return_waveforms=True)
    wf = waves[0]
    offsets = np.cumsum([0] + [b["n_unique"] for b in ref["meta"]["batches"]])
    rows = slice(offsets[event], offsets[event + 1])
    np.testing.assert_array_equal(wf.pixels, ref["unique_pix"][rows].astype(np.int64))
    expect = np.zeros_like(wf.waveforms)
    expect[ref[f"b{event}_ps_rows"], ref[f"b{event}_ps_cols"]] = ref[f"b{event}_ps_vals"]
    np.testing.assert_array_equal(np.isnan(expect), np.isnan(wf.waveforms))
    hit = (ref["adc"][rows] > EMPTY_ADC).any(axis=1)
    a, b = np.nan_to_num(expect[hit]), np.nan_to_num(wf.waveforms[hit])
    err = np.abs(a - b).max(axis=1) / np.abs(a).max(axis=1)
    fig = dict(hit_pixels=int(hit.sum()), exact=int((err == 0).sum()), median=float(np.median(err)),
               p90=float(np.percentile(err, 90)), worst=float(err.max()))
    report(record_property, f"waveforms_event{event}", fig)
    assert err.max() <= 5e-3              # the spec's recommended tolerance ...
    assert err.max() <= 1e-6              # ... and what the fma emulation achieves (measured: <= 5e-9)
    assert np.median(err) == 0.0


@pytest.mark.parametrize("which", sorted(FILES))
def test_float64_mode_close(which, record_property):
    """The all-double mode differs from the GPU at the 1e-2 level in some pixels (spec 4.8): most ADC rows stay
    identical, nearly all within one count."""
    tag = FILES[which]
    fig = compare(ref_hits(load_ref(tag)), sim_hits(simulated(tag, "float64")))
    report(record_property, f"float64_{which}", fig)
    assert fig["identical_frac"] >= 0.95
    assert fig["within_one_frac"] >= 0.99
    assert fig["worst_hits_per_event_rel"] <= 0.02


# ------------------------------------------------------------------------------------------------- chunks ---
def test_chunking_quirk():
    """Chunks of consecutive rows are simulated independently (spec 4.0 step 5)."""
    segs = swap_xz(load_ref(FILES["corsika"])["segs_in"])
    counts = np.bincount(np.unique(segs["eventID"], return_inverse=True)[1])
    ev = np.unique(segs["eventID"])[np.argmax(counts)]
    one = segs[segs["eventID"] == ev]
    whole = simulate(one, chunk_size=None)
    default = simulate(one)
    np.testing.assert_array_equal(whole.adc, default.adc)
    split = simulate(one, chunk_size=len(one) // 2 + 1)
    assert len(split) >= len(whole)
    keys = [tuple(p) for p in split.pixel]
    assert len(keys) > len(set(keys)) or len(split) != len(whole)   # some pixel appears once per chunk
    assert np.all(np.isin(split.backtrack[split.backtrack >= 0], np.arange(len(one))))


# -------------------------------------------------------------------------------------------------- noise ---
def test_noise_statistics(record_property):
    """Noise on vs larnd-sim's noisy "as-is" run (spec 7.3).

    The as-is driver overflows pixel lists (~1.5 % of hits, compare the cap and as-is no-noise rows of 7.3), so
    the totals are compared with 3 % tolerance (the noise itself moves the hit count by ~1 %), and the ADC
    distribution with a two-sample KS test. On events whose unique-pixel lists are the same in both runs the
    per-pixel streams coincide (same seed, same row), so the rows must be identical there except for ulp-level
    libm/CUDA log/cos differences and the residual current differences.
    """
    tag = "test_asis_noise"
    ref = load_ref(tag)
    hits = simulated(tag, noise=True, seed=0)
    ref_map, mine = ref_hits(ref), sim_hits(hits)
    from scipy.stats import ks_2samp
    ref_adc = np.concatenate([v[0] for v in ref_map.values()])
    sim_adc = hits.adc[~np.isnan(hits.adc)]
    ks = ks_2samp(ref_adc, sim_adc)
    cap = load_ref(FILES["test"])
    same_events = [b_cap["eventIDs"][0] for b_cap, b_noise in zip(cap["meta"]["batches"], ref["meta"]["batches"])
                   if b_cap["n_unique"] == b_noise["n_unique"]]
    ref_same = {k: v for k, v in ref_map.items() if k[0] in same_events}
    sim_same = {k: v for k, v in mine.items() if k[0] in same_events}
    fig = compare(ref_same, sim_same)
    summary = dict(ref_samples=len(ref_adc), sim_samples=len(sim_adc), ref_adc_mean=float(ref_adc.mean()),
                   sim_adc_mean=float(sim_adc.mean()), ks_stat=float(ks.statistic), ks_p=float(ks.pvalue),
                   events_same_lists=len(same_events), identical_frac_there=fig["identical_frac"])
    report(record_property, "noise", summary)
    assert abs(len(sim_adc) / len(ref_adc) - 1) < 0.03
    assert abs(sim_adc.mean() - ref_adc.mean()) < 0.5
    assert ks.pvalue > 0.01
    assert fig["identical_frac"] >= 0.99   # measured: 1.0 (the xoroshiro128+ streams bit-match numba-cuda)


def test_noise_reproducible():
    segs = swap_xz(load_ref(FILES["corsika"])["segs_in"])
    segs = segs[np.isin(segs["eventID"], np.unique(segs["eventID"])[:5])]
    a = simulate(segs, noise=True, seed=3)
    b = simulate(segs, noise=True, seed=3)
    c = simulate(segs, noise=True, seed=4)
    np.testing.assert_array_equal(a.adc, b.adc)
    np.testing.assert_array_equal(a.time, b.time)
    assert len(a) != len(c) or not np.array_equal(a.adc, c.adc, equal_nan=True)
    d, e = simulate(segs), simulate(segs)
    np.testing.assert_array_equal(d.charge, e.charge)


@pytest.mark.slow
def test_mixed_sample_runs_in_chunks():
    """Events with more than 600 segments are simulated in 600-row chunks; all outputs are finite and sane."""
    import h5py
    with h5py.File(SHARED / "data" / "mixed_sample.h5") as f:
        segs = swap_xz(f["segments"][:])
    counts = np.bincount(segs["eventID"])
    ev = np.nonzero(counts > 1200)[0][:2]
    hits = simulate(segs[np.isin(segs["eventID"], ev)])
    assert len(hits) > 0
    filled = ~np.isnan(hits.adc)
    assert np.all((hits.adc[filled] >= 81) & (hits.adc[filled] <= 256))
    assert np.all(hits.backtrack[~filled] == -1)
