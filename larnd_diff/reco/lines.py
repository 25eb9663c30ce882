"""Robust straight-line pieces inside a cluster: scikit-learn's RANSAC with a 3-D line model, applied in turn.

scikit-learn's ``RANSACRegressor`` does the consensus search (random minimal samples, inlier counting, adaptive
number of trials, final refit on the inliers). A 3-D line is not a regression y = f(X), so the model below is
the one thing written here: :class:`Line3D` fits the total-least-squares line (principal axis of the points) and
"predicts" each point's distance to it; with targets of zero and the absolute-error loss, RANSAC's residual is
then that distance in cm. Sequential extraction (take the best line's longest contiguous run of inliers, remove
it, repeat) splits a cluster into the straight pieces of its tracks, including tracks that meet at a vertex.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import RANSACRegressor

#: Smallest separation (cm) of RANSAC's two-point samples: shorter pairs give ill-defined directions.
_MIN_PAIR_SEPARATION_CM = 0.5


def principal_line(points: np.ndarray, weights: np.ndarray | None = None):
    """(centroid, unit direction) of the total-least-squares line through points (n, 3)."""
    w = np.ones(len(points)) if weights is None else np.asarray(weights, np.float64)
    centroid = np.average(points, axis=0, weights=w)
    _, _, vt = np.linalg.svd((points - centroid) * np.sqrt(w)[:, None], full_matrices=False)
    direction = vt[0]
    # a fixed sign convention keeps results reproducible: first non-zero component positive
    k = int(np.argmax(np.abs(direction) > 1e-12))
    return centroid, direction * np.sign(direction[k])


def distance_to_line(points: np.ndarray, centroid: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Perpendicular distances (cm) of points (n, 3) to the line through ``centroid`` along unit ``direction``."""
    rel = points - centroid
    return np.linalg.norm(rel - np.outer(rel @ direction, direction), axis=1)


class Line3D(RegressorMixin, BaseEstimator):
    """A 3-D line as a scikit-learn regressor: ``predict`` returns distances to the line (targets are zeros)."""

    def fit(self, X, y=None):
        self.centroid_, self.direction_ = principal_line(np.asarray(X, np.float64))
        return self

    def predict(self, X):
        return distance_to_line(np.asarray(X, np.float64), self.centroid_, self.direction_)

    def score(self, X, y=None):
        return -float(np.mean(self.predict(X)))


def _pair_is_spread(X, y) -> bool:
    return bool(np.linalg.norm(X[-1] - X[0]) >= _MIN_PAIR_SEPARATION_CM)


def ransac_inliers(points: np.ndarray, *, residual_cm: float, trials: int, seed: int) -> np.ndarray | None:
    """Inlier mask of the best line through ``points`` (RANSAC), or None when no line is found."""
    if len(points) < 2:
        return None
    model = RANSACRegressor(estimator=Line3D(), min_samples=2, residual_threshold=residual_cm,
                            loss="absolute_error", max_trials=trials, is_data_valid=_pair_is_spread,
                            random_state=seed)
    try:
        model.fit(points, np.zeros(len(points)))
    except ValueError:          # no valid consensus set (e.g. every pair closer than the minimal separation)
        return None
    return np.asarray(model.inlier_mask_, bool)


def longest_run(positions: np.ndarray, max_gap: float) -> np.ndarray:
    """Mask of the largest group of ``positions`` (1-D) whose consecutive sorted values differ by <= max_gap."""
    order = np.argsort(positions)
    cut = np.flatnonzero(np.diff(positions[order]) > max_gap) + 1
    groups = np.split(order, cut)
    best = max(groups, key=len)
    mask = np.zeros(len(positions), bool)
    mask[best] = True
    return mask


@dataclass(frozen=True)
class Piece:
    """A straight piece of track: its points (indices into the cluster's points) and its fitted extent."""

    index: np.ndarray
    centroid: np.ndarray
    direction: np.ndarray
    s_lo: float
    s_hi: float

    @property
    def start(self) -> np.ndarray:
        return self.centroid + self.s_lo * self.direction

    @property
    def end(self) -> np.ndarray:
        return self.centroid + self.s_hi * self.direction

    @property
    def length(self) -> float:
        return self.s_hi - self.s_lo


def _piece_from(points: np.ndarray, candidates: np.ndarray, inliers: np.ndarray, cfg) -> Piece | None:
    """The longest contiguous run of RANSAC inliers, refitted, with the nearby points it explains."""
    sub = candidates[inliers]
    c, d = principal_line(points[sub])
    run = sub[longest_run((points[sub] - c) @ d, cfg.line_max_gap_cm)]
    if len(run) < 2:
        return None
    c, d = principal_line(points[run])
    s_run = (points[run] - c) @ d
    s_all = (points[candidates] - c) @ d
    near = distance_to_line(points[candidates], c, d) < cfg.line_residual_cm
    within = (s_all >= s_run.min() - cfg.line_residual_cm) & (s_all <= s_run.max() + cfg.line_residual_cm)
    members = candidates[near & within]
    s = (points[members] - c) @ d
    return Piece(index=members, centroid=c, direction=d, s_lo=float(s.min()), s_hi=float(s.max()))


def extract_pieces(points: np.ndarray, cfg) -> list[Piece]:
    """Straight pieces of one cluster's points (n, 3), best first, each point in at most one piece."""
    remaining = np.arange(len(points))
    pieces: list[Piece] = []
    while len(remaining) >= cfg.min_piece_points and len(pieces) < cfg.max_pieces:
        inliers = ransac_inliers(points[remaining], residual_cm=cfg.line_residual_cm, trials=cfg.ransac_trials,
                                 seed=cfg.seed + len(pieces))
        if inliers is None or inliers.sum() < cfg.min_piece_points:
            break
        piece = _piece_from(points, remaining, inliers, cfg)
        if piece is None or len(piece.index) < cfg.min_piece_points or piece.length < cfg.min_piece_length_cm:
            break
        pieces.append(piece)
        remaining = np.setdiff1d(remaining, piece.index, assume_unique=True)
    return pieces
