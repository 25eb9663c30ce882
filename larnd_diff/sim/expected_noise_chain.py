"""Markov chain over conversion cycles: the expected readout of the noisy front end (expected_noise.expected_readout).

A cycle is set by its start tick and baseline type (900 e- after a reset, 500 e- after a failed conversion); given
them it is independent of the past. Per row the chain's states are the initial cycle (tick 0, 900 e-) and a
cycle of each type at every restart tick that can still trigger (expected_noise_plan.row_windows); a trigger at
n restarts at n + 21 (stored sample, 900 e-) or n + 20 (failed, 500 e-), restarts after the row's charge are
absorbing. Per sample slot the mass over states is closed under failures (each moves the restart >= 20 ticks
on, so the series terminates: exact), then moved on by the stored samples.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import expected_noise_cycles as cyc
from larnd_diff.sim import expected_noise_math as nmath
from larnd_diff.sim import expected_noise_plan as plan_mod

#: ADC counts are accumulated about this count (moments about a fixed centre, so slots can be summed).
_ADC_CENTRE = 128.0
#: Elements (cycles x explicit ticks x nodes) per chunk of rows.
CHUNK_ELEMENTS = 4_000_000


class ExpectedReadout(NamedTuple):
    """Expected readout per pixel row, each a tensor of the charge's backend and dtype.

    hit_probability   (n_rows,) probability of at least one stored sample
    n_samples_mean    (n_rows,) expected number of stored samples
    n_samples_var     (n_rows,) its variance
    filled            (n_rows, K) probability that sample slot k is filled
    adc_mean          (n_rows, K) mean ADC count of slot k given that it is filled (0 where its probability is
                      below 1e-100, 1e-15 in float32)
    adc_var           (n_rows, K) its variance
    time_mean         (n_rows, K) mean trigger time (us from the event start) given filled
    time_var          (n_rows, K) its variance (us^2)
    """

    hit_probability: ep.Tensor
    n_samples_mean: ep.Tensor
    n_samples_var: ep.Tensor
    filled: ep.Tensor
    adc_mean: ep.Tensor
    adc_var: ep.Tensor
    time_mean: ep.Tensor
    time_var: ep.Tensor


def n_sums(orders: int) -> int:
    """Slot sums per region: P(filled), E[(ADC - centre)^k 1{filled}] and E[tau^k 1{filled}], k = 1..orders."""
    return 1 + 2 * orders


def _about(moments, shift):
    """Moments E[(X + shift)^k 1{.}], k = 1 .. K, from moments = [P, E[X 1{.}], ..., E[X^K 1{.}]] (binomial
    expansion; shift without gradient)."""
    out = []
    for k in range(1, len(moments)):
        term = moments[k]
        for j in range(k):
            term = term + math.comb(k, j) * shift ** (k - j) * moments[j]
        out.append(term)
    return out


def cycle_kernel(values, d, x_nodes, log_w, *, electronics, orders):
    """Open cycles of a block in the chain: probability mass sent to each restart state by a stored sample
    (P, R) and by a failed conversion (P, R), and the slot sums (P, 2 n_sums(orders)): for a trigger at an
    explicit tick (pulse) and in the tail, P(stored), E[(ADC - centre)^k 1{stored}] and E[tau^k 1{stored}],
    k = 1..orders, tau = trigger tick - the row's first explicit tick (orders of tau above 2: pulse only, 0 for
    the tail)."""
    fee = electronics
    op = cyc.open_cycles(values, d, x_nodes, thr=fee.threshold_e, sigma_d=fee.uncorrelated_noise_e)
    w = ep.exp(log_w)
    sigma_c = fee.uncorrelated_noise_e
    p_trig = ep.exp(op.log_trig) * w[None, None, :]
    p_store, p_fail, adc_m, ref = nmath.adc_moments(op.mean, fee, sigma_c, orders=orders)
    centred = _about([p_store] + adc_m, ref - _ADC_CENTRE)
    stored_t = ep.sum(p_trig * p_store, axis=2)
    failed_t = ep.sum(p_trig * p_fail, axis=2)
    tau = d["tau"]
    pulse = [ep.sum(stored_t, axis=1)] + [ep.sum(p_trig * m, axis=(1, 2)) for m in centred]
    pulse += [ep.sum(stored_t * tau ** k, axis=1) for k in range(1, orders + 1)]

    p_tail = ep.exp(op.log_tail_trig) * w[None, :]
    t_store, _, t_adc, t_ref = nmath.adc_moments(op.tail_mean, fee, sigma_c, orders=orders)
    t_centred = _about([t_store] + t_adc, t_ref - _ADC_CENTRE)
    offset_mean, offset_var = nmath.tail_trigger_tick_moments(op.log_tail_tick, d["tail"][:, None])
    tail_tau = d["tail_tau"][:, None] + offset_mean
    tail_stored = p_tail * t_store
    zero = ep.zeros_like(pulse[0])
    tail = [ep.sum(tail_stored, axis=1)] + [ep.sum(p_tail * m, axis=1) for m in t_centred]
    tail += [ep.sum(tail_stored * tail_tau, axis=1), ep.sum(tail_stored * (tail_tau * tail_tau + offset_var), axis=1)]
    tail += [zero] * (orders - 2)
    to_stored = ops.take_along_axis(stored_t, d["stored_idx"], axis=1) * d["stored_w"]
    to_failed = ops.take_along_axis(failed_t, d["failed_idx"], axis=1) * d["failed_w"]
    return to_stored, to_failed, ep.stack(pulse + tail, axis=1)


def _restart_index(blk, n_restart, width_restart, dead_ticks):
    """(index, weight) (P, R): the explicit tick of each cycle whose trigger restarts at restart index r'
    (tick first + r') after ``dead_ticks`` ticks (21 after a stored sample, 20 after a failure); weight 0 where
    there is none or the restart is absorbing."""
    r = np.arange(width_restart)[None, :]
    t = r + blk.first[:, None] - dead_ticks - blk.lo[:, None]
    valid = (t >= 0) & (t < blk.length[:, None]) & (r < n_restart[:, None])
    return np.clip(t, 0, blk.width - 1), valid.astype(np.float64)


def propagate_kernel(init, sums, stored_m, failed_m, *, n_slots, n_fail):
    """Slot sums (n, n_slots, 2 n_sums) of the chain: state 0 the initial cycle, then R restart states of 900 e-
    and R of 500 e-; per slot the mass is closed under failures (n_fail steps: exact), summed against the
    states' sums, then moved to the 900 e- states by the stored samples."""
    n, n_states, _ = sums.shape
    wp = stored_m.shape[2]
    mass = ep.concatenate([init[:, None], ep.zeros_like(sums[:, 1:, 0])], axis=1)
    out = []
    for _ in range(n_slots):
        acc, step = mass, mass
        for _ in range(n_fail):
            step = ep.concatenate([ep.zeros_like(mass[:, :1 + wp]), ops.einsum("rs,rst->rt", step, failed_m)], axis=1)
            acc = acc + step
        out.append(ops.einsum("rs,rsq->rq", acc, sums))
        mass = ep.concatenate([ep.zeros_like(mass[:, :1]), ops.einsum("rs,rst->rt", acc, stored_m),
                               ep.zeros_like(mass[:, 1 + wp:])], axis=1)
    return ep.stack(out, axis=1)


def chunk_chain(ch, win, rows, width_restart, x_nodes, log_w, fee, window, n_slots, orders=2):
    """Slot sums (len(rows), n_slots, 2, n_sums(orders)) of a chunk of rows whose restart ranges fit ``width_restart``
    (cycle_kernel, propagate_kernel)."""
    like = ch.cum
    dtype = ops.dtype_name(like)
    n_real = len(rows)
    n = plan_mod.padded_count(n_real)
    rows = cyc._pad(rows, n)
    wp = max(int(width_restart), 1)
    n_states = 1 + 2 * wp
    first = win.first[rows]
    n_restart = np.clip(win.restart_last[rows] - first + 1, 0, int(width_restart))
    n_restart[n_real:] = 0
    r = np.arange(wp)
    starts = np.concatenate([np.zeros((n, 1), np.int64), first[:, None] + r[None, :], first[:, None] + r[None, :]],
                            axis=1)
    live = np.concatenate([np.ones((n, 1), bool), np.tile(r[None, :] < n_restart[:, None], (1, 2))], axis=1)
    live[n_real:] = False
    starts = np.where(live, starts, win.n_total)                  # dead states: no tick left, nothing happens
    reset = np.concatenate([np.ones((n, 1 + wp), bool), np.zeros((n, wp), bool)], axis=1)
    c_rows = np.repeat(rows, n_states)
    cycles = plan_mod.cycle_spans(win, c_rows, starts.ravel(), reset.ravel(), np.full(n * n_states, -1))
    reach = (fee.threshold_e + nmath.NODE_HALF_WIDTH * fee.reset_noise_e
             + plan_mod.DEAD_SIGMAS * fee.uncorrelated_noise_e)
    hi = cycles.lo + cycles.length - 1
    end = plan_mod.dead_end(win, cycles.row, cycles.start, cycles.lo, hi, np.full(len(c_rows), reach))
    cycles = cycles._replace(length=np.maximum(end - cycles.lo + 1, 0))
    c_nrest = np.repeat(n_restart, n_states)

    g = cyc.Gather(ch)
    blks = cyc.blocks(cycles, win, fee, like=like)
    hosts = []
    for idx, blk in blks:
        floats, ints = cyc.open_inputs(g, blk, window)
        bn = cyc._pad(c_nrest[idx], len(blk.rows))
        ints["stored_idx"], floats["stored_w"] = _restart_index(blk, bn, wp, window + fee.dead_ticks + 1)
        ints["failed_idx"], floats["failed_w"] = _restart_index(blk, bn, wp, window + 2)
        floats["tau"] = blk.ticks - blk.first[:, None]
        floats["tail_tau"] = np.maximum(blk.start, blk.last + 1) - blk.first
        hosts.append((floats, ints))
    values = g.values(like)
    kernel = cyc.compiled(cycle_kernel, like, static=("electronics", "orders"))
    sums, to_stored, to_failed = [], [], []
    for (idx, _), host_arrays in zip(blks, hosts):
        st, fl, sm = kernel(values, cyc.to_tensors(like, dtype, host_arrays), x_nodes, log_w, electronics=fee,
                            orders=orders)
        to_stored.append((idx, st))
        to_failed.append((idx, fl))
        sums.append((idx, sm))
    shape = (n, n_states)
    width = 2 * n_sums(orders)
    sums = ep.reshape(cyc.scatter_cycles(sums, len(c_rows), like, (width,)), shape + (width,))
    stored_m = ep.reshape(cyc.scatter_cycles(to_stored, len(c_rows), like, (wp,)), shape + (wp,))
    failed_m = ep.reshape(cyc.scatter_cycles(to_failed, len(c_rows), like, (wp,)), shape + (wp,))
    init = ops.asarray(like, (np.arange(n) < n_real).astype(np.float64), dtype)
    propagate = cyc.compiled(propagate_kernel, like, static=("n_slots", "n_fail"))
    out = propagate(init, sums, stored_m, failed_m, n_slots=n_slots, n_fail=(wp - 1) // 20 + 1)
    return ep.reshape(out, (n, n_slots, 2, n_sums(orders)))[:n_real]


def expected_readout(charge_per_tick, detector, *, total_ticks=None, n_nodes: int = nmath.NOISE_NODES,
                     max_samples=None) -> ExpectedReadout:
    """See :func:`larnd_diff.sim.expected_noise.expected_readout`."""
    sums, win, x = slot_sums(charge_per_tick, detector, total_ticks=total_ticks, n_nodes=n_nodes,
                             max_samples=max_samples, orders=2)
    return _readout_from_sums(ep.sum(sums, axis=2), win, detector, x, charge_per_tick)


def slot_sums(charge_per_tick, detector, *, total_ticks=None, n_nodes: int = nmath.NOISE_NODES, max_samples=None,
              orders: int = 2):
    """(sums (n_rows, K, 2, n_sums(orders)), row windows, charge tensor): per slot, for a trigger in the pulse (explicit
    ticks) and in the flat tail, P(filled) and the power sums of ADC - 128 and of tau = tick - windows.first, each
    times the filling probability (_cycle_outputs)."""
    x, host, win, ch, nodes, log_w = cyc.prepare(charge_per_tick, detector, total_ticks, n_nodes)
    fee = detector.electronics
    window = fee.integration_ticks(detector.t_sampling)
    n_slots = int(fee.max_adc_values if max_samples is None else max_samples)
    n_rows = host.shape[0]
    n_restart = np.maximum(win.restart_last - win.first + 1, 0)
    explicit = np.maximum(win.last - win.first + 1, 1)
    ladder = np.asarray((0,) + plan_mod.WIDTH_LADDER)
    width_of = ladder[np.searchsorted(ladder, n_restart)]
    widest = int(width_of.max(initial=0))
    if ops.get_backend(x).prefers_jit and n_rows * (1 + 2 * widest) * int(explicit.max(initial=1)) * len(nodes) \
            <= CHUNK_ELEMENTS:
        width_of = np.full(n_rows, widest)        # one chunk: one compilation
    pieces = []
    for wp in np.unique(width_of):
        members = np.flatnonzero(width_of == wp)
        cost = (1 + 2 * wp) * explicit[members] * len(nodes)
        group = (np.cumsum(cost) - cost) // CHUNK_ELEMENTS
        for g in np.unique(group):
            part = members[group == g]
            pieces.append((part, chunk_chain(ch, win, part, int(wp), nodes, log_w, fee, window, n_slots,
                                             orders)))
    return cyc.scatter_cycles(pieces, n_rows, x, (n_slots, 2, n_sums(orders))), win, x


def _readout_from_sums(sums, win, detector, like, original):
    dtype = ops.dtype_name(like)
    filled = sums[:, :, 0]
    # layout of n_sums(2): P, ADC orders 1-2, tau orders 1-2
    tiny = 1e-100 if dtype == "float64" else 1e-15       # its square stays a normal number (finite gradients)
    has = filled > tiny
    safe = ep.where(has, filled, 1.0)
    adc_mean = sums[:, :, 1] / safe
    adc_var = ep.maximum(sums[:, :, 2] / safe - adc_mean * adc_mean, 0.0)
    tau_mean = sums[:, :, 3] / safe
    tau_var = ep.maximum(sums[:, :, 4] / safe - tau_mean * tau_mean, 0.0)
    dt = detector.adc_tick_us
    first = ops.asarray(like, win.first.astype(np.float64), dtype)[:, None]
    adc_mean = ep.where(has, adc_mean + _ADC_CENTRE, 0.0)
    time_mean = ep.where(has, (tau_mean + first) * dt, 0.0)
    adc_var = ep.where(has, adc_var, 0.0)
    time_var = ep.where(has, tau_var * (dt * dt), 0.0)
    k = ops.asarray(like, np.arange(filled.shape[1], dtype=np.float64), dtype)
    n_mean = ep.sum(filled, axis=1)
    n_var = ep.sum((2.0 * k + 1.0)[None, :] * filled, axis=1) - n_mean * n_mean
    wrap = (lambda t: t) if isinstance(original, ep.Tensor) else (lambda t: t.raw)
    return ExpectedReadout(*(wrap(t) for t in (filled[:, 0], n_mean, n_var, filled, adc_mean, adc_var,
                                               time_mean, time_var)))

