"""The fused Numba kernels of the induced current against the EagerPy implementation they replace on CPU.

Same waveforms (float64 rounding), same ADC rows, and the hand-written backward gives the same gradients as
autodiff through the EagerPy code: for the six fit parameters and for segment inputs, in the hard and smooth
presets (and the soft onset's values, and the continuous preset's linear pad edges), on every differentiable
backend; the smooth preset's straight-through onset. Plus the kernel selection rules of ``SimConfig(kernel=...)``.
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


#: results of _waves and _gradients on the module's segments, shared by the tests that need the same run (several
#: ask for the smooth preset's waveforms and gradients; on jax each costs tens of seconds of tracing and compiling)
_RUNS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _forget_runs():
    yield
    _RUNS.clear()


def _memo(key, run):
    if key not in _RUNS:
        _RUNS[key] = run()
    return _RUNS[key]


def _waves(segs, backend, relaxation, config, params=None, device=None):
    def run():
        hits, waves, _ = simulate(segs, backend=backend, relaxation=relaxation, config=config, params=params,
                                  return_waveforms=True, device=device)
        return hits, waves

    if params is not None:
        return run()
    return _memo(("waves", id(segs), backend, relaxation, config, device), run)


@pytest.mark.parametrize("relaxation", ["hard", "smooth", SOFT, SHARP, "continuous"],
                         ids=["hard", "smooth", "soft", "sharp", "continuous"])
def test_fused_forward_matches_eager(segments, backend, relaxation):
    h_f, w_f = _waves(segments, backend, relaxation, FUSED)
    h_e, w_e = _waves(segments, backend, relaxation, EAGER)
    w_f, w_e = ops.to_numpy(w_f), ops.to_numpy(w_e)
    assert w_f.shape == w_e.shape and np.abs(w_e).max() > 1e3
    assert np.nanmax(np.abs(w_f - w_e)) <= 1e-12 * np.nanmax(np.abs(w_e))
    a_f, a_e = ops.to_numpy(h_f.adc), ops.to_numpy(h_e.adc)
    if relaxation == "continuous":  # real-valued ADC: equal up to the waveforms' rounding
        np.testing.assert_allclose(np.nan_to_num(a_f, nan=-1), np.nan_to_num(a_e, nan=-1), rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(np.nan_to_num(a_f, nan=-1), np.nan_to_num(a_e, nan=-1))


def _gradients(segs, backend, relaxation, config, device=None):
    """d/d(six parameters, segment dE, x_start) of a weighted sum of the per-tick charge (float64)."""
    return _memo(("gradients", id(segs), backend, relaxation, config, device),
                 lambda: _run_gradients(segs, backend, relaxation, config, device))


def _run_gradients(segs, backend, relaxation, config, device):
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


@pytest.mark.parametrize("relaxation", ["hard", "smooth", "continuous"])
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
@pytest.mark.parametrize("relaxation", ["hard", "smooth", "continuous"])
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
# real simulation are captured from the CPU path and fed to both implementations. The simulator runs every GPU
# thread as a Python thread (a busy-polling block manager around them): ~10 ms per row here and several times that
# on CI's 2 cores, so the 2141 in-pad rows of the two segments took minutes per launch. The kernels see a sub-event
# of the same pairs instead (see _sub_event): a few rows, the same inputs, the same code paths.
_CUDASIM_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from numba import cuda
from larnd_diff.sim import fused, fused_cuda, induce
from larnd_diff.sim.pipeline import simulate
from test_reference_cuda import tiny_segments
from test_sim_fused import _sub_event

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
    n_rows = kw["n_rows"]
    g_full = np.random.default_rng(1).normal(size=(n_rows, kw["n_ticks"]))
    pairf, table, t0, groups = _sub_event(pairf, table, t0, groups, n_rows, kw["n_ticks"], g_full, *args)
    ends = table[:, fused.T_PLACE] + table[:, fused.T_NWIN]
    full = fused.charge_forward(pairf, table, t0, groups, n_rows, kw["n_ticks"], *args)
    # the event's ticks as simulated, and (smooth: the onset's ticks too) cut short inside the windows
    cases = [(relax, kw["n_ticks"])]
    if relax == "smooth":
        cases.append((relax + "-cut", int(ends.max() - table[:, fused.T_NWIN].max() // 2)))
    for case, n_ticks in cases:
        ref = fused.charge_forward(pairf, table, t0, groups, n_rows, n_ticks, *args)
        layout = fused_cuda.EventLayout(table, t0)
        wave = cuda.to_device(np.zeros(ref.shape))
        fused_cuda.charge_forward(cuda.to_device(pairf), layout, *args, wave)
        g = np.ascontiguousarray(g_full[:, :n_ticks])
        g_ref = fused.charge_backward(pairf, table, t0, groups, *args, g)
        grad = cuda.to_device(np.zeros(pairf.shape))
        fused_cuda.charge_backward(cuda.to_device(pairf), layout, *args, cuda.to_device(g), grad)
        got, g_got = wave.copy_to_host(), grad.copy_to_host()
        out[case] = dict(pairs=len(pairf), rows=layout.n_rows, cut=int((ends > n_ticks).sum()),
                         dropped=float(np.abs(full[:, n_ticks:]).max(initial=0.0) / np.abs(full).max()),
                         shared=int(len(table) - len(np.unique(table[:, fused.T_ROW]))),
                         scale=float(np.abs(ref).max()),
                         forward=float(np.abs(got - ref).max() / np.abs(ref).max()),
                         backward=float((np.abs(g_got - g_ref).max(0)
                                         / np.maximum(np.abs(g_ref).max(0), 1e-300)).max()))
print("RESULT" + json.dumps(out))
"""

#: in-pad samples (x, y) of each pair kept in the simulator's sub-event (non-square: the kernels enumerate y fastest)
_SUB_BLOCK = (2, 3)


def _sub_event(pairf, table, t0, groups, n_rows, n_ticks, g, dt, sharpness, k_fast, k_slow):
    """The simulator's sub-event of a captured simulation: its three most charged pairs and one that carries
    (almost) nothing, each cut down to a 2 x 3 block of in-pad samples (the table's ix0, iy0, nx, ny; everything
    else as simulated), the second pair's rows moved onto the first's output row (two segments on one pixel: the
    GPU's atomic adds of different pairs onto the same ticks). 24 rows instead of 2141; the CPU kernels see the
    same sub-event. Each pair's block is where the gradient of the test's loss (cotangent ``g``) is largest in
    every input at once (the largest smallest share of each column's largest block gradient): a block in the
    middle of a track has gradients in the erf inputs (two_a, u_len, ...) that cancel to ~1e-14 of their terms,
    and 1e-11 of such a column's scale would compare rounding noise. Returns (pairf, table, t0, groups)."""
    from larnd_diff.sim import fused
    from larnd_diff.sim.induce_layout import T_IX0, T_IY0, T_NX, T_NY, T_ROW

    table = np.array(table, np.int64)
    t0 = np.asarray(t0, np.float64)
    width = max(w for _, _, w in groups)

    def samples(tab, pairs):
        """Every in-pad sample of ``pairs`` as a pair of its own (nx = ny = 1): (pair, x, y) and its table."""
        p_of, i_of, j_of = (np.array(c, np.int64) for c in zip(*[
            (p, tab[p, T_IX0] + i, tab[p, T_IY0] + j) for p in pairs for i in range(tab[p, T_NX])
            for j in range(tab[p, T_NY])]))
        single = tab[p_of].copy()
        single[:, T_IX0], single[:, T_IY0], single[:, T_NX], single[:, T_NY] = i_of, j_of, 1, 1
        return p_of, i_of - tab[p_of, T_IX0], j_of - tab[p_of, T_IY0], single

    p_of, _, _, single = samples(table, range(len(table)))
    single[:, T_ROW] = np.arange(len(single))          # a row per sample: its charge alone
    charge = fused.charge_forward(pairf[p_of], single, t0[p_of], [(0, len(single), width)], len(single), n_ticks,
                                  dt, sharpness, k_fast, k_slow)
    ranked = np.argsort(-np.bincount(p_of, np.abs(charge).sum(1), len(table)), kind="stable")
    keep = np.sort(np.concatenate([ranked[:3], ranked[-1:]]))
    sub = table[keep].copy()
    first, second = (int(np.flatnonzero(keep == p)[0]) for p in ranked[:2])
    sub[second, T_ROW] = sub[first, T_ROW]
    # the gradient of every sample on its output row of the sub-event, summed over each candidate block
    p_of, i_of, j_of, single = samples(sub, range(len(sub)))
    grad = fused.charge_backward(pairf[keep][p_of], single, t0[keep][p_of], [(0, len(single), width)], dt,
                                 sharpness, k_fast, k_slow, g)
    blocks = []
    for q in range(len(sub)):
        nx, ny = (min(n, sub[q, c]) for n, c in zip(_SUB_BLOCK, (T_NX, T_NY)))
        grid = np.zeros((sub[q, T_NX], sub[q, T_NY], grad.shape[1]))
        m = p_of == q
        grid[i_of[m], j_of[m]] = grad[m]
        for i in range(sub[q, T_NX] - nx + 1):
            for j in range(sub[q, T_NY] - ny + 1):
                blocks.append((q, i, j, nx, ny, np.abs(grid[i:i + nx, j:j + ny].sum((0, 1)))))
    scale = np.max([blk[-1] for blk in blocks], 0)
    share = np.where(scale > 0, np.array([blk[-1] for blk in blocks]) / np.where(scale > 0, scale, 1), 1).min(1)
    for q in range(len(sub)):
        best = max((k for k, blk in enumerate(blocks) if blk[0] == q), key=lambda k: share[k])
        _, i, j, nx, ny, _ = blocks[best]
        sub[q, T_IX0] += i
        sub[q, T_IY0] += j
        sub[q, T_NX], sub[q, T_NY] = nx, ny
    return np.ascontiguousarray(pairf[keep]), sub, np.ascontiguousarray(t0[keep]), [(0, len(keep), width)]


def test_cuda_event_kernels_match_cpu_under_the_simulator(backend):
    """Rows expanded, waveforms evaluated and added onto the rows' ticks on the GPU (fused_cuda.charge_forward /
    charge_backward) vs the CPU kernels on a sub-event of two segments' simulation (:func:`_sub_event`: 24 rows of
    four of its pairs, two of them on one output row), hard and smooth, on the event's ticks and with the ticks cut
    short inside the windows (where the full-length charge is not zero): the same charge per tick and the same
    gradient per pair input to 1e-11 of each column's scale (summation order differs: atomics, fast-math on the
    CPU). A sub-event, not the whole simulation: numba's CUDA simulator runs each of the 2141 rows as a Python
    thread, minutes per launch (CI timed out at 900 s); every selected pair keeps its simulated inputs."""
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
                          text=True, timeout=600, cwd=repo)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT"):])
    assert set(res) == {"hard", "smooth", "smooth-cut"}
    for relax, r in res.items():
        assert r["pairs"] == 4 and 4 < r["rows"] <= 24 and r["shared"] == 1 and r["scale"] > 0, (relax, r)
        assert (r["cut"] > 0) == relax.endswith("-cut"), (relax, r)
        assert (r["dropped"] > 0) == relax.endswith("-cut"), (relax, r)
        assert r["forward"] <= 1e-11 and r["backward"] <= 1e-11, (relax, r)
