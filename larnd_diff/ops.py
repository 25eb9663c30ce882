"""Framework-free ops for the simulator: dispatch on the tensor's backend to its adapter.

The simulator's stage modules import no framework. They use ``ep.*`` and, for what
EagerPy 0.30 lacks, the functions below. Each takes EagerPy tensors (raw framework tensors are accepted
too; then a raw tensor comes back, foolbox-style), finds the adapter from the tensor's type and keeps
dtype and device. All work forward on every backend, and under autodiff, ``jax.jit`` and ``tf.function`` on
the differentiable ones. An op an adapter cannot do raises ``NotSupported``.

Registry: ``get_backend(name)`` / ``get_backend(tensor)`` returns the adapter instance. The adapters are the
modules of ``larnd_diff.backends`` listed in ``larnd_diff.backends.BUILTIN`` and the classes declared in the
entry-point group ``larnd_diff.backends``. Reading a class (its name, aliases, raw tensor modules, features)
imports no framework; the framework is imported when the adapter is first instantiated (``import larnd_diff``
imports none). Importing this module applies the EagerPy compat patches (``larnd_diff.backends._compat``),
among them the one that lets ``ep.astensor`` wrap a third-party framework's tensors through this registry.
"""
from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any, Dict, List

import eagerpy as ep
import numpy as np

from larnd_diff.backends import BUILTIN, _compat
from larnd_diff.backends.base import KNOWN_FEATURES, Backend, BackendUnavailable, NotSupported, unwrap

__all__ = [
    "Backend", "NotSupported", "BackendUnavailable", "get_backend", "backend_of", "available_backends",
    "known_backends", "gradient_backends", "backends_with", "backend_class", "erf", "log_ndtr", "sigmoid", "floor",
    "ceil", "round_half_even", "logcumsumexp", "cumsum", "scatter_add", "segment_sum", "gather", "take_along_axis",
    "searchsorted", "stop_gradient", "cast", "asarray", "to_numpy", "linspace", "einsum", "nan_to_num", "index_set",
    "dtype_name",
]

ENTRY_POINT_GROUP = "larnd_diff.backends"

# The only mutable module state: adapters instantiated so far (name -> instance) and the EagerPy type ->
# instance map the facade uses for fast dispatch. Both are pure caches.
_INSTANCES: Dict[str, Backend] = {}
_BY_TYPE: Dict[type, Backend] = {}


# ============================================================================== registry
def _entry_points() -> Dict[str, Any]:
    """Adapters declared in the entry-point group (name -> EntryPoint)."""
    return {e.name: e for e in entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> List[str]:
    """Every backend name larnd_diff knows of, installed or not: the built-in ones in their order, then the
    entry points' names sorted."""
    return list(BUILTIN) + sorted(set(_entry_points()) - set(BUILTIN))


def _check_class(name: str, cls: Any) -> type:
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"entry point {name!r} in group {ENTRY_POINT_GROUP!r} must name a subclass of "
                        f"larnd_diff.backends.base.Backend, got {cls!r}")
    return cls


@functools.lru_cache(maxsize=None)
def _builtin_class(name: str) -> type:
    return importlib.import_module(f"larnd_diff.backends.{name}").Backend


@functools.lru_cache(maxsize=None)
def _builtin_tables():
    """(alias -> name, EagerPy type -> name, raw tensor module -> name) of the built-in adapters' classes."""
    classes = {n: _builtin_class(n) for n in BUILTIN}
    aliases = {a: n for n, c in classes.items() for a in c.aliases}
    ep_types = {c.tensor_type: n for n, c in classes.items()}
    raw_modules = {m: n for n, c in classes.items() for m in c.raw_modules}
    return aliases, ep_types, raw_modules


def _canonical(name: str) -> str:
    key = name.strip().lower()
    return _builtin_tables()[0].get(key, key)


def backend_class(name: str) -> type:
    """The adapter class of a backend name (built-in or entry point); imports no framework of a built-in one."""
    name = _canonical(name)
    if name in BUILTIN:
        return _builtin_class(name)
    eps = _entry_points()
    if name not in eps:
        aliases = _builtin_tables()[0]
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in sorted(aliases.items()))})")
    return _check_class(name, eps[name].load())


def backends_with(feature: str) -> List[str]:
    """Known backends whose adapter class offers ``feature`` (``Backend.has_feature``), installed or not; a
    third-party adapter that fails to load is left out."""
    if feature not in KNOWN_FEATURES:
        raise ValueError(f"unknown feature {feature!r}; known: {sorted(KNOWN_FEATURES)}")
    out = []
    for name in known_backends():
        try:
            if backend_class(name).has_feature(feature):
                out.append(name)
        except Exception:  # a broken third-party plugin must not break discovery of the others
            continue
    return out


def gradient_backends() -> List[str]:
    """Known backends (installed or not) whose adapter computes gradients: the choices of the fit."""
    return backends_with("grad")


def _instance(name: str) -> Backend:
    inst = _INSTANCES.get(name)
    if inst is None:
        cls = backend_class(name)
        if not cls.is_available():
            how = f"pip install larnd-diff[{cls.pip_extra}]" if cls.pip_extra else f"pip install {cls.framework}"
            raise BackendUnavailable(f"backend '{name}' needs the '{cls.framework}' package, which is not "
                                     f"installed; install it with: {how}")
        inst = _INSTANCES[name] = cls()
        owner = _builtin_tables()[1].get(inst.tensor_type)
        if owner in (None, name) and inst.tensor_type is not ep.Tensor:
            _BY_TYPE[inst.tensor_type] = inst  # a plugin reusing a built-in tensor type must not steal dispatch
    return inst


def _plugin_of(tensor: Any):
    """The third-party adapter a tensor belongs to: those already instantiated (their EagerPy types, subclasses
    too, and ``is_raw``), else the one whose class names the module of the tensor's type in ``raw_modules``."""
    for inst in list(_INSTANCES.values()):
        if inst.name in BUILTIN:
            continue
        if (inst.tensor_type is not ep.Tensor and isinstance(tensor, inst.tensor_type)) or inst.is_raw(tensor):
            return inst.name
    module = type(tensor).__module__.split(".")[0]
    for name in _entry_points():
        if name in BUILTIN:
            continue
        try:
            if module in backend_class(name).raw_modules:
                return name
        except Exception:
            continue
    return None


def backend_of(tensor: Any) -> str:
    """Name of the backend a tensor (EagerPy or raw) belongs to; imports no framework."""
    inst = _BY_TYPE.get(type(tensor))
    if inst is not None:
        return inst.name
    _, ep_types, raw_modules = _builtin_tables()
    name = ep_types.get(type(tensor)) or raw_modules.get(type(tensor).__module__.split(".")[0]) \
        or _plugin_of(tensor)
    if name is not None:
        return name
    for t, builtin in ep_types.items():  # subclasses of the built-in EagerPy types
        if t is not ep.Tensor and isinstance(tensor, t):
            return builtin
    raise TypeError(f"cannot tell the backend of a {type(tensor).__module__}.{type(tensor).__qualname__}; "
                    f"expected an EagerPy tensor or a tensor of {', '.join(known_backends())}")


def get_backend(name_or_tensor: Any) -> Backend:
    """The adapter for a backend name (a built-in name or alias, or an entry-point name) or for the backend a
    tensor belongs to. Instances are cached."""
    if isinstance(name_or_tensor, Backend):
        return name_or_tensor
    name = _canonical(name_or_tensor) if isinstance(name_or_tensor, str) else backend_of(name_or_tensor)
    return _instance(name)


def available_backends() -> List[str]:
    """Names of the backends whose framework is importable here (checked without importing it)."""
    names = []
    for name in known_backends():
        try:
            if backend_class(name).is_available():
                names.append(name)
        except Exception:  # a broken third-party plugin must not break discovery of the others
            continue
    return names


def wrap_foreign(raw: Any) -> ep.Tensor:
    """A raw tensor EagerPy does not know, wrapped by the adapter it belongs to (what ``ep.astensor`` falls back
    to, see ``larnd_diff.backends._compat``); TypeError when no adapter claims it."""
    return _instance(backend_of(raw)).wrap(raw)


_compat.apply(wrap_foreign)


# ============================================================================== dispatch
def _dispatch(x: Any):
    """(adapter, raw tensor, rewrap) for the first tensor argument of an op.

    ``rewrap`` turns a raw result back into the caller's kind: EagerPy in -> EagerPy out, raw in -> raw out.
    """
    b = _BY_TYPE.get(type(x))
    if b is not None:
        return b, x.raw, b.wrap
    if isinstance(x, ep.Tensor):
        b = get_backend(x)
        return b, x.raw, b.wrap
    b = get_backend(x)
    return b, x, _identity


def _identity(r):
    return r


def _raw_like(b: Backend, like_raw: Any, v: Any, dtype: str | None = None) -> Any:
    """A secondary argument as a raw tensor of ``b``: EagerPy/raw tensors pass; numbers/numpy are converted
    onto ``like_raw``'s device (with ``dtype``, default the like's dtype)."""
    v = unwrap(v)
    if b.is_raw(v):
        return v
    return b.raw_asarray(v, dtype or b.dtype_name(like_raw), b.device_of(like_raw))


def _raw_index(b: Backend, like_raw: Any, index: Any) -> Any:
    """Index tensors: tuples stay tuples (one index tensor per leading axis), lists/numpy become int64."""
    if isinstance(index, tuple):
        return tuple(_raw_index(b, like_raw, i) for i in index)
    index = unwrap(index)
    if b.is_raw(index):
        return index
    return b.raw_asarray(np.asarray(index, dtype=np.int64), "int64", b.device_of(like_raw))


# ============================================================================== elementwise
def erf(x):
    """Error function (differentiable)."""
    b, r, w = _dispatch(x)
    return w(b.erf(r))


def log_ndtr(x):
    """log Phi(x), the log of the standard normal CDF, accurate far into both tails (differentiable)."""
    b, r, w = _dispatch(x)
    return w(b.log_ndtr(r))


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), computed without overflow."""
    b, r, w = _dispatch(x)
    return w(b.sigmoid(r))


def floor(x):
    """Largest integer <= x, same float dtype (gradient zero)."""
    b, r, w = _dispatch(x)
    return w(b.floor(r))


def ceil(x):
    """Smallest integer >= x, same float dtype (gradient zero)."""
    b, r, w = _dispatch(x)
    return w(b.ceil(r))


def round_half_even(x):
    """Round to nearest integer, ties to even (numpy's ``round``), same float dtype (gradient zero)."""
    b, r, w = _dispatch(x)
    return w(b.round_half_even(r))


def nan_to_num(x, nan: float = 0.0):
    """Replace NaN by ``nan``; ±inf are left unchanged (unlike numpy's ``nan_to_num``)."""
    b, r, w = _dispatch(x)
    return w(b.nan_to_num(r, nan))


def stop_gradient(x):
    """Same values, no gradient flows back through the result."""
    b, r, w = _dispatch(x)
    return w(b.stop_gradient(r))


def cast(x, dtype_name: str):
    """Convert to the dtype named by a string ("float32", "float64", "int64", "bool", ...)."""
    b, r, w = _dispatch(x)
    return w(b.cast(r, dtype_name))


def dtype_name(x) -> str:
    """dtype of a tensor as a string ("float32")."""
    return get_backend(x).dtype_name(x)


# ============================================================================== scans
def cumsum(x, axis: int, reverse: bool = False):
    """Cumulative sum along ``axis``; ``reverse=True`` sums from the end (suffix sums)."""
    b, r, w = _dispatch(x)
    return w(b.cumsum(r, axis, reverse))


def logcumsumexp(x, axis: int = -1, reverse: bool = False):
    """log(cumsum(exp(x))) along ``axis`` without overflow; ``reverse=True`` accumulates from the end."""
    b, r, w = _dispatch(x)
    return w(b.logcumsumexp(r, axis, reverse))


# ============================================================================== indexing
def scatter_add(target, index, values):
    """Out-of-place ``target[index[i]] += values[i]`` along axis 0; duplicate indices accumulate.

    ``values`` has shape ``(len(index),) + target.shape[1:]``. Differentiable w.r.t. target and values.
    """
    b, r, w = _dispatch(target)
    return w(b.scatter_add(r, _raw_index(b, r, index), _raw_like(b, r, values)))


def segment_sum(values, segment_ids, num_segments: int):
    """``out[s] = sum of values[i] with segment_ids[i] == s`` for s < num_segments (ids need not be sorted)."""
    b, r, w = _dispatch(values)
    return w(b.segment_sum(r, _raw_index(b, r, segment_ids), int(num_segments)))


def gather(x, index, axis: int):
    """``np.take(x, index, axis)``: result shape ``x.shape[:axis] + index.shape + x.shape[axis+1:]``."""
    b, r, w = _dispatch(x)
    return w(b.gather(r, _raw_index(b, r, index), axis))


def take_along_axis(x, index, axis: int):
    """``np.take_along_axis`` on any axis (EagerPy only does the last one)."""
    b, r, w = _dispatch(x)
    return w(b.take_along_axis(r, _raw_index(b, r, index), axis))


def index_set(x, index, values):
    """Out-of-place ``x[index] = values``.

    ``index`` is an integer tensor (positions along axis 0) or a tuple of integer tensors (one per leading
    axis, like ``x[rows, cols]``). ``values`` broadcasts to the selected shape; duplicates: unspecified winner.
    """
    b, r, w = _dispatch(x)
    return w(b.index_set(r, _raw_index(b, r, index), _raw_like(b, r, values)))


def searchsorted(sorted_seq, values, side: str = "left"):
    """Insertion indices of ``values`` into 1-D ascending ``sorted_seq`` (numpy semantics); int64.

    On jax the result is int64 when ``jax_enable_x64`` is on (larnd_diff turns it on as soon as a 64-bit
    dtype is requested from the jax backend), int32 otherwise: jax has no int64 without x64.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    b, r, w = _dispatch(sorted_seq)
    return w(b.searchsorted(r, _raw_like(b, r, values), side))


# ============================================================================== creation / misc
def asarray(like, value, dtype: str | None = None):
    """A new tensor from a numpy array or scalar on ``like``'s backend and device.

    ``dtype`` None keeps numpy's dtype (Python floats become float64, ints int64): cast explicitly.
    """
    b, r, w = _dispatch(like)
    return w(b.raw_asarray(value, dtype, b.device_of(r)))


def to_numpy(x) -> np.ndarray:
    """A numpy copy of the tensor's values (moved to host, detached)."""
    return get_backend(x).to_numpy(x)


def linspace(like, start: float, stop: float, num: int, dtype: str | None = None):
    """``num`` evenly spaced values from start to stop inclusive, on ``like``'s backend and device.

    dtype defaults to ``like``'s dtype when it is floating, else float64.
    """
    b, r, w = _dispatch(like)
    if dtype is None:
        dtype = b.dtype_name(r)
        if not dtype.startswith(("float", "bfloat")):
            dtype = "float64"
    return w(b.linspace(start, stop, int(num), dtype, b.device_of(r)))


def einsum(subscripts: str, *xs):
    """Einstein summation (``np.einsum`` notation); all operands on one backend."""
    if not xs:
        raise ValueError("einsum needs at least one operand")
    b, r, w = _dispatch(xs[0])
    return w(b.einsum(subscripts, r, *(unwrap(x) for x in xs[1:])))

