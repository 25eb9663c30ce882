"""Floating-point helpers shared by the reference kernels.

The reference (larnd-sim on CUDA) mixes float32 and float64 arithmetic (spec 4.8). Here every quantity is held in
a float64 variable; where larnd-sim computes in float32 we round the float64 result of the same operation to
float32 (`f32`), which gives the correctly rounded float32 result for +, -, *, / and sqrt. With
``single=False`` the rounding is skipped and everything stays in double precision.
"""
from __future__ import annotations

import numpy as np
from numba import njit

#: numba options of every reference kernel: IEEE semantics for division by zero (NaN/inf instead of an exception,
#: as on the GPU), on-disk cache to cut JIT time.
JIT = dict(cache=True, error_model="numpy", nogil=True)


@njit(**JIT)
def f32(x, single):
    """x rounded to float32 (returned as float64) when ``single``; x unchanged otherwise."""
    if single:
        return np.float64(np.float32(x))
    return x


@njit(**JIT)
def fma_f32(a, b, c, single):
    """float32 fused multiply-add a*b + c (exact product, one rounding) as the GPU compiler contracts it.

    a, b, c hold float32 values, so a*b is exact in float64; the float64 sum is then rounded to float32
    (a double rounding that differs from a true fma only in rare ties). Plain float64 a*b + c when not ``single``.
    """
    if single:
        return np.float64(np.float32(a * b + c))
    return a * b + c
