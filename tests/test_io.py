"""Segment IO: round trips, the x<->z swap, and a clear error for every kind of bad input."""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from larnd_diff.detector import module0
from larnd_diff.io import (
    OPTIONAL_FIELDS,
    SEGMENT_DTYPE,
    SegmentError,
    SegmentFileNotFoundError,
    load_segments,
    save_segments,
    swap_xz,
    validate_segments,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


def sim_frame_segments(n: int = 6) -> np.ndarray:
    """A few short segments inside module0 TPC 1 (simulation frame: z = drift, anode at +30.431 cm)."""
    seg = np.zeros(n, dtype=SEGMENT_DTYPE)
    i = np.arange(n, dtype=np.float64)
    seg["eventID"] = i // 3
    seg["trackID"] = 1 + i % 2
    seg["pdgId"] = 13
    seg["x_start"], seg["x_end"] = 1.0 + i, 1.5 + i
    seg["y_start"], seg["y_end"] = -10.0 + i, -9.5 + i
    seg["z_start"], seg["z_end"] = 10.0 + i, 10.25 + i
    for a in "xyz":
        seg[a] = 0.5 * (seg[f"{a}_start"] + seg[f"{a}_end"])
    seg["dx"] = np.sqrt(0.5 ** 2 + 0.5 ** 2 + 0.25 ** 2)
    seg["dE"] = 1.4
    seg["dEdx"] = seg["dE"] / seg["dx"]
    return seg


def write_raw(path: Path, table, dataset: str = "segments") -> Path:
    with h5py.File(path, "a") as f:
        f.create_dataset(dataset, data=table)
    return path


def reorder(table: np.ndarray, names) -> np.ndarray:
    out = np.zeros(len(table), dtype=[(n, table.dtype[n]) for n in names])
    for n in names:
        out[n] = table[n]
    return out


def with_field(table: np.ndarray, name: str, dtype, values) -> np.ndarray:
    """Copy of ``table`` in which field ``name`` has ``dtype`` and ``values``."""
    descr = [(n, dtype if n == name else table.dtype[n]) for n in table.dtype.names]
    out = np.zeros(len(table), dtype=descr)
    for n in table.dtype.names:
        out[n] = values if n == name else table[n]
    return out


# --- round trips ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("swap", [True, False])
def test_round_trip_is_exact(tmp_path, swap):
    seg = sim_frame_segments()
    path = save_segments(tmp_path / "s.h5", seg, swap_xz=swap)
    back = load_segments(path, swap_xz=swap)
    assert back.dtype == SEGMENT_DTYPE
    assert back.tobytes() == seg.tobytes()


def test_save_swaps_into_edep_frame(tmp_path):
    seg = sim_frame_segments()
    path = save_segments(tmp_path / "s.h5", seg)
    with h5py.File(path) as f:
        raw = f["segments"][()]
    np.testing.assert_array_equal(raw["x"], seg["z"])      # edep-sim frame: drift along x
    np.testing.assert_array_equal(raw["z_start"], seg["x_start"])
    np.testing.assert_array_equal(swap_xz(swap_xz(seg)), seg)


def test_any_field_order_extra_fields_and_missing_optional(tmp_path):
    seg = swap_xz(sim_frame_segments())
    names = [n for n in reversed(SEGMENT_DTYPE.names) if n not in ("t", "n_electrons", "pixel_plane")]
    table = reorder(seg, names)
    extra = np.zeros(len(seg), dtype=table.dtype.descr + [("n_photons", "<f4")])
    for n in table.dtype.names:
        extra[n] = table[n]
    extra["n_photons"] = 7.0
    path = write_raw(tmp_path / "s.h5", extra)
    back = load_segments(path)
    assert back.dtype.names[:len(SEGMENT_DTYPE)] == SEGMENT_DTYPE.names
    assert back.dtype.names[-1] == "n_photons" and np.all(back["n_photons"] == 7.0)
    for n in ("t", "n_electrons", "pixel_plane"):
        assert n in OPTIONAL_FIELDS and np.all(back[n] == 0)
    np.testing.assert_array_equal(back["z"], sim_frame_segments()["z"])


def test_integer_and_float_dtypes_are_converted(tmp_path):
    seg = swap_xz(sim_frame_segments())
    table = with_field(seg, "eventID", "<i8", seg["eventID"].astype(np.int64))
    table = with_field(table, "dE", "<f8", seg["dE"].astype(np.float64))
    back = load_segments(write_raw(tmp_path / "s.h5", table))
    assert back.dtype["eventID"] == np.dtype("u4") and back.dtype["dE"] == np.dtype("f4")


def test_save_refuses_to_overwrite(tmp_path):
    seg = sim_frame_segments()
    path = save_segments(tmp_path / "s.h5", seg)
    with pytest.raises(FileExistsError, match="already exists"):
        save_segments(path, seg)
    seg2 = seg.copy()
    seg2["dE"] = 2.0
    save_segments(path, seg2, overwrite=True)
    assert np.all(load_segments(path)["dE"] == 2.0)
    save_segments(path, seg, dataset="group/other")
    assert load_segments(path, dataset="group/other").tobytes() == seg.tobytes()


# --- bad input -----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(SegmentFileNotFoundError, match="nope.h5"):
        load_segments(path)
    with pytest.raises(FileNotFoundError):
        load_segments(path)
    with pytest.raises(SegmentError):
        load_segments(path)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not hdf5")
    with pytest.raises(SegmentError, match="HDF5"):
        load_segments(path)


def test_missing_dataset_lists_what_is_there(tmp_path):
    path = write_raw(tmp_path / "s.h5", swap_xz(sim_frame_segments()), dataset="tracks")
    write_raw(path, np.arange(3), dataset="other/numbers")
    with pytest.raises(SegmentError, match=r"no dataset 'segments'; datasets present: other/numbers, tracks"):
        load_segments(path)


def test_group_or_plain_array_instead_of_table(tmp_path):
    path = write_raw(tmp_path / "s.h5", np.arange(3.0), dataset="g/x")
    with pytest.raises(SegmentError, match="is a group"):
        load_segments(path, dataset="g")
    with pytest.raises(SegmentError, match="compound"):
        load_segments(path, dataset="g/x")


@pytest.mark.parametrize("field", ["dE", "eventID", "z_start", "dEdx"])
def test_missing_required_field(tmp_path, field):
    seg = swap_xz(sim_frame_segments())
    table = reorder(seg, [n for n in seg.dtype.names if n != field])
    path = write_raw(tmp_path / "s.h5", table)
    with pytest.raises(SegmentError, match=rf"s\.h5:segments: missing required field\(s\) {field}"):
        load_segments(path)


@pytest.mark.parametrize("field, dtype, values", [
    ("dE", "S8", b"1.0"),
    ("dx", "<c8", 1 + 1j),
    ("eventID", "<f4", 1.5),
    ("pdgId", "?", True),
])
def test_wrong_dtype(tmp_path, field, dtype, values):
    table = with_field(swap_xz(sim_frame_segments()), field, dtype, values)
    path = write_raw(tmp_path / "s.h5", table)
    with pytest.raises(SegmentError, match=rf"s\.h5:segments: field '{field}' has dtype"):
        load_segments(path)


def test_integer_out_of_range(tmp_path):
    seg = swap_xz(sim_frame_segments())
    ids = seg["eventID"].astype(np.int64)
    ids[4] = -1
    path = write_raw(tmp_path / "s.h5", with_field(seg, "eventID", "<i8", ids))
    with pytest.raises(SegmentError, match=r"field 'eventID' row 4 has value -1 outside the range"):
        load_segments(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_first_row_and_count(tmp_path, bad):
    seg = swap_xz(sim_frame_segments())
    seg["dE"][2] = bad
    seg["dE"][5] = np.nan
    path = write_raw(tmp_path / "s.h5", seg)
    with pytest.raises(SegmentError, match=r"field 'dE' row 2 is .*2 row\(s\)"):
        load_segments(path)


def test_empty_table(tmp_path):
    path = write_raw(tmp_path / "s.h5", np.zeros(0, dtype=SEGMENT_DTYPE))
    with pytest.raises(SegmentError, match="empty"):
        load_segments(path)


def _with_outside_rows(tmp_path):
    seg = sim_frame_segments()
    for row in (1, 4):
        for part in ("_start", "_end", ""):
            seg[f"y{part}"][row] = 500.0
    return save_segments(tmp_path / "s.h5", seg), seg


def test_outside_error_names_row_and_count(tmp_path):
    path, _ = _with_outside_rows(tmp_path)
    with pytest.raises(SegmentError, match=r"2 of 6 segment\(s\).*first is row 1"):
        load_segments(path)


def test_outside_drop_warns_with_count(tmp_path):
    path, seg = _with_outside_rows(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 2 of 6"):
        out = load_segments(path, outside="drop")
    assert len(out) == 4
    np.testing.assert_array_equal(out["y"], np.delete(seg["y"], [1, 4]))


def test_outside_keep(tmp_path):
    path, seg = _with_outside_rows(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_segments(path, outside="keep")
    assert out.tobytes() == seg.tobytes()
    with pytest.raises(ValueError, match="outside must be"):
        load_segments(path, outside="ignore")


def test_wrong_swap_is_caught_by_the_geometry_check(tmp_path):
    seg = sim_frame_segments()
    seg["x"] = seg["x_start"] = seg["x_end"] = 40.0   # inside module0 along z, outside along x
    path = save_segments(tmp_path / "s.h5", seg, swap_xz=False)
    with pytest.raises(SegmentError, match="x<->z swap"):
        load_segments(path, swap_xz=False)


def test_validate_segments_in_memory():
    seg = sim_frame_segments()
    assert validate_segments(seg).tobytes() == seg.tobytes()
    seg["dx"][0] = np.nan
    with pytest.raises(SegmentError, match="field 'dx' row 0"):
        validate_segments(seg)


# --- the shared example inputs -------------------------------------------------------------------------------
@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data directory {DATA} not present")
@pytest.mark.parametrize("name, rows, extra", [("test_inputs.h5", 2736, ("n_photons",)),
                                               ("module0_corsika.h5", 1095, ()),
                                               ("mixed_sample.h5", 73789, ("n_photons",))])
def test_shared_files(name, rows, extra):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    seg = load_segments(path)
    assert len(seg) == rows
    assert seg.dtype.names == SEGMENT_DTYPE.names + extra
    with h5py.File(path) as f:
        raw = f["segments"][()]
    np.testing.assert_array_equal(seg["z"], raw["x"])       # drift axis moved to z
    np.testing.assert_array_equal(seg["x_end"], raw["z_end"])
    np.testing.assert_array_equal(seg["dE"], raw["dE"])
    det = module0()
    assert np.all(det.tpc_of(seg["x"], seg["y"], seg["z"]) >= 0)
    assert np.abs(seg["z"]).max() <= 30.431 + 0.02
