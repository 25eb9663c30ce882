"""LArPix packet export (spec 4.7): trigger packets per event, one data packet per sample, truth association."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

import larnd_diff as ld
from larnd_diff.export import DATA_PACKET, TRIGGER_PACKET, ChannelMap, hits_to_packets, write_packets


@pytest.fixture(scope="module")
def layout(shared):
    return shared / "data" / "multi_tile_layout-2.2.16.yaml"


@pytest.fixture(scope="module")
def hits():
    return ld.simulate(ld.generate_muons(n_events=3, tracks_per_event=2, seed=4))


def test_every_sample_is_one_data_packet_or_counted(hits, layout):
    packets, assn, unmapped = hits_to_packets(hits, layout)
    data = packets["packet_type"] == DATA_PACKET
    trig = packets["packet_type"] == TRIGGER_PACKET
    assert trig.sum() == 2 * len(np.unique(hits.event_id))
    assert data.sum() + unmapped == int(hits.n_samples.sum())
    assert unmapped < 0.1 * hits.n_samples.sum()  # only the disabled tile-edge channels
    adc = hits.adc[~np.isnan(hits.adc)]
    assert set(packets["dataword"][data]) <= set(np.minimum(adc, 255).astype(int))
    assert np.all(assn["track_ids"][trig] == -1)
    assert np.all(assn["track_ids"][data][:, 0] >= 0)  # every sample has a contributing segment


def test_channel_map_inverts_the_layout(hits, layout):
    cmap = ChannelMap(layout, ld.module0())
    table = yaml.safe_load(layout.read_text())["chip_channel_to_position"]
    for i, j in hits.pixel[:50]:
        found = cmap.lookup(int(i), int(j))
        if found is None:
            continue
        _, _, chip, channel = found
        assert tuple(table[chip * 1000 + channel]) in {(a, b) for a in ((i % 140) % 70, 69 - (i % 140) % 70)
                                                        for b in (j % 70, 69 - j % 70)}


def test_write_packets_file(tmp_path, hits, layout):
    out = tmp_path / "packets.h5"
    unmapped = write_packets(out, hits, layout)
    with h5py.File(out) as f:
        assert len(f["packets"]) == len(f["mc_packets_assn"])
        assert f.attrs["n_unmapped_samples"] == unmapped
