"""Simulation truth for evaluating the reconstruction (never used by it): true tracks, sample labels, matching.

A *true track* is one (eventID, trackID) of the simulated segments table, with its segments in file order (the
stepping order of edep-sim and of the generator). A hit sample belongs to the true track that deposited the most
energy among the segments ``Hits.backtrack`` lists for it (up to five). larnd-sim's backtracking looks only at
the first five segments near each pixel, which for a track of many short steps are often not the ones that made
the sample: about one sample in ten has none listed. Those samples get the true track whose segments pass
nearest to the sample's reconstructed point (within ``max_distance_cm``). A true track *stops* (for evaluation)
when its last point lies ``margin_cm`` inside the active volume and its last centimetre shows a Bragg rise:
a mean dE/dx at least ``bragg_ratio`` times the track's median (a hadron that ends in an inelastic interaction has
none).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from larnd_diff.hits import Hits

from .tracks import active_volume, is_contained

TRACK_PDGS = (13, 211, 321, 2212)
#: True classes of the confusion table.
CLASSES = ("mu", "pi", "p", "e/gamma", "other")


def true_class(pdg: int) -> str:
    a = abs(int(pdg))
    return {13: "mu", 211: "pi", 2212: "p", 11: "e/gamma", 22: "e/gamma"}.get(a, "other")


@dataclass(frozen=True)
class TrueTrack:
    key: int
    event_id: int
    track_id: int
    pdg: int
    rows: np.ndarray          # rows of its segments in the segments table, in stepping order
    start: np.ndarray
    end: np.ndarray
    length_cm: float
    stops: bool

    @property
    def cls(self) -> str:
        return true_class(self.pdg)


def _bragg_end(seg: np.ndarray, bragg_ratio: float) -> bool:
    dx, de = seg["dx"].astype(np.float64), seg["dE"].astype(np.float64)
    if dx.sum() < 2.0:
        return False
    r = np.cumsum(dx[::-1])[::-1]            # residual range at each segment's start
    last = r - dx < 1.0
    dedx = de / np.maximum(dx, 1e-6)
    typical = np.median(dedx[~last]) if np.any(~last) else np.median(dedx)
    return de[last].sum() / max(dx[last].sum(), 1e-6) >= bragg_ratio * typical


def true_tracks(segments: np.ndarray, detector, *, margin_cm: float = 1.0, bragg_ratio: float = 1.8):
    """List of :class:`TrueTrack` (index = key) and an array mapping each segment row to its key."""
    key_of_row = np.full(len(segments), -1, np.int64)
    ev, tid = segments["eventID"].astype(np.int64), segments["trackID"].astype(np.int64)
    order = np.lexsort((np.arange(len(segments)), tid, ev))
    cut = np.flatnonzero((np.diff(ev[order]) != 0) | (np.diff(tid[order]) != 0)) + 1
    volume = active_volume(detector)
    out = []
    for key, rows in enumerate(np.split(order, cut)):
        if len(rows) == 0:
            continue
        seg = segments[rows]
        start = np.array([seg["x_start"][0], seg["y_start"][0], seg["z_start"][0]], np.float64)
        end = np.array([seg["x_end"][-1], seg["y_end"][-1], seg["z_end"][-1]], np.float64)
        stops = is_contained(end, volume, margin_cm) and _bragg_end(seg, bragg_ratio)
        out.append(TrueTrack(key, int(ev[rows[0]]), int(tid[rows[0]]), int(seg["pdgId"][0]), rows, start, end,
                             float(seg["dx"].sum()), bool(stops)))
        key_of_row[rows] = key
    return out, key_of_row


def sample_truth(hits: Hits, segments: np.ndarray, key_of_row: np.ndarray) -> np.ndarray:
    """(n_rows, K) key of the true track of each sample from the backtracking (-1: empty slot or none listed)."""
    bt = np.asarray(hits.numpy().backtrack)
    if bt is None:
        raise ValueError("the hits carry no backtrack (truth) information")
    valid = bt >= 0
    safe = np.where(valid, bt, 0)
    keys = np.where(valid, key_of_row[safe], -1)
    energy = np.where(valid, segments["dE"][safe].astype(np.float64), 0.0)
    out = np.full(bt.shape[:2], -1, np.int64)
    best_e = np.full(out.shape, -np.inf)
    # the key with the largest summed dE among the (at most five) listed segments
    for j in range(bt.shape[2]):
        total = np.sum(np.where(keys == keys[..., j:j + 1], energy, 0.0), axis=2)
        better = valid[..., j] & (total > best_e)
        out = np.where(better, keys[..., j], out)
        best_e = np.where(better, total, best_e)
    return out


@dataclass(frozen=True)
class Match:
    """Per reconstructed track: its majority true track (-1 none), hit purity, and that true track's completeness."""

    true_key: np.ndarray
    purity: np.ndarray
    completeness: np.ndarray
    true_samples: np.ndarray     # samples of each true track among all hits


def match_tracks(point_track: np.ndarray, point_truth: np.ndarray, n_reco: int, n_true: int) -> Match:
    """Majority matching of reconstructed tracks (labels per point) to true tracks (keys per point)."""
    true_samples = np.bincount(point_truth[point_truth >= 0], minlength=n_true)
    key = np.full(n_reco, -1, np.int64)
    purity = np.zeros(n_reco)
    completeness = np.zeros(n_reco)
    for t in range(n_reco):
        labels = point_truth[point_track == t]
        if len(labels) == 0:
            continue
        known = labels[labels >= 0]
        if len(known) == 0:
            continue
        counts = np.bincount(known)
        k = int(np.argmax(counts))
        key[t] = k
        purity[t] = counts[k] / len(labels)
        completeness[t] = counts[k] / max(true_samples[k], 1)
    return Match(key, purity, completeness, true_samples)


def residual_range_on_track(points: np.ndarray, true: TrueTrack, segments: np.ndarray) -> np.ndarray:
    """True residual range (cm) at the points' nearest locations on a true track's segments."""
    from .polyline import project

    seg = segments[true.rows]
    nodes = np.vstack([np.column_stack([seg["x_start"], seg["y_start"], seg["z_start"]])[:1],
                       np.column_stack([seg["x_end"], seg["y_end"], seg["z_end"]])]).astype(np.float64)
    s, _ = project(points, nodes)
    total = float(np.sum(np.linalg.norm(np.diff(nodes, axis=0), axis=1)))
    return total - s


def true_dedx_between(true: TrueTrack, segments: np.ndarray, r_lo, r_hi) -> np.ndarray:
    """True mean dE/dx (MeV/cm) between residual ranges r_lo < r_hi, each true step's dE spread over its length."""
    seg = segments[true.rows]
    dx = np.linalg.norm(np.column_stack([seg["x_end"] - seg["x_start"], seg["y_end"] - seg["y_start"],
                                         seg["z_end"] - seg["z_start"]]).astype(np.float64), axis=1)
    r_end = np.cumsum(dx[::-1])[::-1] - dx          # residual range at each step's end
    r_start = r_end + dx
    density = seg["dE"].astype(np.float64) / np.maximum(dx, 1e-9)
    r_lo, r_hi = np.atleast_1d(r_lo), np.atleast_1d(r_hi)
    overlap = np.clip(np.minimum(r_hi[:, None], r_start[None]) - np.maximum(r_lo[:, None], r_end[None]), 0, None)
    return (overlap * density[None]).sum(axis=1) / np.maximum(r_hi - r_lo, 1e-9)


def _segment_samples(segments: np.ndarray, spacing_cm: float):
    """Points every ``spacing_cm`` along each segment (simulation frame) and the row each comes from."""
    a = np.column_stack([segments["x_start"], segments["y_start"], segments["z_start"]]).astype(np.float64)
    b = np.column_stack([segments["x_end"], segments["y_end"], segments["z_end"]]).astype(np.float64)
    n = np.maximum(np.ceil(np.linalg.norm(b - a, axis=1) / spacing_cm).astype(np.int64), 1) + 1
    row = np.repeat(np.arange(len(segments)), n)
    f = (np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n - 1, n)
    return a[row] + f[:, None] * (b - a)[row], row


def nearest_true_track(xyz: np.ndarray, point_event: np.ndarray, segments: np.ndarray, key_of_row: np.ndarray,
                       event_of: dict, *, max_distance_cm: float = 1.5, spacing_cm: float = 0.2) -> np.ndarray:
    """Key of the true track passing nearest to each point (its event's segments only), -1 beyond the distance.

    ``event_of`` maps the points' event ids to the segments' eventID.
    """
    from scipy.spatial import cKDTree

    out = np.full(len(xyz), -1, np.int64)
    for event in np.unique(point_event):
        rows = np.flatnonzero(segments["eventID"] == event_of.get(int(event), -1))
        sel = np.flatnonzero(point_event == event)
        if len(rows) == 0 or len(sel) == 0:
            continue
        samples, which = _segment_samples(segments[rows], spacing_cm)
        dist, idx = cKDTree(samples).query(xyz[sel], distance_upper_bound=max_distance_cm)
        ok = np.isfinite(dist)
        out[sel[ok]] = key_of_row[rows[which[idx[ok]]]]
    return out


def point_truth(report, hits: Hits, segments: np.ndarray, key_of_row: np.ndarray, event_of: dict,
                **kw) -> tuple[np.ndarray, np.ndarray]:
    """(key per reconstructed point, True where it came from the backtracking rather than the geometry)."""
    backtracked = sample_truth(hits, segments, key_of_row)[report.points.row, report.points.slot]
    nearest = nearest_true_track(report.points.xyz, report.points.event_id, segments, key_of_row, event_of, **kw)
    return np.where(backtracked >= 0, backtracked, nearest), backtracked >= 0


def compare_dedx(reco_segments: np.ndarray, true: TrueTrack, segments: np.ndarray) -> dict:
    """Per reconstructed segment: reco dE/dx, the true dE/dx over the same stretch of the true track, and the true
    residual range of its midpoint (arrays). The stretch is the segment's length centred on the true residual
    range of its midpoint, so endpoint errors and a wrong hypothesis show up as they would in a fit."""
    mid = np.column_stack([reco_segments["x"], reco_segments["y"], reco_segments["z"]]).astype(np.float64)
    r = residual_range_on_track(mid, true, segments)
    dx = reco_segments["dx"].astype(np.float64)
    lo = np.clip(r - dx / 2, 0.0, None)
    truth = true_dedx_between(true, segments, lo, lo + dx)
    return {"reco": reco_segments["dEdx"].astype(np.float64), "true": truth, "residual_range": r}
