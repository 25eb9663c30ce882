"""Kinetic energy from residual range: the generator's own stopping-power tables integrated from the stop.

For a particle that stops, the kinetic energy T at residual range r (cm of track left before the stop) solves
dT/dr = S(T), T(0) = 0, with S the mean (restricted) loss of :func:`larnd_diff.generate.stopping_power_mev_per_cm`
(Bethe with density effect, PDG constants, ``particle`` masses), in the same medium as the generator (liquid argon
at the detector's density, or 1.396 g/cm^3). Below beta*gamma = 0.05, where the Bethe formula stops being valid,
the generator deposits the rest of the energy in one last step of length T / (2 S(T)) (the range when S ~ 1/T);
the same rule gives T(r) = T_low sqrt(r / r_low) there, so that reconstructed and generated segments agree.

The integral r(T) = r_low + int_{T_low}^{T} dT' / S(T') is taken by quadrature on a fine logarithmic grid of T
(scipy's cumulative Simpson rule) and inverted by monotone interpolation. The energy deposited between residual
ranges r1 < r2 is T(r2) - T(r1): exact for the continuous-slowing-down model, whatever the segment length.
This is the only place energy enters the reconstruction; the measured charge never does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.integrate import cumulative_simpson

from larnd_diff.generate import (electron_mass_mev, liquid_argon, lowest_bethe_kinetic_mev, particle_properties,
                                 stopping_power_mev_per_cm)

#: Highest kinetic energy of the tables (MeV): far beyond what stops in a module (a 10 GeV muon goes ~40 m).
_T_MAX_MEV = 1.0e4
_GRID_POINTS = 4000


@dataclass(frozen=True)
class RangeTable:
    """Residual range r (cm) and kinetic energy T (MeV) of a species on a common grid (both increasing)."""

    species: str
    pdg: int
    mass_mev: float
    residual_range_cm: np.ndarray
    kinetic_mev: np.ndarray
    density_g_cm3: float
    delta_cut_mev: float | None

    def kinetic_energy(self, residual_range_cm) -> np.ndarray:
        """T (MeV) at residual range r (cm); T_low sqrt(r / r_low) below the Bethe limit."""
        r = np.asarray(residual_range_cm, np.float64)
        r_low, t_low = self.residual_range_cm[0], self.kinetic_mev[0]
        below = t_low * np.sqrt(np.clip(r, 0.0, None) / r_low)
        return np.where(r < r_low, below, np.interp(r, self.residual_range_cm, self.kinetic_mev))

    def residual_range(self, kinetic_mev) -> np.ndarray:
        """Inverse of :meth:`kinetic_energy`: the range (cm) of a particle of kinetic energy T (MeV)."""
        t = np.asarray(kinetic_mev, np.float64)
        r_low, t_low = self.residual_range_cm[0], self.kinetic_mev[0]
        return np.where(t < t_low, r_low * (np.clip(t, 0.0, None) / t_low) ** 2,
                        np.interp(t, self.kinetic_mev, self.residual_range_cm))

    def stopping_power(self, kinetic_mev) -> np.ndarray:
        """Mean loss dE/dx (MeV/cm) at kinetic energy T, as the generator computes it."""
        t = np.maximum(np.asarray(kinetic_mev, np.float64), self.kinetic_mev[0])
        return stopping_power_mev_per_cm(t, self.mass_mev, 1.0, liquid_argon(self.density_g_cm3),
                                         self.delta_cut_mev, electron_mass_mev())

    def deposited_between(self, r_lo, r_hi) -> np.ndarray:
        """Energy (MeV) lost between residual ranges r_lo < r_hi."""
        return self.kinetic_energy(r_hi) - self.kinetic_energy(r_lo)


@lru_cache(maxsize=32)
def range_table(species: str, density_g_cm3: float | None = None, delta_cut_mev: float | None = 1.0) -> RangeTable:
    """The residual-range table of ``species`` (a name or PDG code accepted by ``particle_properties``)."""
    pdg, mass, charge = particle_properties(species)
    medium = liquid_argon(density_g_cm3)
    me = electron_mass_mev()
    t_low = float(lowest_bethe_kinetic_mev(mass))
    t = np.geomspace(t_low, _T_MAX_MEV, _GRID_POINTS)
    s = stopping_power_mev_per_cm(t, mass, charge, medium, delta_cut_mev, me)
    r_low = t_low / (2.0 * s[0])
    r = r_low + cumulative_simpson(1.0 / s, x=t, initial=0.0)
    return RangeTable(species=str(species), pdg=int(abs(pdg)), mass_mev=float(mass), residual_range_cm=r,
                      kinetic_mev=t, density_g_cm3=medium.density_g_cm3, delta_cut_mev=delta_cut_mev)


def mean_loss_mev_per_cm(species: str, kinetic_mev: float, density_g_cm3: float | None = None,
                         delta_cut_mev: float | None = 1.0) -> float:
    """Mean (restricted) loss of a particle of kinetic energy T: the assumed dE/dx of tracks that do not stop."""
    _, mass, charge = particle_properties(species)
    return float(stopping_power_mev_per_cm(kinetic_mev, mass, charge, liquid_argon(density_g_cm3), delta_cut_mev,
                                           electron_mass_mev()))
