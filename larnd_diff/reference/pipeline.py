"""The reference forward pass: quench -> drift -> per event, per chunk: pixels -> induced current -> front end."""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..detector import resolve_detector
from ..hits import N_BACKTRACK, Hits
from ..params import as_params
from .backtrack import backtrack_samples, segments_per_pixel
from .drift import drift
from .electronics import digitize, front_end
from .induce import accumulate_waveforms, pair_signals, signal_windows
from .pixels import neighbourhood_radius, segment_pixel_pairs, unique_pixels
from .quench import quench
from .rng import create_streams, n_streams
from .scalars import E_CHARGE

PRECISIONS = ("larnd-sim", "float64")
#: Fields of the segment table the simulation reads or writes.
REQUIRED_FIELDS = ("eventID", "x_start", "y_start", "z_start", "x_end", "y_end", "z_end", "x", "y", "z", "dE", "dEdx",
                   "t", "t_start", "t_end", "n_electrons", "long_diff", "tran_diff", "pixel_plane")
#: Pairs per scheduling task of the parallel loop (pair costs vary by orders of magnitude: dynamic balance).
PAIRS_PER_TASK = 16
#: Memory bound of the per-(segment, pixel) signal buffer of one block of pairs.
PAIR_BUFFER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ChunkWaveforms:
    """Pixel waveforms of one processed chunk: current in C/us at ticks n x 0.1 us from the event start."""

    event_id: int
    chunk: int
    pixels: np.ndarray      # (n, 2) (I, J), sorted
    waveforms: np.ndarray   # (n, n_ticks_event) float64
    rows: np.ndarray        # rows of the input table simulated in this chunk


def stream_seed(seed: int, event_index: int) -> np.uint64:
    """numba xoroshiro128+ seed of one event: the event index (larnd-sim) offset by seed x 2^32."""
    return np.uint64(((int(seed) << 32) + int(event_index)) % 2**64)


def promote_to_float64(segments: np.ndarray) -> np.ndarray:
    """Copy with every floating-point field widened to float64 (so drifted times and sigmas stay double)."""
    dtype = np.dtype([(name, np.float64 if segments.dtype[name].kind == "f" else segments.dtype[name])
                      for name in segments.dtype.names])
    return segments.astype(dtype)


@dataclass(frozen=True)
class ChunkPairs:
    """Host plan of one chunk's induced current: its (segment, pixel) pairs and where their signals go."""

    pixels: np.ndarray      # (n, 2) unique pixels (I, J), sorted; the waveform rows
    pair_seg: np.ndarray    # segment of each pair
    pair_row: np.ndarray    # pixel row of each pair
    centres: np.ndarray     # (n_pairs, 2) centre (x, y) cm of each pair's pixel
    z_anode: np.ndarray     # anode z (cm) of each segment's plane, NaN outside every TPC
    start_tick: np.ndarray  # tick of each segment's signal window start
    time_max: int           # ticks of every signal window
    n_stored: int           # ticks stored per waveform: past the last placed signal they stay zero


def chunk_pairs(segs, det, vdrift) -> ChunkPairs:
    """The (segment, pixel) pairs of one chunk and their signal windows (the same plan for the CPU and the CUDA
    kernels); no pair: empty arrays and no ticks."""
    pitch = det.pixel_pitch
    borders = det.tpc_borders
    plane = segs["pixel_plane"].astype(np.int64)
    plane = np.where(plane < det.n_tpcs, plane, -1)    # u4 0xFFFFFFFF = outside every TPC
    radius = neighbourhood_radius(np.max(segs["tran_diff"]), pitch)
    pair_seg, pair_pix = segment_pixel_pairs(
        segs["x_start"], segs["y_start"], segs["x_end"], segs["y_end"], plane,
        np.ascontiguousarray(borders[:, 0, 0]), np.ascontiguousarray(borders[:, 1, 0]), pitch,
        det.n_pixels[0], det.n_pixels[1], det.n_tpcs, radius)
    uniq, pair_row = unique_pixels(pair_pix)
    z_anode = np.where(plane >= 0, borders[np.maximum(plane, 0), 2, 0], np.nan)
    if len(uniq) == 0:
        return ChunkPairs(uniq, pair_seg, pair_row, np.zeros((0, 2)), z_anode, np.zeros(0, np.int64), 0, 0)
    dt = det.t_sampling
    track_starts, time_max = signal_windows(segs["t_start"].astype(np.float64), segs["t_end"].astype(np.float64),
                                            vdrift, dt, det.time_padding, det.time_interval[1])
    start_tick = np.rint(track_starts / dt).astype(np.int64)
    x_c, y_c = det.pixel_center(uniq[:, 0], uniq[:, 1])
    n_stored = int(min(det.n_ticks_event, start_tick.max() + time_max))
    return ChunkPairs(uniq, pair_seg, pair_row, np.stack([x_c, y_c], axis=1)[pair_row], z_anode, start_tick,
                      int(time_max), n_stored)


def chunk_waveforms(segs, det, vdrift, single):
    """Unique pixels (n, 2), their waveforms (n, n_stored) and the (pair row, pair segment) lists of one chunk."""
    plan = chunk_pairs(segs, det, vdrift)
    pair_seg, pair_row = plan.pair_seg, plan.pair_row
    if len(plan.pixels) == 0:
        return plan.pixels, np.zeros((0, det.n_ticks_event)), pair_row, pair_seg
    waveforms = np.zeros((len(plan.pixels), plan.n_stored))
    n_e = segs["n_electrons"].astype(np.float64)
    block = max(1, PAIR_BUFFER_BYTES // (8 * max(plan.time_max, 1)))   # bounds the (pairs, ticks) buffer
    for b0 in range(0, len(pair_seg), block):
        sl = slice(b0, b0 + block)
        with numba.parallel_chunksize(PAIRS_PER_TASK):
            signals, n_live = pair_signals(
                pair_seg[sl], np.ascontiguousarray(plan.centres[sl]), segs["x_start"], segs["y_start"],
                segs["z_start"], segs["x_end"], segs["y_end"], segs["z_end"], segs["tran_diff"], segs["long_diff"],
                n_e, segs["t_start"], plan.z_anode, det.pixel_pitch, vdrift, det.t_sampling, det.time_padding,
                det.sampled_points, plan.time_max, single)
        accumulate_waveforms(waveforms, signals, n_live, pair_row[sl], pair_seg[sl], plan.start_tick)
    return plan.pixels, waveforms, pair_row, pair_seg


def prepare(segments, detector, params, precision):
    """Check the input, quench and drift every segment: ``(detector, vdrift, drifted segments, single)``.

    ``single`` is True for larnd-sim's float32 map; "float64" widens the float fields first.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    det = resolve_detector(detector)
    p = as_params(params, nominal=det.nominal)
    segments = np.asarray(segments)
    missing = [f for f in REQUIRED_FIELDS if segments.dtype.names is None or f not in segments.dtype.names]
    if missing:
        raise KeyError(f"segments lack the field(s) {missing}; expected a structured array with the fields of "
                       "larnd_diff.io.SEGMENT_DTYPE (simulation frame, z = drift axis)")
    single = precision == "larnd-sim"
    if not single:
        segments = promote_to_float64(segments)
    return det, float(p.vdrift_value), drift(quench(segments, p, detector=det), det, p), single


def chunks(drifted, chunk_size, progress: bool, desc: str):
    """``(event index, eventID, chunk index, rows, segments)`` in larnd-sim's order: events ascending, then
    consecutive chunks of ``chunk_size`` rows (None = whole events)."""
    events = np.unique(drifted["eventID"])
    it = events
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(events, desc=desc)
        except ImportError:
            pass
    for i_event, ev in enumerate(it):
        rows_ev = np.nonzero(drifted["eventID"] == ev)[0]
        size = len(rows_ev) if chunk_size is None else int(chunk_size)
        for i_chunk, c0 in enumerate(range(0, len(rows_ev), size)):
            rows = rows_ev[c0:c0 + size]
            yield i_event, ev, i_chunk, rows, drifted[rows]


def chunk_hits(event_id, uniq, charges, ticks, pair_row, pair_seg, segs, rows, det, t_hi_pad) -> Hits:
    """Hits of one chunk from its front-end output: charges (C) and trigger ticks per (pixel row, slot).

    Rows without a stored sample are dropped. A conversion that integrated NaN current (a segment parallel to the
    anode, :func:`.scalars.pair_current`; Q) digitises to NaN; larnd-sim's export drops it, so it counts as an empty
    slot here.
    """
    el = det.electronics
    filled = (ticks >= 0) & np.isfinite(charges)
    counts = filled.sum(axis=1)
    keep = counts > 0
    times = np.where(filled, ticks * det.adc_tick_us, np.nan)
    adc = np.where(filled, digitize(np.where(filled, charges, 0.0), el), np.nan)
    track_map = segments_per_pixel(pair_row, pair_seg, len(uniq), N_BACKTRACK)
    bt = backtrack_samples(track_map[keep], np.where(filled, times, 0.0)[keep], counts[keep],
                           segs["t_start"].astype(np.float64), segs["t_end"].astype(np.float64),
                           det.time_padding, t_hi_pad, rows.astype(np.int64))
    charge_e = np.where(filled, charges / E_CHARGE, np.nan)
    return Hits(event_id=np.full(int(keep.sum()), event_id, np.int64), pixel=uniq[keep],
                adc=adc[keep], time=times[keep], charge=charge_e[keep], backtrack=bt)


def simulate(segments, detector=None, params=None, *, noise=False, seed=0, precision="larnd-sim",
             chunk_size=600, progress=False, return_waveforms=False):
    """Simulate the hits of ``segments`` (simulation frame, z = drift axis) with larnd-sim's algorithm.

    Birks quenching and drifting of all rows, then per eventID (ascending) and per ``chunk_size`` consecutive rows
    of the event (``None``: the whole event) independently: pixels, induced current, front end, backtracking.

    Returns :class:`larnd_diff.hits.Hits` with one row per (event, chunk, pixel) with at least one sample, ordered
    by event, chunk, pixel (I, J); times in us from the start of the event (trigger tick x 600/6003), charges in
    electrons, ``backtrack`` = row numbers of ``segments``. With ``return_waveforms`` returns
    ``(hits, [ChunkWaveforms, ...])``, one entry per processed chunk.

    ``precision="larnd-sim"``: the reference's float32 map and FMAs (matches the GPU outputs);
    ``"float64"``: all arithmetic in double (float fields widened to float64, no contractions), the quirks kept.
    ``noise``: 900 e- reset and 500 e- uncorrelated noise from per-pixel-row xoroshiro128+ streams seeded with
    ``seed * 2**32 + event index`` (larnd-sim: the event index, i.e. ``seed=0``); noise off is deterministic.
    """
    det, vdrift, drifted, single = prepare(segments, detector, params, precision)
    el = det.electronics
    dt = det.t_sampling
    parts, waves = [], []
    t_hi_pad = det.time_padding + 0.5 / vdrift
    for i_event, ev, i_chunk, rows, segs in chunks(drifted, chunk_size, progress, "reference"):
        uniq, wf, pair_row, pair_seg = chunk_waveforms(segs, det, vdrift, single)
        if return_waveforms:
            full = np.zeros((len(uniq), det.n_ticks_event))
            full[:, :wf.shape[1]] = wf
            waves.append(ChunkWaveforms(int(ev), i_chunk, uniq, full, rows))
        if len(uniq) == 0:
            continue
        n_rows = len(uniq)
        state = create_streams(n_streams(n_rows), stream_seed(seed, i_event)) if noise else \
            np.zeros((1, 2), np.uint64)
        charges, ticks, counts = front_end(wf, det.n_ticks_event, dt, el.threshold_e, el.integration_ticks(dt),
                                           el.max_adc_values, el.reset_noise_e, el.uncorrelated_noise_e, state,
                                           bool(noise))
        parts.append(chunk_hits(ev, uniq, charges, ticks, pair_row, pair_seg, segs, rows, det, t_hi_pad))
    hits = Hits.concatenate(parts, el.max_adc_values)
    return (hits, waves) if return_waveforms else hits
