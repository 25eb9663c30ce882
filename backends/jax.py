"""JAX adapter: ``jax.value_and_grad`` / ``jax.jvp`` on a dict pytree, ``jax.jit``, ``jax.checkpoint``,
``jax.custom_vjp``, ``jax.pure_callback`` for host kernels, ``lax.scan``, optax's Adam.

float64 / int64: JAX silently computes in 32 bits unless ``jax_enable_x64`` is on. This adapter turns the flag on
the first time a 64-bit dtype is asked of it (``asarray``, ``cast``, ``linspace``, ``rng``), so a float64 request
is honoured instead of silently degraded. The flag is process-wide: afterwards jax's own defaults (``jnp.arange``,
Python floats) are 64-bit too. Set ``JAX_ENABLE_X64=1`` before starting Python to make that explicit, or request
only 32-bit dtypes to keep jax's 32-bit defaults. Without x64, ``searchsorted`` returns int32 (jax has no int64
then).

Devices: jax Device objects or strings "cpu", "gpu"/"cuda", "cuda:1", "cpu:0". Inside ``jax.jit`` a
traced array has no device; new tensors then follow jax's placement (the jit's device).
jax is imported when the adapter is instantiated (``self.jax``, ``self.jnp``), not with this module.
"""
from __future__ import annotations

import eagerpy as ep
import numpy as np

from .base import Backend as _Base
from .base import Jitted, check_scalar, parse_device, split_aux, tree_map, unwrap
from .optim import BETA_1, BETA_2, EPSILON, Optimizer, entry, raw

_WIDE = {"float64", "int64", "uint64", "complex128"}


def _unwrap_tree(tree):
    return tree_map(unwrap, tree)


class Backend(_Base):
    name = "jax"
    framework = "jax"
    pip_extra = "jax"
    raw_modules = ("jax", "jaxlib")
    tensor_type = ep.JAXTensor
    prefers_jit = True
    compiles_loops = True
    host_callbacks_on_device = True

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

    def is_raw(self, x):
        return isinstance(x, self.jax.Array)

    def _x64_on(self) -> bool:
        return bool(self.jax.config.read("jax_enable_x64"))

    def _need(self, dtype) -> None:
        """Turn on jax_enable_x64 when a 64-bit dtype is requested (see module docstring for why)."""
        if dtype is not None and np.dtype(dtype).name in _WIDE and not self._x64_on():
            self.jax.config.update("jax_enable_x64", True)

    def _device(self, device):
        """Device spec -> jax Device (None stays None: jax's default placement)."""
        if device is None or isinstance(device, self.jax.Device):
            return device
        platform, _, idx = str(device).lower().partition(":")
        platform = "gpu" if platform == "cuda" else platform
        return self.jax.devices(platform)[int(idx or 0)]

    def _wrap_tree(self, tree):
        return tree_map(lambda v: ep.JAXTensor(v) if isinstance(v, self.jax.Array) else v, tree)

    def _flip_if(self, x, axis, reverse):
        return self.jnp.flip(x, axis) if reverse else x

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        value = unwrap(value)
        if isinstance(value, self.jax.Array):
            self._need(dtype)
            out = value if dtype is None else value.astype(dtype)
        else:
            arr = np.asarray(value, dtype=dtype)
            self._need(arr.dtype)
            out = self.jnp.asarray(arr)
        dev = self._device(device)
        return out if dev is None else self.jax.device_put(out, dev)

    def to_numpy(self, t):
        return np.asarray(unwrap(t))

    def dtype_name(self, t):
        return np.dtype(unwrap(t).dtype).name

    def default_device(self):
        return self.jax.devices()[0]

    def device_of(self, t):
        """The single device of a concrete array; None for traced arrays (inside jit) or sharded ones."""
        try:
            devs = unwrap(t).devices()
        except Exception:  # tracers have no device
            return None
        return next(iter(devs)) if len(devs) == 1 else None

    def cast(self, x, dtype):
        self._need(dtype)
        return x.astype(dtype)

    def linspace(self, start, stop, num, dtype, device=None):
        self._need(dtype)
        out = self.jnp.linspace(start, stop, num, dtype=dtype)
        dev = self._device(device)
        return out if dev is None else self.jax.device_put(out, dev)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return self.jax.scipy.special.erf(x)

    def log_ndtr(self, x):
        return self.jax.scipy.special.log_ndtr(x)

    def sigmoid(self, x):
        return self.jax.nn.sigmoid(x)

    def floor(self, x):
        return self.jnp.floor(x)

    def ceil(self, x):
        return self.jnp.ceil(x)

    def round_half_even(self, x):
        return self.jnp.round(x)  # jnp.round rounds half to even

    def cumsum(self, x, axis, reverse=False):
        return self._flip_if(self.jnp.cumsum(self._flip_if(x, axis, reverse), axis=axis), axis, reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        return self.jax.lax.cumlogsumexp(x, axis=axis % x.ndim, reverse=reverse)

    def scatter_add(self, target, index, values):
        return target.at[index].add(values.astype(target.dtype))

    def segment_sum(self, values, segment_ids, num_segments):
        return self.jax.ops.segment_sum(values, segment_ids, num_segments=num_segments)

    def gather(self, x, index, axis):
        return self.jnp.take(x, index, axis=axis)

    def take_along_axis(self, x, index, axis):
        return self.jnp.take_along_axis(x, index, axis=axis)

    def searchsorted(self, sorted_seq, values, side="left"):
        jnp = self.jnp
        out = jnp.searchsorted(sorted_seq, values, side=side)
        return out.astype(jnp.int64 if self._x64_on() else jnp.int32)

    def stop_gradient(self, x):
        return self.jax.lax.stop_gradient(x)

    def einsum(self, subscripts, *xs):
        return self.jnp.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        jnp = self.jnp
        return jnp.where(jnp.isnan(x), jnp.asarray(nan, dtype=x.dtype), x)

    def index_set(self, x, index, values):
        return x.at[index].set(self.jnp.asarray(values, dtype=x.dtype))

    # ---- transformations -------------------------------------------------------------------
    def value_and_grad(self, f, params, *args, has_aux=False):
        raws = self.float_params(params)

        def raw_f(rp):
            value, aux = split_aux(f({k: ep.JAXTensor(v) for k, v in rp.items()}, *args), has_aux)
            value = unwrap(value)
            check_scalar(value)
            value = value.reshape(())
            return (value, _unwrap_tree(aux)) if has_aux else value

        out, grads = self.jax.value_and_grad(raw_f, has_aux=has_aux)(raws)
        grads = {k: ep.JAXTensor(g) for k, g in grads.items()}
        if has_aux:
            return (ep.JAXTensor(out[0]), self._wrap_tree(out[1])), grads
        return ep.JAXTensor(out), grads

    def jvp(self, f, params, tangents, *args):
        raws = self.float_params(params)
        tans = {k: (self.raw_asarray(tangents[k], self.dtype_name(p)) if k in tangents else self.jnp.zeros_like(p))
                for k, p in raws.items()}

        def raw_f(rp):
            return unwrap(f({k: ep.JAXTensor(v) for k, v in rp.items()}, *args))

        out, tan_out = self.jax.jvp(raw_f, (raws,), (tans,))
        return ep.JAXTensor(out), ep.JAXTensor(tan_out)

    def jit(self, f, static_argnames=(), **options):
        """``jax.jit`` at the raw boundary: array leaves of the arguments (also inside dicts, lists and
        tuples) reach ``f`` as EagerPy tensors, and array leaves of the result come back as EagerPy.
        ``trace_count`` counts traces (= compilations)."""
        jitted = Jitted(f)

        def raw_body(*args, **kwargs):
            jitted._count()
            return _unwrap_tree(f(*self._wrap_tree(args), **self._wrap_tree(kwargs)))

        compiled = self.jax.jit(raw_body, static_argnames=tuple(static_argnames), **options)

        def call(*args, **kwargs):
            return self._wrap_tree(compiled(*_unwrap_tree(args), **_unwrap_tree(kwargs)))

        jitted._compiled = call
        return jitted

    def checkpoint(self, f, policy=None):
        """``jax.checkpoint`` (remat) at the raw boundary; ``policy`` is passed through."""
        def raw_f(*raws):
            return _unwrap_tree(f(*self._wrap_tree(raws)))

        ck = self.jax.checkpoint(raw_f, policy=policy)

        def wrapped(*args):
            return self._wrap_tree(ck(*_unwrap_tree(args)))

        return wrapped

    def rng(self, seed, device=None):
        return _Rng(self, self.jax.random.PRNGKey(int(seed)), self._device(device))

    # ---- hand-written derivatives and loops -----------------------------------------------
    def custom_vjp(self, forward, backward):
        """``jax.custom_vjp`` with both halves jitted: called eagerly, equal shapes then reuse one executable instead
        of re-tracing and re-compiling the lax.scan body per call (inside an outer jit they are simply inlined).
        Running small inputs op by op instead was measured slower: eager jax compiles every primitive per shape
        too."""
        jax = self.jax
        fwd = jax.jit(forward)
        # jax accepts None as "zero cotangent", also for integer inputs (whose cotangent type is float0)
        bwd = jax.jit(lambda residuals, g: tuple(backward(residuals, g)))

        @jax.custom_vjp
        def op(*args):
            return fwd(*args)[0]

        op.defvjp(fwd, bwd)
        return op

    def host_vjp(self, forward, backward, out_shape):
        """``jax.custom_vjp`` whose halves are ``jax.pure_callback`` (usable under ``jax.jit``; device arrays are
        copied to the host and back)."""
        jax = self.jax

        def fwd_np(x, *consts):
            x = np.asarray(x)
            return np.asarray(forward(x, *map(np.asarray, consts)), dtype=x.dtype)

        def bwd_np(x, *rest):
            *consts, g = rest
            x = np.asarray(x)
            return np.asarray(backward(x, *map(np.asarray, consts), np.asarray(g)), dtype=x.dtype)

        @jax.custom_vjp
        def op(x, *consts):
            return jax.pure_callback(fwd_np, jax.ShapeDtypeStruct(out_shape, x.dtype), x, *consts)

        def op_fwd(x, *consts):
            return op(x, *consts), (x, consts)

        def op_bwd(res, g):
            x, consts = res
            dx = jax.pure_callback(bwd_np, jax.ShapeDtypeStruct(x.shape, x.dtype), x, *consts, g)
            return (dx,) + (None,) * len(consts)

        op.defvjp(op_fwd, op_bwd)
        return op

    def scan(self, body, init, xs, reverse=False, keep=True):
        """``jax.lax.scan``: the loop is one step long for the compiler, whatever its length."""
        def wrap(tree):
            return tree_map(ep.astensor, tree)

        def raw_body(carry, x):
            c, y = body(wrap(carry), wrap(x))
            return _unwrap_tree(c), (_unwrap_tree(y) if keep else None)

        carry, ys = self.jax.lax.scan(raw_body, _unwrap_tree(init), _unwrap_tree(xs), reverse=reverse)
        return wrap(carry), (wrap(ys) if keep else None)

    # ---- devices and memory ---------------------------------------------------------------
    def gpu_count(self):
        try:
            return len(self.jax.devices("gpu"))
        except RuntimeError:  # no GPU platform
            return 0

    def placement(self, device):
        """``jax.default_device``: arrays created without a device go there."""
        gpu, index = parse_device(device)
        return self.jax.default_device(self.jax.devices("gpu" if gpu else "cpu")[index])

    def peak_memory(self, gpu):
        """``peak_bytes_in_use`` since the process started (jax cannot reset it)."""
        stats = self.jax.devices("gpu")[gpu].memory_stats() or {}
        return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None

    # ---- fitting --------------------------------------------------------------------------
    def adam(self, values, *, lr, lr_decay, clip_norm, dtype, device):
        return _Adam(self, values, lr, lr_decay, clip_norm, dtype, device)

    def hessian(self, f, names, x0, dtype, device):
        jax, jnp = self.jax, self.jnp
        x = self.raw_asarray(np.asarray(x0), dtype, device)

        def flat(v):
            return jnp.reshape(raw(f({n: v[i] for i, n in enumerate(names)})), ())

        g = jax.grad(flat)
        eye = jnp.eye(len(names), dtype=x.dtype)
        cols = [jax.jvp(g, (x,), (eye[j],))[1] for j in range(len(names))]
        return np.asarray(jnp.stack(cols, 1))


class _Rng:
    """A jax PRNG key that this object splits on every draw (explicit state, not global).

    Use it outside ``jax.jit``: inside a jitted function pass keys explicitly instead.
    """

    def __init__(self, backend, key, device):
        self._b, self._key, self._device = backend, key, device

    def _next(self):
        self._key, sub = self._b.jax.random.split(self._key)
        return sub

    def _place(self, x):
        return ep.JAXTensor(x if self._device is None else self._b.jax.device_put(x, self._device))

    def normal(self, shape, dtype="float32"):
        self._b._need(dtype)
        return self._place(self._b.jax.random.normal(self._next(), tuple(shape), dtype=dtype))

    def uniform(self, shape, dtype="float32"):
        self._b._need(dtype)
        return self._place(self._b.jax.random.uniform(self._next(), tuple(shape), dtype=dtype))


class _Adam(Optimizer):
    """optax: ``clip_by_global_norm`` chained with ``inject_hyperparams(adam)`` (the learning rate lives in the
    optimiser state, so per-epoch decay is a state update)."""

    backend = "jax"

    def __init__(self, backend, values, lr, lr_decay, clip_norm, dtype, device):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        import optax

        self._jax, self._jnp, self._optax = backend.jax, backend.jnp, optax
        self._params = {n: backend.raw_asarray(float(v), dtype, device) for n, v in values.items()}
        adam = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=BETA_1, b2=BETA_2, eps=EPSILON)
        parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []) + [adam]
        self._tx = optax.chain(*parts)
        self._state = self._tx.init(self._params)
        self._set_lr(lr)

    def _hyper(self):
        return self._state[-1].hyperparams

    def _set_lr(self, value: float) -> None:
        hp = self._hyper()
        hp["learning_rate"] = self._jnp.asarray(value, dtype=hp["learning_rate"].dtype)

    def params(self):
        return dict(self._params)

    def values(self):
        return {n: float(v) for n, v in self._params.items()}

    @property
    def lr(self):
        return float(self._hyper()["learning_rate"])

    def set_epoch(self, epoch):
        self._set_lr(self.lr0 * self.lr_decay ** epoch)
        self.epoch = epoch

    def step(self, grads):
        g = {n: self._jnp.asarray(raw(v), dtype=self._params[n].dtype).reshape(self._params[n].shape)
             for n, v in zip(self.names, self._ordered(grads))}
        updates, self._state = self._tx.update(g, self._state, self._params)
        self._params = self._optax.apply_updates(self._params, updates)

    def clamp(self, lower, upper):
        for n in lower:
            self._params[n] = self._jnp.clip(self._params[n], float(lower[n]), float(upper[n]))

    def _state_paths(self, state):
        """(key, leaf) of every array of an optax state: "optax" + the leaf's path in the pytree."""
        tree_util = self._jax.tree_util
        flat, treedef = tree_util.tree_flatten_with_path(state)
        return [("optax" + tree_util.keystr(path), leaf) for path, leaf in flat], treedef

    def _save_state(self):
        out = {f"values/{n}": np.array(v) for n, v in self._params.items()}
        out.update({key: np.array(leaf) for key, leaf in self._state_paths(self._state)[0]})
        return out

    def _restore_state(self, state):
        jnp = self._jnp
        self._params = {n: jnp.asarray(entry(state, f"values/{n}")) for n in self.names}
        paths, treedef = self._state_paths(self._tx.init(self._params))
        leaves_ = [jnp.asarray(entry(state, key)) for key, _ in paths]
        self._state = self._jax.tree_util.tree_unflatten(treedef, leaves_)
