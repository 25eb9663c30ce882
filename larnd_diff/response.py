"""The pixel pad's current response, shared by the simulator (:mod:`larnd_diff.sim`) and the
reference (:mod:`larnd_diff.reference`).

A charge reaching the virtual plane 0.5 cm before the anode at time t0 and landing (x, y) cm from the pad centre
(|x|, |y| <= p/2) induces the current fraction per us

    I(t) = A exp(-(t_s - t)/B)/B + (1 - A) exp(-(t_s - t)/C)/C  for t < t_s, else 0,

with A = min(1, P_A(x, y)), the fast and slow time constants B = P_B(x, y) and C = P_C(x, y) (us) and the arrival
time t_s = t0 + P_delay(x, y) (us). Each P is the quadratic :func:`pad_polynomial` with the coefficients below
(larnd-sim's module0 fit; symmetric in x and y).

The functions are arithmetic only: they run on Python floats and on EagerPy tensors, and numba compiles them into
the CPU and CUDA kernels (:mod:`larnd_diff.retarget`).
"""
from __future__ import annotations

#: Coefficients (c0 .. c5) of :func:`pad_polynomial`: the fast fraction A (before its clip at 1), the fast and the
#: slow time constants B and C (us), and the delay t_s - t0 (us).
AMPLITUDE_A = (1.060, -0.909, -0.909, 5.856, 0.207, 0.207)
TAU_B_US = (0.679, -1.083, -1.083, 8.772, -5.521, -5.521)
TAU_C_US = (2.644, -9.174, -9.174, 13.483, 45.887, 45.887)
DELAY_US = (2.948, -2.705, -2.705, 4.825, 20.814, 20.814)
#: Upper bound of the delay over the pad (its maximum, at a corner, is 4.032 us).
MAX_DELAY_US = 4.1
#: Lower bound of the time constants over the pad (the smallest, B at a corner, is 0.0872 us; C >= 1.84 us).
MIN_TAU_US = 0.05


def pad_polynomial(c, x, y):
    """c0 + c1 x + c2 y + c3 x y + c4 x^2 + c5 y^2 at offsets (x, y) cm from the pad centre, summed left to
    right (larnd-sim's order: the reference's float64 bits depend on it)."""
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


def pad_polynomial_slopes(c, x, y):
    """(d/dx, d/dy) of :func:`pad_polynomial`."""
    return c[1] + c[3] * y + 2.0 * c[4] * x, c[2] + c[3] * x + 2.0 * c[5] * y
