"""Compiled backends do not recompile from batch to batch.

jax: the host plan is recomputed every call, but the differentiable blocks have padded shapes (a small ladder of
sizes), so a second batch whose blocks pad to the same sizes reuses the compiled blocks: the trace counter of
the jitted block function does not move.
torch: the per-pair inputs compiled with dynamic shapes (``SimConfig.compile``, ``Backend.compile_glue``) compile once
for batches of any size, and give the eager implementation's hits and gradients.

The tests take the ``backend`` fixture (so that tox's framework environments select them) and run for their own
framework only.
"""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff.params import FIT_PARAMETERS, SPECS
from larnd_diff.sim import pipeline, simulate
from larnd_diff.sim.config import SimConfig
from test_sim_gradients import small_segments


def _only(backend, name):
    if backend != name:
        pytest.skip(f"a {name} compilation test")
    return pytest.importorskip(name)


def _perturbed(segs, seed):
    """Same geometry class, different values: dE scaled, positions shifted by < 1 um."""
    rng = np.random.default_rng(seed)
    out = segs.copy()
    out["dE"] = out["dE"] * rng.uniform(0.8, 1.2, len(out)).astype(np.float32)
    shift = rng.uniform(-1e-5, 1e-5, len(out)).astype(np.float32)
    for c in ("x_start", "x_end", "x"):
        out[c] = out[c] + shift
    return out


def test_jax_no_retrace_same_padded_size(backend, record_property):
    _only(backend, "jax")
    a = small_segments(n_seg=8, seed=3)
    b = _perturbed(a, 1)
    h1 = simulate(a, backend="jax", relaxation="smooth")
    n1 = pipeline.trace_count("jax")
    assert n1 >= 1
    h2 = simulate(b, backend="jax", relaxation="smooth")
    n2 = pipeline.trace_count("jax")
    record_property("traces_first_call", n1)
    record_property("traces_second_call", n2 - n1)
    assert n2 == n1, f"second batch of the same padded size retraced {n2 - n1} block(s)"
    assert not np.allclose(np.nan_to_num(np.asarray(h1.adc)), np.nan_to_num(np.asarray(h2.adc))) or len(h1) == 0


def test_jax_grad_through_simulate(backend):
    """jax.grad of a scalar of the outputs w.r.t. a parameter (blocks jitted inside)."""
    jax = _only(backend, "jax")
    import jax.numpy as jnp

    segs = small_segments(n_seg=8, seed=3)

    def f(ab):
        h = simulate(segs, backend="jax", params={"Ab": ab}, relaxation="smooth")
        return jnp.nansum(h.adc)

    g = jax.grad(f)(jnp.asarray(0.8, dtype=jnp.float64))
    assert np.isfinite(float(g)) and float(g) != 0.0


def test_torch_compiled_inputs_compile_once_and_match_eager(backend, record_property):
    """torch.compile'd per-pair inputs (``compile="always"``: on the CPU here, by default only on a GPU): a second
    batch of another size reuses the compiled graph, and hits and six gradients equal the eager implementation's."""
    torch = _only(backend, "torch")
    from torch._dynamo.utils import counters

    def run(segs, mode):
        p = {k: torch.tensor(SPECS[k].nominal, dtype=torch.float64, requires_grad=True) for k in FIT_PARAMETERS}
        h = simulate(segs, backend="torch", params=p, relaxation="smooth", config=SimConfig(compile=mode))
        loss = torch.nan_to_num(h.adc, 0.0).sum() + torch.nan_to_num(h.time, 0.0).sum()
        return h, torch.stack(torch.autograd.grad(loss, list(p.values())))

    run(small_segments(n_seg=8, seed=3), "always")
    graphs = counters["stats"]["unique_graphs"]
    second = small_segments(n_seg=13, seed=5)
    h, g = run(second, "always")
    record_property("graphs_compiled_for_second_batch", counters["stats"]["unique_graphs"] - graphs)
    assert counters["stats"]["unique_graphs"] == graphs, "a batch of another size recompiled the compiled inputs"
    h0, g0 = run(second, "never")
    assert len(h) == len(h0) > 0
    assert torch.equal(torch.nan_to_num(h.adc, -1.0), torch.nan_to_num(h0.adc, -1.0))
    assert torch.equal(torch.nan_to_num(h.time, -1.0), torch.nan_to_num(h0.time, -1.0))
    # the same arithmetic in another order (compiled kernels): float64 rounding only
    np.testing.assert_allclose(g.numpy(), g0.numpy(), rtol=1e-9, atol=0)
