"""The expected-noise likelihood is unbiased: on data made by the reference's noisy front end, its minimum over a
one-parameter family of models sits at the true parameter within the statistical error.

The toy: a charge scale g (an electron-yield calibration: every pixel's charge per tick times g) on hand-made
pulses, well above, near and at threshold (where the hit probability carries the information) and a slow pulse
with several stored samples; the data are the reference ``front_end`` with noise on at g = 1 (the same MC as
tests/test_expected_noise.py). The NLL summed over all rows is scanned over g; a parabola through the scan gives
its minimum and the statistical error sigma = (d^2 NLL / dg^2)^(-1/2). A biased model (a wrong noise width, a
threshold or ADC offset) moves the minimum by many sigmas at this sample size: the second test checks that a
pedestal half an ADC count off in the model does exactly that, so the first can fail.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.detector import module0
from larnd_diff.sim import expected_noise as en
from test_expected_noise import TOTAL, pulse, reference_mc

DET = module0()
GRID = np.linspace(0.98, 1.02, 9)


@pytest.fixture(scope="module")
def noisy_data():
    charge = np.stack([pulse(20000, 50, 10), pulse(7500, 50, 10), pulse(6000, 50, 4), pulse(18000, 40, 150)])
    ticks, adc = reference_mc(charge, reps=300, n_seeds=2)
    n = ticks.shape[0]
    return (np.tile(charge, (n, 1)), ticks.reshape(n * len(charge), -1)[:, :3],
            adc.reshape(n * len(charge), -1)[:, :3])


def scan_minimum(charge, ticks, adc, detector):
    be = ops.get_backend("numpy")
    nll = [-float(np.sum(ops.to_numpy(en.readout_log_likelihood(be.asarray(g * charge, "float64"), detector, ticks,
                                                                  adc, total_ticks=TOTAL))))
           for g in GRID]
    a2, a1, _ = np.polyfit(GRID - 1.0, np.array(nll) - min(nll), 2)
    assert a2 > 0, "the NLL must be convex in the charge scale around the truth"
    return 1.0 - a1 / (2 * a2), 1.0 / math.sqrt(2 * a2)


def test_likelihood_minimum_at_the_true_charge_scale(noisy_data):
    g_min, sigma = scan_minimum(*noisy_data, DET)
    assert sigma < 0.003, f"the toy must constrain g to better than 0.3 % (sigma {sigma:.4f})"
    assert abs(g_min - 1.0) < 3 * sigma, f"minimum at g = {g_min:.5f}, sigma {sigma:.5f}"


def test_a_wrong_noise_model_is_caught(noisy_data):
    """The same scan with the model's ADC pedestal 2 mV (half a count, ~500 e-) high: the minimum moves away from
    the truth by more than 3 sigma (the unbiasedness test above has the power to see a mis-modelled front end)."""
    fee = dataclasses.replace(DET.electronics, v_pedestal_mv=DET.electronics.v_pedestal_mv + 2.0)
    g_min, sigma = scan_minimum(*noisy_data, dataclasses.replace(DET, electronics=fee))
    assert abs(g_min - 1.0) > 3 * sigma, f"minimum at g = {g_min:.5f}, sigma {sigma:.5f}"
