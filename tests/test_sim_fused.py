"""The fused Numba kernels of the induced current against the EagerPy implementation they replace on CPU.

Same waveforms (float64 rounding), same ADC rows, and the hand-written backward gives the same gradients as
autodiff through the EagerPy code: for the six fit parameters and for segment inputs, in the hard and smooth
presets (and the soft onset's values), on every differentiable backend; the smooth preset's straight-through
onset. Plus the kernel selection rules of ``SimConfig(kernel=...)``.
"""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff import ops
from larnd_diff.params import FIT_PARAMETERS, SPECS
from larnd_diff.sim import simulate
from larnd_diff.sim.config import SMOOTH, SimConfig

pytest.importorskip("numba")
pytestmark = pytest.mark.backend

FUSED, EAGER = SimConfig(kernel="fused"), SimConfig(kernel="eager")
#: the sigmoid onset in the value too (the smooth preset's is straight-through: the hard stop's value)
SOFT = SMOOTH.replace(onset="soft")
#: a sharp onset: its e^{-s y} steps overflow and start subnormal, the kernels must recompute them exactly
SHARP = SOFT.replace(onset_sharpness=1000.0)


@pytest.fixture(scope="module")
def segments():
    from larnd_diff.generate import generate_muons

    segs = generate_muons(n_events=2, seed=3)
    return segs[:20]


def _waves(segs, backend, relaxation, config, params=None, device=None):
    hits, waves, _ = simulate(segs, backend=backend, relaxation=relaxation, config=config, params=params,
                              return_waveforms=True, device=device)
    return hits, waves


@pytest.mark.parametrize("relaxation", ["hard", "smooth", SOFT, SHARP], ids=["hard", "smooth", "soft", "sharp"])
def test_fused_forward_matches_eager(segments, backend, relaxation):
    h_f, w_f = _waves(segments, backend, relaxation, FUSED)
    h_e, w_e = _waves(segments, backend, relaxation, EAGER)
    w_f, w_e = ops.to_numpy(w_f), ops.to_numpy(w_e)
    assert w_f.shape == w_e.shape and np.abs(w_e).max() > 1e3
    assert np.nanmax(np.abs(w_f - w_e)) <= 1e-12 * np.nanmax(np.abs(w_e))
    a_f, a_e = ops.to_numpy(h_f.adc), ops.to_numpy(h_e.adc)
    np.testing.assert_array_equal(np.nan_to_num(a_f, nan=-1), np.nan_to_num(a_e, nan=-1))


def _gradients(segs, backend, relaxation, config, device=None):
    """d/d(six parameters, segment dE, x_start) of a weighted sum of the per-tick charge (float64)."""
    b = ops.get_backend(backend)
    weights = np.random.default_rng(1).random(200_000)
    fields = {n: segs[n] for n in segs.dtype.names}

    def loss(p):
        f = dict(fields)
        f["dE"], f["x_start"] = p.pop("dE"), p.pop("x_start")
        _, waves, _ = simulate(f, backend=backend, relaxation=relaxation, config=config, return_waveforms=True,
                               params={k: v.raw for k, v in p.items()}, device=device)
        w = ops.nan_to_num(waves.reshape((-1,)))
        return (w * ops.asarray(w, weights[: w.shape[0]], "float64")).sum()

    start = {k: b.asarray(np.asarray(SPECS[k].nominal), "float64", device) for k in FIT_PARAMETERS}
    start["dE"] = b.asarray(segs["dE"].astype(np.float64), "float64", device)
    start["x_start"] = b.asarray(segs["x_start"].astype(np.float64), "float64", device)
    _, grads = b.value_and_grad(loss, start)
    return {k: ops.to_numpy(v) for k, v in grads.items()}


@pytest.mark.parametrize("relaxation", ["hard", "smooth"])
def test_fused_gradients_match_autodiff(segments, backend, relaxation):
    if backend == "numpy":
        pytest.skip("numpy is forward-only")
    _assert_same_gradients(_gradients(segments, backend, relaxation, FUSED),
                           _gradients(segments, backend, relaxation, EAGER), relaxation)


def _assert_same_gradients(g_f, g_e, relaxation):
    for name in g_e:
        scale = np.abs(g_e[name]).max()
        if relaxation != "hard" or name not in ("Ab", "kb", "eField", "lifetime", "dE"):
            assert scale > 0, name        # truncated electron counts (hard) carry no charge gradient
        assert np.all(np.isfinite(g_f[name])), name
        np.testing.assert_allclose(g_f[name], g_e[name], rtol=0, atol=1e-9 * max(scale, 1e-300), err_msg=name)


@pytest.mark.parametrize("config", [FUSED, EAGER], ids=["fused", "eager"])
def test_straight_through_onset(segments, backend, config):
    """The smooth preset's onset is straight-through: the hits of the hard stop (no sigmoid in the value: the
    reference's current, tick for tick) with the gradient of the sigmoid onset (the soft variant's, exactly)."""
    hits, waves = _waves(segments, backend, "smooth", config)
    hits_hard, _ = _waves(segments, backend, SMOOTH.replace(onset_sharpness=None), config)
    _, waves_soft = _waves(segments, backend, SOFT, config)
    for name in ("adc", "time"):
        np.testing.assert_array_equal(np.nan_to_num(ops.to_numpy(getattr(hits, name)), nan=-1),
                                      np.nan_to_num(ops.to_numpy(getattr(hits_hard, name)), nan=-1), err_msg=name)
    w, w_soft = ops.to_numpy(waves), ops.to_numpy(waves_soft)
    assert np.abs(w - w_soft).max() > 1e-6 * np.abs(w_soft).max()    # the sigmoid moves the soft value
    if backend == "numpy":
        return
    g, g_soft = _gradients(segments, backend, "smooth", config), _gradients(segments, backend, SOFT, config)
    for name in g_soft:
        scale = np.abs(g_soft[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(g[name], g_soft[name], rtol=0, atol=1e-12 * scale, err_msg=name)


def test_kernel_selection(segments):
    from larnd_diff.sim.pipeline import fused_target
    from larnd_diff.ops import get_backend

    nb = get_backend("numpy")
    like = nb.asarray(np.zeros(3), "float64")
    assert fused_target("auto", nb, like) == "cpu" and fused_target("fused", nb, like) == "cpu"
    assert fused_target("eager", nb, like) is None
    with pytest.raises(ValueError, match="kernel"):
        fused_target("cuda-magic", nb, like)
    with pytest.raises(ValueError, match="kernel"):
        SimConfig(kernel="cuda-magic")


def _cuda_or_skip():
    torch = pytest.importorskip("torch")
    from larnd_diff.sim import fused_cuda

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    if not fused_cuda.is_available():
        pytest.skip("numba-cuda cannot launch kernels here")
    return "cuda:0"


@pytest.mark.gpu
@pytest.mark.parametrize("relaxation", ["hard", "smooth"])
def test_fused_cuda_matches_eager_and_cpu(segments, relaxation):
    """The numba-cuda kernels (torch on a GPU) against the EagerPy path on the GPU and the CPU kernels."""
    device = _cuda_or_skip()
    _, w_cuda = _waves(segments, "torch", relaxation, FUSED, device=device)
    _, w_eager = _waves(segments, "torch", relaxation, EAGER, device=device)
    _, w_cpu = _waves(segments, "torch", relaxation, FUSED)
    w_cuda, w_eager, w_cpu = (ops.to_numpy(w) for w in (w_cuda, w_eager, w_cpu))
    scale = np.nanmax(np.abs(w_eager))
    assert np.nanmax(np.abs(w_cuda - w_eager)) <= 1e-12 * scale
    assert np.nanmax(np.abs(w_cuda - w_cpu)) <= 1e-12 * scale
    g_cuda = _gradients(segments, "torch", relaxation, FUSED, device=device)
    _assert_same_gradients(g_cuda, _gradients(segments, "torch", relaxation, EAGER, device=device), relaxation)
    _assert_same_gradients(g_cuda, _gradients(segments, "torch", relaxation, FUSED), relaxation)


# The whole-event CUDA kernels under numba's CUDA simulator (any machine; a subprocess, because
# NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported): the per-pair inputs, pair table and groups of a
# real simulation are captured from the CPU path and fed to both implementations.
_CUDASIM_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from numba import cuda
from larnd_diff.sim import fused, fused_cuda, induce
from larnd_diff.sim.pipeline import simulate
from test_reference_cuda import tiny_segments

captured = []
cpu_charge = induce.fused_charge
def spy(backend_name, pairf, table, t0, groups, **kw):
    captured.append((np.asarray(pairf.raw, np.float64), np.asarray(table), np.asarray(t0), list(groups), kw))
    return cpu_charge(backend_name, pairf, table, t0, groups, **kw)
induce.fused_charge = spy
out = {}
for relax in ("hard", "smooth"):
    captured.clear()
    simulate(tiny_segments(), backend="numpy", relaxation=relax)
    pairf, table, t0, groups, kw = captured[0]
    args = (kw["dt"], kw["sharpness"], kw["k_fast"], kw["k_slow"])
    ends = table[:, fused.T_PLACE] + table[:, fused.T_NWIN]
    # the event's ticks as simulated, and (smooth: the onset's ticks too) cut short inside the windows
    cases = [(relax, kw["n_ticks"])]
    if relax == "smooth":
        cases.append((relax + "-cut", int(ends.max() - table[:, fused.T_NWIN].max() // 2)))
    for case, n_ticks in cases:
        ref = fused.charge_forward(pairf, table, t0, groups, kw["n_rows"], n_ticks, *args)
        layout = fused_cuda.EventLayout(table, t0)
        wave = cuda.to_device(np.zeros(ref.shape))
        fused_cuda.charge_forward(cuda.to_device(pairf), layout, *args, wave)
        g = np.random.default_rng(1).normal(size=ref.shape)
        g_ref = fused.charge_backward(pairf, table, t0, groups, *args, g)
        grad = cuda.to_device(np.zeros(pairf.shape))
        fused_cuda.charge_backward(cuda.to_device(pairf), layout, *args, cuda.to_device(g), grad)
        got, g_got = wave.copy_to_host(), grad.copy_to_host()
        out[case] = dict(pairs=len(pairf), cut=int((ends > n_ticks).sum()), scale=float(np.abs(ref).max()),
                         forward=float(np.abs(got - ref).max() / np.abs(ref).max()),
                         backward=float((np.abs(g_got - g_ref).max(0)
                                         / np.maximum(np.abs(g_ref).max(0), 1e-300)).max()))
print("RESULT" + json.dumps(out))
"""


def test_cuda_event_kernels_match_cpu_under_the_simulator(backend):
    """Rows expanded, waveforms evaluated and added onto the rows' ticks on the GPU (fused_cuda.charge_forward /
    charge_backward) vs the CPU kernels on two segments, hard and smooth, on the event's ticks and with the ticks
    cut short inside the windows: the same charge per tick and the same gradient per pair input to 1e-11 of each
    column's scale (summation order differs: atomics, fast-math on the CPU)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if backend != "numpy":
        pytest.skip("framework-independent kernels: tested once, in the numpy environment")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _CUDASIM_SCRIPT, str(repo)], env=env, capture_output=True,
                          text=True, timeout=900, cwd=repo)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT"):])
    assert set(res) == {"hard", "smooth", "smooth-cut"}
    for relax, r in res.items():
        assert r["pairs"] > 0 and r["scale"] > 0, (relax, r)
        assert (r["cut"] > 0) == relax.endswith("-cut"), (relax, r)
        assert r["forward"] <= 1e-11 and r["backward"] <= 1e-11, (relax, r)
