"""Gradients of the differentiable simulator (smooth preset, float64).

* the six fit parameters against central finite differences of a smooth scalar of the outputs;
* torch, jax and tensorflow agree with each other;
* gradients with respect to segment dE and positions exist and are finite;
* no NaN / inf in outputs or gradients for generated segments including degenerate ones.

The scalar is sum(adc * w) + sum(charge * w) / 1000 over filled slots. The sample *time* is not part of it: in
the smooth preset its value is the integer trigger tick x 600/6003 us (piecewise constant) and its gradient is
the straight-through gradient of the interpolated threshold crossing, which finite differences cannot see.
For the same reason the scalar uses the smooth preset with a *continuous* ADC and the *soft* onset
(``FD_RELAXATION``): the preset's own ADC and onset are straight-through (rounded counts and the hard stop of the
current forward, the continuous values' gradients), whose finite differences are zero or jumps. Their gradients
are by construction the continuous ones (tests/test_sim_electronics.py and test_straight_through_onset in
tests/test_sim_fused.py check the identities), so these tests check the preset's gradients too.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.params import FIT_PARAMETERS, SPECS
from larnd_diff.sim import simulate
from larnd_diff.sim.config import SMOOTH

DIFFERENTIABLE = ("torch", "jax", "tensorflow")
NOMINAL = {k: SPECS[k].nominal for k in FIT_PARAMETERS}
#: The smooth preset with the unrounded ADC and the sigmoid onset in value too: finite differences of rounded counts
#: or of the hard stop of the current (the preset's straight-through forward values) are meaningless.
FD_RELAXATION = SMOOTH.replace(adc="continuous", onset="soft")


def small_segments(n_seg=8, seed=3):
    """A few segments of one generated muon (or a hand-made track when the generator is absent)."""
    try:
        from larnd_diff.generate import generate_muons
        segs = generate_muons(n_events=1, seed=seed)
        # the segments closest to the anode: short windows, cheap
        from larnd_diff.detector import module0
        det = module0()
        dist = np.min(np.abs(segs["z"][:, None] - det.anode_z[None, :]), axis=1)
        segs = segs[np.sort(np.argsort(dist)[:n_seg])]
        return segs
    except ImportError:
        return hand_made_track(n_seg)


def hand_made_track(n_seg=8, z0=-27.0, dz=0.2, start=(-3.0, -20.0), step=(0.45, 0.12)):
    from larnd_diff.io import SEGMENT_DTYPE

    s = np.zeros(n_seg, SEGMENT_DTYPE)
    for k in range(n_seg):
        s[k]["x_start"], s[k]["y_start"], s[k]["z_start"] = start[0] + k * step[0], start[1] + k * step[1], z0 + k * dz
        s[k]["x_end"], s[k]["y_end"], s[k]["z_end"] = (start[0] + (k + 1) * step[0], start[1] + (k + 1) * step[1],
                                                       z0 + (k + 1) * dz)
    for c in "xyz":
        s[c] = (s[c + "_start"] + s[c + "_end"]) / 2
    s["dx"] = np.sqrt((s["x_end"] - s["x_start"]) ** 2 + (s["y_end"] - s["y_start"]) ** 2
                      + (s["z_end"] - s["z_start"]) ** 2)
    s["dE"] = 2.1 * s["dx"]
    s["dEdx"] = 2.1
    return s


def scalar_of(hits_adc, hits_charge, weights):
    """sum(adc w) + sum(charge w) / 1000 over filled slots (EagerPy in, EagerPy scalar out)."""
    import eagerpy as ep

    a = ops.nan_to_num(ep.astensor(hits_adc), 0.0)
    q = ops.nan_to_num(ep.astensor(hits_charge), 0.0)
    w = ops.asarray(a, weights[: a.shape[0]], "float64")
    return (a * w).sum() + (q * w).sum() / 1000.0


def make_loss(segs, backend, weights, relaxation=FD_RELAXATION):
    def loss(p):
        h = simulate(segs, backend=backend, params=dict(p), relaxation=relaxation, dtype="float64")
        return scalar_of(h.adc, h.charge, weights)
    return loss


#: grads_of at the nominal point, per (backend, segments, weights): the six parametrisations of the finite-difference
#: test share one value_and_grad (each computes all six gradients)
_NOMINAL_GRADS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _forget_nominal_grads():
    yield
    _NOMINAL_GRADS.clear()


def grads_of(segs, backend, weights, point=None):
    if point is None:
        key = (backend, id(segs), id(weights))
        if key not in _NOMINAL_GRADS:
            _NOMINAL_GRADS[key] = _grads_of(segs, backend, weights, NOMINAL)
        value, grads = _NOMINAL_GRADS[key]
        return value, dict(grads)
    return _grads_of(segs, backend, weights, point)


def _grads_of(segs, backend, weights, point):
    b = ops.get_backend(backend)
    params = {k: b.asarray(np.asarray(v, np.float64), "float64") for k, v in point.items()}
    value, grads = b.value_and_grad(make_loss(segs, backend, weights), params)
    return float(ops.to_numpy(value)), {k: float(ops.to_numpy(g)) for k, g in grads.items()}


def forward_value(segs, backend, weights, point):
    b = ops.get_backend(backend)
    params = {k: b.asarray(np.asarray(v, np.float64), "float64") for k, v in point.items()}
    return float(ops.to_numpy(make_loss(segs, backend, weights)(params)))


@pytest.fixture(scope="module")
def segs():
    return small_segments()


@pytest.fixture(scope="module")
def weights():
    return np.random.default_rng(0).random((20000, 10))


@pytest.mark.parametrize("name", FIT_PARAMETERS)
def test_gradient_matches_finite_differences(backend, segs, weights, name, record_property):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} is forward-only")
    value, grads = grads_of(segs, backend, weights)
    assert value != 0.0, "the test input produced no hits"
    h = NOMINAL[name] * 1e-5
    up = forward_value(segs, backend, weights, {**NOMINAL, name: NOMINAL[name] + h})
    down = forward_value(segs, backend, weights, {**NOMINAL, name: NOMINAL[name] - h})
    fd = (up - down) / (2 * h)
    rel = abs(grads[name] - fd) / max(abs(fd), 1e-300)
    record_property(f"grad_rel_err_{name}", rel)
    assert np.isfinite(grads[name])
    assert rel < 1e-4, f"{backend} d/d{name}: autodiff {grads[name]!r} vs finite differences {fd!r} (rel {rel:.2e})"


def test_backends_agree(segs, weights, record_property):
    have = [b for b in DIFFERENTIABLE if importlib.util.find_spec(b) is not None]
    if len(have) < 2:
        pytest.skip("needs two differentiable frameworks")
    results = {b: grads_of(segs, b, weights) for b in have}
    ref_name = have[0]
    v0, g0 = results[ref_name]
    for b in have[1:]:
        v, g = results[b]
        assert abs(v - v0) <= 1e-9 * abs(v0)
        for k in FIT_PARAMETERS:
            rel = abs(g[k] - g0[k]) / max(abs(g0[k]), 1e-300)
            record_property(f"{b}_vs_{ref_name}_{k}", rel)
            assert rel < 1e-6, f"d/d{k}: {b} {g[k]!r} vs {ref_name} {g0[k]!r} (rel {rel:.2e})"


def _segment_tensor_grads(backend, segs, weights, relaxation="smooth"):
    """Gradients of the scalar w.r.t. dE, dEdx and the endpoint coordinates given as framework tensors."""
    b = ops.get_backend(backend)
    names = ("dE", "dEdx", "x_start", "y_start", "z_start", "x_end", "y_end", "z_end", "x", "y", "z")
    leaves = {k: b.asarray(segs[k].astype(np.float64), "float64") for k in names}

    def loss(p):
        fields = {n: segs[n] for n in segs.dtype.names}
        fields.update({k: v.raw for k, v in p.items()})
        h = simulate(fields, backend=backend, relaxation=relaxation, dtype="float64")
        return scalar_of(h.adc, h.charge, weights)

    value, grads = b.value_and_grad(loss, leaves)
    return value, {k: ops.to_numpy(g) for k, g in grads.items()}


def test_segment_gradients_exist_and_are_finite(backend, segs, weights):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} is forward-only")
    _, grads = _segment_tensor_grads(backend, segs, weights)
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), f"non-finite gradient w.r.t. {k}"
    assert np.any(grads["dE"] != 0) and np.any(grads["x_start"] != 0)


def degenerate_segments(n_events, seed=5):
    """Generated muons plus degenerate rows: zero length, parallel to the anode (z_start = z_end), parallel to the
    drift axis (x, y fixed), parallel to y (x_start = x_end), on the TPC border."""
    from larnd_diff.detector import module0

    det = module0()
    try:
        from larnd_diff.generate import generate_muons
        segs = generate_muons(n_events=n_events, seed=seed)
    except ImportError:
        segs = np.concatenate([hand_made_track(60, z0=-29.5 + 0.4 * e) for e in range(n_events)])
        segs["eventID"] = np.repeat(np.arange(n_events), 60)
    rng = np.random.default_rng(seed)
    extra = segs[rng.choice(len(segs), size=min(len(segs), 40 * n_events), replace=False)].copy()
    kinds = np.arange(len(extra)) % 5
    for i, kind in enumerate(kinds):
        r = extra[i]
        if kind == 0:                                      # zero length
            r["x_end"], r["y_end"], r["z_end"] = r["x_start"], r["y_start"], r["z_start"]
        elif kind == 1:                                    # parallel to the anode
            r["z_end"] = r["z_start"]
        elif kind == 2:                                    # along the drift axis
            r["x_end"], r["y_end"] = r["x_start"], r["y_start"]
        elif kind == 3:                                    # x_start = x_end
            r["x_end"] = r["x_start"]
        else:                                              # at the TPC x border
            xb = det.tpc_borders[0, 0, 1] - 1e-3
            r["x_start"], r["x_end"] = xb, xb - 0.3
        for c in "xyz":
            r[c] = (r[c + "_start"] + r[c + "_end"]) / 2
        extra[i] = r
    return np.concatenate([segs, extra])


@pytest.mark.slow
def test_no_nan_10k_segments_smooth(backend):
    """>= 10,000 generated segments with degenerate rows: smooth outputs and gradients are finite."""
    segs = degenerate_segments(n_events=170)
    assert len(segs) >= 10_000
    _check_no_nan(backend, segs)


def test_no_nan_degenerate_smooth(backend):
    """Default-run version of the 10k test: a few hundred segments with every kind of degenerate row."""
    segs = degenerate_segments(n_events=1)
    _check_no_nan(backend, segs)


def _check_no_nan(backend, segs):
    weights = np.random.default_rng(1).random((400_000, 10))
    h = simulate(segs, backend=backend, relaxation="smooth", dtype="float64").numpy()
    filled = ~np.isnan(h.adc)
    assert filled.any()
    assert np.all(np.isfinite(h.adc[filled])) and np.all(np.isfinite(h.time[filled]))
    assert np.all(np.isfinite(h.charge[filled]))
    # empty slots are NaN in all three arrays together
    assert np.array_equal(filled, ~np.isnan(h.time))
    if backend in DIFFERENTIABLE:
        value, grads = grads_of(segs, backend, weights)
        assert np.isfinite(value)
        for k, g in grads.items():
            assert np.isfinite(g), f"non-finite gradient w.r.t. {k}"
