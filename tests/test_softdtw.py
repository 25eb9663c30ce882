"""Soft-DTW: exactness against an independent cell-by-cell float64 reference, finite differences, padding,
divergence, empty items, compiled backends, and agreement between backends.

The reference below follows Cuturi & Blondel (2017), Algorithms 1 and 2, literally (inf borders, the
(n+1, m+1) corner trick for E), with Python loops over cells: it shares nothing with the wavefront code.
"""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.softdtw import soft_dtw, soft_dtw_cost_matrix, soft_dtw_divergence

GRAD_BACKENDS = ("torch", "jax", "tensorflow")
SHAPES = [(7, 5), (5, 9), (12, 12), (30, 17)]


# =========================================================================================== reference
def ref_cost(x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """(n, d), (m, d) -> (n, m), cell by cell."""
    c = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            d = x[i] - y[j]
            c[i, j] = np.sum(np.abs(d)) if kind == "abs" else np.sum(d * d)
    return c


def ref_table(c: np.ndarray, gamma: float) -> np.ndarray:
    """Algorithm 1: R of shape (n+2, m+2) with +inf borders."""
    n, m = c.shape
    r = np.full((n + 2, m + 2), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            z = -np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]]) / gamma
            zmax = np.max(z)
            r[i, j] = c[i - 1, j - 1] - gamma * (zmax + np.log(np.sum(np.exp(z - zmax))))
    return r


def ref_value(x, y, gamma=1.0, kind="abs") -> float:
    return float(ref_table(ref_cost(x, y, kind), gamma)[len(x), len(y)])


def ref_grad_cost(c: np.ndarray, gamma: float) -> np.ndarray:
    """Algorithm 2: E = dR[n, m] / dC."""
    n, m = c.shape
    r = ref_table(c, gamma)
    r[:, m + 1] = -np.inf
    r[n + 1, :] = -np.inf
    r[n + 1, m + 1] = r[n, m]
    cp = np.zeros((n + 2, m + 2))
    cp[1:n + 1, 1:m + 1] = c
    e = np.zeros((n + 2, m + 2))
    e[n + 1, m + 1] = 1.0
    for j in range(m, 0, -1):
        for i in range(n, 0, -1):
            a = np.exp((r[i + 1, j] - r[i, j] - cp[i + 1, j]) / gamma)
            b = np.exp((r[i, j + 1] - r[i, j] - cp[i, j + 1]) / gamma)
            cc = np.exp((r[i + 1, j + 1] - r[i, j] - cp[i + 1, j + 1]) / gamma)
            e[i, j] = e[i + 1, j] * a + e[i, j + 1] * b + e[i + 1, j + 1] * cc
    return e[1:n + 1, 1:m + 1]


def ref_grads(x, y, gamma=1.0, kind="abs"):
    """(d value / dx, d value / dy) via E and the cost's local derivative (sign(0) = 0 for abs)."""
    e = ref_grad_cost(ref_cost(x, y, kind), gamma)
    gx, gy = np.zeros_like(x), np.zeros_like(y)
    for i in range(len(x)):
        for j in range(len(y)):
            d = x[i] - y[j]
            local = np.sign(d) if kind == "abs" else 2.0 * d
            gx[i] += e[i, j] * local
            gy[j] -= e[i, j] * local
    return gx, gy


def ref_divergence(x, y, gamma=1.0, kind="abs"):
    return ref_value(x, y, gamma, kind) - 0.5 * (ref_value(x, x, gamma, kind) + ref_value(y, y, gamma, kind))


# =========================================================================================== helpers
def native(backend: str, arr) -> object:
    """A float64 (or int) native tensor of ``backend`` (the jax adapter turns x64 on for float64)."""
    arr = np.asarray(arr)
    dtype = "float64" if arr.dtype.kind == "f" else None
    return ops.get_backend(backend).asarray(arr, dtype).raw


def value_and_grads(backend, x, y, **kw):
    """soft_dtw summed over the batch, with gradients w.r.t. x and y (numpy arrays out)."""
    b = ops.get_backend(backend)
    params = {"x": b.asarray(x, "float64"), "y": b.asarray(y, "float64")}
    value, grads = b.value_and_grad(lambda p: soft_dtw(p["x"], p["y"], **kw).sum(), params)
    return float(ops.to_numpy(value)), ops.to_numpy(grads["x"]), ops.to_numpy(grads["y"])


def random_pair(rng, n, m, d=1):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d))


# =========================================================================================== reference itself
def test_reference_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, y = random_pair(rng, 6, 4, 2)
    gx, _ = ref_grads(x, y, 0.7, "abs")
    eps = 1e-6
    fd = np.zeros_like(x)
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[i, k] += eps
            xm[i, k] -= eps
            fd[i, k] = (ref_value(xp, y, 0.7) - ref_value(xm, y, 0.7)) / (2 * eps)
    assert np.max(np.abs(gx - fd)) < 1e-7


# =========================================================================================== values
@pytest.mark.parametrize("kind", ["abs", "sq"])
@pytest.mark.parametrize("gamma", [1.0, 0.1])
def test_value_matches_reference(backend, kind, gamma):
    rng = np.random.default_rng(1)
    for n, m in SHAPES:
        x, y = random_pair(rng, n, m)
        got = ops.to_numpy(soft_dtw(native(backend, x[:, 0]), native(backend, y[:, 0]), gamma, cost=kind))
        assert got.shape == ()
        assert abs(float(got) - ref_value(x, y, gamma, kind)) < 1e-10 * max(1.0, abs(float(got)))


def test_batched_padding_unequal_lengths(backend):
    """Padded batch with NaN padding: every item equals its own unpadded reference; no NaN anywhere."""
    rng = np.random.default_rng(2)
    lengths = [(7, 5), (3, 9), (10, 1), (1, 1)]
    n_max, m_max, d = 10, 9, 3
    xs = np.full((len(lengths), n_max, d), np.nan)
    ys = np.full((len(lengths), m_max, d), np.nan)
    expect = []
    for b, (n, m) in enumerate(lengths):
        x, y = random_pair(rng, n, m, d)
        xs[b, :n], ys[b, :m] = x, y
        expect.append(ref_value(x, y, 1.0, "abs"))
    lx, ly = [n for n, _ in lengths], [m for _, m in lengths]
    got = ops.to_numpy(soft_dtw(native(backend, xs), native(backend, ys), 1.0, lx, ly))
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-10)


def test_native_in_native_out(backend):
    x = native(backend, np.linspace(0, 1, 5))
    out = soft_dtw(x, np.linspace(0, 1, 4))  # numpy y is moved to x's backend
    assert type(out).__module__.split(".")[0] == type(x).__module__.split(".")[0]
    import eagerpy as ep

    assert isinstance(soft_dtw(ep.astensor(x), ep.astensor(x)), ep.Tensor)


# =========================================================================================== gradients
@pytest.mark.parametrize("kind", ["abs", "sq"])
def test_gradient_matches_reference(backend, kind):
    if backend not in GRAD_BACKENDS:
        pytest.skip("numpy is forward-only")
    rng = np.random.default_rng(3)
    for n, m in SHAPES[:3] + [(30, 17)]:
        x, y = random_pair(rng, n, m, 2)
        value, gx, gy = value_and_grads(backend, x[None], y[None], gamma=0.5, cost=kind)
        rx, ry = ref_grads(x, y, 0.5, kind)
        assert abs(value - ref_value(x, y, 0.5, kind)) < 1e-10 * max(1.0, abs(value))
        np.testing.assert_allclose(gx[0], rx, rtol=0, atol=1e-10)
        np.testing.assert_allclose(gy[0], ry, rtol=0, atol=1e-10)


def test_gradient_matches_finite_differences(backend):
    if backend not in GRAD_BACKENDS:
        pytest.skip("numpy is forward-only")
    rng = np.random.default_rng(4)
    x, y = random_pair(rng, 8, 6, 1)
    _, gx, gy = value_and_grads(backend, x[None], y[None], gamma=1.0, cost="abs")
    eps = 1e-6
    for arr, g, is_x in ((x, gx[0], True), (y, gy[0], False)):
        for i in range(arr.shape[0]):
            ap, am = arr.copy(), arr.copy()
            ap[i, 0] += eps
            am[i, 0] -= eps
            fp = ref_value(ap, y) if is_x else ref_value(x, ap)
            fm = ref_value(am, y) if is_x else ref_value(x, am)
            assert abs((fp - fm) / (2 * eps) - g[i, 0]) < 1e-7


def test_padded_gradient_is_exact_and_zero_on_padding(backend):
    if backend not in GRAD_BACKENDS:
        pytest.skip("numpy is forward-only")
    rng = np.random.default_rng(5)
    xs, ys = np.full((2, 9, 1), np.nan), np.full((2, 7, 1), np.nan)
    (x0, y0), (x1, y1) = random_pair(rng, 6, 7), random_pair(rng, 9, 3)
    xs[0, :6], ys[0, :7], xs[1, :9], ys[1, :3] = x0, y0, x1, y1
    _, gx, gy = value_and_grads(backend, xs, ys, lengths_x=[6, 9], lengths_y=[7, 3])
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
    assert np.all(gx[0, 6:] == 0) and np.all(gy[1, 3:] == 0)
    for b, (x, y, n, m) in enumerate([(x0, y0, 6, 7), (x1, y1, 9, 3)]):
        rx, ry = ref_grads(x, y)
        np.testing.assert_allclose(gx[b, :n], rx, atol=1e-10)
        np.testing.assert_allclose(gy[b, :m], ry, atol=1e-10)


def test_cost_matrix_and_callable_cost(backend):
    rng = np.random.default_rng(6)
    x, y = random_pair(rng, 7, 5, 2)
    c = ref_cost(x, y, "sq")
    got = float(ops.to_numpy(soft_dtw_cost_matrix(native(backend, c), 0.3)))
    assert abs(got - ref_value(x, y, 0.3, "sq")) < 1e-10

    def sq(a, b):  # EagerPy callable cost
        d = a[:, :, None, :] - b[:, None, :, :]
        return (d * d).sum(axis=-1)

    got = ops.to_numpy(soft_dtw(native(backend, x[None]), native(backend, y[None]), 0.3, cost=sq))
    assert abs(float(got[0]) - ref_value(x, y, 0.3, "sq")) < 1e-10
    if backend in GRAD_BACKENDS:
        b = ops.get_backend(backend)
        _, g = b.value_and_grad(lambda p: soft_dtw_cost_matrix(p["c"], 0.3), {"c": b.asarray(c, "float64")})
        np.testing.assert_allclose(ops.to_numpy(g["c"]), ref_grad_cost(c, 0.3), atol=1e-10)
        _, gx, _ = value_and_grads(backend, x[None], y[None], gamma=0.3, cost=sq)
        np.testing.assert_allclose(gx[0], ref_grads(x, y, 0.3, "sq")[0], atol=1e-10)


# =========================================================================================== divergence
def test_divergence(backend):
    rng = np.random.default_rng(7)
    x, y = random_pair(rng, 9, 6, 2)
    xb, yb = native(backend, x[None]), native(backend, y[None])
    got = float(ops.to_numpy(soft_dtw_divergence(xb, yb, 1.0))[0])
    assert abs(got - ref_divergence(x, y)) < 1e-10
    assert float(ops.to_numpy(soft_dtw(xb, xb, divergence=True))[0]) == 0.0
    vals = ops.to_numpy(soft_dtw(native(backend, rng.normal(size=(20, 6, 2))),
                                 native(backend, rng.normal(size=(20, 8, 2))), 1.0, divergence=True,
                                 lengths_x=rng.integers(1, 7, 20), lengths_y=rng.integers(1, 9, 20)))
    assert np.all(vals >= 0)


def test_empty_items(backend):
    """Zero-length items: sdtw +inf; divergence 0 for two empty, +inf for one empty; gradients finite."""
    x, y = native(backend, np.ones((3, 4, 1))), native(backend, np.ones((3, 5, 1)) * 2)
    plain = ops.to_numpy(soft_dtw(x, y, lengths_x=[0, 2, 0], lengths_y=[3, 0, 0]))
    assert np.all(np.isinf(plain))
    div = ops.to_numpy(soft_dtw(x, y, lengths_x=[0, 2, 0], lengths_y=[3, 0, 0], divergence=True))
    assert np.isinf(div[0]) and np.isinf(div[1]) and div[2] == 0
    if backend in GRAD_BACKENDS:
        _, gx, gy = value_and_grads(backend, np.ones((2, 4, 1)), np.ones((2, 5, 1)), lengths_x=[0, 4],
                                    lengths_y=[5, 5], divergence=True)
        assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy)) and np.all(gx[0] == 0)


# =========================================================================================== compiled
def test_jit(backend):
    """Under the backend's jit (jax.jit / tf.function via the adapter), value and gradient stay exact."""
    if backend not in ("jax", "tensorflow"):
        pytest.skip("no tracing compiler")
    b = ops.get_backend(backend)
    rng = np.random.default_rng(8)
    x, y = random_pair(rng, 40, 30, 1)

    def f(p):
        return soft_dtw(p["x"], p["y"], 1.0, cost="abs").sum()

    vg = b.jit(lambda p: b.value_and_grad(f, p))
    params = {"x": b.asarray(x[None], "float64"), "y": b.asarray(y[None], "float64")}
    value, grads = vg(params)
    assert abs(float(ops.to_numpy(value)) - ref_value(x, y)) < 1e-10
    np.testing.assert_allclose(ops.to_numpy(grads["x"])[0], ref_grads(x, y)[0], atol=1e-10)
    vg(params)
    assert vg.trace_count == 1


# =========================================================================================== cross-backend
def test_backends_agree(backend):
    """Same value and gradient as the torch/numpy result on a padded batch (1e-10, float64)."""
    rng = np.random.default_rng(9)
    xs, ys = rng.normal(size=(3, 25, 2)), rng.normal(size=(3, 19, 2))
    kw = dict(gamma=1.0, lengths_x=[25, 11, 3], lengths_y=[19, 19, 7])
    base = ops.to_numpy(soft_dtw(xs, ys, **kw))  # numpy backend
    got = ops.to_numpy(soft_dtw(native(backend, xs), native(backend, ys), **kw))
    np.testing.assert_allclose(got, base, rtol=0, atol=1e-10)
    if backend in GRAD_BACKENDS:
        try:
            _, tgx, tgy = value_and_grads("torch", xs, ys, **kw)
        except Exception:  # torch not installed: compare with the reference per item instead
            pytest.skip("torch not available as the comparison backend")
        _, gx, gy = value_and_grads(backend, xs, ys, **kw)
        np.testing.assert_allclose(gx, tgx, rtol=0, atol=1e-10)
        np.testing.assert_allclose(gy, tgy, rtol=0, atol=1e-10)


@pytest.mark.parametrize("divergence", [False, True])
def test_host_and_wavefront_kernels_agree(backend, divergence):
    """The Numba host loops and the anti-diagonal wavefront: same values and gradients (padded batch, an empty
    item, unequal lengths), so either can serve every backend."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(7)
    b = ops.get_backend(backend)
    x = rng.normal(size=(3, 40, 2))
    y = rng.normal(size=(3, 33, 2))
    lx, ly = [40, 17, 0], [33, 33, 0]
    out = {}
    for kernel in ("host", "wavefront"):
        def f(p):
            v = soft_dtw(p["x"], b.asarray(y, "float64"), 0.7, lx, ly, divergence=divergence, kernel=kernel)
            v = ops.nan_to_num(v, 0.0)
            return ep_where_finite(v).sum()
        if backend == "numpy":
            v = soft_dtw(b.asarray(x, "float64"), b.asarray(y, "float64"), 0.7, lx, ly, divergence=divergence,
                         kernel=kernel)
            out[kernel] = (ops.to_numpy(v), None)
        else:
            val, g = b.value_and_grad(f, {"x": b.asarray(x, "float64")})
            v = soft_dtw(b.asarray(x, "float64"), b.asarray(y, "float64"), 0.7, lx, ly, divergence=divergence,
                         kernel=kernel)
            out[kernel] = (ops.to_numpy(v), ops.to_numpy(g["x"]))
    np.testing.assert_allclose(out["host"][0], out["wavefront"][0], rtol=1e-12, atol=1e-12)
    if backend != "numpy":
        assert np.abs(out["host"][1]).max() > 0
        np.testing.assert_allclose(out["host"][1], out["wavefront"][1], rtol=1e-10, atol=1e-12)


def ep_where_finite(v):
    import eagerpy as ep

    v = ep.astensor(v)
    return ep.where(v.abs() < 1e300, v, ep.zeros_like(v))


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="kernel"):
        soft_dtw(np.zeros(3), np.zeros(4), kernel="gpu-magic")
