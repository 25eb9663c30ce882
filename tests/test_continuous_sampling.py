"""The z sampling and the tick phase of the ``continuous`` preset (``Relaxation(z_step="fixed",
tick_phase="averaged")``).

larnd-sim samples a pair's z range with N_z = max(30, ceil(range / 0.05 cm)) points spanning it exactly: when N_z
steps, every sample moves and the pulse shape jumps as sigma_L changes. It evaluates a segment's current from
floor((t_start - 5 us) / dt) dt but places it from round(...): the whole pulse lands 0 or 1 tick late by the phase of
t_start, which flips as the drift velocity (eField) changes by ~1e-4. The fixed step and the averaged phase keep
every pulse continuous in the parameters, with a reverse-mode gradient that is the slope of the loss
(larnd_diff/sim/induce.py z_step_of, larnd_diff/sim/charge.py average_tick_phase)."""
from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.params import SPECS, Params
from larnd_diff.sim import simulate
from larnd_diff.sim.charge import average_tick_phase
from larnd_diff.sim.config import CONTINUOUS, Relaxation
from larnd_diff.sim.pixels import Z_STEP_CM, n_z_samples

pytest.importorskip("numba")

SPANNING = CONTINUOUS.replace(z_step="spanning", tick_phase="reference")
LONG = float(SPECS["long_diff"].nominal)
FIELD = float(SPECS["eField"].nominal)


@pytest.fixture(autouse=True)
def _once(backend):
    """Host planning and the fused kernels' gradient: framework-independent, run once, in the torch environment."""
    if backend != "torch":
        pytest.skip("sampling relaxations: tested in the torch environment only")
    pytest.importorskip("torch")


@pytest.fixture(scope="module")
def steep_segments():
    """One generated muon whose segments are turned steep (0.3 cm in z for ~0.02 cm in x-y), so that the pairs' z
    ranges span hundreds of 0.05 cm steps (the case where larnd-sim's N_z changes)."""
    from larnd_diff.fit.closure import select
    from larnd_diff.generate import generate_muons

    s = select(generate_muons(n_events=2, tracks_per_event=1, seed=3, fluctuations=True), "drift")[:12].copy()
    s["x_end"] = s["x_start"] + 0.02
    s["y_end"] = s["y_start"] + 0.01
    s["z_end"] = s["z_start"] + 0.3
    for c in "xyz":
        s[c] = (s[f"{c}_start"] + s[f"{c}_end"]) / 2
    return s


def _waveforms(segments, relaxation, params):
    _, waves, plan = simulate(segments, backend="numpy", relaxation=relaxation, params=params, return_waveforms=True)
    w = ops.to_numpy(waves)
    keys = [(int(e), *map(int, r)) for e, r in zip(np.asarray(plan.row_event), np.asarray(plan.rows))]
    return dict(zip(keys, w))


def _largest_shape_change(scan):
    """Largest L1 change of a row's pulse between neighbouring points of a scan, relative to the row's charge
    (rows over 1,000 e-)."""
    worst = 0.0
    for a, b in zip(scan, scan[1:]):
        for key in set(a) & set(b):
            total = max(a[key].sum(), b[key].sum())
            if total > 1e3:
                worst = max(worst, np.abs(b[key] - a[key]).sum() / total)
    return worst


def test_fixed_step_is_larnd_sims_grid_up_to_30_samples():
    """Up to a range of 29 steps both grids are larnd-sim's 30 spanning points; beyond it the fixed grid has one
    point more (its last point past the range's end)."""
    ranges = np.array([0.01, 0.7, 1.449, 1.4501, 3.0, 17.3])
    spanning = n_z_samples(np.zeros_like(ranges), ranges, 0.0)
    fixed = n_z_samples(np.zeros_like(ranges), ranges, 0.0, fixed_step=True)
    assert spanning.tolist() == [30, 30, 30, 30, 60, 346]
    assert fixed.tolist() == [30, 30, 30, 31, 61, 347]
    assert np.all((fixed - 1) * np.minimum(ranges / 29, Z_STEP_CM) >= ranges * (1 - 1e-12))
    with pytest.raises(ValueError, match="z_step"):
        Relaxation(z_step="coarse")
    with pytest.raises(ValueError, match="tick_phase"):
        Relaxation(tick_phase="centred")


def test_pulse_shape_is_continuous_in_the_longitudinal_diffusion(steep_segments):
    """On a long_diff scan in 1 % steps larnd-sim's spanning grid changes some pulse's shape by > 10 % of its charge
    between neighbouring points (N_z steps); the fixed step by less than half that (what remains is the samples'
    arrivals crossing tick times, steep but continuous with the sigmoid onset)."""
    scan = LONG * (1 + np.linspace(-0.1, 0.1, 21))

    def largest(relaxation):
        return _largest_shape_change([_waveforms(steep_segments, relaxation, {"long_diff": v}) for v in scan])

    spanning = largest(SPANNING)
    assert spanning > 0.1
    assert largest(CONTINUOUS) < spanning / 2


def test_averaged_phase_is_the_mean_of_the_two_placements(steep_segments):
    """Segment by segment, the reference's pulse R is the pulse sampled on its placement ticks (P, phase of t_start
    < 1/2) or P one tick later; the averaged pulse is (P + P one tick later) / 2, the same charge. (To 1e-3 of the
    row's charge: when R is the late one, its first tick holds the current one tick before the averaged plan's
    window starts, which the averaged pulse does not have: 0.8 e- of 12,649 on these steep segments.)"""
    later = (lambda w: np.concatenate([[0.0], w[:-1]]))  # noqa: E731
    earlier = (lambda w: np.concatenate([w[1:], [0.0]]))  # noqa: E731
    for s in range(len(steep_segments)):
        one = steep_segments[s:s + 1]
        reference = _waveforms(one, CONTINUOUS.replace(tick_phase="reference"), {})
        averaged = _waveforms(one, CONTINUOUS, {})
        assert set(reference) == set(averaged)
        on_placement = [np.allclose(averaged[k], 0.5 * (w + later(w)), rtol=0, atol=1e-3 * w.sum() + 1e-9)
                        for k, w in reference.items()]
        one_late = [np.allclose(averaged[k], 0.5 * (earlier(w) + w), rtol=0, atol=1e-3 * w.sum() + 1e-9)
                    for k, w in reference.items()]
        assert all(on_placement) or all(one_late), f"segment {s}"
        for k, w in reference.items():
            assert averaged[k].sum() == pytest.approx(w.sum(), rel=1e-3, abs=1e-9)
    w = np.array([[0.0, 2.0, 4.0, 0.0]])
    assert average_tick_phase(ep.astensor(w)).numpy().tolist() == [[0.0, 1.0, 3.0, 2.0]]


def test_pulse_timing_is_continuous_in_the_field(steep_segments):
    """eField moves the drift velocity (linked): on a fine scan some pulse of the reference placement jumps by a
    tick (> 20 % of its charge moves), the averaged one changes by < 2 % per step."""
    scan = FIELD * (1 + np.linspace(-2e-4, 2e-4, 21))

    def largest(relaxation):
        return _largest_shape_change([_waveforms(steep_segments, relaxation, Params({"eField": v}, link_vdrift=True))
                                      for v in scan])

    assert largest(CONTINUOUS.replace(tick_phase="reference")) > 0.2
    assert largest(CONTINUOUS) < 0.02


@pytest.mark.parametrize("name", ["long_diff", "eField"])
def test_gradient_is_the_slope_of_the_pulse(steep_segments, name):
    """Reverse mode (torch, the fused kernels' backward) equals the central difference of a weighted sum of every
    row's pulse, for the fixed z step and the averaged phase."""
    torch = pytest.importorskip("torch")
    nominal = LONG if name == "long_diff" else FIELD
    weights = np.random.default_rng(11).random((64, 4000))

    def value_and_grad(value):
        t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        _, waves, _ = simulate(steep_segments, backend="torch", relaxation=CONTINUOUS,
                               params=Params({name: t}, link_vdrift=True), return_waveforms=True)
        w = getattr(waves, "raw", waves)
        f = (w * torch.as_tensor(weights[: w.shape[0], : w.shape[1]])).sum()
        f.backward()
        return float(f), float(t.grad)

    _, grad = value_and_grad(nominal)
    rel = 1e-7
    plus, minus = value_and_grad(nominal * (1 + rel))[0], value_and_grad(nominal * (1 - rel))[0]
    assert grad == pytest.approx((plus - minus) / (2 * rel * nominal), rel=1e-4)
