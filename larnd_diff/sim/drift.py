"""Drift of the ionisation electrons to the anode: TPC assignment, lifetime, diffusion, arrival times.

The formulas of the reference, :mod:`larnd_diff.reference.drift`, on tensors.

Frame: after the edep-sim x<->z swap, z is the drift axis. Lengths in cm, times in us, diffusion coefficients in
cm^2/us, vdrift in cm/us (``params.vdrift_value``: the ``vdrift`` entry, or eField x mobility when linked).
Times and distances are measured to a virtual plane 0.5 cm in front of the anode (where the induced-current
model takes over); the diffusion widths use the full distance to the anode.
"""
from __future__ import annotations

from typing import NamedTuple

import eagerpy as ep

from larnd_diff import ops
from larnd_diff.detector import TPC_TOLERANCE_CM, VIRTUAL_PLANE_CM
from larnd_diff.sim.config import as_relaxation
from larnd_diff.sim.quench import electron_count


class Drifted(NamedTuple):
    """Per-segment result of :func:`drift` (EagerPy tensors of shape (n_seg,)).

    plane        index of the TPC holding the segment midpoint, -1 if none (integer tensor)
    in_tpc       boolean mask, plane >= 0
    n_electrons  electrons reaching the anode (0 outside every TPC)
    sigma_L      longitudinal diffusion width in cm (finite placeholder outside every TPC)
    sigma_T      transverse diffusion width in cm (finite placeholder outside every TPC)
    t            arrival time of the midpoint at the 0.5 cm plane, us (input time outside every TPC)
    t_start      earliest arrival of the segment's two ends, us (input time outside every TPC)
    t_end        latest arrival of the segment's two ends, us (input time outside every TPC)
    """

    plane: ep.Tensor
    in_tpc: ep.Tensor
    n_electrons: ep.Tensor
    sigma_L: ep.Tensor
    sigma_T: ep.Tensor
    t: ep.Tensor
    t_start: ep.Tensor
    t_end: ep.Tensor


def assign_tpc(x, y, z, detector):
    """Index of the first TPC whose box, widened by 0.02 cm, contains (x, y, z); -1 if none (int64)."""
    plane = ops.cast(ep.full_like(x, -1.0), "int64")
    for i, ((x_lo, x_hi), (y_lo, y_hi), z_pair) in enumerate(detector.tpc_borders_t):   # Python floats
        tol = TPC_TOLERANCE_CM
        inside = _all_of(x >= x_lo - tol, x <= x_hi + tol, y >= y_lo - tol, y <= y_hi + tol,
                         z >= min(z_pair) - tol, z <= max(z_pair) + tol)
        first = ep.logical_and(plane < 0, inside)
        plane = ep.where(first, ops.cast(ep.full_like(x, float(i)), "int64"), plane)
    return plane


def _all_of(*masks):
    out = masks[0]
    for m in masks[1:]:
        out = ep.logical_and(out, m)
    return out


def anode_z(plane, like, detector):
    """z (cm) of the anode of each segment's TPC; TPC 0's anode for segments outside every TPC."""
    anodes = [float(z_pair[0]) for _, _, z_pair in detector.tpc_borders_t]
    zero = ep.zeros_like(like)
    z_a = zero + anodes[0]           # not full_like: TF fills in float32 whatever the template's dtype
    for i, za in enumerate(anodes[1:], start=1):
        z_a = ep.where(plane == i, zero + za, z_a)
    return z_a


def lifetime_attenuation(drift_time, lifetime):
    """Fraction of electrons surviving attachment after ``drift_time`` us for an electron lifetime in us."""
    return ep.exp(-drift_time / lifetime)


def diffusion_width(coefficient, drift_time):
    """Diffusion sigma sqrt(2 D t) in cm for D in cm^2/us and t in us."""
    return ep.sqrt(2 * coefficient * drift_time)


def drift(x, y, z, z_start, z_end, t, t_start, t_end, n_electrons, detector, params, relaxation="hard"):
    """Drift segments (midpoint x, y, z; drift-axis endpoints z_start, z_end; times) to the anode.

    * TPC: first TPC whose box widened by 0.02 cm contains the midpoint.
    * drift distance d = |z - z_anode| - 0.5 cm (to the virtual plane; negative within 0.5 cm of the anode, as
      in larnd-sim), drift time d / vdrift.
    * n_electrons x exp(-t_drift / lifetime); ``relaxation.charge`` "truncate" floors the result like larnd-sim's
      integer store, "continuous" keeps it real.
    * sigma_L, sigma_T = sqrt(2 D t_full) with t_full = |z - z_anode| / vdrift (full distance to the anode).
    * t += t_drift; t_start/t_end += the smaller/larger of the two ends' distances to the plane over vdrift.
    Segments outside every TPC get plane -1, ``in_tpc`` False, n_electrons 0, their input times and finite
    (meaningless) sigmas: never NaN, so a downstream mask is enough.
    """
    relaxation = as_relaxation(relaxation)
    # a Params knows whether vdrift follows eField; a plain mapping gives it directly
    vdrift = params.vdrift_value if hasattr(params, "vdrift_value") else params["vdrift"]
    plane = assign_tpc(x, y, z, detector)
    in_tpc = plane >= 0
    z_a = anode_z(plane, z, detector)

    drift_distance = ep.abs(z - z_a) - VIRTUAL_PLANE_CM
    end_lo = ep.abs(ep.minimum(z_start, z_end) - z_a) - VIRTUAL_PLANE_CM
    end_hi = ep.abs(ep.maximum(z_start, z_end) - z_a) - VIRTUAL_PLANE_CM
    drift_time = drift_distance / vdrift

    n_drifted = electron_count(n_electrons * lifetime_attenuation(drift_time, params["lifetime"]), relaxation)
    full_time = drift_time + VIRTUAL_PLANE_CM / vdrift
    sigma_L = diffusion_width(params["long_diff"], full_time)
    sigma_T = diffusion_width(params["tran_diff"], full_time)

    zero = ep.zeros_like(drift_time)
    return Drifted(
        plane=plane,
        in_tpc=in_tpc,
        n_electrons=ep.where(in_tpc, n_drifted, zero),
        sigma_L=sigma_L,
        sigma_T=sigma_T,
        t=t + ep.where(in_tpc, drift_time, zero),
        t_start=t_start + ep.where(in_tpc, ep.minimum(end_lo, end_hi) / vdrift, zero),
        t_end=t_end + ep.where(in_tpc, ep.maximum(end_lo, end_hi) / vdrift, zero),
    )


__all__ = ["Drifted", "anode_z", "assign_tpc", "diffusion_width", "drift", "lifetime_attenuation"]
