"""Plain-Python scalar functions compiled for several numba targets: one source for the CPU and CUDA kernels.

A kernel module writes its arithmetic once, as plain Python functions of scalars and array elements, and lists
them in a tuple ``SCALARS``. Each target compiles that list with its own decorator (``numba.njit`` for the CPU
kernels, ``numba.cuda.jit(device=True)`` for the CUDA kernels) into a namespace in which every function calls
the other functions' versions of the same target (:func:`compile_scalars`); the drivers (parallel loops, thread
indexing, launches) are compiled into that namespace too (:func:`rebind`). Names that must differ between targets
(an atomic add, a hardware FMA, a random draw) are plain functions of the module, the CPU's version, that the
CUDA driver replaces through ``bindings``.

numba's on-disk cache keys a compiled function by its own source file only: a driver cached from one file does
not notice an edit of the scalar functions it calls from another. After editing a scalar module, delete the
caches (``find larnd_diff -name '*.nbi' -delete -o -name '*.nbc' -delete``); tox runs start with an empty cache.
"""
from __future__ import annotations

import types


def rebind(fn, namespace: dict):
    """``fn`` with its global names looked up in ``namespace`` (so that numba compiles its calls to the functions
    of one target)."""
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


def compile_scalars(module, decorate, bindings: dict | None = None) -> dict:
    """The functions of ``module.SCALARS`` compiled with ``decorate``, each calling the others' compiled versions:
    a namespace (the module's globals, then ``bindings``, then the compiled functions) to :func:`rebind` drivers
    into."""
    namespace = dict(vars(module))
    namespace.update(bindings or {})
    for fn in module.SCALARS:
        namespace[fn.__name__] = decorate(rebind(fn, namespace))
    return namespace


def numba_cuda():
    """``numba.cuda``, imported after giving NumPy back ``np.row_stack`` where it lacks it: numba-cuda <= 0.30
    registers an overload of that alias of ``np.vstack`` (removed by NumPy 2.5) when its typing registries load,
    and fails without it. Raises ImportError where numba-cuda is missing."""
    import numpy as np

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    from numba import cuda

    return cuda
