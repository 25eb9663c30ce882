"""The command line's outputs and errors (issue 16, items 1 and 10): existing outputs refused without --overwrite,
never a write over an input, output paths checked before any simulation, no partial file after a failure; one line
per input error with exit status 2, flags instead of API keywords, tracebacks with --debug."""
from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import larnd_diff as ld
from larnd_diff.cli import error_line, main
from larnd_diff.errors import InputError, OutputExistsError, cli_spelling
from larnd_diff.io import atomic_output, check_output, save_segments


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "muons.h5"
    save_segments(path, ld.generate_muons(n_events=1, tracks_per_event=1, seed=1)[:40])
    return path


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``larnd-diff ARGV`` in this process."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"larnd-diff {command}: error: ") and "Traceback" not in err
    return lines[0]


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- item 1: outputs
def test_existing_output_needs_overwrite(seg_file, tmp_path, capsys):
    out = tmp_path / "hits.h5"
    assert run(capsys, "simulate", seg_file, "-o", out, "-q")[0] == 0
    before = out.read_bytes()
    rc, _, err = run(capsys, "simulate", seg_file, "-o", out, "-q")
    assert rc == 2 and "exists; pass --overwrite to replace it" in one_error_line(err, "simulate")
    assert out.read_bytes() == before
    assert run(capsys, "simulate", seg_file, "-o", out, "-q", "--overwrite")[0] == 0
    gen = tmp_path / "gen.h5"
    assert run(capsys, "generate", "-n", "1", "-o", gen)[0] == 0
    rc, _, err = run(capsys, "generate", "-n", "1", "-o", gen)
    assert rc == 2 and "--overwrite" in one_error_line(err, "generate")
    assert run(capsys, "generate", "-n", "1", "-o", gen, "--overwrite")[0] == 0
    assert files_in(tmp_path) == ["gen.h5", "hits.h5"]


def test_never_writes_over_an_input(seg_file, tmp_path, capsys):
    same = tmp_path / "same.h5"
    same.write_bytes(seg_file.read_bytes())
    (tmp_path / "link.h5").symlink_to(same)
    os.link(same, tmp_path / "hard.h5")
    for target in ("same.h5", "link.h5", "hard.h5", "./same.h5"):
        rc, _, err = run(capsys, "simulate", same, "-o", tmp_path / target, "-q", "--overwrite")
        assert rc == 2 and "would write over the input" in one_error_line(err, "simulate"), target
    assert same.read_bytes() == seg_file.read_bytes()
    with h5py.File(same) as f:
        assert "segments" in f and "hits" not in f
    layout = tmp_path / "layout.yaml"
    layout.write_text("pixel_pitch: 4.434\n")
    rc, _, err = run(capsys, "simulate", seg_file, "-o", layout, "--layout-yaml", layout, "--overwrite", "-q")
    assert rc == 2 and "would write over the input" in err


def test_output_paths_are_checked_before_simulating(seg_file, tmp_path, capsys, monkeypatch):
    def no_simulation(*a, **k):
        raise AssertionError("simulated before checking the output")

    monkeypatch.setattr("larnd_diff.api.simulate", no_simulation)
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path / "nodir" / "out.h5", "-q")
    assert rc == 2 and "folder" in one_error_line(err, "simulate") and "does not exist" in err
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path / "out.h5", "--packets", "-q")
    assert rc == 2 and "--packets needs the pixel-layout YAML" in one_error_line(err, "simulate")
    thin = tmp_path / "thin_layout.yaml"
    thin.write_text("pixel_pitch: 4.434\ntile_positions: {}\n")
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path / "out.h5", "--packets", "--layout-yaml", thin,
                     "-q")
    assert rc == 2 and "thin_layout.yaml: lacks the key(s) chip_channel_to_position" in one_error_line(err,
                                                                                                      "simulate")
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path, "-q")
    assert rc == 2 and "is a folder" in one_error_line(err, "simulate")
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path / "out.h5", "--param", "lifetime=-5", "-q")
    assert rc == 2 and "'lifetime' = -5" in one_error_line(err, "simulate") and "(0, inf)" in err
    rc, _, err = run(capsys, "compare", seg_file, "--json", tmp_path / "r.json", "--figure", tmp_path / "r.json")
    assert rc == 2 and "two outputs" in one_error_line(err, "compare")
    rc, _, err = run(capsys, "compare", seg_file, "--json", seg_file)
    assert rc == 2 and "would write over the input" in one_error_line(err, "compare")
    assert files_in(tmp_path) == ["thin_layout.yaml"]


def test_a_failure_leaves_no_partial_file(seg_file, tmp_path, capsys, monkeypatch, shared):
    def broken(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("larnd_diff.export.write_packets", broken)
    out = tmp_path / "out.h5"
    layout = shared / "data" / "multi_tile_layout-2.2.16.yaml"
    rc, _, err = run(capsys, "simulate", seg_file, "-o", out, "--packets", "--layout-yaml", layout, "-q")
    assert rc == 2 and "disk full" in one_error_line(err, "simulate")
    assert files_in(tmp_path) == []                   # neither the hits-only file nor a temporary one
    out.write_bytes(b"old")                           # an existing output survives a failed --overwrite
    rc, _, _ = run(capsys, "simulate", seg_file, "-o", out, "--packets", "--layout-yaml", layout, "-q",
                   "--overwrite")
    assert rc == 2 and out.read_bytes() == b"old" and files_in(tmp_path) == ["out.h5"]


def test_packets_and_hits_written_together(seg_file, tmp_path, capsys, shared):
    out = tmp_path / "out.h5"
    rc, stdout, _ = run(capsys, "simulate", seg_file, "-o", out, "--packets", "--layout-yaml",
                        shared / "data" / "multi_tile_layout-2.2.16.yaml", "-q")
    assert rc == 0 and "LArPix packets written" in stdout
    with h5py.File(out) as f:
        assert {"hits", "packets", "mc_packets_assn", "tracks"} <= set(f)
    assert files_in(tmp_path) == ["out.h5"]


def test_atomic_output_and_check_output(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and not tmp.exists()
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("failed")
    assert target.read_text() == "new" and files_in(tmp_path) == ["a.txt"]
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        check_output(target)
    assert isinstance(OutputExistsError("x"), FileExistsError)
    real = tmp_path / "real.txt"
    real.write_text("x")
    (tmp_path / "ln.txt").symlink_to(real)
    with atomic_output(tmp_path / "ln.txt", overwrite=True) as tmp:   # a symbolic link is followed
        tmp.write_text("through the link")
    assert (tmp_path / "ln.txt").is_symlink() and real.read_text() == "through the link"


# ---------------------------------------------------------------------------------------------- item 10: errors
def test_input_errors_are_one_line_with_exit_status_2(seg_file, tmp_path, capsys, shared):
    bad = tmp_path / "bad.h5"
    seg = ld.load_segments(seg_file)
    seg["dE"][[3, 7]] = -1.0
    with h5py.File(bad, "w") as f:
        f.create_dataset("segments", data=ld.io.swap_xz(seg))
    broken_yaml = tmp_path / "det.yaml"
    broken_yaml.write_text("tpc_centers:\n  - [0, 0, 0\ndrift_length: 30\n")
    layout = shared / "data" / "multi_tile_layout-2.2.16.yaml"
    out = tmp_path / "out.h5"
    cases = [
        (("simulate", tmp_path / "nosuch.h5", "-o", out), "nosuch.h5: segments file does not exist"),
        (("simulate", bad, "-o", out), "field 'dE' row 3 is -1 and is negative"),
        (("simulate", bad, "-o", out), "Pass --invalid drop to drop such rows"),
        (("simulate", seg_file, "-o", out, "--param", "Ab=nan"), "'Ab' = nan is not finite"),
        (("simulate", seg_file, "-o", out, "--param", "lifetme=3"), "unknown parameter 'lifetme'"),
        (("simulate", seg_file, "-o", out, "--param", "Ab"), "--param expects NAME=VALUE"),
        (("simulate", seg_file, "-o", out, "--detector-yaml", broken_yaml, "--layout-yaml", layout),
         "det.yaml:3:13: malformed detector-properties YAML"),
        (("simulate", seg_file, "-o", out, "--detector-yaml", broken_yaml), "--layout-yaml FILE"),
    ]
    for argv, expected in cases:
        rc, _, err = run(capsys, *argv, "-q")
        assert rc == 2, argv
        assert expected in one_error_line(err, "simulate"), (expected, err)
    assert files_in(tmp_path) == ["bad.h5", "det.yaml"]


def test_outside_hint_is_a_flag(seg_file, tmp_path, capsys):
    seg = ld.load_segments(seg_file)
    seg["x"][2] = seg["x_start"][2] = seg["x_end"][2] = 500.0
    path = tmp_path / "outside.h5"
    save_segments(path, seg)
    rc, _, err = run(capsys, "simulate", path, "-o", tmp_path / "o.h5", "-q")
    line = one_error_line(err, "simulate")
    assert rc == 2 and "first is row 2" in line
    assert "Pass --outside drop to drop them with a warning or --outside keep to keep them" in line
    assert "outside='drop'" not in line


def test_invalid_drop_on_the_command_line(seg_file, tmp_path, capsys):
    seg = ld.load_segments(seg_file)
    seg["dEdx"][5] = np.nan
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=ld.io.swap_xz(seg))
    rc, stdout, err = run(capsys, "simulate", path, "-o", tmp_path / "o.h5", "-q", "--invalid", "drop")
    assert rc == 0 and "from 39 segments" in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("larnd-diff simulate: warning: ") and "dropped 1 of 40" in lines[0]


def test_warnings_are_one_line_each(seg_file, tmp_path, capsys):
    seg = ld.load_segments(seg_file)
    seg["z_end"][4] = seg["z"][4] = seg["z_start"][4]
    path = tmp_path / "flat.h5"
    save_segments(path, seg)
    rc, _, err = run(capsys, "simulate", path, "-o", tmp_path / "o.h5", "-q")
    assert rc == 0 and err.strip().splitlines() == [
        "larnd-diff simulate: warning: simulate: 1 degenerate segment(s) inside a TPC (of 40): 1 parallel to the "
        "anode (z_start = z_end; row 4): under the reference their pixels' current is NaN over the segment's time "
        "window (larnd-sim's behaviour: the point of such a line at a given z is 0/0), so those pixels record no "
        "hits there, other segments' charge on them included (the differentiable simulator with --relaxation "
        "smooth tilts them and keeps those hits)"]


def test_relaxation_presets_on_the_command_line(seg_file, tmp_path, capsys):
    rc, _, _ = run(capsys, "simulate", seg_file, "-o", tmp_path / "o.h5", "-q", "--backend", "numpy",
                   "--relaxation", "smooth-continuous")
    assert rc == 0
    adc = ld.load_hits(tmp_path / "o.h5").adc
    assert np.any((adc % 1 != 0) & ~np.isnan(adc))      # continuous ADC: not rounded


def test_debug_shows_the_traceback(seg_file, tmp_path, capsys, monkeypatch):
    argv = ["simulate", str(tmp_path / "nosuch.h5"), "-o", str(tmp_path / "o.h5")]
    with pytest.raises(InputError, match="does not exist"):
        main(["--debug", *argv])
    with pytest.raises(InputError):
        main([*argv, "--debug"])
    monkeypatch.setenv("LARND_DIFF_DEBUG", "1")
    with pytest.raises(InputError):
        main(argv)
    monkeypatch.setenv("LARND_DIFF_DEBUG", "0")
    assert main(argv) == 2


def test_other_errors_are_one_line_too(capsys, monkeypatch, seg_file, tmp_path):
    def bug(*a, **k):
        raise TypeError("an internal bug")

    monkeypatch.setattr("larnd_diff.api.simulate", bug)
    rc, _, err = run(capsys, "simulate", seg_file, "-o", tmp_path / "o.h5", "-q")
    assert rc == 1 and err.strip().splitlines() == [
        "larnd-diff simulate: internal error: TypeError: an internal bug (rerun with --debug for the traceback "
        "and please report it)"]


def test_keyword_hints_become_flags():
    assert cli_spelling("pass resume=True to continue it, or overwrite=True") == "pass --resume to continue it, or " \
                                                                                  "--overwrite"
    assert cli_spelling("Pass outside='drop' or invalid=\"drop\"") == "Pass --outside drop or --invalid drop"
    assert cli_spelling("dtype='float32' and strict=True stay") == "dtype='float32' and strict=True stay"
    assert error_line(KeyError("unknown loss 'x'")) == "unknown loss 'x'"
    assert error_line(FileExistsError("h.jsonl holds a fit; pass overwrite=True\n to replace it")) == \
        "h.jsonl holds a fit; pass --overwrite to replace it"


def test_the_installed_entry_point(tmp_path, seg_file):
    """The real process: one line on stderr, exit status 2."""
    env = dict(os.environ, LARND_DIFF_DEBUG="")
    proc = subprocess.run([sys.executable, "-m", "larnd_diff.cli", "simulate", str(seg_file), "-o",
                           str(seg_file), "-q"], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"larnd-diff simulate: error: {seg_file}: the output would write over the input {seg_file}; choose another "
        "file name (--overwrite does not allow this)"]


def test_save_and_load_hits_name_the_problem(tmp_path):
    from larnd_diff.errors import InputFileNotFoundError, MissingDataError
    from larnd_diff.hits import Hits, load_hits, save_hits

    path = tmp_path / "h.h5"
    save_hits(path, Hits.empty())
    with pytest.raises(OutputExistsError, match="group 'hits' already exists"):
        save_hits(path, Hits.empty())
    save_hits(path, Hits.empty(), overwrite=True)
    with pytest.raises(MissingDataError, match="has no group 'other'") as err:
        load_hits(path, group="other")
    assert isinstance(err.value, KeyError)
    with pytest.raises(InputFileNotFoundError, match="hits file does not exist"):
        load_hits(tmp_path / "nope.h5")
