"""LArPix front-end electronics: discrimination, integration and digitisation of pixel waveforms.

The input is the induced charge per 0.1 us tick, in electrons, on the event tick axis (tick n <-> n x 0.1 us).
Per pixel the reference front end (larnd-sim ``fee.py``) does, in conversion cycles:

1. integrate the charge tick by tick from the cycle's start tick, on top of a reset baseline (900 e- noise after
   a reset, 500 e- after a failed conversion, 0 with noise off);
2. trigger at the first tick where that running integral, plus a fresh 500 e- discriminator-noise draw used for
   this comparison only, reaches the 7 ke- threshold;
3. integrate the trigger tick *again* and the 18 following ticks (a larnd-sim quirk: the trigger tick counts
   twice), add a 500 e- noise draw: that is the converted charge;
4. below threshold: failed conversion, 1 dead tick, baseline 500 e-; otherwise store the sample (charge and the
   trigger tick x 600/6003 us), 2 dead ticks, baseline 900 e-; at most 10 samples per pixel.

A NaN tick poisons the running integral: before a trigger it silences the pixel for the rest of the waveform,
inside a conversion window it yields a stored NaN sample (the reference does exactly this).

The running integral is a difference of one cumulative sum over the whole waveform. The integer decisions
(trigger ticks, windows, stored or failed) are made, for concrete values, by one Numba loop per pixel on the
host (:mod:`larnd_diff.sim.trigger_host`), and the stored samples' charges are then gathered from the tensors at
those ticks (two gathers: the differentiable part). Traced inside ``jax.jit`` / ``tf.function``, the cycles run
vectorised over pixels instead: each of a fixed number of iterations finds every pixel's next trigger with one
masked comparison over its ticks, with no data-dependent Python control flow. Both make the same comparisons in
the same precision: identical outputs.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim.config import as_relaxation


class Samples(NamedTuple):
    """Output of :func:`electronics`, each (n_rows, max_adc_values); NaN in empty slots.

    adc     digitised value (integer counts; real-valued with ``adc="continuous"``)
    time    trigger time in us from the start of the event (trigger tick x ``detector.adc_tick_us``)
    charge  converted charge in electrons (before digitisation)
    """

    adc: ep.Tensor
    time: ep.Tensor
    charge: ep.Tensor


# ---------------------------------------------------------------------------------------------- digitisation
def digitize(charge_e, electronics, adc_mode: str = "round"):
    """ADC counts of a converted charge in electrons (larnd-sim ``digitize``).

    adc = min(round_half_even(max(Q g + V_ped - V_cm, 0) x counts / (V_ref - V_cm)), counts): 74 at zero charge,
    81 at the 7 ke- threshold, saturating at 256 from ~179.5 ke-. ``adc_mode``:

    "round"             as larnd-sim; the gradient is zero.
    "continuous"        no rounding: real-valued counts (the clips stay, so the gradient is zero in saturation).
    "straight-through"  forward value identical to "round", gradient that of "continuous"
                        (x + stop_gradient(round_half_even(x) - x)).
    """
    e = electronics
    millivolts = ep.maximum(charge_e * e.gain_mv_per_e + e.v_pedestal_mv - e.v_cm_mv, 0.0)
    # the cap first: min(round(x), 256) = round(min(x, 256)), and the straight-through gradient is then exactly
    # the continuous one (a cap applied to the rounded value would split the gradient at the tie 256 = 256)
    value = ep.minimum(millivolts * e.adc_counts / (e.v_ref_mv - e.v_cm_mv), float(e.adc_counts))
    if adc_mode == "round":
        return ops.round_half_even(value)
    if adc_mode == "straight-through":
        # value + (round(value) - value) == round(value) exactly: the difference is exact (Sterbenz), so is the sum
        return value + ops.stop_gradient(ops.round_half_even(value) - value)
    if adc_mode != "continuous":
        raise ValueError(f"unknown adc relaxation {adc_mode!r}; choose 'round', 'continuous' or 'straight-through'")
    return value


# ---------------------------------------------------------------------------------------------- building blocks
def running_integral(charge_per_tick, count_dtype: str = "int32"):
    """(cumulative charge, cumulative NaN count, charge with NaN -> 0), each (n_rows, n_ticks).

    Column n holds the sum over ticks 0..n (inclusive), so the charge of ticks a..b is Q[b] - Q[a - 1]
    (:func:`_before` gives Q[a - 1], 0 for a = 0). NaN ticks contribute 0 to the charge and 1 to the count:
    a range containing one has a positive count difference.
    """
    is_nan = ep.isnan(charge_per_tick)
    clean = ep.where(ep.logical_not(is_nan), charge_per_tick, 0.0)   # tensor first: TF graphs type the scalar
    q = ops.cumsum(clean, axis=1)
    nans = ops.cumsum(ops.cast(is_nan, count_dtype), axis=1)
    return q, nans, clean


def _at(table, *indices):
    """table[r, index[r]] for every row r and each index (n_rows,) int64: one gather for all of them."""
    if len(indices) == 1:
        return ops.take_along_axis(table, indices[0][:, None], axis=1)[:, 0]
    values = ops.take_along_axis(table, ep.stack(indices, axis=1), axis=1)
    return tuple(values[:, i] for i in range(len(indices)))


def _before(table, index):
    """Inclusive cumulative table: the value just before ``index`` (table[r, index[r] - 1], 0 at index 0)."""
    value = _at(table, ep.maximum(index - 1, 0))
    return ep.where(index > 0, value, ep.zeros_like(value))


def discriminate(q_disc, tick, ticks_left, start, target, n_ticks: int):
    """First tick n >= start[r] with q_disc[r, n] >= target[r], per row; ``n_ticks`` where there is none.

    q_disc is the cumulative charge (plus discriminator noise) on ticks 0..n_ticks-1; target the threshold minus
    the baseline plus the cumulative charge before the cycle's start. ``ticks_left`` = n_ticks - tick (int16):
    the first crossing is the one with the most ticks left, a max that is unique (argmax ties are not
    guaranteed to resolve to the first index on every backend) and cheap in a small integer type.
    """
    crossing = ep.logical_and(tick >= start[:, None], q_disc >= target[:, None])
    most_left = ep.max(ep.where(crossing, ticks_left, ep.zeros_like(ticks_left[:, :1])), axis=1)
    return n_ticks - ops.cast(most_left, "int64")


def interpolated_crossing(trigger, q_trigger, step, q_before_start, baseline, threshold):
    """Fractional tick where the running integral crosses the threshold (linear between ticks n_c - 1 and n_c).

    n* = n_c - 1 + (thr - Qacc[n_c - 1]) / (Qacc[n_c] - Qacc[n_c - 1]) with Qacc the integral since the cycle's
    start (baseline included): q_trigger = cumulative charge through n_c, step = charge of tick n_c,
    q_before_start = cumulative charge before the cycle's start. The fraction is clipped to [0, 1] (a
    noise-induced trigger need not bracket the crossing) and a zero step gives fraction 1.
    """
    before = baseline + (q_trigger - step) - q_before_start
    has_step = step > 0
    fraction = (threshold - before) / ep.where(has_step, step, ep.ones_like(step))
    fraction = ep.where(has_step, ep.clip(fraction, 0.0, 1.0), ep.ones_like(fraction))
    return ops.cast(trigger, ops.dtype_name(q_trigger)) - 1 + fraction


def _default_cycles(max_samples: int, noise: bool) -> int:
    # Noise off, a conversion can only fail on negative charge: max_samples cycles suffice. With noise, failed
    # conversions (charge near threshold) need extra cycles; twice as many covers them in practice.
    return 2 * max_samples if noise else max_samples


# ---------------------------------------------------------------------------------------------- front end
def electronics(charge_per_tick, detector, relaxation="hard", *, noise: bool = False, rng=None,
                active_ticks=None, tick_offset=None, max_cycles: int | None = None, trigger_search: str = "auto",
                compile_glue: bool = False) -> Samples:
    """Self-triggered readout of pixel waveforms: (adc, time, charge), each (n_rows, 10), NaN in empty slots.

    charge_per_tick  EagerPy tensor (n_rows, n_ticks) of induced charge in electrons per 0.1 us tick, tick n at
                     n x 0.1 us from the start of the event (n_ticks <= 6003 for larnd-sim's event window).
    detector         :class:`larnd_diff.detector.Detector` (electronics constants, ``adc_tick_us``).
    relaxation       preset name or :class:`Relaxation`; this stage reads two knobs:
                     ``adc``      "round": round-half-even digitisation as in larnd-sim; "continuous": the same
                                  formula unrounded (clipped to [0, 256]: no gradient in saturation);
                                  "straight-through": the rounded value with the continuous value's gradient.
                     ``trigger``  "tick": time = trigger tick x 600/6003 us, no gradient; "interpolated": same
                                  forward value, but the time's gradient is that of the linearly interpolated
                                  threshold crossing n* x 600/6003 us (straight-through estimator). The trigger
                                  tick always selects the integration window, so the converted charge (hence a
                                  continuous ADC) differs from the reference only by the ADC rounding.
                     The converted charge is always a real-valued (differentiable) sum of the input ticks.
    noise            reset (900 e-), per-tick discriminator (500 e-) and conversion (500 e-) noise, drawn from
                     ``rng`` (anything with ``normal(shape, dtype)``, e.g. ``ops.get_backend(name).rng(seed)``;
                     default: the tensor's backend seeded with 0). Statistically equivalent to larnd-sim,
                     not draw-for-draw.
    active_ticks     ticks beyond this count (an int, or an int tensor per row) are treated as past the end of
                     the waveform (for inputs padded to a fixed length); default n_ticks.
    tick_offset      None (tick n of every row is event tick n) or an int tensor (n_rows,): the event tick of each
                     row's tick 0, for rows given on their own tick windows (the simulator's row groups, whose
                     rows start at their first charged tick). Only the reported times (and the interpolated
                     crossing's tick) are shifted: without noise, a row whose charge is zero before its window
                     gives the same samples either way (its running integral is zero there and cannot trigger).
    max_cycles       number of conversion cycles simulated (a fixed loop bound, so the function traces once
                     under jit). Default: 10 without noise (every cycle that triggers then succeeds, unless
                     the input charge is negative), 20 with noise (failed conversions do not fill a slot).
    trigger_search   where the integer decisions (trigger ticks, windows, which cycles store) are made:
                     "host" = one Numba loop per pixel on detached values (:mod:`larnd_diff.sim.trigger_host`),
                     then the stored samples are gathered from the tensors at those ticks; "vectorized" = the
                     masked EagerPy passes over all ticks per cycle (traceable); "auto" = host when the values are
                     concrete (eager tensors, autodiff tracers with a concrete primal), else vectorized. Both
                     make the same comparisons in the same precision: identical outputs.
    compile_glue     with the search on the GPU: the running integral before it and the sample gathering and
                     digitisation after it compiled into a few kernels by the backend (``Backend.compiled_glue``;
                     the simulator sets it from ``SimConfig.compile``). Same values.
    """
    relaxation = as_relaxation(relaxation)
    fee = detector.electronics
    n_rows, n_ticks = charge_per_tick.shape
    n_slots = fee.max_adc_values
    window = fee.integration_ticks(detector.t_sampling)
    threshold = fee.threshold_e
    n_cycles = _default_cycles(n_slots, noise) if max_cycles is None else int(max_cycles)
    dtype = ops.dtype_name(charge_per_tick)

    if trigger_search not in ("auto", "host", "vectorized"):
        raise ValueError(f"unknown trigger_search {trigger_search!r}; choose 'auto', 'host' or 'vectorized'")
    on_gpu = trigger_search != "vectorized" and _gpu_search(charge_per_tick)
    charge_host = None if trigger_search == "vectorized" or on_gpu else _host_value(charge_per_tick)
    bind = ops.get_backend(charge_per_tick).compiled_glue if compile_glue and on_gpu else functools.partial
    if on_gpu:
        # nothing comes to the host before the search: the NaN-safe charge and the NaN count are always taken
        q, nan_count, clean = bind(running_integral, count_dtype="int64")(charge_per_tick)
    elif charge_host is not None:
        # the search on the host takes the NaN count there; without NaN the clean charge is the input itself
        nan_host = np.isnan(charge_host)
        clean = ep.where(ep.logical_not(ep.isnan(charge_per_tick)), charge_per_tick, 0.0) if nan_host.any() \
            else charge_per_tick
        q = ops.cumsum(clean, axis=1)
    elif trigger_search == "host":
        raise ValueError("electronics(trigger_search='host') needs concrete tensor values (not inside a jit "
                         "trace); use 'auto' or 'vectorized'")
    else:
        q, nans, clean = running_integral(charge_per_tick)
    if active_ticks is None:
        last_tick = ops.cast(ep.full_like(q[:, 0], float(n_ticks - 1)), "int64")
    elif isinstance(active_ticks, int):
        last_tick = ops.cast(ep.full_like(q[:, 0], float(min(active_ticks, n_ticks) - 1)), "int64")
    else:
        last_tick = ep.minimum(ops.cast(active_ticks, "int64"), n_ticks) - 1

    q_disc = q
    if noise:
        if rng is None:
            rng = ops.get_backend(charge_per_tick).rng(0)
        q_disc = q_disc + fee.uncorrelated_noise_e * _normal(rng, (n_rows, n_ticks), dtype, charge_per_tick)
        reset_noise = fee.reset_noise_e * _normal(rng, (n_rows, n_cycles), dtype, charge_per_tick)
        failed_reset_noise = fee.uncorrelated_noise_e * _normal(rng, (n_rows, n_cycles), dtype, charge_per_tick)
        conversion_noise = fee.uncorrelated_noise_e * _normal(rng, (n_rows, n_cycles), dtype, charge_per_tick)
    samples_at = functools.partial(_samples_at, offset=tick_offset,
                                   gather=bind(_gather_samples, fee=fee, adc_tick_us=detector.adc_tick_us,
                                               relaxation=relaxation, dtype=dtype))

    if on_gpu:
        noise_draws = (reset_noise, failed_reset_noise, conversion_noise) if noise else None
        found = _gpu_cycles(q, q_disc, clean, nan_count, last_tick, noise_draws, threshold, window,
                            fee.dead_ticks, n_slots, n_cycles)
        return samples_at(found, q, clean)
    if charge_host is not None:
        noise_draws = (reset_noise, failed_reset_noise, conversion_noise) if noise else None
        host = _host_cycles(nan_host, q, q_disc, clean, last_tick, noise_draws, threshold, window,
                            fee.dead_ticks, n_slots, n_cycles)
        if host is not None:
            return samples_at(host, q, clean)
        # values abstract after all (cannot happen for concrete inputs): the vectorised search
        nans = ops.cumsum(ops.cast(ep.isnan(charge_per_tick), "int32"), axis=1)

    tick = ops.cast(ep.arange(charge_per_tick, n_ticks), "int64")[None, :]
    ticks_left = ops.cast(n_ticks - tick, "int16" if n_ticks < 2**15 else "int32")   # narrow: less memory traffic
    slot = ops.cast(ep.arange(charge_per_tick, n_slots), "int64")[None, :]
    zeros_row = ep.zeros_like(q[:, 0])
    start = ops.cast(zeros_row, "int64")
    count = ops.cast(zeros_row, "int64")
    live = last_tick >= 0
    baseline = reset_noise[:, 0] if noise else zeros_row
    nan_slots = ep.full(q, (n_rows, n_slots), float("nan"))
    out_charge = nan_slots
    out_tick = ops.cast(ep.zeros_like(nan_slots), "int64")
    out_crossing = nan_slots

    for cycle in range(n_cycles):
        start_c = ep.minimum(start, n_ticks)                      # gathers stay in range for finished rows
        before = _before(q, start_c)
        trigger = discriminate(q_disc, tick, ticks_left, start_c, threshold - baseline + before, n_ticks)
        trigger_c = ep.minimum(trigger, n_ticks - 1)
        end = ep.minimum(trigger_c + window, last_tick)
        end = ep.maximum(end, trigger_c)                           # rows that did not fire: any valid index
        nans_trigger, nans_end = _at(nans, trigger_c, end)
        q_trigger, q_end = _at(q, trigger_c, end)
        step = _at(clean, trigger_c)
        # NaN between the cycle's start and the trigger: the running integral is NaN, it never triggers again.
        # (So a fired trigger tick is not NaN, and a NaN in the window shows as nans_end > nans_trigger.)
        fired = _all(live, trigger <= last_tick, nans_trigger == _before(nans, start_c))

        charge = baseline + (q_end - before) + step
        if noise:
            charge = charge + conversion_noise[:, cycle]
        charge = ep.where(nans_end == nans_trigger, charge, float("nan"))
        failed = charge < threshold                                # False for NaN: stored, like the reference
        stored = ep.logical_and(fired, ep.logical_not(failed))

        put = ep.logical_and(slot == count[:, None], stored[:, None])
        out_charge = ep.where(put, charge[:, None], out_charge)
        out_tick = ep.where(put, trigger_c[:, None], out_tick)
        if relaxation.trigger == "interpolated":
            crossing = interpolated_crossing(_shifted(trigger_c, tick_offset), q_trigger, step, before, baseline,
                                             threshold)
            out_crossing = ep.where(put, crossing[:, None], out_crossing)

        count = count + ops.cast(stored, "int64")
        dead = 1 + (fee.dead_ticks - 1) * ops.cast(stored, "int64")   # 2 dead ticks after success, 1 after failure
        start = ep.where(fired, end + 1 + dead, start)
        live = _all(fired, count < n_slots, start <= last_tick)
        if noise:
            next_cycle = min(cycle + 1, n_cycles - 1)
            baseline = ep.where(stored, reset_noise[:, next_cycle], failed_reset_noise[:, cycle])

    filled = ep.logical_not(ep.isnan(out_charge))
    has_sample = slot < count[:, None]
    offset = None if tick_offset is None else tick_offset[:, None]
    time = _trigger_time(_shifted(out_tick, offset), out_crossing, has_sample, detector.adc_tick_us, relaxation,
                         dtype)
    adc = digitize(ep.where(filled, out_charge, 0.0), fee, relaxation.adc)
    adc = ep.where(filled, adc, float("nan"))
    return Samples(adc=adc, time=time, charge=out_charge)


def _shifted(tick, offset):
    """Event ticks of row-local ticks (``offset`` None: they are event ticks already)."""
    return tick if offset is None else tick + offset


def _host_value(x):
    """Detached NumPy value of an EagerPy tensor in its own dtype, looking through autodiff tracers that carry a
    concrete primal (jax.grad); None when the value is abstract (inside jax.jit or tf.function)."""
    raw = x.raw if isinstance(x, ep.Tensor) else x
    for _ in range(8):
        try:
            return np.asarray(ops.to_numpy(ops.stop_gradient(ep.astensor(raw))))
        except Exception:
            raw = getattr(raw, "primal", None)
            if raw is None:
                return None
    return None


def _host_cycles(nan_host, q, q_disc, clean, last_tick, noise_draws, threshold, window, dead_ticks,
                 n_slots, n_cycles):
    """The host search (:func:`larnd_diff.sim.trigger_host.self_trigger_cycles`) on detached values (nan_host:
    the input's NaN mask, NumPy); None when a value is abstract."""
    from larnd_diff.sim import trigger_host

    values = [_host_value(t) for t in (q, q_disc, clean, last_tick)]
    draws = None if noise_draws is None else [_host_value(t) for t in noise_draws]
    if any(v is None for v in values) or (draws is not None and any(v is None for v in draws)):
        return None
    q_h, q_disc_h, clean_h, last_h = values
    nan_count = np.cumsum(nan_host, axis=1, dtype=np.int64) if nan_host.any() else \
        np.zeros(nan_host.shape, np.int64)  # the usual case: no NaN tick (zero pages, no pass over the rows)
    return trigger_host.self_trigger_cycles(q_h, q_disc_h, clean_h, nan_count, last_h, threshold, window,
                                            dead_ticks, n_slots, n_cycles, noise=draws)


def _gpu_search(x) -> bool:
    """Whether the trigger search can run on the GPU in place: tensors on a CUDA device of a backend that hands its
    tensors to foreign kernels (the feature "device_kernels"), numba-cuda usable."""
    b = ops.get_backend(x)
    if not (b.supports("device_kernels") and b.on_cuda(x)):
        return False
    from larnd_diff.sim import trigger_cuda

    return trigger_cuda.is_available()


def _gpu_cycles(q, q_disc, clean, nan_count, last_tick, noise_draws, threshold, window, dead_ticks, n_slots,
                n_cycles):
    """The search of :mod:`larnd_diff.sim.trigger_cuda` on detached GPU tensors (``Backend.device_array``, scratch
    from ``Backend.scratch_zeros``); its outputs stay on the GPU (EagerPy tensors, ``window_nan`` bool)."""
    from larnd_diff.sim import trigger_cuda

    b = ops.get_backend(q)
    raw = lambda t: b.device_array(ops.stop_gradient(t).raw)  # noqa: E731
    zeros = b.scratch_zeros(b.device_of(q))
    draws = None if noise_draws is None else [raw(t) for t in noise_draws]
    out = trigger_cuda.self_trigger_cycles(raw(q), raw(q_disc), raw(clean), raw(nan_count), raw(last_tick),
                                           threshold, window, dead_ticks, n_slots, n_cycles, noise=draws,
                                           zeros=zeros)
    out = {k: ep.astensor(v) for k, v in out.items()}
    out["window_nan"] = out["window_nan"] != 0
    return out


def _samples_at(search, q, clean, *, offset, gather) -> Samples:
    """The samples of the trigger search ``search`` (NumPy arrays from the host search, or tensors on ``q``'s
    device from the GPU search): its integers as tensors, then ``gather`` (:func:`_gather_samples`, compiled or not).
    ``offset``: None or the rows' tick offsets (int tensor, see :func:`electronics`)."""
    kinds = dict(start="int64", trig="int64", end="int64", count="int64", baseline=ops.dtype_name(q),
                 conversion=ops.dtype_name(q), window_nan="bool")
    found = {k: (ops.asarray(q, a, kinds[k]) if isinstance(a, np.ndarray) else a)
             for k, a in search.items() if k in kinds}
    if offset is not None:
        found["offset"] = offset
    return Samples(*gather(found, q, clean))


def _gather_samples(found, q, clean, *, fee, adc_tick_us, relaxation, dtype):
    """(adc, time, charge) of the stored cycles of a trigger search, differentiable: the converted charge (and the
    interpolated crossing) gathered from the running integral ``q`` and the charge per tick ``clean`` at the
    search's ticks ``found`` (tensors start, trig, end, count, baseline, window_nan and, with noise, conversion;
    with ``offset``, the rows' tick offsets: the times are those of the event ticks)."""
    threshold = fee.threshold_e
    start, trig, end = found["start"], found["trig"], found["end"]
    n_slots = trig.shape[1]
    has_sample = ops.cast(ep.arange(q, n_slots), "int64")[None, :] < found["count"][:, None]
    at_q = ops.take_along_axis(q, ep.concatenate([ep.maximum(start - 1, 0), trig, end], axis=1), axis=1)
    before = ep.where(start > 0, at_q[:, :n_slots], 0.0)
    q_trigger, q_end = at_q[:, n_slots:2 * n_slots], at_q[:, 2 * n_slots:]
    step = ops.take_along_axis(clean, trig, axis=1)
    trig = _shifted(trig, found["offset"][:, None] if "offset" in found else None)
    baseline = found["baseline"]
    charge = baseline + (q_end - before) + step
    if "conversion" in found:
        charge = charge + found["conversion"]
    charge = ep.where(found["window_nan"], float("nan"), charge)
    out_charge = ep.where(has_sample, charge, float("nan"))
    out_crossing = None
    if relaxation.trigger == "interpolated":
        crossing = interpolated_crossing(trig, q_trigger, step, before, baseline, threshold)
        out_crossing = ep.where(has_sample, crossing, float("nan"))
    filled = ep.logical_not(ep.isnan(out_charge))
    time = _trigger_time(trig, out_crossing, has_sample, adc_tick_us, relaxation, dtype)
    adc = digitize(ep.where(filled, out_charge, 0.0), fee, relaxation.adc)
    adc = ep.where(filled, adc, float("nan"))
    return adc, time, out_charge


def _trigger_time(out_tick, out_crossing, has_sample, adc_tick_us, relaxation, dtype):
    """Sample times in us: tick x adc_tick_us; with the interpolated trigger, the straight-through crossing."""
    time = ops.cast(out_tick, dtype) * adc_tick_us
    if relaxation.trigger == "interpolated":
        crossing = ep.where(has_sample, out_crossing, 0.0) * adc_tick_us
        time = time + (crossing - ops.stop_gradient(crossing))
    elif relaxation.trigger != "tick":
        raise ValueError(f"unknown trigger relaxation {relaxation.trigger!r}; choose 'tick' or 'interpolated'")
    return ep.where(has_sample, time, float("nan"))


def _all(*masks):
    out = masks[0]
    for m in masks[1:]:
        out = ep.logical_and(out, m)
    return out


def _normal(rng, shape, dtype, like):
    """Standard normal draws from ``rng`` as a tensor of ``like``'s backend."""
    z = rng.normal(shape, dtype)
    return z if isinstance(z, ep.Tensor) else ops.asarray(like, z, dtype)


__all__ = ["Samples", "digitize", "discriminate", "electronics", "interpolated_crossing", "running_integral"]
