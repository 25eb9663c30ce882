"""Particle hypothesis of a stopping track from the *shape* of its charge profile along the residual range.

Muons, pions and protons that stop lose energy along the same Bethe curve against beta, so their dE/dx(r) curves
against residual range r are shifted copies (r scales with the mass): at the same r a proton ionises 2-3 times
more than a muon, a pion about 12 % more. The hypothesis compares the measured charge per cm, in bins of r, with
the expected profile of each species, Q_h(r) = A * S_h(r) * R(S_h(r)) (S from the residual-range table,
R = Birks recombination at the nominal parameters), on a log scale with a free amplitude A per track and
hypothesis. A log-normal prior (width ``amplitude_prior_sigma``, 20 %) ties A to the nominal charge scale: the
factor of 2-3 between protons and muons costs (ln 2.5 / 0.2)^2 ~ 20 in chi2, while a change of the calibrated
parameters by 10-30 % (recombination, field, lifetime) moves both hypotheses' amplitudes alike and costs a few.
The pion hypothesis pays a fixed penalty because its profile is within the spread of the muon's; a tie goes to
the muon. Bins are compared robustly (pulls clipped): a bin with a delta ray or a missing pixel row counts once.

The charge serves **only** this discrete choice (and the choice of which end is the stop when both ends are
contained); every energy written into the segments comes from the range (:mod:`larnd_diff.reco.stopping`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from larnd_diff.params import SPECS

from .stopping import RangeTable

#: Species compared, with their PDG codes (the charge sign cannot be told from a pixel readout without a field).
HYPOTHESES = (("mu-", 13), ("pi+", 211), ("proton", 2212))
#: Fraction of the ionisation electrons (after recombination) that the samples report on average for a track
#: (threshold, dead time and lifetime losses; median 0.93-0.95 with the reference on generated stopping muons and
#: protons, noise off or on, spread 6 % between tracks). It sets the centre of the amplitude prior only.
CHARGE_COLLECTION = 0.94


@dataclass(frozen=True)
class Hypothesis:
    species: str
    pdg: int
    stop_at_end: bool                  # True: the stop is the polyline's last node; False: its first
    chi2: dict = field(default_factory=dict)   # (species, stop_at_end) -> chi2
    log_amplitude: float = float("nan")


def nominal_recombination(dedx_mev_per_cm) -> np.ndarray:
    """Birks survival fraction at the nominal parameters (hypothesis templates only)."""
    ab, kb, efield, rho = (SPECS[k].nominal for k in ("Ab", "kb", "eField", "lArDensity"))
    return ab / (1.0 + kb * np.asarray(dedx_mev_per_cm) / (efield * rho))


def charge_profile(residual_range_cm: np.ndarray, charge_e: np.ndarray, length_cm: float, bin_cm: float):
    """(bin edges (k+1,), charge per cm (k,)) of samples at residual ranges r, whole bins within the track."""
    n_bins = int(np.floor(length_cm / bin_cm))
    edges = np.arange(n_bins + 1) * bin_cm
    if n_bins == 0:
        return edges, np.zeros(0)
    q, _ = np.histogram(residual_range_cm, bins=edges, weights=charge_e)
    return edges, q / bin_cm


def expected_profile(edges: np.ndarray, table: RangeTable, samples_per_bin: int = 16) -> np.ndarray:
    """Expected collected ionisation per cm of each residual-range bin, up to a scale: the integral of the
    recombination survival R(S) over the energy lost in the bin, int R(S(T)) dT (dT = S dr), per cm.

    Integrating over T rather than r stays exact in the first bin, where S grows without bound as r -> 0.
    """
    t_lo, t_hi = table.kinetic_energy(edges[:-1]), table.kinetic_energy(edges[1:])
    f = (np.arange(samples_per_bin) + 0.5) / samples_per_bin
    t = t_lo[:, None] + f[None, :] * (t_hi - t_lo)[:, None]
    survival = nominal_recombination(table.stopping_power(t))
    return np.mean(survival, axis=1) * (t_hi - t_lo) / np.diff(edges)


#: Pulls beyond this count as this much: a bin that crosses a dead pixel row (tile edges) or holds a delta ray
#: must not decide the hypothesis.
PULL_CLIP = 2.5


def profile_chi2(measured: np.ndarray, expected: np.ndarray, log_a0: float, cfg) -> tuple[float, float]:
    """(chi2, log amplitude) of a measured profile against an expected one (log scale, prior on the amplitude).

    The amplitude is the prior-weighted mean of the log ratios, refitted once without the bins whose pull
    exceeds PULL_CLIP; those bins then add PULL_CLIP**2 each.
    """
    ok = measured > 0
    y = np.log(measured[ok]) - np.log(expected[ok])
    w, w_a = 1.0 / cfg.profile_sigma ** 2, 1.0 / cfg.amplitude_prior_sigma ** 2
    a = (w * y.sum() + w_a * log_a0) / (w * len(y) + w_a)
    inlier = np.abs(y - a) <= PULL_CLIP * cfg.profile_sigma
    a = (w * y[inlier].sum() + w_a * log_a0) / (w * inlier.sum() + w_a)
    pull = np.clip((y - a) / cfg.profile_sigma, -PULL_CLIP, PULL_CLIP)
    return float(np.sum(pull ** 2) + w_a * (a - log_a0) ** 2), float(a)


def choose_hypothesis(s_points: np.ndarray, charge_e: np.ndarray, length_cm: float, tables: dict,
                      orientations: tuple[bool, ...], cfg) -> Hypothesis:
    """Best (species, stop end) for a stopping track; ``s_points`` = arc length of its samples from node 0."""
    log_a0 = np.log(SPECS["MeVToElectrons"].nominal * CHARGE_COLLECTION)
    chi2 = {}
    amplitude = {}
    for stop_at_end in orientations:
        r = (length_cm - s_points) if stop_at_end else s_points
        edges, measured = charge_profile(r, charge_e, length_cm, cfg.profile_bin_cm)
        if len(measured) == 0 or not np.any(measured > 0):
            continue
        for species, _ in HYPOTHESES:
            c, a = profile_chi2(measured, expected_profile(edges, tables[species]), log_a0, cfg)
            chi2[(species, stop_at_end)] = c + (cfg.pion_penalty if species == "pi+" else 0.0)
            amplitude[(species, stop_at_end)] = a
    if not chi2:
        return Hypothesis("mu-", 13, orientations[0], {}, float("nan"))
    species, stop_at_end = min(chi2, key=chi2.get)
    return Hypothesis(species, dict(HYPOTHESES)[species], stop_at_end, chi2, amplitude[(species, stop_at_end)])
