"""Host plan of the expected-noise front end (:mod:`larnd_diff.sim.expected_noise`): which ticks of each pixel row
are evaluated tick by tick, and the conversion cycles to evaluate.

Integer structure only, from detached float64 values (like the simulator's pair plan): the arithmetic on these
ticks runs on the tensors' backend. Per row, with C the cumulative charge (electrons) and C_tot its last value:

head      ticks before ``first`` (the first tick where C reaches ``HEAD_CHARGE_E``): flat at C[first - 1]
explicit  ticks first..last, one survival factor each
tail      ticks after ``last`` (C within ``FLAT_TOLERANCE_E`` of C_tot before them) up to the total tick count
          (6003 in larnd-sim, beyond the simulator's stored ticks): flat at C_tot, a power of one factor

A conversion cycle starting at tick s sees the charge since s; it is described by its head tick count, its run of
explicit ticks (``lo``, ``length``) and its tail tick count. Restarts after the last tick where at least
``RESTART_CHARGE_E`` of charge is still to come are absorbing (no trigger is possible any more).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Cumulative charge (e-) below which ticks count as flat at the head level: with at most this much charge a tick
#: triggers with probability < 3e-10 per tick (900 e- baseline, 500 e- per-tick noise, 7 ke- threshold).
HEAD_CHARGE_E = 1000.0
#: Charge (e-) still to come below which the rest of a row is treated as flat at its total charge.
FLAT_TOLERANCE_E = 1.0
#: Charge (e-) still to come below which a restart is absorbing (trigger probability < 1e-8 over 6000 ticks).
RESTART_CHARGE_E = 1000.0
#: Noise sigmas past the threshold (all baseline nodes included) after which a cycle's survival is < 1e-23: the
#: ticks beyond are not evaluated.
DEAD_SIGMAS = 10.0
#: Widths of the dense (cycles x ticks) blocks: cycles are grouped by explicit length into these.
WIDTH_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: Where each block costs a compilation or kernel launches (jax, GPUs): at most 4x padding, fewer blocks.
COARSE_WIDTH_LADDER = (1, 4, 16, 64, 256, 1024, 4096, 16384)


class RowWindows(NamedTuple):
    """Per row (numpy): first and last explicit tick (last < first: none), last restart tick that can still
    trigger, stored ticks and total ticks; ``cum`` the running maximum of the cumulative charge (n_rows, n_stored),
    non-decreasing (equal to the cumulative charge where no tick is negative)."""

    first: np.ndarray
    last: np.ndarray
    restart_last: np.ndarray
    n_stored: int
    n_total: int
    cum: np.ndarray
    search: tuple


class Cycles(NamedTuple):
    """Conversion cycles to evaluate (numpy, one entry per cycle).

    row, start      pixel row and first tick of the cycle
    reset           True: 900 e- reset baseline (start, after a stored sample); False: 500 e- (after a failure)
    head            ticks before ``lo`` flat at the head level (C[first - 1] - C[start - 1])
    lo, length      explicit ticks lo .. lo + length - 1
    tail            ticks after them flat at C_tot - C[start - 1]
    trigger         observed trigger tick (the tick after the evaluated ones) or -1 for an open cycle (every
                    trigger tick evaluated, to the end of the readout)
    """

    row: np.ndarray
    start: np.ndarray
    reset: np.ndarray
    head: np.ndarray
    lo: np.ndarray
    length: np.ndarray
    tail: np.ndarray
    trigger: np.ndarray


def row_windows(charge: np.ndarray, n_total: int, head_e: float = HEAD_CHARGE_E,
                flat_e: float = FLAT_TOLERANCE_E, restart_e: float = RESTART_CHARGE_E) -> RowWindows:
    """Explicit tick range and restart range of each row of ``charge`` (n_rows, n_stored) electrons per tick."""
    n_rows, n_stored = charge.shape
    if n_stored > n_total:
        raise ValueError(f"the charge has {n_stored} ticks, more than the total tick count {n_total}")
    q = np.asarray(charge, np.float64)
    if np.isnan(q).any():
        q = np.nan_to_num(q, nan=0.0)
    cum = np.cumsum(q, axis=1) if n_stored else np.zeros((n_rows, 0))
    if n_stored and (q < 0).any():
        cum = np.maximum.accumulate(cum, axis=1)
    total = cum[:, -1] if n_stored else np.zeros(n_rows)
    # rows laid end to end, each offset by a bound on the values: one binary search answers every row's query
    scale = 4.0 * (np.max(np.abs(cum), initial=0.0) + max(head_e, restart_e) + 1e5)
    search = ((cum + scale * np.arange(n_rows)[:, None]).ravel(), scale, n_rows, n_stored)
    rows = np.arange(n_rows)
    first = _first_at_least(search, np.full(n_rows, head_e), rows)
    # the tail starts after the last tick that carries charge (a tail trigger's own tick counts twice)
    last_charged = _first_at_least(search, total - flat_e, rows)
    last = np.maximum(last_charged, first - 1)
    # restart at s can trigger when C_tot - C[s - 1] >= restart_e, i.e. C[s - 1] <= C_tot - restart_e
    restart_last = _first_at_least(search, total - restart_e + 1e-6, rows)   # s - 1 < that index
    restart_last = np.minimum(restart_last, last)
    return RowWindows(first.astype(np.int64), last.astype(np.int64), restart_last.astype(np.int64), n_stored,
                      int(n_total), cum, search)


def _first_at_least(search, target: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """First column where row ``rows`` of the cumulative charge (non-decreasing) reaches ``target`` (|target|
    below RowWindows.search's offset); n_stored if none."""
    flat, scale, n_rows, n_cols = search
    if n_cols == 0 or len(rows) == 0:
        return np.zeros(len(rows), np.int64)
    found = np.searchsorted(flat, target + scale * rows, side="left") - rows * n_cols
    return np.clip(found, 0, n_cols).astype(np.int64)


def dead_end(win: RowWindows, rows: np.ndarray, start: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             reach_e: np.ndarray) -> np.ndarray:
    """Last explicit tick worth evaluating per cycle: the first tick in lo..hi where the charge since ``start``
    exceeds ``reach_e`` (threshold + highest baseline node + DEAD_SIGMAS noise sigmas; beyond it no node
    survives), else hi."""
    n_cols = win.n_stored
    if len(rows) == 0 or n_cols == 0:
        return hi.copy()
    before = np.where(start > 0, win.cum[rows, np.clip(start - 1, 0, n_cols - 1)], 0.0)
    where = _first_at_least(win.search, before + reach_e, rows)
    return np.clip(np.minimum(where, hi), lo - 1, hi)


def observed_cycles(win: RowWindows, obs_tick: np.ndarray, max_samples: int = 10):
    """Cycles of the log-likelihood: one per observed sample (start = 0 or previous trigger + 21, 900 e- baseline,
    evaluated up to the tick before its trigger) and one open cycle per row after its last sample (none after
    ``max_samples``: the front end stops there).

    Returns (cycles, possible): ``possible`` (n_rows,) False where the observed ticks cannot come from the model
    (decreasing, closer than 21 ticks, beyond the readout, more than ``max_samples``)."""
    n_rows, k = obs_tick.shape
    ticks = np.asarray(obs_tick, np.int64)
    filled = ticks >= 0
    count = filled.sum(axis=1)
    contiguous = np.all(filled == (np.arange(k)[None, :] < count[:, None]), axis=1)
    prev = np.concatenate([np.full((n_rows, 1), -21), ticks[:, :-1]], axis=1)
    ok_step = ~filled | (ticks >= prev + 21)
    possible = contiguous & ok_step.all(axis=1) & np.all(~filled | (ticks < win.n_total), axis=1) & \
        (count <= max_samples)
    r_obs, k_obs = np.nonzero(filled & possible[:, None])
    start_obs = np.where(k_obs > 0, ticks[r_obs, np.maximum(k_obs - 1, 0)] + 21, 0)
    trig_obs = ticks[r_obs, k_obs]
    last_tick = np.where(count > 0, ticks[np.arange(n_rows), np.maximum(count - 1, 0)], -21)
    start_end = np.where(possible & (count < max_samples), last_tick + 21, win.n_total)
    rows = np.concatenate([r_obs, np.arange(n_rows)])
    starts = np.concatenate([start_obs, start_end])
    triggers = np.concatenate([trig_obs, np.full(n_rows, -1)])
    return cycle_spans(win, rows, starts, np.ones(len(rows), bool), triggers), possible


def cycle_spans(win: RowWindows, rows, starts, reset, triggers, hi=None) -> Cycles:
    """Head / explicit / tail decomposition of cycles (row, start, trigger): evaluated ticks are start .. trigger - 1
    for an observed trigger, start .. n_total - 1 for an open cycle (trigger -1); explicit ones at most to ``hi``
    (default the row's last explicit tick)."""
    rows = np.asarray(rows, np.int64)
    starts = np.asarray(starts, np.int64)
    triggers = np.asarray(triggers, np.int64)
    end = np.where(triggers >= 0, triggers - 1, win.n_total - 1)       # last evaluated tick
    first, last = win.first[rows], win.last[rows]
    hi = last if hi is None else np.minimum(hi, last)
    head = np.clip(np.minimum(first, end + 1) - starts, 0, None)
    lo = np.maximum(starts, first)
    length = np.clip(np.minimum(hi, end) - lo + 1, 0, None)
    tail = np.clip(end - np.maximum(starts, last + 1) + 1, 0, None)
    return Cycles(rows, starts, np.asarray(reset, bool), head, lo, length, tail, triggers)


def buckets(length: np.ndarray, ladder=WIDTH_LADDER):
    """Groups of cycles by explicit length: [(indices, width), ...] with every length <= its width."""
    length = np.asarray(length)
    widths = np.asarray(ladder)
    if len(length) and length.max() > widths[-1]:
        raise ValueError(f"a cycle spans {length.max()} explicit ticks, more than the largest block {widths[-1]}")
    slot = np.searchsorted(widths, length, side="left")
    return [(np.flatnonzero(slot == i), int(w)) for i, w in enumerate(widths) if np.any(slot == i)]


def padded_count(n: int, multiple: int = 64) -> int:
    """Cycle counts padded to few distinct sizes (compiled backends see few shapes): the next power of two below
    ``multiple``, else the next multiple of a power of two that keeps the padding under 1/8."""
    if n <= multiple:
        return max(1, 1 << max(0, (n - 1).bit_length()))
    step = max(multiple, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step
