"""Linear pad edges (``Relaxation(pad_edge="linear")``, the ``continuous`` preset): larnd-sim samples a pixel's pad on a
grid that spans the segment +- 4 sigma_T, keeping the points inside the pad; as sigma_T changes, points enter and
leave the pad and the pixel's charge jumps, so the reverse-mode gradient of tran_diff is the slope between jumps,
not the charge's. Weighting each point by its cell's share of the pad makes the charge continuous, with a gradient
that is the slope of the charge (larnd_diff/sim/fused_scalars.py pad_edge_weight)."""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.params import SPECS
from larnd_diff.sim import simulate
from larnd_diff.sim.config import CONTINUOUS, SMOOTH_CONTINUOUS, Relaxation
from larnd_diff.sim.fused_scalars import pad_edge_slopes, pad_edge_weight

pytest.importorskip("numba")

TRAN = float(SPECS["tran_diff"].nominal)


@pytest.fixture(scope="module")
def segments():
    from larnd_diff.fit.closure import select
    from larnd_diff.generate import generate_muons

    return select(generate_muons(n_events=2, tracks_per_event=1, seed=3, fluctuations=True), "drift")


def test_weights_sum_to_the_pad_width_wherever_the_grid_lies():
    """Over a grid of step h, the cells' shares of a pad of half-width e add up to 2e / h for any grid offset
    (the hard selection's count jumps between floor and ceil of that), and the slopes are the weight's."""
    e = 0.2217
    for h in (0.013, 0.05, 0.11, -0.05):
        for offset in np.linspace(0, abs(h), 7):
            d = offset + h * np.arange(-60, 61)
            total = sum(pad_edge_weight(x, h, e) for x in d)
            assert total == pytest.approx(2 * e / abs(h), rel=1e-12)
    for d, h in ((0.21, 0.05), (-0.23, 0.05), (0.2, -0.03)):
        wd, ws = pad_edge_slopes(d, h, e)
        eps = 1e-7
        assert wd == pytest.approx((pad_edge_weight(d + eps, h, e) - pad_edge_weight(d - eps, h, e)) / (2 * eps))
        assert ws == pytest.approx((pad_edge_weight(d, h + eps, e) - pad_edge_weight(d, h - eps, e)) / (2 * eps))
    assert pad_edge_weight(0.3, 0.05, 0.0) == 1.0 and pad_edge_slopes(0.3, 0.05, 0.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="pad_edge"):
        Relaxation(pad_edge="soft")


def _row_charge(segments, relaxation, tran):
    _, waves, plan = simulate(segments, backend="numpy", relaxation=relaxation, params={"tran_diff": tran},
                              return_waveforms=True)
    w = ops.to_numpy(waves).sum(axis=1)
    keys = [(int(e), *map(int, r)) for e, r in zip(np.asarray(plan.row_event), np.asarray(plan.rows))]
    return dict(zip(keys, w))


def test_charge_is_continuous_in_the_transverse_diffusion(segments):
    """On a fine scan of tran_diff the hard pad sampling makes some pixel's charge jump by more than 10 % between
    neighbouring points; with linear pad edges no pixel with > 1,000 e changes by more than 1 % per step."""
    scan = TRAN * (1 + np.linspace(-0.01, 0.01, 21))

    def largest_step(relaxation):
        rows = [_row_charge(segments, relaxation, t) for t in scan]
        worst = 0.0
        for a, b in zip(rows, rows[1:]):
            for key in set(a) & set(b):
                if max(a[key], b[key]) > 1e3:
                    worst = max(worst, abs(b[key] - a[key]) / max(a[key], b[key]))
        return worst

    assert largest_step(SMOOTH_CONTINUOUS) > 0.10
    assert largest_step(CONTINUOUS) < 0.01


def test_gradient_is_the_slope_of_the_charge(segments):
    """Reverse mode through the linear pad edges (the fused kernels' hand-written backward) equals the charge's
    central difference: the charge is differentiable there, not only continuous. (Over 1 % of tran_diff the
    z sampling still jumps: its number of samples follows the z range, larnd_diff/sim/pixels.py n_z_samples.)"""
    torch = pytest.importorskip("torch")
    weights = np.random.default_rng(5).random(5000)

    def value_and_grad(relaxation, tran):
        t = torch.tensor(tran, dtype=torch.float64, requires_grad=True)
        _, waves, _ = simulate(segments, backend="torch", relaxation=relaxation, params={"tran_diff": t},
                               return_waveforms=True)
        w = getattr(waves, "raw", waves).sum(dim=1)
        f = (w * torch.as_tensor(weights[: w.shape[0]])).sum()
        f.backward()
        return float(f), float(t.grad)

    _, grad = value_and_grad(CONTINUOUS, TRAN)
    rel = 1e-6
    plus = value_and_grad(CONTINUOUS, TRAN * (1 + rel))[0]
    minus = value_and_grad(CONTINUOUS, TRAN * (1 - rel))[0]
    assert grad == pytest.approx((plus - minus) / (2 * rel * TRAN), rel=1e-4)
