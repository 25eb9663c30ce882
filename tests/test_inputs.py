"""Input validation (issue 16, items 4, 5, 6, 8, 9): invalid segment rows, electron counts beyond larnd-sim's u4
field, parameter domains, degenerate segments, framework parameter containers, one set of relaxation presets."""
from __future__ import annotations

import math
import warnings
from types import MappingProxyType

import numpy as np
import pytest

import larnd_diff as ld
from larnd_diff.checks import DegenerateSegmentWarning
from larnd_diff.detector import load_detector, module0
from larnd_diff.errors import (ElectronCountError, InputError, MissingFieldError, ParameterError, SegmentError,
                               UnknownParameterError)
from larnd_diff.io import SEGMENT_DTYPE, load_segments, save_segments, validate_segments
from larnd_diff.params import PARAMETERS, SPECS, Params, as_params, check_value
from larnd_diff.reference.quench import U4_MAX, truncate_u4

DET = module0()


def segments(n: int = 6, dE: float = 1.4) -> np.ndarray:
    """Short segments well inside module0 TPC 1 (simulation frame, anode at z = +30.431 cm), 2 events."""
    seg = np.zeros(n, dtype=SEGMENT_DTYPE)
    i = np.arange(n, dtype=np.float64)
    seg["eventID"] = i // 3
    seg["trackID"] = 1
    seg["pdgId"] = 13
    seg["x_start"], seg["x_end"] = 1.0 + i, 1.5 + i
    seg["y_start"], seg["y_end"] = -10.0 + i, -9.5 + i
    seg["z_start"], seg["z_end"] = 10.0 + i, 10.25 + i
    for a in "xyz":
        seg[a] = 0.5 * (seg[f"{a}_start"] + seg[f"{a}_end"])
    seg["dx"] = math.sqrt(0.5 ** 2 + 0.5 ** 2 + 0.25 ** 2)
    seg["dE"] = dE
    seg["dEdx"] = seg["dE"] / seg["dx"]
    return seg


@pytest.fixture(scope="module")
def muons() -> np.ndarray:
    return ld.generate_muons(n_events=1, tracks_per_event=1, seed=1)[:60]


# ---------------------------------------------------------------------------------------------- item 4: rows
@pytest.mark.parametrize("field", ["dE", "dEdx"])
def test_load_rejects_negative_energy_naming_file_field_and_rows(tmp_path, field):
    seg = segments()
    seg[field][[1, 4]] = -1.0
    path = _write_raw(tmp_path / "s.h5", seg)
    with pytest.raises(SegmentError) as err:
        load_segments(path, swap_xz=False)
    msg = str(err.value)
    assert str(path) in msg and f"field {field!r}" in msg and "rows 1, 4" in msg and "negative" in msg
    assert "invalid='drop'" in msg
    assert err.value.field == field and err.value.rows == (1, 4)


def _write_raw(path, table):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=table)
    return path


def test_load_drops_invalid_rows_with_one_counted_warning(tmp_path):
    seg = segments()
    seg["dE"][1] = -1.0
    seg["dEdx"][3] = np.nan
    seg["z"][5] = np.inf
    path = _write_raw(tmp_path / "s.h5", seg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_segments(path, swap_xz=False, invalid="drop")
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "dropped 3 of 6" in text and "'dE'" in text and "'dEdx'" in text and "'z'" in text
    np.testing.assert_array_equal(out["y"], seg["y"][[0, 2, 4]])
    with pytest.raises(ValueError, match="invalid must be"):
        load_segments(path, invalid="ignore")


def test_outside_rows_are_named_by_their_file_row_after_a_drop(tmp_path):
    seg = segments()
    seg["dE"][0] = -1.0
    seg["x"][4] = seg["x_start"][4] = seg["x_end"][4] = 500.0
    path = _write_raw(tmp_path / "s.h5", seg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SegmentError, match="first is row 4"):
            load_segments(path, swap_xz=False, invalid="drop")


def test_validate_segments_invalid_policy():
    seg = segments()
    seg["dEdx"][2] = -0.5
    with pytest.raises(SegmentError, match=r"field 'dEdx' row 2 .* negative"):
        validate_segments(seg)
    with pytest.warns(UserWarning, match="dropped 1 of 6"):
        assert len(validate_segments(seg, invalid="drop")) == 5
    seg["dEdx"] = -1.0
    with pytest.raises(SegmentError, match="nothing left"):
        validate_segments(seg, invalid="drop")


def test_save_refuses_invalid_rows(tmp_path):
    seg = segments()
    seg["dE"][0] = -2.0
    with pytest.raises(SegmentError, match="negative"):
        save_segments(tmp_path / "s.h5", seg)


# ---------------------------------------------------------------------------------------------- item 4: u4 casts
def test_u4_cast_never_wraps():
    assert truncate_u4([0.0, 0.7, 12.9, U4_MAX + 0.5]).tolist() == [0, 0, 12, U4_MAX]
    assert truncate_u4([-0.5]).tolist() == [0]         # truncation toward zero, as the cast does
    for bad in (-1.0, U4_MAX + 1.0, 1e12, np.inf, np.nan):
        with pytest.raises(ElectronCountError, match="does not fit"):
            truncate_u4([1.0, bad], rows=[7, 9])
    with pytest.raises(ElectronCountError, match="row 9") as err:
        truncate_u4([1.0, 1e12], rows=[7, 9])
    assert err.value.rows == (9,)


def test_huge_deposit_is_an_error_not_zero_electrons():
    from larnd_diff.reference import quench

    seg = segments(dE=1.4)
    seg["dE"][2] = 1e6                    # dEdx unchanged (a unit error in dE alone)
    with pytest.raises(ElectronCountError, match=r"row 2: electron count after recombination 2\.\d+e\+10"):
        quench(seg)
    # every backend rejects it alike, before simulating
    messages = set()
    for backend in ("reference", "numpy"):
        with pytest.raises(ElectronCountError) as err:
            ld.simulate(seg, backend=backend)
        messages.add(str(err.value))
    assert len(messages) == 1


def test_negative_deposit_is_rejected_by_every_backend():
    seg = segments()
    seg["dE"][3] = -1.0
    for backend in ("reference", "numpy"):
        with pytest.raises(SegmentError, match=r"field 'dE' row 3 is -1 and is negative"):
            ld.simulate(seg, backend=backend)
    with pytest.raises(ElectronCountError):             # the reference's own cast, called directly
        from larnd_diff.reference import quench

        quench(seg)


def test_count_beyond_u4_after_the_lifetime_is_caught_for_every_backend():
    """A count just below 2^32 after recombination, multiplied by the lifetime factor (> 1 inside the 0.5 cm in
    front of the anode, where the drift distance is negative), overflows the drift's u4 store."""
    seg = segments(n=1)
    z = 30.431 - 0.3                       # between the virtual plane and the anode of TPC 1
    seg["z_start"], seg["z_end"], seg["z"] = z - 0.05, z + 0.05, z
    seg["dEdx"] = 0.0                      # R = Ab
    p = Params(nominal=DET.nominal)
    seg["dE"] = np.float32((U4_MAX - 20) / (p["Ab"] * p["MeVToElectrons"]))
    for backend in ("reference", "numpy"):
        with pytest.raises(ElectronCountError, match="after the lifetime"):
            ld.simulate(seg, backend=backend, params={"lifetime": 50.0})


def test_valid_large_deposit_still_simulates():
    seg = segments(dE=1.4)
    seg["dE"][0] = 1e4
    hits = ld.simulate(seg)
    assert len(hits) and np.all(np.isfinite(hits.adc[~np.isnan(hits.time)]))


# ---------------------------------------------------------------------------------------------- item 5: domains
def test_every_parameter_has_a_domain_holding_its_range():
    for spec in PARAMETERS:
        assert spec.domain.contains([spec.low, spec.nominal, spec.high]).all(), spec.name
        assert not spec.domain.contains([np.nan, np.inf, -np.inf]).any(), spec.name
    assert str(SPECS["Ab"].domain) == "(0, 1]" and str(SPECS["kb"].domain) == "[0, inf)"
    for name in ("lifetime", "long_diff", "tran_diff", "eField", "vdrift", "lArDensity", "MeVToElectrons"):
        assert str(SPECS[name].domain) == "(0, inf)", name


BAD_VALUES = [("lifetime", -5.0), ("lifetime", 0.0), ("Ab", float("nan")), ("Ab", 1.2), ("Ab", 0.0),
              ("eField", 0.0), ("kb", -0.01), ("tran_diff", 0.0), ("long_diff", -1e-6), ("vdrift", float("inf")),
              ("MeVToElectrons", -1.0), ("lArDensity", 0.0), ("temperature", -3.0)]


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_values_outside_the_domain_raise_naming_parameter_value_and_range(name, value):
    with pytest.raises(ParameterError) as err:
        Params({name: value})
    msg = str(err.value)
    assert f"'{name}'" in msg and f"{value:g}" in msg and str(SPECS[name].domain) in msg
    assert err.value.parameter == name


@pytest.mark.parametrize("backend_name", ["reference", "numpy"])
def test_simulate_checks_parameters(backend_name):
    seg = segments()
    for name, value in (("lifetime", -5.0), ("Ab", float("nan")), ("eField", 0.0)):
        with pytest.raises(ParameterError, match=name):
            ld.simulate(seg, backend=backend_name, params={name: value})


def test_parameter_names_and_non_numbers():
    with pytest.raises(UnknownParameterError, match="unknown parameter") as err:
        Params({"Abb": 0.8})
    assert isinstance(err.value, KeyError) and not str(err.value).startswith("'")
    with pytest.raises(ParameterError, match="not a number"):
        Params({"Ab": "0.8"})
    with pytest.raises(ParameterError, match="mapping"):
        as_params([("Ab", 0.8)])


def test_array_values_are_checked_element_wise():
    check_value("Ab", np.array([0.8, 0.9]))
    with pytest.raises(ParameterError, match=r"1 of 2 elements"):
        check_value("Ab", np.array([0.8, 1.9]))


def test_detector_yaml_values_are_checked_naming_the_file(tmp_path, shared):
    import yaml

    props = yaml.safe_load((shared / "data" / "module0.yaml").read_text())
    props["eField"] = -0.5
    bad = tmp_path / "det.yaml"
    bad.write_text(yaml.safe_dump(props))
    with pytest.raises(ParameterError, match=r"det\.yaml: parameter 'eField' = -0\.5"):
        load_detector(bad, shared / "data" / "multi_tile_layout-2.2.16.yaml")


def test_framework_tensors_are_checked_when_concrete_and_skipped_when_traced(backend):
    if backend == "numpy":
        pytest.skip("framework tensors")
    from larnd_diff import ops

    b = ops.get_backend(backend)
    bad = b.asarray(np.asarray(-5.0), "float64").raw
    with pytest.raises(ParameterError, match="lifetime"):
        Params({"lifetime": bad})
    if backend == "jax":
        import jax

        assert float(jax.jit(lambda v: Params({"lifetime": v})["lifetime"] * 2)(bad)) == -10.0
    if backend == "tensorflow":
        import tensorflow as tf

        assert float(tf.function(lambda v: Params({"lifetime": v})["lifetime"] * 2)(bad)) == -10.0


# ---------------------------------------------------------------------------------------------- item 6: degenerate
def degenerate_sample(muons):
    seg = muons.copy()
    for a in "xyz":                                   # row 3: zero length
        seg[f"{a}_end"][3] = seg[f"{a}_start"][3]
        seg[a][3] = seg[f"{a}_start"][3]
    for r in (10, 11):                                # rows 10, 11: parallel to the anode
        seg["z_end"][r] = seg["z"][r] = seg["z_start"][r]
    seg["x_end"][20] = seg["x"][20] = seg["x_start"][20]   # row 20: x_start = x_end
    return seg


@pytest.mark.parametrize("backend_name, relaxation, fate", [
    ("reference", "hard", "under the reference their pixels' current is NaN"),
    ("numpy", "hard", "under relaxation 'hard' their pixels' current is NaN"),
    ("numpy", "smooth", "under relaxation 'smooth' they are tilted by 0.0001 cm along z and induce hits"),
])
def test_degenerate_segments_are_counted_in_one_warning_per_call(muons, backend_name, relaxation, fate):
    seg = degenerate_sample(muons)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ld.simulate(seg, backend=backend_name, relaxation=relaxation)
    found = [w for w in caught if issubclass(w.category, DegenerateSegmentWarning)]
    assert len(found) == 1
    text = str(found[0].message)
    assert "4 degenerate segment(s) inside a TPC (of 60)" in text
    assert "1 of zero length (start = end; row 3): no current under any relaxation" in text
    assert "2 parallel to the anode (z_start = z_end; rows 10, 11)" in text and fate in text
    assert "1 with x_start = x_end (row 20)" in text
    assert found[0].filename == __file__           # points at the simulate call


def test_what_the_warning_says_is_what_happens(muons):
    """Anode-parallel segments: no hits on their pixels with the reference and hard, hits with smooth."""
    seg = muons[10:12].copy()
    seg["z_end"] = seg["z"] = seg["z_start"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSegmentWarning)
        assert len(ld.simulate(seg)) == 0
        assert len(ld.simulate(seg, backend="numpy")) == 0
        assert len(ld.simulate(seg, backend="numpy", relaxation="smooth")) > 0


def test_no_warning_without_degenerate_segments(muons):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ld.simulate(muons[:20])


def test_missing_fields_are_input_errors():
    with pytest.raises(MissingFieldError, match="lack the field") as err:
        ld.simulate(np.zeros(2, [("x", "f4")]))
    assert isinstance(err.value, KeyError) and isinstance(err.value, InputError)


# ---------------------------------------------------------------------------------------------- item 8: containers
def test_framework_parameter_containers(backend, muons):
    """tf.Variable, torch nn.Parameter / nn.ParameterDict, jax arrays in mappings: accepted where parameters are,
    and the gradient w.r.t. them equals the one w.r.t. a plain tensor."""
    seg = muons[:30]
    if backend == "numpy":
        pytest.skip("no gradients")
    if backend == "tensorflow":
        import tensorflow as tf

        def loss(ab):
            return tf.experimental.numpy.nansum(
                ld.simulate(seg, backend="tensorflow", params={"Ab": ab}, relaxation="smooth").adc)

        var = tf.Variable(0.8, dtype=tf.float64)
        with tf.GradientTape() as tape:
            value = loss(var)
        g_var = tape.gradient(value, var)
        const = tf.constant(0.8, dtype=tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(const)
            value_t = loss(const)
        g_t = tape.gradient(value_t, const)
        assert g_var is not None and np.isfinite(g_var.numpy()) and g_var.numpy() != 0
        assert g_var.numpy() == g_t.numpy() and value.numpy() == value_t.numpy()
        held = Params({"Ab": var})                     # a Params built outside the tape reads the variable on use
        with tf.GradientTape() as tape:
            value_p = tf.experimental.numpy.nansum(
                ld.simulate(seg, backend="tensorflow", params=held, relaxation="smooth").adc)
        assert tape.gradient(value_p, var).numpy() == g_t.numpy()
    elif backend == "torch":
        import torch

        ab = torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))
        box = torch.nn.ParameterDict({"Ab": ab})
        torch.nansum(ld.simulate(seg, backend="torch", params=box, relaxation="smooth").adc).backward()
        t = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        torch.nansum(ld.simulate(seg, backend="torch", params={"Ab": t}, relaxation="smooth").adc).backward()
        assert ab.grad is not None and torch.isfinite(ab.grad) and ab.grad.item() == t.grad.item()
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(ab, container):
            return jnp.nansum(ld.simulate(seg, backend="jax", params=container({"Ab": ab}), relaxation="smooth").adc)

        ab = ld.get_backend("jax").asarray(np.asarray(0.8), "float64").raw   # turns on jax's float64
        g_dict = jax.grad(loss)(ab, dict)
        g_proxy = jax.grad(loss)(ab, MappingProxyType)
        assert np.isfinite(float(g_dict)) and float(g_dict) == float(g_proxy)


def test_value_and_grad_accepts_framework_containers(backend, muons):
    """value_and_grad with tf.Variable values, a torch nn.ParameterDict, a read-only mapping of jax arrays: the
    same gradient as with a plain float."""
    import eagerpy as ep

    if backend == "numpy":
        pytest.skip("no gradients")
    seg = muons[:30]

    def loss(p):
        adc = ep.astensor(ld.simulate(seg, backend=backend, params={k: v.raw for k, v in p.items()},
                                      relaxation="smooth").adc)
        return ep.where(adc.isnan(), ep.zeros_like(adc), adc).sum()

    if backend == "tensorflow":
        import tensorflow as tf

        given = {"Ab": tf.Variable(0.8, dtype=tf.float64)}
    elif backend == "torch":
        import torch

        given = torch.nn.ParameterDict({"Ab": torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))})
    else:
        ab = ld.get_backend("jax").asarray(np.asarray(0.8), "float64").raw   # turns on jax's float64
        given = MappingProxyType({"Ab": ab})
    _, g_given = ld.value_and_grad(loss, given, backend=backend)
    _, g_float = ld.value_and_grad(loss, {"Ab": 0.8}, backend=backend)
    assert np.isfinite(float(g_given["Ab"].raw)) and float(g_given["Ab"].raw) == float(g_float["Ab"].raw)


# ---------------------------------------------------------------------------------------------- item 9: presets
def test_one_set_of_relaxation_presets(muons):
    from larnd_diff.cli import build_parser
    from larnd_diff.sim.config import (CONTINUOUS, PRESETS, SMOOTH, SMOOTH_CONTINUOUS, SimConfig, as_relaxation,
                                       preset_name)

    assert set(PRESETS) == {"hard", "smooth", "smooth-continuous", "continuous"}
    assert SMOOTH_CONTINUOUS == SMOOTH.replace(adc="continuous", onset="soft")
    assert CONTINUOUS == SMOOTH_CONTINUOUS.replace(pad_edge="linear", z_step="fixed", tick_phase="averaged")
    assert preset_name(CONTINUOUS) == "continuous"
    assert as_relaxation("smooth-continuous") is SMOOTH_CONTINUOUS and preset_name(SMOOTH_CONTINUOUS) == \
        "smooth-continuous"
    seg = muons[:30]
    by_name = ld.simulate(seg, backend="numpy", relaxation="smooth-continuous")
    by_config = ld.simulate(seg, backend="numpy", config=SimConfig(relaxation=SMOOTH.replace(adc="continuous",
                                                                                            onset="soft")))
    np.testing.assert_array_equal(by_name.adc, by_config.adc)
    simulate_cmd = next(a for a in build_parser()._subparsers._group_actions[0].choices["simulate"]._actions
                        if a.dest == "relaxation")
    assert tuple(simulate_cmd.choices) == tuple(PRESETS)
    with pytest.raises(ValueError, match="smooth-continuous"):
        as_relaxation("smoth")
