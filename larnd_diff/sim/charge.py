"""The induced charge of a host plan's output rows on their tick axis (electrons per tick).

A plan's (segment, pixel) pairs (:mod:`larnd_diff.sim.pixels`) become charge in one of two ways
(:func:`induced_charge`):

* **fused kernels in one call** (an eagerly executing backend with a kernel target, :func:`fused_target`): the
  framework forms the per-pair inputs of every pair, one host (Numba) or GPU call expands the rows, evaluates their
  waveforms and adds them onto the rows' ticks, in host groups sized to the budget (:func:`_host_groups`);
* **blocks** otherwise: pairs of equal padded window width (and z samples) in blocks whose memory estimate fits the
  budget (:func:`_blocks`), each block padded to a small ladder of shapes, jitted where the backend prefers it and
  checkpointed on differentiable backends (:func:`_block_fn`), then scatter-added onto the rows' ticks.

The reference's NaN windows of segments parallel to the anode are laid over the result (hard onset). The settings
come from the call (:class:`ChargeMethod`, made by :func:`larnd_diff.sim.pipeline.simulate`); this module knows
nothing of the call's other stages.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.sim import induce, pixels

#: Differentiable per-segment inputs of the induced current (columns of the two segment tables of
#: ``pipeline._segment_inputs``): the endpoints ordered along z (A before B), the diffusion widths (cm) and the
#: electrons reaching the anode.
SEGMENT_INPUTS = ("ax", "ay", "az", "bx", "by", "bz", "sigma_T", "sigma_L", "n_electrons")
#: Host constants of a (segment, pixel) pair (columns of ``pipeline._pair_constants``).
PAIR_CONSTANTS = ("x_p", "y_p", "x_first_is_a", "branch", "n_z", "sgn_x", "sgn_y", "z_anode")


def pair_dict(seg, vdrift, pair_seg, pair_consts):
    """Per-pair tensors for :func:`induce.pair_inputs`: the segment tables ``seg`` (endpoints (n_seg, 6), drifted
    (n_seg, 3), columns :data:`SEGMENT_INPUTS`) gathered at the pairs' segments ``pair_seg``, the pairs' host
    constants ``pair_consts`` (columns :data:`PAIR_CONSTANTS`) and the drift velocity ``vdrift``."""
    columns = []
    for table in seg:
        rows = ops.gather(table, pair_seg, 0)
        columns += [rows[:, i] for i in range(rows.shape[1])]
    g = dict(zip(SEGMENT_INPUTS, columns))
    g.update({name: pair_consts[:, i] for i, name in enumerate(PAIR_CONSTANTS)})
    g["x_first_is_a"] = g["x_first_is_a"] > 0.5
    g["vdrift"] = vdrift
    return g


@dataclasses.dataclass(frozen=True)
class ChargeMethod:
    """How a call evaluates the induced charge: its ``backend`` (``ops.get_backend``) and ``dtype``, the sampling
    ``grid`` (pixel pitch cm, z samples per pitch, tick us, half-width of the linear pad edge cm or 0, fixed z
    step cm or 0), the onset ``relaxation`` and its smoothing windows ``k_fast``, ``k_slow`` (ticks), where the hot
    loop runs (``kernel_target`` of :func:`fused_target`), whether every pair goes to the kernels in one call
    (``one_call``) and the padding multiple of the blocks (``SimConfig.pad_multiple``)."""

    backend: Any
    relaxation: Any
    dtype: str
    grid: tuple
    k_fast: int
    k_slow: int
    kernel_target: Any
    one_call: bool
    pad_multiple: int

    @property
    def sharpness(self) -> Optional[float]:
        s = self.relaxation.onset_sharpness
        return None if s is None else float(s)

    @property
    def straight(self) -> bool:
        return self.sharpness is not None and self.relaxation.onset == "straight-through"

    @property
    def grad_capable(self) -> bool:
        return self.backend.supports("grad")


# ---------------------------------------------------------------------------------------------- blocks
#: Block functions by (backend, gradients, kernel target): made once per process, since jitting them is the cost.
_JIT_CACHE: Dict[Any, Any] = {}
#: Padded window widths (ticks) of the blocks.
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


# ---------------------------------------------------------------------------------------------- charge
def induced_charge(m: ChargeMethod, plan: pixels.PairPlan, pair_consts, n_rows: int, n_ticks: int, budget: float,
                   like, asarr, one_call_inputs, block_tables):
    """Induced charge (n_rows, n_ticks) of the plan's rows on its tick axis: the fused kernels in one call (per-pair
    inputs ``one_call_inputs(pairs)``), else block by block from the segment tables ``block_tables()`` (returns
    (tables, vdrift) for :func:`pair_dict`); the reference's NaN windows overlaid (hard onset). ``pair_consts``:
    the pairs' host constants (:data:`PAIR_CONSTANTS`); ``budget``: bytes of one block or host group; ``like``: a
    tensor of the backend; ``asarr(array, dtype)``: host arrays as its tensors."""
    sharp = m.sharpness
    itemsize = 8 if m.dtype == "float64" else 4
    n_corr = 2 * (m.k_fast + m.k_slow)
    compute = ~plan.nan_pair if sharp is None else np.ones(plan.n_pairs, bool)
    blocks = _blocks(plan, compute, budget, n_corr, itemsize, m.kernel_target is not None)
    if m.one_call:
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
            charge = induce.fused_charge(m.backend.name, pairf, table, plan.eval_start[pairs], groups,
                                         n_rows=n_rows, n_ticks=n_ticks, dt=m.grid[2], sharpness=sharp,
                                         k_fast=m.k_fast, k_slow=m.k_slow, target=m.kernel_target,
                                         straight_through=m.straight)
    else:
        seg, vdrift = block_tables()
        pair_tensors = lambda gather: pair_dict(seg, vdrift, asarr(plan.seg[gather], "int64"),  # noqa: E731
                                                asarr(pair_consts[gather]))
        charge = _blocks_charge(m, plan, blocks, pair_tensors, asarr, like, n_rows, n_ticks)
    if m.relaxation.tick_phase == "averaged":
        charge = average_tick_phase(charge)
    if sharp is None and plan.nan_pair.any():
        charge = _nan_overlay(charge, plan, n_ticks, asarr)
    return charge


def average_tick_phase(charge):
    """The mean of larnd-sim's two placements of a segment's current (``Relaxation.tick_phase="averaged"``): sampled
    on the ticks it lands on (``charge``, (n_rows, n_ticks), planned so by
    :func:`larnd_diff.sim.pixels.signal_windows`) and one tick later, which the reference's floor of the evaluation
    start gives when t_start's phase in its tick is >= 1/2. Half of each tick's charge moves to the next tick: the
    total is kept (the tick axis ends after the front end's tail) and nothing jumps as t_start crosses a half tick."""
    later = ep.concatenate([ep.zeros_like(charge[:, :1]), charge[:, :-1]], axis=1)
    return 0.5 * (charge + later)


def _blocks_charge(m: ChargeMethod, plan, blocks, pair_tensors, asarr, like, n_rows, n_ticks):
    """Induced charge (n_rows, n_ticks) block by block (:func:`_block_fn`: jitted on jax, padded shapes),
    scatter-added onto the rows' tick axis."""
    fn = _block_fn(m.backend, m.grad_capable, m.kernel_target)
    waves, flat_idx, keep_masks = [], [], []
    for pair_idx, width, n_z in blocks:
        gather, rows, n_p, n_r, _ = _block_inputs(plan, pair_idx, m.pad_multiple)
        g = pair_tensors(gather)
        rows_t = {k: asarr(v, "int64") for k, v in rows.items() if k not in ("valid", "t0")}
        rows_t["valid"] = asarr(rows["valid"])
        rows_t["t0"] = asarr(rows["t0"], "float64" if m.kernel_target else m.dtype)
        wave = fn(g, rows_t, n_pairs=n_p, n_rows=n_r, n_z=n_z, width=width, grid=m.grid, sharpness=m.sharpness,
                  k_fast=m.k_fast, k_slow=m.k_slow, dtype=m.dtype, straight=m.straight)
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


__all__ = ["SEGMENT_INPUTS", "PAIR_CONSTANTS", "ChargeMethod", "pair_dict", "induced_charge", "average_tick_phase",
           "fused_target", "trace_count"]
