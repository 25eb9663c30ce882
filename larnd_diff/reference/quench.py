"""Recombination ("quenching"): deposited energy -> ionisation electrons that escape recombination (spec 4.1)."""
from __future__ import annotations

import numpy as np

from ..params import as_params

BIRKS = "birks"
BOX = "box"


def birks_recombination(dEdx, Ab, kb, eField, lArDensity):
    """Birks survival fraction R = A_B / (1 + k_B dE/dx / (E rho)); dE/dx in MeV/cm, E in kV/cm, rho in g/cm^3."""
    return Ab / (1 + kb * np.asarray(dEdx, np.float64) / (eField * lArDensity))


def box_recombination(dEdx, alpha, beta, eField, lArDensity):
    """Box-model survival fraction R = max(0, ln(alpha + xi)/xi), xi = beta dE/dx / (E rho) (NaN at dE/dx = 0)."""
    xi = beta * np.asarray(dEdx, np.float64) / (eField * lArDensity)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(0.0, np.log(alpha + xi) / xi)


def truncate_u4(x):
    """Store into an unsigned 32-bit field, as larnd-sim does: truncation toward zero."""
    return np.asarray(x, np.float64).astype(np.uint32)


def quench(segments: np.ndarray, params=None, model: str = BIRKS, detector=None) -> np.ndarray:
    """Copy of ``segments`` with n_electrons = trunc(R * dE * MeVToElectrons) (u4 store).

    ``model`` is "birks" (the one larnd-sim's driver uses) or "box".
    """
    from ..detector import resolve_detector
    det = resolve_detector(detector)
    p = as_params(params, nominal=det.nominal)
    out = segments.copy()
    dEdx = segments["dEdx"].astype(np.float64)
    if model == BIRKS:
        recomb = birks_recombination(dEdx, p["Ab"], p["kb"], p["eField"], p["lArDensity"])
    elif model == BOX:
        recomb = box_recombination(dEdx, p["alpha"], p["beta"], p["eField"], p["lArDensity"])
    else:
        raise ValueError(f"unknown recombination model {model!r}; use 'birks' or 'box'")
    with np.errstate(invalid="ignore"):
        n = recomb * segments["dE"].astype(np.float64) * p["MeVToElectrons"]
    out["n_electrons"] = truncate_u4(np.nan_to_num(n, nan=0.0))
    return out
