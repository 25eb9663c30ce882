"""``simulate``: quench -> drift -> pixels -> induce -> electronics, on any EagerPy backend.

The integer structure (pixels, pairs, windows, sample counts) is planned on the host from detached float64 values
each call (:mod:`larnd_diff.sim.pixels`); the differentiable arithmetic runs on the chosen backend: quench and drift
of the segments, the per-pair inputs, the induced charge of the pairs on the pixels' ticks
(:mod:`larnd_diff.sim.charge`: fused kernels in one call, or padded blocks, jitted and checkpointed) and the front
end (:mod:`larnd_diff.sim.electronics`). A call whose working memory exceeds ``SimConfig.memory_budget_bytes`` is
evaluated in pieces planned by :mod:`larnd_diff.sim.memory` (parts of whole chunks, rows in groups on their own tick
windows).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.detector import resolve_detector
from larnd_diff.hits import Hits
from larnd_diff.params import SPECS, Params, as_params, drift_velocity
from larnd_diff.sim import induce, memory, pixels
from larnd_diff.sim.charge import ChargeMethod, fused_target, induced_charge, pair_dict, trace_count
from larnd_diff.sim.config import SimConfig, as_relaxation

#: Segment fields the simulation reads (simulation frame, z = drift).
POSITION_FIELDS = ("x_start", "y_start", "z_start", "x_end", "y_end", "z_end", "x", "y", "z")
TIME_FIELDS = ("t", "t_start", "t_end")
SEGMENT_FIELDS = POSITION_FIELDS + TIME_FIELDS + ("dE", "dEdx")
#: Ticks kept after the last charge of a pixel so that a trigger there can still integrate its 18 ticks.
TAIL_TICKS = memory.TAIL_TICKS
#: Smooth preset: cm added to z_end of segments parallel to the anode (z_start = z_end), which the reference
#: (larnd_diff/reference) turns into NaN; the tilted line has a finite, tiny z extent and the right xy footprint.
FLAT_TILT_CM = 1e-4


# ---------------------------------------------------------------------------------------------- inputs
def _fields(segments) -> Dict[str, Any]:
    if isinstance(segments, np.ndarray) and segments.dtype.names:
        return {n: segments[n] for n in segments.dtype.names}
    if isinstance(segments, dict):
        return dict(segments)
    raise TypeError("segments must be a NumPy structured array (larnd_diff.io.load_segments) or a dict of arrays")


def _host(x) -> np.ndarray:
    """Detached float64 NumPy copy of an array or tensor (raw or EagerPy)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    v = _concrete(x)
    if v is None:
        raise ValueError("segment arrays must have concrete values (the host plan needs them); under jax.jit pass "
                         "them as NumPy arrays or closed-over constants")
    return v


def _concrete(x):
    """Float64 NumPy value of a tensor, looking through autodiff tracers that carry a concrete primal value
    (jax.grad / jax.value_and_grad); None when the value is abstract (inside jax.jit)."""
    for _ in range(8):
        try:
            return np.asarray(ops.to_numpy(x if isinstance(x, ep.Tensor) else ep.astensor(x)), dtype=np.float64)
        except Exception:
            x = getattr(unwrap_ep(x), "primal", None)
            if x is None:
                return None
    return None


def unwrap_ep(x):
    return x.raw if isinstance(x, ep.Tensor) else x


def _host_param(value, name):
    """A parameter as a Python float for planning; the nominal value when it is abstract (under jax.jit)."""
    if isinstance(value, (int, float)):
        return float(value)
    v = _concrete(value)
    return float(SPECS[name].nominal) if v is None else float(v)


def _on_backend(b, x, dtype, device):
    """A float input as an EagerPy tensor of backend ``b`` in ``dtype`` (framework tensors keep their graph)."""
    if isinstance(x, (np.ndarray, float, int, np.floating)):
        return b.asarray(np.asarray(x, dtype=np.float64), dtype, device)
    t = x if isinstance(x, ep.Tensor) else ep.astensor(x)
    return ops.cast(t, dtype) if ops.dtype_name(t) != dtype else t


# ---------------------------------------------------------------------------------------------- physics
def _quench_drift(f, params, detector, relaxation):
    """quench + drift on EagerPy tensors ``f``; returns (n_electrons, Drifted)."""
    from larnd_diff.sim.drift import drift
    from larnd_diff.sim.quench import quench

    n_e = quench(f["dE"], f["dEdx"], params, relaxation)
    dr = drift(f["x"], f["y"], f["z"], f["z_start"], f["z_end"], f["t"], f["t_start"], f["t_end"], n_e,
               detector, params, relaxation)
    return dr


def _plan_inputs(fields, params, detector, relaxation):
    """Detached float64 per-segment values for the host plan (numpy pass of quench + drift)."""
    nb = ops.get_backend("numpy")
    host = {k: nb.asarray(_host(fields[k]), "float64") for k in SEGMENT_FIELDS}
    host_params = Params({k: _host_param(v, k) for k, v in params.items()}, link_vdrift=params.link_vdrift)
    dr = _quench_drift(host, host_params, detector, relaxation)
    out = {k: host[k].raw for k in POSITION_FIELDS}
    out.update(eventID=np.asarray(_host(fields["eventID"])).astype(np.int64),
               plane=ops.to_numpy(dr.plane).astype(np.int64), sigma_T=ops.to_numpy(dr.sigma_T),
               sigma_L=ops.to_numpy(dr.sigma_L), t_start=ops.to_numpy(dr.t_start), t_end=ops.to_numpy(dr.t_end),
               n_electrons=ops.to_numpy(dr.n_electrons), vdrift=float(host_params.vdrift_value))
    return out


def _segment_tensors(b, fields, dtype, device):
    """The segments' float fields as tensors of backend ``b``: NumPy fields in one upload (rows of one tensor),
    framework tensors as given (cast to ``dtype``, their graph kept)."""
    host = [k for k in SEGMENT_FIELDS if isinstance(fields[k], np.ndarray)]
    out = {}
    if host:
        table = b.asarray(np.stack([np.asarray(fields[k], np.float64) for k in host]), dtype, device)
        out = {k: table[i] for i, k in enumerate(host)}
    out.update({k: _on_backend(b, fields[k], dtype, device) for k in SEGMENT_FIELDS if k not in out})
    return out


def _param_tensors(b, params, dtype, device, upload_floats: bool):
    """Parameter values for the backend: tensors cast to ``dtype``; Python numbers kept as they are or, with
    ``upload_floats``, uploaded together as one vector (so compiled code sees tensors whatever the values and
    does not recompile when a number changes)."""
    numbers = {k: float(v) for k, v in params.items() if isinstance(v, (int, float))}
    tensors = {k: _on_backend(b, v, dtype, device) for k, v in params.items() if k not in numbers}
    if upload_floats and numbers:
        vector = b.asarray(np.asarray(list(numbers.values()), np.float64), dtype, device)
        numbers = {k: vector[i] for i, k in enumerate(numbers)}
    return {**numbers, **tensors}


def _segment_inputs(t, params, seg_consts, *, detector, relaxation, tilt, link_vdrift):
    """Differentiable per-segment inputs of the induced current: (endpoints (n_seg, 6), drifted (n_seg, 3), vdrift).

    Quench and drift of the segments' tensors ``t`` (a dict of (n_seg,) tensors) with ``params`` (name -> number or
    tensor). ``endpoints``: A then B (x, y, z), ordered along z; ``drifted``: sigma_T, sigma_L (cm) and the electrons
    reaching the anode (columns of ``charge.SEGMENT_INPUTS``; two tables, so that constant positions stay out of the
    autodiff graph). ``seg_consts`` (2, n_seg) host constants: whether A is the start point (1/0), and whether the
    segment is parallel to the anode (1/0; its z_end is moved by ``tilt`` cm).
    """
    p = dict(params)   # a plain mapping (torch.compile cannot build a Params); vdrift resolved as Params does
    if link_vdrift:
        p["vdrift"] = drift_velocity(p["eField"], p["temperature"])
    dr = _quench_drift(t, p, detector, relaxation)
    a_first = seg_consts[0] > 0.5
    zs, ze = t["z_start"], t["z_end"]
    if tilt:
        ze = ze + seg_consts[1] * tilt
    pick = lambda u, v: ep.where(a_first, u, v)  # noqa: E731
    endpoints = ep.stack([pick(t["x_start"], t["x_end"]), pick(t["y_start"], t["y_end"]), pick(zs, ze),
                          pick(t["x_end"], t["x_start"]), pick(t["y_end"], t["y_start"]), pick(ze, zs)], axis=1)
    return endpoints, ep.stack([dr.sigma_T, dr.sigma_L, dr.n_electrons], axis=1), p["vdrift"]


def _pair_constants(plan, host, tilt, detector) -> np.ndarray:
    """Host constants of every (segment, pixel) pair, (n_pairs, len(charge.PAIR_CONSTANTS)) float64: the pixel centre,
    whether the z-first endpoint A has the smaller x, the z_interval branch, the number of z samples, the
    directions of the sampling grid and the anode's z."""
    s_ = plan.seg
    flat = host["z_start"][s_] == host["z_end"][s_]
    a_first = host["z_start"][s_] < host["z_end"][s_] + tilt * flat
    swap_x = host["x_end"][s_] < host["x_start"][s_]
    # S (smaller x) is A exactly when A is the x-start and x is not swapped, or A is the x-end and it is
    x_first_is_a = np.where(a_first, ~swap_x, swap_x)
    d_x = np.where(a_first, 1.0, -1.0) * (host["x_end"][s_] - host["x_start"][s_])
    d_y = np.where(a_first, 1.0, -1.0) * (host["y_end"][s_] - host["y_start"][s_])
    z_anode = detector.anode_z[np.maximum(host["plane"], 0)][s_]
    return np.stack([plan.x_p, plan.y_p, x_first_is_a, plan.branch, plan.n_z, np.where(d_x >= 0, 1.0, -1.0),
                     np.where(d_y >= 0, 1.0, -1.0), z_anode], axis=1).astype(np.float64)



def _event_pair_inputs(t, params, seg_consts, pair_seg, pair_consts, *, detector, relaxation, tilt, link_vdrift,
                       grid):
    """Stacked per-pair inputs (n_pairs, len(induce.PAIR_FIELDS)) of the whole event from the segments' tensors:
    quench, drift, z ordering, gather to the pairs, pair geometry. A pure function of tensors (compiled by the
    backend on GPUs, ``SimConfig.compile``)."""
    *seg, vdrift = _segment_inputs(t, params, seg_consts, detector=detector, relaxation=relaxation, tilt=tilt,
                                   link_vdrift=link_vdrift)
    return induce.stack_pair_inputs(pair_dict(seg, vdrift, pair_seg, pair_consts), grid=grid)


def _wants_compile(mode: str, b, like) -> bool:
    """SimConfig.compile: compile the glue (per-pair inputs, electronics' gathering) on GPU tensors ("auto"),
    always or never (where the backend can: the feature "compile")."""
    if mode == "never" or not b.supports("compile"):
        return False
    return mode == "always" or b.on_cuda(like)


# ---------------------------------------------------------------------------------------------- simulate
@dataclasses.dataclass(frozen=True)
class _Call(ChargeMethod):
    """What one simulate call fixes before evaluating anything: how the induced charge is evaluated
    (:class:`~larnd_diff.sim.charge.ChargeMethod`), the detector and the physics switches, the compilation of the
    glue, the noise and where the tensors live (explicit state handed to the evaluation functions)."""

    detector: Any
    config: SimConfig
    device: Any
    tilt: float
    link_vdrift: bool
    compile_inputs: bool
    compile_glue: bool
    noise: bool
    seed: int
    placement: Any

    def asarray(self, value, dtype: str | None = None):
        """A host array as a tensor of the call's backend, dtype (default: the call's) and device: no tensor
        needed to say where (inside a checkpoint the tensors may be tracers, whose device is not known)."""
        return self.backend.asarray(np.asarray(value), dtype or self.dtype, self.placement)


def simulate(segments, backend: str = "numpy", device=None, params=None, relaxation=None, detector=None,
             dtype: str | None = None, noise: bool = False, seed: int = 0, config: SimConfig | None = None,
             return_waveforms: bool = False) -> Hits:
    """Simulate pixel hits with the differentiable simulator.

    segments    NumPy structured array in the simulation frame (z = drift; ``larnd_diff.io.load_segments``) or a
                dict of field arrays / framework tensors (dE, dEdx and positions may carry gradients).
    backend     "numpy" (forward only), "torch", "jax", "tensorflow"; device: the framework's device string.
    params      mapping name -> float or framework tensor (or a Params); missing names take the detector's
                nominal values. Gradients flow to tensor values.
    relaxation  "hard" (reference semantics), "smooth" or a Relaxation; default from ``config`` (hard).
    dtype       "float64" (default) or "float32".
    Returns :class:`Hits` whose arrays are native tensors of the backend (rows: event, chunk, pixel (I, J)
    lexicographic, rows with at least one sample only; ``backtrack`` None). With ``return_waveforms`` the
    result is (hits, waveforms, plan) with the per-row induced charge per tick (electrons): the dense
    (n_rows, n_ticks) tensor of the whole call, outside ``SimConfig.memory_budget_bytes``.

    Memory: a call whose dense charge (rows x ticks of the event) and host plan fit the budget is evaluated at
    once; a larger one in pieces (:mod:`larnd_diff.sim.memory`): host plans per run of whole chunks, pixel rows in
    groups on their own tick windows, each group checkpointed on differentiable backends (its intermediates are
    recomputed for the gradient, one group at a time). Hits are the same either way (without noise; with noise
    each group draws from its own stream, seeded from ``seed`` and the group).
    """
    config = config or SimConfig()
    relax = as_relaxation(relaxation if relaxation is not None else config.relaxation)
    dtype = dtype or config.dtype
    detector = resolve_detector(detector)
    b = ops.get_backend(backend)
    params = as_params(params, nominal=detector.nominal)
    fields = _fields(segments)
    for name in POSITION_FIELDS + TIME_FIELDS + ("dE", "dEdx", "eventID"):
        if name not in fields:
            raise KeyError(f"segments lack the field {name!r} (simulation frame, see larnd_diff.io.SEGMENT_DTYPE)")

    # ---- host plan from detached values (per run of whole chunks when one plan would not fit the budget)
    sharp = relax.onset_sharpness
    k_fast = induce.smooth_window_ticks(sharp, pixels.MAX_FAST_CONSTANT_US, detector.t_sampling)
    k_slow = induce.smooth_window_ticks(sharp, pixels.MAX_TIME_CONSTANT_US, detector.t_sampling)
    host = _plan_inputs(fields, params, detector, relax)
    tilt = FLAT_TILT_CM if sharp is not None else 0.0
    budget = float(config.memory_budget_bytes)
    parts = [np.arange(len(host["eventID"]))] if return_waveforms else \
        memory.segment_parts(host, detector, config.chunk_size, budget)
    make_plan = functools.partial(_part_plan, host=host, detector=detector, relaxation=relax,
                                  chunk_size=config.chunk_size, tilt=tilt, k_slow=k_slow)
    whole = make_plan(parts[0]) if len(parts) == 1 else None

    # ---- differentiable inputs on the backend
    t = _segment_tensors(b, fields, dtype, device)
    like = t["x"]
    kernel_target = fused_target(config.kernel, b, like)
    # the fused kernels in one call close over host data: not inside the jitted blocks of a backend that jits them
    one_call = kernel_target is not None and not b.prefers_jit
    compile_glue = _wants_compile(config.compile, b, like)
    compile_inputs = one_call and compile_glue
    c = _Call(backend=b, relaxation=relax, dtype=dtype,
              grid=(float(detector.pixel_pitch), int(detector.sampled_points), float(detector.t_sampling),
                    float(detector.pixel_pitch) / 2 if relax.pad_edge == "linear" else 0.0,
                    pixels.Z_STEP_CM if relax.z_step == "fixed" else 0.0),
              k_fast=k_fast, k_slow=k_slow, kernel_target=kernel_target, one_call=one_call,
              pad_multiple=config.pad_multiple, detector=detector, config=config, device=device, tilt=tilt,
              link_vdrift=params.link_vdrift, compile_inputs=compile_inputs, compile_glue=compile_glue, noise=noise,
              seed=seed, placement=b.device_of(like))
    bparams = _param_tensors(b, params, dtype, device, upload_floats=compile_inputs)
    flat = host["z_start"] == host["z_end"]
    seg_consts = ops.asarray(like, np.stack([host["z_start"] < host["z_end"] + tilt * flat, flat]).astype(np.float64),
                             dtype)
    if whole is not None and (return_waveforms or _fits_at_once(c, whole[0], budget)):
        return _simulate_at_once(c, whole, t, bparams, seg_consts, return_waveforms)
    part_of = lambda made: memory.part_plan(*made, detector.n_ticks_event)  # noqa: E731
    plans = memory.PartPlans(parts, lambda rows: part_of(make_plan(rows)),
                             first=None if whole is None else part_of(whole))
    return _simulate_in_groups(c, plans, t, bparams, seg_consts, budget)


def _part_plan(rows, *, host, detector, relaxation, chunk_size, tilt, k_slow):
    """(PairPlan, pair constants) of the segment rows ``rows`` (whole chunks), segments numbered as in ``host``."""
    everything = len(rows) == len(host["eventID"])
    plan = pixels.plan_pairs(host if everything else memory.subset(host, rows), detector, relaxation, chunk_size,
                             tilt_flat=tilt, smooth_ticks=k_slow)
    if not everything:
        plan = dataclasses.replace(plan, seg=rows[plan.seg])
    return plan, _pair_constants(plan, host, tilt, detector)


def _n_ticks(plan, detector) -> int:
    """Ticks of the event's tick axis that the plan's windows reach (plus the front end's tail); 1 without pairs."""
    if not plan.n_pairs:
        return 1
    return int(min(detector.n_ticks_event, (plan.placement + plan.n_win).max() + TAIL_TICKS))


def _dense_bytes(c: _Call, n_cells: int, n_pairs: int) -> float:
    return memory.CELL_BYTES[c.dtype] * n_cells + memory.PAIR_BYTES * n_pairs


def _group_budget(c: _Call, budget: float) -> float:
    """The part of the budget for the dense charge and the pairs of a row group (the rest is the scratch of the
    fused host kernels; the GPU kernels have none)."""
    return budget if c.kernel_target == "cuda" else budget * (1 - memory.KERNEL_SHARE)


def _fits_at_once(c: _Call, plan, budget: float) -> bool:
    """Whether the whole call's dense charge (every row x the event's ticks) and pairs fit the budget."""
    return _dense_bytes(c, len(plan.rows) * _n_ticks(plan, c.detector), plan.n_pairs) <= _group_budget(c, budget)


def _simulate_at_once(c: _Call, whole, t, bparams, seg_consts, return_waveforms: bool):
    """Every row at once on the event's tick axis (calls that fit the budget)."""
    plan, pair_consts = whole
    b, dtype = c.backend, c.dtype
    like = t["x"]
    asarr = lambda a, dt_=dtype: ops.asarray(like, np.asarray(a), dt_)  # noqa: E731
    static = dict(relaxation=c.relaxation, tilt=c.tilt, link_vdrift=c.link_vdrift)
    n_ticks = _n_ticks(plan, c.detector)
    n_rows = len(plan.rows)
    budget = c.config.memory_budget_bytes

    def one_call_inputs(pairs):
        bind = b.compiled_glue if c.compile_inputs else functools.partial
        inputs = bind(_event_pair_inputs, detector=c.detector, grid=c.grid, **static)
        return inputs(t, bparams, seg_consts, asarr(plan.seg[pairs], "int64"), asarr(pair_consts[pairs]))

    def block_tables():
        *seg, vdrift = _segment_inputs(t, bparams, seg_consts, detector=c.detector, **static)
        return seg, (asarr(vdrift) if isinstance(vdrift, (int, float)) else vdrift)

    charge = induced_charge(c, plan, pair_consts, n_rows, n_ticks, budget, like, asarr, one_call_inputs,
                            block_tables)

    # ---- electronics
    from larnd_diff.sim.electronics import electronics

    rng = b.rng(c.seed, c.device) if c.noise else None
    adc, time, q = electronics(charge, c.detector, c.relaxation, noise=c.noise, rng=rng, compile_glue=c.compile_glue)
    hits = _hits_of(_kept_rows(adc), plan.rows, plan.row_event, adc, time, q, asarr)
    if return_waveforms:
        return hits, charge, plan
    return hits


def _kept_rows(adc) -> np.ndarray:
    """Indices of the rows with at least one sample (from the ADC's concrete values)."""
    adc_host = _concrete(ops.stop_gradient(adc))
    if adc_host is None:
        raise ValueError("simulate needs concrete values to select the rows with samples; under jax.jit call it "
                         "outside the jitted function (its blocks are jitted internally)")
    return np.flatnonzero(np.any(~np.isnan(adc_host), axis=1)) if adc_host.shape[0] else np.zeros(0, np.int64)


def _hits_of(keep, pixels_, events, adc, time, q, asarr) -> Hits:
    """Hits of the rows ``keep`` of output rows with pixel ids ``pixels_`` (n, 2) and event ids ``events`` (n,)
    (NumPy) and front-end samples adc, time, q (tensors, (n, 10))."""
    kt = asarr(keep, "int64")
    return Hits(event_id=asarr(events[keep], "int64").raw, pixel=asarr(pixels_[keep], "int64").raw,
                adc=ops.gather(adc, kt, 0).raw, time=ops.gather(time, kt, 0).raw, charge=ops.gather(q, kt, 0).raw,
                backtrack=None)


# ---------------------------------------------------------------------------------------------- row groups
def _simulate_in_groups(c: _Call, plans: memory.PartPlans, t, bparams, seg_consts, budget: float) -> Hits:
    """The call in pieces that fit the budget: part by part (host plans of whole chunks), row group by row group
    (rows on their own tick windows). The segments' quench and drift run once; each group's pairs, induced charge
    and front end are one function of the segment tables, checkpointed on differentiable backends."""
    b = c.backend
    endpoints, drifted = _segment_tables(c, t, bparams, seg_consts)
    vdrift = _vdrift_tensor(c, bparams)
    group_budget = _group_budget(c, budget)
    pieces = []
    for k in range(len(plans)):
        part = plans(k)
        plan = part.plan
        for r0, r1 in memory.row_groups(part, group_budget, memory.CELL_BYTES[c.dtype], memory.PAIR_BYTES):
            fn = functools.partial(_group_samples, c=c, plans=plans, part=k, rows=(r0, r1), budget=budget)
            if c.grad_capable:
                fn = b.checkpoint(fn)
            adc, time, q = fn(endpoints, drifted, vdrift)
            pieces.append(_hits_of(_kept_rows(adc), plan.rows[r0:r1], plan.row_event[r0:r1], adc, time, q,
                                   c.asarray))
    return _concatenate_hits(b, pieces, endpoints)


def _segment_tables(c: _Call, t, bparams, seg_consts):
    """Quench and drift of every segment: (endpoints (n_seg, 6), drifted (n_seg, 3)) of :func:`_segment_inputs`,
    checkpointed on differentiable backends, so that the gradient keeps the two tables, not the intermediates.
    Tensors enter as positional arguments (what every checkpoint takes)."""
    names = list(t)
    numbers = {k: v for k, v in bparams.items() if isinstance(v, (int, float))}
    tensor_names = [k for k in bparams if k not in numbers]
    static = dict(detector=c.detector, relaxation=c.relaxation, tilt=c.tilt, link_vdrift=c.link_vdrift)

    def tables(consts, *tensors):
        fields = dict(zip(names, tensors[:len(names)]))
        p = {**numbers, **dict(zip(tensor_names, tensors[len(names):]))}
        endpoints, drifted, _ = _segment_inputs(fields, p, consts, **static)
        return endpoints, drifted

    run = c.backend.checkpoint(tables) if c.grad_capable else tables
    return run(seg_consts, *[t[k] for k in names], *[bparams[k] for k in tensor_names])


def _vdrift_tensor(c: _Call, bparams):
    """The drift velocity as a tensor (from eField and the temperature when linked, as :func:`_segment_inputs`)."""
    v = drift_velocity(bparams["eField"], bparams["temperature"]) if c.link_vdrift else bparams["vdrift"]
    return c.asarray(v) if isinstance(v, (int, float)) else v


def _group_samples(endpoints, drifted, vdrift, *, c: _Call, plans, part: int, rows, budget: float):
    """Front-end samples (adc, time, charge), each (r1 - r0, 10), of the output rows ``rows`` = (r0, r1) of part
    ``part``: the rows' pairs from the segment tables, their induced charge on the rows' own tick windows, the
    front end with those windows' offsets. A pure function of its tensors (host data from ``plans``, remade
    the same way when a checkpoint recomputes it)."""
    from larnd_diff.sim.electronics import electronics

    b = c.backend
    g = memory.group_plan(plans(part), rows[0], rows[1])
    consts = g.pair_consts
    asarr = c.asarray

    def one_call_inputs(pairs):
        bind = b.compiled_glue if c.compile_inputs else functools.partial
        inputs = bind(_group_pair_inputs, grid=c.grid)
        return inputs(endpoints, drifted, vdrift, asarr(g.plan.seg[pairs], "int64"), asarr(consts[pairs]))

    charge = induced_charge(c, g.plan, consts, len(g.first), g.n_ticks, budget * memory.KERNEL_SHARE, endpoints,
                            asarr, one_call_inputs, lambda: ((endpoints, drifted), vdrift))
    rng = b.rng(_group_seed(c.seed, part, rows[0]), c.device) if c.noise else None
    return tuple(electronics(charge, c.detector, c.relaxation, noise=c.noise, rng=rng,
                             active_ticks=asarr(g.width, "int64"), tick_offset=asarr(g.first, "int64"),
                             compile_glue=c.compile_glue))


def _group_pair_inputs(endpoints, drifted, vdrift, pair_seg, pair_consts, *, grid):
    """Stacked per-pair inputs (n_pairs, len(induce.PAIR_FIELDS)) from the segment tables (compiled on GPUs)."""
    return induce.stack_pair_inputs(pair_dict((endpoints, drifted), vdrift, pair_seg, pair_consts), grid=grid)


def _group_seed(seed: int, part: int, row: int) -> int:
    """Seed of the noise stream of the row group starting at output row ``row`` of part ``part``."""
    return int(np.random.SeedSequence([int(seed), int(part), int(row)]).generate_state(1, np.uint64)[0] >> 1)


def _concatenate_hits(b, pieces, like) -> Hits:
    """The row groups' hits in order (an empty call: empty hits)."""
    pieces = [h for h in pieces if len(h)] or pieces[:1]
    if not pieces:
        dtypes = dict(event_id="int64", pixel="int64")
        shapes = dict(event_id=(0,), pixel=(0, 2))
        return Hits(**{k: b.asarray(np.zeros(shapes.get(k, (0, 10))), dtypes.get(k, ops.dtype_name(like)),
                                    b.device_of(like)).raw for k in ("event_id", "pixel", "adc", "time", "charge")},
                    backtrack=None)
    if len(pieces) == 1:
        return pieces[0]
    cat = lambda name: ep.concatenate([ep.astensor(getattr(h, name)) for h in pieces], axis=0).raw  # noqa: E731
    return Hits(event_id=cat("event_id"), pixel=cat("pixel"), adc=cat("adc"), time=cat("time"), charge=cat("charge"),
                backtrack=None)


__all__ = ["simulate", "trace_count", "fused_target"]
