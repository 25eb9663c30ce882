"""Recombination ("quenching"): deposited energy -> ionisation electrons that escape recombination."""
from __future__ import annotations

import numpy as np

from ..errors import ElectronCountError, rows_text
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


#: Largest electron count larnd-sim's unsigned 32-bit ``n_electrons`` field holds (4,294,967,295: about 1.5e5 MeV
#: deposited in one segment at the nominal parameters).
U4_MAX = int(np.iinfo(np.uint32).max)


def truncate_u4(x, rows=None, what: str = "electron count"):
    """Store into an unsigned 32-bit field, as larnd-sim does: truncation toward zero.

    Values whose truncation lies outside 0 .. 2^32 - 1 (negative, beyond the field, infinite or NaN) are not stored:
    larnd-sim's cast would wrap them around (-1 MeV -> 4.29e9 electrons, 1e6 MeV -> 0 on some platforms), so an
    :class:`~larnd_diff.errors.ElectronCountError` names them instead. ``rows``: the row number of each value, for
    the message (default: its index).
    """
    x = np.asarray(x, np.float64)
    bad = ~((x > -1.0) & (x < U4_MAX + 1.0))
    if bad.any():
        index = np.flatnonzero(bad)
        rows = index if rows is None else np.asarray(rows)[index]
        first = float(x.reshape(-1)[index[0]])
        raise ElectronCountError(
            f"segments {rows_text(rows)}: {what} {first:.6g} does not fit larnd-sim's unsigned 32-bit n_electrons "
            f"field (0 .. {U4_MAX}, about 1.5e5 MeV in one segment at the nominal parameters); larnd-sim would "
            f"wrap it around. Check dE and dEdx (units: MeV, MeV/cm) and the parameters", field="n_electrons",
            rows=rows, value=first)
    return x.astype(np.uint32)


def quench(segments: np.ndarray, params=None, model: str = BIRKS, detector=None) -> np.ndarray:
    """Copy of ``segments`` with n_electrons = trunc(R * dE * MeVToElectrons) (u4 store).

    ``model`` is "birks" (the one larnd-sim's driver uses) or "box". A count that does not fit the u4 field
    (negative dE or dE/dx, or a deposit of more than ~1.5e5 MeV in one segment) raises an
    :class:`~larnd_diff.errors.ElectronCountError` naming the rows instead of wrapping around.
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
    # the Box model's 0/0 at dE/dx = 0 is NaN, which larnd-sim's cast stores as 0; any other NaN is an error
    n = np.where(np.isnan(n) & (dEdx == 0) & (model == BOX), 0.0, n)
    out["n_electrons"] = truncate_u4(n, what="electron count after recombination")
    return out
