"""Hit losses: embedding order, zero iff identical, >= 0, empty/one-hit robustness, exactness against the
reference Soft-DTW, finite differences, and agreement between backends."""
from __future__ import annotations

import time

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import losses as L
from larnd_diff import ops
from larnd_diff.detector import module0
from larnd_diff.hits import Hits
from test_softdtw import ref_divergence

GRAD_BACKENDS = ("torch", "jax", "tensorflow")
LOSSES = {
    "sdtw_adc": L.sdtw_adc_loss,
    "sdtw": L.sdtw_loss,
    "chamfer": L.chamfer_loss,
    "mmd": L.mmd_loss,
}


# =========================================================================================== fixtures
def make_hits(rng, n_rows: int, events=(1, 2, 3), k: int = 10) -> Hits:
    """Random hits: time-ordered slots, a random number filled per row (rest NaN), random pixels."""
    adc = rng.uniform(20.0, 200.0, (n_rows, k))
    t = np.sort(rng.uniform(0.0, 150.0, (n_rows, k)), axis=1)
    filled = rng.integers(1, k + 1, n_rows)
    for r in range(n_rows):
        adc[r, filled[r]:] = np.nan
        t[r, filled[r]:] = np.nan
    pixel = np.stack([rng.integers(0, 280, n_rows), rng.integers(0, 280, n_rows)], axis=1)
    return Hits(event_id=rng.choice(np.asarray(events), n_rows), pixel=pixel, adc=adc, time=t)


def on_backend(backend: str, h: Hits) -> Hits:
    b = ops.get_backend(backend)
    return Hits(event_id=h.event_id, pixel=h.pixel, adc=b.asarray(h.adc, "float64").raw,
                time=b.asarray(h.time, "float64").raw)


def loss_and_grads(backend: str, fn, sim: Hits, target: Hits, **kw):
    """(loss, d loss / d sim.adc, d loss / d sim.time) as numpy."""
    b = ops.get_backend(backend)
    params = {"adc": b.asarray(sim.adc, "float64"), "time": b.asarray(sim.time, "float64")}

    def f(p):
        h = Hits(event_id=sim.event_id, pixel=sim.pixel, adc=p["adc"], time=p["time"])
        return ep.astensor(fn(h, target, **kw))

    value, grads = b.value_and_grad(f, params)
    return float(ops.to_numpy(value)), ops.to_numpy(grads["adc"]), ops.to_numpy(grads["time"])


def value(backend: str, fn, sim: Hits, target: Hits, **kw) -> float:
    return float(ops.to_numpy(fn(on_backend(backend, sim), on_backend(backend, target), **kw)))


# =========================================================================================== embedding
def test_embedding_orders_by_x_then_y_then_t():
    det = module0()
    # rows: (I, J) pixels; 0 and 140 share (x, y) in module0's two TPCs, so their samples merge by time
    pixel = np.array([[5, 3], [0, 7], [140, 7], [0, 2], [9, 9]])
    nan = np.nan
    adc = np.array([[10, 11, nan], [20, 21, nan], [30, nan, nan], [40, 41, 42], [nan, nan, nan]], float)
    time = np.array([[1.0, 2.0, nan], [5.0, 9.0, nan], [7.0, nan, nan], [3.0, 4.0, 6.0], [nan, nan, nan]])
    h = Hits(event_id=np.array([4, 4, 4, 4, 4]), pixel=pixel, adc=adc, time=time)
    emb = L.embed_hits(h, detector=det)
    n = int(emb.lengths[0])
    assert n == 8
    f = emb.features[0, :n]
    assert list(f[:, 3]) == [40, 41, 42, 20, 30, 21, 10, 11]  # x asc; within (x, y): y asc, then t
    x, y = det.pixel_center(pixel[:, 0], pixel[:, 1])
    assert f[0, 0] == x[3] and f[0, 1] == y[3]
    order = np.lexsort((f[:, 2], f[:, 1], f[:, 0]))
    assert np.all(order == np.arange(n))
    assert np.all(emb.features[0, n:] == 0)


def test_embedding_empty_event_gets_anchor():
    h = Hits(event_id=np.array([1]), pixel=np.array([[1, 1]]), adc=np.full((1, 10), np.nan),
             time=np.full((1, 10), np.nan))
    emb = L.embed_hits(h)
    assert int(emb.lengths[0]) == 0
    assert tuple(emb.features[0, 0]) == L.ANCHOR


# =========================================================================================== properties
@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_for_identical_positive_otherwise(backend, name):
    rng = np.random.default_rng(10)
    a, b = make_hits(rng, 15), make_hits(rng, 11)
    fn = LOSSES[name]
    assert value(backend, fn, a, a) == pytest.approx(0.0, abs=1e-9)
    assert value(backend, fn, a, b) > 0
    # one sample changed: still > 0
    c = Hits(event_id=a.event_id, pixel=a.pixel, adc=a.adc.copy(), time=a.time)
    c.adc[0, 0] += 3.0
    assert value(backend, fn, a, c) > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_nonnegative_on_random_inputs(backend, name):
    rng = np.random.default_rng(11)
    fn = LOSSES[name]
    for _ in range(4):
        a, b = make_hits(rng, int(rng.integers(1, 12))), make_hits(rng, int(rng.integers(1, 12)))
        per_event = ops.to_numpy(fn(on_backend(backend, a), on_backend(backend, b), reduction="none"))
        assert np.all(per_event >= 0) and np.all(np.isfinite(per_event))


@pytest.mark.parametrize("name", list(LOSSES))
def test_empty_one_hit_identical_no_nan(backend, name):
    rng = np.random.default_rng(12)
    fn = LOSSES[name]
    empty = Hits.empty()
    one = Hits(event_id=np.array([1]), pixel=np.array([[3, 4]]), adc=np.r_[50.0, [np.nan] * 9][None],
               time=np.r_[10.0, [np.nan] * 9][None])
    a = make_hits(rng, 6, events=(1,))
    assert value(backend, fn, empty, empty) == 0.0
    for sim, target in ((one, empty), (empty, one), (one, one), (a, one), (one, a), (a, empty)):
        v = value(backend, fn, sim, target)
        assert np.isfinite(v) and v >= 0
        if backend in GRAD_BACKENDS and len(sim):
            _, ga, gt = loss_and_grads(backend, fn, sim, target)
            assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gt))
    assert value(backend, fn, one, empty) > 0
    assert value(backend, fn, one, one) == pytest.approx(0.0, abs=1e-12)


# =========================================================================================== exactness
def test_sdtw_adc_loss_matches_reference(backend):
    """Per event: the reference divergence of the (x, y, t)-ordered ADC sequences (float64, 1e-10)."""
    rng = np.random.default_rng(13)
    a, b = make_hits(rng, 9, events=(1, 2)), make_hits(rng, 7, events=(1, 2))
    got = ops.to_numpy(L.sdtw_adc_loss(on_backend(backend, a), on_backend(backend, b), reduction="none"))
    ea, eb = L.embed_hits(a, events=[1, 2]), L.embed_hits(b, events=[1, 2])
    for e in range(2):
        xa = ea.features[e, :int(ea.lengths[e]), 3:4]
        xb = eb.features[e, :int(eb.lengths[e]), 3:4]
        assert abs(got[e] - ref_divergence(xa, xb)) < 1e-10 * max(1.0, abs(got[e]))


def test_sdtw_loss_gradient_matches_finite_differences(backend):
    if backend not in GRAD_BACKENDS:
        pytest.skip("numpy is forward-only")
    rng = np.random.default_rng(14)
    a, b = make_hits(rng, 5, events=(1,)), make_hits(rng, 4, events=(1,))
    _, ga, gt = loss_and_grads(backend, L.sdtw_loss, a, b)
    eps = 1e-5
    filled = np.argwhere(~np.isnan(a.adc))[:6]
    for r, c in filled:
        for field, g in (("adc", ga), ("time", gt)):
            vals = []
            for s in (eps, -eps):
                arr = getattr(a, field).copy()
                arr[r, c] += s
                h = a.replace(**{field: arr})
                vals.append(float(L.sdtw_loss(h, b)))  # numpy backend
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert abs(fd - g[r, c]) < 1e-5 * max(1.0, abs(fd))


@pytest.mark.parametrize("name", list(LOSSES))
def test_backends_agree(backend, name):
    """Same loss as numpy and the same gradient as torch (float64, 1e-6 relative)."""
    rng = np.random.default_rng(15)
    a, b = make_hits(rng, 12), make_hits(rng, 10)
    fn = LOSSES[name]
    ref = float(fn(a, b))
    assert value(backend, fn, a, b) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    if backend in GRAD_BACKENDS:
        try:
            _, ta, tt = loss_and_grads("torch", fn, a, b)
        except Exception:
            pytest.skip("torch unavailable as the comparison backend")
        _, ga, gt = loss_and_grads(backend, fn, a, b)
        np.testing.assert_allclose(ga, ta, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gt, tt, rtol=1e-6, atol=1e-9)


# =========================================================================================== long sequence
@pytest.mark.slow
def test_long_sequence_5000(backend):
    """One event with 5,000 samples against a perturbed copy: loss and gradient finite, in minutes at most."""
    rng = np.random.default_rng(16)
    rows = 500
    adc = rng.uniform(20.0, 200.0, (rows, 10))
    t = np.sort(rng.uniform(0.0, 150.0, (rows, 10)), axis=1)
    pixel = np.stack([np.arange(rows) % 140, np.arange(rows) // 140], axis=1)
    sim = Hits(event_id=np.zeros(rows, np.int64), pixel=pixel, adc=adc, time=t)
    target = sim.replace(adc=adc + rng.normal(0.0, 2.0, adc.shape))
    t0 = time.perf_counter()
    if backend in GRAD_BACKENDS:
        v, ga, _ = loss_and_grads(backend, L.sdtw_adc_loss, sim, target)
        assert np.all(np.isfinite(ga))
    else:
        v = value(backend, L.sdtw_adc_loss, sim, target)
    assert np.isfinite(v) and v > 0
    assert time.perf_counter() - t0 < 600
