"""xoroshiro128+ streams as numba(-cuda) creates them (splitmix64 seeding, one 2^64 jump per stream) and its
float32 Box-Muller normal draw. Used for the front-end noise; bit-compatible with
``numba.cuda.random.create_xoroshiro128p_states`` / ``xoroshiro128p_normal_float32`` up to the last ulp of the
libm vs CUDA log/cos."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint32, uint64

from .numerics import JIT

_JUMP = (np.uint64(0xBEAC0467EBA5FACB), np.uint64(0xD86B048B86AA9922))
_TWO_PI_F32 = np.float32(2 * math.pi)


@njit(**JIT)
def splitmix64(seed):
    """One splitmix64 output for ``seed`` (the initial state word of stream 0)."""
    z = uint64(seed) + uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint32(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint32(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint32(31))


@njit(**JIT)
def rotl(x, k):
    return (x << uint32(k)) | (x >> uint32(64 - k))


@njit(**JIT)
def next_u64(state, i):
    """Advance stream i of ``state`` (n, 2) uint64; returns the 64-bit output."""
    s0 = state[i, 0]
    s1 = state[i, 1]
    result = s0 + s1
    s1 ^= s0
    state[i, 0] = rotl(s0, 55) ^ s1 ^ (s1 << uint32(14))
    state[i, 1] = rotl(s1, 36)
    return result


@njit(**JIT)
def jump(state, i):
    """Advance stream i by 2^64 steps."""
    s0 = uint64(0)
    s1 = uint64(0)
    for w in range(2):
        word = _JUMP[w]
        for b in range(64):
            if (word >> uint32(b)) & uint64(1):
                s0 ^= state[i, 0]
                s1 ^= state[i, 1]
            next_u64(state, i)
    state[i, 0] = s0
    state[i, 1] = s1


@njit(**JIT)
def create_streams(n, seed):
    """States of n consecutive streams for ``seed``: stream 0 from splitmix64, stream i = stream i-1 jumped."""
    state = np.empty((n, 2), np.uint64)
    if n == 0:
        return state
    z = splitmix64(seed)
    state[0, 0] = z
    state[0, 1] = z
    for i in range(1, n):
        state[i, 0] = state[i - 1, 0]
        state[i, 1] = state[i - 1, 1]
        jump(state, i)
    return state


@njit(**JIT)
def uniform_f32(state, i):
    """Uniform float32 in [0, 1) from the top 53 bits."""
    x = next_u64(state, i)
    return np.float32(np.float64(x >> uint32(11)) * (1.0 / 9007199254740992.0))


@njit(**JIT)
def normal_f32(state, i):
    """Standard normal float32 (first Box-Muller output; two uniforms consumed)."""
    u1 = uniform_f32(state, i)
    u2 = uniform_f32(state, i)
    return np.float32(math.sqrt(-np.float32(2.0) * math.log(u1))) * np.float32(math.cos(_TWO_PI_F32 * u2))


def n_streams(n_rows: int, block: int = 128) -> int:
    """larnd-sim launches 128-thread blocks: block * ceil(n_rows / block) streams."""
    return block * (-(-n_rows // block))
