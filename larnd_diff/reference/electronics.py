"""LArPix front end: self-triggering integrator, hold window, dead time and 8-bit digitisation.

The trigger logic of one pixel is :func:`.scalars.pixel_triggers` (compiled for the CPU by :mod:`.induce`, for
the GPU by :mod:`.cuda_kernels`); here the parallel loop over the pixels and the digitisation. Charges inside the
kernel are in Coulomb like larnd-sim (waveforms in C/us times dt); the public outputs convert to electrons.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .induce import CPU
from .numerics import JIT
from .scalars import E_CHARGE

pixel_triggers = CPU["pixel_triggers"]


@njit(parallel=True, **JIT)
def front_end(waveforms, n_ticks, t_sampling, threshold_e, interval, max_samples, reset_e, uncorr_e, state, noisy):
    """Apply :func:`.scalars.pixel_triggers` to every row (``n_ticks`` ticks, zero past waveforms.shape[1]).

    Returns charges (n, K) in C (NaN empty), trigger ticks (n, K) (-1 empty) and sample counts."""
    n_rows = waveforms.shape[0]
    charges = np.full((n_rows, max_samples), np.nan)
    ticks = np.full((n_rows, max_samples), -1, np.int64)
    counts = np.zeros(n_rows, np.int64)
    threshold_c = threshold_e * E_CHARGE
    for r in prange(n_rows):
        counts[r] = pixel_triggers(waveforms[r], n_ticks, t_sampling, threshold_c, interval, max_samples, reset_e,
                                   uncorr_e, state, r, noisy, charges[r], ticks[r])
    return charges, ticks, counts


def digitize(charge_c, electronics):
    """ADC = min(round_half_even(max(Q/e * gain + V_ped - V_cm, 0) * counts / (V_ref - V_cm)), counts)."""
    el = electronics
    v = np.maximum(np.asarray(charge_c, np.float64) / E_CHARGE * el.gain_mv_per_e + el.v_pedestal_mv - el.v_cm_mv,
                   0.0)
    return np.minimum(np.around(v * el.adc_counts / (el.v_ref_mv - el.v_cm_mv)), el.adc_counts)
