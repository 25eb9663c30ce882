"""Parity of the differentiable simulator with the Numba reference (``larnd_diff.reference``).

Hit pixels are matched by (eventID, I, J); a pixel present on one side only counts with an all-empty row on the
other. ADC rows are compared with empty slots read as the pedestal 74 (digitize(0), as in larnd-sim outputs).
Figures are attached to the test report with ``record_property`` and printed (run with ``-s`` to see them).
Inputs: generated muons (3 events) and a generated mixed sample (muons, pions, protons; 4 events), 8 events of the
shared corsika file, and (slow) the whole shared files.

* hard preset, float64  vs reference precision="float64":   identical ADC rows on >= 99.5 % of hit pixels
* hard preset, float64  vs reference precision="larnd-sim": >= 95 % identical, >= 99.5 % within +-1 count (the
  generated mixed sample: as many as the float64 reference itself, see test_hard_float64_vs_larnd_sim_precision)
* hard preset, float32  vs reference precision="float64":   >= 99 % within +-1 count
* smooth preset (straight-through onset and ADC: the hard stop's current and integer counts forward) vs reference
  precision="float64": mean |dADC| per active pixel <= 0.005, the issue's 0.04 and its aim 0.01 (measured 0.0000 on
  the muons, 0.0014 on corsika8: one sample one count off, from the continuous electron counts)
* the soft onset (the paper's forward: sigmoid onset in value too) for comparison: the measured figure plus a
  margin (muons 0.0413 -> 0.05, corsika8 0.0559 -> 0.065); with sharpness 1000 <= 0.02. (On the whole shared
  files, pixels that the reference silences with NaN add more: README, "The differentiable simulator".)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from larnd_diff.sim import simulate
from larnd_diff.sim.config import SMOOTH

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORSIKA = SHARED / "data" / "module0_corsika.h5"
TEST_INPUTS = SHARED / "data" / "test_inputs.h5"
PEDESTAL = 74.0


def _need(path: Path):
    if not path.is_file():
        pytest.skip(f"{path} is not available (../shared beside the checkout)")


def load(path: Path, n_events=None):
    from larnd_diff.io import load_segments

    segs = load_segments(str(path))
    if n_events is not None:
        segs = segs[np.isin(segs["eventID"], np.unique(segs["eventID"])[:n_events])]
    return segs


def generated(n_events=3, seed=11):
    gen = pytest.importorskip("larnd_diff.generate")
    return gen.generate_muons(n_events=n_events, seed=seed)


def generated_mixed(n_events=4, seed=7):
    """Muons, charged pions and protons (generate_mixed's species and energies): 408 segments."""
    gen = pytest.importorskip("larnd_diff.generate")
    return gen.generate_mixed(n_events=n_events, seed=seed)


def reference(segs, precision):
    ref = pytest.importorskip("larnd_diff.reference")
    return ref.simulate(segs, precision=precision, noise=False)


def compare(ours, ref, ref_adc=None):
    """Figures comparing two Hits: identical / within-1 fractions and mean |dADC| per active pixel."""
    ours, ref = ours.numpy(), ref.numpy()

    def rows(h, adc):
        return {(int(e), int(p[0]), int(p[1])): np.nan_to_num(np.asarray(a, np.float64), nan=PEDESTAL)
                for e, p, a in zip(h.event_id, h.pixel, adc)}

    a = rows(ours, ours.adc)
    b = rows(ref, ref.adc if ref_adc is None else ref_adc)
    keys = set(a) | set(b)
    empty = np.full(ours.adc.shape[1] if len(ours) else 10, PEDESTAL)
    diff = np.array([np.abs(a.get(k, empty) - b.get(k, empty)) for k in keys]) if keys else np.zeros((0, 10))
    n = max(len(keys), 1)
    return dict(pixels=len(keys), only_ours=len(set(a) - set(b)), only_ref=len(set(b) - set(a)),
                identical=float(np.sum(np.all(diff == 0, axis=1)) / n),
                within1=float(np.sum(np.all(diff <= 1, axis=1)) / n),
                mean_abs_dadc=float(diff.sum() / n))


def _report(record_property, tag, figures):
    for k, v in figures.items():
        record_property(f"{tag}:{k}", v)
    print(f"\n[parity] {tag}: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in figures.items()))


CASES = {
    "corsika": lambda: (_need(CORSIKA), load(CORSIKA))[1],
    "corsika8": lambda: (_need(CORSIKA), load(CORSIKA, 8))[1],
    "test_inputs2": lambda: (_need(TEST_INPUTS), load(TEST_INPUTS, 2))[1],
    "test_inputs": lambda: (_need(TEST_INPUTS), load(TEST_INPUTS))[1],
    "muons": lambda: generated(3),
    "mixed": lambda: generated_mixed(),
}


@pytest.mark.parametrize("case", ["corsika8", "muons", "mixed",
                                  pytest.param("test_inputs2", marks=pytest.mark.slow)])
def test_hard_float64_matches_reference(backend, case, record_property):
    segs = CASES[case]()
    fig = compare(simulate(segs, backend=backend, relaxation="hard", dtype="float64"), reference(segs, "float64"))
    _report(record_property, f"{backend}/{case}/hard-f64-vs-ref-f64", fig)
    assert fig["identical"] >= 0.995


@pytest.mark.slow
@pytest.mark.parametrize("case", ["corsika", "test_inputs"])
def test_hard_float64_matches_reference_full(backend, case, record_property):
    segs = CASES[case]()
    ours = simulate(segs, backend=backend, relaxation="hard", dtype="float64")
    fig = compare(ours, reference(segs, "float64"))
    _report(record_property, f"{backend}/{case}/hard-f64-vs-ref-f64", fig)
    assert fig["identical"] >= 0.995
    fig = compare(ours, reference(segs, "larnd-sim"))
    _report(record_property, f"{backend}/{case}/hard-f64-vs-ref-larnd-sim", fig)
    assert fig["identical"] >= 0.95 and fig["within1"] >= 0.995


@pytest.mark.parametrize("case", ["muons", "mixed", pytest.param("corsika8", marks=pytest.mark.slow)])
def test_hard_float64_vs_larnd_sim_precision(backend, case, record_property):
    """Within one count of the larnd-sim precision reference on >= 99.5 % of the pixels (the issue's figure), or on
    as many as the reference's own float64 run is: on mixed samples the float32 map of larnd-sim moves a trigger tick
    or threshold crossing of a few high-charge proton or pion pixels (a whole row shifts), and the float64 reference
    differs from its larnd-sim precision on exactly those rows (4-event case: 99.42 % within one for both; 10-event
    samples of seeds 1 and 2: 99.49 % and 99.27 %, the same for both). No float64 implementation can do better."""
    segs = CASES[case]()
    larnd_sim = reference(segs, "larnd-sim")
    fig = compare(simulate(segs, backend=backend, relaxation="hard", dtype="float64"), larnd_sim)
    own = compare(reference(segs, "float64"), larnd_sim)
    _report(record_property, f"{backend}/{case}/hard-f64-vs-ref-larnd-sim", fig)
    _report(record_property, f"{case}/ref-f64-vs-ref-larnd-sim", own)
    assert fig["identical"] >= 0.95 and fig["within1"] >= min(0.995, own["within1"])


@pytest.mark.parametrize("case", ["muons", "mixed", pytest.param("corsika8", marks=pytest.mark.slow)])
def test_hard_float32(backend, case, record_property):
    segs = CASES[case]()
    fig = compare(simulate(segs, backend=backend, relaxation="hard", dtype="float32"), reference(segs, "float64"))
    _report(record_property, f"{backend}/{case}/hard-f32-vs-ref-f64", fig)
    assert fig["within1"] >= 0.99


#: Smooth preset vs the float64 reference, mean |dADC| per active pixel, measured (identical on numpy, torch, jax
#: and tensorflow); the soft onset's (the paper's forward) and its bound (measured plus a margin).
SMOOTH_MEASURED = {"muons": 0.0, "mixed": 0.0, "corsika8": 0.0014}
SOFT_MEASURED = {"muons": 0.0413, "mixed": 0.0732, "corsika8": 0.0559}
SOFT_BOUND = {"muons": 0.05, "mixed": 0.085, "corsika8": 0.065}
#: Issue #3: mean |dADC| <= 0.04 per active pixel, aim <= 0.01.
ISSUE_TARGET, ISSUE_AIM = 0.04, 0.01
SOFT = SMOOTH.replace(onset="soft")
_SMOOTH_CACHE = {}


def _smooth_figures(backend, case, relaxation="smooth"):
    """(figures vs reference float64, figures vs its unrounded ADC) of a relaxation, cached per test session."""
    key = (backend, case, relaxation)
    if key not in _SMOOTH_CACHE:
        segs = CASES[case]()
        ours = simulate(segs, backend=backend, relaxation=relaxation, dtype="float64")
        ref = reference(segs, "float64")
        unrounded = _unrounded_adc(ref)
        _SMOOTH_CACHE[key] = (compare(ours, ref), None if unrounded is None else compare(ours, ref, ref_adc=unrounded))
    return _SMOOTH_CACHE[key]


@pytest.mark.parametrize("case", ["muons", "mixed", pytest.param("corsika8", marks=pytest.mark.slow)])
def test_smooth_matches_reference(backend, case, record_property):
    """Smooth preset: mean |dADC| per active pixel vs the reference ADC <= 0.005, which is below the issue's target
    (0.04) and aim (0.01); with the continuous ADC against the reference's unrounded ADC <= 0.005 too (measured
    0.0009 and 0.0005). The straight-through onset and ADC make the forward the reference's: what is left is the
    continuous electron count (no truncation to integers), one count on one sample of corsika8."""
    fig, _ = _smooth_figures(backend, case)
    _report(record_property, f"{backend}/{case}/smooth-vs-ref-adc", fig)
    assert fig["mean_abs_dadc"] <= min(0.005, ISSUE_TARGET, ISSUE_AIM), (fig, SMOOTH_MEASURED[case])
    assert fig["identical"] >= 0.995 and fig["within1"] >= 0.999 and fig["only_ours"] == fig["only_ref"] == 0
    _, fig_unrounded = _smooth_figures(backend, case, SMOOTH.replace(adc="continuous"))
    if fig_unrounded is not None:
        _report(record_property, f"{backend}/{case}/smooth-continuous-adc-vs-ref-unrounded-adc", fig_unrounded)
        assert fig_unrounded["mean_abs_dadc"] <= 0.005


@pytest.mark.parametrize("case", ["muons", "mixed", pytest.param("corsika8", marks=pytest.mark.slow)])
def test_soft_onset_deviation(backend, case, record_property):
    """The soft onset (sigmoid of sharpness 100 in the value too, the paper's forward): a sample differs from the
    reference by 0 or 1 count where the onset moves the unrounded value across a .5 boundary (~4-5 % of rows);
    mean |dADC| 0.0413 on the muons (0.084 on 20 generated events), 0.0732 on the mixed sample, 0.0559 on
    corsika8: above the issue's target,
    which is why the smooth preset takes the onset straight-through."""
    fig, _ = _smooth_figures(backend, case, SOFT)
    _report(record_property, f"{backend}/{case}/soft-onset-vs-ref-adc", fig)
    assert fig["mean_abs_dadc"] <= SOFT_BOUND[case], (fig, SOFT_MEASURED[case])
    # identical rows: 95.9 % (muons), 95.3 % (corsika8), 92.7 % (mixed: more charge per pixel, more samples)
    assert fig["identical"] >= (0.92 if case == "mixed" else 0.94) and fig["within1"] >= 0.995


def test_soft_sharper_onset_approaches_reference(backend, record_property):
    """The soft onset's deviation is its width tau/s: sharpness 1000 gives 0.0138 on muons (100: 0.0413)."""
    fig, _ = _smooth_figures(backend, "muons", SOFT.replace(onset_sharpness=1000.0))
    _report(record_property, f"{backend}/muons/soft-sharpness-1000-vs-ref-adc", fig)
    assert fig["mean_abs_dadc"] <= 0.02 and fig["only_ref"] == 0, fig


def _unrounded_adc(ref):
    """The reference's ADC before rounding, from its converted charge (electrons)."""
    if ref.charge is None:
        return None
    from larnd_diff.detector import module0

    el = module0().electronics
    q = np.asarray(ref.charge, np.float64)
    v = np.maximum(q * el.gain_mv_per_e + el.v_pedestal_mv - el.v_cm_mv, 0) * el.adc_counts / (el.v_ref_mv - el.v_cm_mv)
    return np.minimum(v, el.adc_counts)


def test_reference_waveforms_gpu_snapshot(record_property):
    """Induced charge of test_inputs chunk 0 against the captured GPU waveforms of the real larnd-sim (float32
    map on the GPU): per-pixel max difference / max, median and 90th percentile."""
    path = SHARED / "reference" / "ref_test_cap_nonoise.npz"
    _need(path)
    _need(TEST_INPUTS)
    ref = np.load(path)
    segs = load(TEST_INPUTS, 1)
    from larnd_diff.sim.pipeline import simulate as sim_full

    hits, charge, plan = sim_full(segs, backend="numpy", relaxation="hard", return_waveforms=True)
    charge = np.asarray(charge.raw)
    rows, ticks, vals = ref["b0_ps_rows"].astype(np.int64), ref["b0_ps_cols"].astype(np.int64), ref["b0_ps_vals"]
    e_charge = 1.602e-19
    pix_ref = ref["unique_pix"].astype(np.int64)           # chunk 0 occupies the first rows
    ours_of = {tuple(p): i for i, p in enumerate(plan.rows)}
    errs = []
    for r in np.unique(rows):
        sel = rows == r
        wf = np.zeros(6003)
        wf[ticks[sel]] = vals[sel] * 0.1 / e_charge          # C/us -> electrons per tick
        if not np.all(np.isfinite(wf)) or wf.max() <= 0:
            continue
        i = ours_of.get(tuple(pix_ref[r]))
        mine = np.zeros(6003)
        if i is not None:
            mine[: charge.shape[1]] = np.nan_to_num(charge[i])
        errs.append(np.abs(mine - wf).max() / wf.max())
    errs = np.asarray(errs)
    record_property("waveform_err_median", float(np.median(errs)))
    record_property("waveform_err_p90", float(np.percentile(errs, 90)))
    print(f"\n[waveforms] test_inputs chunk 0: {len(errs)} pixels, max-diff/max median {np.median(errs):.2e}, "
          f"p90 {np.percentile(errs, 90):.2e}, worst {errs.max():.2e}")
    assert np.median(errs) < 5e-3
