"""The reconstruction pipeline: hits -> points -> clusters -> straight pieces -> tracks -> hypotheses -> segments.

Inputs are the hits (pixel, ADC, time from the event t0), the detector, the event t0 and the drift velocity: no
truth (``Hits.backtrack`` is never read). The drift velocity is an explicit argument because the calibration may
change it; everything else is a knob of :class:`RecoConfig`.

What a track becomes:

* ``through-going``: neither end is contained (``containment_margin_cm`` inside the box around the TPCs). Assumed
  a muon at the mean restricted loss of ``through_going_kinetic_mev`` (1 GeV kinetic: the paper's control sample;
  1.94 MeV/cm, within 4 % of the 1.96 MeV/cm mean of the module0 cosmic sample) on every step.
* ``stopping``: at least one end is contained, and a Bragg rise towards a contained end fits the charge profile
  better than a flat (minimum-ionising) profile by ``bragg_min_chi2_gain``. The stop is the contained end; with
  both contained, the end that the profile's shape prefers. The hypothesis (muon / pion / proton) comes from the
  profile's shape (:mod:`larnd_diff.reco.hypothesis`), dE/dx from the residual range
  (:mod:`larnd_diff.reco.stopping`).
* ``no-bragg``: an end is contained, but no Bragg rise is seen there: a particle that starts inside and leaves,
  a hadron that ends in an interaction, an electron. Treated like a through-going muon (no dE/dx from range).
* ``shower-like``: the track belongs to a cluster whose tracks explain less than ``min_cluster_track_fraction`` of
  its points (an electromagnetic shower). Reported, not turned into segments.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from larnd_diff.detector import Detector, resolve_detector
from larnd_diff.hits import Hits
from larnd_diff.io import SEGMENT_DTYPE
from larnd_diff.params import SPECS

from .cluster import cluster_labels
from .config import RecoConfig
from .hypothesis import CHARGE_COLLECTION, HYPOTHESES, choose_hypothesis, nominal_recombination
from .lines import extract_pieces
from .points import HitPoints, hit_points
from .polyline import project
from .segments import track_segments
from .stopping import mean_loss_mev_per_cm, range_table
from .tracks import TrackCandidate, active_volume, is_contained, tracks_from_pieces

CATEGORIES = ("stopping", "through-going", "no-bragg", "shower-like")


@dataclass(frozen=True)
class RecoTrack:
    """One reconstructed track. ``nodes`` run from the start to the end; a stopping track stops at ``end``."""

    event_id: int
    track_id: int
    cluster: int
    nodes: np.ndarray
    n_points: int
    length_cm: float
    start_contained: bool
    end_contained: bool
    category: str
    species: str
    pdg: int
    chi2: dict = field(default_factory=dict)
    n_segments: int = 0

    @property
    def start(self) -> np.ndarray:
        return self.nodes[0]

    @property
    def end(self) -> np.ndarray:
        return self.nodes[-1]

    @property
    def stops(self) -> bool:
        return self.category == "stopping"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["nodes"] = np.round(self.nodes, 3).tolist()
        d["chi2"] = {f"{k[0]}{'' if k[1] else ' (reversed)'}": round(v, 2) for k, v in self.chi2.items()}
        return d


@dataclass(frozen=True)
class RecoReport:
    """What :func:`reconstruct` found. ``point_track[i]`` is the index in ``tracks`` of point i (-1: none)."""

    tracks: list
    points: HitPoints
    point_track: np.ndarray
    point_cluster: np.ndarray
    vdrift: float
    config: RecoConfig
    n_events: int

    def sample_track(self, n_rows: int, n_slots: int = 10) -> np.ndarray:
        """(n_rows, n_slots) index of the track of each hit sample, -1 for none or an empty slot."""
        out = np.full((n_rows, n_slots), -1, np.int64)
        out[self.points.row, self.points.slot] = self.point_track
        return out

    def sample_mask(self, n_rows: int, categories=("stopping", "through-going", "no-bragg"),
                    n_slots: int = 10) -> np.ndarray:
        """(n_rows, n_slots) True for samples of tracks of the given categories (e.g. to select target hits)."""
        index = self.sample_track(n_rows, n_slots)
        wanted = np.array([t.category in categories for t in self.tracks] + [False])
        return wanted[index]

    def counts(self) -> dict:
        out = {c: sum(t.category == c for t in self.tracks) for c in CATEGORIES}
        out["points"] = len(self.points)
        out["points in tracks"] = int(np.sum(self.point_track >= 0))
        return out

    def summary(self) -> str:
        """A Markdown table of the tracks."""
        lines = ["| event | track | category | hypothesis | length (cm) | points | start contained | "
                 "end contained | segments |", "|---|---|---|---|---|---|---|---|---|"]
        for t in self.tracks:
            lines.append(f"| {t.event_id} | {t.track_id} | {t.category} | {t.species} | {t.length_cm:.1f} | "
                         f"{t.n_points} | {t.start_contained} | {t.end_contained} | {t.n_segments} |")
        return "\n".join(lines)


def _flat_chi2(s_points, charge, length, cfg, dedx) -> float:
    """chi2 of a flat profile (minimum-ionising, not stopping) with the same amplitude prior as the hypotheses."""
    from .hypothesis import charge_profile, profile_chi2

    edges, measured = charge_profile(s_points, charge, length, cfg.profile_bin_cm)
    if len(measured) == 0 or not np.any(measured > 0):
        return float("inf")
    expected = np.full(len(measured), dedx * float(nominal_recombination(dedx)))
    log_a0 = np.log(SPECS["MeVToElectrons"].nominal * CHARGE_COLLECTION)
    return profile_chi2(measured, expected, log_a0, cfg)[0]


def _classify(cand: TrackCandidate, pts: HitPoints, volume, tables, cfg, dedx_mip, shower: bool):
    """(nodes oriented start -> end, category, Hypothesis or None) of a candidate track."""
    nodes = cand.nodes
    c0 = is_contained(nodes[0], volume, cfg.containment_margin_cm)
    c1 = is_contained(nodes[-1], volume, cfg.containment_margin_cm)
    if shower:
        return nodes, (c0, c1), "shower-like", None
    if not (c0 or c1):
        return nodes, (c0, c1), "through-going", None
    s, _ = project(pts.xyz[cand.index], nodes)
    length = cand.length
    orientations = (True, False) if (c0 and c1) else ((True,) if c1 else (False,))
    hyp = choose_hypothesis(s, pts.charge[cand.index], length, tables, orientations, cfg)
    flat = _flat_chi2(s, pts.charge[cand.index], length, cfg, dedx_mip)
    best = min(hyp.chi2.values()) if hyp.chi2 else float("inf")
    if best > flat - cfg.bragg_min_chi2_gain:
        return nodes, (c0, c1), "no-bragg", None
    if not hyp.stop_at_end:
        nodes = nodes[::-1].copy()
        c0, c1 = c1, c0
    return nodes, (c0, c1), "stopping", hyp


def _event_tracks(pts: HitPoints, cfg: RecoConfig):
    """(candidates with their cluster, cluster labels, shower flag per cluster) of one event's points."""
    labels = cluster_labels(pts.xyz, eps_cm=cfg.cluster_eps_cm, min_samples=cfg.cluster_min_samples)
    found, shower = [], {}
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        xyz = pts.xyz[members]
        pieces = extract_pieces(xyz, cfg)
        cands = [t for t in tracks_from_pieces(xyz, pieces, cfg)
                 if t.length >= cfg.min_track_length_cm and len(t.index) >= cfg.min_track_points]
        in_tracks = sum(len(t.index) for t in cands)
        shower[int(c)] = bool(cands) and in_tracks < cfg.min_cluster_track_fraction * len(members)
        for t in cands:
            found.append((int(c), TrackCandidate(nodes=t.nodes, index=members[t.index])))
    return found, labels, shower


def reconstruct(hits: Hits, detector=None, *, event_t0=0.0, vdrift: float | None = None,
                config: RecoConfig | None = None, **knobs):
    """Reconstruct the simulation input (segments) from hits alone.

    Parameters
    ----------
    hits : Hits
        Hit times in us from each event's t0 (as :func:`larnd_diff.simulate` and :func:`load_packets` give them).
    detector : Detector, (detector_yaml, layout_yaml) or None (module0)
    event_t0 : float or {event_id: t0_us}
        Subtracted from the hit times (0: they are already measured from the t0).
    vdrift : float or None
        Drift velocity in cm/us (None: the nominal 0.1587 cm/us of ``larnd_diff.params``).
    config, **knobs
        :class:`RecoConfig` and field overrides (``reconstruct(hits, cluster_eps_cm=2.0)``).

    Returns
    -------
    (segments, report)
        ``segments``: a :data:`SEGMENT_DTYPE` array in the simulation frame (z = drift; ``save_segments`` writes
        the edep-sim frame), eventID = the hits' event, trackID = 1, 2, ... per event, pdgId = the hypothesis
        (13, 211, 2212). ``report``: :class:`RecoReport`.
    """
    det: Detector = resolve_detector(detector)
    cfg = (config or RecoConfig()).replace(**knobs)
    v = float(SPECS["vdrift"].nominal if vdrift is None else vdrift)
    pts = hit_points(hits, det, vdrift_cm_per_us=v, trigger_latency_us=cfg.trigger_latency_us, event_t0=event_t0)
    density = det.nominal.get("lArDensity")
    tables = {sp: range_table(sp, density, cfg.delta_cut_mev) for sp, _ in HYPOTHESES}
    dedx_mip = mean_loss_mev_per_cm("mu-", cfg.through_going_kinetic_mev, density, cfg.delta_cut_mev)
    volume = active_volume(det)
    boxes = np.sort(det.tpc_borders, axis=2)
    point_track = np.full(len(pts), -1, np.int64)
    point_cluster = np.full(len(pts), -1, np.int64)
    tracks, seg_parts = [], []
    events = np.unique(pts.event_id)
    for event in events:
        rows = np.flatnonzero(pts.event_id == event)
        found, labels, shower = _event_tracks(pts.take(rows), cfg)
        point_cluster[rows] = np.where(labels >= 0, labels, -1)
        for track_id, (cluster, cand) in enumerate(found, start=1):
            cand = TrackCandidate(nodes=cand.nodes, index=rows[cand.index])
            nodes, (c0, c1), category, hyp = _classify(cand, pts, volume, tables, cfg, dedx_mip, shower[cluster])
            species, pdg = (hyp.species, hyp.pdg) if hyp else ("mu-", 13)
            segs = np.zeros(0, SEGMENT_DTYPE)
            if category == "stopping":
                segs = track_segments(nodes, event_id=int(event), track_id=track_id, pdg=pdg, boxes=boxes,
                                      step_cm=cfg.step_cm, table=tables[species])
            elif category in ("through-going", "no-bragg"):
                segs = track_segments(nodes, event_id=int(event), track_id=track_id, pdg=pdg, boxes=boxes,
                                      step_cm=cfg.step_cm, dedx_mev_per_cm=dedx_mip)
            seg_parts.append(segs)
            point_track[cand.index] = len(tracks)
            tracks.append(RecoTrack(event_id=int(event), track_id=track_id, cluster=cluster, nodes=nodes,
                                    n_points=len(cand.index), length_cm=cand.length, start_contained=bool(c0),
                                    end_contained=bool(c1), category=category, species=species, pdg=pdg,
                                    chi2=dict(hyp.chi2) if hyp else {}, n_segments=len(segs)))
    segments = np.concatenate(seg_parts) if seg_parts else np.zeros(0, SEGMENT_DTYPE)
    report = RecoReport(tracks=tracks, points=pts, point_track=point_track, point_cluster=point_cluster, vdrift=v,
                        config=cfg, n_events=len(events))
    return segments, report


__all__ = ["CATEGORIES", "RecoReport", "RecoTrack", "reconstruct"]
