"""Property-based test of the input checks (issue 16): on segment tables with random and degenerate rows (zero
length, parallel to the anode, x_start = x_end, outside the detector, extreme or negative dE, NaN), every call of
``ld.simulate`` (the reference, and the numpy backend with the hard and smooth presets) either raises one of the
project's input errors or returns sane hits: filled slots with finite ADC, time and charge, NaN only in empty slots,
non-negative charges no larger than the electrons deposited (no wrap-around of the 32-bit electron count)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import larnd_diff as ld  # noqa: E402
from larnd_diff.errors import InputError  # noqa: E402
from larnd_diff.io import SEGMENT_DTYPE  # noqa: E402
from larnd_diff.params import Params  # noqa: E402

#: module0 (simulation frame): x in +-31.04, y in -83.9..40.2, z (drift) in +-30.43 cm (two TPCs around z = 0).
X, Y, Z = (-31.0, 31.0), (-83.0, 40.0), (-30.4, 30.4)
#: Geometry of a row: degenerate kinds are as likely as ordinary segments.
KINDS = ("normal", "normal", "long", "zero_length", "parallel", "x_equal", "outside")
#: Valid deposits, from nothing to extreme (1e4 MeV: 3e8 electrons, within the 32-bit count).
ENERGIES = (0.0, 1e-3, 0.5, 2.0, 40.0, 1e4)
#: What may be wrong with a row (one row in half of the tables): an input error for every backend.
DAMAGE = ("dE=-1", "dE=nan", "dE=inf", "dE=1e6", "dEdx=-0.5", "dEdx=nan", "position=nan")
CALLS = (("reference", "hard"), ("numpy", "hard"), ("numpy", "smooth"))
NOMINAL = Params()


def coordinate(lo, hi):
    return st.floats(lo, hi, allow_nan=False)


@st.composite
def segment_row(draw):
    kind = draw(st.sampled_from(KINDS))
    start = np.array([draw(coordinate(*X)), draw(coordinate(*Y)), draw(coordinate(*Z))])
    reach = 40.0 if kind == "long" else 1.5
    step = np.array([draw(coordinate(-reach, reach)) for _ in range(3)])
    if kind == "zero_length":
        step[:] = 0.0
    elif kind == "parallel":
        step[2] = 0.0
    elif kind == "x_equal":
        step[0] = 0.0
    elif kind == "outside":
        start[0] += 200.0
    end = start + step
    dE = draw(st.sampled_from(ENERGIES)) if draw(st.integers(0, 2)) == 0 else draw(st.floats(1.0, 10.0))
    length = float(np.linalg.norm(step))
    dEdx = dE / length if length > 0 and draw(st.integers(0, 3)) else draw(st.floats(0.0, 10.0))
    t = draw(st.sampled_from((0.0, 0.0, 12.5, 95.0)))
    return start, end, dE, dEdx, t, draw(st.integers(0, 1))


def damage(seg: np.ndarray, row: int, what: str) -> None:
    """Make one row invalid in place: "dE=-1", "position=nan", ..."""
    name, value = what.split("=")
    if name == "position":
        seg["z_end"][row] = seg["z"][row] = np.nan
    else:
        seg[name][row] = float(value)


@st.composite
def segment_tables(draw):
    """1-6 rows of any geometry kind; in half of the tables one row is damaged (an input error)."""
    rows = draw(st.lists(segment_row(), min_size=1, max_size=6))
    seg = np.zeros(len(rows), dtype=SEGMENT_DTYPE)
    with np.errstate(invalid="ignore", over="ignore"):
        for i, (start, end, dE, dEdx, t, event) in enumerate(rows):
            for k, a in enumerate("xyz"):
                seg[f"{a}_start"][i], seg[f"{a}_end"][i] = start[k], end[k]
                seg[a][i] = 0.5 * (start[k] + end[k])
            seg["dx"][i] = np.linalg.norm(end - start)
            seg["dE"][i], seg["dEdx"][i] = dE, dEdx
            seg["t"][i] = seg["t_start"][i] = seg["t_end"][i] = t
            seg["eventID"][i] = event
    if draw(st.booleans()):
        damage(seg, draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from(DAMAGE)))
    return seg


def assert_sane(hits, seg):
    h = hits.numpy()
    filled = ~np.isnan(h.time)
    assert np.array_equal(filled, ~np.isnan(h.adc)), "ADC and time disagree on which slots are filled"
    assert filled.any(axis=1).all(), "a row without any sample"
    assert np.isfinite(h.adc[filled]).all() and np.isfinite(h.time[filled]).all()
    assert (h.adc[filled] >= 0).all() and (h.time[filled] >= 0).all()
    if h.charge is not None:
        assert np.array_equal(filled, ~np.isnan(h.charge)), "charge and time disagree on filled slots"
        q = h.charge[filled]
        assert np.isfinite(q).all() and (q >= 0).all()
        deposited = float(np.sum(seg["dE"], dtype=np.float64)) * NOMINAL["MeVToElectrons"] * NOMINAL["Ab"]
        assert q.size == 0 or q.max() <= 1.05 * deposited + 1e3, "more charge than was deposited: a wrap-around"
    assert np.isin(h.event_id, seg["eventID"]).all()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seg=segment_tables())
def test_simulate_raises_an_input_error_or_returns_sane_hits(seg):
    for backend, relaxation in CALLS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # the degenerate-segment warning is tested elsewhere
            try:
                hits = ld.simulate(seg, backend=backend, relaxation=relaxation)
            except InputError:
                continue
        assert_sane(hits, seg)


def test_the_strategy_reaches_every_outcome():
    """The generated tables include valid ones, some of which give hits, and each kind of input error."""
    outcomes = set()

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seg=segment_tables())
    def classify(seg):
        from larnd_diff.checks import READ_FIELDS, check_values, host_fields
        from larnd_diff.errors import ElectronCountError, SegmentError

        try:
            check_values(host_fields(seg, READ_FIELDS))
            ld.api._checked_inputs(seg, "numpy", None, None, "hard")
            outcomes.add("valid")
            if "hits" not in outcomes and len(ld.simulate(seg)):
                outcomes.add("hits")
        except ElectronCountError:
            outcomes.add("count")
        except SegmentError as err:
            outcomes.add("negative" if "negative" in str(err) else "not finite")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classify()
    assert outcomes == {"valid", "hits", "count", "negative", "not finite"}
