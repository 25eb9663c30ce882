"""Selection cuts on hand-made tracks; length-balanced batches of whole tracks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from larnd_diff.detector import module0
from larnd_diff.io import SEGMENT_DTYPE
from larnd_diff.selection import (
    Batches,
    SelectionCuts,
    anode_distance_cm,
    make_batches,
    select_tracks,
    selection_mask,
    selection_report,
    track_index,
)

ANODE = 30.431   # module0 anodes at z = -30.431 (TPC 0) and +30.431 (TPC 1), simulation frame


def straight_track(event, track, start, end, n_segments=10, de_per_cm=2.0):
    """A straight track from ``start`` to ``end`` (cm, simulation frame) cut into ``n_segments`` equal steps."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    knots = start + np.linspace(0.0, 1.0, n_segments + 1)[:, None] * (end - start)
    seg = np.zeros(n_segments, dtype=SEGMENT_DTYPE)
    seg["eventID"], seg["trackID"], seg["pdgId"] = event, track, 13
    for i, a in enumerate("xyz"):
        seg[f"{a}_start"], seg[f"{a}_end"] = knots[:-1, i], knots[1:, i]
        seg[a] = 0.5 * (knots[:-1, i] + knots[1:, i])
    seg["dx"] = np.linalg.norm(end - start) / n_segments
    seg["dE"] = seg["dx"] * de_per_cm
    seg["dEdx"] = de_per_cm
    return seg


TRACKS = {
    # name: (event, track, start, end, expected to pass)
    "near_anode_1": (0, 1, (0, 0, 20), (10, 0, 25), True),
    "near_anode_0": (0, 2, (0, 0, -20), (10, 5, -25), True),          # TPC 0, anode at negative z
    "along_drift": (0, 3, (0, 0, 16), (0.5, 0, 26), False),           # |cos| = 0.9988
    "touches_anode": (1, 1, (0, 0, 20), (10, 0, 29.5), False),        # end 0.93 cm from the anode
    "far_from_anode": (1, 2, (0, 0, 2), (10, 0, 10), False),          # midpoints 20..28 cm from the anode
    "too_short": (1, 3, (0, 0, 20), (1.5, 0, 20.2), False),           # 1.51 cm
}


@pytest.fixture
def sample():
    parts = [straight_track(e, t, s, x) for e, t, s, x, _ in TRACKS.values()]
    parts.append(straight_track(2, 1, (0, 0, 10), (20, 0, 20), n_segments=20))   # partly near the anode
    return np.concatenate(parts)


def keys_of(seg):
    return {tuple(k) for k in track_index(seg)[0]}


def test_cuts_on_hand_made_tracks(sample):
    kept = select_tracks(sample)
    expected = {(e, t) for e, t, _, _, ok in TRACKS.values() if ok} | {(2, 1)}
    assert keys_of(kept) == expected
    for name in ("near_anode_1", "near_anode_0"):
        e, t = TRACKS[name][:2]
        assert ((kept["eventID"] == e) & (kept["trackID"] == t)).sum() == 10    # every segment kept


def test_segment_level_anode_window(sample):
    kept = select_tracks(sample)
    partial = kept[kept["eventID"] == 2]
    dist = ANODE - partial["z"]
    assert np.all(dist < 15.0)
    assert len(partial) == np.sum(ANODE - sample["z"][sample["eventID"] == 2] < 15.0) < 20
    np.testing.assert_allclose(anode_distance_cm(0.0, 0.0, [-25.0, 25.0, 0.0], module0()),
                               [ANODE - 25.0, ANODE - 25.0, np.nan])


def test_report_counts_each_cut(sample):
    rep = selection_report(sample)
    assert rep.n_tracks == 7 and rep.tracks_kept == 3
    assert rep.tracks_without_near_anode_segment == 1
    assert rep.tracks_too_close_to_anode == 1
    assert rep.tracks_too_short == 1
    assert rep.tracks_along_drift == 1
    assert rep.segments_kept == selection_mask(sample).sum()


def test_cuts_are_configurable(sample):
    loose_angle = SelectionCuts(max_abs_cos_drift=0.9999)
    assert (0, 3) in keys_of(select_tracks(sample, loose_angle))
    no_veto = SelectionCuts(min_anode_distance_cm=None)
    assert (1, 1) in keys_of(select_tracks(sample, no_veto))
    assert (1, 3) in keys_of(select_tracks(sample, SelectionCuts(min_track_length_cm=1.0)))
    everything = SelectionCuts(None, None, None, None)
    assert len(select_tracks(sample, everything)) == len(sample)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SelectionCuts().max_abs_cos_drift = 0.5


def test_track_index_order_of_appearance():
    seg = np.concatenate([straight_track(5, 2, (0, 0, 20), (5, 0, 21), 2),
                          straight_track(1, 9, (0, 0, 20), (5, 0, 21), 2),
                          straight_track(5, 2, (5, 0, 21), (9, 0, 22), 1)])
    keys, inv = track_index(seg)
    np.testing.assert_array_equal(keys, [[5, 2], [1, 9]])
    np.testing.assert_array_equal(inv, [0, 0, 1, 1, 0])


# --- batching ------------------------------------------------------------------------------------------------
def many_tracks(lengths):
    parts = [straight_track(i // 4, 1 + i % 4, (0, 0, 20), (length, 0, 20), n_segments=3)
             for i, length in enumerate(lengths)]
    return np.concatenate(parts)


@pytest.fixture
def track_set():
    rng = np.random.default_rng(0)
    lengths = list(rng.uniform(2.0, 30.0, size=60)) + [150.0, 240.0]
    return many_tracks(lengths), np.array(lengths)


def test_every_track_in_exactly_one_batch(track_set):
    seg, lengths = track_set
    batches = make_batches(seg, length_cm=100.0, seed=1)
    assert isinstance(batches, Batches)
    rows = np.concatenate([batches.rows(k) for k in range(len(batches))])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(seg)))
    seen = [tuple(k) for b in range(len(batches)) for k in batches.track_keys(b)]
    assert len(seen) == len(set(seen)) == len(lengths)
    for k, batch in enumerate(batches):
        assert keys_of(batch) == {tuple(x) for x in batches.track_keys(k)}   # whole tracks only
        assert np.all(np.isin(batch, seg))


def test_batch_lengths(track_set):
    seg, lengths = track_set
    batches = make_batches(seg, length_cm=100.0, seed=1)
    for k in range(len(batches)):
        total = batches[k]["dx"].astype(np.float64).sum()
        np.testing.assert_allclose(total, batches.lengths_cm[k], rtol=1e-5)
        if len(batches.track_keys(k)) > 1:
            assert total <= 100.0 + 1e-6
        else:
            assert total > 0
    long = [k for k in range(len(batches)) if batches.lengths_cm[k] > 100.0]
    assert len(long) == 2 and all(len(batches.track_keys(k)) == 1 for k in long)
    # greedy packing: each batch is fuller than length_cm minus the next track it refused
    assert np.median(batches.lengths_cm) > 70.0
    assert batches.lengths_cm.sum() == pytest.approx(lengths.sum(), rel=1e-5)


def test_batches_are_deterministic_and_fixed_across_epochs(track_set):
    seg, _ = track_set
    a = make_batches(seg, length_cm=100.0, seed=3)
    b = make_batches(seg, length_cm=100.0, seed=3)
    c = make_batches(seg, length_cm=100.0, seed=4)
    assert len(a) == len(b)
    assert all(np.array_equal(a.rows(k), b.rows(k)) for k in range(len(a)))
    assert not all(np.array_equal(a.rows(k), c.rows(k)) for k in range(min(len(a), len(c))))
    before = [a.rows(k) for k in range(len(a))]
    orders = [a.epoch_order(e) for e in range(5)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(len(a)))
    np.testing.assert_array_equal(a.epoch_order(2), b.epoch_order(2))
    assert any(not np.array_equal(orders[0], o) for o in orders[1:])
    assert all(np.array_equal(before[k], a.rows(k)) for k in range(len(a)))   # the partition does not move


def test_batching_edge_cases(track_set):
    seg, _ = track_set
    with pytest.raises(ValueError):
        make_batches(seg, length_cm=0.0)
    empty = make_batches(seg[:0])
    assert len(empty) == 0
    with pytest.raises(IndexError):
        make_batches(seg)[10_000]
