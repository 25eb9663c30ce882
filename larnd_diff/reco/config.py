"""The knobs of the reconstruction, in one frozen record (lengths in cm, times in us, energies in MeV)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class RecoConfig:
    """Every tunable choice of :func:`larnd_diff.reco.reconstruct`; ``reconstruct(**knobs)`` overrides fields.

    Points
      trigger_latency_us   mean delay from the charge's arrival at the 0.5 cm plane to the trigger (points.py)
    Clustering (DBSCAN on points in cm)
      cluster_eps_cm       neighbourhood radius: bridges one missing pixel row (the export drops tile-edge
                           channels) and the 0.32 cm cathode gap, not two separate tracks 1.5 cm apart
      cluster_min_samples  points (itself included) within eps for a core point
    Lines (sequential RANSAC inside each cluster)
      line_residual_cm     inlier distance to a line: pixel quantisation (half-diagonal 0.31 cm) + diffusion
      line_max_gap_cm      largest gap along a line inside one piece
      min_piece_points, min_piece_length_cm   smallest piece kept
      ransac_trials        RANSAC draws per piece; seed fixes them
      max_pieces           pieces per cluster at most
    Tracks
      join_distance_cm     largest distance between the ends of two pieces joined into one polyline
      max_kink_deg         largest change of direction at such a joint (larger: two tracks meeting at a vertex)
      extend_radius_cm, extend_max_cm   the end extension: unassigned points within the radius, ahead of the end,
                           are added, for at most extend_max_cm (recovers the Bragg end that scatters off a line)
      min_track_length_cm, min_track_points   smallest track reported
      min_cluster_track_fraction   clusters whose tracks hold less of their points than this are shower-like
    Containment and segments
      containment_margin_cm   an end is contained when it lies this far inside the union of the TPC boxes
      step_cm              segment length (the generator's default step)
      through_going_kinetic_mev   muon kinetic energy of the assumed mean loss of tracks that do not stop
      delta_cut_mev        restricted-loss cut of the stopping-power tables (the generator's default)
    Hypothesis (charge profile *shape*; never dE/dx)
      profile_bin_cm       bin of the charge profile along the track
      profile_sigma        assumed relative spread of the charge per bin (log scale)
      amplitude_prior_sigma   log-normal width of the prior on the charge scale around its nominal value
      pion_penalty         chi2 added to the pion hypothesis (muon and pion profiles nearly coincide: prefer mu)
      bragg_min_chi2_gain  a track is stopping only when its best Bragg hypothesis beats a flat profile by this
    The three hypothesis knobs were chosen on the samples of benchmarks/reco_quality.py (generated stopping muons
    and protons, the Geant4 mixed sample): profile_sigma 0.2, amplitude_prior_sigma 0.2, bragg_min_chi2_gain 6
    keep 39/41 generated stopping muons and 42/42 protons (all with the right hypothesis) and call 123 of 132
    Geant4 stopping protons protons, while letting 58 electrons through as stopping tracks (74 with 0.35 and 4).
    """

    trigger_latency_us: float = 2.36
    cluster_eps_cm: float = 1.5
    cluster_min_samples: int = 2
    line_residual_cm: float = 0.6
    line_max_gap_cm: float = 2.5
    min_piece_points: int = 4
    min_piece_length_cm: float = 1.0
    ransac_trials: int = 200
    max_pieces: int = 30
    seed: int = 0
    join_distance_cm: float = 3.0
    max_kink_deg: float = 35.0
    extend_radius_cm: float = 1.2
    extend_max_cm: float = 4.0
    min_track_length_cm: float = 3.0
    min_track_points: int = 6
    min_cluster_track_fraction: float = 0.5
    containment_margin_cm: float = 2.0
    step_cm: float = 0.5
    through_going_kinetic_mev: float = 1000.0
    delta_cut_mev: float | None = 1.0
    profile_bin_cm: float = 1.0
    profile_sigma: float = 0.2
    amplitude_prior_sigma: float = 0.2
    pion_penalty: float = 2.0
    bragg_min_chi2_gain: float = 6.0

    def replace(self, **knobs) -> "RecoConfig":
        unknown = sorted(set(knobs) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown reconstruction knob(s) {unknown}; see RecoConfig")
        return replace(self, **knobs)


def parse_knobs(text: str) -> dict:
    """``"cluster_eps_cm=2.0,cluster_min_samples=3"`` -> knobs of :class:`RecoConfig` in their types (ints stay
    ints; ``none`` switches ``delta_cut_mev`` off). Unknown names and bad values raise ``ValueError``."""
    defaults = {f.name: getattr(RecoConfig(), f.name) for f in fields(RecoConfig)}
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in defaults:
            raise ValueError(f"reconstruction knob {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(defaults)}")
        default = defaults[name]
        kind = "an integer" if isinstance(default, int) else "a number"
        try:
            if value.lower() == "none" and name == "delta_cut_mev":
                out[name] = None
            elif isinstance(default, int) and not isinstance(default, bool):
                out[name] = int(value)
            else:
                out[name] = float(value)
        except ValueError:
            raise ValueError(f"reconstruction knob {name}: {value!r} is not {kind}") from None
    return out
