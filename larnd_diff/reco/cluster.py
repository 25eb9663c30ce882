"""Clustering of one event's points into candidate particles: scikit-learn's DBSCAN on positions in cm.

All three axes are in cm and need no further scaling: x and y are quantised by the 0.443 cm pixel pitch, and the
drift coordinate is finer (0.016 cm per 0.1 us clock tick), so a distance in cm means the same along every axis.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN


def cluster_labels(xyz: np.ndarray, *, eps_cm: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels (0, 1, ...; -1 = isolated point) of points (n, 3) in cm."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    return DBSCAN(eps=eps_cm, min_samples=min_samples).fit_predict(np.asarray(xyz, np.float64)).astype(np.int64)
