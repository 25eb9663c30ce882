"""TensorFlow adapter: ``tf.GradientTape``, ``tf.autodiff.ForwardAccumulator``, ``tf.function``,
``tf.recompute_grad``.

Gradients: unconnected parameters get ZERO (not None, EagerPy's B3) and ``IndexedSlices`` (gradients
through gathers, B4) are made dense, so every parameter gets a dense tensor of its own shape.
Index tensors are int64 everywhere (TF's own default is int32 for some ops; ``searchsorted`` asks for int64).
``tf.function`` only accepts raw tensors, never EagerPy wrappers (notes §6), so ``jit`` and ``checkpoint``
unwrap/rewrap at the raw boundary. Devices: TF device strings ("/GPU:0"), or "cpu", "gpu", "cuda:1".
"""
from __future__ import annotations

import contextlib

import eagerpy as ep
import numpy as np
import tensorflow as tf

from .base import Backend as _Base
from .base import Jitted, check_scalar, split_aux, tree_map, unwrap

_ZERO = tf.UnconnectedGradients.ZERO


def _device_name(device):
    """"cpu"/"gpu"/"cuda:1"/"/GPU:0" -> a TF device string; None stays None."""
    if device is None or device == "":
        return None
    spec = str(device)
    if spec.startswith("/"):
        return spec
    platform, _, idx = spec.lower().partition(":")
    platform = {"cuda": "GPU", "gpu": "GPU", "cpu": "CPU"}.get(platform, platform.upper())
    return f"/{platform}:{idx or 0}"


def _on(device):
    name = _device_name(device)
    return tf.device(name) if name else contextlib.nullcontext()


def _dense(g):
    """IndexedSlices (from gathers) -> dense tensor."""
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def _wrap_tree(tree):
    return tree_map(lambda v: ep.TensorFlowTensor(v) if isinstance(v, tf.Tensor) else v, tree)


def _unwrap_tree(tree):
    return tree_map(unwrap, tree)


class Backend(_Base):
    name = "tensorflow"
    framework = "tensorflow"
    pip_extra = "tensorflow"
    features = frozenset({"grad", "jvp", "jit", "checkpoint", "float64", "gpu"})
    tensor_type = ep.TensorFlowTensor

    def is_raw(self, x):
        return tf.is_tensor(x) or isinstance(x, tf.Variable)

    def supports(self, feature):
        if feature == "gpu":
            return bool(tf.config.list_physical_devices("GPU"))
        return super().supports(feature)

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        value = unwrap(value)
        with _on(device):
            if tf.is_tensor(value) or isinstance(value, tf.Variable):
                value = tf.convert_to_tensor(value)
                return value if dtype is None else tf.cast(value, dtype)
            return tf.convert_to_tensor(np.asarray(value, dtype=dtype))

    def to_numpy(self, t):
        return unwrap(t).numpy()

    def dtype_name(self, t):
        return unwrap(t).dtype.name

    def default_device(self):
        return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"

    def device_of(self, t):
        """The tensor's device string; None for symbolic tensors inside tf.function (placement is TF's)."""
        return getattr(unwrap(t), "device", None) or None

    def cast(self, x, dtype):
        return tf.cast(x, dtype)

    def linspace(self, start, stop, num, dtype, device=None):
        with _on(device):
            return tf.cast(tf.linspace(tf.constant(start, tf.float64), tf.constant(stop, tf.float64), num), dtype)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return tf.math.erf(x)

    def log_ndtr(self, x):
        """log Phi(x): TensorFlow has no log_ndtr (it lives in TensorFlow Probability, not a dependency here), so
        log(erfc(-x / sqrt 2) / 2) where erfc does not underflow, and below ``cut`` the asymptotic series of
        Mills' ratio, -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8 - 945/x^10)
        (truncation error < 1e-12 at -20, < 1e-7 at -8). Each branch sees clipped inputs, so neither gives
        NaN gradients to the other's elements."""
        cut = -20.0 if x.dtype == tf.float64 else -8.0
        near = tf.maximum(x, cut)
        far = tf.minimum(x, cut)
        direct = tf.math.log(0.5 * tf.math.erfc(-near / np.sqrt(2.0).astype(x.dtype.as_numpy_dtype)))
        w = 1.0 / (far * far)
        series = 1.0 + w * (-1.0 + w * (3.0 + w * (-15.0 + w * (105.0 - 945.0 * w))))
        asymptotic = -0.5 * far * far - tf.math.log(-far) - 0.5 * np.log(2.0 * np.pi) + tf.math.log(series)
        return tf.where(x > cut, direct, asymptotic)

    def sigmoid(self, x):
        return tf.math.sigmoid(x)

    def floor(self, x):
        return tf.math.floor(x)

    def ceil(self, x):
        return tf.math.ceil(x)

    def round_half_even(self, x):
        return tf.math.round(x)  # banker's rounding, like numpy

    def cumsum(self, x, axis, reverse=False):
        return tf.math.cumsum(x, axis=axis, reverse=reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        return tf.math.cumulative_logsumexp(x, axis=axis, reverse=reverse)

    def scatter_add(self, target, index, values):
        return tf.tensor_scatter_nd_add(target, tf.reshape(index, (-1, 1)), tf.cast(values, target.dtype))

    def segment_sum(self, values, segment_ids, num_segments):
        return tf.math.unsorted_segment_sum(values, segment_ids, num_segments)

    def gather(self, x, index, axis):
        return tf.gather(x, index, axis=axis)

    def take_along_axis(self, x, index, axis):
        """np.take_along_axis: move ``axis`` last, broadcast the other axes, batched gather, move back."""
        nd = len(x.shape)
        axis = axis % nd
        perm = [i for i in range(nd) if i != axis] + [axis]
        xt, it = tf.transpose(x, perm), tf.transpose(index, perm)
        batch = tf.broadcast_dynamic_shape(tf.shape(xt)[:-1], tf.shape(it)[:-1])
        xt = tf.broadcast_to(xt, tf.concat([batch, tf.shape(xt)[-1:]], 0))
        it = tf.broadcast_to(it, tf.concat([batch, tf.shape(it)[-1:]], 0))
        out = tf.gather(xt, it, axis=nd - 1, batch_dims=nd - 1)
        return tf.transpose(out, np.argsort(perm))

    def searchsorted(self, sorted_seq, values, side="left"):
        # tf.searchsorted wants matching leading dims: search one row, then restore values' shape
        common = np.result_type(sorted_seq.dtype.as_numpy_dtype, values.dtype.as_numpy_dtype).name
        flat = tf.reshape(tf.cast(values, common), (1, -1))
        seq = tf.reshape(tf.cast(sorted_seq, common), (1, -1))
        out = tf.searchsorted(seq, flat, side=side, out_type=tf.int64)
        return tf.reshape(out, tf.shape(values))

    def stop_gradient(self, x):
        return tf.stop_gradient(x)

    def einsum(self, subscripts, *xs):
        return tf.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        return tf.where(tf.math.is_nan(x), tf.cast(nan, x.dtype), x)

    def index_set(self, x, index, values):
        if isinstance(index, tuple):
            nd_index = tf.stack([tf.cast(i, tf.int64) for i in index], axis=-1)
        else:
            nd_index = tf.expand_dims(tf.cast(index, tf.int64), -1)
        k = nd_index.shape[-1]
        shape = tf.concat([tf.shape(nd_index, out_type=tf.int64)[:-1], tf.shape(x, out_type=tf.int64)[k:]], 0)
        updates = tf.broadcast_to(tf.cast(values, x.dtype), shape)
        return tf.tensor_scatter_nd_update(x, nd_index, updates)

    # ---- transformations -------------------------------------------------------------------
    def value_and_grad(self, f, params, *args, has_aux=False):
        raws = self.float_params(params)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for r in raws.values():
                tape.watch(r)
            value, aux = split_aux(f({k: ep.TensorFlowTensor(r) for k, r in raws.items()}, *args), has_aux)
            raw_value = unwrap(value)
            check_scalar(raw_value)
            raw_value = tf.reshape(raw_value, ())
        grads = tape.gradient(raw_value, list(raws.values()), unconnected_gradients=_ZERO)
        grads = {k: ep.TensorFlowTensor(_dense(g)) for k, g in zip(raws, grads)}
        value = ep.TensorFlowTensor(raw_value)
        return ((value, aux), grads) if has_aux else (value, grads)

    def jvp(self, f, params, tangents, *args):
        raws = self.float_params(params)
        keys = list(raws)
        tans = [self.raw_asarray(tangents[k], self.dtype_name(raws[k])) if k in tangents
                else tf.zeros_like(raws[k]) for k in keys]
        with tf.autodiff.ForwardAccumulator([raws[k] for k in keys], tans) as acc:
            out = unwrap(f({k: ep.TensorFlowTensor(raws[k]) for k in keys}, *args))
        return ep.TensorFlowTensor(out), ep.TensorFlowTensor(acc.jvp(out, unconnected_gradients=_ZERO))

    def jit(self, f, static_argnames=(), **options):
        """``tf.function`` at the raw boundary (``options`` go to tf.function, e.g. ``jit_compile=True``).

        Non-tensor arguments are static for tf.function already (a new value retraces), so
        ``static_argnames`` needs no special handling; pass changing numbers as tensors to avoid retraces.
        ``trace_count`` counts traces.
        """
        jitted = Jitted(f)

        def raw_body(*args, **kwargs):
            jitted._count()
            return _unwrap_tree(f(*_wrap_tree(args), **_wrap_tree(kwargs)))

        compiled = tf.function(raw_body, **options)

        def call(*args, **kwargs):
            return _wrap_tree(compiled(*_unwrap_tree(args), **_unwrap_tree(kwargs)))

        jitted._compiled = call
        return jitted

    def checkpoint(self, f):
        """``tf.recompute_grad`` at the raw boundary (it fails on EagerPy arguments, notes §5)."""
        def raw_f(*raws):
            return _unwrap_tree(f(*_wrap_tree(raws)))

        ck = tf.recompute_grad(raw_f)

        def wrapped(*args):
            return _wrap_tree(ck(*_unwrap_tree(args)))

        return wrapped

    def rng(self, seed, device=None):
        with _on(device):
            return _Rng(tf.random.Generator.from_seed(int(seed)), device)


class _Rng:
    """A ``tf.random.Generator`` (its own state, not TF's global seed) returning EagerPy tensors."""

    def __init__(self, gen, device):
        self._gen, self._device = gen, device

    def normal(self, shape, dtype="float32"):
        with _on(self._device):
            return ep.TensorFlowTensor(self._gen.normal(tuple(shape), dtype=dtype))

    def uniform(self, shape, dtype="float32"):
        with _on(self._device):
            return ep.TensorFlowTensor(self._gen.uniform(tuple(shape), dtype=dtype))
