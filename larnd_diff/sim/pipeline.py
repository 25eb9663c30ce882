"""``simulate``: quench -> drift -> pixels -> induce -> electronics, on any EagerPy backend.

The integer structure (pixels, pairs, windows, sample counts) is planned on the host from detached float64
values each call (:mod:`larnd_diff.sim.pixels`); the differentiable arithmetic runs on the chosen backend in
blocks of (segment, pixel) pairs sized to ``SimConfig.memory_budget_bytes``, each block checkpointed on the
differentiable backends and jitted where the backend prefers it (``Backend.prefers_jit``: jax). Block shapes are
padded to a small ladder of sizes so that compiled backends see few distinct shapes. With the fused (Numba) kernels
on an eagerly executing backend (numpy, torch, tensorflow), the framework computes the per-pair inputs of all pairs
at once and one host (or GPU) call does the rest (:func:`larnd_diff.sim.induce.fused_charge`): no per-row tensor,
no padding, no scatter in the framework.
"""
from __future__ import annotations

import functools
from typing import Any, Dict

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.detector import resolve_detector
from larnd_diff.hits import Hits
from larnd_diff.params import SPECS, Params, as_params, drift_velocity
from larnd_diff.sim import induce, pixels
from larnd_diff.sim.config import SimConfig, as_relaxation

#: Segment fields the simulation reads (simulation frame, z = drift).
POSITION_FIELDS = ("x_start", "y_start", "z_start", "x_end", "y_end", "z_end", "x", "y", "z")
TIME_FIELDS = ("t", "t_start", "t_end")
SEGMENT_FIELDS = POSITION_FIELDS + TIME_FIELDS + ("dE", "dEdx")
#: Differentiable per-segment inputs of the induced current (columns of :func:`_segment_inputs`' table): the
#: endpoints ordered along z (A before B), the diffusion widths (cm) and the electrons reaching the anode.
SEGMENT_INPUTS = ("ax", "ay", "az", "bx", "by", "bz", "sigma_T", "sigma_L", "n_electrons")
#: Host constants of a (segment, pixel) pair (columns of :func:`_pair_constants`).
PAIR_CONSTANTS = ("x_p", "y_p", "x_first_is_a", "branch", "n_z", "sgn_x", "sgn_y", "z_anode")
#: Ticks kept after the last charge of a pixel so that a trigger there can still integrate its 18 ticks.
TAIL_TICKS = 24
#: Smooth preset: cm added to z_end of segments parallel to the anode (z_start = z_end), which the reference
#: (larnd_diff/reference) turns into NaN; the tilted line has a finite, tiny z extent and the right xy footprint.
FLAT_TILT_CM = 1e-4

_JIT_CACHE: Dict[Any, Any] = {}


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
    reaching the anode (columns of :data:`SEGMENT_INPUTS`; two tables, so that constant positions stay out of the
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
    """Host constants of every (segment, pixel) pair, (n_pairs, len(PAIR_CONSTANTS)) float64: the pixel centre,
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


def _pair_dict(seg, vdrift, pair_seg, pair_consts):
    """Per-pair tensors for :func:`induce.pair_inputs`: the segment tables ``seg`` of :func:`_segment_inputs`
    gathered at the pairs' segments ``pair_seg`` and the pairs' host constants (rows of :func:`_pair_constants`)."""
    columns = []
    for table in seg:
        rows = ops.gather(table, pair_seg, 0)
        columns += [rows[:, i] for i in range(rows.shape[1])]
    g = dict(zip(SEGMENT_INPUTS, columns))
    g.update({name: pair_consts[:, i] for i, name in enumerate(PAIR_CONSTANTS)})
    g["x_first_is_a"] = g["x_first_is_a"] > 0.5
    g["vdrift"] = vdrift
    return g


def _event_pair_inputs(t, params, seg_consts, pair_seg, pair_consts, *, detector, relaxation, tilt, link_vdrift,
                       grid):
    """Stacked per-pair inputs (n_pairs, len(induce.PAIR_FIELDS)) of the whole event from the segments' tensors:
    quench, drift, z ordering, gather to the pairs, pair geometry. A pure function of tensors (compiled by the
    backend on GPUs, ``SimConfig.compile``)."""
    *seg, vdrift = _segment_inputs(t, params, seg_consts, detector=detector, relaxation=relaxation, tilt=tilt,
                                   link_vdrift=link_vdrift)
    return induce.stack_pair_inputs(_pair_dict(seg, vdrift, pair_seg, pair_consts), grid=grid)


def _wants_compile(mode: str, b, like) -> bool:
    """SimConfig.compile: compile the glue (per-pair inputs, electronics' gathering) on GPU tensors ("auto"),
    always or never (where the backend can: the feature "compile")."""
    if mode == "never" or not b.supports("compile"):
        return False
    return mode == "always" or b.on_cuda(like)


# ---------------------------------------------------------------------------------------------- blocks
_WIDTHS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144)


def _ladder(n: int, multiple: int) -> int:
    """Pad a count up to a power-of-two-ish size (steps of 2^k and 1.5 x 2^k), at least ``multiple``."""
    n = max(int(n), 1)
    size = max(int(multiple), 1)
    while size < n:
        size = size * 3 // 2 if (size & (size - 1)) == 0 else size * 4 // 3
    return size


def _width_of(n_win: np.ndarray) -> np.ndarray:
    w = np.asarray(_WIDTHS)
    return w[np.minimum(np.searchsorted(w, n_win), len(w) - 1)]


def _expand(counts: np.ndarray):
    """(owner, local index) of a ragged range: owner repeated counts[o] times, local = 0..counts[o]-1."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - starts[owner]


def _nz_of(n_z: np.ndarray) -> np.ndarray:
    """Padded number of z samples: 30 (the minimum, most pairs) or a ladder size above it."""
    out = np.asarray([1 << int(np.ceil(np.log2(v))) if v > 30 else 30 for v in np.unique(n_z)])
    return out[np.searchsorted(np.unique(n_z), n_z)]


def _bytes_estimate(n_rows, n_z, width, n_corr, itemsize, fused: bool):
    """Working memory (bytes) of a block. EagerPy entry loop: ~24 live (row, z) temporaries, ~12 (row, tick),
    the onset corrections. Fused kernels: ~100 row-level values (inputs, autodiff residuals) and the pair's
    waveform (here charged to its rows)."""
    if fused:
        return itemsize * n_rows * 100 + 8 * 3 * width * np.maximum(n_rows // 64, 1)
    return itemsize * n_rows * (24 * n_z + 12 * width + 4 * n_z * n_corr)


def _blocks(plan: pixels.PairPlan, compute: np.ndarray, budget: int, n_corr: int, itemsize: int, fused: bool):
    """Split the pairs to evaluate into blocks of equal padded width (and, for the EagerPy entry loop, equal
    padded n_z) whose memory estimate fits ``budget``. Returns [(pair indices, width, n_z)]."""
    pairs = np.flatnonzero(compute)
    if not len(pairs):
        return []
    width = _width_of(plan.n_win[pairs])
    # the fused kernels loop over each row's own n_z: no padding class (n_z = 0, a static argument under jit)
    nz = np.zeros_like(width) if fused else _nz_of(plan.n_z[pairs])
    rows_per = plan.nx[pairs] * plan.ny[pairs]
    out = []
    for w, z in sorted(set(zip(width.tolist(), nz.tolist()))):
        sel = np.flatnonzero((width == w) & (nz == z))
        cost = _bytes_estimate(rows_per[sel], z, w, n_corr, itemsize, fused)
        start, acc = 0, 0
        for k, c in enumerate(cost):
            if acc + c > budget and k > start:
                out.append((pairs[sel[start:k]], int(w), int(z)))
                start, acc = k, 0
            acc += c
        out.append((pairs[sel[start:]], int(w), int(z)))
    return out


def _host_groups(plan, blocks, budget: int):
    """The blocks (in order) merged into as few consecutive groups of one host call as fit ``budget``: each group
    evaluates its pairs' windows at its widest block's width (float64 waveforms, cotangents and row inputs).
    Returns [(first, stop, width)] ranges of the concatenated pairs."""
    groups = []
    start = 0
    for pair_idx, width, _ in blocks:
        stop = start + len(pair_idx)
        rows = int(np.sum(plan.nx[pair_idx] * plan.ny[pair_idx]))
        if groups:
            first, n_rows = groups[-1][0], groups[-1][3] + rows
            if 8 * (3 * (stop - first) * width + 40 * n_rows) <= budget:
                groups[-1] = (first, stop, width, n_rows)
                start = stop
                continue
        groups.append((start, stop, width, rows))
        start = stop
    return [(a, b, w) for a, b, w, _ in groups]


def _block_inputs(plan, pair_idx, multiple):
    """Host index arrays of one block, padded: per-pair gather index and rows (pair, i, j, n_z, n_win, t0).

    Rows are grouped by pair in pair order; padded rows belong to the last pair and have valid = 0.
    """
    n_p = _ladder(len(pair_idx), max(multiple // 4, 1))
    counts = plan.nx[pair_idx] * plan.ny[pair_idx]
    r_pair, r_local = _expand(counts)
    ny = plan.ny[pair_idx][r_pair]
    r_i = plan.ix0[pair_idx][r_pair] + r_local // ny
    r_j = plan.iy0[pair_idx][r_pair] + r_local % ny
    n_r = _ladder(len(r_pair), multiple)
    pad = lambda a, n, v=0: np.concatenate([a, np.full(n - len(a), v, a.dtype)])  # noqa: E731
    gather = pad(pair_idx.astype(np.int64), n_p, pair_idx[0])
    pair_of_row = pad(r_pair, n_r, n_p - 1)
    rows = dict(pair=pair_of_row, i=pad(r_i, n_r), j=pad(r_j, n_r), valid=pad(np.ones(len(r_pair)), n_r, 0.0),
                n_z=plan.n_z[gather][pair_of_row], n_win=plan.n_win[gather][pair_of_row],
                t0=plan.eval_start[gather][pair_of_row])
    return gather, rows, n_p, n_r, len(r_pair)


def _block_fn(backend, grad_capable: bool, kernel_target):
    """The per-block evaluation, jitted where the backend prefers it (cached) and checkpointed on differentiable
    backends (the EagerPy entry loop). The fused CPU kernels (a jitting backend's route to them) take the per-pair
    inputs and expand the rows themselves: the framework's graph is per pair only."""
    key = (backend.name, grad_capable, kernel_target)
    fn = _JIT_CACHE.get(key)
    if fn is None:
        def run(g, rows, *, n_pairs, n_rows, n_z, width, grid, sharpness, k_fast, k_slow, dtype, straight):
            common = dict(n_pairs=n_pairs, width=width, dt=grid[2], sharpness=sharpness, k_fast=k_fast,
                          k_slow=k_slow, straight_through=straight)
            if kernel_target == "cpu":
                # per-pair inputs in the framework, rows expanded inside the host kernels (value and gradient)
                return induce.fused_pair_waveforms(backend.name, induce.stack_pair_inputs(g, grid=grid), rows,
                                                   **common)

            def body(g_, rows_):
                f = induce.row_inputs(g_, rows_, grid=grid, dtype=dtype)
                return induce.entry_waveforms(f, rows_, n_rows=n_rows, n_z=n_z, dtype=dtype, **common)
            if grad_capable:
                body = backend.checkpoint(body)
            return body(g, rows)

        if backend.prefers_jit:
            fn = backend.jit(run, static_argnames=("n_pairs", "n_rows", "n_z", "width", "grid", "sharpness", "k_fast",
                                                   "k_slow", "dtype", "straight"))
        else:
            fn = run
        _JIT_CACHE[key] = fn
    return fn


def fused_target(kernel: str, backend, like):
    """Where a block's hot loop runs: "cpu" (fused Numba kernels on host tensors), "cuda" (fused numba-cuda
    kernels on the GPU tensors of a backend with the feature "device_kernels", e.g. torch) or None (the EagerPy
    implementation). ``kernel``: SimConfig.kernel ("auto" picks a fused target when one fits the tensors' device
    and its numba flavour is importable; "fused" also sends GPU arrays to the host kernels where the backend's
    host callbacks take them, ``Backend.host_callbacks_on_device``: jax.pure_callback)."""
    from larnd_diff.sim import fused

    if kernel not in ("auto", "fused", "eager"):
        raise ValueError(f"unknown kernel {kernel!r}; choose 'auto', 'fused' or 'eager'")
    if kernel == "eager":
        return None
    if backend.on_host(like):
        target = "cpu" if fused.available() else None
    elif backend.supports("device_kernels") and backend.on_cuda(like):
        from larnd_diff.sim import fused_cuda
        target = "cuda" if fused_cuda.is_available() else None
    elif kernel == "fused" and backend.host_callbacks_on_device and fused.available():
        target = "cpu"      # GPU arrays through the backend's host callbacks to the host kernels (copies both ways)
    else:
        target = None
    if kernel == "fused" and target is None:
        raise ValueError(f"SimConfig(kernel='fused') has no kernel for {backend.name} tensors on "
                         f"{backend.device_of(like)} (CPU: numba; GPU: a backend with device kernels and numba-cuda, "
                         "or host callbacks); use kernel='eager' or 'auto'")
    return target


def trace_count(backend_name: str = "jax") -> int:
    """How often the jitted block functions were traced (jax) - for recompilation tests."""
    return sum(getattr(fn, "trace_count", 0) for key, fn in _JIT_CACHE.items() if key[0] == backend_name)


# ---------------------------------------------------------------------------------------------- simulate
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
    result is (hits, waveforms, plan) with the per-row induced charge per tick (electrons).
    """
    config = config or SimConfig()
    relax = as_relaxation(relaxation if relaxation is not None else config.relaxation)
    dtype = dtype or config.dtype
    detector = resolve_detector(detector)
    b = ops.get_backend(backend)
    grad_capable = b.supports("grad")
    params = as_params(params, nominal=detector.nominal)
    fields = _fields(segments)
    for name in POSITION_FIELDS + TIME_FIELDS + ("dE", "dEdx", "eventID"):
        if name not in fields:
            raise KeyError(f"segments lack the field {name!r} (simulation frame, see larnd_diff.io.SEGMENT_DTYPE)")

    # ---- host plan from detached values
    sharp = relax.onset_sharpness
    k_fast = induce.smooth_window_ticks(sharp, pixels.MAX_FAST_CONSTANT_US, detector.t_sampling)
    k_slow = induce.smooth_window_ticks(sharp, pixels.MAX_TIME_CONSTANT_US, detector.t_sampling)
    host = _plan_inputs(fields, params, detector, relax)
    tilt = FLAT_TILT_CM if sharp is not None else 0.0
    plan = pixels.plan_pairs(host, detector, relax, config.chunk_size, tilt_flat=tilt, smooth_ticks=k_slow)

    # ---- differentiable inputs on the backend
    t = _segment_tensors(b, fields, dtype, device)
    like = t["x"]
    asarr = lambda a, dt_=dtype: ops.asarray(like, np.asarray(a), dt_)  # noqa: E731
    kernel_target = fused_target(config.kernel, b, like)
    # the fused kernels in one call close over host data: not inside the jitted blocks of a backend that jits them
    one_call = kernel_target is not None and not b.prefers_jit
    compile_glue = _wants_compile(config.compile, b, like)
    compile_inputs = one_call and compile_glue
    bparams = _param_tensors(b, params, dtype, device, upload_floats=compile_inputs)
    flat = host["z_start"] == host["z_end"]
    seg_consts = asarr(np.stack([host["z_start"] < host["z_end"] + tilt * flat, flat]).astype(np.float64))
    pair_consts = _pair_constants(plan, host, tilt, detector)
    grid = (float(detector.pixel_pitch), int(detector.sampled_points), float(detector.t_sampling))
    static = dict(relaxation=relax, tilt=tilt, link_vdrift=params.link_vdrift)

    # ---- induced charge: fused kernels in one call, else block by block
    itemsize = 8 if dtype == "float64" else 4
    n_corr = 2 * (k_fast + k_slow)
    compute = ~plan.nan_pair if sharp is None else np.ones(plan.n_pairs, bool)
    blocks = _blocks(plan, compute, config.memory_budget_bytes, n_corr, itemsize, kernel_target is not None)
    n_ticks = 1
    ends = plan.placement + plan.n_win
    if plan.n_pairs:
        n_ticks = int(min(detector.n_ticks_event, ends.max() + TAIL_TICKS))
    n_rows = len(plan.rows)
    sharpness = None if sharp is None else float(sharp)
    straight = sharp is not None and relax.onset == "straight-through"
    if one_call:
        # every pair in one kernel call (host or GPU): per-pair inputs in the framework (compiled into a few
        # kernels on a GPU), the rest (rows, waveforms, placement on the rows' ticks) in the kernels
        if not blocks:
            charge = ep.zeros(like, (n_rows, n_ticks))
        else:
            pairs = np.concatenate([p for p, _, _ in blocks])
            groups = _host_groups(plan, blocks, config.memory_budget_bytes)
            table = np.stack([plan.ix0[pairs], plan.iy0[pairs], plan.nx[pairs], plan.ny[pairs], plan.n_z[pairs],
                              plan.n_win[pairs], plan.out_row[pairs], plan.placement[pairs]], axis=1)
            bind = b.compiled_glue if compile_inputs else functools.partial
            inputs = bind(_event_pair_inputs, detector=detector, grid=grid, **static)
            pairf = inputs(t, bparams, seg_consts, asarr(plan.seg[pairs], "int64"), asarr(pair_consts[pairs]))
            charge = induce.fused_charge(b.name, pairf, table, plan.eval_start[pairs], groups, n_rows=n_rows,
                                         n_ticks=n_ticks, dt=grid[2], sharpness=sharpness, k_fast=k_fast,
                                         k_slow=k_slow, target=kernel_target, straight_through=straight)
    else:
        *seg, vdrift = _segment_inputs(t, bparams, seg_consts, detector=detector, **static)
        if isinstance(vdrift, (int, float)):
            vdrift = asarr(vdrift)
        pair_tensors = lambda gather: _pair_dict(seg, vdrift, asarr(plan.seg[gather], "int64"),  # noqa: E731
                                                 asarr(pair_consts[gather]))
        charge = _blocks_charge(_block_fn(b, grad_capable, kernel_target), plan, blocks, pair_tensors, asarr, like,
                                n_rows, n_ticks, config, grid, sharpness, k_fast, k_slow, dtype, kernel_target,
                                straight)
    if sharp is None and plan.nan_pair.any():
        charge = _nan_overlay(charge, plan, n_ticks, asarr)

    # ---- electronics
    from larnd_diff.sim.electronics import electronics

    rng = b.rng(seed, device) if noise else None
    adc, time, q = electronics(charge, detector, relax, noise=noise, rng=rng, compile_glue=compile_glue)
    adc_host = _concrete(ops.stop_gradient(adc))
    if adc_host is None:
        raise ValueError("simulate needs concrete values to select the rows with samples; under jax.jit call it "
                         "outside the jitted function (its blocks are jitted internally)")
    has = np.any(~np.isnan(adc_host), axis=1) if n_rows else np.zeros(0, bool)
    keep = np.flatnonzero(has)
    kt = asarr(keep, "int64")
    hits = Hits(event_id=asarr(plan.row_event[keep], "int64").raw, pixel=asarr(plan.rows[keep], "int64").raw,
                adc=ops.gather(adc, kt, 0).raw, time=ops.gather(time, kt, 0).raw, charge=ops.gather(q, kt, 0).raw,
                backtrack=None)
    if return_waveforms:
        return hits, charge, plan
    return hits


def _blocks_charge(fn, plan, blocks, pair_tensors, asarr, like, n_rows, n_ticks, config, grid, sharpness, k_fast,
                   k_slow, dtype, kernel_target, straight):
    """Induced charge (n_rows, n_ticks) block by block (``fn`` = :func:`_block_fn`: jitted on jax, padded
    shapes), scatter-added onto the rows' tick axis."""
    waves, flat_idx, keep_masks = [], [], []
    for pair_idx, width, n_z in blocks:
        gather, rows, n_p, n_r, _ = _block_inputs(plan, pair_idx, config.pad_multiple)
        g = pair_tensors(gather)
        rows_t = {k: asarr(v, "int64") for k, v in rows.items() if k not in ("valid", "t0")}
        rows_t["valid"] = asarr(rows["valid"])
        rows_t["t0"] = asarr(rows["t0"], "float64" if kernel_target else dtype)
        wave = fn(g, rows_t, n_pairs=n_p, n_rows=n_r, n_z=n_z, width=width, grid=grid, sharpness=sharpness,
                  k_fast=k_fast, k_slow=k_slow, dtype=dtype, straight=straight)
        real = len(pair_idx)
        tick = np.arange(width)
        valid = tick[None, :] < plan.n_win[pair_idx][:, None]
        idx = plan.out_row[pair_idx][:, None] * n_ticks + plan.placement[pair_idx][:, None] + tick[None, :]
        waves.append(wave[:real].reshape((-1,)))
        flat_idx.append(np.where(valid, idx, 0).reshape(-1))
        keep_masks.append(valid.reshape(-1).astype(np.float64))
    charge = ep.zeros(like, (n_rows * n_ticks,))
    if waves:
        vals = ep.concatenate(waves) * asarr(np.concatenate(keep_masks))
        charge = ops.scatter_add(charge, asarr(np.concatenate(flat_idx), "int64"), vals)
    return charge.reshape((n_rows, n_ticks))


def _nan_overlay(charge, plan, n_ticks, asarr):
    """Reference quirk: a segment parallel to the anode makes its pixels' current NaN over its window."""
    mask = np.zeros(charge.shape, bool)
    for p in np.flatnonzero(plan.nan_pair):
        a = plan.placement[p]
        mask[plan.out_row[p], a:min(a + plan.n_win[p], n_ticks)] = True
    return ep.where(asarr(mask, "bool"), float("nan"), charge)


__all__ = ["simulate", "trace_count", "fused_target"]
