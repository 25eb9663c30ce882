"""Calibration without truth: ``larnd-diff fit --target packets.h5`` reconstructs its segments from the packets'
hits (larnd_diff/fit/data.py), the model leaves out pixels without a read-out channel, and bad inputs get clear
errors at the fit's command line."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import larnd_diff as ld
from larnd_diff.cli import main
from larnd_diff.export import ChannelMap, write_packets
from larnd_diff.fit import Model
from larnd_diff.fit.data import check_events, load_data, reconstructed_input, select_reco_tracks
from larnd_diff.generate import generate_tracks
from larnd_diff.params import Params
from larnd_diff.packets import readout_pixels

TARGET = {"Ab": 0.84, "kb": 0.05, "eField": 0.52, "lifetime": 3000.0, "long_diff": 5e-6, "tran_diff": 1e-5}


@pytest.fixture(scope="module")
def layout(shared):
    return shared / "data" / "multi_tile_layout-2.2.16.yaml"


@pytest.fixture(scope="module")
def event():
    """One event: a 100 MeV muon and a 150 MeV proton (both stop inside, larnd_diff/generate.py)."""
    return generate_tracks(["mu-", "proton"], [100.0, 150.0], [0, 0], [1, 2], seed=np.random.default_rng(3))


@pytest.fixture(scope="module")
def packets(tmp_path_factory, event, layout):
    """The event as a detector records it: the Numba reference with noise at TARGET, written as packets (with the
    truth association and the true segments, which the fit must not read)."""
    hits = ld.simulate(event, params=Params(TARGET, link_vdrift=True), noise=True, seed=5, chunk_size=None)
    path = tmp_path_factory.mktemp("no_truth") / "packets.h5"
    write_packets(path, hits, layout, segments=event)
    return path


def test_load_data_reads_no_truth_and_puts_times_on_the_tick_grid(packets, layout):
    data = load_data(packets, layout)
    assert data.hits.backtrack is None
    ticks = data.hits.time[np.isfinite(data.hits.time)] / ld.module0().adc_tick_us
    np.testing.assert_allclose(ticks, np.rint(ticks), atol=1e-9)
    assert data.readout is not None and len(data.readout) > 70000
    assert "trigger packets" in data.source


def test_readout_pixels_are_those_the_export_writes(layout):
    det = ld.module0()
    cmap, readout = ChannelMap(layout, det), readout_pixels(layout, det)
    listed = {tuple(p) for p in readout.tolist()}
    for i, j in [(0, 0), (3, 69), (69, 70), (140, 3), (200, 140), (279, 279)]:
        assert ((i, j) in listed) == (cmap.lookup(i, j) is not None)


def test_model_drops_rows_of_pixels_without_read_out(event, layout):
    full = Model(backend="numpy")
    _, rows, events = full.waveforms(event, {})
    readout = readout_pixels(layout)
    masked = Model(backend="numpy", readout=readout)
    charge, kept_rows, kept_events = masked.waveforms(event, {})
    listed = {tuple(p) for p in readout.tolist()}
    want = np.array([tuple(p) in listed for p in np.asarray(rows).tolist()])
    assert 0 < want.sum() <= len(rows)
    np.testing.assert_array_equal(kept_rows, np.asarray(rows)[want])
    np.testing.assert_array_equal(kept_events, np.asarray(events)[want])
    assert charge.shape[0] == want.sum()


def test_reconstructed_input_selects_tracks(packets, layout):
    data = load_data(packets, layout)
    segs, report = reconstructed_input(data.hits)
    assert len(segs) and set(np.unique(segs["eventID"])) <= set(np.unique(data.hits.event_id))
    stopping = select_reco_tracks(segs, report, ("stopping",))
    assert len(stopping) <= len(segs)
    assert not len(select_reco_tracks(segs, report, ("through-going",), ("proton",)))
    with pytest.raises(ValueError, match="unknown reconstructed track categories"):
        select_reco_tracks(segs, report, ("straight",))


def _torch_only(backend):
    """A fit needs gradients: the fit machinery runs once, in the torch environment (as in tests/test_fit.py)."""
    if backend != "torch":
        pytest.skip("framework-independent fit machinery: tested on torch only")


def test_fit_cli_reconstructs_its_segments_from_packets(tmp_path, packets, layout, capsys, backend):
    """`larnd-diff fit --target packets.h5 --layout-yaml L`: no segments file, one iteration of the data recipe."""
    _torch_only(backend)
    out, reco = tmp_path / "fit.json", tmp_path / "reco.h5"
    code = main(["fit", "--target", str(packets), "--layout-yaml", str(layout), "--checkpoint-dir",
                 str(tmp_path / "ck"), "--max-iter", "1", "--no-hessian", "-q", "--json", str(out),
                 "--reco-out", str(reco)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "segments reconstructed from the target (no truth; vdrift 0.1587" in printed
    result = json.loads(out.read_text())
    assert result["iterations"] == 1 and set(result["params"]) == set(TARGET)
    assert all(np.isfinite(v) for v in result["params"].values())
    segs = ld.load_segments(reco)
    assert len(segs) and np.all(segs["eventID"] == 0)


def test_fit_api_takes_reconstructed_segments_and_packet_hits(packets, layout, backend):
    _torch_only(backend)
    import larnd_diff.fit  # noqa: F401  (ld.fit is then the package, which is callable)

    data = load_data(packets, layout)
    segs, _ = reconstructed_input(data.hits)
    res = ld.fit(segs, data.hits, readout=data.readout, max_iter=1, hessian=False, progress=False)
    assert res.iterations == 1 and all(np.isfinite(v) for v in res.params.values())
    assert np.isfinite(res.history[-1]["loss"])


def _fit_error(tmp_path, capsys, *args) -> str:
    code = main(["fit", *map(str, args), "--checkpoint-dir", str(tmp_path / "ck"), "--max-iter", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_a_foreign_packets_file_gives_a_clear_error_at_the_fit_cli(tmp_path, layout, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("packets", data=np.zeros(4, [("io_group", "u1"), ("timestamp", "u8")]))
    err = _fit_error(tmp_path, capsys, "--target", foreign, "--layout-yaml", layout)
    assert str(foreign) in err and "packets" in err and "missing field(s)" in err
    nothing = tmp_path / "nothing.h5"
    with h5py.File(nothing, "w") as f:
        f.create_dataset("spam", data=np.zeros(3))
    err = _fit_error(tmp_path, capsys, "--target", nothing, "--layout-yaml", layout)
    assert str(nothing) in err and "neither" in err


def test_packets_without_layout_or_segments_get_clear_errors(tmp_path, packets, layout, capsys, event):
    assert "pixel layout" in _fit_error(tmp_path, capsys, "--target", packets)
    assert "give a segments file" in _fit_error(tmp_path, capsys, "--target-params", "Ab=0.85")
    moved = event.copy()
    moved["eventID"] = 7
    segs = tmp_path / "segs.h5"
    ld.save_segments(segs, moved)
    err = _fit_error(tmp_path, capsys, segs, "--target", packets, "--layout-yaml", layout)
    assert "none of the target's events (0)" in err and "eventID" in err
    with pytest.raises(ValueError, match="none of the target's events"):
        check_events(moved, load_data(packets, layout).hits, segs)
