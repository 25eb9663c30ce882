"""Track selection (the paper's cuts) and length-balanced mini-batches of whole tracks.

How the paper applies the cuts (arXiv 2309.04639; larnd-sim ``optimize/dataio.py`` ``TracksDataset`` with
``track_len_sel=2``, ``max_abs_costheta_sel=0.966``, ``min_abs_segz_sel=15``, ``track_z_bound=28``), and the
interpretation implemented here:

1. **Segment level, near the anode.** larnd-sim keeps the segments with ``|z| > 15`` cm (module0 anodes at
   |z| = 30.43 cm, so centres within ~15.4 cm of an anode), before any track-level cut. Here: a segment is kept
   when its midpoint lies in a TPC and within ``max_anode_distance_cm`` (15 cm) of *that TPC's* anode plane,
   which states the same cut without assuming module0's geometry.
2. **Track level, on the kept segments** (a track = one (eventID, trackID) pair). larnd-sim takes the first and
   the last kept segment of each track (in file order), and uses the vector from the start of the first to the
   end of the last as the track's direction and length. Same here:

   * |cos phi| < ``max_abs_cos_drift`` (0.966, i.e. at least 15 degrees away from the drift axis z), where phi is
     the angle between that vector and z;
   * its length > ``min_track_length_cm`` (2 cm).
3. **No segment within 2 cm of an anode** (track level). larnd-sim rejects a track when the midpoint of its first or
   last kept segment has |z| >= 28 cm (2.43 cm from a module0 anode). Here the cut is stated as written in the
   paper and made slightly stricter: the whole track is rejected when *any* of its segments (kept or not, inside a
   TPC) comes closer than ``min_anode_distance_cm`` (2 cm) to its TPC's anode at either endpoint.

A track that fails a track-level cut is removed entirely; a track that passes keeps only its near-anode
segments. :func:`selection_report` counts what each cut removed, so nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .detector import Detector, resolve_detector


@dataclass(frozen=True)
class SelectionCuts:
    """The paper's cuts; distances in cm. Set a value to ``None`` to switch that cut off."""

    max_abs_cos_drift: float | None = 0.966      # |cos| of track direction to the drift axis (z), track level
    max_anode_distance_cm: float | None = 15.0   # segment midpoint within this distance of its anode
    min_anode_distance_cm: float | None = 2.0    # no segment (endpoint) closer than this to an anode
    min_track_length_cm: float | None = 2.0      # straight length of the kept part of the track


def track_index(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, inverse): the distinct (eventID, trackID) pairs in order of first appearance, and for every segment
    the index of its track in ``keys``."""
    ev = np.asarray(segments["eventID"]).astype(np.int64)
    tr = np.asarray(segments["trackID"]).astype(np.int64)
    pairs = np.stack([ev, tr], axis=1)
    _, first, inverse = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    appearance = np.argsort(first, kind="stable")          # sorted-unique position -> appearance position
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(len(appearance))
    keys = pairs[np.sort(first)]
    return keys, rank[inverse]


def anode_distance_cm(x, y, z, detector: Detector) -> np.ndarray:
    """Distance (cm) along the drift axis from each point to the anode of the TPC that contains it; NaN outside."""
    tpc = detector.tpc_of(x, y, z)
    anode = detector.anode_z[np.clip(tpc, 0, None)]
    return np.where(tpc >= 0, np.abs(np.asarray(z, dtype=np.float64) - anode), np.nan)


def _segment_anode_distances(segments, detector):
    mid = anode_distance_cm(segments["x"], segments["y"], segments["z"], detector)
    tpc = detector.tpc_of(segments["x"], segments["y"], segments["z"])
    anode = detector.anode_z[np.clip(tpc, 0, None)]
    ends = np.minimum(np.abs(segments["z_start"].astype(np.float64) - anode),
                      np.abs(segments["z_end"].astype(np.float64) - anode))
    return mid, np.where(tpc >= 0, ends, np.nan)


@dataclass(frozen=True)
class SelectionReport:
    """Counts of what :func:`select_tracks` kept and removed."""

    n_tracks: int
    n_segments: int
    tracks_without_near_anode_segment: int
    tracks_too_close_to_anode: int
    tracks_too_short: int
    tracks_along_drift: int
    tracks_kept: int
    segments_kept: int
    kept_keys: np.ndarray = field(repr=False)


def selection_mask(segments: np.ndarray, cuts: SelectionCuts = SelectionCuts(), detector=None,
                   report: bool = False):
    """Boolean mask of the segments that survive ``cuts`` (see the module docstring for their meaning).

    With ``report=True`` returns ``(mask, SelectionReport)``.
    """
    det = resolve_detector(detector)
    n = len(segments)
    keys, inv = track_index(segments)
    n_tracks = len(keys)
    mid_dist, end_dist = _segment_anode_distances(segments, det)
    near = ~np.isnan(mid_dist)
    if cuts.max_anode_distance_cm is not None:
        near &= mid_dist < cuts.max_anode_distance_cm
    # per-track quantities from the first and last kept segment (row order)
    rows = np.arange(n)
    first = np.full(n_tracks, n, dtype=np.int64)
    last = np.full(n_tracks, -1, dtype=np.int64)
    np.minimum.at(first, inv[near], rows[near])
    np.maximum.at(last, inv[near], rows[near])
    has_near = last >= 0
    fi, la = np.where(has_near, first, 0), np.where(has_near, last, 0)
    vec = np.stack([segments[f"{a}_end"][la].astype(np.float64) - segments[f"{a}_start"][fi].astype(np.float64)
                    for a in "xyz"], axis=1)
    length = np.linalg.norm(vec, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_drift = np.where(length > 0, np.abs(vec[:, 2]) / np.where(length > 0, length, 1.0), 1.0)
    ok = has_near.copy()
    too_close = np.zeros(n_tracks, dtype=bool)
    if cuts.min_anode_distance_cm is not None:
        close_seg = ~np.isnan(end_dist) & (end_dist < cuts.min_anode_distance_cm)
        too_close = np.bincount(inv[close_seg], minlength=n_tracks) > 0
    too_short = np.zeros(n_tracks, dtype=bool)
    if cuts.min_track_length_cm is not None:
        too_short = length <= cuts.min_track_length_cm
    along = np.zeros(n_tracks, dtype=bool)
    if cuts.max_abs_cos_drift is not None:
        along = cos_drift >= cuts.max_abs_cos_drift
    ok &= ~too_close & ~too_short & ~along
    mask = near & ok[inv]
    if not report:
        return mask
    rep = SelectionReport(
        n_tracks=n_tracks, n_segments=n,
        tracks_without_near_anode_segment=int((~has_near).sum()),
        tracks_too_close_to_anode=int((has_near & too_close).sum()),
        tracks_too_short=int((has_near & ~too_close & too_short).sum()),
        tracks_along_drift=int((has_near & ~too_close & ~too_short & along).sum()),
        tracks_kept=int(ok.sum()), segments_kept=int(mask.sum()), kept_keys=keys[ok])
    return mask, rep


def select_tracks(segments: np.ndarray, cuts: SelectionCuts = SelectionCuts(), detector=None) -> np.ndarray:
    """The segments that survive ``cuts`` (a copy, original row order)."""
    return segments[selection_mask(segments, cuts, detector)]


def selection_report(segments: np.ndarray, cuts: SelectionCuts = SelectionCuts(), detector=None) -> SelectionReport:
    """What each cut removes (tracks are counted under the first cut they fail, in the order of the report)."""
    return selection_mask(segments, cuts, detector, report=True)[1]


# --------------------------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------------------------
class Batches:
    """A fixed partition of whole tracks into mini-batches of total segment length close to ``length_cm``.

    ``len(b)`` batches; ``b[k]`` is the segment array of batch k (rows in their original order); ``b.epoch_order(e)``
    a seeded permutation of the batch indices for epoch ``e`` (the partition itself never changes).
    """

    def __init__(self, segments: np.ndarray, groups: list[np.ndarray], lengths_cm: np.ndarray, seed: int,
                 keys: list[np.ndarray]):
        self._segments = segments
        self._groups = tuple(groups)
        self.lengths_cm = np.asarray(lengths_cm, dtype=np.float64)
        self.lengths_cm.flags.writeable = False
        self.seed = seed
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._groups)

    def __getitem__(self, k: int) -> np.ndarray:
        if not -len(self) <= k < len(self):
            raise IndexError(f"batch index {k} out of range for {len(self)} batches")
        return self._segments[self._groups[k]]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def rows(self, k: int) -> np.ndarray:
        """Row indices (into the segments given to :func:`make_batches`) of batch k."""
        return self._groups[k].copy()

    def track_keys(self, k: int) -> np.ndarray:
        """(n, 2) array of the (eventID, trackID) pairs in batch k, in packing order."""
        return self._keys[k].copy()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Seeded permutation of range(len(self)) for ``epoch`` (same seed and epoch -> same order)."""
        rng = np.random.default_rng([int(self.seed), int(epoch)])
        return rng.permutation(len(self))

    def __repr__(self) -> str:
        return (f"Batches({len(self)} batches, total {self.lengths_cm.sum():.1f} cm, "
                f"median {np.median(self.lengths_cm) if len(self) else 0:.1f} cm, seed={self.seed})")


def make_batches(segments: np.ndarray, length_cm: float = 100.0, seed: int = 0) -> Batches:
    """Pack whole tracks into mini-batches of total segment length (sum of ``dx``) close to ``length_cm``.

    Tracks ((eventID, trackID) pairs) are shuffled with ``seed`` and packed greedily in that order: a track goes
    into the open batch if the batch stays within ``length_cm``, otherwise the batch is closed and the track opens
    the next one. A track longer than ``length_cm`` therefore gets a batch of its own. Every track is in exactly
    one batch; nothing is dropped. The partition depends only on the segments, ``length_cm`` and ``seed``.
    """
    if not length_cm > 0:
        raise ValueError(f"length_cm must be positive, not {length_cm}")
    if len(segments) == 0:
        return Batches(segments, [], np.zeros(0), seed, [])
    keys, inv = track_index(segments)
    track_len = np.bincount(inv, weights=segments["dx"].astype(np.float64), minlength=len(keys))
    order = np.random.default_rng(seed).permutation(len(keys))
    assignment = np.empty(len(keys), dtype=np.int64)
    batch_lengths = []
    current, filled = -1, 0.0
    for trk in order:
        if current < 0 or filled + track_len[trk] > length_cm:
            current += 1
            batch_lengths.append(0.0)
            filled = 0.0
        assignment[trk] = current
        filled += track_len[trk]
        batch_lengths[current] = filled
    seg_batch = assignment[inv]
    by_batch = np.argsort(seg_batch, kind="stable")
    bounds = np.searchsorted(seg_batch[by_batch], np.arange(current + 2))
    groups = [by_batch[bounds[b]:bounds[b + 1]] for b in range(current + 1)]
    packed = assignment[order]                      # non-decreasing: batches are runs of the shuffled order
    run = np.searchsorted(packed, np.arange(current + 2))
    batch_keys = [keys[order[run[b]:run[b + 1]]] for b in range(current + 1)]
    return Batches(segments, groups, np.array(batch_lengths), seed, batch_keys)


__all__ = [
    "Batches",
    "SelectionCuts",
    "SelectionReport",
    "anode_distance_cm",
    "make_batches",
    "select_tracks",
    "selection_mask",
    "selection_report",
    "track_index",
]
