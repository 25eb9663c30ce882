"""numba options of the reference's CPU kernels and the CPU's FMA (one-rounding multiply-add).

The reference (larnd-sim on CUDA) mixes float32 and float64 arithmetic and the GPU compiler contracts some
a*b + c into FMAs; :mod:`.scalars` reproduces both. :func:`fma_rn` is its one-rounding
multiply-add on the CPU (the CUDA kernels bind the hardware instruction under the same name).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

#: numba options of every reference kernel: IEEE semantics for division by zero (NaN/inf instead of an exception,
#: as on the GPU), on-disk cache to cut JIT time.
JIT = dict(cache=True, error_model="numpy", nogil=True)


@intrinsic
def _llvm_fma(typingctx, a, b, c):
    """llvm.fma.f64: a*b + c with a single rounding (hardware FMA, or libm's exact software fma)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@njit(**JIT)
def fma_rn(a, b, c):
    """a*b + c in float64 with one rounding (round to nearest), as the GPU's fma.rn.f64."""
    return _llvm_fma(np.float64(a), np.float64(b), np.float64(c))
