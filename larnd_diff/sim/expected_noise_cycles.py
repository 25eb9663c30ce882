"""Tensors of conversion cycles for the expected-noise front end (:mod:`larnd_diff.sim.expected_noise`).

Host side: every cumulative-charge value the cycles read is requested through one :class:`Gather` (one gather
from the (rows x ticks) tensor, so that the backward pass touches it once; a tick's charge is C[n] - C[n - 1]);
cycles are laid out flat (observed cycles: their explicit ticks in one list) or in dense blocks (open cycles:
cycles x explicit ticks, grouped by length), all counts padded to a few sizes. Tensor side: pure kernels of
tensors only (``*_kernel``), compiled by the backend where it prefers compiling (jax: once per padded shape).
"""
from __future__ import annotations

from typing import NamedTuple

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import expected_noise_plan as plan_mod
from larnd_diff.sim.expected_noise_math import baseline_nodes, log1mexp, log_normal_interval, logsumexp

#: log of a probability that is zero (finite, so that gradients stay finite).
LOG_ZERO = -1.0e4
#: Subtracted from padded ticks' charge level (e-): their survival factor is exactly 1.
PAD_E = 1.0e6

_COMPILED = {}


def compiled(kernel, like, static=()):
    """``kernel`` compiled by the tensor's backend where it prefers compiling (cached), else itself."""
    b = ops.get_backend(like)
    if not b.prefers_jit:
        return kernel
    key = (b.name, kernel.__module__, kernel.__name__)
    if key not in _COMPILED:
        _COMPILED[key] = b.jit(kernel, static_argnames=tuple(static))
    return _COMPILED[key]


# ---------------------------------------------------------------------------------------------- gathering
class Charge(NamedTuple):
    """The row tensor's cumulative charge (e-), flattened: C[row, tick] at row * n_stored + tick."""

    cum: ep.Tensor
    n_rows: int
    n_stored: int
    n_total: int


def charge_tensors(charge_per_tick, n_total: int, has_nan: bool = True) -> Charge:
    """:class:`Charge` of an (n_rows, n_stored) tensor (NaN ticks count as zero charge; ``has_nan`` False skips
    that pass over the rows)."""
    clean = ep.where(ep.isnan(charge_per_tick), 0.0, charge_per_tick) if has_nan else charge_per_tick
    n_rows, n_stored = clean.shape
    if n_stored == 0:
        clean = ep.zeros(clean, (n_rows, 1))
        n_stored = 1
    return Charge(ep.reshape(ops.cumsum(clean, axis=1), (-1,)), n_rows, n_stored, int(n_total))


class Gather:
    """Requests of C[row, tick] (0 for tick < 0, the row's total past the stored ticks), answered by one gather:
    :meth:`cum` returns positions in the gathered vector (slot 0 holds a zero)."""

    def __init__(self, ch: Charge):
        self.ch = ch
        self._index = [np.zeros(1, np.int64)]
        self._size = 1

    def cum(self, rows, ticks):
        ticks = np.asarray(ticks)
        rows = np.broadcast_to(np.asarray(rows).reshape(np.shape(rows) + (1,) * (ticks.ndim - np.ndim(rows))),
                               ticks.shape)
        t = self.ch.n_stored
        idx = (rows * t + np.clip(ticks, 0, t - 1)).astype(np.int64)
        pos = self._size + np.arange(idx.size).reshape(idx.shape)
        self._index.append(idx.ravel())
        self._size += idx.size
        return np.where(ticks >= 0, pos, 0)

    def charge(self, rows, ticks):
        """Positions (of C[n], of C[n - 1]) whose difference is q[row, n] (0 outside the stored ticks)."""
        ticks = np.asarray(ticks)
        inside = (ticks >= 0) & (ticks < self.ch.n_stored)
        return self.cum(rows, np.where(inside, ticks, -1)), self.cum(rows, np.where(inside, ticks - 1, -1))

    def values(self, like):
        idx = np.concatenate(self._index)
        idx = np.concatenate([idx, np.zeros(plan_mod.padded_count(len(idx)) - len(idx), np.int64)])
        values = ops.gather(self.ch.cum, ops.asarray(like, idx, "int64"), 0)
        first = ops.asarray(like, (np.arange(len(idx)) > 0).astype(np.float64), ops.dtype_name(like))
        return values * first


def prepare(charge_per_tick, detector, total_ticks, n_nodes):
    """What the likelihood and the chain start from: (charge tensor, its host copy (numpy float64), the rows'
    windows (expected_noise_plan.row_windows), :class:`Charge`, baseline nodes and log weights as tensors)."""
    x = ep.astensor(charge_per_tick)
    if x.ndim != 2:
        raise ValueError(f"charge_per_tick must be (n_rows, n_ticks), got shape {x.shape}")
    n_total = int(detector.n_ticks_event if total_ticks is None else total_ticks)
    host = _host_value(x)
    win = plan_mod.row_windows(host, n_total)
    ch = charge_tensors(x, n_total, has_nan=bool(np.isnan(host).any()))
    nodes, log_w = baseline_nodes(n_nodes)
    dtype = ops.dtype_name(x)
    return x, host, win, ch, ops.asarray(x, nodes, dtype), ops.asarray(x, log_w, dtype)


def _host_value(x) -> np.ndarray:
    try:
        return np.asarray(ops.to_numpy(ops.stop_gradient(x)), np.float64)
    except Exception as err:  # abstract values (inside jax.jit / tf.function)
        raise ValueError("the expected-noise front end plans its ticks on the host: it needs concrete charge "
                         "values (call it outside jax.jit / tf.function)") from err


def _pad(a, count, fill=0):
    a = np.asarray(a)
    out = np.full((count,) + a.shape[1:], fill, dtype=a.dtype)
    out[:len(a)] = a
    return out


def _tensors(like, dtype, floats: dict, ints: dict):
    out = {k: ops.asarray(like, np.asarray(v, np.float64), dtype) for k, v in floats.items()}
    out.update({k: ops.asarray(like, np.asarray(v, np.int64), "int64") for k, v in ints.items()})
    return out


# ---------------------------------------------------------------------------------------------- layouts
class Block(NamedTuple):
    """Host arrays of open cycles padded to ``count`` entries (padding: row 0, no ticks) and ``width`` explicit
    ticks; ``sigma`` the baseline's sd (e-); ``first`` / ``last`` the row's explicit range."""

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
    width: int

    @property
    def ticks(self) -> np.ndarray:
        return self.lo[:, None] + np.arange(self.width)[None, :]

    @property
    def inside(self) -> np.ndarray:
        return np.arange(self.width)[None, :] < self.length[:, None]


def _few_blocks(like) -> bool:
    """Whether few, more padded blocks beat many: where the backend compiles (one compilation per block width)
    or the tensor is on a GPU (launches, not padded elements, are the cost there)."""
    b = ops.get_backend(like)
    return b.prefers_jit or not b.on_host(like.raw if isinstance(like, ep.Tensor) else like)


def blocks(cycles: plan_mod.Cycles, win: plan_mod.RowWindows, fee, like=None):
    """[(cycle indices, Block), ...] of open cycles grouped by explicit length (widths of
    expected_noise_plan.WIDTH_LADDER, or its coarse version where :func:`_few_blocks`)."""
    sigma = np.where(cycles.reset, fee.reset_noise_e, fee.uncorrelated_noise_e)
    fields = dict(rows=cycles.row, start=cycles.start, sigma=sigma, head=cycles.head, first=win.first[cycles.row],
                  last=win.last[cycles.row], lo=cycles.lo, length=cycles.length, tail=cycles.tail)
    fills = dict(start=win.n_total, sigma=fee.reset_noise_e)
    ladder = plan_mod.COARSE_WIDTH_LADDER if like is not None and _few_blocks(like) else plan_mod.WIDTH_LADDER
    out = []
    for idx, width in plan_mod.buckets(cycles.length, ladder):
        count = plan_mod.padded_count(len(idx))
        padded = {name: _pad(np.asarray(a)[idx], count, fills.get(name, 0)) for name, a in fields.items()}
        out.append((idx, Block(len(idx), width=width, **padded)))
    return out


def _cycle_positions(g: Gather, rows, start, first, conv_ticks, window):
    """Positions of C[start - 1], C[first - 1], C_tot, C[min(n + window, N - 1)], q[n] (two) at conversion ticks
    ``conv_ticks`` (rows' shape, or rows' shape x W)."""
    ch = g.ch
    conv = np.maximum(conv_ticks, 0)
    q_hi, q_lo = g.charge(rows, conv)
    return dict(before=g.cum(rows, start - 1), head=g.cum(rows, first - 1),
                total=g.cum(rows, np.full_like(rows, ch.n_stored - 1)),
                conv_end=g.cum(rows, np.minimum(conv + window, ch.n_total - 1)), q_hi=q_hi, q_lo=q_lo)


def observed_inputs(g: Gather, cycles: plan_mod.Cycles, win: plan_mod.RowWindows, lo_e, hi_e, fee, window):
    """Host arrays of the observed cycles (flat ticks), padded; the kernel's tensors come from
    :func:`to_tensors`."""
    n = len(cycles.row)
    count = plan_mod.padded_count(n)
    trig = np.maximum(cycles.trigger, 0)
    pos = _cycle_positions(g, cycles.row, cycles.start, win.first[cycles.row], trig, window)
    pos["trigger"] = g.cum(cycles.row, trig)
    cycle_of_tick = np.repeat(np.arange(n), cycles.length)
    offsets = np.cumsum(cycles.length) - cycles.length
    tick = cycles.lo[cycle_of_tick] + np.arange(len(cycle_of_tick)) - offsets[cycle_of_tick]
    level = g.cum(cycles.row[cycle_of_tick], tick)
    n_ticks = plan_mod.padded_count(len(tick))
    sigma = np.where(cycles.reset, fee.reset_noise_e, fee.uncorrelated_noise_e)
    floats = dict(sigma=_pad(sigma, count, fee.reset_noise_e), head=_pad(cycles.head, count),
                  tail=_pad(cycles.tail, count), lo=_pad(lo_e, count, fee.threshold_e),
                  hi=_pad(hi_e, count, fee.threshold_e + 1.0),
                  tick_sigma=_pad(sigma[cycle_of_tick], n_ticks, fee.reset_noise_e),
                  tick_pad=_pad(np.zeros(len(tick)), n_ticks, PAD_E))
    ints = dict(cycle_pos=_pad(np.stack([pos[k] for k in ("before", "head", "total", "conv_end", "q_hi", "q_lo",
                                                          "trigger")], axis=1), count),
                tick_pos=_pad(level, n_ticks), tick_cycle=_pad(cycle_of_tick, n_ticks, count))
    return floats, ints


def open_inputs(g: Gather, b: Block, window):
    """Host arrays of a block of open cycles."""
    ticks = b.ticks
    pos = _cycle_positions(g, b.rows, b.start, b.first, ticks, window)
    floats = dict(sigma=b.sigma, head=b.head, tail=b.tail, pad=np.where(b.inside, 0.0, PAD_E),
                  pad_log=np.where(b.inside, 0.0, LOG_ZERO))
    ints = dict(cycle_pos=np.stack([pos[k] for k in ("before", "head", "total")], axis=1),
                tick_pos=np.stack([g.cum(b.rows, ticks), pos["conv_end"], pos["q_hi"], pos["q_lo"]], axis=1))
    return floats, ints


def to_tensors(like, dtype, host):
    floats, ints = host
    return _tensors(like, dtype, floats, ints)


# ---------------------------------------------------------------------------------------------- kernels
def _take(values, positions):
    return ops.gather(values, positions, 0)


def observed_kernel(values, d, x_nodes, log_w, *, thr, sigma_d):
    """log P(first trigger of each observed cycle at its tick, stored with its count), (count,): survival over
    head, explicit ticks and tail, the trigger factor and the count's probability, per node, summed."""
    inv = 1.0 / sigma_d
    c = _take(values, d["cycle_pos"])                           # (n, 7)
    before = c[:, 0]
    count = before.shape[0]
    baseline = d["sigma"][:, None] * x_nodes[None, :]
    u = (thr - baseline) * inv
    log_surv = d["head"][:, None] * ops.log_ndtr(u - ((c[:, 1] - before) * inv)[:, None])
    log_surv = log_surv + d["tail"][:, None] * ops.log_ndtr(u - ((c[:, 2] - before) * inv)[:, None])
    level = _take(values, d["tick_pos"]) - _take(before, ops.cast(ep.minimum(d["tick_cycle"], count - 1), "int64"))
    u_tick = (thr - d["tick_sigma"][:, None] * x_nodes[None, :]) * inv
    log_phi = ops.log_ndtr(u_tick - ((level - d["tick_pad"]) * inv)[:, None])
    log_surv = log_surv + ops.segment_sum(log_phi, d["tick_cycle"], count + 1)[:count]
    log_fire = ops.log_ndtr(((c[:, 6] - before) * inv)[:, None] - u)
    mean = baseline + (c[:, 3] - before + c[:, 4] - c[:, 5])[:, None]
    log_adc = log_normal_interval((d["lo"][:, None] - mean) * inv, (d["hi"][:, None] - mean) * inv)
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


def open_cycles(values, d, x_nodes, *, thr, sigma_d) -> Open:
    inv = 1.0 / sigma_d
    c = _take(values, d["cycle_pos"])                           # (P, 3)
    t = _take(values, d["tick_pos"])                            # (P, 4, W)
    before = c[:, 0]
    baseline = d["sigma"][:, None] * x_nodes[None, :]
    u = (thr - baseline) * inv
    level = (t[:, 0] - before[:, None] - d["pad"]) * inv       # (P, W)
    log_phi = ops.log_ndtr(u[:, None, :] - level[:, :, None])
    log_head = d["head"][:, None] * ops.log_ndtr(u - ((c[:, 1] - before) * inv)[:, None])
    tail_level = c[:, 2] - before
    log_tail_tick = ops.log_ndtr(u - (tail_level * inv)[:, None])
    csum = ops.cumsum(log_phi, axis=1)
    exclusive = csum - log_phi          # rounding ~ eps |csum|: only where the survival is ~exp(-|csum|) anyway
    log_fire = ops.log_ndtr(level[:, :, None] - u[:, None, :])
    log_trig = log_head[:, None, :] + exclusive + log_fire + d["pad_log"][:, :, None]
    log_after = log_head + csum[:, -1]
    tail = d["tail"][:, None]
    log_tail_surv = tail * log_tail_tick
    log_tail_trig = ep.where(tail > 0, log_after + log1mexp(log_tail_surv), LOG_ZERO)
    shift = t[:, 1] - before[:, None] + t[:, 2] - t[:, 3]       # conversion charge minus the baseline (P, W)
    return Open(log_trig, baseline[:, None, :] + shift[:, :, None], log_tail_trig, baseline + tail_level[:, None],
                log_after + log_tail_surv, log_tail_tick)


def open_end_kernel(values, d, x_nodes, log_w, *, thr, sigma_d):
    """log P(no stored sample from the cycle's start to the end of the readout) (P,): no trigger, or a trigger
    whose conversion fails (nothing more is assumed stored after it; see readout_log_likelihood)."""
    op = open_cycles(values, d, x_nodes, thr=thr, sigma_d=sigma_d)
    inv = 1.0 / sigma_d
    log_fail = ops.log_ndtr((thr - op.mean) * inv)
    log_fail_tail = ops.log_ndtr((thr - op.tail_mean) * inv)
    p, w, j = op.log_trig.shape
    fails = logsumexp(ep.reshape(op.log_trig + log_fail + log_w[None, None, :], (p, w * j)), axis=1)
    rest = logsumexp(ep.concatenate([op.log_tail_trig + log_fail_tail, op.log_none], axis=1)
                     + ep.concatenate([log_w, log_w])[None, :], axis=1)
    return logsumexp(ep.stack([fails, rest], axis=1), axis=1)


def scatter_cycles(pieces, n: int, like, tail_shape=()):
    """(n,) + tail_shape tensor from the pieces' outputs [(indices, values (P,) + tail_shape), ...]."""
    if not pieces:
        return ep.zeros(like, (n,) + tuple(tail_shape))
    order = np.concatenate([idx for idx, _ in pieces])
    values = ep.concatenate([v[:len(idx)] for idx, v in pieces], axis=0)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(len(order))
    return ops.gather(values, ops.asarray(like, inverse, "int64"), 0)
