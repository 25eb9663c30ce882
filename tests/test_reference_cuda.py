"""The reference on a CUDA GPU (larnd_diff.reference.cuda) against its CPU version.

* Simulator test (any machine): numba's CUDA simulator runs the kernels in Python on two hand-made segments; with
  the exact fma of the CPU version there the hits and the per-pixel waveforms must be bit-identical. Runs in a
  subprocess because ``NUMBA_ENABLE_CUDASIM`` must be set before numba.cuda is imported.
* GPU test (``--gpu`` on a CUDA machine): the two shared input files; ADC rows identical on >= 99 % of hit pixels and
  within +-1 count on the rest, hit times identical where the ADC row is identical. The figures are printed
  (``-s``) and, with ``LARND_DIFF_AGREEMENT_OUT=path.json``, written as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

#: ../shared beside the checkout; $LARND_DIFF_SHARED overrides it (e.g. on a machine where the data were copied).
SHARED = Path(os.environ.get("LARND_DIFF_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REPO = Path(__file__).resolve().parents[1]


def tiny_segments():
    """Two short segments 1.2-1.7 cm from the anode of TPC 0 (simulation frame), a few 10^4 electrons each."""
    from larnd_diff.io import SEGMENT_DTYPE

    starts = np.array([[0.1, 0.2, -29.0], [1.0, -1.0, -28.5]])
    ends = np.array([[0.6, 0.5, -28.7], [1.2, -0.6, -28.9]])
    seg = np.zeros(2, SEGMENT_DTYPE)
    for i, ax in enumerate("xyz"):
        seg[f"{ax}_start"] = starts[:, i]
        seg[f"{ax}_end"] = ends[:, i]
        seg[ax] = (starts[:, i] + ends[:, i]) / 2
    length = np.linalg.norm(ends - starts, axis=1)
    seg["dx"] = length
    seg["dE"] = [2.0, 1.5]
    seg["dEdx"] = seg["dE"] / length
    return seg


_SIMULATOR_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.test_reference_cuda import tiny_segments
    from larnd_diff.detector import module0
    from larnd_diff.params import as_params
    from larnd_diff.reference import drift, quench, simulate
    from larnd_diff.reference import cuda as rc
    from larnd_diff.reference.electronics import front_end
    from larnd_diff.reference.pipeline import chunk_waveforms
    from larnd_diff.reference.rng import create_streams, n_streams

    out = {"available": rc.is_available()}
    if out["available"]:
        seg = tiny_segments()
        h = simulate(seg)
        g = rc.simulate(seg)
        out["hits"] = dict(
            n_cpu=len(h), n_gpu=len(g), pixel=bool(np.array_equal(h.pixel, g.pixel)),
            adc=bool(np.array_equal(h.adc, g.adc, equal_nan=True)),
            time=bool(np.array_equal(h.time, g.time, equal_nan=True)),
            charge=bool(np.array_equal(h.charge, g.charge, equal_nan=True)),
            backtrack=bool(np.array_equal(h.backtrack, g.backtrack)))
        det = module0()
        p = as_params(None, nominal=det.nominal)
        d = drift(quench(seg, p, detector=det), det, p)
        uniq, wf, _, _ = chunk_waveforms(d, det, float(p.vdrift_value), True)
        guniq, d_wf, _, _ = rc.chunk_waveforms_gpu(d, det, float(p.vdrift_value), True)
        gwf = d_wf.copy_to_host()
        out["waveforms"] = dict(rows=len(uniq), same_pixels=bool(np.array_equal(uniq, guniq)),
                                identical=bool(np.array_equal(wf, gwf, equal_nan=True)),
                                max_abs=float(np.nanmax(np.abs(wf))))
        # front end with noise on the three most charged rows (slow in the simulator: a draw per tick)
        from numba import cuda
        n = 3
        sel = np.argsort(-np.nansum(wf, axis=1))[:n]
        state = create_streams(n_streams(n), np.uint64(7))
        el = det.electronics
        dt = det.t_sampling
        q, t, c = front_end(np.ascontiguousarray(wf[sel]), det.n_ticks_event, dt, el.threshold_e,
                            el.integration_ticks(dt), el.max_adc_values, el.reset_noise_e, el.uncorrelated_noise_e,
                            state.copy(), True)
        gq, gt, gc = rc.front_end_gpu(cuda.to_device(np.ascontiguousarray(gwf[sel])), det, True,
                                        state.copy())
        fin = np.isfinite(q)
        out["noise"] = dict(samples=int(c.sum()), counts=bool(np.array_equal(c, gc)),
                            ticks=bool(np.array_equal(t, gt)),
                            same_filled=bool(np.array_equal(fin, np.isfinite(gq))),
                            charge_rel=float(np.max(np.abs(q[fin] - gq[fin]) / np.abs(q[fin]), initial=0.0)))
    print("RESULT" + json.dumps(out))
""")


def test_simulator_matches_cpu():
    """CUDA simulator vs CPU reference on two segments: identical hits and waveforms; the noisy front end on three
    pixel rows: same samples, charges to 1e-6."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", _SIMULATOR_SCRIPT, str(REPO)], env=env, capture_output=True,
                          text=True, timeout=1200, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        if "simulator" in proc.stderr.lower() and "import" in proc.stderr.lower():
            pytest.skip(f"numba's CUDA simulator is not usable here: {proc.stderr[-500:]}")
        pytest.fail(f"simulator run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT"):])
    if not res["available"]:
        pytest.skip("numba's CUDA simulator is not usable here")
    r = res["hits"]
    assert r["n_cpu"] == r["n_gpu"] > 0, r
    assert r["pixel"] and r["adc"] and r["time"] and r["charge"] and r["backtrack"], r
    w = res["waveforms"]
    assert w["rows"] > 0 and w["same_pixels"] and w["identical"] and w["max_abs"] > 0, w
    # noise: the same xoroshiro128+ streams; numba-cuda's float32 log/cos may differ from the CPU's in the last ulp
    r = res["noise"]
    assert r["samples"] > 0 and r["counts"] and r["ticks"] and r["same_filled"], r
    assert r["charge_rel"] <= 1e-6, r


# ---------------------------------------------------------------------------------------------- real GPU ---
def hit_map(hits) -> dict:
    """{(event, I, J): (adc row, trigger times, charges, backtrack)} of the hit pixels (times in us)."""
    out = {}
    for r in range(len(hits)):
        n = int(hits.n_samples[r])
        key = (int(hits.event_id[r]), int(hits.pixel[r, 0]), int(hits.pixel[r, 1]))
        out[key] = (hits.adc[r, :n], hits.time[r, :n], hits.charge[r, :n], hits.backtrack[r, :n])
    return out


def agreement(cpu, gpu) -> dict:
    """GPU-vs-CPU figures over the union of hit pixels: identical ADC rows, within +-1, times and backtracking
    identical where the ADC row is, worst relative charge difference there."""
    a, b = hit_map(cpu), hit_map(gpu)
    keys = set(a) | set(b)
    identical = within_one = time_same = bt_same = 0
    charge_rel = 0.0
    for k in keys:
        if k not in a or k not in b or len(a[k][0]) != len(b[k][0]):
            continue
        (adc_a, t_a, q_a, bt_a), (adc_b, t_b, q_b, bt_b) = a[k], b[k]
        if np.array_equal(adc_a, adc_b):
            identical += 1
            time_same += np.array_equal(t_a, t_b)
            bt_same += np.array_equal(bt_a, bt_b)
            charge_rel = max(charge_rel, float(np.max(np.abs(q_a - q_b) / np.abs(q_a))))
        elif np.max(np.abs(adc_a - adc_b)) <= 1:
            within_one += 1
    n = max(len(keys), 1)
    return dict(pixels=len(keys), cpu_pixels=len(a), gpu_pixels=len(b), identical=identical,
                within_one=within_one, other=len(keys) - identical - within_one, identical_frac=identical / n,
                time_identical=time_same, backtrack_identical=bt_same, worst_charge_rel=charge_rel,
                samples_cpu=int(cpu.n_samples.sum()), samples_gpu=int(gpu.n_samples.sum()))


def waveform_agreement(segs, n_events=2) -> dict:
    """Per-pixel currents of the first events' first chunk: rows bit-identical and the worst max|diff|/max|cpu|."""
    from larnd_diff.detector import module0
    from larnd_diff.params import as_params
    from larnd_diff.reference import drift, quench
    from larnd_diff.reference import cuda as rc
    from larnd_diff.reference.pipeline import chunk_waveforms

    det = module0()
    p = as_params(None, nominal=det.nominal)
    v = float(p.vdrift_value)
    rows = exact = 0
    worst = 0.0
    errs = []
    for ev in np.unique(segs["eventID"])[:n_events]:
        d = drift(quench(segs[segs["eventID"] == ev][:600], p, detector=det), det, p)
        _, wf, _, _ = chunk_waveforms(d, det, v, True)
        _, gwf, _, _ = rc.chunk_waveforms_gpu(d, det, v, True)
        gwf = gwf.copy_to_host()
        assert gwf.shape == wf.shape
        assert np.array_equal(np.isnan(wf), np.isnan(gwf))
        a, b = np.nan_to_num(wf), np.nan_to_num(gwf)
        scale = np.abs(a).max(axis=1)
        live = scale > 0
        err = np.abs(a - b).max(axis=1)[live] / scale[live]
        rows += int(live.sum())
        exact += int((err == 0).sum())
        errs.append(err)
        worst = max(worst, float(err.max(initial=0.0)))
    err = np.concatenate(errs)
    return dict(rows=rows, exact_rows=exact, median_rel=float(np.median(err)), p99_rel=float(np.percentile(err, 99)),
                worst_rel=worst)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["module0_corsika.h5", "test_inputs.h5"])
def test_gpu_matches_cpu(name, record_property):
    """GPU (numba-cuda) vs CPU reference on the shared inputs (spec 7.4 tolerances)."""
    path = SHARED / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (shared inputs live beside the checkout)")
    from larnd_diff.reference import cuda as rc

    if not rc.is_available():
        pytest.skip("no CUDA GPU usable by numba-cuda")
    import h5py

    from larnd_diff.io import swap_xz
    from larnd_diff.reference import simulate

    with h5py.File(path) as f:
        segs = swap_xz(f["segments"][:])
    t = time.perf_counter()
    cpu = simulate(segs)
    t_cpu = time.perf_counter() - t
    t = time.perf_counter()
    gpu = rc.simulate(segs)
    t_gpu = time.perf_counter() - t
    fig = agreement(cpu, gpu)
    fig.update(seconds_cpu_first_call=t_cpu, seconds_gpu_first_call=t_gpu)
    fig["waveforms"] = waveform_agreement(segs)
    print(f"\n{name}: {json.dumps(fig)}")
    record_property(name, json.dumps(fig))
    out = os.environ.get("LARND_DIFF_AGREEMENT_OUT")
    if out:
        path_out = Path(out)
        prev = json.loads(path_out.read_text()) if path_out.is_file() else {}
        prev[name] = fig
        path_out.write_text(json.dumps(prev, indent=1))
    assert fig["identical_frac"] >= 0.99
    assert fig["other"] == 0
    assert fig["time_identical"] == fig["identical"]
    assert fig["backtrack_identical"] == fig["identical"]
