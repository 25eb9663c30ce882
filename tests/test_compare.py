"""larnd_diff.compare, ``larnd-diff compare`` and the two-backend event display, on a tiny generated input (CPU).

The input is the eight segments of one generated muon closest to an anode (short drift windows: a fraction of a
second per simulation), so every test here is fast; the numpy backend always runs, torch where installed.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from larnd_diff import compare as C
from larnd_diff.hits import Hits
from larnd_diff.params import FIT_PARAMETERS

REPO = Path(__file__).resolve().parents[1]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def tiny_segments(n_seg: int = 8, seed: int = 3) -> np.ndarray:
    from larnd_diff.detector import module0
    from larnd_diff.generate import generate_muons

    segs = generate_muons(n_events=1, seed=seed)
    det = module0()
    dist = np.min(np.abs(segs["z"][:, None] - det.anode_z[None, :]), axis=1)
    return segs[np.sort(np.argsort(dist)[:n_seg])]


@pytest.fixture(scope="module")
def segs():
    return tiny_segments()


@pytest.fixture(scope="module")
def numpy_result(segs):
    return C.compare(segs, backends=["numpy"], repeat=1, source="tiny")


@pytest.fixture
def segments_file(segs, tmp_path):
    from larnd_diff.io import save_segments

    path = tmp_path / "tiny.h5"
    save_segments(path, segs)
    return path


def _hits(rows):
    """Hits from {(event, I, J): adc list}."""
    keys = list(rows)
    adc = np.full((len(keys), 10), np.nan)
    for r, k in enumerate(keys):
        adc[r, :len(rows[k])] = rows[k]
    return Hits(event_id=np.array([k[0] for k in keys], np.int64),
                pixel=np.array([[k[1], k[2]] for k in keys], np.int64).reshape(len(keys), 2), adc=adc,
                time=np.where(np.isnan(adc), np.nan, 1.0))


# ---------------------------------------------------------------------------------------------- agreement
def test_agreement_figures():
    ref = _hits({(0, 1, 1): [80, 90], (0, 2, 2): [100], (0, 3, 3): [75]})
    ours = _hits({(0, 1, 1): [80, 90], (0, 2, 2): [101], (0, 4, 4): [77]})
    fig = C.agreement(ours, ref)
    assert fig["hit_pixels"] == 4 and fig["only_ours"] == 1 and fig["only_reference"] == 1
    # identical: (1,1); (3,3) is 75 vs the pedestal 74 -> within 1; (4,4) 77 vs 74 -> not
    assert fig["identical"] == pytest.approx(1 / 4)
    assert fig["within_1"] == pytest.approx(3 / 4)
    assert fig["mean_abs_dadc_per_hit_pixel"] == pytest.approx((0 + 1 + 1 + 3) / 4)
    assert C.agreement(ref, ref)["identical"] == 1.0
    d = C.pixel_differences(ref, ours)
    assert len(d["keys"]) == 4 and d["max_abs"].tolist() == [0, 1, 1, 3]
    assert d["delta_sum"].tolist() == [0, 1, -1, 3]


def test_agreement_matches_the_parity_tests(segs):
    """The same definitions as tests/test_sim_parity.py's compare()."""
    parity = pytest.importorskip("test_sim_parity", reason="tests/test_sim_parity.py not importable")
    import larnd_diff as ld

    ours = ld.simulate(segs, backend="numpy", dtype="float32")
    ref = ld.simulate(segs, precision="larnd-sim")
    mine, theirs = C.agreement(ours, ref), parity.compare(ours, ref)
    assert mine["hit_pixels"] == theirs["pixels"]
    assert mine["identical"] == pytest.approx(theirs["identical"])
    assert mine["within_1"] == pytest.approx(theirs["within1"])
    assert mine["mean_abs_dadc_per_hit_pixel"] == pytest.approx(theirs["mean_abs_dadc"])


# ---------------------------------------------------------------------------------------------- compare()
def test_compare_numpy_keys_and_parity(numpy_result):
    r = numpy_result
    for k in C.JSON_KEYS:
        assert k in r, k
    row = r["backends"]["numpy"]
    for k in C.BACKEND_KEYS:
        assert k in row, k
    assert r["input"]["n_segments"] == 8 and r["input"]["source"] == "tiny"
    assert r["reference"]["hit_pixels"] > 0
    h = row["hard_vs_reference"]
    assert h["hit_pixels"] == r["reference"]["hit_pixels"]
    assert h["identical"] == 1.0 and h["within_1"] == 1.0  # hard float64 vs the float64 reference
    assert h["mean_abs_dadc_per_hit_pixel"] == 0.0
    assert row["hard_vs_reference_larnd_sim"]["within_1"] >= 0.9
    assert np.isfinite(row["smooth_vs_reference"]["mean_abs_dadc_per_hit_pixel"])
    assert "mean_abs_dadc_vs_unrounded" in row["smooth_vs_reference"]
    assert row["forward_hard_s"] > 0 and row["forward_smooth_s"] > 0
    assert isinstance(row["peak_bytes_forward"], int) and row["peak_bytes_forward"] >= 0
    assert row["memory"] == "CPU resident-set growth"
    assert "gradients" not in row and "forward_grad6_s" not in row  # numpy is forward-only
    assert "gradient_agreement" not in r


def test_json_figure_and_table(numpy_result, tmp_path):
    path = tmp_path / "c.json"
    text = C.to_json(numpy_result, path)
    back = json.loads(path.read_text())
    assert back == json.loads(text)
    assert back["backends"]["numpy"]["hard_vs_reference"]["identical"] == 1.0
    table = C.format_table(numpy_result)
    assert "numpy" in table and "100.00%" in table
    fig_path = tmp_path / "c.png"
    C.plot(numpy_result, fig_path)
    assert fig_path.stat().st_size > 10_000


def test_compare_each_backend(backend, segs, numpy_result):
    """Every backend (run per framework by tox): hard float64 identical to the float64 reference; gradients of the
    six parameters finite; smooth preset as numpy's. jax's gradient compilation alone takes ~20 s on two cores: its
    gradients are covered by the slow test below."""
    grad = backend != "jax"
    r = C.compare(segs, backends=[backend], repeat=1, device="cpu" if backend != "numpy" else None, grad=grad)
    row = r["backends"][backend]
    assert row["hard_vs_reference"]["identical"] == 1.0
    assert "cpu" in row["device"].lower()
    # (the smooth ADC is rounded straight-through: a count may flip where frameworks round differently in the last bit)
    assert row["smooth_vs_reference"]["mean_abs_dadc_per_hit_pixel"] == pytest.approx(
        numpy_result["backends"]["numpy"]["smooth_vs_reference"]["mean_abs_dadc_per_hit_pixel"], abs=0.05)
    if not grad or backend == "numpy":
        return
    assert set(row["gradients"]) == set(FIT_PARAMETERS)
    assert all(np.isfinite(v) for v in row["gradients"].values())
    assert any(v != 0 for v in row["gradients"].values())
    assert np.isfinite(row["loss"]) and row["loss"] > 0
    assert row["forward_grad6_s"] > 0 and row["peak_bytes_grad"] >= 0


@pytest.mark.slow
def test_gradient_agreement_across_backends(segs):
    have = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b) is not None]
    if len(have) < 2:
        pytest.skip("needs two differentiable frameworks")
    r = C.compare(segs, backends=have, repeat=1)
    g = r["gradient_agreement"]
    assert g["relative_to"] == have[0] and set(g["max_relative_difference"]) == set(FIT_PARAMETERS)
    assert g["worst"] < 1e-6


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_backend_is_a_clear_error():
    with pytest.raises(C.CompareError, match=r"unknown backend 'nosuch'.*installed backends: .*numpy"):
        C.check_backends(["numpy", "nosuch"])
    with pytest.raises(C.CompareError, match="reference"):
        C.check_backends(["reference"])
    assert C.check_backends(["np", "numpy"]) == ["numpy"]


def test_uninstalled_backend_is_a_clear_error(monkeypatch):
    from larnd_diff import ops

    monkeypatch.setattr(ops.backend_class("tensorflow"), "framework", "no_such_framework_for_the_test")
    monkeypatch.delitem(ops._INSTANCES, "tensorflow", raising=False)
    with pytest.raises(C.CompareError, match=r"'tensorflow' is not installed here.*pip install.*installed backends"):
        C.check_backends(["tensorflow"])


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_missing_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(C.CompareError, match="sees 0 GPU"):
        C.check_device("torch", "cuda:0")
    C.check_device("torch", "cpu")  # fine
    assert not C.is_gpu("torch", "cpu") and C.is_gpu("torch", "cuda:1") and not C.is_gpu("numpy", None)


# ---------------------------------------------------------------------------------------------- CLI, scripts
def test_cli_compare(segments_file, tmp_path, capsys):
    from larnd_diff.cli import main

    out_json, out_fig = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["compare", str(segments_file), "--backends", "numpy", "--repeat", "1", "--json", str(out_json),
               "--figure", str(out_fig)])
    cap = capsys.readouterr()
    assert rc == 0
    assert "numpy" in cap.out and "100.00%" in cap.out
    assert "[compare" in cap.err and "[compare" not in cap.out  # progress on stderr only
    r = json.loads(out_json.read_text())
    assert set(C.JSON_KEYS) <= set(r)
    assert r["input"]["source"] == str(segments_file) and r["input"]["n_segments"] == 8
    assert r["backends"]["numpy"]["hard_vs_reference"]["identical"] == 1.0
    assert out_fig.stat().st_size > 10_000


def test_cli_compare_bad_backend(capsys):
    from larnd_diff.cli import main

    rc = main(["compare", "--backends", "numpy", "nosuch", "-q"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "larnd-diff compare: error: unknown backend 'nosuch'" in cap.err
    assert "installed backends" in cap.err


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_backends_script(segments_file, tmp_path, capsys):
    mod = _load_example("compare_backends")
    out = tmp_path / "s.json"
    assert mod.main(["--input", str(segments_file), "--backends", "numpy", "--repeat", "1", "--no-grad",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["backends"]["numpy"]["hard_vs_reference"]["identical"] == 1.0
    with pytest.raises(SystemExit):
        mod.main(["--input", str(segments_file), "--backends", "nosuch"])
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


def test_event_comparison_figure(segs, tmp_path):
    import larnd_diff as ld

    ref = ld.simulate(segs, precision="float64")
    ours = ld.simulate(segs, backend="numpy", dtype="float32")
    path = tmp_path / "ev.png"
    fig = C.plot_event_comparison(ref, ours, ("reference", "numpy f32"), segments=segs, path=path, title="t")
    assert len(fig.axes) >= 6
    assert path.stat().st_size > 10_000
    # an empty side still draws
    C.plot_event_comparison(ref, Hits.empty(), ("reference", "nothing"), path=tmp_path / "empty.png")


def test_event_display_compare_option(tmp_path, monkeypatch, capsys):
    mod = _load_example("event_display")
    monkeypatch.setattr(mod.ld, "generate_muons", lambda **kw: tiny_segments())
    out = tmp_path / "ed.png"
    mod.main(["--compare", "reference", "numpy", "--out", str(out)])
    assert out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="nosuch"):
        mod.main(["--compare", "reference", "nosuch", "--out", str(out)])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
