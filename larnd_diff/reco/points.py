"""Hits -> 3-D points: one point per ADC sample (the pixel centre in x, y; the drift coordinate z from the time).

The drift coordinate follows the simulator's convention (:mod:`larnd_diff.sim.drift`): charge that
starts at distance d from the anode of its TPC reaches the virtual plane 0.5 cm in front of the pixels at
t0 + (d - 0.5 cm) / v_drift. The pixel triggers a little later, when enough of the induced current has been
integrated; with the LArPix threshold of 7 ke- that *trigger latency* is 2.36 us on average (the reference on
generated 1 GeV muons, nearly independent of the drift distance: 0.372-0.385 cm over 0-30 cm). Hence

    z = z_anode + s * (0.5 cm + v_drift * (t - t0 - latency)),   s = +1 where the cathode lies at larger z.

The latency is a property of the front end (the current template of :mod:`larnd_diff.response` is fixed in
time), so it is given in us and does not change with v_drift. It is a knob of
:class:`~larnd_diff.reco.config.RecoConfig`; on a real detector it is measured with tracks that cross the anode or
the cathode.

The sample charge (electrons, from the ADC through the LArPix v2 conversion) is carried along for the particle
hypothesis only (:mod:`larnd_diff.reco.hypothesis`); dE/dx never uses it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from larnd_diff.detector import VIRTUAL_PLANE_CM, Detector, Electronics
from larnd_diff.hits import Hits


@dataclass(frozen=True)
class HitPoints:
    """One row per filled ADC sample of the hits.

    event_id (n,)    event of the sample
    xyz      (n, 3)  position in cm, simulation frame (z = drift)
    charge   (n,)    sample charge in electrons (hypothesis only)
    plane    (n,)    TPC index of the pixel
    row      (n,)    row of the sample in the hits
    slot     (n,)    ADC slot of the sample in its row
    """

    event_id: np.ndarray
    xyz: np.ndarray
    charge: np.ndarray
    plane: np.ndarray
    row: np.ndarray
    slot: np.ndarray

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, index) -> "HitPoints":
        return HitPoints(self.event_id[index], self.xyz[index], self.charge[index], self.plane[index],
                         self.row[index], self.slot[index])


def adc_to_electrons(adc, electronics: Electronics) -> np.ndarray:
    """Charge in electrons of digitised LArPix v2 samples (inverse of
    :func:`larnd_diff.reference.electronics.digitize`)."""
    e = electronics
    volts_mv = np.asarray(adc, np.float64) * (e.v_ref_mv - e.v_cm_mv) / e.adc_counts
    return (volts_mv - (e.v_pedestal_mv - e.v_cm_mv)) / e.gain_mv_per_e


def drift_coordinate(time_us, plane, detector: Detector, vdrift_cm_per_us: float,
                     trigger_latency_us: float) -> np.ndarray:
    """z (cm) of charge whose sample time from the event t0 is ``time_us``, in TPC ``plane`` (see module doc)."""
    plane = np.asarray(plane)
    distance = VIRTUAL_PLANE_CM + vdrift_cm_per_us * (np.asarray(time_us, np.float64) - trigger_latency_us)
    return detector.anode_z[plane] + detector.drift_sign[plane] * distance


def event_t0_of_rows(event_id: np.ndarray, event_t0) -> np.ndarray:
    """Per-row t0 (us) from a scalar or a mapping event -> t0 (hit times are measured from it)."""
    if isinstance(event_t0, dict):
        missing = sorted(set(np.unique(event_id).tolist()) - set(event_t0))
        if missing:
            raise ValueError(f"event_t0 has no entry for event(s) {missing[:5]}")
        return np.array([float(event_t0[int(e)]) for e in event_id], np.float64)
    return np.full(len(event_id), float(event_t0))


def hit_points(hits: Hits, detector: Detector, *, vdrift_cm_per_us: float, trigger_latency_us: float,
               event_t0=0.0) -> HitPoints:
    """The 3-D points of every filled sample of ``hits`` (NumPy), in row-major (row, slot) order."""
    h = hits.numpy()
    filled = ~np.isnan(np.asarray(h.adc, np.float64))
    row, slot = np.nonzero(filled)
    event = np.asarray(h.event_id, np.int64)[row]
    pixel = np.asarray(h.pixel, np.int64)[row]
    plane = pixel[:, 0] // detector.n_pixels[0]
    x, y = detector.pixel_center(pixel[:, 0], pixel[:, 1])
    t = np.asarray(h.time, np.float64)[row, slot] - event_t0_of_rows(event, event_t0)
    z = drift_coordinate(t, plane, detector, vdrift_cm_per_us, trigger_latency_us)
    charge = adc_to_electrons(np.asarray(h.adc, np.float64)[row, slot], detector.electronics)
    return HitPoints(event, np.column_stack([x, y, z]), charge, plane, row, slot)
