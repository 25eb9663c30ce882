"""Checkpointable optimiser state without pickle: ``Optimizer.state()`` is a flat ``dict[str, numpy.ndarray]`` (plain
string keys, numeric arrays, scalars 0-d) that survives ``np.savez`` / ``np.load(allow_pickle=False)`` and restores
an optimiser bit for bit - the framework Adams (torch.optim + scheduler, the optax state pytree, the keras
variables) and the host-side full-matrix Adam. The ``backend`` fixture comes from tests/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.backends.optim import make_optimizer

START = {"Ab": 0.8, "kb": 0.0486, "lifetime": 2.2}


def _needs_grad(backend):
    if not ops.get_backend(backend).supports("grad"):
        pytest.skip(f"{backend} is forward-only: no optimiser")


def _grads(i):
    """Deterministic gradients, some above the clipping norm."""
    return {k: float(np.sin(1.7 * i + j) * (1 + 2 * j)) for j, k in enumerate(START)}


def _run(opt, steps, first=0):
    for i in range(first, first + steps):
        opt.set_epoch(i // 2)
        opt.step(_grads(i))
        if i % 3 == 2:
            opt.clamp({"Ab": 0.7}, {"Ab": 0.81})


def _through_npz(state, path):
    np.savez(path, **state)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("method", ["adam", "adam-full"])
def test_state_round_trips_bit_exactly_through_npz(backend, method, tmp_path):
    _needs_grad(backend)
    settings = dict(lr=0.05, lr_decay=0.9, clip_norm=1.0, method=method)
    a = make_optimizer(backend, START, **settings)
    _run(a, 5)
    state = a.state()
    assert all(isinstance(k, str) for k in state)
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in state.values())
    assert state["epoch"].shape == () and int(state["epoch"]) == 2

    loaded = _through_npz(state, tmp_path / "opt.npz")
    assert set(loaded) == set(state)
    for k in state:
        assert loaded[k].dtype == state[k].dtype and loaded[k].tobytes() == state[k].tobytes(), k

    b = make_optimizer(backend, {k: 1.0 for k in START}, **settings)  # other values: the state must set them
    b.load_state(loaded)
    assert b.values() == a.values() and b.lr == a.lr and b.epoch == a.epoch
    _run(a, 4, first=5)
    _run(b, 4, first=5)
    assert b.values() == a.values()   # bit-identical parameters (float equality of every value)
    assert b.lr == a.lr
    for k, v in a.state().items():
        assert b.state()[k].tobytes() == v.tobytes(), k


def test_state_of_another_optimiser_is_refused(backend):
    _needs_grad(backend)
    small = make_optimizer(backend, {"Ab": 0.8}, lr=0.05)
    small.step({"Ab": 0.3})
    big = make_optimizer(backend, START, lr=0.05)
    with pytest.raises((KeyError, ValueError)):
        big.load_state(small.state())


def test_full_matrix_state_keeps_its_step_factors(backend, tmp_path):
    _needs_grad(backend)
    a = make_optimizer(backend, START, lr=0.05, method="adam-full")
    a.set_factors({"kb": 0.5})
    _run(a, 3)
    b = make_optimizer(backend, START, lr=0.05, method="adam-full")
    b.load_state(_through_npz(a.state(), tmp_path / "full.npz"))
    assert b.factors() == a.factors() == {"Ab": 1.0, "kb": 0.5, "lifetime": 1.0}


def _quadratic(x):
    a = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, -0.2], [0.5, -0.2, 2.0]])
    b = np.array([1.0, -2.0, 0.5])
    return 0.5 * x @ a @ x - b @ x, a @ x - b, np.linalg.solve(a, b)


def _bfgs_steps(opt, n):
    for _ in range(n):
        x = np.array(list(opt.values().values()))
        f, g, _ = _quadratic(x)
        opt.step(dict(zip(opt.names, g)), f)


def test_trust_region_bfgs_minimises_a_quadratic_and_resumes_exactly(backend, tmp_path):
    """The quasi-Newton optimiser reaches the minimum of a quadratic within a few steps (BFGS is exact on
    quadratics), rejects nothing there, and its state round-trips through npz bit for bit."""
    _needs_grad(backend)
    opt = make_optimizer(backend, {"a": 0.0, "b": 0.0, "c": 0.0}, lr=1.0, lr_decay=1.0, clip_norm=None,
                         method="bfgs")
    _bfgs_steps(opt, 4)
    other = make_optimizer(backend, {"a": 0.0, "b": 0.0, "c": 0.0}, lr=1.0, lr_decay=1.0, clip_norm=None,
                           method="bfgs")
    other.load_state(_through_npz(opt.state(), tmp_path / "s.npz"))
    _bfgs_steps(opt, 12)
    _bfgs_steps(other, 12)
    assert opt.values() == other.values()
    np.testing.assert_allclose(list(opt.values().values()), _quadratic(np.zeros(3))[2], atol=1e-9)
    with pytest.raises(ValueError, match="needs the finite loss"):
        opt.step({"a": 0.0, "b": 0.0, "c": 0.0}, float("nan"))
