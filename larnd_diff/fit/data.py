"""Calibration inputs from detector data alone: the target hits of a packets file, the pixels its detector reads
out, and the simulation input reconstructed from those hits (:mod:`larnd_diff.reco`). No truth is read.

    from larnd_diff.fit import fit
    from larnd_diff.fit.data import load_data, reconstructed_input
    data = load_data("packets.h5", "multi_tile_layout-2.2.16.yaml")          # event t0 from trigger packets
    segments, report = reconstructed_input(data.hits)                         # nominal drift velocity
    result = fit(segments, data.hits, readout=data.readout, max_iter=200, checkpoint_dir="fit_out")

``larnd-diff fit --target packets.h5 --layout-yaml LAYOUT.yaml`` (no segments file) does the same
(:mod:`larnd_diff.fit.cli`).

What the target holds: the packets' samples, times from each event's t0 put back on the simulator's ADC tick
grid (:func:`larnd_diff.packets.clock_to_grid_us`: the likelihood compares ticks), events numbered 0, 1, ... in
time order, and no truth (the file's ``mc_packets_assn`` and ``tracks`` are not read into the fit). The model is
told which pixels have a read-out channel (``readout``), so that pixels a detector cannot report say nothing.

The reconstruction runs once, before the fit, with the drift velocity it is given (default: the nominal
0.1587 cm/us of :mod:`larnd_diff.params`), not the fitted one: positions along the drift are the hit times
times that velocity, so a target whose true drift velocity differs has its tracks stretched or shrunk along the
drift, and the fit's eField, which sets the model's drift velocity, is pulled towards the value that makes the
reconstructed positions drift in the observed times (the nominal one).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..hits import Hits

__all__ = ["DataInput", "RECO_CATEGORIES", "check_events", "load_data", "reconstructed_input", "save_reconstructed",
           "select_reco_tracks"]

#: Reconstructed track categories that become segments by default (larnd_diff/reco/pipeline.py): all but showers.
RECO_CATEGORIES = ("stopping", "through-going", "no-bragg")


@dataclass(frozen=True)
class DataInput:
    """A fit target read from a file.

    hits     the target's samples (times in us from each event's t0); ``backtrack`` is None for packets
    readout  (n, 2) pixel ids with a read-out channel (packets), or None (a hits file: every pixel)
    source   how the file was read (for messages and the fit's JSON)
    path     the file
    """

    hits: Hits
    readout: Optional[np.ndarray]
    source: str
    path: str

    def without_truth(self) -> "DataInput":
        """The same input without the hits' backtrack (a hits file written by ``larnd-diff simulate`` has one)."""
        return DataInput(self.hits.replace(backtrack=None), self.readout, self.source, self.path)


def load_data(path, layout_yaml=None, *, event_t0=None, detector=None) -> DataInput:
    """The target of a packets file (with ``layout_yaml``: the data path) or of a hits file.

    ``event_t0`` (packets without trigger packets only): absolute event times in us or ``"slots"``, see
    :func:`larnd_diff.packets.read_packets`. Packets are read with ``time_grid="ticks"`` and without their truth
    association; the read-out pixels come from the layout. A hits file is read as it is (its backtrack included:
    :meth:`DataInput.without_truth` drops it). Errors name the file (:class:`larnd_diff.packets.PacketError`).
    """
    from ..detector import resolve_detector
    from ..packets import file_kind, load_target, read_packets, readout_pixels

    det = resolve_detector(detector)
    if "packets" in file_kind(path) and layout_yaml is not None:
        read = read_packets(path, layout_yaml, detector=det, event_t0=event_t0, time_grid="ticks")
        source = (f"LArPix packets: {read.n_events} events (t0 from {read.t0_source}), {read.n_data_packets} data "
                  f"packets, truth association not read")
        return DataInput(read.hits.replace(backtrack=None), readout_pixels(layout_yaml, det), source, str(path))
    return DataInput(load_target(path, None, detector=det), None, "hits group", str(path))


def select_reco_tracks(segments: np.ndarray, report, categories: Sequence[str] = RECO_CATEGORIES,
                       species: Optional[Sequence[str]] = None) -> np.ndarray:
    """The segments of the reconstructed tracks of the given categories (and hypotheses, e.g. ``("proton",)``;
    tracks that do not stop carry the muon hypothesis "mu-")."""
    from ..reco import CATEGORIES

    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown reconstructed track categories {unknown}; known: {list(CATEGORIES)}")
    kept = [(t.event_id, t.track_id) for t in report.tracks
            if t.category in categories and (species is None or t.species in species)]
    if not kept:
        return segments[:0]
    keys = segments["eventID"].astype(np.int64) * (1 << 20) + segments["trackID"].astype(np.int64)
    wanted = np.array([e * (1 << 20) + t for e, t in kept], np.int64)
    return segments[np.isin(keys, wanted)]


def reconstructed_input(hits: Hits, *, vdrift: Optional[float] = None, categories: Sequence[str] = RECO_CATEGORIES,
                        species: Optional[Sequence[str]] = None, detector=None, **knobs):
    """(segments in the simulation frame, :class:`larnd_diff.reco.RecoReport`) of the target's hits.

    ``vdrift`` in cm/us (None: nominal); ``categories`` and ``species`` select tracks
    (:func:`select_reco_tracks`); ``knobs`` are :class:`larnd_diff.reco.RecoConfig` fields. The hits' backtrack,
    if any, is never read (larnd_diff/reco/pipeline.py). Raises ``ValueError`` when no track is left.
    """
    from ..reco import CATEGORIES, reconstruct

    segments, report = reconstruct(hits.replace(backtrack=None), detector, vdrift=vdrift, **knobs)
    chosen = select_reco_tracks(segments, report, categories, species)
    if len(chosen) == 0:
        counts = report.counts()
        raise ValueError(f"the reconstruction left no segments to fit: {len(report.tracks)} tracks "
                         f"({', '.join(f'{counts[c]} {c}' for c in CATEGORIES)}), categories "
                         f"{list(categories)}, species {list(species) if species else 'any'}")
    return chosen, report


def check_events(segments: np.ndarray, hits: Hits, path) -> int:
    """Number of target events that the segments cover; raises ``ValueError`` (naming ``path``) when none.

    Packets number their events 0, 1, ... in time order; a segments file given with them must use those eventIDs
    (``larnd-diff reco`` writes them so)."""
    target = np.unique(np.asarray(hits.event_id, np.int64))
    covered = np.isin(target, np.unique(segments["eventID"].astype(np.int64)))
    if len(target) and not covered.any():
        raise ValueError(f"{path}: none of the target's events ({_ids(target)}) is an eventID of the segments "
                         f"({_ids(np.unique(segments['eventID']))}); packets number their events 0, 1, ... in time "
                         f"order, so a segments file fitted to them must use the same numbers (as larnd-diff reco "
                         f"writes them)")
    return int(covered.sum())


def _ids(values) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values[:5])) + (f", ... ({len(values)} in all)" if len(values) > 5 else "")


def save_reconstructed(path: Path, segments: np.ndarray, overwrite: bool = False) -> None:
    """Write reconstructed segments (edep-sim frame, as ``larnd-diff reco -o`` does)."""
    from ..io import atomic_output, check_output, save_segments

    check_output(path, overwrite=overwrite)
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_segments(tmp, segments)
