"""LArPix packets in (larnd_diff.packets): the inverse of the export, events and t0, clear errors."""
from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

import larnd_diff as ld
from larnd_diff.errors import InputError
from larnd_diff.export import DATA_PACKET, PACKET_DTYPE, TRIGGER_PACKET, ChannelMap, write_packets
from larnd_diff.packets import (CLOCK_US, MissingPacketsError, PacketError, build_pixel_lookup, clock_to_grid_us,
                                load_packets, load_target, read_packets)


@pytest.fixture(scope="module")
def layout(shared):
    return shared / "data" / "multi_tile_layout-2.2.16.yaml"


@pytest.fixture(scope="module")
def hits():
    return ld.simulate(ld.generate_muons(n_events=3, tracks_per_event=2, seed=4))


@pytest.fixture(scope="module")
def packets_file(tmp_path_factory, hits, layout):
    path = tmp_path_factory.mktemp("packets") / "packets.h5"
    write_packets(path, hits, layout)
    return path


def samples_by_pixel(h, keep=None):
    """{(event, I, J): sorted [(time, ADC capped at 255, backtrack...)]}: rows of one pixel merged."""
    out: dict = {}
    for r in range(len(h)):
        if keep is not None and not keep[r]:
            continue
        ok = ~np.isnan(h.adc[r])
        key = (int(h.event_id[r]), int(h.pixel[r, 0]), int(h.pixel[r, 1]))
        out.setdefault(key, []).extend((float(t), min(float(a), 255.0), tuple(b))
                                       for t, a, b in zip(h.time[r][ok], h.adc[r][ok], h.backtrack[r][ok]))
    return {k: sorted(v) for k, v in out.items()}


def test_round_trip_gives_the_simulated_hits_on_exported_pixels(hits, layout, packets_file):
    """simulate -> packets -> read: same pixels, ADC (export caps at 255), backtrack; times within one clock tick
    (the export floors them). Pixels on the tile-edge channels larnd-sim does not read out are not compared."""
    back = load_packets(packets_file, layout)
    cmap = ChannelMap(layout, ld.module0())
    exported = np.array([cmap.lookup(int(i), int(j)) is not None for i, j in hits.pixel])
    assert exported.mean() > 0.9
    want, got = samples_by_pixel(hits, exported), samples_by_pixel(back)
    assert set(want) == set(got)
    for key in want:
        (t_want, a_want, b_want), (t_got, a_got, b_got) = (list(zip(*want[key])), list(zip(*got[key])))
        assert a_got == a_want and b_got == b_want
        dt = np.array(t_got) - np.array(t_want)
        assert np.all((dt > -CLOCK_US - 1e-9) & (dt <= 1e-9)), key
    assert back.charge is None
    assert np.all(np.isnan(back.adc) == np.isnan(back.time))


def test_times_on_the_tick_grid_round_trip_exactly(hits, layout, packets_file):
    """time_grid="ticks": the clock timestamps go back to the simulator's 600/6003 us grid, the very times
    simulated (the export floors them to the 0.1 us clock; the grid is finer)."""
    back = read_packets(packets_file, layout, time_grid="ticks").hits
    cmap = ChannelMap(layout, ld.module0())
    exported = np.array([cmap.lookup(int(i), int(j)) is not None for i, j in hits.pixel])
    want, got = samples_by_pixel(hits, exported), samples_by_pixel(back)
    for key in want:
        np.testing.assert_allclose([t for t, *_ in got[key]], [t for t, *_ in want[key]], rtol=0, atol=1e-9)
    ticks = np.arange(0, 6000)
    grid = clock_to_grid_us(np.floor(ticks * ld.module0().adc_tick_us / CLOCK_US), ld.module0().adc_tick_us)
    assert np.mean(np.isclose(grid, ticks * ld.module0().adc_tick_us, atol=1e-9)) > 0.998
    with pytest.raises(ValueError, match="time_grid"):
        read_packets(packets_file, layout, time_grid="seconds")


def test_events_and_t0_come_from_the_trigger_packets(layout, packets_file):
    result = read_packets(packets_file, layout)
    assert result.t0_source == "trigger packets"
    np.testing.assert_allclose(result.t0_us, [0.0, 600.0, 1200.0])
    assert result.n_trigger_packets == 6 and result.n_events == 3
    assert sorted(set(result.hits.event_id.tolist())) == [0, 1, 2]


def test_pixel_lookup_inverts_the_export_channel_map(layout):
    det = ld.module0()
    cmap, lookup = ChannelMap(layout, det), build_pixel_lookup(layout, det)
    pixels = [(i, j) for i in range(0, 280, 7) for j in range(0, 280, 3)]
    channels = [(p, cmap.lookup(*p)) for p in pixels]
    channels = [(p, c) for p, c in channels if c is not None]
    found, known = lookup.pixels_of(*np.array([c for _, c in channels]).T)
    assert known.all()
    np.testing.assert_array_equal(found, np.array([p for p, _ in channels]))


def _without_triggers(src, dst):
    with h5py.File(src) as f:
        packets, assn = f["packets"][()], f["mc_packets_assn"][()]
    keep = packets["packet_type"] != TRIGGER_PACKET
    with h5py.File(dst, "w") as f:
        f.create_dataset("packets", data=packets[keep])
        f.create_dataset("mc_packets_assn", data=assn[keep])


def test_without_trigger_packets_the_caller_gives_t0(tmp_path, layout, packets_file):
    path = tmp_path / "no_triggers.h5"
    _without_triggers(packets_file, path)
    with pytest.raises(PacketError, match="event_t0"):
        read_packets(path, layout)
    with_triggers = read_packets(packets_file, layout).hits
    for t0 in ("slots", [0.0, 600.0, 1200.0]):
        with pytest.warns(UserWarning, match="no trigger packets"):
            hits = load_packets(path, layout, event_t0=t0)
        np.testing.assert_array_equal(hits.time, with_triggers.time)
        np.testing.assert_array_equal(hits.pixel, with_triggers.pixel)


def test_a_truncated_file_names_file_and_dataset(tmp_path, packets_file, layout):
    data = packets_file.read_bytes()
    cut = tmp_path / "truncated.h5"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PacketError) as err:
        load_packets(cut, layout)
    assert str(cut) in str(err.value) and "'packets'" in str(err.value) and "truncated" in str(err.value)
    assert isinstance(err.value, InputError)


def test_a_truncated_table_names_the_row(tmp_path, packets_file, layout):
    with h5py.File(packets_file) as f:
        packets, assn = f["packets"][()], f["mc_packets_assn"][()]
    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("packets", data=packets[:100])
        f.create_dataset("mc_packets_assn", data=assn)
    with pytest.raises(PacketError, match=r"mc_packets_assn.*row 100") as err:
        load_packets(path, layout)
    assert err.value.rows == (100,) and str(path) in str(err.value)


def test_foreign_files_get_clear_errors(tmp_path, layout):
    segments = tmp_path / "segments.h5"
    ld.save_segments(segments, ld.generate_muons(n_events=1, seed=1))
    with pytest.raises(MissingPacketsError, match=r"no dataset 'packets'.*segments"):
        load_packets(segments, layout)
    wrong = tmp_path / "wrong_dtype.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("packets", data=np.zeros(3, [("io_group", "u1"), ("timestamp", "u8")]))
    with pytest.raises(PacketError, match=r"wrong_dtype.h5:packets.*missing field\(s\) io_channel"):
        load_packets(wrong, layout)
    with pytest.raises(PacketError, match="does not exist"):
        load_packets(tmp_path / "absent.h5", layout)


def test_a_channel_outside_the_layout_names_its_row(tmp_path, layout):
    packets = np.zeros(3, PACKET_DTYPE)
    packets["packet_type"] = [TRIGGER_PACKET, DATA_PACKET, DATA_PACKET]
    packets["io_group"], packets["io_channel"], packets["chip_id"] = 1, 1, 11
    packets["channel_id"] = [0, 0, 7]          # channel 7 of a chip is not routed to a pixel
    packets["timestamp"], packets["dataword"] = [0, 10, 12], 90
    path = tmp_path / "foreign_channel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("packets", data=packets)
    with pytest.raises(PacketError, match=r"foreign_channel.h5:packets: row 2 .*1-1-11 channel 7") as err:
        load_packets(path, layout)
    assert err.value.rows == (2,)


def test_more_than_ten_samples_of_a_pixel_go_to_a_continuation_row(tmp_path, layout):
    packets = np.zeros(13, PACKET_DTYPE)
    packets["packet_type"] = [TRIGGER_PACKET] + [DATA_PACKET] * 12
    packets["io_group"], packets["io_channel"], packets["chip_id"] = 1, 1, 11
    packets["timestamp"] = [100] + list(range(160, 100, -5))   # twelve samples, out of time order on purpose
    packets["dataword"] = np.arange(13) + 80
    path = tmp_path / "busy_pixel.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("packets", data=packets)
    with pytest.warns(UserWarning, match="more than 10 samples"):
        result = read_packets(path, layout)
    h = result.hits
    assert len(h) == 2 and result.n_continuation_rows == 1
    assert np.all(h.pixel[0] == h.pixel[1]) and h.n_samples.tolist() == [10, 2]
    times = np.concatenate([h.time[0][:10], h.time[1][:2]])
    assert np.all(np.diff(times) > 0)
    assert h.backtrack is None


def test_load_target_reads_packets_or_hits(tmp_path, hits, layout):
    both = tmp_path / "both.h5"
    ld.save_hits(both, hits)
    write_packets(both, hits, layout)
    assert len(load_target(both)) == len(hits)                   # no layout: the hits group
    from_packets = load_target(both, layout)                      # layout: the data path
    assert int(from_packets.n_samples.sum()) < int(hits.n_samples.sum())
    only_packets = tmp_path / "packets_only.h5"
    write_packets(only_packets, hits, layout)
    with pytest.raises(PacketError, match="pixel layout"):
        load_target(only_packets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_target(only_packets, layout)) == len(from_packets)
