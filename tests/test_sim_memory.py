"""Bounded memory per simulate call (``SimConfig.memory_budget_bytes``, larnd_diff/sim/memory.py).

A call whose dense charge (rows x event ticks) or host plan exceeds the budget is evaluated in pieces: host plans
per part of whole chunks, pixel rows in groups on their own tick windows. The tests force pieces with a 1 MiB
budget on one generated muon (132 segments in chunks of 50: three parts, some ten row groups; evaluated at once,
its dense charge is ~37 MB) and check

* the planners' promises on their own (every part and row group fits, or is one chunk or one row);
* what the simulator allocates: the size of every dense charge it builds, recorded at
  ``pipeline.induced_charge`` (deterministic, unlike the process's resident memory, which
  benchmarks/bench_memory.py measures);
* that the pieces give the hits of the unsplit call and, on the differentiable backends, its gradients.

jax compiles the operations of every new shape, and each row group has its own (rows, ticks): on 2 CPU cores the
ten groups cost minutes, so jax has its own smaller case (two row groups), marked slow.
"""
from __future__ import annotations

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.detector import resolve_detector
from larnd_diff.params import FIT_PARAMETERS, SPECS
from larnd_diff.sim import memory, pipeline
from larnd_diff.sim.config import SimConfig

#: Forces pieces on the test event (at once it needs ~37 MB of dense charge).
SMALL_BUDGET = 2**20
CHUNK = 50
#: jax's case: the first 40 segments in chunks of 20 and a budget that leaves two row groups.
JAX_CASE = dict(n_segments=40, chunk=20, budget=2_000_000)
HIT_FIELDS = ("event_id", "pixel", "adc", "time", "charge")


@pytest.fixture(scope="module")
def segs():
    from larnd_diff.generate import generate_muons

    return generate_muons(n_events=1, tracks_per_event=1, seed=3)


def _config(budget=None, chunk=CHUNK) -> SimConfig:
    return SimConfig(chunk_size=chunk) if budget is None else SimConfig(chunk_size=chunk, memory_budget_bytes=budget)


def _host(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else np.asarray(ops.to_numpy(x))


def _dense_charges(monkeypatch):
    """Record (rows, ticks, pairs, kernel budget) of every dense charge the simulator builds."""
    seen = []
    real = pipeline.induced_charge

    def recording(m, plan, pair_consts, n_rows, n_ticks, budget, *args):
        seen.append((int(n_rows), int(n_ticks), int(plan.n_pairs), float(budget)))
        return real(m, plan, pair_consts, n_rows, n_ticks, budget, *args)

    monkeypatch.setattr(pipeline, "induced_charge", recording)
    return seen


def _piece_bytes(rows, ticks, pairs, dtype="float64") -> float:
    """The cost model of a row group: its dense charge and its pairs (memory.CELL_BYTES, memory.PAIR_BYTES)."""
    return memory.CELL_BYTES[dtype] * rows * ticks + memory.PAIR_BYTES * pairs


# ---------------------------------------------------------------------------------------------- planners
def test_row_groups_fit_the_budget():
    """Consecutive, complete row ranges; each fits the budget at its widest window, or is a single row."""
    rng = np.random.default_rng(0)
    width = rng.integers(1, 3000, 500)
    pairs_per_row = rng.integers(1, 40, 500)
    part = memory.PartPlan(plan=None, pair_consts=None, first=np.zeros(500, np.int64), width=width,
                           by_row=np.arange(pairs_per_row.sum()),
                           row_start=np.concatenate([[0], np.cumsum(pairs_per_row)]))
    budget = 2e6
    groups = memory.row_groups(part, budget, memory.CELL_BYTES["float64"], memory.PAIR_BYTES)
    assert groups[0][0] == 0 and groups[-1][1] == 500
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    for r0, r1 in groups:
        cost = _piece_bytes(r1 - r0, width[r0:r1].max(), pairs_per_row[r0:r1].sum())
        assert cost <= budget or r1 - r0 == 1
        if r1 < 500:      # as large as fits: one more row would not
            assert _piece_bytes(r1 + 1 - r0, width[r0:r1 + 1].max(), pairs_per_row[r0:r1 + 1].sum()) > budget


def test_segment_parts_are_whole_chunks_that_fit(segs):
    det = resolve_detector(None)
    params = pipeline.as_params(None, nominal=det.nominal)
    host = pipeline._plan_inputs(pipeline._fields(segs), params, det, pipeline.as_relaxation("hard"))
    parts = memory.segment_parts(host, det, CHUNK, SMALL_BUDGET)
    assert len(parts) > 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(segs)))
    cost = memory.PLAN_BYTES_PER_CANDIDATE * memory.candidate_pairs(host, det)
    for rows in parts:
        assert len(rows) % CHUNK == 0 or rows[-1] == len(segs) - 1, "a part ends inside a chunk"
        assert cost[rows].sum() <= SMALL_BUDGET or len(rows) <= CHUNK


# ---------------------------------------------------------------------------------------------- simulator
def test_dense_charge_respects_the_budget(segs, monkeypatch):
    """Unsplit: one dense charge far above the budget. Split: every dense charge (with its pairs) within the
    row groups' share of the budget, the fused kernels' scratch within theirs."""
    seen = _dense_charges(monkeypatch)
    pipeline.simulate(segs, backend="numpy", config=_config())
    assert len(seen) == 1 and _piece_bytes(*seen[0][:3]) > 10 * SMALL_BUDGET
    seen.clear()
    pipeline.simulate(segs, backend="numpy", config=_config(SMALL_BUDGET))
    assert len(seen) > 3
    groups_share = SMALL_BUDGET * (1 - memory.KERNEL_SHARE)
    for rows, ticks, pairs, kernel_budget in seen:
        assert _piece_bytes(rows, ticks, pairs) <= groups_share or rows == 1
        assert kernel_budget == SMALL_BUDGET * memory.KERNEL_SHARE


def _assert_same_hits(whole, split, backend):
    assert len(whole) > 0 and len(split) == len(whole)
    for name in HIT_FIELDS:
        a, b = _host(getattr(whole, name)), _host(getattr(split, name))
        if backend == "jax" and name == "charge":   # jitted blocks of other shapes round differently
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)


def _value_and_gradient(segs, backend, config):
    """A smooth scalar of the hits (ADC and charge, fixed weights; smooth preset) and its gradient with respect to
    the six fit parameters, as floats."""
    b = ops.get_backend(backend)
    weights = np.random.default_rng(0).random((4000, 10))

    def loss(p):
        h = pipeline.simulate(segs, backend=backend, params=dict(p), relaxation="smooth", config=config)
        adc = ops.nan_to_num(ep.astensor(h.adc), 0.0)
        q = ops.nan_to_num(ep.astensor(h.charge), 0.0)
        w = ops.asarray(adc, weights[:adc.shape[0]], "float64")
        return (adc * w).sum() + (q * w).sum() / 1000.0

    params = {k: b.asarray(np.asarray(SPECS[k].nominal, np.float64), "float64") for k in FIT_PARAMETERS}
    value, grads = b.value_and_grad(loss, params)
    return float(ops.to_numpy(value)), {k: float(ops.to_numpy(g)) for k, g in grads.items()}


def _assert_same_gradient(whole, split):
    (v0, g0), (v1, g1) = whole, split
    assert v0 != 0.0
    assert v1 == pytest.approx(v0, rel=1e-12)
    for k in FIT_PARAMETERS:
        assert np.isfinite(g0[k]) and g0[k] != 0.0
        assert g1[k] == pytest.approx(g0[k], rel=1e-10), k


def _skip_jax(backend):
    if backend == "jax":
        pytest.skip("jax compiles every row group's shapes anew (minutes here): see test_jax_pieces (slow)")


def test_pieces_give_the_unsplit_hits(backend, segs):
    _skip_jax(backend)
    whole = pipeline.simulate(segs, backend=backend, config=_config())
    split = pipeline.simulate(segs, backend=backend, config=_config(SMALL_BUDGET))
    _assert_same_hits(whole, split, backend)


def test_pieces_give_the_unsplit_gradient(backend, segs):
    """Forward + reverse mode through the checkpointed row groups."""
    _skip_jax(backend)
    if backend == "numpy":
        pytest.skip("numpy is forward-only")
    _assert_same_gradient(_value_and_gradient(segs, backend, _config()),
                          _value_and_gradient(segs, backend, _config(SMALL_BUDGET)))


@pytest.mark.slow
def test_jax_pieces(backend, segs, monkeypatch):
    """jax: hits and gradient of a call in two row groups equal the unsplit call's."""
    if backend != "jax":
        pytest.skip("the jax case")
    sub = segs[:JAX_CASE["n_segments"]]
    seen = _dense_charges(monkeypatch)
    whole = pipeline.simulate(sub, backend=backend, config=_config(chunk=JAX_CASE["chunk"]))
    split = pipeline.simulate(sub, backend=backend, config=_config(JAX_CASE["budget"], JAX_CASE["chunk"]))
    assert len(seen) == 3, "the case no longer splits into two row groups"
    _assert_same_hits(whole, split, backend)
    _assert_same_gradient(_value_and_gradient(sub, backend, _config(chunk=JAX_CASE["chunk"])),
                          _value_and_gradient(sub, backend, _config(JAX_CASE["budget"], JAX_CASE["chunk"])))
