"""The backend protocol: everything framework-specific, as methods of one ``Backend`` class per framework.

The physics is written once against EagerPy tensors; what EagerPy 0.30 lacks (erf, scatter-add, searchsorted,
gradients over a dict of named parameters, checkpointing, jit, seeded RNG), and what the simulator, Soft-DTW,
the comparison and the fit need from a framework (custom gradients, host and device kernels as differentiable
ops, scans, device count, placement and peak memory, the optimiser, Hessians), is reached through the methods
below. A subclass overrides what its framework offers; the defaults here are generic (a Python-loop scan, a
custom_vjp without a hand-written backward) or raise ``NotSupported`` naming the backend and the operation.
``supports(feature)`` is derived from which methods a subclass overrides (``FEATURE_METHODS``).

Conventions (kept deliberately simple so adapters stay small):

* Op methods (``erf`` ... ``index_set``) take and return **raw** framework tensors; the facade
  ``larnd_diff.ops`` unwraps and rewraps EagerPy tensors around them.
* ``asarray`` and ``rng(...).normal`` return **EagerPy** tensors; ``to_numpy``, ``device_of`` and
  ``dtype_name`` accept either kind.
* ``value_and_grad``, ``jvp``, ``jit``, ``checkpoint``, ``compile_glue`` and ``scan`` take functions written with
  EagerPy tensors and do the unwrap/rewrap at the framework's raw boundary: EagerPy 0.30 wrappers do not survive
  the frameworks' transformations (``tf.function``, ``tf.recompute_grad`` and ``torch.utils.checkpoint`` in
  reentrant mode reject or lose them), so only raw tensors cross.
* Functions handed to ``custom_vjp``, ``host_vjp`` and ``device_vjp`` take and return raw tensors.
* dtypes are named by strings (``"float32"``, ``"float64"``, ``"int64"``, ``"bool"`` ...).
* An adapter module imports its framework when the adapter is instantiated, not when the module is imported,
  so that the registry can read a class (name, aliases, features) without paying for the framework's import.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import eagerpy as ep
import numpy as np

#: Features a backend may offer; ``supports`` answers them.
KNOWN_FEATURES = frozenset({"grad", "jvp", "jit", "compile", "checkpoint", "float64", "gpu", "device_kernels"})

#: The methods whose override gives each feature ("float64" comes from ``float_dtypes``; "gpu" also needs a GPU
#: to be visible at runtime).
FEATURE_METHODS = {
    "grad": ("value_and_grad",),
    "jvp": ("jvp",),
    "jit": ("jit",),
    "compile": ("compile_glue",),
    "checkpoint": ("checkpoint",),
    "gpu": ("gpu_count",),
    "device_kernels": ("device_vjp", "scratch_zeros", "device_array"),
}

# Human phrases for the things a backend can refuse, so NotSupported reads as a sentence.
_PHRASES = {
    "grad": "compute gradients",
    "value_and_grad": "compute gradients",
    "jvp": "compute forward-mode derivatives (jvp)",
    "jit": "compile functions (jit)",
    "compile": "compile functions of varying shapes into fused kernels",
    "checkpoint": "checkpoint gradients",
    "float64": "compute in float64",
    "gpu": "run on a GPU",
    "device_kernels": "run hand-written GPU kernels on its tensors",
}


class NotSupported(Exception):
    """An operation a backend cannot do, explained in one sentence a user can act on.

    ``NotSupported("numpy", "grad", "it is forward-only", ["torch", "jax", "tensorflow"])`` reads
    "backend 'numpy' cannot compute gradients: it is forward-only; use torch, jax or tensorflow".
    ``backend`` and ``op`` are kept as attributes so callers (and tests) can branch on them.
    """

    def __init__(self, backend: str, op: str, reason: str = "", alternatives: Iterable[str] = ()):
        self.backend, self.op = backend, op
        what = _PHRASES.get(op, f"do '{op}'")
        msg = f"backend '{backend}' cannot {what}"
        if reason:
            msg += f": {reason}"
        alts = list(alternatives)
        if alts:
            msg += "; use " + (alts[0] if len(alts) == 1 else ", ".join(alts[:-1]) + " or " + alts[-1])
        super().__init__(msg)


class BackendUnavailable(ImportError):
    """The framework behind a backend is not installed (says which pip extra installs it)."""


# --------------------------------------------------------------------------------------- pytrees
def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply ``fn`` to every leaf of nested dict/list/tuple containers.

    Only these three containers are walked: that is all the adapters need to move arguments and results
    across the raw boundary, and it avoids depending on a framework's own pytree machinery.
    """
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(tree_map(fn, v) for v in tree)
    if isinstance(tree, tuple):  # namedtuple: rebuild positionally
        return type(tree)(*(tree_map(fn, v) for v in tree))
    return fn(tree)


def unwrap(x: Any) -> Any:
    """EagerPy tensor -> raw tensor; anything else unchanged."""
    return x.raw if isinstance(x, ep.Tensor) else x


def unwrap_tree(tree: Any) -> Any:
    """Replace every EagerPy leaf of a pytree by its raw tensor."""
    return tree_map(unwrap, tree)


def leaves(tree: Any) -> list:
    """The leaves of a pytree in ``tree_map`` order."""
    out: list = []
    tree_map(out.append, tree)
    return out


def stack_trees(trees: list) -> Any:
    """Stack a list of identically structured pytrees leaf by leaf (EagerPy tensors) along a new axis 0."""
    first = trees[0]
    if isinstance(first, (tuple, list)):
        return type(first)(stack_trees([t[i] for t in trees]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: stack_trees([t[k] for t in trees]) for k in first}
    return ep.stack(trees, axis=0)


def python_scan(body: Callable, init: Any, xs: Any, reverse: bool = False, keep: bool = True) -> Tuple[Any, Any]:
    """:meth:`Backend.scan` as an eager Python loop: slices are views (numpy, torch), the y are stacked once."""
    length = int(leaves(xs)[0].shape[0])
    carry, ys = init, []
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        carry, y = body(carry, tree_map(lambda a: a[t], xs))
        if keep:
            ys.append(y)
    if not keep or not ys:
        return carry, None
    if reverse:
        ys.reverse()
    return carry, stack_trees(ys)


# --------------------------------------------------------------------------------------- helpers
class Jitted:
    """A compiled function plus a counter of how often its Python body ran.

    For tracing compilers (jax.jit, tf.function) the body runs once per trace, so ``trace_count``
    counts (re)compilations; tests use it to check that equal shapes do not retrace. For eager
    backends (numpy, plain torch) the body runs on every call and the counter says so honestly.
    """

    def __init__(self, fn: Callable, compiled: Callable | None = None):
        self.fn = fn
        self.trace_count = 0
        self._compiled = compiled
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "jitted")

    def _count(self) -> None:
        self.trace_count += 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(*args, **kwargs)


def split_aux(out: Any, has_aux: bool) -> Tuple[Any, Any]:
    """``f`` returns ``value`` or ``(value, aux)``; give both (aux None when absent)."""
    if not has_aux:
        return out, None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError("with has_aux=True the function must return a pair (scalar value, aux)")
    return out[0], out[1]


def check_scalar(value: Any) -> None:
    """A loss must be one number; anything else is a user error we name clearly."""
    shape = tuple(getattr(value, "shape", ()))
    if len(shape) != 0 and not (len(shape) == 1 and shape[0] == 1):
        raise ValueError(f"value_and_grad needs f to return a scalar, got shape {shape}")


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


def check_float_param(name: str, dtype: str) -> None:
    """Only floating parameters have gradients; say which one is not."""
    if dtype not in _FLOAT_NAMES:
        raise TypeError(f"parameter '{name}' has dtype {dtype}; only floating-point parameters can be differentiated")


def parse_device(spec: Any) -> Tuple[bool, int]:
    """(is a GPU, index) of a device spec such as "cpu", "cuda:1", "gpu", "/GPU:0" or a framework device object."""
    text = str(spec).lower().lstrip("/")
    tail = text.rsplit(":", 1)[-1] if ":" in text else "0"
    return any(k in text for k in ("cuda", "gpu", "rocm")), int(tail) if tail.isdigit() else 0


# --------------------------------------------------------------------------------------- protocol
class Backend:
    """One framework adapter. Subclasses live in ``backends/<framework>.py`` and are named ``Backend``.

    Class attributes a subclass sets:
      ``name``         registry name ("torch")
      ``framework``    top-level module that must be importable ("torch")
      ``pip_extra``    extra that installs it (``pip install larnd-diff[<pip_extra>]``), or "" if none
      ``aliases``      other names ``get_backend`` accepts ("pytorch")
      ``raw_modules``  top-level modules of the framework's tensor types ("jax", "jaxlib"): dispatch on a raw tensor
                       without importing anything
      ``tensor_type``  the EagerPy tensor class that wraps the framework's tensors
    and, where they differ from the defaults, the facts below (``float_dtypes``, ``prefers_jit``,
    ``compiles_loops``, ``host_callbacks_on_device``).
    """

    name: str = "abstract"
    framework: str = ""
    pip_extra: str = ""
    aliases: Tuple[str, ...] = ()
    raw_modules: Tuple[str, ...] = ()
    tensor_type: type = ep.Tensor
    #: Floating dtypes the framework computes in ("float64" in it: the feature "float64").
    float_dtypes: Tuple[str, ...] = ("float32", "float64")
    #: Functions run many times on same-shaped inputs should go through :meth:`jit` (jax: eager execution dispatches
    #: op by op through per-shape compilation, so the simulator jits its blocks). False: they run eagerly.
    prefers_jit: bool = False
    #: :meth:`scan` and :meth:`custom_vjp` compile one program per input shape (jax, tensorflow): callers pad inputs to
    #: a few sizes. False: loops run op by op (on a GPU then launch-bound: callers prefer host kernels).
    compiles_loops: bool = False
    #: :meth:`host_vjp` also takes tensors in device (GPU) memory, copying them to the host and back, and works
    #: under this backend's :meth:`jit`.
    host_callbacks_on_device: bool = False

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """True when the framework can be imported (checked without importing it)."""
        return bool(cls.framework) and importlib.util.find_spec(cls.framework) is not None

    @classmethod
    def implements(cls, method: str) -> bool:
        """Whether this class (or a parent below ``Backend``) overrides ``Backend.<method>``."""
        return getattr(cls, method) is not getattr(Backend, method)

    @classmethod
    def has_feature(cls, feature: str) -> bool:
        """Whether the class offers ``feature`` (one of KNOWN_FEATURES), read from the methods it overrides; no
        framework is imported. "gpu" here means the adapter can drive GPUs; :meth:`supports` adds whether one is
        visible."""
        if feature not in KNOWN_FEATURES:
            raise ValueError(f"unknown feature {feature!r}; known: {sorted(KNOWN_FEATURES)}")
        if feature == "float64":
            return "float64" in cls.float_dtypes
        return all(cls.implements(m) for m in FEATURE_METHODS[feature])

    def supports(self, feature: str) -> bool:
        """Whether this backend offers ``feature`` here (one of KNOWN_FEATURES; unknown names are an error)."""
        if not self.has_feature(feature):
            return False
        return self.gpu_count() > 0 if feature == "gpu" else True

    def require(self, feature: str, reason: str = "") -> None:
        """Raise NotSupported unless ``feature`` is supported (names the backends that have it)."""
        if not self.supports(feature):
            raise NotSupported(self.name, feature, reason, self._alternatives(feature))

    def _alternatives(self, feature: str) -> list:
        from larnd_diff.ops import backends_with  # the registry (it imports this module)

        return [n for n in backends_with(feature) if n != self.name]

    def is_raw(self, x: Any) -> bool:
        """Whether ``x`` is a raw tensor of this framework (used by backend_of for third parties)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def wrap(self, raw: Any) -> ep.Tensor:
        """Raw tensor -> EagerPy tensor of this backend."""
        return self.tensor_type(raw)

    def __repr__(self) -> str:
        return f"<larnd_diff backend {self.name!r}>"

    # ---- tensors, dtypes, devices ----------------------------------------------------------
    def raw_asarray(self, value: Any, dtype: str | None = None, device: Any = None) -> Any:
        """numpy array / scalar -> raw tensor of ``dtype`` (default: numpy's dtype) on ``device``."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def asarray(self, value: Any, dtype: str | None = None, device: Any = None) -> ep.Tensor:
        """numpy array / scalar -> EagerPy tensor on ``device`` (default device when None)."""
        return self.wrap(self.raw_asarray(value, dtype, device))

    def from_numpy(self, array: np.ndarray, like: Any) -> Any:
        """A NumPy array the caller hands over (a fresh result of host code) -> raw tensor on ``like``'s device.
        Adapters may share the array's memory instead of copying it."""
        return self.raw_asarray(array, None, self.device_of(like))

    def to_numpy(self, t: Any):
        """EagerPy or raw tensor -> numpy array (copies from the device; detaches from autodiff)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def dtype_name(self, t: Any) -> str:
        """dtype of an EagerPy or raw tensor as a plain string ("float32")."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def default_device(self) -> Any:
        """Where new tensors go when no device is given."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def device_of(self, t: Any) -> Any:
        """Device of an EagerPy or raw tensor, in a form ``asarray(device=...)`` accepts."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement this part of the Backend protocol")

    def concrete_value(self, x: Any):
        """Float64 NumPy value of a raw tensor when it is concrete; None when it is abstract (traced under the
        framework's compiler). Used to check parameter values without breaking tracing."""
        try:
            return np.asarray(self.to_numpy(x), dtype=np.float64)
        except Exception:
            return None

    def read(self, x: Any) -> Any:
        """The value to compute with: a framework *variable* read into a tensor (an operation that the framework's
        autodiff records); tensors pass unchanged."""
        return x

    def on_host(self, t: Any) -> bool:
        """Whether the tensor lives in host memory (its device names the CPU)."""
        return "cpu" in str(self.device_of(t)).lower()

    def on_cuda(self, t: Any) -> bool:
        """Whether the tensor lives on a CUDA GPU."""
        return "cuda" in str(self.device_of(t)).lower()

    def cast(self, x: Any, dtype: str) -> Any:
        self._missing("cast")

    def linspace(self, start: float, stop: float, num: int, dtype: str, device: Any) -> Any:
        self._missing("linspace")

    # ---- raw ops (raw in, raw out) ---------------------------------------------------------
    # Defaults raise NotSupported, so a third-party adapter that leaves an op out fails with a sentence
    # naming the backend and the op instead of a bare NotImplementedError.
    def _missing(self, op: str, reason: str = "its adapter does not implement it"):
        raise NotSupported(self.name, op, reason)

    def erf(self, x): self._missing("erf")  # noqa: E704
    def log_ndtr(self, x): self._missing("log_ndtr")  # noqa: E704
    def sigmoid(self, x): self._missing("sigmoid")  # noqa: E704
    def floor(self, x): self._missing("floor")  # noqa: E704
    def ceil(self, x): self._missing("ceil")  # noqa: E704
    def round_half_even(self, x): self._missing("round_half_even")  # noqa: E704
    def cumsum(self, x, axis: int, reverse: bool = False): self._missing("cumsum")  # noqa: E704
    def logcumsumexp(self, x, axis: int = -1, reverse: bool = False): self._missing("logcumsumexp")  # noqa: E704
    def scatter_add(self, target, index, values): self._missing("scatter_add")  # noqa: E704
    def segment_sum(self, values, segment_ids, num_segments: int): self._missing("segment_sum")  # noqa: E704
    def gather(self, x, index, axis: int): self._missing("gather")  # noqa: E704
    def take_along_axis(self, x, index, axis: int): self._missing("take_along_axis")  # noqa: E704
    def searchsorted(self, sorted_seq, values, side: str = "left"): self._missing("searchsorted")  # noqa: E704
    def stop_gradient(self, x): self._missing("stop_gradient")  # noqa: E704
    def einsum(self, subscripts: str, *xs): self._missing("einsum")  # noqa: E704
    def nan_to_num(self, x, nan: float = 0.0): self._missing("nan_to_num")  # noqa: E704
    def index_set(self, x, index, values): self._missing("index_set")  # noqa: E704

    # ---- transformations (EagerPy functions) -----------------------------------------------
    def float_params(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """Raw backend tensors of named parameter values; a non-float value raises TypeError naming it."""
        raws = {k: self.raw_asarray(v) for k, v in params.items()}
        for k, r in raws.items():
            check_float_param(k, self.dtype_name(r))
        return raws

    def value_and_grad(self, f: Callable, params: Dict[str, Any], *args: Any, has_aux: bool = False):
        """``(value, {name: grad})`` (``((value, aux), grads)`` with has_aux) for scalar ``f(params, *args)``.

        ``f`` receives a dict of EagerPy tensors. Parameters ``f`` does not use get zero gradients.
        """
        self.require("grad", "it is forward-only")

    def jvp(self, f: Callable, params: Dict[str, Any], tangents: Dict[str, Any], *args: Any):
        """``(f(params), d f(params) . tangents)``; tangents missing from the dict count as zero."""
        self.require("jvp", "it is forward-only")

    def jit(self, f: Callable, static_argnames: Iterable[str] = (), **options: Any) -> Jitted:
        """Identity by default (eager backends); see subclasses."""
        jitted = Jitted(f)

        def body(*args, **kwargs):
            jitted._count()
            return f(*args, **kwargs)

        jitted._compiled = body
        return jitted

    def compile_glue(self, f: Callable) -> Callable:
        """``f`` (EagerPy tensors, or pytrees of them, in and out) compiled into a few fused kernels, forward and
        backward, for inputs whose shapes change from call to call without recompiling (dynamic shapes).

        For the elementwise-heavy glue of the simulator (per-pair inputs: ~150 small operations), whose cost on
        a GPU is the launch of each operation, not arithmetic. Identity by default; an adapter whose framework
        compiles with dynamic shapes overrides it and so offers the feature "compile".
        """
        return f

    def compiled_glue(self, fn: Callable, **static: Any) -> Callable:
        """:meth:`compile_glue` of ``functools.partial(fn, **static)``, made once per distinct (hashable) static
        arguments and kept by this adapter, so that each compiles once per process."""
        key = (fn, tuple(sorted(static.items())))
        cache = self.__dict__.setdefault("_compiled_glue", {})
        if key not in cache:
            cache[key] = self.compile_glue(functools.partial(fn, **static))
        return cache[key]

    def checkpoint(self, f: Callable) -> Callable:
        """Identity: without autodiff there is nothing to save memory on."""
        return f

    def rng(self, seed: int, device: Any = None):
        """A seeded generator with ``normal(shape, dtype)`` / ``uniform(shape, dtype)`` (no global state)."""
        self._missing("rng")

    # ---- hand-written derivatives and loops -----------------------------------------------
    def custom_vjp(self, forward: Callable, backward: Callable) -> Callable:
        """A differentiable op from a forward and a hand-written backward (reverse mode).

        ``forward(*args) -> (output, residuals)``: raw tensors in; ``output`` one raw tensor; ``residuals`` a
        tuple of raw tensors kept for the backward pass. ``backward(residuals, cotangent) -> grads``: one entry per
        positional argument of ``forward``, ``None`` for arguments without a derivative (integer lengths, say).
        Returns ``op(*args) -> output`` (raw in, raw out); anything static belongs in the closures.

        Default: the forward alone, so the derivative (if any) is the framework's autodiff through it.
        """
        return lambda *args: forward(*args)[0]

    def host_vjp(self, forward: Callable, backward: Callable, out_shape: Tuple[int, ...]) -> Callable:
        """A differentiable op whose forward and backward are NumPy functions run on the host (compiled kernels).

        ``forward(x, *consts) -> y`` with ``y.shape == out_shape``; ``backward(x, *consts, g) -> dx`` (the
        vector-Jacobian product for the cotangent ``g`` of y). Only ``x`` (float) is differentiable; ``consts``
        (integer or float host data) get no gradient. Returns ``op(x, *consts)``: raw tensors in, a raw tensor of
        x's dtype and device out.

        Default (backends without gradients): the forward on host copies of the inputs.
        """
        if self.has_feature("grad"):
            self._missing("host_vjp", "its adapter has gradients but no host_vjp, so host kernels would lose them; "
                                      "use SimConfig(kernel='eager')")

        def op(x, *consts):
            host = [self.to_numpy(c) for c in consts]
            y = np.asarray(forward(self.to_numpy(x), *host), dtype=self.dtype_name(x))
            return self.from_numpy(y, x)

        return op

    def device_vjp(self, forward: Callable, backward: Callable, out_shape: Tuple[int, ...]) -> Callable:
        """A differentiable op whose forward and backward are GPU kernels writing into preallocated tensors.

        ``forward(x, *consts, out)`` adds y into ``out`` (zeros of ``out_shape``, float64); ``backward(x, *consts,
        g, dx)`` writes the vector-Jacobian product into ``dx`` (zeros like x, float64). Tensors are handed over on
        the GPU (``__cuda_array_interface__``, zero-copy), x in float64. Part of the feature "device_kernels".
        """
        self._missing("device_vjp", "foreign GPU kernels cannot write into its tensors")

    def scratch_zeros(self, device: Any) -> Callable:
        """``zeros(shape, numpy dtype)`` -> a zeroed raw tensor on ``device``: scratch space for foreign GPU kernels,
        from the framework's allocator (so that its memory statistics count it). Part of "device_kernels"."""
        self._missing("scratch_zeros", "foreign GPU kernels cannot write into its tensors")

    def device_array(self, x: Any) -> Any:
        """A raw tensor as a foreign GPU kernel reads it: detached from autodiff, contiguous, on its device. Part of
        "device_kernels"."""
        self._missing("device_array", "foreign GPU kernels cannot read its tensors")

    def scan(self, body: Callable, init: Any, xs: Any, reverse: bool = False, keep: bool = True) -> Tuple[Any, Any]:
        """``jax.lax.scan`` semantics for EagerPy pytrees (nested tuples/lists/dicts of EagerPy tensors).

        ``body(carry, x) -> (carry, y)`` is written with EagerPy tensors; ``x`` is the slice ``t`` of every leaf
        of ``xs`` along axis 0 (length L). Returns ``(final carry, ys)`` with ``ys`` the ``y`` of every step
        stacked along a new axis 0, ``ys[t]`` belonging to ``xs[t]`` also when ``reverse`` (steps run
        t = L-1 .. 0). With ``keep=False`` the ``y`` are dropped (``ys`` is None): forward-only callers save
        the memory. The carry must keep its shapes and dtypes from step to step. Default: a Python loop.
        """
        return python_scan(body, init, xs, reverse, keep)

    # ---- devices and memory ---------------------------------------------------------------
    def gpu_count(self) -> int:
        """Number of GPUs the framework sees (0 by default: an adapter that drives GPUs overrides it)."""
        return 0

    def placement(self, device: Any):
        """A context manager making ``device`` the framework's default placement as well, for frameworks that place
        new tensors by a global default rather than by their inputs. Nothing to do by default."""
        return contextlib.nullcontext()

    def reset_peak_memory(self, gpu: int) -> None:
        """Start a new peak-memory window on GPU ``gpu`` (waits for its queued work). No-op by default; adapters
        whose allocator cannot reset its peak leave it out."""

    def peak_memory(self, gpu: int) -> Optional[int]:
        """Peak bytes the framework's allocator held on GPU ``gpu`` since :meth:`reset_peak_memory` (or since the
        process started where it cannot reset); None when the framework has no such statistic."""
        return None

    # ---- fitting --------------------------------------------------------------------------
    def adam(self, values: Dict[str, float], *, lr: float, lr_decay: float, clip_norm: Optional[float], dtype: str,
             device: Any):
        """The framework's own Adam over the named scalar ``values`` with global-norm clipping and per-epoch
        exponential decay (a :class:`larnd_diff.backends.optim.Optimizer`)."""
        self._missing("adam", "its adapter has no optimiser")

    def hessian(self, f: Callable, names: Sequence[str], x0: np.ndarray, dtype: str, device: Any) -> np.ndarray:
        """Forward-over-reverse Hessian (one jvp of the gradient per parameter) of the scalar
        ``f({name: raw scalar tensor})`` at ``x0`` (float64, in ``names`` order); not symmetrised."""
        self._missing("hessian", "its adapter has no forward-over-reverse derivatives")
