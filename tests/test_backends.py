"""Backend registry and adapter protocol: discovery, errors, gradients over a dict, jvp, jit, checkpoint, RNG,
dtypes/devices and the EagerPy compat patches. The ``backend`` fixture comes from tests/conftest.py."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.backends.base import Backend, BackendUnavailable, NotSupported

DIFFERENTIABLE = ("torch", "jax", "tensorflow")


def _needs_autodiff(backend):
    if backend not in DIFFERENTIABLE:
        pytest.skip(f"{backend} is forward-only")


# ============================================================================== registry
def test_import_larnd_diff_imports_no_framework():
    # reading the registry (every adapter class, its features) imports no framework either
    code = ("import sys, larnd_diff, larnd_diff.ops as o; o.get_backend('numpy'); o.gradient_backends(); "
            "o.available_backends(); [o.backend_class(n) for n in o.known_backends()]; "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_names_and_aliases(backend):
    b = ops.get_backend(backend)
    assert b.name == backend and isinstance(b, Backend)
    assert ops.get_backend(backend.upper()) is b
    aliases = {"torch": "pytorch", "tensorflow": "tf", "numpy": "np"}
    if backend in aliases:
        assert ops.get_backend(aliases[backend]) is b
    assert backend in ops.available_backends()
    assert set(ops.known_backends()) >= {"numpy", "torch", "jax", "tensorflow"}


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'mxnet'; known backends: .*numpy.*torch"):
        ops.get_backend("mxnet")


_PLUGIN = textwrap.dedent('''
    from larnd_diff.backends.numpy import Backend as NumpyBackend

    class Backend(NumpyBackend):
        """A third-party adapter: reuses numpy, declares a new name."""
        name = "dummy"
        framework = "numpy"

        def erf(self, x):
            return 0 * x + 42.0

    class Paddle(NumpyBackend):
        name = "paddle"
        framework = "no_such_framework_xyz"
        pip_extra = "paddle"

    NotABackend = object
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a module with a Backend subclass and declare it through a (monkeypatched) entry point."""
    (tmp_path / "larnd_plugin_dummy.py").write_text(_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("dummy", "larnd_plugin_dummy:Backend", ops.ENTRY_POINT_GROUP),
           EntryPoint("paddle", "larnd_plugin_dummy:Paddle", ops.ENTRY_POINT_GROUP),
           EntryPoint("broken", "larnd_plugin_dummy:NotABackend", ops.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(ops, "entry_points", lambda group: [e for e in eps if e.group == group])
    monkeypatch.setattr(ops, "_INSTANCES", dict(ops._INSTANCES))  # leave the real cache untouched
    monkeypatch.setattr(ops, "_BY_TYPE", dict(ops._BY_TYPE))
    yield


def test_entry_point_backend_is_found(plugin):
    b = ops.get_backend("dummy")
    assert type(b).__module__ == "larnd_plugin_dummy" and b.name == "dummy"
    assert ops.get_backend("dummy") is b  # cached
    assert "dummy" in ops.known_backends() and "dummy" in ops.available_backends()
    assert "broken" not in ops.available_backends()
    x = b.asarray(np.array([0.5]))
    assert float(b.erf(x.raw)[0]) == 42.0
    # reusing numpy's EagerPy type must not steal dispatch from the built-in numpy backend
    assert float(ops.to_numpy(ops.erf(x))[0]) == pytest.approx(0.5204998778)


def test_entry_point_must_be_a_backend(plugin):
    with pytest.raises(TypeError, match="must name a subclass"):
        ops.get_backend("broken")


def test_missing_framework_names_the_pip_extra(plugin):
    with pytest.raises(BackendUnavailable, match=r"pip install larnd-diff\[paddle\]"):
        ops.get_backend("paddle")
    assert "paddle" in ops.known_backends() and "paddle" not in ops.available_backends()


def test_backend_of_eagerpy_and_raw(backend):
    b = ops.get_backend(backend)
    t = b.asarray(np.arange(3.0), "float64")
    assert ops.backend_of(t) == backend and ops.backend_of(t.raw) == backend
    assert ops.get_backend(t) is b and ops.get_backend(t.raw) is b
    with pytest.raises(TypeError, match="cannot tell the backend"):
        ops.backend_of([1.0, 2.0])


def test_supports(backend):
    b = ops.get_backend(backend)
    expected = backend in DIFFERENTIABLE
    for feature in ("grad", "jvp", "jit", "checkpoint"):
        assert b.supports(feature) is expected
        assert type(b).has_feature(feature) is expected
    assert b.supports("compile") is (backend == "torch")
    assert b.supports("device_kernels") is (backend == "torch")
    assert b.supports("float64")
    assert b.supports("gpu") in (True, False)
    assert type(b).has_feature("gpu") is expected
    with pytest.raises(ValueError, match="unknown feature"):
        b.supports("quantum")


def test_features_come_from_overridden_methods():
    class Eager(Backend):
        name = "eager"

    class WithGradients(Eager):
        def value_and_grad(self, f, params, *args, has_aux=False):
            return None

    class Float32Only(Eager):
        float_dtypes = ("float32",)

    assert not any(Eager.has_feature(f) for f in ("grad", "jvp", "jit", "compile", "checkpoint", "gpu"))
    assert WithGradients.has_feature("grad") and not WithGradients.has_feature("jvp")
    assert Eager().supports("float64") and not Float32Only().supports("float64")
    assert not Eager().supports("gpu")  # gpu_count() is 0 by default
    assert ops.gradient_backends() == [n for n in ops.known_backends() if ops.backend_class(n).has_feature("grad")]
    assert {"torch", "jax", "tensorflow"} <= set(ops.gradient_backends()) and "numpy" not in ops.gradient_backends()


def test_generic_defaults_of_the_protocol():
    """A backend that overrides no transformation: forward-only custom_vjp and host_vjp, a Python-loop scan,
    identity checkpoint and compile_glue, no device kernels, no optimiser."""
    b = ops.get_backend("numpy")
    x = np.array([1.0, 2.0])
    op = b.custom_vjp(lambda v: (v * 2.0, (v,)), lambda res, g: (g * 2.0,))
    np.testing.assert_array_equal(op(x), [2.0, 4.0])
    host = b.host_vjp(lambda v, k: v * k, lambda v, k, g: g * k, (2,))
    np.testing.assert_array_equal(host(x, np.array([3.0, 3.0])), [3.0, 6.0])
    carry, ys = b.scan(lambda c, v: (c + v, c * v), b.asarray(np.array(0.0)), b.asarray(np.arange(4.0)))
    assert float(carry.raw) == 6.0 and ys.raw.tolist() == [0.0, 0.0, 2.0, 9.0]
    _, ys = b.scan(lambda c, v: (c + v, c), b.asarray(np.array(0.0)), b.asarray(np.arange(4.0)), reverse=True)
    assert ys.raw.tolist() == [6.0, 5.0, 3.0, 0.0]
    assert b.compile_glue(np.sin) is np.sin and b.gpu_count() == 0
    for call in (lambda: b.device_vjp(None, None, (1,)), lambda: b.scratch_zeros("cuda:0"),
                 lambda: b.adam({"a": 1.0}, lr=0.1, lr_decay=1.0, clip_norm=None, dtype="float64", device=None),
                 lambda: b.hessian(None, ["a"], np.zeros(1), "float64", None)):
        with pytest.raises(NotSupported, match="backend 'numpy' cannot do"):
            call()

    class GradsButNoHostKernels(Backend):
        name = "half"

        def value_and_grad(self, f, params, *args, has_aux=False):
            return None

    with pytest.raises(NotSupported, match="backend 'half' cannot do 'host_vjp'.*lose them"):
        GradsButNoHostKernels().host_vjp(None, None, (1,))


def test_numpy_not_supported_messages(backend):
    _only(backend, "numpy")
    b = ops.get_backend("numpy")
    with pytest.raises(NotSupported) as err:
        b.value_and_grad(lambda p: p["a"].sum(), {"a": np.ones(2)})
    assert str(err.value) == ("backend 'numpy' cannot compute gradients: it is forward-only; "
                              "use torch, jax or tensorflow")
    assert (err.value.backend, err.value.op) == ("numpy", "grad")
    with pytest.raises(NotSupported, match="cannot compute forward-mode derivatives"):
        b.jvp(lambda p: p["a"], {"a": np.ones(2)}, {"a": np.ones(2)})


def test_missing_op_in_an_adapter_is_not_supported():
    class Bare(Backend):
        name = "bare"

    with pytest.raises(NotSupported, match="backend 'bare' cannot do 'erf': its adapter does not implement it"):
        Bare().erf(None)
    with pytest.raises(NotSupported, match="backend 'bare' cannot compute gradients: it is forward-only"):
        Bare().value_and_grad(lambda p: p, {})


# ============================================================================== gradients
def _quadratic(p, scale):
    """sum(a * x^2) * scale + b^3; parameter 'unused' does not enter."""
    x = ops.asarray(p["a"], np.array([1.0, 2.0, 3.0]), "float64")
    return (p["a"] * x * x).sum() * scale + p["b"] ** 3


def _params(b):
    return {"a": b.asarray(np.array([0.5, -1.0, 2.0]), "float64"), "b": b.asarray(np.array(1.5), "float64"),
            "unused": b.asarray(np.array([3.0, 4.0]), "float64")}


def test_value_and_grad_over_a_dict(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    value, grads = b.value_and_grad(_quadratic, _params(b), 2.0)
    assert float(ops.to_numpy(value)) == pytest.approx((0.5 - 4.0 + 18.0) * 2 + 1.5 ** 3)
    np.testing.assert_allclose(ops.to_numpy(grads["a"]), [2.0, 8.0, 18.0])
    assert float(ops.to_numpy(grads["b"])) == pytest.approx(3 * 1.5 ** 2)
    # unused parameters get zero gradients of their own shape (TF would give None, torch would raise)
    np.testing.assert_array_equal(ops.to_numpy(grads["unused"]), [0.0, 0.0])
    assert all(isinstance(g, ep.Tensor) and ops.backend_of(g) == backend for g in grads.values())


def test_value_and_grad_with_aux(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)

    def f(p):
        y = p["a"] * 2.0
        return (y * y).sum(), {"y": y}

    (value, aux), grads = b.value_and_grad(f, _params(b), has_aux=True)
    np.testing.assert_allclose(ops.to_numpy(aux["y"]), [1.0, -2.0, 4.0])
    np.testing.assert_allclose(ops.to_numpy(grads["a"]), [4.0, -8.0, 16.0])
    assert float(ops.to_numpy(value)) == pytest.approx(21.0)


def test_value_and_grad_when_nothing_depends_on_params(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    value, grads = b.value_and_grad(lambda p: ops.asarray(p["a"], 3.0, "float64"), _params(b))
    assert float(ops.to_numpy(value)) == 3.0
    assert all(np.all(ops.to_numpy(g) == 0) for g in grads.values())


def test_value_and_grad_rejects_bad_input(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    with pytest.raises(TypeError, match="parameter 'n' has dtype int64"):
        b.value_and_grad(lambda p: p["n"].sum(), {"n": b.asarray(np.array([1, 2]), "int64")})
    with pytest.raises(ValueError, match="scalar"):
        b.value_and_grad(lambda p: p["a"] * 2.0, _params(b))


def test_gradient_through_stop_gradient(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    x = np.array([1.0, -2.0, 3.0])
    _, grads = b.value_and_grad(lambda p: (ops.stop_gradient(p["x"]) * p["x"]).sum(), {"x": b.asarray(x)})
    np.testing.assert_allclose(ops.to_numpy(grads["x"]), x)  # not 2x


def _only(backend, wanted):
    """Framework-specific tests still follow the --backend selection."""
    if backend != wanted:
        pytest.skip(f"{wanted}-specific test")


def test_torch_gradients_have_no_side_effects(backend):
    _only(backend, "torch")
    import torch
    b = ops.get_backend("torch")
    w = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    param = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))

    def f(p):
        return (p["x"] * ep.astensor(w)).sum()

    for _ in range(2):
        _, grads = b.value_and_grad(f, {"x": ep.astensor(param)})
    np.testing.assert_array_equal(ops.to_numpy(grads["x"]), [2.0, 3.0])
    assert w.grad is None and param.grad is None  # EagerPy's ep.value_and_grad accumulated into w.grad
    assert not grads["x"].raw.requires_grad


def test_jvp_matches_gradient(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    params = _params(b)
    _, grads = b.value_and_grad(_quadratic, params, 2.0)
    value, tangent_out = b.jvp(_quadratic, params, {"b": np.array(1.0)}, 2.0)
    assert float(ops.to_numpy(tangent_out)) == pytest.approx(float(ops.to_numpy(grads["b"])))
    direction = np.array([1.0, 0.5, -1.0])
    _, tangent_out = b.jvp(_quadratic, params, {"a": direction}, 2.0)
    assert float(ops.to_numpy(tangent_out)) == pytest.approx(float(ops.to_numpy(grads["a"]) @ direction))
    # vector output: the Jacobian-vector product of an elementwise map
    _, tangent_out = b.jvp(lambda p: ops.erf(p["a"]), params, {"a": np.ones(3)})
    a = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(ops.to_numpy(tangent_out), 2 / np.sqrt(np.pi) * np.exp(-a * a), rtol=1e-12)


# ============================================================================== jit / checkpoint
def test_jit_traces_once_per_shape(backend):
    b = ops.get_backend(backend)
    jitted = b.jit(lambda x, n: ops.erf(x) * n, static_argnames=("n",))
    x = b.asarray(np.array([0.1, 0.2, 0.3]), "float64")
    out1 = jitted(x, n=2)
    out2 = jitted(x + 1.0, n=2)
    np.testing.assert_allclose(ops.to_numpy(out2), 2 * ops.to_numpy(ops.erf(x + 1.0)), rtol=1e-12)
    assert isinstance(out1, ep.Tensor) and ops.backend_of(out1) == backend
    if backend in ("jax", "tensorflow"):
        assert jitted.trace_count == 1
        jitted(b.asarray(np.zeros(5), "float64"), n=2)
        assert jitted.trace_count == 2
    else:  # eager: the body runs on every call
        assert jitted.trace_count == 2


def test_jit_of_value_and_grad(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    step = b.jit(lambda p: b.value_and_grad(_quadratic, p, 2.0))
    v1, g1 = step(_params(b))
    v2, g2 = step(_params(b))
    np.testing.assert_allclose(ops.to_numpy(g2["a"]), [2.0, 8.0, 18.0])
    assert float(ops.to_numpy(v1)) == float(ops.to_numpy(v2))
    if backend in ("jax", "tensorflow"):
        assert step.trace_count == 1


def _heavy(x, w):
    """A chain worth checkpointing: erf of a scatter-added profile (``w`` may come inside a dict)."""
    w = w["w"] if isinstance(w, dict) else w
    idx = ops.asarray(x, np.array([0, 1, 1, 2, 0]), "int64")
    prof = ops.scatter_add(x * 0.0, idx, ops.sigmoid(w) * 2.0)
    return ops.erf(prof * x).sum() + ops.cumsum(prof, 0)[-1]


def test_checkpoint_gives_the_same_gradient(backend):
    _needs_autodiff(backend)
    b = ops.get_backend(backend)
    params = {"x": b.asarray(np.array([0.3, -0.2, 0.9]), "float64"),
              "w": b.asarray(np.array([0.1, 0.4, -0.5, 1.0, 2.0]), "float64")}
    ck = b.checkpoint(_heavy)
    v0, g0 = b.value_and_grad(lambda p: _heavy(p["x"], p["w"]), params)
    v1, g1 = b.value_and_grad(lambda p: ck(p["x"], {"w": p["w"]}), params)  # nested args cross the boundary too
    assert float(ops.to_numpy(v0)) == pytest.approx(float(ops.to_numpy(v1)), rel=1e-14)
    for k in params:
        np.testing.assert_allclose(ops.to_numpy(g1[k]), ops.to_numpy(g0[k]), rtol=1e-12)


def test_checkpoint_is_identity_on_numpy(backend):
    _only(backend, "numpy")
    b = ops.get_backend("numpy")
    x = b.asarray(np.array([0.3, -0.2, 0.9]))
    w = b.asarray(np.array([0.1, 0.4, -0.5, 1.0, 2.0]))
    assert float(ops.to_numpy(b.checkpoint(_heavy)(x, w))) == float(ops.to_numpy(_heavy(x, w)))


def test_torch_compile_fullgraph(backend):
    _only(backend, "torch")
    b = ops.get_backend("torch")
    # backend="eager": dynamo tracing without the C++ inductor build (which takes minutes on 2 cores)
    jitted = b.jit(lambda x: ops.erf(x) * ops.sigmoid(x), compile=True, fullgraph=True, backend="eager")
    x = b.asarray(np.linspace(-1, 1, 8), "float64")
    np.testing.assert_allclose(ops.to_numpy(jitted(x)), ops.to_numpy(ops.erf(x) * ops.sigmoid(x)), rtol=1e-12)


# ============================================================================== rng, dtypes, devices
def test_rng_is_seeded_and_local(backend):
    b = ops.get_backend(backend)
    r1, r2, r3 = b.rng(3), b.rng(3), b.rng(4)
    a, c = r1.normal((4, 3), "float64"), r2.normal((4, 3), "float64")
    np.testing.assert_array_equal(ops.to_numpy(a), ops.to_numpy(c))
    assert not np.array_equal(ops.to_numpy(a), ops.to_numpy(r3.normal((4, 3), "float64")))
    assert not np.array_equal(ops.to_numpy(a), ops.to_numpy(r1.normal((4, 3), "float64")))  # draws advance
    assert ops.dtype_name(r1.normal((2,), "float32")) == "float32"
    u = ops.to_numpy(r1.uniform((1000,), "float64"))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.05


def test_float64_is_honoured(backend):
    b = ops.get_backend(backend)
    x = b.asarray(np.array([1.0 + 1e-12]), "float64")
    assert ops.dtype_name(x) == "float64" and ops.dtype_name(x * 2.0) == "float64"
    assert float(ops.to_numpy(x - 1.0)[0]) == pytest.approx(1e-12, rel=1e-3)  # lost in float32
    if backend == "jax":
        import jax
        assert jax.config.read("jax_enable_x64")


def test_devices(backend):
    b = ops.get_backend(backend)
    dev = b.default_device()
    x = b.asarray(np.zeros(3), "float32", device=dev)
    assert b.device_of(x) == b.device_of(b.asarray(np.ones(2), "float32", device=b.device_of(x)))
    y = b.asarray(np.zeros(3), "float32", device="cpu")
    assert "cpu" in str(b.device_of(y)).lower()
    assert b.device_of(ops.linspace(y, 0.0, 1.0, 4)) == b.device_of(y)


# ============================================================================== EagerPy compat patches
def test_compat_patches_are_idempotent():
    from larnd_diff.backends import _compat
    before = (ep.JAXTensor.index_update, ep.TensorFlowTensor.full, ep.PyTorchTensor.raw)
    _compat.apply()
    _compat.apply()
    assert (ep.JAXTensor.index_update, ep.TensorFlowTensor.full, ep.PyTorchTensor.raw) == before


def test_compat_fixes(backend):
    """Each EagerPy 0.30 breakage that the patches of larnd_diff/backends/_compat.py fix, on this backend."""
    b = ops.get_backend(backend)
    x64 = b.asarray(np.array([1.0, 2.0, 3.0]), "float64")
    x32 = b.asarray(np.array([1.0, 2.0, 3.0]), "float32")
    # TF mixed-dtype comparison (np.find_common_type removed in numpy 2)
    np.testing.assert_array_equal(ops.to_numpy(x64 < x32 + 0.5), [True, True, True])
    # jax index_update (jax.ops.index_update removed)
    upd = x64.index_update(ep.index[1], b.asarray(np.array(9.0), "float64"))
    np.testing.assert_array_equal(ops.to_numpy(upd), [1.0, 9.0, 3.0])
    # jax list indices
    np.testing.assert_array_equal(ops.to_numpy(x64[[0, 2]]), [1.0, 3.0])
    # TF full ignored the template dtype
    assert ops.dtype_name(ep.full(x64, (2,), 1.5)) == "float64"
    if backend == "torch":  # torch.compile needs a plain `raw` property
        assert ep.PyTorchTensor.raw.fget(x64) is x64._raw
