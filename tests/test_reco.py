"""Reconstruction from hits alone (larnd_diff.reco) on generated tracks with known answers."""
from __future__ import annotations

import numpy as np
import pytest

import larnd_diff as ld
from larnd_diff.generate import generate_tracks, particle_properties, segments_from_steps, step_tracks
from larnd_diff.reco import RecoConfig, drift_coordinate, range_table, reconstruct
from larnd_diff.reco.lines import extract_pieces
from larnd_diff.reco.tracks import chain_pieces
from larnd_diff.reco.truth import compare_dedx, true_tracks

TOP = 40.2154          # y of the top face of module0's TPCs (cm)
WEST = -31.039         # x of the low-x face


def straight_tracks(specs):
    """Segments of straight tracks from chosen points and directions (the generator's stepping, no randomness).

    specs: (eventID, trackID, species, start (cm), direction, kinetic energy (MeV)).
    """
    det = ld.module0()
    props = [particle_properties(s[2]) for s in specs]
    start = np.array([s[3] for s in specs], float)
    direction = np.array([np.asarray(s[4], float) / np.linalg.norm(s[4]) for s in specs])
    track, a, b, de, dx, truth = step_tracks(start, direction, np.array([s[5] for s in specs], float),
                                             np.array([p[1] for p in props]), np.array([p[2] for p in props]), det)
    segs = segments_from_steps(track, a, b, de, dx, np.array([s[0] for s in specs]), np.array([s[1] for s in specs]),
                               np.array([p[0] for p in props]))
    return segs, start, direction, truth


@pytest.fixture(scope="module")
def event_set():
    """Event 0: a stopping 150 MeV proton; 1: a stopping 60 MeV muon; 2: two crossing 1 GeV muons."""
    segs, start, direction, truth = straight_tracks([
        (0, 1, "proton", (10.0, TOP, -20.0), (0.2, -1.0, 0.1), 150.0),
        (1, 1, "mu-", (-15.0, TOP, -10.0), (-0.2, -1.0, -0.3), 60.0),
        (2, 1, "mu-", (WEST, -30.0, -25.0), (1.0, 0.3, 0.4), 1000.0),
        (2, 2, "mu-", (WEST, 10.0, -5.0), (1.0, -0.6, -0.35), 1000.0),
    ])
    assert truth["stopped"].tolist() == [True, True, False, False]
    hits = ld.simulate(segs)
    reco_segs, report = reconstruct(hits)
    return segs, start, direction, hits, reco_segs, report


def tracks_of(report, event):
    return [t for t in report.tracks if t.event_id == event]


def angle_deg(u, v):
    return float(np.degrees(np.arccos(min(1.0, abs(np.dot(u, v)) / np.linalg.norm(u) / np.linalg.norm(v)))))


def test_two_crossing_muons_give_two_straight_tracks(event_set):
    segs, start, direction, _, _, report = event_set
    tracks = tracks_of(report, 2)
    assert len(tracks) == 2
    for k, (p0, d) in enumerate(zip(start[2:], direction[2:])):
        seg = segs[(segs["eventID"] == 2) & (segs["trackID"] == k + 1)]
        true_end = np.array([seg["x_end"][-1], seg["y_end"][-1], seg["z_end"][-1]])
        best = min(tracks, key=lambda t: angle_deg(t.end - t.start, d))
        assert best.category == "through-going" and best.species == "mu-"
        assert angle_deg(best.end - best.start, d) < 0.5
        ends = sorted([best.start, best.end], key=lambda p: np.dot(p - p0, d))
        assert np.linalg.norm(ends[0] - p0) < 1.0 and np.linalg.norm(ends[1] - true_end) < 1.0
        # every node lies on the true line
        rel = best.nodes - p0
        assert np.max(np.linalg.norm(rel - np.outer(rel @ d, d), axis=1)) < 0.3
    assert report.counts()["points in tracks"] >= 0.95 * report.counts()["points"]


def test_hypothesis_tells_the_stopping_proton_from_the_muon(event_set):
    segs, *_, report = event_set
    for event, species in ((0, "proton"), (1, "mu-")):
        (track,) = tracks_of(report, event)
        seg = segs[segs["eventID"] == event]
        stop = np.array([seg["x_end"][-1], seg["y_end"][-1], seg["z_end"][-1]])
        assert track.category == "stopping" and track.species == species
        assert track.end_contained and np.linalg.norm(track.end - stop) < 0.5


def test_dedx_from_range_matches_the_generators_on_a_stopping_proton(event_set):
    segs, *_, reco_segs, report = event_set
    truth, _ = true_tracks(segs, ld.module0())
    proton = next(t for t in truth if t.event_id == 0)
    mine = reco_segs[reco_segs["eventID"] == 0]
    assert np.all(mine["pdgId"] == 2212)
    c = compare_dedx(mine, proton, segs)
    ratio = c["reco"] / c["true"]
    # the stop is found to ~0.1 cm (0.23 cm short here), which moves dE/dx by ~0.4 x offset / residual range
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.mean(np.abs(ratio - 1) < 0.05) > 0.85
    assert mine["dE"].sum() == pytest.approx(150.0, rel=0.03)      # the range fixes the energy
    np.testing.assert_allclose(mine["dEdx"], mine["dE"] / mine["dx"], rtol=1e-5)


def test_range_table_reproduces_the_generator_stepping():
    """Without the detector: the generator's own segments against T(r) of the residual-range table."""
    for species, kinetic in (("proton", 200.0), ("mu-", 80.0)):
        segs, truth = generate_tracks([species] * 8, [kinetic] * 8, np.arange(8), np.ones(8), seed=3,
                                      return_truth=True)
        table = range_table(species)
        for k in np.flatnonzero(truth["stopped"] & (truth["lost_outside_mev"] == 0)):
            s = segs[segs["eventID"] == k]
            r_hi = np.cumsum(s["dx"][::-1].astype(float))[::-1]
            r_lo = r_hi - s["dx"]
            assert r_hi[0] == pytest.approx(table.residual_range(kinetic), rel=0.005)
            far = r_lo > 1.0
            np.testing.assert_allclose(table.deposited_between(r_lo, r_hi)[far], s["dE"][far], rtol=0.01)


def test_reconstructed_segments_feed_the_simulator(event_set, tmp_path):
    _, _, _, hits, reco_segs, _ = event_set
    path = ld.save_segments(tmp_path / "reco.h5", reco_segs)
    again = ld.load_segments(path)                      # edep-sim frame on disk, every midpoint inside a TPC
    np.testing.assert_array_equal(again, reco_segs)
    sim = ld.simulate(again[again["eventID"] == 0])
    n_true = int(hits.event(0).n_samples.sum())
    assert abs(int(sim.n_samples.sum()) - n_true) < 0.15 * n_true


def test_drift_coordinate_follows_vdrift_and_the_trigger_latency():
    det = ld.module0()
    plane = np.array([0, 1])
    at_latency = drift_coordinate([2.0, 2.0], plane, det, 0.16, trigger_latency_us=2.0)
    np.testing.assert_allclose(at_latency, det.anode_z + det.drift_sign * 0.5)
    z = drift_coordinate([102.0, 102.0], plane, det, 0.16, trigger_latency_us=2.0)
    np.testing.assert_allclose(np.abs(z - det.anode_z), 0.5 + 16.0)


def test_reconstruct_takes_vdrift_and_knobs(event_set):
    _, _, _, hits, _, report = event_set
    _, slower = reconstruct(hits.event(0), vdrift=0.9 * report.vdrift)
    (t_nominal,), (t_slow,) = tracks_of(report, 0), tracks_of(slower, 0)
    dz = lambda t: abs(t.end[2] - t.start[2])                                          # noqa: E731
    assert dz(t_slow) == pytest.approx(0.9 * dz(t_nominal), rel=0.03)
    with pytest.raises(TypeError, match="unknown reconstruction knob"):
        reconstruct(hits.event(0), not_a_knob=1)


def test_sequential_ransac_splits_a_vertex_and_joins_a_gap():
    rng = np.random.default_rng(0)
    cfg = RecoConfig()
    s = np.arange(0, 20, 0.4)[:, None]
    u = np.array([1.0, 0.0, 0.0])
    v = np.array([np.cos(np.radians(60)), np.sin(np.radians(60)), 0.0])
    vertex = np.vstack([s * u, s[1:] * v]) + rng.normal(0, 0.1, (2 * len(s) - 1, 3))
    pieces = extract_pieces(vertex, cfg)
    assert len(pieces) == 2
    assert sorted(min(angle_deg(p.direction, w) for w in (u, v)) for p in pieces)[-1] < 2.0
    assert len(chain_pieces(pieces, cfg)) == 2               # 60 degrees: two tracks, not one kinked track
    gap = np.vstack([s[s[:, 0] < 8] * u, s[s[:, 0] > 9.5] * u])      # a 2 cm hole (dead pixels)
    pieces = extract_pieces(gap + rng.normal(0, 0.1, gap.shape), cfg.replace(line_max_gap_cm=1.5))
    assert len(pieces) == 2 and len(chain_pieces(pieces, cfg)) == 1


def test_reco_command_writes_segments_and_a_figure(tmp_path, shared, event_set):
    from larnd_diff.cli import main
    from larnd_diff.export import write_packets

    segs, _, _, hits, _, _ = event_set
    layout = shared / "data" / "multi_tile_layout-2.2.16.yaml"
    packets = tmp_path / "packets.h5"
    write_packets(packets, hits, layout, segments=segs)
    out, figure = tmp_path / "reco.h5", tmp_path / "reco.png"
    assert main(["reco", str(packets), "--layout-yaml", str(layout), "-o", str(out), "--plot", str(figure)]) == 0
    reco = ld.load_segments(out)
    assert set(np.unique(reco["eventID"])) == {0, 1, 2} and figure.stat().st_size > 10_000
    assert main(["reco", str(packets), "-o", str(tmp_path / "x.h5")]) == 2       # packets without a layout
