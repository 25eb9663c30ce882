"""Polylines: arc length, projection of points onto them, and pieces of them inside boxes.

A track is a polyline of nodes (m, 3) in cm. These few geometric helpers are written by hand because they are
specific to the job (clamped projection onto consecutive edges, arc-length bookkeeping) and short.
"""
from __future__ import annotations

import numpy as np


def edge_lengths(nodes: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.diff(nodes, axis=0), axis=1)


def cumulative_length(nodes: np.ndarray) -> np.ndarray:
    """Arc length (cm) at each node, 0 at the first."""
    return np.r_[0.0, np.cumsum(edge_lengths(nodes))]


def polyline_length(nodes: np.ndarray) -> float:
    return float(edge_lengths(nodes).sum())


def project(points: np.ndarray, nodes: np.ndarray):
    """(arc length, distance) of each point's nearest point on the polyline (clamped to the polyline)."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(nodes) == 1:
        return np.zeros(len(points)), np.linalg.norm(points - nodes[0], axis=1)
    a, b = nodes[:-1], nodes[1:]
    ab = b - a
    length2 = np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-24)
    rel = points[:, None, :] - a[None, :, :]                                   # (n, m-1, 3)
    t = np.clip(np.einsum("nmk,mk->nm", rel, ab) / length2, 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    dist = np.linalg.norm(points[:, None, :] - nearest, axis=2)
    edge = np.argmin(dist, axis=1)
    rows = np.arange(len(points))
    s = cumulative_length(nodes)[edge] + t[rows, edge] * np.sqrt(length2[edge])
    return s, dist[rows, edge]


def point_at(nodes: np.ndarray, s) -> np.ndarray:
    """Points (n, 3) at arc lengths ``s`` along the polyline (clamped to its ends)."""
    cum = cumulative_length(nodes)
    s = np.clip(np.atleast_1d(np.asarray(s, np.float64)), 0.0, cum[-1])
    return np.column_stack([np.interp(s, cum, nodes[:, k]) for k in range(3)])


def reversed_polyline(nodes: np.ndarray) -> np.ndarray:
    return nodes[::-1].copy()


def intervals_inside_boxes(nodes: np.ndarray, boxes: np.ndarray, shrink_cm: float = 1e-4) -> list[tuple]:
    """Arc-length intervals (s_in, s_out) of the polyline inside any of the boxes (k, 3, 2), merged, in order.

    The slab method on each edge; intervals are shrunk by ``shrink_cm`` so that their ends lie strictly inside.
    """
    cum = cumulative_length(nodes)
    pieces = []
    for i in range(len(nodes) - 1):
        a, d = nodes[i], nodes[i + 1] - nodes[i]
        length = float(np.linalg.norm(d))
        if length <= 0:
            continue
        for box in boxes:
            lo, hi = 0.0, 1.0
            for k in range(3):
                if abs(d[k]) < 1e-12:
                    if not box[k, 0] <= a[k] <= box[k, 1]:
                        lo, hi = 1.0, 0.0
                        break
                    continue
                t1, t2 = (box[k, 0] - a[k]) / d[k], (box[k, 1] - a[k]) / d[k]
                lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
            if hi > lo:
                pieces.append((cum[i] + lo * length, cum[i] + hi * length))
    pieces.sort()
    merged: list[list[float]] = []
    for s0, s1 in pieces:
        if merged and s0 <= merged[-1][1] + 1e-9:
            merged[-1][1] = max(merged[-1][1], s1)
        else:
            merged.append([s0, s1])
    return [(s0 + shrink_cm, s1 - shrink_cm) for s0, s1 in merged if s1 - s0 > 2 * shrink_cm]
