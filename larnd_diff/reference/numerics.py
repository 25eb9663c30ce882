"""Floating-point helpers shared by the reference kernels.

The reference (larnd-sim on CUDA) mixes float32 and float64 arithmetic (spec 4.8). Here every quantity is held in
a float64 variable; where larnd-sim computes in float32 we round the float64 result of the same operation to
float32 (`f32`), which gives the correctly rounded float32 result for +, -, *, / and sqrt. With
``single=False`` the rounding is skipped and everything stays in double precision.

The GPU compiler also contracts a*b + c into fused multiply-adds (NVVM's default); `fma` emulates that where it
changes the result measurably (see :mod:`.induce`).
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
def fma(a, b, c):
    """Fused multiply-add in float64 (one rounding), as the GPU compiler contracts a*b + c."""
    return _llvm_fma(np.float64(a), np.float64(b), np.float64(c))


@njit(**JIT)
def f32(x, single):
    """x rounded to float32 (returned as float64) when ``single``; x unchanged otherwise."""
    if single:
        return np.float64(np.float32(x))
    return x


@njit(**JIT)
def fma_f32(a, b, c, single):
    """float32 fused multiply-add a*b + c of float32 values (the float64 fma rounded to float32; differs from a
    true float32 fma only in rare double-rounding ties). Plain float64 a*b + c when not ``single``."""
    if single:
        return np.float64(np.float32(fma(a, b, c)))
    return a * b + c
