"""Detector geometry (spec 2), the parameters table and the electron-mobility model (spec 1)."""
from __future__ import annotations

import numpy as np
import pytest

from larnd_diff.detector import load_detector, module0, resolve_detector
from larnd_diff.params import FIT_PARAMETERS, PARAMETERS, SPECS, Params, as_params, drift_velocity


def test_module0_geometry_numbers():
    det = module0()
    assert det.n_tpcs == 2 and det.n_pixels == (140, 280) and det.n_pixels_per_tile == (70, 70)
    assert det.pixel_pitch == pytest.approx(0.4434)
    b = det.tpc_borders
    np.testing.assert_allclose(b[:, 0], [[-31.039, 31.039]] * 2, atol=1e-9)
    np.testing.assert_allclose(b[:, 1], [[-83.8626, 40.2154]] * 2, atol=1e-9)
    np.testing.assert_allclose(b[:, 2], [[-30.431, -0.15875], [30.431, 0.15875]], atol=1e-9)
    np.testing.assert_array_equal(det.drift_sign, [1, -1])
    assert det.n_ticks_event == 6003 and det.adc_tick_us == pytest.approx(600 / 6003)
    assert det.electronics.integration_ticks(det.t_sampling) == 18
    assert round(det.electronics.adc_pedestal(), 3) == 73.866
    assert det.nominal["vdrift"] == 0.1587


def test_pixel_index_and_centre_round_trip():
    det = module0()
    rng = np.random.default_rng(0)
    i = rng.integers(0, 280, 500)
    j = rng.integers(0, 280, 500)
    x, y = det.pixel_center(i, j)
    ii, jj = det.pixel_index(x, y, i // 140)
    np.testing.assert_array_equal(ii, i)
    np.testing.assert_array_equal(jj, j)


def test_tpc_membership_with_tolerance():
    det = module0()
    np.testing.assert_array_equal(det.tpc_of([0, 0, 0, 0, 40], [0, 0, 0, 0, 0], [-10, 10, 0, -30.45, 10]),
                                  [0, 1, -1, 0, -1])


def test_larnd_sim_yaml_files_give_the_builtin_geometry(shared):
    det = load_detector(shared / "data" / "module0.yaml", shared / "data" / "multi_tile_layout-2.2.16.yaml")
    ref = module0()
    np.testing.assert_array_equal(det.tpc_borders, ref.tpc_borders)
    assert (det.n_pixels, det.n_pixels_per_tile, det.pixel_pitch) == (ref.n_pixels, ref.n_pixels_per_tile,
                                                                       ref.pixel_pitch)
    assert dict(det.nominal) == dict(ref.nominal)


def test_detector_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "nope.yaml", tmp_path / "layout.yaml")
    with pytest.raises(TypeError, match="detector must be"):
        resolve_detector(42)


def test_parameter_table():
    assert set(FIT_PARAMETERS) <= set(SPECS)
    for p in PARAMETERS:
        assert p.low < p.nominal < p.high, p.name
        assert p.doc
    table_one = {"Ab": (0.78, 0.88), "kb": (0.04, 0.07), "eField": (0.45, 0.55), "lifetime": (500, 5000),
                 "long_diff": (2e-6, 9e-6), "tran_diff": (4e-6, 14e-6)}
    for name, (lo, hi) in table_one.items():
        assert (SPECS[name].low, SPECS[name].high) == (lo, hi)


def test_params_container():
    p = Params({"Ab": 0.85})
    assert p["Ab"] == 0.85 and p.kb == 0.0486
    with pytest.raises(AttributeError, match="immutable"):
        p.Ab = 1.0
    assert p.replace(kb=0.05).kb == 0.05 and p.kb == 0.0486
    with pytest.raises(KeyError, match="unknown parameter"):
        Params({"Abb": 1.0})
    assert as_params(None, nominal=module0().nominal).vdrift_value == 0.1587


@pytest.mark.parametrize("efield, vdrift", [(0.5, 0.15965), (0.45, 0.15128), (0.55, 0.16730)])
def test_mobility_model(efield, vdrift):
    assert drift_velocity(efield, 87.17) == pytest.approx(vdrift, abs=1e-5)
    assert Params({"eField": efield}, link_vdrift=True).vdrift_value == pytest.approx(vdrift, abs=1e-5)


def test_yaml_errors_name_the_file_line_and_key(tmp_path, shared):
    from larnd_diff.errors import ConfigError, ConfigFileNotFoundError
    from larnd_diff.export import ChannelMap

    layout = shared / "data" / "multi_tile_layout-2.2.16.yaml"
    detector = shared / "data" / "module0.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text("drift_length: 30\ntpc_centers: [[0, 0, 0]\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:3:1: malformed detector-properties YAML: ") as err:
        load_detector(broken, layout)
    assert "\n" not in str(err.value) and err.value.file == str(broken)
    partial = tmp_path / "partial.yaml"
    partial.write_text("drift_length: 30\n")
    with pytest.raises(ConfigError, match=r"partial\.yaml: lacks the key\(s\) tpc_centers"):
        load_detector(partial, layout)
    with pytest.raises(ConfigError, match=r"partial\.yaml: lacks the key\(s\) pixel_pitch, tile_positions"):
        load_detector(detector, partial)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_detector(scalar, layout)
    with pytest.raises(ConfigFileNotFoundError):
        load_detector(tmp_path / "nope.yaml", layout)
    with pytest.raises(ConfigError, match=r"partial\.yaml: lacks the key\(s\) chip_channel_to_position"):
        ChannelMap(partial, module0())
