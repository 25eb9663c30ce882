"""Tracks from straight pieces: pieces joined end to end into polylines (kinks allowed, vertices not), ends
extended over the points left near them, and containment of the ends.

Why by hand: the joining rule is the physics of what a track may look like (a small change of direction where
a particle scatters, a large one where two particles meet), and the end extension recovers the last
centimetre of a stopping particle, where it scatters most and deposits the most; both are a few lines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lines import Piece
from .polyline import polyline_length


@dataclass(frozen=True)
class TrackCandidate:
    """A polyline (nodes (m, 3), cm) and the points it owns (indices into the cluster's points)."""

    nodes: np.ndarray
    index: np.ndarray

    @property
    def length(self) -> float:
        return polyline_length(self.nodes)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _end(piece: Piece, side: int):
    """(position, outgoing unit direction) of a piece's low (0) or high (1) end."""
    return (piece.end, piece.direction) if side else (piece.start, -piece.direction)


def kink_angle_deg(out_a: np.ndarray, out_b: np.ndarray) -> float:
    """Change of direction when leaving one piece along ``out_a`` and entering the next against ``out_b``."""
    return float(np.degrees(np.arccos(np.clip(np.dot(out_a, -out_b), -1.0, 1.0))))


def _joint_cost(pa: Piece, sa: int, pb: Piece, sb: int, cfg):
    """Cost of joining end ``sa`` of ``pa`` to end ``sb`` of ``pb``, or None when the rule forbids it."""
    ea, ua = _end(pa, sa)
    eb, ub = _end(pb, sb)
    gap = eb - ea
    distance = float(np.linalg.norm(gap))
    if distance > cfg.join_distance_cm:
        return None
    kink = kink_angle_deg(ua, ub)
    if kink > cfg.max_kink_deg:
        return None
    # a long gap must point along the track on both sides, not sideways to a parallel neighbour
    if distance > cfg.line_residual_cm:
        g = gap / distance
        if min(np.dot(g, ua), -np.dot(g, ub)) < np.cos(np.radians(cfg.max_kink_deg)):
            return None
    return kink + 10.0 * distance


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def chain_pieces(pieces: list[Piece], cfg) -> list[list[tuple[int, bool]]]:
    """Chains of pieces (index, reversed?) in travel order; cheapest joints first, each end used once."""
    joints = []
    for a in range(len(pieces)):
        for b in range(a + 1, len(pieces)):
            for sa in (0, 1):
                for sb in (0, 1):
                    cost = _joint_cost(pieces[a], sa, pieces[b], sb, cfg)
                    if cost is not None:
                        joints.append((cost, a, sa, b, sb))
    joints.sort()
    used: set[tuple[int, int]] = set()
    link: dict[tuple[int, int], tuple[int, int]] = {}
    parent = list(range(len(pieces)))
    for _, a, sa, b, sb in joints:
        if (a, sa) in used or (b, sb) in used or _find(parent, a) == _find(parent, b):
            continue
        used |= {(a, sa), (b, sb)}
        link[(a, sa)], link[(b, sb)] = (b, sb), (a, sa)
        parent[_find(parent, a)] = _find(parent, b)
    chains, seen = [], set()
    for first in range(len(pieces)):
        if first in seen or ((first, 0) in link and (first, 1) in link):
            continue   # start only at a piece with a free end
        chain, piece, entry = [], first, 0 if (first, 0) not in link else 1
        while piece is not None and piece not in seen:
            seen.add(piece)
            chain.append((piece, entry == 1))   # entering by the high end = travelling backwards
            exit_end = (piece, 1 - entry)
            piece, entry = link.get(exit_end, (None, None))
        chains.append(chain)
    return chains


def chain_nodes(pieces: list[Piece], chain: list[tuple[int, bool]]) -> np.ndarray:
    """Polyline nodes of a chain: its first and last ends and the midpoints of its joints."""
    ends = [(pieces[i].end, pieces[i].start) if rev else (pieces[i].start, pieces[i].end) for i, rev in chain]
    nodes = [ends[0][0]]
    for (_, out_end), (in_start, _) in zip(ends[:-1], ends[1:]):
        nodes.append(0.5 * (out_end + in_start))
    nodes.append(ends[-1][1])
    return np.asarray(nodes)


def extend_end(nodes: np.ndarray, points: np.ndarray, free: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Extend the polyline's last node over free points ahead of it (cone of 45 deg, steps of the radius).

    Returns the new nodes and the indices of the points taken.
    """
    taken: list[np.ndarray] = []
    free = free.copy()
    end = nodes[-1]
    direction = _unit(nodes[-1] - nodes[-2]) if len(nodes) > 1 else np.zeros(3)
    travelled = 0.0
    new_nodes = [n for n in nodes]
    while travelled < cfg.extend_max_cm and free.any():
        rel = points - end
        dist = np.linalg.norm(rel, axis=1)
        ahead = rel @ direction
        near = free & (dist < cfg.extend_radius_cm) & (ahead > 0.1) & (ahead >= np.cos(np.radians(45)) * dist)
        if not near.any():
            break
        idx = np.flatnonzero(near)
        far = idx[np.argmax(ahead[idx])]
        step = points[far] - end
        travelled += float(np.linalg.norm(step))
        direction = _unit(direction + _unit(step))
        end = points[far]
        new_nodes.append(end.copy())
        free[idx] = False
        taken.append(idx)
    return np.asarray(new_nodes), (np.concatenate(taken) if taken else np.zeros(0, np.int64))


def tracks_from_pieces(points: np.ndarray, pieces: list[Piece], cfg) -> list[TrackCandidate]:
    """Join pieces into polylines and extend both ends of each; longest first."""
    free = np.ones(len(points), bool)
    for p in pieces:
        free[p.index] = False
    out = []
    chains = sorted(chain_pieces(pieces, cfg), key=lambda ch: -sum(pieces[i].length for i, _ in ch))
    for chain in chains:
        nodes = chain_nodes(pieces, chain)
        index = np.concatenate([pieces[i].index for i, _ in chain])
        for _ in range(2):                          # the far end, then (reversed) the near end
            nodes, extra = extend_end(nodes, points, free, cfg)
            free[extra] = False
            index = np.r_[index, extra]
            nodes = nodes[::-1].copy()
        out.append(TrackCandidate(nodes=nodes, index=np.sort(index)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# containment
# ----------------------------------------------------------------------------------------------------------------
def active_volume(detector) -> np.ndarray:
    """(3, 2) bounds (cm) of the box around every TPC: particles cross the thin cathode gap between the TPCs."""
    boxes = np.sort(detector.tpc_borders, axis=2)
    return np.column_stack([boxes[:, :, 0].min(axis=0), boxes[:, :, 1].max(axis=0)])


def distance_inside(point: np.ndarray, volume: np.ndarray) -> float:
    """Distance (cm) from a point to the nearest face of the box, negative outside."""
    return float(np.min(np.r_[point - volume[:, 0], volume[:, 1] - point]))


def is_contained(point: np.ndarray, volume: np.ndarray, margin_cm: float) -> bool:
    return distance_inside(point, volume) >= margin_cm
