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
TAIL_TICKS = memory.TAIL_TICKS
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
@dataclasses.dataclass(frozen=True)
class _Call:
    """What one simulate call fixes before evaluating anything: the backend, the physics switches, where the
    kernels run and the memory budget (explicit state handed to the evaluation functions)."""

    backend: Any
    detector: Any
    relaxation: Any
    config: SimConfig
    dtype: str
    device: Any
    grid: tuple
    tilt: float
    link_vdrift: bool
    k_fast: int
    k_slow: int
    kernel_target: Any
    one_call: bool
    compile_inputs: bool
    compile_glue: bool
    noise: bool
    seed: int
    placement: Any

    def asarray(self, value, dtype: str | None = None):
        """A host array as a tensor of the call's backend, dtype (default: the call's) and device: no tensor
        needed to say where (inside a checkpoint the tensors may be tracers, whose device is not known)."""
        return self.backend.asarray(np.asarray(value), dtype or self.dtype, self.placement)

    @property
    def sharpness(self):
        s = self.relaxation.onset_sharpness
        return None if s is None else float(s)

    @property
    def straight(self) -> bool:
        return self.sharpness is not None and self.relaxation.onset == "straight-through"

    @property
    def grad_capable(self) -> bool:
        return self.backend.supports("grad")


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
    c = _Call(backend=b, detector=detector, relaxation=relax, config=config, dtype=dtype, device=device,
              grid=(float(detector.pixel_pitch), int(detector.sampled_points), float(detector.t_sampling)),
              tilt=tilt, link_vdrift=params.link_vdrift, k_fast=k_fast, k_slow=k_slow, kernel_target=kernel_target,
              one_call=one_call, compile_inputs=compile_inputs, compile_glue=compile_glue, noise=noise, seed=seed,
              placement=b.device_of(like))
    bparams = _param_tensors(b, params, dtype, device, upload_floats=compile_inputs)
    flat = host["z_start"] == host["z_end"]
    seg_consts = ops.asarray(like, np.stack([host["z_start"] < host["z_end"] + tilt * flat, flat]).astype(np.float64),
                             dtype)
    if whole is not None and (return_waveforms or _fits_at_once(c, whole[0], budget)):
        return _simulate_at_once(c, whole, t, bparams, seg_consts, return_waveforms)
    plans = memory.PartPlans(parts, make_plan, first=whole)
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

    charge = _induced_charge(c, plan, pair_consts, n_rows, n_ticks, budget, like, asarr, one_call_inputs,
                             block_tables)

    # ---- electronics
    from larnd_diff.sim.electronics import electronics

    rng = b.rng(c.seed, c.device) if c.noise else None
    adc, time, q = electronics(charge, c.detector, c.relaxation, noise=c.noise, rng=rng, compile_glue=c.compile_glue)
    hits = _hits_of(_kept_rows(adc), plan, adc, time, q, asarr)
    if return_waveforms:
        return hits, charge, plan
    return hits


def _induced_charge(c: _Call, plan, pair_consts, n_rows, n_ticks, budget, like, asarr, one_call_inputs,
                    block_tables):
    """Induced charge (n_rows, n_ticks) of the plan's rows on its tick axis: the fused kernels in one call (per-pair
    inputs ``one_call_inputs(pairs)``), else block by block from the segment tables ``block_tables()``; the
    reference's NaN windows overlaid (hard onset). ``like``: a tensor of the backend; ``asarr(array, dtype)``:
    host arrays as its tensors."""
    b, dtype = c.backend, c.dtype
    sharp = c.sharpness
    itemsize = 8 if dtype == "float64" else 4
    n_corr = 2 * (c.k_fast + c.k_slow)
    compute = ~plan.nan_pair if sharp is None else np.ones(plan.n_pairs, bool)
    blocks = _blocks(plan, compute, budget, n_corr, itemsize, c.kernel_target is not None)
    if c.one_call:
        # every pair in one kernel call (host or GPU): per-pair inputs in the framework (compiled into a few
        # kernels on a GPU), the rest (rows, waveforms, placement on the rows' ticks) in the kernels
        if not blocks:
            charge = ep.zeros(like, (n_rows, n_ticks))
        else:
            pairs = np.concatenate([p for p, _, _ in blocks])
            groups = _host_groups(plan, blocks, budget)
            table = np.stack([plan.ix0[pairs], plan.iy0[pairs], plan.nx[pairs], plan.ny[pairs], plan.n_z[pairs],
                              plan.n_win[pairs], plan.out_row[pairs], plan.placement[pairs]], axis=1)
            pairf = one_call_inputs(pairs)
            charge = induce.fused_charge(b.name, pairf, table, plan.eval_start[pairs], groups, n_rows=n_rows,
                                         n_ticks=n_ticks, dt=c.grid[2], sharpness=sharp, k_fast=c.k_fast,
                                         k_slow=c.k_slow, target=c.kernel_target, straight_through=c.straight)
    else:
        seg, vdrift = block_tables()
        pair_tensors = lambda gather: _pair_dict(seg, vdrift, asarr(plan.seg[gather], "int64"),  # noqa: E731
                                                 asarr(pair_consts[gather]))
        charge = _blocks_charge(_block_fn(b, c.grad_capable, c.kernel_target), plan, blocks, pair_tensors, asarr,
                                like, n_rows, n_ticks, c.config, c.grid, sharp, c.k_fast, c.k_slow, dtype,
                                c.kernel_target, c.straight)
    if sharp is None and plan.nan_pair.any():
        charge = _nan_overlay(charge, plan, n_ticks, asarr)
    return charge


def _kept_rows(adc) -> np.ndarray:
    """Indices of the rows with at least one sample (from the ADC's concrete values)."""
    adc_host = _concrete(ops.stop_gradient(adc))
    if adc_host is None:
        raise ValueError("simulate needs concrete values to select the rows with samples; under jax.jit call it "
                         "outside the jitted function (its blocks are jitted internally)")
    return np.flatnonzero(np.any(~np.isnan(adc_host), axis=1)) if adc_host.shape[0] else np.zeros(0, np.int64)


def _hits_of(keep, plan, adc, time, q, asarr) -> Hits:
    """Hits of the rows ``keep`` of the plan's output rows (adc, time, q: per output row, tensors)."""
    kt = asarr(keep, "int64")
    return Hits(event_id=asarr(plan.row_event[keep], "int64").raw, pixel=asarr(plan.rows[keep], "int64").raw,
                adc=ops.gather(adc, kt, 0).raw, time=ops.gather(time, kt, 0).raw, charge=ops.gather(q, kt, 0).raw,
                backtrack=None)


# ---------------------------------------------------------------------------------------------- row groups
def _simulate_in_groups(c: _Call, plans: memory.PartPlans, t, bparams, seg_consts, budget: float) -> Hits:
    """The call in pieces that fit the budget: part by part (host plans of whole chunks), row group by row group
    (rows on their own tick windows). The segments' quench and drift run once; each group's pairs, induced charge
    and front end are one function of the segment tables, checkpointed on differentiable backends."""
    b = c.backend
    segment_stage = _segment_stage(c, t, bparams, seg_consts)
    endpoints, drifted = segment_stage()
    vdrift = _vdrift_tensor(c, bparams, endpoints)
    group_budget = _group_budget(c, budget)
    pieces = []
    for k in range(len(plans)):
        plan, _ = plans(k)
        first, width = memory.row_windows(plan, c.detector.n_ticks_event)
        for r0, r1 in memory.row_groups(plan, width, group_budget, memory.CELL_BYTES[c.dtype], memory.PAIR_BYTES):
            fn = functools.partial(_group_samples, c=c, plans=plans, part=k, rows=(r0, r1), budget=budget)
            if c.grad_capable:
                fn = b.checkpoint(fn)
            adc, time, q = fn(endpoints, drifted, vdrift)
            rows = dataclasses.replace(plan, rows=plan.rows[r0:r1], row_event=plan.row_event[r0:r1])
            pieces.append(_hits_of(_kept_rows(adc), rows, adc, time, q, c.asarray))
    return _concatenate_hits(b, pieces, endpoints)


def _segment_stage(c: _Call, t, bparams, seg_consts):
    """Quench and drift of every segment as a function of no arguments returning (endpoints (n_seg, 6), drifted
    (n_seg, 3)) (:func:`_segment_inputs`); checkpointed on differentiable backends, so that the gradient keeps
    the two tables, not the intermediates. Tensors enter as positional arguments (what every checkpoint takes)."""
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
    args = [seg_consts] + [t[k] for k in names] + [bparams[k] for k in tensor_names]
    return lambda: run(*args)


def _vdrift_tensor(c: _Call, bparams, like):
    """The drift velocity as a tensor (from eField and the temperature when linked, as :func:`_segment_inputs`)."""
    v = drift_velocity(bparams["eField"], bparams["temperature"]) if c.link_vdrift else bparams["vdrift"]
    return ops.asarray(like, np.asarray(v), c.dtype) if isinstance(v, (int, float)) else v


def _group_samples(endpoints, drifted, vdrift, *, c: _Call, plans, part: int, rows, budget: float):
    """Front-end samples (adc, time, charge), each (r1 - r0, 10), of the output rows ``rows`` = (r0, r1) of part
    ``part``: the rows' pairs from the segment tables, their induced charge on the rows' own tick windows, the
    front end with those windows' offsets. A pure function of its tensors (host data from ``plans``, remade
    the same way when a checkpoint recomputes it)."""
    from larnd_diff.sim.electronics import electronics

    b = c.backend
    plan, pair_consts = plans(part)
    first, width = memory.row_windows(plan, c.detector.n_ticks_event)
    g = memory.group_plan(plan, rows[0], rows[1], first, width)
    consts = pair_consts[g.pairs]
    asarr = c.asarray

    def one_call_inputs(pairs):
        bind = b.compiled_glue if c.compile_inputs else functools.partial
        inputs = bind(_group_pair_inputs, grid=c.grid)
        return inputs(endpoints, drifted, vdrift, asarr(g.plan.seg[pairs], "int64"), asarr(consts[pairs]))

    charge = _induced_charge(c, g.plan, consts, len(g.first), g.n_ticks, budget * memory.KERNEL_SHARE, endpoints,
                             asarr, one_call_inputs, lambda: ((endpoints, drifted), vdrift))
    rng = b.rng(_group_seed(c.seed, part, rows[0]), c.device) if c.noise else None
    return tuple(electronics(charge, c.detector, c.relaxation, noise=c.noise, rng=rng,
                             active_ticks=asarr(g.width, "int64"), tick_offset=asarr(g.first, "int64"),
                             compile_glue=c.compile_glue))


def _group_pair_inputs(endpoints, drifted, vdrift, pair_seg, pair_consts, *, grid):
    """Stacked per-pair inputs (n_pairs, len(induce.PAIR_FIELDS)) from the segment tables (compiled on GPUs)."""
    return induce.stack_pair_inputs(_pair_dict((endpoints, drifted), vdrift, pair_seg, pair_consts), grid=grid)


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
