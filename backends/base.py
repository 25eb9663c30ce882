"""The backend protocol: what one framework adapter must supply.

Why a protocol and not ``if backend == ...`` chains: the physics is written once against EagerPy
tensors, and everything EagerPy 0.30 lacks (erf, scatter-add, searchsorted, gradients over a dict of
named parameters, checkpointing, jit, seeded RNG) is reached through one ``Backend`` object per
framework. Adding a framework is one file with a ``Backend`` subclass plus one entry point in the group
``larnd_diff.backends`` (see ``larnd_diff.ops.get_backend``).

Conventions (kept deliberately simple so adapters stay small):

* Op methods (``erf`` ... ``index_set``) take and return **raw** framework tensors; the facade
  ``larnd_diff.ops`` unwraps and rewraps EagerPy tensors around them.
* ``asarray`` and ``rng(...).normal`` return **EagerPy** tensors; ``to_numpy``, ``device_of`` and
  ``dtype_name`` accept either kind.
* ``value_and_grad``, ``jvp``, ``jit`` and ``checkpoint`` take functions written with EagerPy tensors
  and do the unwrap/rewrap at the framework's raw boundary, because that is the only place where all
  four frameworks' transformations work reliably with EagerPy 0.30 (notes/eagerpy-compat.md §5, §6).
* dtypes are named by strings (``"float32"``, ``"float64"``, ``"int64"``, ``"bool"`` ...).
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any, Callable, Dict, Iterable, Tuple

import eagerpy as ep

#: Features an adapter may declare in ``Backend.features``; ``supports`` answers from that set.
KNOWN_FEATURES = frozenset({"grad", "jvp", "jit", "fuse", "checkpoint", "float64", "gpu"})

# Human phrases for the things a backend can refuse, so NotSupported reads as a sentence.
_PHRASES = {
    "grad": "compute gradients",
    "value_and_grad": "compute gradients",
    "jvp": "compute forward-mode derivatives (jvp)",
    "jit": "compile functions (jit)",
    "fuse": "fuse functions of varying shapes into compiled kernels",
    "checkpoint": "checkpoint gradients",
    "float64": "compute in float64",
    "gpu": "run on a GPU",
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


# --------------------------------------------------------------------------------------- protocol
class Backend:
    """One framework adapter. Subclasses live in ``backends/<framework>.py`` and are named ``Backend``.

    Class attributes a subclass sets:
      ``name``       registry name ("torch")
      ``framework``  top-level module that must be importable ("torch")
      ``pip_extra``  extra that installs it (``pip install larnd-diff[<pip_extra>]``), or "" if none
      ``features``   subset of KNOWN_FEATURES
    """

    name: str = "abstract"
    framework: str = ""
    pip_extra: str = ""
    features: frozenset = frozenset()
    #: The EagerPy tensor class that wraps this framework's tensors.
    tensor_type: type = ep.Tensor

    # ---- discovery -------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """True when the framework can be imported (checked without importing it)."""
        return bool(cls.framework) and importlib.util.find_spec(cls.framework) is not None

    def supports(self, feature: str) -> bool:
        """Whether this backend offers ``feature`` (one of KNOWN_FEATURES); unknown names are an error."""
        if feature not in KNOWN_FEATURES:
            raise ValueError(f"unknown feature {feature!r}; known: {sorted(KNOWN_FEATURES)}")
        return feature in self.features

    def require(self, feature: str, reason: str = "") -> None:
        """Raise NotSupported unless ``feature`` is supported (names the backends that have it)."""
        if not self.supports(feature):
            raise NotSupported(self.name, feature, reason, self._alternatives(feature))

    def _alternatives(self, feature: str) -> list:
        alts = {"grad": ["torch", "jax", "tensorflow"], "jvp": ["torch", "jax", "tensorflow"],
                "checkpoint": ["torch", "jax", "tensorflow"], "jit": ["jax", "tensorflow"], "fuse": ["torch"],
                "float64": ["numpy", "torch", "jax", "tensorflow"], "gpu": ["torch", "jax", "tensorflow"]}
        return [a for a in alts.get(feature, []) if a != self.name]

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

    def cast(self, x: Any, dtype: str) -> Any:
        self._missing("cast")

    def linspace(self, start: float, stop: float, num: int, dtype: str, device: Any) -> Any:
        self._missing("linspace")

    # ---- raw ops (raw in, raw out) ---------------------------------------------------------
    # Defaults raise NotSupported, so a third-party adapter that leaves an op out fails with a sentence
    # naming the backend and the op instead of a bare NotImplementedError.
    def _missing(self, op: str):
        raise NotSupported(self.name, op, "its adapter does not implement it")

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
        self._missing("grad")

    def jvp(self, f: Callable, params: Dict[str, Any], tangents: Dict[str, Any], *args: Any):
        """``(f(params), d f(params) . tangents)``; tangents missing from the dict count as zero."""
        self.require("jvp", "it has no forward-mode autodiff")
        self._missing("jvp")

    def jit(self, f: Callable, static_argnames: Iterable[str] = (), **options: Any) -> Jitted:
        """Identity by default (eager backends); see subclasses."""
        jitted = Jitted(f)

        def body(*args, **kwargs):
            jitted._count()
            return f(*args, **kwargs)

        jitted._compiled = body
        return jitted

    def fuse(self, f: Callable) -> Callable:
        """``f`` (EagerPy tensors, or pytrees of them, in and out) compiled into a few fused kernels, forward and
        backward, for inputs whose shapes change from call to call without recompiling (dynamic shapes).

        For the elementwise-heavy glue of the simulator (per-pair inputs: ~150 small operations), whose cost on
        a GPU is the launch of each operation, not arithmetic. Identity by default; an adapter whose framework
        compiles with dynamic shapes declares the feature "fuse" (torch: ``torch.compile(dynamic=True)``).
        """
        return f

    def fused(self, fn: Callable, **static: Any) -> Callable:
        """:meth:`fuse` of ``functools.partial(fn, **static)``, made once per distinct (hashable) static arguments
        and kept by this adapter, so that each compiles once per process."""
        key = (fn, tuple(sorted(static.items())))
        cache = self.__dict__.setdefault("_fused", {})
        if key not in cache:
            cache[key] = self.fuse(functools.partial(fn, **static))
        return cache[key]

    def checkpoint(self, f: Callable) -> Callable:
        """Identity: without autodiff there is nothing to save memory on."""
        return f

    def rng(self, seed: int, device: Any = None):
        """A seeded generator with ``normal(shape, dtype)`` / ``uniform(shape, dtype)`` (no global state)."""
        self._missing("rng")
