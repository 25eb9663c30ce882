"""Host-side partition of one ``simulate`` call into pieces whose working memory fits ``SimConfig.memory_budget_bytes``.

Two independences make the split exact (:func:`larnd_diff.sim.pipeline.simulate`):

* **chunks** (larnd-sim's 600 consecutive segments of an event, or whole events without chunking) share nothing:
  a pixel touched by two chunks gets two output rows. So the host plan (:func:`larnd_diff.sim.pixels.plan_pairs`)
  is made per *part*, a run of whole chunks in processing order (:func:`segment_parts`); the parts' rows,
  concatenated, are the rows of the plan of the whole call, in the same order, with the same pairs.
* **pixel rows**: the front end of a pixel reads its own waveform only, and the waveform is zero before its
  first pair's window. So the rows of a part are evaluated in *row groups* (:func:`row_groups`), each row on its
  own tick window (from its first charged tick to :data:`TAIL_TICKS` after its last, :func:`row_windows`): the
  dense charge of a group is rows x the group's widest window instead of every row x every tick of the event.

Everything here is NumPy on the host plan; the cost model (bytes per candidate pair of the plan, per cell of the
dense charge, per pair of a group) is measured (``benchmarks/bench_memory.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Tuple

import numpy as np

from larnd_diff.sim import pixels

#: Ticks kept after the last charge of a pixel so that a trigger there can still integrate its 18 ticks.
TAIL_TICKS = 24
#: Peak host memory of ``pixels.plan_pairs`` per candidate (segment, pixel) pair (an active pixel's neighbourhood
#: before the overlap test): its temporaries and the plan it keeps. Measured 190-260 bytes on generated muons.
PLAN_BYTES_PER_CANDIDATE = 256
#: Working memory per (row, tick) cell of a row group's dense charge: the induced charge and its running integral,
#: the front end's host copies and masks and, with gradients, their cotangents (float64; measured).
CELL_BYTES = {"float64": 64, "float32": 48}
#: Working memory per (segment, pixel) pair of a row group besides the kernels' scratch: its stacked inputs and the
#: framework's intermediates of the per-pair glue (forward and gradient).
PAIR_BYTES = 2048
#: Share of the budget for the fused kernels' scratch (rows expanded from the pairs, waveforms on their windows,
#: ``charge._host_groups``); the rest bounds the row groups.
KERNEL_SHARE = 0.25

#: PairPlan fields indexed by pair (the others are per output row, or scalars).
PAIR_ARRAYS = ("seg", "out_row", "x_p", "y_p", "branch", "n_z", "ix0", "nx", "iy0", "ny", "eval_start", "placement",
               "n_win", "nan_pair")
#: PairPlan fields indexed by output row.
ROW_ARRAYS = ("rows", "row_event", "row_chunk")


def candidate_pairs(host, detector) -> np.ndarray:
    """Upper bound of the candidate (segment, pixel) pairs of each segment before the overlap test: the pixels its
    xy projection crosses times the neighbourhood (2R + 1)^2 (R from the largest sigma_T). 0 outside every TPC,
    1 for a segment with non-finite coordinates."""
    pitch = detector.pixel_pitch
    with np.errstate(invalid="ignore", over="ignore"):
        span = np.maximum(np.abs(host["x_end"] - host["x_start"]), np.abs(host["y_end"] - host["y_start"])) / pitch
    crossed = np.where(np.isfinite(span), np.minimum(span, 1e9) + 2.0, 1.0)
    sigma = np.asarray(host["sigma_T"], np.float64)
    sigma_max = float(np.max(np.where(np.isfinite(sigma), sigma, 0.0), initial=0.0))
    side = 2 * pixels.neighbourhood_radius(sigma_max, pitch) + 1
    return np.where(np.asarray(host["plane"]) >= 0, crossed * side * side, 0.0)


def segment_parts(host, detector, chunk_size, budget: float) -> List[np.ndarray]:
    """The segment rows split into parts of consecutive whole chunks (processing order) whose host plan fits
    ``budget`` bytes (:data:`PLAN_BYTES_PER_CANDIDATE` per :func:`candidate_pairs`); a chunk larger than the budget
    is a part of its own. Returns ascending row-index arrays; one part of every row when everything fits."""
    n = len(host["eventID"])
    cost = PLAN_BYTES_PER_CANDIDATE * candidate_pairs(host, detector)
    if n == 0 or cost.sum() <= budget:
        return [np.arange(n)]
    _, chunk, _ = pixels.chunk_index(host["eventID"], chunk_size)
    total = np.cumsum(np.bincount(chunk, cost))
    part_of_chunk = np.zeros(len(total), np.int64)
    start, part = 0, 0
    while start < len(total):
        base = total[start - 1] if start else 0.0
        stop = max(int(np.searchsorted(total, base + budget, side="right")), start + 1)
        part_of_chunk[start:stop] = part
        start, part = stop, part + 1
    part_of_segment = part_of_chunk[chunk]
    order = np.argsort(part_of_segment, kind="stable")
    return np.split(order, np.cumsum(np.bincount(part_of_segment, minlength=part))[:-1])


def subset(host, idx: np.ndarray):
    """The host plan inputs (``pipeline._plan_inputs``) of the segment rows ``idx`` (per-segment arrays indexed,
    scalars kept)."""
    n = len(host["eventID"])
    return {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v) for k, v in host.items()}


def row_windows(plan: pixels.PairPlan, n_ticks_event: int) -> Tuple[np.ndarray, np.ndarray]:
    """(first, width) per output row: the event tick where its earliest pair window starts and the ticks from there
    that its front end reads (to TAIL_TICKS after its last window tick, at most to the event's end; >= 1)."""
    n_rows = len(plan.rows)
    first = np.full(n_rows, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, plan.out_row, plan.placement)
    last = np.zeros(n_rows, np.int64)
    np.maximum.at(last, plan.out_row, plan.placement + plan.n_win)
    first = np.minimum(first, last)
    return first, np.maximum(np.minimum(last + TAIL_TICKS, n_ticks_event) - first, 1)


@dataclasses.dataclass(frozen=True)
class PartPlan:
    """The host plan of one part with what its row groups need: ``plan`` (segments numbered as in the call),
    ``pair_consts`` (rows of ``pipeline._pair_constants``), the rows' windows ``first``, ``width``
    (:func:`row_windows`) and the pairs grouped by output row: ``by_row`` lists the pair indices sorted by
    (row, pair), those of row r at ``by_row[row_start[r]:row_start[r + 1]]``."""

    plan: pixels.PairPlan
    pair_consts: np.ndarray
    first: np.ndarray
    width: np.ndarray
    by_row: np.ndarray
    row_start: np.ndarray


def part_plan(plan: pixels.PairPlan, pair_consts: np.ndarray, n_ticks_event: int) -> PartPlan:
    """:class:`PartPlan` of a made plan."""
    first, width = row_windows(plan, n_ticks_event)
    by_row = np.argsort(plan.out_row, kind="stable")
    row_start = np.searchsorted(plan.out_row[by_row], np.arange(len(plan.rows) + 1))
    return PartPlan(plan, pair_consts, first, width, by_row, row_start)


def row_groups(part: PartPlan, budget: float, cell_bytes: float, pair_bytes: float) -> List[Tuple[int, int]]:
    """Consecutive output-row ranges [(r0, r1)] of a part whose dense charge (rows x the widest row window in the
    range, at ``cell_bytes`` a cell) and pairs (``pair_bytes`` each) fit ``budget``; a row that alone exceeds it
    is a group of its own."""
    width, pairs_before = part.width, part.row_start
    n_rows = len(width)
    groups, r0 = [], 0
    while r0 < n_rows:
        widest = np.maximum.accumulate(width[r0:])
        cost = cell_bytes * np.arange(1, len(widest) + 1) * widest + pair_bytes * (pairs_before[r0 + 1:] -
                                                                                   pairs_before[r0])
        r1 = r0 + max(int(np.searchsorted(cost, budget, side="right")), 1)   # cost grows with the range
        groups.append((r0, r1))
        r0 = r1
    return groups


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One row group in its own coordinates: ``plan`` holds the group's pairs (in the order of the part's plan)
    with output rows 0..n_rows-1 and placements on the rows' own tick windows; ``pair_consts`` their constants;
    ``first`` (n_rows,) the event tick of each row's tick 0 and ``width`` its ticks that matter; ``n_ticks`` the
    group's tick axis (its widest row)."""

    plan: pixels.PairPlan
    pair_consts: np.ndarray
    first: np.ndarray
    width: np.ndarray
    n_ticks: int


def group_plan(part: PartPlan, r0: int, r1: int) -> GroupPlan:
    """The rows [r0, r1) of a part and their pairs as a :class:`GroupPlan`."""
    plan = part.plan
    pairs = np.sort(part.by_row[part.row_start[r0]:part.row_start[r1]])
    local = plan.out_row[pairs] - r0
    first, width = part.first[r0:r1], part.width[r0:r1]
    fields = {k: getattr(plan, k)[pairs] for k in PAIR_ARRAYS}
    fields.update({k: getattr(plan, k)[r0:r1] for k in ROW_ARRAYS})
    fields.update(out_row=local, placement=plan.placement[pairs] - first[local])
    return GroupPlan(dataclasses.replace(plan, **fields), part.pair_consts[pairs], first, width,
                     int(width.max()) if len(width) else 1)


class PartPlans:
    """The :class:`PartPlan` of a call's parts, made on demand by ``make(rows)`` (rows: ascending segment indices);
    the latest one is kept, since a part's row groups are evaluated one after the other (forward, and in reverse
    when the gradient recomputes them). ``first``: an already made plan of part 0."""

    def __init__(self, parts: List[np.ndarray], make: Callable, first=None):
        self.parts = parts
        self._make = make
        self._kept = (0, first) if first is not None else (None, None)

    def __len__(self) -> int:
        return len(self.parts)

    def __call__(self, k: int):
        if self._kept[0] != k:
            self._kept = (None, None)            # let the previous part's plan go before making the next
            self._kept = (k, self._make(self.parts[k]))
        return self._kept[1]


__all__ = ["TAIL_TICKS", "PLAN_BYTES_PER_CANDIDATE", "CELL_BYTES", "PAIR_BYTES", "KERNEL_SHARE", "PartPlan",
           "GroupPlan", "PartPlans", "candidate_pairs", "segment_parts", "subset", "row_windows", "part_plan",
           "row_groups", "group_plan"]
