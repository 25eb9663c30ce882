"""Segments of a reconstructed track, filled like a generator / edep-sim segment table (``SEGMENT_DTYPE``).

The polyline is cut into steps of ``step_cm`` (the generator's default 0.5 cm), never across a node (a kink)
and never outside a TPC (the part of a track in the cathode gap deposits nothing, as in the generator).
Stopping tracks are stepped from the stop backwards, so that residual ranges fall on a regular grid, and every
step gets dE = T(r_hi) - T(r_lo) from the residual-range table of its hypothesis; other tracks get the assumed
mean loss per cm. Times are zero: hit times are measured from the event t0, which is the segments' time origin.
"""
from __future__ import annotations

import numpy as np

from larnd_diff.io import SEGMENT_DTYPE

from .polyline import cumulative_length, intervals_inside_boxes, point_at
from .stopping import RangeTable

#: Steps shorter than this (cm) are not written (the generator's smallest step is 0.005 cm).
_MIN_STEP_CM = 1e-3


def step_boundaries(intervals: list[tuple], node_s: np.ndarray, length: float, step_cm: float,
                    from_end: bool) -> list[np.ndarray]:
    """Arc-length boundaries of the steps inside each interval (regular from the start, or from the end)."""
    out = []
    for a, b in intervals:
        if from_end:
            grid = length - step_cm * np.arange(np.ceil((length - a) / step_cm) + 1)
        else:
            grid = step_cm * np.arange(np.ceil(b / step_cm) + 1)
        inner = np.r_[grid, node_s]
        inner = inner[(inner > a) & (inner < b)]
        out.append(np.unique(np.r_[a, inner, b]))
    return out


def track_segments(nodes: np.ndarray, *, event_id: int, track_id: int, pdg: int, boxes: np.ndarray,
                   step_cm: float, table: RangeTable | None = None, dedx_mev_per_cm: float | None = None
                   ) -> np.ndarray:
    """Segments (simulation frame) of a polyline travelled from its first node to its last.

    With ``table`` the track stops at its last node (dE from the residual range); otherwise every step loses
    ``dedx_mev_per_cm``.
    """
    if (table is None) == (dedx_mev_per_cm is None):
        raise ValueError("give either a range table (stopping track) or a constant dE/dx, not both")
    node_s = cumulative_length(nodes)
    length = float(node_s[-1])
    bounds = step_boundaries(intervals_inside_boxes(nodes, boxes), node_s, length, step_cm,
                             from_end=table is not None)
    s0 = np.concatenate([b[:-1] for b in bounds]) if bounds else np.zeros(0)
    s1 = np.concatenate([b[1:] for b in bounds]) if bounds else np.zeros(0)
    keep = (s1 - s0) >= _MIN_STEP_CM
    s0, s1 = s0[keep], s1[keep]
    start, end = point_at(nodes, s0), point_at(nodes, s1)
    dx = np.linalg.norm(end - start, axis=1)
    if table is not None:
        de = table.deposited_between(length - s1, length - s0)
    else:
        de = dedx_mev_per_cm * dx
    out = np.zeros(len(s0), SEGMENT_DTYPE)
    out["eventID"], out["trackID"], out["pdgId"] = event_id, track_id, pdg
    for k, axis in enumerate("xyz"):
        out[f"{axis}_start"], out[f"{axis}_end"] = start[:, k], end[:, k]
        out[axis] = 0.5 * (start[:, k] + end[:, k])
    out["dx"], out["dE"] = dx, de
    out["dEdx"] = np.where(dx > 0, de / np.where(dx > 0, dx, 1.0), 0.0)
    return out
