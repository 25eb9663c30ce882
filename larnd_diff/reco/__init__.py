"""Reconstruction of the simulation input from hits alone: the segments a detector's data imply.

    segments, report = larnd_diff.reco.reconstruct(hits, vdrift=0.1587)

Modules, one job each: ``points`` (hits -> 3-D points), ``cluster`` (DBSCAN), ``lines`` (RANSAC straight pieces),
``tracks`` (polylines, end extension, containment), ``polyline`` (geometry helpers), ``stopping`` (kinetic energy
from residual range), ``hypothesis`` (muon / pion / proton from the charge profile's shape), ``segments``
(segment tables), ``pipeline`` (:func:`reconstruct`), ``truth`` (matching to simulation truth, evaluation only),
``plot`` (reconstructed vs true tracks), ``cli`` (``larnd-diff reco``).
"""
from .config import RecoConfig
from .points import HitPoints, adc_to_electrons, drift_coordinate, hit_points
from .pipeline import CATEGORIES, RecoReport, RecoTrack, reconstruct
from .stopping import RangeTable, mean_loss_mev_per_cm, range_table

__all__ = ["CATEGORIES", "HitPoints", "RangeTable", "RecoConfig", "RecoReport", "RecoTrack", "adc_to_electrons",
           "drift_coordinate", "hit_points", "mean_loss_mev_per_cm", "range_table", "reconstruct"]
