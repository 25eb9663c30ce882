"""Drifting: TPC assignment, lifetime attenuation, diffusion widths and arrival times.

Arithmetic in float64; results are stored into the float32 / u4 fields of the segment table, like larnd-sim.
Times are measured to the virtual plane ``VIRTUAL_PLANE_CM`` in front of the anode.
"""
from __future__ import annotations

import numpy as np

from ..detector import TPC_TOLERANCE_CM, VIRTUAL_PLANE_CM, resolve_detector
from ..params import as_params
from .quench import truncate_u4

#: pixel_plane of a segment outside every TPC: -1 stored into u4.
NO_TPC = np.uint32(0xFFFFFFFF)


def tpc_index(x, y, z, tpc_borders, tolerance=TPC_TOLERANCE_CM):
    """Index of the first TPC whose box (widened by ``tolerance`` cm) contains the midpoint; -1 if none."""
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    out = np.full(x.shape, -1, np.int64)
    for i in range(len(tpc_borders) - 1, -1, -1):   # reverse so that the first matching TPC wins
        b = tpc_borders[i]
        zlo, zhi = min(b[2]), max(b[2])
        inside = ((b[0][0] - tolerance <= x) & (x <= b[0][1] + tolerance)
                  & (b[1][0] - tolerance <= y) & (y <= b[1][1] + tolerance)
                  & (zlo - tolerance <= z) & (z <= zhi + tolerance))
        out[inside] = i
    return out


def drift_distance(z, z_anode):
    """Distance (cm) from z to the virtual plane 0.5 cm before the anode (negative inside that 0.5 cm)."""
    return np.abs(np.asarray(z, np.float64) - z_anode) - VIRTUAL_PLANE_CM


def lifetime_factor(drift_time_us, lifetime_us):
    """Fraction of electrons surviving attachment: exp(-t / lifetime)."""
    return np.exp(-drift_time_us / lifetime_us)


def diffusion_sigma(drift_time_us, coefficient):
    """Diffusion width sqrt(2 D t) in cm (t in us from the anode itself, D in cm^2/us), larnd-sim's op order."""
    return np.sqrt(drift_time_us * 2 * coefficient)


def drift(segments: np.ndarray, detector=None, params=None) -> np.ndarray:
    """Copy of ``segments`` with pixel_plane, n_electrons (after lifetime, u4), long_diff / tran_diff (sigmas, cm)
    and t, t_start, t_end (arrival times at the virtual plane, us) filled in."""
    det = resolve_detector(detector)
    p = as_params(params, nominal=det.nominal)
    v = p.vdrift_value
    borders = det.tpc_borders
    out = segments.copy()
    plane = tpc_index(segments["x"], segments["y"], segments["z"], borders)
    inside = plane >= 0
    out["pixel_plane"] = np.where(inside, plane, -1).astype(np.int64).astype(np.uint32)
    if not np.any(inside):
        return out
    s = segments[inside]
    z_anode = borders[plane[inside], 2, 0]
    dist = drift_distance(s["z"], z_anode)
    d_minz = drift_distance(np.minimum(s["z_start"], s["z_end"]), z_anode)
    d_maxz = drift_distance(np.maximum(s["z_start"], s["z_end"]), z_anode)
    t_drift = dist / v
    n_e = s["n_electrons"].astype(np.float64) * lifetime_factor(t_drift, p["lifetime"])
    t_full = t_drift + VIRTUAL_PLANE_CM / v
    idx = np.nonzero(inside)[0]
    out["n_electrons"][idx] = truncate_u4(n_e, rows=idx, what="electron count after the lifetime")
    out["long_diff"][idx] = diffusion_sigma(t_full, p["long_diff"])
    out["tran_diff"][idx] = diffusion_sigma(t_full, p["tran_diff"])
    out["t"][idx] = s["t"].astype(np.float64) + t_drift
    out["t_start"][idx] = s["t_start"].astype(np.float64) + np.minimum(d_minz, d_maxz) / v
    out["t_end"][idx] = s["t_end"].astype(np.float64) + np.maximum(d_minz, d_maxz) / v
    return out
