"""Checks of what :func:`larnd_diff.simulate` is given, made once per call before any simulation.

* the fields the simulation reads are present (:class:`~larnd_diff.errors.MissingFieldError`);
* their values are finite, and dE and dEdx are not negative (:class:`~larnd_diff.errors.SegmentError` naming
  field and rows; ``load_segments(..., invalid="drop")`` drops such rows from a file);
* the electron counts fit larnd-sim's unsigned 32-bit ``n_electrons`` field after recombination and after the
  lifetime, at the parameters of the call (:class:`~larnd_diff.errors.ElectronCountError`): the reference stores
  them there, and the differentiable simulator is held to the same inputs, so every backend rejects alike;
* degenerate segments inside a TPC are counted and reported in one :class:`DegenerateSegmentWarning` per call,
  saying what happens to them under the chosen relaxation (:func:`degenerate_segments`).

Values that are not concrete (traced under ``jax.jit`` or ``tf.function``) are not checked.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np

from .errors import MissingFieldError, SegmentError, rows_text
from .params import as_params, concrete_value

#: Fields every backend reads (simulation frame): event, the three points of each step, its times, its energy.
POSITION_FIELDS = ("x_start", "y_start", "z_start", "x_end", "y_end", "z_end", "x", "y", "z")
READ_FIELDS = ("eventID",) + POSITION_FIELDS + ("t", "t_start", "t_end", "dE", "dEdx")
NON_NEGATIVE = ("dE", "dEdx")


class DegenerateSegmentWarning(UserWarning):
    """Segments that induce no current, or induce it only under a smooth relaxation (zero length, parallel to the
    anode, x_start = x_end)."""


def _field_names(segments) -> Optional[tuple]:
    if isinstance(segments, np.ndarray) and segments.dtype.names:
        return segments.dtype.names
    if isinstance(segments, dict):
        return tuple(segments)
    return None


def host_fields(segments, names) -> Dict[str, np.ndarray]:
    """Float64 NumPy values of the fields ``names`` of a structured array or a dict of arrays / tensors; fields
    whose value is not concrete (traced) are left out."""
    out = {}
    for name in names:
        value = segments[name]
        v = value.astype(np.float64) if isinstance(value, np.ndarray) else concrete_value(value)
        if v is not None:
            out[name] = np.asarray(v, np.float64).reshape(-1)
    return out


def check_fields(segments, required=READ_FIELDS) -> None:
    """A :class:`~larnd_diff.errors.MissingFieldError` unless ``segments`` has every field of ``required``."""
    names = _field_names(segments)
    if names is None:
        raise SegmentError(f"segments must be a NumPy structured array (larnd_diff.io.load_segments) or a dict of "
                           f"arrays, not {type(segments).__name__}")
    missing = [f for f in required if f not in names]
    if missing:
        raise MissingFieldError(f"segments lack the field(s) {missing}; expected a structured array with the fields "
                                "of larnd_diff.io.SEGMENT_DTYPE (simulation frame, z = drift axis)", field=missing[0])


def check_values(fields: Dict[str, np.ndarray]) -> None:
    """A :class:`~larnd_diff.errors.SegmentError` naming every field with a NaN or infinite value, or a negative
    dE or dEdx, with its rows and count."""
    problems = []
    for name, v in fields.items():
        bad = ~np.isfinite(v)
        if bad.any():
            problems.append((name, "is not finite (NaN or inf)", np.flatnonzero(bad)))
        if name in NON_NEGATIVE:
            neg = v < 0
            if neg.any():
                problems.append((name, "is negative (energy deposits and stopping powers must be >= 0)",
                                 np.flatnonzero(neg)))
    if problems:
        texts = [f"field {name!r} row {rows[0]} is {fields[name][rows[0]]:g} and {reason}; {len(rows)} row(s) of "
                 f"this field affected: {rows_text(rows)}" for name, reason, rows in problems]
        raise SegmentError("segments: " + "; ".join(texts) + ". load_segments(..., invalid='drop') drops such rows "
                           "from a file with a warning", field=problems[0][0], rows=problems[0][2])


def _host_params(params, detector) -> Optional[dict]:
    """The parameters quench and drift read, as floats; None when one of them is not concrete."""
    p = as_params(params, nominal=detector.nominal)
    out = {}
    for name in ("Ab", "kb", "eField", "lArDensity", "MeVToElectrons", "lifetime"):
        v = concrete_value(p[name])
        if v is None or v.size != 1:
            return None
        out[name] = float(v.reshape(()))
    v = concrete_value(p.vdrift_value)
    if v is None or v.size != 1:
        return None
    out["vdrift"] = float(v.reshape(()))
    return out


def check_electron_counts(fields: Dict[str, np.ndarray], params, detector) -> None:
    """The reference's u4 stores of the electron count (after Birks recombination, then after the lifetime, in
    float64 as the reference computes them), applied to the concrete values: an
    :class:`~larnd_diff.errors.ElectronCountError` names the rows whose count does not fit. Skipped when a
    parameter or one of the fields is not concrete."""
    from .reference.drift import drift_distance, lifetime_factor, tpc_index
    from .reference.quench import birks_recombination, truncate_u4

    p = _host_params(params, detector)
    if p is None or not all(k in fields for k in ("dE", "dEdx", "x", "y", "z")):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        n = birks_recombination(fields["dEdx"], p["Ab"], p["kb"], p["eField"], p["lArDensity"]) * fields["dE"] \
            * p["MeVToElectrons"]
    n = truncate_u4(n, what="electron count after recombination").astype(np.float64)
    plane = tpc_index(fields["x"], fields["y"], fields["z"], detector.tpc_borders)
    inside = np.flatnonzero(plane >= 0)
    z_anode = detector.tpc_borders[plane[inside], 2, 0]
    t_drift = drift_distance(fields["z"][inside], z_anode) / p["vdrift"]
    truncate_u4(n[inside] * lifetime_factor(t_drift, p["lifetime"]), rows=inside,
                what="electron count after the lifetime")


def degenerate_segments(fields: Dict[str, np.ndarray], detector) -> Dict[str, np.ndarray]:
    """Row numbers of the degenerate segments whose midpoint lies in a TPC (simulation frame):

    ``zero_length``  start = end: no current under any relaxation (their charge is lost);
    ``parallel``     z_start = z_end (parallel to the anode), x_start != x_end: the reference and the hard
                     preset give their pixels a NaN current (larnd-sim's: the point of such a line at a given z
                     is 0/0), so no hits there, other segments' charge on those pixels included; a smooth
                     relaxation tilts them slightly and they induce hits;
    ``x_equal``      x_start = x_end, not of zero length: no current under any relaxation (larnd-sim's z interval
                     of such a line is "no overlap").
    """
    same = {a: fields[f"{a}_start"] == fields[f"{a}_end"] for a in "xyz"}
    in_tpc = detector.tpc_of(fields["x"], fields["y"], fields["z"]) >= 0
    zero = same["x"] & same["y"] & same["z"]
    return {"zero_length": np.flatnonzero(in_tpc & zero),
            "parallel": np.flatnonzero(in_tpc & same["z"] & ~same["x"]),
            "x_equal": np.flatnonzero(in_tpc & same["x"] & ~zero)}


def degenerate_message(found: Dict[str, np.ndarray], n_segments: int, smooth_tilt: Optional[float],
                       label: str) -> Optional[str]:
    """One line saying how many degenerate segments there are and what ``label`` (the backend and relaxation)
    does with them; ``smooth_tilt``: the tilt (cm) of anode-parallel segments, None where they give NaN."""
    parts = []
    if len(found["zero_length"]):
        parts.append(f"{len(found['zero_length'])} of zero length (start = end; {rows_text(found['zero_length'])}): "
                     "no current under any relaxation, their charge is lost")
    if len(found["parallel"]):
        rows = found["parallel"]
        if smooth_tilt is None:
            fate = (f"under {label} their pixels' current is NaN over the segment's time window (larnd-sim's "
                    "behaviour: the point of such a line at a given z is 0/0), so those pixels record no hits "
                    "there, other segments' charge on them included (the differentiable simulator with "
                    "relaxation='smooth' tilts them and keeps those hits)")
        else:
            fate = (f"under {label} they are tilted by {smooth_tilt:g} cm along z and induce hits (the reference "
                    "and relaxation='hard' record no hits on their pixels)")
        parts.append(f"{len(rows)} parallel to the anode (z_start = z_end; {rows_text(rows)}): {fate}")
    if len(found["x_equal"]):
        parts.append(f"{len(found['x_equal'])} with x_start = x_end ({rows_text(found['x_equal'])}): no current "
                     "under any relaxation (larnd-sim finds no pixel overlap for such lines), their charge is "
                     "lost")
    if not parts:
        return None
    total = sum(len(v) for v in found.values())
    return f"simulate: {total} degenerate segment(s) inside a TPC (of {n_segments}): " + "; ".join(parts)


def _relaxation_behaviour(backend: str, relaxation) -> tuple:
    """(tilt of anode-parallel segments in cm or None, label) of a backend and relaxation."""
    if backend == "reference":
        return None, "the reference"
    from .sim.config import as_relaxation, preset_name

    relax = as_relaxation(relaxation)
    name = preset_name(relax)
    label = f"relaxation {name!r}" if name else "this relaxation"
    if relax.onset_sharpness is None:
        return None, label
    from .sim.pipeline import FLAT_TILT_CM

    return FLAT_TILT_CM, label


def check_simulation_inputs(segments, backend: str, *, params=None, detector=None, relaxation="hard",
                            required=READ_FIELDS, stacklevel: int = 3) -> None:
    """Every check of this module, in order; warns once (:class:`DegenerateSegmentWarning`) about degenerate
    segments. ``stacklevel`` points the warning at the caller's caller (the user's ``simulate`` call)."""
    from .detector import resolve_detector

    check_fields(segments, required)
    detector = resolve_detector(detector)
    fields = host_fields(segments, READ_FIELDS)
    check_values(fields)
    check_electron_counts(fields, params, detector)
    if not all(f in fields for f in POSITION_FIELDS):
        return
    found = degenerate_segments(fields, detector)
    n_segments = len(fields["x"])
    tilt, label = _relaxation_behaviour(backend, relaxation)
    message = degenerate_message(found, n_segments, tilt, label)
    if message:
        warnings.warn(message, DegenerateSegmentWarning, stacklevel=stacklevel)


__all__ = ["DegenerateSegmentWarning", "READ_FIELDS", "check_electron_counts", "check_fields",
           "check_simulation_inputs", "check_values", "degenerate_message", "degenerate_segments", "host_fields"]
