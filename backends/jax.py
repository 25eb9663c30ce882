"""JAX adapter: ``jax.value_and_grad`` / ``jax.jvp`` on a dict pytree, ``jax.jit``, ``jax.checkpoint``.

float64 / int64: JAX silently computes in 32 bits unless ``jax_enable_x64`` is on (notes §7). This
adapter turns the flag on the first time a 64-bit dtype is asked of it (``asarray``, ``cast``,
``linspace``, ``rng``), so a float64 request is honoured instead of silently degraded. The flag is
process-wide: afterwards jax's own defaults (``jnp.arange``, Python floats) are 64-bit too. Set
``JAX_ENABLE_X64=1`` before starting Python to make that explicit, or request only 32-bit dtypes to keep
jax's 32-bit defaults. Without x64, ``searchsorted`` returns int32 (jax has no int64 then).

Devices: jax Device objects or strings "cpu", "gpu"/"cuda", "cuda:1", "cpu:0". Inside ``jax.jit`` a
traced array has no device; new tensors then follow jax's placement (the jit's device).
"""
from __future__ import annotations

import eagerpy as ep
import jax
import jax.numpy as jnp
import numpy as np

from .base import Backend as _Base
from .base import Jitted, check_scalar, split_aux, tree_map, unwrap

_WIDE = {"float64", "int64", "uint64", "complex128"}


def _x64_on() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


def _need(dtype) -> None:
    """Turn on jax_enable_x64 when a 64-bit dtype is requested (see module docstring for why)."""
    if dtype is not None and np.dtype(dtype).name in _WIDE and not _x64_on():
        jax.config.update("jax_enable_x64", True)


def _device(device):
    """Device spec -> jax Device (None stays None: jax's default placement)."""
    if device is None or isinstance(device, jax.Device):
        return device
    spec = str(device).lower()
    platform, _, idx = spec.partition(":")
    platform = "gpu" if platform == "cuda" else platform
    return jax.devices(platform)[int(idx or 0)]


def _wrap_tree(tree):
    return tree_map(lambda v: ep.JAXTensor(v) if isinstance(v, jax.Array) else v, tree)


def _unwrap_tree(tree):
    return tree_map(unwrap, tree)


def _flip_if(x, axis, reverse):
    return jnp.flip(x, axis) if reverse else x


class Backend(_Base):
    name = "jax"
    framework = "jax"
    pip_extra = "jax"
    features = frozenset({"grad", "jvp", "jit", "checkpoint", "float64", "gpu"})
    tensor_type = ep.JAXTensor

    def is_raw(self, x):
        return isinstance(x, jax.Array)

    def supports(self, feature):
        if feature == "gpu":
            return any(d.platform == "gpu" for d in jax.devices())
        return super().supports(feature)

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        value = unwrap(value)
        if isinstance(value, jax.Array):
            _need(dtype)
            out = value if dtype is None else value.astype(dtype)
        else:
            arr = np.asarray(value, dtype=dtype)
            _need(arr.dtype)
            out = jnp.asarray(arr)
        dev = _device(device)
        return out if dev is None else jax.device_put(out, dev)

    def to_numpy(self, t):
        return np.asarray(unwrap(t))

    def dtype_name(self, t):
        return np.dtype(unwrap(t).dtype).name

    def default_device(self):
        return jax.devices()[0]

    def device_of(self, t):
        """The single device of a concrete array; None for traced arrays (inside jit) or sharded ones."""
        try:
            devs = unwrap(t).devices()
        except Exception:  # tracers have no device
            return None
        return next(iter(devs)) if len(devs) == 1 else None

    def cast(self, x, dtype):
        _need(dtype)
        return x.astype(dtype)

    def linspace(self, start, stop, num, dtype, device=None):
        _need(dtype)
        out = jnp.linspace(start, stop, num, dtype=dtype)
        dev = _device(device)
        return out if dev is None else jax.device_put(out, dev)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return jax.scipy.special.erf(x)

    def log_ndtr(self, x):
        return jax.scipy.special.log_ndtr(x)

    def sigmoid(self, x):
        return jax.nn.sigmoid(x)

    def floor(self, x):
        return jnp.floor(x)

    def ceil(self, x):
        return jnp.ceil(x)

    def round_half_even(self, x):
        return jnp.round(x)  # jnp.round rounds half to even

    def cumsum(self, x, axis, reverse=False):
        return _flip_if(jnp.cumsum(_flip_if(x, axis, reverse), axis=axis), axis, reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        return jax.lax.cumlogsumexp(x, axis=axis % x.ndim, reverse=reverse)

    def scatter_add(self, target, index, values):
        return target.at[index].add(values.astype(target.dtype))

    def segment_sum(self, values, segment_ids, num_segments):
        return jax.ops.segment_sum(values, segment_ids, num_segments=num_segments)

    def gather(self, x, index, axis):
        return jnp.take(x, index, axis=axis)

    def take_along_axis(self, x, index, axis):
        return jnp.take_along_axis(x, index, axis=axis)

    def searchsorted(self, sorted_seq, values, side="left"):
        out = jnp.searchsorted(sorted_seq, values, side=side)
        return out.astype(jnp.int64 if _x64_on() else jnp.int32)

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def einsum(self, subscripts, *xs):
        return jnp.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        return jnp.where(jnp.isnan(x), jnp.asarray(nan, dtype=x.dtype), x)

    def index_set(self, x, index, values):
        return x.at[index].set(jnp.asarray(values, dtype=x.dtype))

    # ---- transformations -------------------------------------------------------------------
    def value_and_grad(self, f, params, *args, has_aux=False):
        raws = self.float_params(params)

        def raw_f(rp):
            value, aux = split_aux(f({k: ep.JAXTensor(v) for k, v in rp.items()}, *args), has_aux)
            value = unwrap(value)
            check_scalar(value)
            value = value.reshape(())
            return (value, _unwrap_tree(aux)) if has_aux else value

        out, grads = jax.value_and_grad(raw_f, has_aux=has_aux)(raws)
        grads = {k: ep.JAXTensor(g) for k, g in grads.items()}
        if has_aux:
            return (ep.JAXTensor(out[0]), _wrap_tree(out[1])), grads
        return ep.JAXTensor(out), grads

    def jvp(self, f, params, tangents, *args):
        raws = self.float_params(params)
        tans = {k: (self.raw_asarray(tangents[k], self.dtype_name(p)) if k in tangents else jnp.zeros_like(p))
                for k, p in raws.items()}

        def raw_f(rp):
            return unwrap(f({k: ep.JAXTensor(v) for k, v in rp.items()}, *args))

        out, tan_out = jax.jvp(raw_f, (raws,), (tans,))
        return ep.JAXTensor(out), ep.JAXTensor(tan_out)

    def jit(self, f, static_argnames=(), **options):
        """``jax.jit`` at the raw boundary: array leaves of the arguments (also inside dicts, lists and
        tuples) reach ``f`` as EagerPy tensors, and array leaves of the result come back as EagerPy.
        ``trace_count`` counts traces (= compilations)."""
        jitted = Jitted(f)

        def raw_body(*args, **kwargs):
            jitted._count()
            return _unwrap_tree(f(*_wrap_tree(args), **_wrap_tree(kwargs)))

        compiled = jax.jit(raw_body, static_argnames=tuple(static_argnames), **options)

        def call(*args, **kwargs):
            return _wrap_tree(compiled(*_unwrap_tree(args), **_unwrap_tree(kwargs)))

        jitted._compiled = call
        return jitted

    def checkpoint(self, f, policy=None):
        """``jax.checkpoint`` (remat) at the raw boundary; ``policy`` is passed through."""
        def raw_f(*raws):
            return _unwrap_tree(f(*_wrap_tree(raws)))

        ck = jax.checkpoint(raw_f, policy=policy)

        def wrapped(*args):
            return _wrap_tree(ck(*_unwrap_tree(args)))

        return wrapped

    def rng(self, seed, device=None):
        return _Rng(jax.random.PRNGKey(int(seed)), _device(device))


class _Rng:
    """A jax PRNG key that this object splits on every draw (explicit state, not global).

    Use it outside ``jax.jit``: inside a jitted function pass keys explicitly instead.
    """

    def __init__(self, key, device):
        self._key, self._device = key, device

    def _next(self):
        self._key, sub = jax.random.split(self._key)
        return sub

    def _place(self, x):
        return ep.JAXTensor(x if self._device is None else jax.device_put(x, self._device))

    def normal(self, shape, dtype="float32"):
        _need(dtype)
        return self._place(jax.random.normal(self._next(), tuple(shape), dtype=dtype))

    def uniform(self, shape, dtype="float32"):
        _need(dtype)
        return self._place(jax.random.uniform(self._next(), tuple(shape), dtype=dtype))
