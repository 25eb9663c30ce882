"""larnd_diff.ops on every selected backend: values vs NumPy float64, gradients vs central finite differences,
the same under the backend's jit (jax.jit, tf.function), and dtype/device preservation.

The ``backend`` fixture (a backend name) comes from tests/conftest.py (``--backend`` / ``LARND_DIFF_BACKENDS``).
Each case is a function of named inputs written once with ``larnd_diff.ops``; its reference is plain NumPy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import ops

R = np.random.default_rng(12345)


def _away_from_integers(shape):
    """Values whose floor/ceil/round do not change under a finite-difference step."""
    base = R.integers(-4, 5, size=shape).astype(np.float64)
    frac = R.choice([0.15, 0.3, 0.7, 0.85], size=shape)
    return base + frac


def _np_erf(x):
    return np.vectorize(math.erf)(x)


def _np_log_ndtr(x):
    """log Phi(x) from math.erfc (no cancellation in either tail); below -30, where erfc underflows, the
    asymptotic series of Mills' ratio (its truncation error there is < 1e-17)."""
    def one(v):
        if v > -30.0:
            return math.log(0.5 * math.erfc(-v / math.sqrt(2.0)))
        w = 1.0 / (v * v)
        series = 1.0 - w + 3 * w ** 2 - 15 * w ** 3 + 105 * w ** 4
        return -0.5 * v * v - math.log(-v) - 0.5 * math.log(2 * math.pi) + math.log(series)
    return np.vectorize(one)(x)


def _np_logcumsumexp(x, axis, reverse):
    flip = (lambda a: np.flip(a, axis)) if reverse else (lambda a: a)
    return flip(np.log(np.cumsum(np.exp(flip(x)), axis=axis)))


def _np_cumsum(x, axis, reverse):
    flip = (lambda a: np.flip(a, axis)) if reverse else (lambda a: a)
    return flip(np.cumsum(flip(x), axis=axis))


def _np_scatter_add(target, index, values):
    out = target.copy()
    np.add.at(out, index, values)
    return out


def _np_segment_sum(values, ids, n):
    out = np.zeros((n,) + values.shape[1:])
    np.add.at(out, ids, values)
    return out


def _np_index_set(x, index, values):
    out = x.copy()
    out[index] = values
    return out


@dataclass
class Case:
    name: str
    fn: Callable            # (**tensors) -> tensor, written with larnd_diff.ops / eagerpy
    ref: Callable           # (**numpy arrays) -> numpy array
    inputs: Dict[str, np.ndarray]
    diff: Tuple[str, ...] = ()   # float inputs to check gradients for
    extra: dict = field(default_factory=dict)


X45 = R.normal(size=(4, 5))
IDX = np.array([0, 2, 0, 5, 2, 2], dtype=np.int64)
SEQ = np.sort(R.normal(size=10))
VALS = np.concatenate([R.normal(size=9), SEQ[[1, 4, 7]]]).reshape(3, 4)  # with exact ties
NANX = np.where(R.random((3, 4)) < 0.3, np.nan, R.normal(size=(3, 4)))

CASES = [
    Case("erf", lambda x: ops.erf(x), _np_erf, {"x": X45}, ("x",)),
    Case("log_ndtr", lambda x: ops.log_ndtr(x), lambda x: _np_log_ndtr(x), {"x": X45 * 3}, ("x",)),
    Case("log_ndtr_tails", lambda x: ops.log_ndtr(x), lambda x: _np_log_ndtr(x),
         {"x": np.array([-40.0, -12.0, -6.0, 6.0, 12.0])}, ("x",)),
    Case("sigmoid", lambda x: ops.sigmoid(x), lambda x: 1 / (1 + np.exp(-x)), {"x": X45 * 5}, ("x",)),
    Case("sigmoid_extreme", lambda x: ops.sigmoid(x), lambda x: np.array([0.0, 1 / (1 + math.exp(30.0)), 0.5,
                                                                           1 / (1 + math.exp(-30.0)), 1.0]),
         {"x": np.array([-800.0, -30.0, 0.0, 30.0, 800.0])}, ()),
    Case("floor", lambda x: ops.floor(x), lambda x: np.floor(x), {"x": _away_from_integers((3, 4))}, ("x",)),
    Case("ceil", lambda x: ops.ceil(x), lambda x: np.ceil(x), {"x": _away_from_integers((3, 4))}, ("x",)),
    Case("round_half_even", lambda x: ops.round_half_even(x), lambda x: np.round(x),
         {"x": _away_from_integers((3, 4))}, ("x",)),
    Case("round_ties", lambda x: ops.round_half_even(x), lambda x: np.array([0.0, 2.0, 2.0, -0.0, -2.0, -2.0]),
         {"x": np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])}, ()),
    Case("logcumsumexp_last", lambda x: ops.logcumsumexp(x), lambda x: _np_logcumsumexp(x, -1, False),
         {"x": X45}, ("x",)),
    Case("logcumsumexp_axis0_reverse", lambda x: ops.logcumsumexp(x, axis=0, reverse=True),
         lambda x: _np_logcumsumexp(x, 0, True), {"x": X45}, ("x",)),
    Case("logcumsumexp_large", lambda x: ops.logcumsumexp(x, axis=-1),
         lambda x: np.log(np.cumsum(np.exp(x - 1000.0))) + 1000.0, {"x": np.array([1000.0, 1001.0, 999.0])}, ()),
    Case("cumsum_axis1", lambda x: ops.cumsum(x, 1), lambda x: _np_cumsum(x, 1, False), {"x": X45}, ("x",)),
    Case("cumsum_axis0_reverse", lambda x: ops.cumsum(x, 0, reverse=True), lambda x: _np_cumsum(x, 0, True),
         {"x": X45}, ("x",)),
    Case("scatter_add_2d", lambda t, i, v: ops.scatter_add(t, i, v), lambda t, i, v: _np_scatter_add(t, i, v),
         {"t": R.normal(size=(6, 3)), "i": IDX, "v": R.normal(size=(6, 3))}, ("t", "v")),
    Case("scatter_add_1d", lambda t, i, v: ops.scatter_add(t, i, v), lambda t, i, v: _np_scatter_add(t, i, v),
         {"t": R.normal(size=7), "i": IDX, "v": R.normal(size=6)}, ("t", "v")),
    Case("segment_sum", lambda v, i: ops.segment_sum(v, i, 5), lambda v, i: _np_segment_sum(v, i, 5),
         {"v": R.normal(size=(7, 2)), "i": np.array([3, 0, 3, 1, 1, 0, 3], dtype=np.int64)}, ("v",)),
    Case("gather_axis1_2d_index", lambda x, i: ops.gather(x, i, 1), lambda x, i: np.take(x, i, axis=1),
         {"x": X45, "i": np.array([[0, 4, 4], [2, 1, 0]], dtype=np.int64)}, ("x",)),
    Case("gather_axis0", lambda x, i: ops.gather(x, i, 0), lambda x, i: np.take(x, i, axis=0),
         {"x": X45, "i": np.array([3, 0, 3], dtype=np.int64)}, ("x",)),
    Case("take_along_axis1", lambda x, i: ops.take_along_axis(x, i, 1),
         lambda x, i: np.take_along_axis(x, i, 1),
         {"x": X45, "i": R.integers(0, 5, size=(4, 2)).astype(np.int64)}, ("x",)),
    Case("take_along_axis0", lambda x, i: ops.take_along_axis(x, i, 0),
         lambda x, i: np.take_along_axis(x, i, 0),
         {"x": X45, "i": R.integers(0, 4, size=(3, 5)).astype(np.int64)}, ("x",)),
    Case("take_along_axis0_broadcast", lambda x, i: ops.take_along_axis(x, i, 0),
         lambda x, i: np.take_along_axis(x, i, 0),
         {"x": R.normal(size=(4, 5, 2)), "i": R.integers(0, 4, size=(2, 1, 2)).astype(np.int64)}, ("x",)),
    Case("searchsorted_left", lambda s, v: ops.searchsorted(s, v), lambda s, v: np.searchsorted(s, v),
         {"s": SEQ, "v": VALS}, ()),
    Case("searchsorted_right", lambda s, v: ops.searchsorted(s, v, side="right"),
         lambda s, v: np.searchsorted(s, v, side="right"), {"s": SEQ, "v": VALS}, ()),
    Case("stop_gradient", lambda x: ops.stop_gradient(x) * x, lambda x: x * x, {"x": X45}, ()),
    Case("cast_float32", lambda x: ops.cast(x, "float32"), lambda x: x.astype(np.float32), {"x": X45}, ()),
    Case("cast_int64", lambda x: ops.cast(ops.floor(x), "int64"), lambda x: np.floor(x).astype(np.int64),
         {"x": X45 * 3}, ()),
    Case("einsum", lambda a, b: ops.einsum("ij,jk->ik", a, b), lambda a, b: a @ b,
         {"a": R.normal(size=(3, 4)), "b": R.normal(size=(4, 2))}, ("a", "b")),
    Case("einsum_trace_outer", lambda a, b: ops.einsum("ii,k->k", a, b), lambda a, b: np.trace(a) * b,
         {"a": R.normal(size=(3, 3)), "b": R.normal(size=4)}, ("a", "b")),
    Case("nan_to_num", lambda x: ops.nan_to_num(x, nan=-1.5), lambda x: np.where(np.isnan(x), -1.5, x),
         {"x": NANX}, ("x",)),
    Case("nan_to_num_keeps_inf", lambda x: ops.nan_to_num(x), lambda x: np.where(np.isnan(x), 0.0, x),
         {"x": np.array([np.inf, -np.inf, np.nan, 1.0])}, ()),
    Case("index_set_rows", lambda x, i, v: ops.index_set(x, i, v), lambda x, i, v: _np_index_set(x, i, v),
         {"x": R.normal(size=(5, 3)), "i": np.array([1, 3], dtype=np.int64), "v": R.normal(size=(2, 3))},
         ("x", "v")),
    Case("index_set_tuple_scalar", lambda x, i, j: ops.index_set(x, (i, j), 7.0),
         lambda x, i, j: _np_index_set(x, (i, j), 7.0),
         {"x": R.normal(size=(5, 3)), "i": np.array([0, 4], dtype=np.int64), "j": np.array([2, 1], dtype=np.int64)},
         ("x",)),
    Case("linspace", lambda x: ops.linspace(x, -1.0, 2.0, 7) + x[0], lambda x: np.linspace(-1, 2, 7) + x[0],
         {"x": X45[0]}, ("x",)),
    Case("asarray", lambda x: ops.asarray(x, np.arange(5.0)) * x, lambda x: np.arange(5.0) * x,
         {"x": X45[0]}, ("x",)),
]
IDS = [c.name for c in CASES]


def _tensors(b, arrays):
    return {k: b.asarray(v, v.dtype.name) for k, v in arrays.items()}


def _check_close(got, want, case):
    want = np.asarray(want)
    assert got.shape == want.shape, f"{case.name}: shape {got.shape} != {want.shape}"
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:
        rtol = 1e-6 if want.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, equal_nan=True, err_msg=case.name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_numpy(backend, case):
    b = ops.get_backend(backend)
    out = case.fn(**_tensors(b, case.inputs))
    assert isinstance(out, ep.Tensor) and ops.backend_of(out) == backend
    _check_close(ops.to_numpy(out), case.ref(**case.inputs), case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_under_jit(backend, case):
    b = ops.get_backend(backend)
    jitted = b.jit(lambda ts: case.fn(**ts))
    out = jitted(_tensors(b, case.inputs))
    _check_close(ops.to_numpy(out), case.ref(**case.inputs), case)


def _numpy_loss(case, w, arrays):
    nb = ops.get_backend("numpy")
    out = case.fn(**{k: nb.asarray(v) for k, v in arrays.items()})
    return float(np.sum(np.nan_to_num(ops.to_numpy(out)) * w))


def _finite_difference(case, w, name, eps=1e-6):
    grad = np.zeros_like(case.inputs[name])
    for idx in np.ndindex(grad.shape):
        plus, minus = dict(case.inputs), dict(case.inputs)
        plus[name] = plus[name].copy()
        minus[name] = minus[name].copy()
        plus[name][idx] += eps
        minus[name][idx] -= eps
        grad[idx] = (_numpy_loss(case, w, plus) - _numpy_loss(case, w, minus)) / (2 * eps)
    return grad


def _grad_setup(backend, case):
    b = ops.get_backend(backend)
    ref_out = np.asarray(case.ref(**case.inputs))
    w = np.random.default_rng(7).normal(size=ref_out.shape)
    consts = _tensors(b, {k: v for k, v in case.inputs.items() if k not in case.diff})
    params = _tensors(b, {k: case.inputs[k] for k in case.diff})
    w_t = b.asarray(w, "float64")

    def loss(p):
        out = case.fn(**p, **consts)
        return (ops.nan_to_num(out) * w_t).sum()

    return b, w, params, loss


DIFF_CASES = [c for c in CASES if c.diff]


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.name for c in DIFF_CASES])
def test_gradient_matches_finite_differences(backend, case):
    if backend == "numpy":
        pytest.skip("numpy is forward-only (its NotSupported error is tested in test_backends.py)")
    b, w, params, loss = _grad_setup(backend, case)
    value, grads = b.value_and_grad(loss, params)
    assert set(grads) == set(case.diff)
    assert float(ops.to_numpy(value)) == pytest.approx(_numpy_loss(case, w, case.inputs), rel=1e-12, abs=1e-12)
    for name in case.diff:
        fd = _finite_difference(case, w, name)
        np.testing.assert_allclose(ops.to_numpy(grads[name]), fd, rtol=1e-6, atol=1e-7, err_msg=f"{case.name}:{name}")


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c.name for c in DIFF_CASES])
def test_gradient_under_jit(backend, case):
    """value_and_grad inside the backend's jit gives the eager gradient (jax.jit, tf.function)."""
    if backend in ("numpy", "torch"):
        pytest.skip("jit is a tracing compiler only on jax and tensorflow")
    b, w, params, loss = _grad_setup(backend, case)
    eager = b.value_and_grad(loss, params)[1]
    compiled = b.jit(lambda p: b.value_and_grad(loss, p)[1])(params)
    for name in case.diff:
        np.testing.assert_allclose(ops.to_numpy(compiled[name]), ops.to_numpy(eager[name]), rtol=1e-12, atol=1e-14)


FLOAT32_OPS = {
    "erf": ops.erf, "log_ndtr": ops.log_ndtr, "sigmoid": ops.sigmoid, "floor": ops.floor, "ceil": ops.ceil,
    "round_half_even": ops.round_half_even, "logcumsumexp": ops.logcumsumexp,
    "cumsum": lambda x: ops.cumsum(x, 0), "nan_to_num": ops.nan_to_num, "stop_gradient": ops.stop_gradient,
    "gather": lambda x: ops.gather(x, ops.asarray(x, np.array([1, 0]), "int64"), 0),
    "take_along_axis": lambda x: ops.take_along_axis(x, ops.asarray(x, np.array([1, 0]), "int64"), 0),
    "scatter_add": lambda x: ops.scatter_add(x, ops.asarray(x, np.array([1, 1]), "int64"), x[:2]),
    "segment_sum": lambda x: ops.segment_sum(x, ops.asarray(x, np.array([0, 0, 1]), "int64"), 2),
    "index_set": lambda x: ops.index_set(x, ops.asarray(x, np.array([2]), "int64"), 0.5),
    "linspace": lambda x: ops.linspace(x, 0.0, 1.0, 3),
    "einsum": lambda x: ops.einsum("i,i->i", x, x),
}


@pytest.mark.parametrize("op", sorted(FLOAT32_OPS))
def test_float32_is_kept(backend, op):
    b = ops.get_backend(backend)
    x = b.asarray(np.array([0.25, -1.5, 2.0]), "float32")
    out = FLOAT32_OPS[op](x)
    assert ops.dtype_name(out) == "float32"
    assert b.device_of(out) == b.device_of(x)


def test_index_results_are_int64(backend):
    b = ops.get_backend(backend)
    seq = b.asarray(SEQ, "float64")
    assert ops.dtype_name(ops.searchsorted(seq, seq)) == "int64"
    assert ops.dtype_name(ops.searchsorted(ops.cast(seq, "float32"), ops.cast(seq, "float32"))) == "int64"


def test_searchsorted_mixed_dtypes(backend):
    b = ops.get_backend(backend)
    seq = b.asarray(np.array([0.0, 1.0, 2.0]), "float64")
    vals = b.asarray(np.array([0.5, 2.0, -1.0]), "float32")
    np.testing.assert_array_equal(ops.to_numpy(ops.searchsorted(seq, vals)), [1, 2, 0])
    np.testing.assert_array_equal(ops.to_numpy(ops.searchsorted(seq, b.asarray(np.array([1, 3]), "int64"))), [1, 3])


def test_dtype_name_and_asarray_dtypes(backend):
    b = ops.get_backend(backend)
    like = b.asarray(np.zeros(2), "float32")
    for name in ("float32", "float64", "int32", "int64", "bool"):
        t = ops.asarray(like, np.ones(3), name)
        assert ops.dtype_name(t) == name
        assert b.device_of(t) == b.device_of(like)
    assert ops.dtype_name(ops.asarray(like, 1.5)) == "float64"   # numpy's own dtype when none given
    assert ops.dtype_name(ops.asarray(like, np.array([1, 2]))) == "int64"


def test_raw_tensors_round_trip(backend):
    """Raw framework tensors in -> raw framework tensors out (foolbox-style restore_type)."""
    b = ops.get_backend(backend)
    raw = b.asarray(X45, "float64").raw
    out = ops.erf(raw)
    assert not isinstance(out, ep.Tensor) and type(out) is type(ops.erf(b.asarray(X45, "float64")).raw)
    np.testing.assert_allclose(ops.to_numpy(out), _np_erf(X45), rtol=1e-12)


def test_secondary_arguments_accept_numpy(backend):
    """Index and value arguments may be numpy arrays or Python numbers; they land on the target's device."""
    b = ops.get_backend(backend)
    t = b.asarray(np.zeros(4), "float64")
    out = ops.scatter_add(t, np.array([0, 0, 3]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(ops.to_numpy(out), [3.0, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(ops.to_numpy(ops.gather(t + 1, [1, 2], 0)), [1.0, 1.0])
