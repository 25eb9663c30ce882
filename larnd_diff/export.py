"""LArPix-style packet export of simulated hits with the truth association (read back by :mod:`larnd_diff.packets`).

The chip/channel mapping comes from the full larnd-sim pixel-layout YAML (``chip_channel_to_position``,
``tile_chip_to_io``), which the compact built-in module0 description does not carry: pass ``layout_yaml``.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .detector import Detector, module0
from .errors import ConfigError
from .hits import N_BACKTRACK, Hits
from .detector import read_yaml

#: larpix-control HDF5 format 2.4 ``packets`` dtype.
PACKET_DTYPE = np.dtype([
    ("io_group", "u1"), ("io_channel", "u1"), ("chip_id", "u1"), ("packet_type", "u1"),
    ("downstream_marker", "u1"), ("parity", "u1"), ("valid_parity", "u1"), ("channel_id", "u1"),
    ("timestamp", "u8"), ("dataword", "u1"), ("trigger_type", "u1"), ("local_fifo", "u1"),
    ("shared_fifo", "u1"), ("register_address", "u1"), ("register_data", "u1"), ("direction", "u1"),
    ("local_fifo_events", "u1"), ("shared_fifo_events", "u2"), ("counter", "u4"),
    ("fifo_diagnostics_enabled", "u1"), ("first_packet", "u1"), ("receipt_timestamp", "u4"),
])
ASSN_DTYPE = np.dtype([("track_ids", "i8", (N_BACKTRACK,))])
DATA_PACKET, TRIGGER_PACKET, EXTERNAL_TRIGGER = 0, 7, 0x02
CLOCK_US = 0.1

# Channels on tile edges that larnd-sim does not read out (fee.py): (chips, channels).
_DISABLED = (
    (range(11, 21), {3, 2, 1, 63, 62, 61, 60}),
    (range(101, 111), {28, 29, 30, 31, 33, 34, 35}),
    (range(20, 111, 10), {60, 52, 53, 48, 45, 41, 35}),
)


def _is_disabled(chip: int, channel: int) -> bool:
    return any(chip in chips and channel in channels for chips, channels in _DISABLED)


#: Keys of the pixel-layout YAML that the chip/channel map reads.
CHANNEL_MAP_KEYS = ("chip_channel_to_position", "tile_orientations", "tile_chip_to_io")


class ChannelMap:
    """Pixel (I, J) -> (io_group, io_channel, chip, channel) for a multi-tile layout."""

    def __init__(self, layout_yaml: str | Path, detector: Detector):
        layout = read_yaml(layout_yaml, "pixel-layout YAML")
        missing = [k for k in CHANNEL_MAP_KEYS if not isinstance(layout, dict) or k not in layout]
        if missing:
            raise ConfigError(f"{layout_yaml}: lacks the key(s) {', '.join(missing)} of the chip/channel map that "
                              f"LArPix packets need (a full larnd-sim pixel-layout YAML, e.g. "
                              f"multi_tile_layout-2.2.16.yaml, has them)", file=layout_yaml, field=missing[0])
        self._position_to_key = {tuple(v): int(k) for k, v in layout["chip_channel_to_position"].items()}
        self._orient = {int(k): v for k, v in layout["tile_orientations"].items()}
        self._tile_chip_to_io = {int(t): {int(c): int(io) for c, io in chips.items()}
                                 for t, chips in layout["tile_chip_to_io"].items()}
        self.detector = detector

    def lookup(self, i: int, j: int):
        """(io_group, io_channel, chip, channel), or None where the pixel has no read-out channel."""
        det = self.detector
        nx, ny = det.n_pixels_per_tile
        plane = i // det.n_pixels[0]
        ix = i - det.n_pixels[0] * plane
        tile = det.tile_map[plane][ix // nx][j // ny]
        lx, ly = ix % nx, j % ny
        if self._orient[tile][2] < 0:
            lx = nx - 1 - lx
        if self._orient[tile][1] < 0:
            ly = ny - 1 - ly
        key = self._position_to_key.get((lx, ly))
        if key is None:
            return None
        chip, channel = divmod(key, 1000)
        if _is_disabled(chip, channel):
            return None
        io = self._tile_chip_to_io.get(tile, {}).get(chip)
        if io is None:
            return None
        io_group, io_channel = divmod(io, 1000)
        return io_group, io_channel, chip, channel


def hits_to_packets(hits: Hits, layout_yaml: str | Path, detector: Detector | None = None):
    """Packets and truth association (``mc_packets_assn``) for hits, events laid out in 600 us slots.

    Returns ``(packets, assn, n_unmapped)``: samples on pixels without a read-out channel are counted in
    ``n_unmapped`` (larnd-sim skips them silently; we report the number).
    """
    det = detector or module0()
    cmap = ChannelMap(layout_yaml, det)
    h = hits.numpy()
    slot_ticks = int(round(det.event_slot_us / CLOCK_US))
    packets, assn, unmapped = [], [], 0
    no_truth = np.full(N_BACKTRACK, -1, np.int64)
    for index, event in enumerate(np.unique(h.event_id)):
        for io_group in (1, 2):
            p = np.zeros((), PACKET_DTYPE)
            p["io_group"], p["packet_type"], p["trigger_type"] = io_group, TRIGGER_PACKET, EXTERNAL_TRIGGER
            p["timestamp"] = index * slot_ticks
            packets.append(p)
            assn.append(no_truth)
        for r in np.flatnonzero(h.event_id == event):
            channel = cmap.lookup(int(h.pixel[r, 0]), int(h.pixel[r, 1]))
            for k in range(h.adc.shape[1]):
                if np.isnan(h.adc[r, k]):
                    break
                if channel is None:
                    unmapped += 1
                    continue
                p = np.zeros((), PACKET_DTYPE)
                p["io_group"], p["io_channel"], p["chip_id"], p["channel_id"] = channel
                p["packet_type"] = DATA_PACKET
                p["dataword"] = min(int(h.adc[r, k]), 255)
                p["timestamp"] = int(np.floor(h.time[r, k] / CLOCK_US)) + index * slot_ticks
                packets.append(p)
                assn.append(h.backtrack[r, k] if h.backtrack is not None else no_truth)
    packets = np.array(packets, dtype=PACKET_DTYPE) if packets else np.zeros(0, PACKET_DTYPE)
    assn_arr = np.zeros(len(assn), ASSN_DTYPE)
    if assn:
        assn_arr["track_ids"] = np.stack(assn)
    return packets, assn_arr, unmapped


def write_packets(path: str | Path, hits: Hits, layout_yaml: str | Path, detector: Detector | None = None,
                  segments: np.ndarray | None = None) -> int:
    """Write ``packets``, ``mc_packets_assn`` (and ``tracks`` if given) to an HDF5 file; returns n_unmapped."""
    packets, assn, unmapped = hits_to_packets(hits, layout_yaml, detector)
    with h5py.File(path, "a") as f:
        for name in ("packets", "mc_packets_assn", "tracks"):
            if name in f:
                del f[name]
        f.create_dataset("packets", data=packets)
        f.create_dataset("mc_packets_assn", data=assn)
        if segments is not None:
            f.create_dataset("tracks", data=segments)
        f.attrs["n_unmapped_samples"] = unmapped
    return unmapped
