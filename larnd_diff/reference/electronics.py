"""LArPix front end (spec 4.5): self-triggering integrator, hold window, dead time and 8-bit digitisation.

Charges inside the kernel are in Coulomb like larnd-sim (waveforms in C/us times dt); the public outputs convert to
electrons.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .induce import E_CHARGE
from .numerics import JIT
from .rng import normal_f32


@njit(**JIT)
def _noise(state, row, sigma_e, noisy):
    """One normal draw times sigma electrons, in C (0 without noise; no draw is made then)."""
    if noisy:
        return np.float64(normal_f32(state, row)) * sigma_e * E_CHARGE
    return 0.0


@njit(**JIT)
def _tick_charge(waveform, i, t_sampling):
    """Charge (C) of tick i: current x dt, zero past the stored ticks."""
    if i < waveform.shape[0]:
        return waveform[i] * t_sampling
    return 0.0


@njit(**JIT)
def pixel_triggers(waveform, n_ticks, t_sampling, threshold_c, interval, max_samples, reset_e, uncorr_e, state, row,
                   noisy, charges, ticks):
    """Discriminate / integrate one pixel waveform (C/us per tick) of ``n_ticks`` ticks, zero beyond
    len(waveform). Fills ``charges`` (C) and ``ticks`` (trigger tick indices), returns the number of samples.

    The trigger tick is integrated twice (once before the comparison, once in the hold window; Q); after a stored
    sample two ticks are dead and the integrator restarts with reset noise; after a failed conversion one tick is
    skipped and it restarts with uncorrelated noise only.
    """
    n = n_ticks
    n_stored = waveform.shape[0]
    k = 0
    q_sum = _noise(state, row, reset_e, noisy)
    i = 0
    while i < n:
        if i >= n_stored and not noisy:
            break   # q_sum < threshold here and no more charge: nothing can trigger (noise draws need every tick)
        q_sum += _tick_charge(waveform, i, t_sampling)
        q_noise = _noise(state, row, uncorr_e, noisy)
        if q_sum + q_noise >= threshold_c:
            trigger = i
            integrate_end = i + interval
            while i <= integrate_end and i < n:
                q_sum += _tick_charge(waveform, i, t_sampling)
                i += 1
            converted = q_sum + _noise(state, row, uncorr_e, noisy)
            if converted < threshold_c:
                i += 1
                q_sum = _noise(state, row, uncorr_e, noisy)
                continue
            if k >= max_samples:
                break
            charges[k] = converted
            ticks[k] = trigger
            k += 1
            q_sum = _noise(state, row, reset_e, noisy)
            i += 2
        else:
            i += 1
    return k


@njit(parallel=True, **JIT)
def front_end(waveforms, n_ticks, t_sampling, threshold_e, interval, max_samples, reset_e, uncorr_e, state, noisy):
    """Apply :func:`pixel_triggers` to every row (``n_ticks`` ticks, zero past waveforms.shape[1]).

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
