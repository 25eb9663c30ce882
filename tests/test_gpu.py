"""The differentiable simulator and Soft-DTW on a CUDA GPU (torch, jax, tensorflow), against the CPU.

Marked ``gpu``: skipped unless pytest runs with ``--gpu`` (``tox -e gpu-torch,gpu-jax,gpu-tensorflow``); then each
test skips with the reason when its framework is not installed or sees no GPU (``gpu_device`` in conftest.py).

    python -m pytest tests/test_gpu.py --gpu -m gpu -q -s          # every installed framework
    python -m pytest tests/test_gpu.py --gpu -m gpu --backend torch  # one

(a) ``hard`` preset on the GPU vs the Numba reference (CPU, float64): float64 -> ADC rows identical on >= 99.5 % of
    hit pixels; float32 -> >= 99 % within +-1 count (the bars of tests/test_sim_parity.py, with its comparison
    rules: :func:`larnd_diff.compare.agreement`). Inputs: generated muons, and the first 8 corsika events of
    ../shared/data when present.
(b) ``smooth`` preset, float64: the GPU's hits equal the CPU's (same pixels, same filled slots, ADC to 1e-6).
(c) gradients of the six fit parameters (smooth, float64) on the GPU vs the CPU: 1e-6 relative.
(d) Soft-DTW, float64: value and gradient on the GPU vs the CPU to 1e-10; a pair of sequences of 5,000 and 6,000
    hits runs on the GPU with a finite value and gradient.

The figures are printed (``-s``) and attached to the report with ``record_property``. Each test body is a plain
function of (backend, device) so that its logic can be tried on ``device="cpu"`` without a GPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Several frameworks may share the GPU in one pytest process (and the numba-cuda reference test): no framework
# may grab the whole memory up front. Read when jax / TensorFlow first touch the GPU, i.e. after this import.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

pytestmark = pytest.mark.gpu

DIFFERENTIABLE = ("torch", "jax", "tensorflow")
FIT = ("Ab", "kb", "eField", "lifetime", "long_diff", "tran_diff")
TF32_HINT = ("float32 on a GPU: jax and TensorFlow run float32 matrix products (ops.einsum in sim/induce.py) in "
             "TF32 by default on Ampere/Hopper; if this fails only there, suspect that")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def device(request, backend):
    """The GPU of a differentiable backend; skips for numpy and when the framework sees no GPU."""
    if backend == "numpy":
        pytest.skip("numpy has no GPU: the GPU tests are for torch, jax and tensorflow")
    return request.getfixturevalue("gpu_device")


def shared_dir(request) -> Path:
    """$LARND_DIFF_SHARED, else the ``shared`` fixture (../shared beside the checkout; skips when absent)."""
    env = os.environ.get("LARND_DIFF_SHARED")
    if env and Path(env).is_dir():
        return Path(env)
    return request.getfixturevalue("shared")


def report(record_property, tag: str, figures: dict) -> None:
    for k, v in figures.items():
        record_property(f"{tag}:{k}", v)
    print(f"\n[gpu] {tag}: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in figures.items()))


# ---------------------------------------------------------------------------------------------- inputs
def generated_muons(n_events: int = 3, seed: int = 11) -> np.ndarray:
    from larnd_diff.generate import generate_muons

    return generate_muons(n_events=n_events, seed=seed)


def near_anode(segs: np.ndarray, n_seg: int) -> np.ndarray:
    """The ``n_seg`` segments closest to an anode (short drift windows: cheap), in their original order."""
    from larnd_diff.detector import module0

    dist = np.min(np.abs(segs["z"][:, None] - module0().anode_z[None, :]), axis=1)
    return segs[np.sort(np.argsort(dist)[:n_seg])]


def corsika(directory: Path, n_events: int = 8) -> np.ndarray:
    from larnd_diff.io import load_segments

    path = directory / "data" / "module0_corsika.h5"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    segs = load_segments(str(path))
    return segs[np.isin(segs["eventID"], np.unique(segs["eventID"])[:n_events])]


_REFERENCE: dict = {}


def reference_f64(key: str, segs: np.ndarray):
    """The Numba reference in float64 (CPU), cached per input for the backend x dtype matrix."""
    pytest.importorskip("numba", reason="the Numba reference needs numba")
    if key not in _REFERENCE:
        from larnd_diff.reference import simulate as ref

        _REFERENCE[key] = ref(segs, precision="float64", noise=False)
    return _REFERENCE[key]


# ---------------------------------------------------------------------------------------------- helpers
def placed(backend: str, device):
    """The framework's default placement set to ``device`` too (:func:`larnd_diff.compare.placement`): TensorFlow's
    eager ops run on the GPU whenever there is one, whatever device their inputs were created on."""
    from larnd_diff.compare import placement

    return placement(backend, device)


def on_device(backend: str, tensor, device) -> bool:
    """Whether a framework tensor lives on a GPU (when ``device`` is one) / on the CPU (when it is "cpu")."""
    from larnd_diff.compare import _spec_is_gpu
    from larnd_diff.ops import get_backend

    where = get_backend(backend).device_of(tensor)
    return _spec_is_gpu(where) == _spec_is_gpu(device)


def hit_rows(hits) -> dict:
    """{(event, I, J): (adc row, time row, charge row)} as float64 NumPy."""
    h = hits.numpy()
    charge = h.charge if h.charge is not None else np.full_like(h.adc, np.nan)
    return {(int(e), int(p[0]), int(p[1])): (np.asarray(a, np.float64), np.asarray(t, np.float64),
                                              np.asarray(q, np.float64))
            for e, p, a, t, q in zip(h.event_id, h.pixel, h.adc, h.time, charge)}


def key_weights(hits) -> np.ndarray:
    """(rows, slots) weights that depend on (event, I, J, slot) only, not on the row order of a device."""
    from larnd_diff.ops import to_numpy

    ev = np.asarray(to_numpy(hits.event_id), np.float64)[:, None]
    pix = np.asarray(to_numpy(hits.pixel), np.float64)
    slots = np.arange(int(hits.adc.shape[1]), dtype=np.float64)[None, :]
    return 1.0 + 0.5 * np.sin(0.37 * pix[:, :1] + 1.13 * pix[:, 1:] + 0.71 * ev + 0.29 * slots)


# ---------------------------------------------------------------------------------------------- (a) hard parity
def hard_parity(backend: str, device, segs: np.ndarray, ref, dtype: str) -> dict:
    import larnd_diff as ld
    from larnd_diff.compare import agreement

    with placed(backend, device):
        hits = ld.simulate(segs, backend=backend, device=device, relaxation="hard", dtype=dtype)
    assert on_device(backend, hits.adc, device), f"{backend} returned hits on {hits.adc!r}'s device, not {device}"
    return agreement(hits, ref)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["muons", "corsika8"])
def test_hard_parity_with_reference(backend, device, case, dtype, request, record_property):
    segs = generated_muons() if case == "muons" else corsika(shared_dir(request))
    fig = hard_parity(backend, device, segs, reference_f64(case, segs), dtype)
    report(record_property, f"{backend}/{device}/{case}/hard-{dtype}-vs-ref-f64", fig)
    assert fig["hit_pixels"] > 0
    if dtype == "float64":
        assert fig["identical"] >= 0.995, fig
    else:
        assert fig["within_1"] >= 0.99, f"{fig}; {TF32_HINT}"


# ---------------------------------------------------------------------------------------------- (b) smooth GPU = CPU
def smooth_gpu_vs_cpu(backend: str, device, segs: np.ndarray) -> dict:
    import larnd_diff as ld

    with placed(backend, device):
        gpu = ld.simulate(segs, backend=backend, device=device, relaxation="smooth", dtype="float64")
    with placed(backend, "cpu"):
        cpu = ld.simulate(segs, backend=backend, device="cpu", relaxation="smooth", dtype="float64")
    assert on_device(backend, gpu.adc, device) and on_device(backend, cpu.adc, "cpu")
    a, b = hit_rows(gpu), hit_rows(cpu)
    common = sorted(set(a) & set(b))
    same_slots = [k for k in common if np.array_equal(np.isnan(a[k][0]), np.isnan(b[k][0]))]
    adc_diff = np.array([np.nanmax(np.abs(a[k][0] - b[k][0]), initial=0.0) for k in same_slots])
    time_diff = np.array([np.nanmax(np.abs(a[k][1] - b[k][1]), initial=0.0) for k in same_slots])
    q_rel = np.array([np.nanmax(np.abs(a[k][2] - b[k][2]) / np.maximum(np.abs(b[k][2]), 1.0), initial=0.0)
                      for k in same_slots])
    n = max(len(set(a) | set(b)), 1)
    return dict(pixels=len(set(a) | set(b)), only_gpu=len(set(a) - set(b)), only_cpu=len(set(b) - set(a)),
                same_filled_slots=len(same_slots) / n,
                adc_equal=float(np.mean(adc_diff <= 1e-6)) if len(same_slots) else 0.0,
                worst_adc=float(adc_diff.max(initial=0.0)), worst_time_us=float(time_diff.max(initial=0.0)),
                worst_charge_rel=float(q_rel.max(initial=0.0)))


def test_smooth_gpu_matches_cpu(backend, device, record_property):
    segs = near_anode(generated_muons(2, seed=5), 60)
    fig = smooth_gpu_vs_cpu(backend, device, segs)
    report(record_property, f"{backend}/{device}/smooth-f64-gpu-vs-cpu", fig)
    assert fig["pixels"] > 0
    assert fig["only_gpu"] == 0 and fig["only_cpu"] == 0, fig
    # a slot whose straight-through rounding or threshold sits within rounding error of its edge may differ; none
    # is expected in float64, at most one count anywhere
    assert fig["same_filled_slots"] >= 0.999, fig
    assert fig["adc_equal"] >= 0.999 and fig["worst_adc"] <= 1.0, fig
    assert fig["worst_charge_rel"] <= 1e-6, fig


# ---------------------------------------------------------------------------------------------- (c) gradients
def gradients(backend: str, device, segs: np.ndarray):
    """(value, {param: gradient}) of sum(adc w) + sum(charge w) / 1000 (smooth, float64) at nominal."""
    import eagerpy as ep

    import larnd_diff as ld
    from larnd_diff import ops
    from larnd_diff.params import SPECS

    b = ops.get_backend(backend)

    def loss(p):
        h = ld.simulate(segs, backend=backend, device=device, relaxation="smooth", dtype="float64",
                        params={k: v.raw for k, v in p.items()})
        w = key_weights(h)
        a = ops.nan_to_num(ep.astensor(h.adc), 0.0)
        q = ops.nan_to_num(ep.astensor(h.charge), 0.0)
        wt = ops.asarray(a, w, "float64")
        return (a * wt).sum() + (q * wt).sum() / 1000.0

    with placed(backend, device):
        params = {k: b.asarray(np.asarray(SPECS[k].nominal, np.float64), "float64", device) for k in FIT}
        value, grads = b.value_and_grad(loss, params)
    assert on_device(backend, grads["Ab"], device)
    return float(ops.to_numpy(value)), {k: float(np.asarray(ops.to_numpy(g)).reshape(())) for k, g in grads.items()}


def gradients_gpu_vs_cpu(backend: str, device, segs: np.ndarray) -> dict:
    v_gpu, g_gpu = gradients(backend, device, segs)
    v_cpu, g_cpu = gradients(backend, "cpu", segs)
    fig = {"value_rel": abs(v_gpu - v_cpu) / max(abs(v_cpu), 1e-300)}
    for k in FIT:
        assert np.isfinite(g_gpu[k]) and np.isfinite(g_cpu[k]), (k, g_gpu[k], g_cpu[k])
        fig[f"{k}_rel"] = abs(g_gpu[k] - g_cpu[k]) / max(abs(g_cpu[k]), 1e-300)
        fig[f"{k}_cpu"] = g_cpu[k]
    fig["value"] = v_cpu
    return fig


def test_gradients_gpu_match_cpu(backend, device, record_property):
    segs = near_anode(generated_muons(1, seed=3), 8)
    fig = gradients_gpu_vs_cpu(backend, device, segs)
    report(record_property, f"{backend}/{device}/grad6-smooth-f64-gpu-vs-cpu", fig)
    assert fig["value"] != 0.0, "the test input produced no hits"
    assert fig["value_rel"] <= 1e-9, fig
    for k in FIT:
        assert fig[f"{k}_cpu"] != 0.0, f"d/d{k} is zero on the CPU: the input does not constrain it"
        assert fig[f"{k}_rel"] <= 1e-6, f"d/d{k}: GPU vs CPU relative difference {fig[f'{k}_rel']:.2e}"


# ---------------------------------------------------------------------------------------------- (d) Soft-DTW
def sdtw_value_and_grads(backend: str, device, x: np.ndarray, y: np.ndarray, **kw):
    """soft_dtw summed over the batch and its gradients w.r.t. x and y (float64, on ``device``)."""
    from larnd_diff import ops
    from larnd_diff.softdtw import soft_dtw

    b = ops.get_backend(backend)
    with placed(backend, device):
        params = {"x": b.asarray(x, "float64", device), "y": b.asarray(y, "float64", device)}
        value, grads = b.value_and_grad(lambda p: soft_dtw(p["x"], p["y"], **kw).sum(), params)
    assert on_device(backend, grads["x"], device)
    return float(ops.to_numpy(value)), ops.to_numpy(grads["x"]), ops.to_numpy(grads["y"])


def sdtw_gpu_vs_cpu(backend: str, device) -> dict:
    rng = np.random.default_rng(21)
    xs, ys = rng.normal(size=(3, 70, 2)), rng.normal(size=(3, 45, 2))
    kw = dict(gamma=1.0, lengths_x=[70, 31, 5], lengths_y=[45, 45, 12])
    v_g, gx_g, gy_g = sdtw_value_and_grads(backend, device, xs, ys, **kw)
    v_c, gx_c, gy_c = sdtw_value_and_grads(backend, "cpu", xs, ys, **kw)
    # divergence and the squared cost too (value only)
    from larnd_diff import ops
    from larnd_diff.softdtw import soft_dtw

    b = ops.get_backend(backend)
    div = []
    for d in (device, "cpu"):
        with placed(backend, d):
            div.append(ops.to_numpy(soft_dtw(b.asarray(xs, "float64", d).raw, b.asarray(ys, "float64", d).raw,
                                             gamma=0.5, cost="sq", divergence=True, lengths_x=kw["lengths_x"],
                                             lengths_y=kw["lengths_y"])))
    return dict(value_gpu=v_g, value_cpu=v_c, value_abs=abs(v_g - v_c),
                grad_x_abs=float(np.max(np.abs(gx_g - gx_c))), grad_y_abs=float(np.max(np.abs(gy_g - gy_c))),
                grad_scale=float(max(np.max(np.abs(gx_c)), np.max(np.abs(gy_c)))),
                divergence_abs=float(np.max(np.abs(div[0] - div[1]))))


def test_softdtw_gpu_matches_cpu(backend, device, record_property):
    fig = sdtw_gpu_vs_cpu(backend, device)
    report(record_property, f"{backend}/{device}/softdtw-f64-gpu-vs-cpu", fig)
    tol = 1e-10 * max(1.0, abs(fig["value_cpu"]))
    assert fig["value_abs"] <= tol, fig
    assert fig["grad_x_abs"] <= 1e-10 * max(1.0, fig["grad_scale"]), fig
    assert fig["grad_y_abs"] <= 1e-10 * max(1.0, fig["grad_scale"]), fig
    assert fig["divergence_abs"] <= tol, fig


def sdtw_long(backend: str, device, n: int = 5000, m: int = 6000) -> dict:
    """Two ADC-like sequences of n and m hits (one feature), the paper's cost and gamma; value and gradients."""
    import time

    rng = np.random.default_rng(5)
    x = 80.0 + 60.0 * rng.random((1, n, 1))
    y = np.concatenate([x[:, ::max(n // 1000, 1)], 80.0 + 60.0 * rng.random((1, m, 1))], axis=1)[:, :m]
    t0 = time.perf_counter()
    v, gx, gy = sdtw_value_and_grads(backend, device, x, y, gamma=1.0, cost="abs")
    return dict(n=n, m=m, value=v, seconds=time.perf_counter() - t0, finite_grads=bool(
        np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))), grad_x_abs_sum=float(np.abs(gx).sum()),
        grad_y_abs_sum=float(np.abs(gy).sum()))


def test_softdtw_long_sequences(backend, device, record_property):
    fig = sdtw_long(backend, device)
    report(record_property, f"{backend}/{device}/softdtw-long", fig)
    assert np.isfinite(fig["value"]) and fig["value"] > 0, fig
    assert fig["finite_grads"], fig
    assert fig["grad_x_abs_sum"] > 0 and fig["grad_y_abs_sum"] > 0, fig
