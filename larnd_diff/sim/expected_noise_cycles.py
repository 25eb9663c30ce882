"""Tensors of conversion cycles for the expected-noise front end (:mod:`larnd_diff.sim.expected_noise`).

Cycles (expected_noise_plan.Cycles) are evaluated in dense blocks (cycles x explicit ticks x baseline nodes),
grouped by their number of explicit ticks. Every cumulative-charge and charge value the blocks read is gathered
from the row tensors in one call each (a trailing zero slot stands for ticks before the start), so that the
backward pass touches the (rows x ticks) tensors twice, not once per block.
"""
from __future__ import annotations

from typing import NamedTuple

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import expected_noise_plan as plan_mod

#: log of a probability that is zero (finite, so that gradients stay finite).
LOG_ZERO = -1.0e4
#: Subtracted from padded ticks' charge level (e-): their survival factor is exactly 1.
_PAD_E = 1.0e6


class Charge(NamedTuple):
    """Row tensors flattened, each with one trailing zero: cumulative charge and charge per tick (e-)."""

    cum: ep.Tensor
    charge: ep.Tensor
    n_rows: int
    n_stored: int
    n_total: int

    @property
    def zero(self) -> int:
        return self.n_rows * self.n_stored

    def cum_index(self, rows, ticks):
        """Index of C[row, tick]: the zero slot for tick < 0, the row's total for tick >= n_stored."""
        t = self.n_stored
        return np.where(ticks < 0, self.zero, rows * t + np.clip(ticks, 0, t - 1)).astype(np.int64)

    def charge_index(self, rows, ticks):
        """Index of q[row, tick]: the zero slot outside the stored ticks."""
        t = self.n_stored
        inside = (ticks >= 0) & (ticks < t)
        return np.where(inside, rows * t + np.clip(ticks, 0, t - 1), self.zero).astype(np.int64)


def charge_tensors(charge_per_tick, n_total: int, has_nan: bool = True) -> Charge:
    """:class:`Charge` of an (n_rows, n_stored) tensor (NaN ticks count as zero charge; ``has_nan`` False skips
    that pass over the rows)."""
    clean = ep.where(ep.isnan(charge_per_tick), 0.0, charge_per_tick) if has_nan else charge_per_tick
    n_rows, n_stored = clean.shape
    if n_stored == 0:
        clean = ep.zeros(clean, (n_rows, 1))
        n_stored = 1
    zero = ep.zeros(clean, (1,))
    cum = ep.concatenate([ep.reshape(ops.cumsum(clean, axis=1), (-1,)), zero], axis=0)
    return Charge(cum, ep.concatenate([ep.reshape(clean, (-1,)), zero], axis=0), n_rows, n_stored, int(n_total))


class Block(NamedTuple):
    """Host arrays of a block of cycles, padded to ``count`` entries (padding: row 0, no ticks) and ``width``
    explicit ticks; ``sigma`` the baseline's sd (e-), ``first`` / ``last`` the row's explicit range."""

    real: int
    rows: np.ndarray
    start: np.ndarray
    sigma: np.ndarray
    head: np.ndarray
    first: np.ndarray
    last: np.ndarray
    lo: np.ndarray
    length: np.ndarray
    tail: np.ndarray
    trigger: np.ndarray
    width: int

    @property
    def ticks(self) -> np.ndarray:
        return self.lo[:, None] + np.arange(self.width)[None, :]

    @property
    def inside(self) -> np.ndarray:
        return np.arange(self.width)[None, :] < self.length[:, None]


def blocks(cycles: plan_mod.Cycles, win: plan_mod.RowWindows, fee):
    """[(cycle indices, Block), ...] grouped by explicit length."""
    sigma = np.where(cycles.reset, fee.reset_noise_e, fee.uncorrelated_noise_e)
    fields = dict(rows=cycles.row, start=cycles.start, sigma=sigma, head=cycles.head, first=win.first[cycles.row],
                  last=win.last[cycles.row], lo=cycles.lo, length=cycles.length, tail=cycles.tail,
                  trigger=cycles.trigger)
    fills = dict(start=win.n_total, sigma=fee.reset_noise_e, trigger=-1)
    out = []
    for idx, width in plan_mod.buckets(cycles.length):
        count = plan_mod.padded_count(len(idx))
        padded = {}
        for name, a in fields.items():
            full = np.full(count, fills.get(name, 0), dtype=np.asarray(a).dtype)
            full[:len(idx)] = np.asarray(a)[idx]
            padded[name] = full
        out.append((idx, Block(len(idx), width=width, **padded)))
    return out


class Requests:
    """Host index arrays of cumulative-charge and charge values, gathered in one call each (:meth:`run`)."""

    def __init__(self, ch: Charge):
        self.ch = ch
        self._parts = {"cum": [], "charge": []}
        self._size = {"cum": 0, "charge": 0}

    def cum(self, rows, ticks):
        return self._add("cum", self.ch.cum_index(rows, ticks))

    def charge(self, rows, ticks):
        return self._add("charge", self.ch.charge_index(rows, ticks))

    def _add(self, kind, idx):
        key = (kind, self._size[kind], idx.shape)
        self._parts[kind].append(idx.ravel())
        self._size[kind] += idx.size
        return key

    def run(self, like):
        self._values = {}
        for kind, source in (("cum", self.ch.cum), ("charge", self.ch.charge)):
            if self._parts[kind]:
                idx = ops.asarray(like, np.concatenate(self._parts[kind]), "int64")
                self._values[kind] = ops.gather(source, idx, 0)
        return self

    def get(self, key):
        kind, offset, shape = key
        n = int(np.prod(shape))
        return ep.reshape(self._values[kind][offset:offset + n], shape)


class Tensors(NamedTuple):
    """Gathered values of a set of cycles (tensors, e-): ``before`` = C[start - 1] (P,), the head's and the tail's
    charge since the start (P,), the explicit ticks' charge since the start ((P, W) for a block, padded ticks far
    below zero; (n_ticks,) flat), the observed trigger tick's (P,) (observed cycles) and the conversion's charge
    minus the baseline, C[min(n + 18, N - 1)] - C[start - 1] + q[n] (the trigger tick counted twice): (P,) at the
    observed trigger, (P, W) at every explicit tick of open cycles."""

    before: ep.Tensor
    head_level: ep.Tensor
    tail_level: ep.Tensor
    level: ep.Tensor
    trigger_level: ep.Tensor | None
    conversion: ep.Tensor


def _cycle_requests(req: Requests, rows, start, first, conv_ticks, window, trigger=None):
    ch = req.ch
    rows2 = np.broadcast_to(rows.reshape((-1,) + (1,) * (conv_ticks.ndim - 1)), conv_ticks.shape)
    keys = dict(before=req.cum(rows, start - 1), head=req.cum(rows, first - 1),
                total=req.cum(rows, np.full_like(rows, ch.n_stored - 1)),
                conv_end=req.cum(rows2, np.minimum(conv_ticks + window, ch.n_total - 1)),
                conv_q=req.charge(rows2, conv_ticks))
    if trigger is not None:
        keys["trigger"] = req.cum(rows, trigger)
    return keys


def _cycle_tensors(req: Requests, keys, level, level_before, observed: bool) -> Tensors:
    g = {k: req.get(v) for k, v in keys.items()}
    before = g["before"]
    conversion = g["conv_end"] - (before if observed else before[:, None]) + g["conv_q"]
    return Tensors(before, g["head"] - before, g["total"] - before, level - level_before,
                   g["trigger"] - before if observed else None, conversion)


def gather_blocks(ch: Charge, blks, window: int, like, dtype: str, flat=None):
    """:class:`Tensors` of each open-cycle block of ``blks`` [(idx, Block), ...] and, with ``flat`` (a
    :class:`Flat` of observed cycles), of those too (returned last): one gather of cumulative charges and one
    of charges for all of them."""
    req = Requests(ch)
    plans = []
    for _, b in blks:
        ticks = b.ticks
        keys = _cycle_requests(req, b.rows, b.start, b.first, np.maximum(ticks, 0), window)
        plans.append((keys, req.cum(np.broadcast_to(b.rows[:, None], ticks.shape), ticks)))
    if flat is not None:
        trig = np.maximum(flat.trigger, 0)
        flat_keys = _cycle_requests(req, flat.rows, flat.start, flat.first, trig, window, trigger=trig)
        flat_level = req.cum(flat.rows[flat.cycle_of_tick], flat.tick)
    if not plans and flat is None:
        return []
    req.run(like)
    out = []
    for (keys, level_key), (_, b) in zip(plans, blks):
        pad = ops.asarray(like, np.where(b.inside, 0.0, _PAD_E), dtype)
        before = req.get(keys["before"])
        out.append(_cycle_tensors(req, keys, req.get(level_key) - pad, before[:, None], observed=False))
    if flat is not None:
        before = req.get(flat_keys["before"])
        before_t = ops.gather(before, ops.asarray(like, flat.cycle_of_tick, "int64"), 0)
        out.append(_cycle_tensors(req, flat_keys, req.get(flat_level), before_t, observed=True))
    return out


class Flat(NamedTuple):
    """Observed cycles with their explicit ticks in one flat list (no padding): per cycle row, start, sigma,
    head, first, tail, trigger (host, (n,)); per explicit tick its cycle and tick (host, (n_ticks,))."""

    rows: np.ndarray
    start: np.ndarray
    sigma: np.ndarray
    head: np.ndarray
    first: np.ndarray
    tail: np.ndarray
    trigger: np.ndarray
    cycle_of_tick: np.ndarray
    tick: np.ndarray


def flat_cycles(cycles: plan_mod.Cycles, win: plan_mod.RowWindows, fee) -> Flat:
    n = len(cycles.row)
    cycle_of_tick = np.repeat(np.arange(n), cycles.length)
    offsets = np.cumsum(cycles.length) - cycles.length
    tick = cycles.lo[cycle_of_tick] + np.arange(len(cycle_of_tick)) - offsets[cycle_of_tick]
    sigma = np.where(cycles.reset, fee.reset_noise_e, fee.uncorrelated_noise_e).astype(np.float64)
    return Flat(cycles.row, cycles.start, sigma, cycles.head, win.first[cycles.row], cycles.tail, cycles.trigger,
                cycle_of_tick.astype(np.int64), tick.astype(np.int64))


class Nodes(NamedTuple):
    """Baseline nodes of a set of cycles: R (P, J) in e-, u = (thr - R) / sigma_d (P, J), the standard nodes x."""

    baseline: ep.Tensor
    u: ep.Tensor
    x: ep.Tensor


def block_nodes(b, x_nodes, fee, like, dtype) -> Nodes:
    """:class:`Nodes` of a :class:`Block` or :class:`Flat` (anything with ``sigma``)."""
    baseline = ops.asarray(like, b.sigma.astype(np.float64), dtype)[:, None] * x_nodes[None, :]
    return Nodes(baseline, (fee.threshold_e - baseline) * (1.0 / fee.uncorrelated_noise_e), x_nodes)


def log_survival_pieces(t: Tensors, b: Block, nd: Nodes, fee, like, dtype):
    """(log Phi(z) at each explicit tick (P, W, J), the head's log survival (P, J), the tail's per-tick log
    survival (P, J)), z = (thr - R - level) / sigma_d."""
    inv = 1.0 / fee.uncorrelated_noise_e
    log_phi = ops.log_ndtr(nd.u[:, None, :] - (t.level * inv)[:, :, None])
    head = ops.asarray(like, b.head.astype(np.float64), dtype)[:, None]
    log_head = head * ops.log_ndtr(nd.u - (t.head_level * inv)[:, None])
    log_tail_tick = ops.log_ndtr(nd.u - (t.tail_level * inv)[:, None])
    return log_phi, log_head, log_tail_tick


def observed_log_probability(t: Tensors, f: Flat, nd: Nodes, log_w, lo_e, hi_e, fee, like, dtype):
    """log P(first trigger of the cycle at its observed tick, stored with the observed count) (n,): survival
    over head, explicit ticks and tail, the trigger factor and the count's probability, per node, summed."""
    from larnd_diff.sim.expected_noise import log_normal_interval, logsumexp

    inv = 1.0 / fee.uncorrelated_noise_e
    asarr = lambda a: ops.asarray(like, np.asarray(a, np.float64), dtype)  # noqa: E731
    n = len(f.rows)
    log_surv = asarr(f.head)[:, None] * ops.log_ndtr(nd.u - (t.head_level * inv)[:, None])
    log_surv = log_surv + asarr(f.tail)[:, None] * ops.log_ndtr(nd.u - (t.tail_level * inv)[:, None])
    if len(f.tick):
        u_tick = (fee.threshold_e - asarr(f.sigma[f.cycle_of_tick])[:, None] * nd.x[None, :]) * inv
        log_phi = ops.log_ndtr(u_tick - (t.level * inv)[:, None])
        log_surv = log_surv + ops.segment_sum(log_phi, ops.asarray(like, f.cycle_of_tick, "int64"), n)
    log_fire = ops.log_ndtr((t.trigger_level * inv)[:, None] - nd.u)
    mean = nd.baseline + t.conversion[:, None]
    log_adc = log_normal_interval((asarr(lo_e)[:, None] - mean) * inv, (asarr(hi_e)[:, None] - mean) * inv)
    return logsumexp(log_w[None, :] + log_surv + log_fire + log_adc, axis=1)


class Open(NamedTuple):
    """Open cycles of a block: log P(first trigger at each explicit tick) (P, W, J) (LOG_ZERO on padding), the
    conversion's mean there (P, W, J), log P(first trigger in the tail) (P, J), its conversion mean (P, J),
    log P(no trigger at all) (P, J), the tail's per-tick log survival (P, J)."""

    log_trig: ep.Tensor
    mean: ep.Tensor
    log_tail_trig: ep.Tensor
    tail_mean: ep.Tensor
    log_none: ep.Tensor
    log_tail_tick: ep.Tensor


def open_cycles(t: Tensors, b: Block, nd: Nodes, fee, like, dtype) -> Open:
    from larnd_diff.sim.expected_noise import log1mexp

    inv = 1.0 / fee.uncorrelated_noise_e
    log_phi, log_head, log_tail_tick = log_survival_pieces(t, b, nd, fee, like, dtype)
    csum = ops.cumsum(log_phi, axis=1)
    exclusive = csum - log_phi          # rounding ~ eps |csum|: only where the survival is ~exp(-|csum|) anyway
    log_fire = ops.log_ndtr((t.level * inv)[:, :, None] - nd.u[:, None, :])
    padding = ops.asarray(like, np.where(b.inside, 0.0, LOG_ZERO), dtype)[:, :, None]
    log_trig = log_head[:, None, :] + exclusive + log_fire + padding
    log_after = log_head + csum[:, -1]
    tail = ops.asarray(like, b.tail.astype(np.float64), dtype)[:, None]
    log_tail_surv = tail * log_tail_tick
    log_tail_trig = ep.where(tail > 0, log_after + log1mexp(log_tail_surv), LOG_ZERO)
    mean = nd.baseline[:, None, :] + t.conversion[:, :, None]
    tail_mean = nd.baseline + t.tail_level[:, None]
    return Open(log_trig, mean, log_tail_trig, tail_mean, log_after + log_tail_surv, log_tail_tick)


def open_end_log_probability(t: Tensors, b: Block, nd: Nodes, log_w, fee, like, dtype):
    """log P(no stored sample from the cycle's start to the end of the readout) (P,): no trigger, or a trigger
    whose conversion fails (nothing more is assumed stored after it; see readout_log_likelihood)."""
    from larnd_diff.sim.expected_noise import logsumexp

    op = open_cycles(t, b, nd, fee, like, dtype)
    inv = 1.0 / fee.uncorrelated_noise_e
    log_fail = ops.log_ndtr((fee.threshold_e - op.mean) * inv)
    log_fail_tail = ops.log_ndtr((fee.threshold_e - op.tail_mean) * inv)
    p, w, j = op.log_trig.shape
    fails = logsumexp(ep.reshape(op.log_trig + log_fail + log_w[None, None, :], (p, w * j)), axis=1)
    rest = logsumexp(ep.concatenate([op.log_tail_trig + log_fail_tail, op.log_none], axis=1)
                     + ep.concatenate([log_w, log_w])[None, :], axis=1)
    return logsumexp(ep.stack([fails, rest], axis=1), axis=1)


def scatter_cycles(pieces, n: int, like, tail_shape=()):
    """(n,) + tail_shape tensor from the blocks' outputs [(indices, values (P,) + tail_shape), ...]."""
    if not pieces:
        return ep.zeros(like, (n,) + tuple(tail_shape))
    order = np.concatenate([idx for idx, _ in pieces])
    values = ep.concatenate([v[:len(idx)] for idx, v in pieces], axis=0)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(len(order))
    return ops.gather(values, ops.asarray(like, inverse, "int64"), 0)
