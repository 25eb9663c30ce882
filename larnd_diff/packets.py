"""LArPix packets in: the larpix-control HDF5 ``packets`` dataset -> :class:`~larnd_diff.hits.Hits`.

This is the inverse of :mod:`larnd_diff.export` (spec 2.5 and 4.7) and reads what larnd-sim writes:

* **Channel -> pixel.** A data packet's chip key (io_group, io_channel, chip_id) and channel_id are turned into the
  pixel (I, J) through the pixel-layout YAML: ``tile_chip_to_io`` gives the tile of (io_group, io_channel, chip),
  ``chip_channel_to_position`` the local pixel of (chip, channel), ``tile_orientations`` undoes the flip of the local
  numbering, and the detector's ``tile_map`` places the tile in its TPC. A chip or channel that the layout does not
  know is an error (the file does not belong to this layout), never silently dropped.
* **ADC and time.** ADC = ``dataword``; the sample time is ``timestamp`` x 0.1 us (the LArPix clock), measured from
  the event's t0. larnd-sim's export floors its times to the clock, so times come back within one 0.1 us tick.
  With ``time_grid="ticks"`` the times are put back on the simulator's ADC tick grid (600/6003 us,
  ``Detector.adc_tick_us``): each becomes the grid time inside its 0.1 us clock tick, the inverse of the
  export's flooring (:func:`clock_to_grid_us`). A fit compares the model's ticks with the data's
  (:mod:`larnd_diff.fit.likelihood` rounds times to that grid), so the fit reads packets this way; the clock
  times would be one tick early below 100 us.
* **Events and t0.** Each event starts at a t0; packets belong to the latest t0 not after their timestamp. The t0
  comes from the file's trigger packets (``packet_type`` 7; larnd-sim writes one per io_group and event, with the
  same timestamp) when there are any, otherwise from the caller's ``event_t0`` (absolute times in us on the packet
  clock, or ``"slots"`` for larnd-sim's convention of one 600 us slot per event). :class:`PacketEvents` says which
  (``t0_source``); :func:`load_packets` warns when it is not the file. Events are numbered 0, 1, ... in time order
  (the file does not carry larnd-sim's eventID).
* **Rows.** Within an event, the samples of one pixel form one row in time order, up to 10 slots (the LArPix
  front end's limit per pixel and event in larnd-sim). Real data can hold more: the 11th and later samples go to
  continuation rows of the same pixel (same event and pixel, next 10 samples), counted in
  ``PacketEvents.n_continuation_rows`` and announced by a warning. The simulator itself may give one pixel two rows
  (one per 600-segment chunk); reading its packets back merges them into one time-ordered row.
* **Read-out pixels.** The export writes no packet for pixels without a read-out channel (the tile-edge
  channels larnd-sim does not read out, larnd_diff/export.py); :func:`readout_pixels` lists the pixels that do
  have one, so a fit can leave the others out of its model (a detector reports nothing there: no information).
* **Truth.** ``backtrack`` comes from ``mc_packets_assn`` (``track_ids``: rows of the simulated segments table)
  when the file has it: for evaluation only, the reconstruction never reads it.

Only safe readers are used (h5py datasets, ``yaml`` safe loading). Problems with a file raise
:class:`PacketError` (an :class:`~larnd_diff.errors.InputError`, hence a ``ValueError``) naming the file, the
dataset and, where it applies, the row (also in its ``file`` and ``rows`` attributes); a missing file raises
:class:`PacketFileNotFoundError`, a file without the dataset :class:`MissingPacketsError`, a bad layout YAML a
:class:`~larnd_diff.errors.ConfigError`.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from .detector import Detector, resolve_detector
from .errors import ConfigError, InputError, InputFileNotFoundError, MissingDataError
from .hits import N_BACKTRACK, Hits

#: larpix-control packet types (larpix.packet.Packet_v2).
DATA_PACKET, TRIGGER_PACKET = 0, 7
#: LArPix clock period: one timestamp tick in us.
CLOCK_US = 0.1
#: Samples per pixel row (the front end's limit per pixel and event).
MAX_SAMPLES = 10
#: Fields of the ``packets`` dataset this reader needs (a subset of larpix-control's format 2.x dtype).
REQUIRED_PACKET_FIELDS = ("io_group", "io_channel", "chip_id", "packet_type", "channel_id", "timestamp", "dataword")
#: Trigger packets closer than this (clock ticks) are one event's (larnd-sim writes one per io_group).
TRIGGER_MERGE_TICKS = 20
#: Rows read at once; a read failure names the first row of the failing block.
_READ_BLOCK = 1 << 18


class PacketError(InputError):
    """A packets file that cannot be read; the message names the file, the dataset and, where known, the row."""


class PacketFileNotFoundError(PacketError, InputFileNotFoundError):
    """The packets file does not exist (also a ``FileNotFoundError``)."""


class MissingPacketsError(PacketError, MissingDataError):
    """The file has no ``packets`` dataset: not a LArPix packets file (also a ``KeyError``)."""


@dataclass(frozen=True)
class PacketEvents:
    """The result of :func:`read_packets`.

    hits                the samples as :class:`Hits` (times in us from each event's t0; ``charge`` is None)
    t0_us               (n_events,) absolute event t0 in us on the packet clock
    t0_source           "trigger packets", "event_t0 argument" or "larnd-sim slots"
    path                the file read
    n_data_packets      data packets read (all of them become samples)
    n_trigger_packets   trigger packets read
    n_other_packets     packets of other types (timestamp, sync, configuration): ignored
    n_continuation_rows rows holding the 11th and later samples of a pixel in one event
    n_before_first_t0   data packets earlier than the first t0 (dropped, with a warning)
    """

    hits: Hits
    t0_us: np.ndarray
    t0_source: str
    path: str
    n_data_packets: int
    n_trigger_packets: int
    n_other_packets: int
    n_continuation_rows: int
    n_before_first_t0: int

    @property
    def n_events(self) -> int:
        return len(self.t0_us)


# ----------------------------------------------------------------------------------------------------------------
# channel -> pixel
# ----------------------------------------------------------------------------------------------------------------
def _channel_key(io_group, io_channel, chip, channel):
    """One int64 per (io_group, io_channel, chip, channel); each is a u1 in the packet format."""
    return ((np.asarray(io_group, np.int64) * 256 + np.asarray(io_channel, np.int64)) * 256
            + np.asarray(chip, np.int64)) * 256 + np.asarray(channel, np.int64)


@dataclass(frozen=True)
class PixelLookup:
    """Sorted table (io_group, io_channel, chip, channel) -> pixel (I, J): the inverse of ``export.ChannelMap``."""

    keys: np.ndarray     # (n,) sorted channel keys
    pixels: np.ndarray   # (n, 2) pixel (I, J) of each key
    layout_path: str

    def pixels_of(self, io_group, io_channel, chip, channel):
        """(pixels (n, 2), known (n,) bool) for arrays of packet fields; unknown channels get pixel (-1, -1)."""
        key = _channel_key(io_group, io_channel, chip, channel)
        pos = np.clip(np.searchsorted(self.keys, key), 0, max(len(self.keys) - 1, 0))
        known = self.keys[pos] == key if len(self.keys) else np.zeros(len(key), bool)
        return np.where(known[:, None], self.pixels[pos], -1), known


def _tile_places(detector: Detector) -> dict[int, tuple[int, int, int]]:
    """tile id -> (TPC, tile_x, tile_y) from the detector's tile map (spec 2.4)."""
    return {int(tile): (plane, tx, ty) for plane, rows in enumerate(detector.tile_map)
            for tx, column in enumerate(rows) for ty, tile in enumerate(column)}


def _read_layout(layout_yaml: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # the C build of the safe loader when available
    try:
        layout = yaml.load(layout_yaml.read_text(), Loader=loader)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{layout_yaml}: cannot be read as a pixel-layout YAML ({err})", file=layout_yaml) from err
    missing = [k for k in ("chip_channel_to_position", "tile_chip_to_io", "tile_orientations")
               if not isinstance(layout, dict) or k not in layout]
    if missing:
        raise ConfigError(f"{layout_yaml}: not a larnd-sim multi-tile pixel layout (missing {', '.join(missing)})",
                          file=layout_yaml)
    return layout


def build_pixel_lookup(layout_yaml: str | Path, detector: Detector | None = None) -> PixelLookup:
    """The channel -> pixel table of a larnd-sim multi-tile layout (every channel of every chip of every tile)."""
    det = resolve_detector(detector)
    return _cached_lookup(str(Path(layout_yaml).resolve()), det)


@lru_cache(maxsize=8)
def _cached_lookup(layout_path: str, det: Detector) -> PixelLookup:
    layout = _read_layout(Path(layout_path))
    nx, ny = det.n_pixels_per_tile
    places = _tile_places(det)
    position = {int(k): (int(v[0]), int(v[1])) for k, v in layout["chip_channel_to_position"].items()}
    keys, pixels = [], []
    for tile, chips in layout["tile_chip_to_io"].items():
        tile = int(tile)
        if tile not in places:
            raise ConfigError(f"{layout_path}: tile {tile} of tile_chip_to_io is not in the detector's tile map",
                              file=layout_path)
        plane, tx, ty = places[tile]
        flip_y, flip_x = (float(s) < 0 for s in layout["tile_orientations"][tile][1:3])
        for chip, io in chips.items():
            io_group, io_channel = divmod(int(io), 1000)
            for key in range(int(chip) * 1000, int(chip) * 1000 + 256):
                local = position.get(key)
                if local is None:
                    continue
                lx, ly = local
                lx = nx - 1 - lx if flip_x else lx
                ly = ny - 1 - ly if flip_y else ly
                keys.append(_channel_key(io_group, io_channel, int(chip), key - int(chip) * 1000))
                pixels.append((plane * det.n_pixels[0] + tx * nx + lx, ty * ny + ly))
    keys_arr = np.asarray(keys, np.int64)
    order = np.argsort(keys_arr)
    return PixelLookup(keys=keys_arr[order], pixels=np.asarray(pixels, np.int64).reshape(-1, 2)[order],
                       layout_path=layout_path)


# ----------------------------------------------------------------------------------------------------------------
# reading the datasets
# ----------------------------------------------------------------------------------------------------------------
def _open_error(path: Path, dataset: str, err: OSError) -> PacketError:
    text = str(err)
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return PacketError(f"{path}: cannot read dataset {dataset!r}: the file is truncated ({m.group(1)} of "
                           f"{m.group(2)} bytes present), so no row of it can be read", file=path)
    return PacketError(f"{path}: cannot be opened as an HDF5 file to read dataset {dataset!r} ({text})", file=path)


def _read_table(h5, path: Path, name: str) -> np.ndarray:
    """A 1-D compound dataset, read block by block so that a damaged block is named by its first row."""
    import h5py

    obj = h5[name]
    if not isinstance(obj, h5py.Dataset):
        raise PacketError(f"{path}: {name!r} is a group, not a dataset", file=path)
    if obj.dtype.names is None or obj.ndim != 1:
        raise PacketError(f"{path}:{name}: expected a 1-D table with named fields (larpix-control format), "
                          f"got dtype {obj.dtype} and shape {obj.shape}", file=path)
    out = np.empty(obj.shape, obj.dtype)
    for lo in range(0, len(obj), _READ_BLOCK):
        hi = min(lo + _READ_BLOCK, len(obj))
        try:
            out[lo:hi] = obj[lo:hi]
        except (OSError, ValueError, TypeError) as err:
            raise PacketError(f"{path}:{name}: rows {lo}-{hi - 1} cannot be read ({err}); the file is damaged or "
                              f"truncated from row {lo} on", file=path, rows=(lo,)) from err
    return out


def _check_packet_fields(packets: np.ndarray, path: Path, dataset: str) -> None:
    missing = [f for f in REQUIRED_PACKET_FIELDS if f not in packets.dtype.names]
    if missing:
        raise PacketError(f"{path}:{dataset}: not a larpix-control packets table: missing field(s) "
                          f"{', '.join(missing)} (present: {', '.join(packets.dtype.names)})", file=path,
                          field=missing[0])
    for name in REQUIRED_PACKET_FIELDS:
        if packets.dtype[name].kind not in "iu":
            raise PacketError(f"{path}:{dataset}: field {name!r} has dtype {packets.dtype[name]}, expected an "
                              f"unsigned integer (larpix-control format); row 0 holds {packets[name][:1]!r}",
                              file=path, field=name, rows=(0,))


def _read_file(path: Path, dataset: str, assn_dataset: str):
    import h5py

    if not path.exists():
        raise PacketFileNotFoundError(f"{path}: packets file does not exist", file=path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise _open_error(path, dataset, err) from err
    with h5:
        if dataset not in h5:
            found: list[str] = []
            h5.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
            raise MissingPacketsError(f"{path}: has no dataset {dataset!r} (not a LArPix packets file); datasets "
                                      f"present: {', '.join(found) or 'none'}", file=path)
        packets = _read_table(h5, path, dataset)
        assn = _read_table(h5, path, assn_dataset) if assn_dataset in h5 else None
    _check_packet_fields(packets, path, dataset)
    if assn is not None:
        if "track_ids" not in assn.dtype.names:
            raise PacketError(f"{path}:{assn_dataset}: has no field 'track_ids' "
                              f"(fields: {', '.join(assn.dtype.names)})", file=path, field="track_ids")
        if len(assn) != len(packets):
            row = min(len(assn), len(packets))
            raise PacketError(f"{path}:{assn_dataset}: has {len(assn)} rows but {dataset} has {len(packets)}; the "
                              f"two tables part from row {row} on (one of them is truncated)", file=path, rows=(row,))
    return packets, assn


def _truth_columns(assn: np.ndarray) -> np.ndarray:
    ids = np.asarray(assn["track_ids"], np.int64).reshape(len(assn), -1)
    out = np.full((len(assn), N_BACKTRACK), -1, np.int64)
    width = min(N_BACKTRACK, ids.shape[1])
    out[:, :width] = ids[:, :width]
    return out


# ----------------------------------------------------------------------------------------------------------------
# events
# ----------------------------------------------------------------------------------------------------------------
def _trigger_t0_ticks(timestamps: np.ndarray) -> np.ndarray:
    """Distinct event starts (ticks) of trigger packets; triggers within TRIGGER_MERGE_TICKS are one event."""
    ts = np.unique(timestamps.astype(np.int64))
    if len(ts) == 0:
        return ts
    new = np.r_[True, np.diff(ts) > TRIGGER_MERGE_TICKS]
    return ts[new]


def parse_event_t0(text: str | None):
    """The ``event_t0`` of a command line: None, ``"slots"`` or comma-separated absolute times in us."""
    if text is None or text == "slots":
        return text
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"event t0 must be 'slots' or comma-separated times in us, got {text!r}") from None


def _caller_t0_ticks(event_t0, data_ts: np.ndarray, detector: Detector, path: Path):
    """(t0 in ticks, source) from the caller's ``event_t0`` when the file has no trigger packets."""
    if event_t0 is None:
        raise PacketError(f"{path}: the packets table has no trigger packets (packet_type {TRIGGER_PACKET}), so the "
                          f"event t0 is unknown: pass event_t0 (absolute times in us, one per event) or "
                          f"event_t0='slots' (larnd-sim's one 600 us slot per event)", file=path)
    if isinstance(event_t0, str):
        if event_t0 != "slots":
            raise ValueError(f"event_t0 must be a sequence of times in us or 'slots', not {event_t0!r}")
        slot = int(round(detector.event_slot_us / CLOCK_US))
        return np.unique(data_ts.astype(np.int64) // slot) * slot, "larnd-sim slots"
    t0 = np.atleast_1d(np.asarray(event_t0, np.float64))
    if t0.ndim != 1 or not np.all(np.isfinite(t0)) or np.any(np.diff(t0) <= 0):
        raise ValueError("event_t0 must be finite absolute times in us, strictly increasing (one per event)")
    return np.floor(t0 / CLOCK_US + 1e-9).astype(np.int64), "event_t0 argument"


def clock_to_grid_us(ticks, adc_tick_us: float) -> np.ndarray:
    """Times (us) on the simulator's ADC grid (spacing ``adc_tick_us``) of samples whose clock timestamps, counted
    from the event t0, are ``ticks``: the grid time nearest to the middle of the 0.1 us clock tick. The export
    floors grid times to the clock, and the grid is finer than the clock, so that grid time is the one the export
    floored (where two grid times share a clock tick, once every 2001 ticks: the later one, the earlier being the
    tick's very start)."""
    return np.rint((np.asarray(ticks, np.float64) + 0.5) * CLOCK_US / adc_tick_us) * adc_tick_us


def _rows_of_samples(event: np.ndarray, pixel: np.ndarray, ts: np.ndarray, max_samples: int):
    """Order samples by (event, pixel, time) and give each its (row, slot); rows hold up to ``max_samples``."""
    order = np.lexsort((np.arange(len(ts)), ts, pixel[:, 1], pixel[:, 0], event))
    e, p = event[order], pixel[order]
    new_group = np.r_[True, (e[1:] != e[:-1]) | np.any(p[1:] != p[:-1], axis=1)] if len(e) else np.zeros(0, bool)
    group_start = np.flatnonzero(new_group)
    rank = np.arange(len(e)) - np.repeat(group_start, np.diff(np.r_[group_start, len(e)]))
    new_row = new_group | (rank % max_samples == 0)
    row = np.cumsum(new_row) - 1
    return order, row, rank % max_samples, int(np.sum(new_row & ~new_group))


def read_packets(path: str | Path, layout_yaml: str | Path, *, detector=None, event_t0=None,
                 dataset: str = "packets", assn_dataset: str = "mc_packets_assn",
                 max_samples: int = MAX_SAMPLES, time_grid: str = "clock") -> PacketEvents:
    """Read a larpix-control packets file into hits, with the event t0s and where they came from.

    ``event_t0`` is used only when the file has no trigger packets: absolute event times in us on the packet
    clock (one per event, increasing) or ``"slots"`` (larnd-sim's 600 us slot per event). ``time_grid``: "clock"
    (times = timestamp x 0.1 us) or "ticks" (the simulator's ADC tick grid, :func:`clock_to_grid_us`). See the
    module docstring for the conventions; :class:`PacketError` for malformed or foreign files.
    """
    if time_grid not in ("clock", "ticks"):
        raise ValueError(f"time_grid must be 'clock' or 'ticks', got {time_grid!r}")
    path = Path(path)
    det = resolve_detector(detector)
    lookup = build_pixel_lookup(layout_yaml, det)
    packets, assn = _read_file(path, dataset, assn_dataset)
    ptype = packets["packet_type"]
    is_data, is_trigger = ptype == DATA_PACKET, ptype == TRIGGER_PACKET
    data_rows = np.flatnonzero(is_data)
    data = packets[data_rows]
    pixels, known = lookup.pixels_of(data["io_group"], data["io_channel"], data["chip_id"], data["channel_id"])
    if not known.all():
        bad = int(np.flatnonzero(~known)[0])
        p = data[bad]
        raise PacketError(f"{path}:{dataset}: row {int(data_rows[bad])} is a data packet of chip key "
                          f"{int(p['io_group'])}-{int(p['io_channel'])}-{int(p['chip_id'])} channel "
                          f"{int(p['channel_id'])}, which the pixel layout {lookup.layout_path} does not have "
                          f"({int((~known).sum())} data packet(s) affected): wrong layout or a foreign file",
                          file=path, rows=(int(data_rows[bad]),))
    ts = data["timestamp"].astype(np.int64)
    if is_trigger.any():
        t0_ticks, source = _trigger_t0_ticks(packets["timestamp"][is_trigger]), "trigger packets"
        if event_t0 is not None:
            warnings.warn(f"{path}: event t0 taken from the file's trigger packets; event_t0 is ignored",
                          UserWarning, stacklevel=2)
    else:
        t0_ticks, source = _caller_t0_ticks(event_t0, ts, det, path)
    event = np.searchsorted(t0_ticks, ts, side="right") - 1
    early = event < 0
    if early.any():
        warnings.warn(f"{path}:{dataset}: {int(early.sum())} data packet(s) lie before the first event t0 and are "
                      f"dropped (first is row {int(data_rows[np.flatnonzero(early)[0]])})", UserWarning, stacklevel=2)
    keep = ~early
    event, pixels, ts, rows_in_file = event[keep], pixels[keep], ts[keep], data_rows[keep]
    adc = data["dataword"][keep].astype(np.float64)
    order, row, slot, n_cont = _rows_of_samples(event, pixels, ts, max_samples)
    n_rows = int(row[-1]) + 1 if len(row) else 0
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.zeros(0, np.int64)
    h_adc = np.full((n_rows, max_samples), np.nan)
    h_time = np.full((n_rows, max_samples), np.nan)
    h_adc[row, slot] = adc[order]
    rel_ticks = ts[order] - t0_ticks[event[order]]
    h_time[row, slot] = rel_ticks * CLOCK_US if time_grid == "clock" else clock_to_grid_us(rel_ticks, det.adc_tick_us)
    backtrack = None
    if assn is not None:
        backtrack = np.full((n_rows, max_samples, N_BACKTRACK), -1, np.int64)
        backtrack[row, slot] = _truth_columns(assn[rows_in_file[order]])
    hits = Hits(event_id=event[order][first].astype(np.int64), pixel=pixels[order][first].astype(np.int64),
                adc=h_adc, time=h_time, charge=None, backtrack=backtrack)
    if n_cont:
        warnings.warn(f"{path}: {n_cont} pixel(s) have more than {max_samples} samples in one event; the later "
                      f"samples are in continuation rows of the same pixel", UserWarning, stacklevel=2)
    return PacketEvents(hits=hits, t0_us=t0_ticks * CLOCK_US, t0_source=source, path=str(path),
                        n_data_packets=int(is_data.sum()), n_trigger_packets=int(is_trigger.sum()),
                        n_other_packets=int(len(packets) - is_data.sum() - is_trigger.sum()),
                        n_continuation_rows=n_cont, n_before_first_t0=int(early.sum()))


def load_packets(path: str | Path, layout_yaml: str | Path, *, detector=None, event_t0=None,
                 time_grid: str = "clock") -> Hits:
    """Hits of a larpix-control packets file (see :func:`read_packets`); warns when the t0 is not the file's."""
    result = read_packets(path, layout_yaml, detector=detector, event_t0=event_t0, time_grid=time_grid)
    if result.t0_source != "trigger packets":
        warnings.warn(f"{path}: no trigger packets; event t0 from {result.t0_source} ({result.n_events} events)",
                      UserWarning, stacklevel=2)
    return result.hits


# ----------------------------------------------------------------------------------------------------------------
# fit targets
# ----------------------------------------------------------------------------------------------------------------
def file_kind(path: str | Path) -> set[str]:
    """Which inputs an HDF5 file holds: a subset of {"packets", "hits", "segments"}."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise PacketFileNotFoundError(f"{path}: file does not exist", file=path)
    try:
        with h5py.File(path, "r") as h5:
            return {k for k in ("packets", "hits", "segments") if k in h5}
    except OSError as err:
        raise _open_error(path, "packets", err) from err


def load_target(path: str | Path, layout_yaml: str | Path | None = None, *, detector=None,
                event_t0=None, time_grid: str = "clock") -> Hits:
    """The hits of a fit target: a LArPix packets file or the project's own ``hits`` group.

    A file with a ``packets`` dataset is read with :func:`load_packets` when ``layout_yaml`` is given (the data
    path; needed for the channel map). A file with a ``hits`` group (``larnd-diff simulate``) is read with
    :func:`~larnd_diff.hits.load_hits` otherwise; ``simulate --packets`` writes both into one file, and then the
    layout decides. Anything else is a :class:`PacketError`.
    """
    from .hits import load_hits

    kind = file_kind(path)
    if "packets" in kind and layout_yaml is not None:
        return load_packets(path, layout_yaml, detector=detector, event_t0=event_t0, time_grid=time_grid)
    if "hits" in kind:
        return load_hits(path)
    if "packets" in kind:
        raise PacketError(f"{path}: is a LArPix packets file; reading it needs the pixel layout (layout_yaml / "
                          f"--layout-yaml) for the channel -> pixel map", file=path)
    raise PacketError(f"{path}: holds neither a 'packets' dataset nor a 'hits' group (found: "
                      f"{', '.join(sorted(kind)) or 'nothing usable'})", file=path)


def readout_pixels(layout_yaml: str | Path, detector=None) -> np.ndarray:
    """(n, 2) pixel ids (I, J), sorted, of every pixel with a read-out channel: those the export writes packets
    for (:class:`larnd_diff.export.ChannelMap`: a channel in the layout, not one of larnd-sim's tile-edge channels
    that are not read out)."""
    det = resolve_detector(detector)
    return _cached_readout(str(Path(layout_yaml).resolve()), det).copy()


@lru_cache(maxsize=4)
def _cached_readout(layout_path: str, det: Detector) -> np.ndarray:
    from .export import ChannelMap

    cmap = ChannelMap(layout_path, det)
    n_i, n_j = det.n_pixels[0] * len(det.tile_map), det.n_pixels[1]
    found = [(i, j) for i in range(n_i) for j in range(n_j) if cmap.lookup(i, j) is not None]
    return np.asarray(found, np.int64).reshape(-1, 2)


__all__ = ["CLOCK_US", "DATA_PACKET", "MAX_SAMPLES", "MissingPacketsError", "PacketError", "PacketEvents",
           "PacketFileNotFoundError", "PixelLookup", "TRIGGER_PACKET", "build_pixel_lookup", "clock_to_grid_us",
           "file_kind", "load_packets", "load_target", "parse_event_t0", "read_packets", "readout_pixels"]
