"""Reading and writing the edep-sim / larnd-sim ``segments`` HDF5 table.

Frames
------
edep-sim writes segments in its own frame, in which the **drift axis is x**. Everything inside larnd-diff works in
the *simulation frame*, in which the **drift axis is z** and (x, y) address the pixel plane. The
two frames differ only by exchanging the x and z columns (``x_start <-> z_start``, ``x_end <-> z_end``,
``x <-> z``); the exchange is its own inverse. :func:`load_segments` and :func:`save_segments` apply it by default
(``swap_xz=True``), so that files on disk stay in the edep-sim frame and arrays in memory are in the simulation
frame. Pass ``swap_xz=False`` for files that are already in the simulation frame.

Errors
------
Every problem with an input is reported as a :class:`SegmentError` (a :class:`larnd_diff.errors.InputError`, so a
``ValueError``) whose message names the file, the dataset and, where it applies, the field and the offending rows.
Nothing is dropped silently: rows with invalid values (NaN or infinite numbers, values that overflow their field,
negative dE or dEdx) and rows outside every TPC are errors by default; dropping them on request
(``invalid="drop"``, ``outside="drop"``) emits one warning with their count.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import OutputError, OutputExistsError, SegmentError, SegmentFileNotFoundError, rows_text

#: Canonical field layout of the ``segments`` table (larnd-sim cli/dumpTree.py order). Files may order fields
#: differently and carry extra fields (e.g. n_photons); both are accepted and kept.
SEGMENT_DTYPE = np.dtype([
    ("eventID", "u4"), ("trackID", "u4"), ("pdgId", "i4"),
    ("x_start", "f4"), ("x_end", "f4"), ("x", "f4"),
    ("y_start", "f4"), ("y_end", "f4"), ("y", "f4"),
    ("z_start", "f4"), ("z_end", "f4"), ("z", "f4"),
    ("dx", "f4"), ("dEdx", "f4"), ("dE", "f4"),
    ("t", "f4"), ("t_start", "f4"), ("t_end", "f4"),
    ("n_electrons", "u4"), ("long_diff", "f4"), ("tran_diff", "f4"), ("pixel_plane", "u4"),
])

_SWAP_PAIRS = (("x_start", "z_start"), ("x_end", "z_end"), ("x", "z"))

#: Fields a segments table must carry: identifiers, the three points of each step, its length and its energy.
REQUIRED_FIELDS: tuple[str, ...] = (
    "eventID", "trackID", "pdgId",
    "x_start", "x_end", "x", "y_start", "y_end", "y", "z_start", "z_end", "z",
    "dx", "dE", "dEdx",
)
#: Fields the simulation writes (times, charge, diffusion widths, TPC index); filled with zeros when absent.
OPTIONAL_FIELDS: tuple[str, ...] = tuple(n for n in SEGMENT_DTYPE.names if n not in REQUIRED_FIELDS)

#: Fields that must not be negative: the deposited energy (MeV) and the stopping power (MeV/cm). A negative value
#: would quench into a negative electron count, which larnd-sim's unsigned field wraps to ~4.29e9 electrons.
NON_NEGATIVE_FIELDS: tuple[str, ...] = ("dE", "dEdx")

_OUTSIDE_MODES = ("error", "drop", "keep")
_INVALID_MODES = ("error", "drop")


def swap_xz(segments: np.ndarray) -> np.ndarray:
    """Exchange the x and z columns (edep-sim frame, x = drift  <->  simulation frame, z = drift). Returns a copy."""
    out = segments.copy()
    for a, b in _SWAP_PAIRS:
        out[a], out[b] = segments[b], segments[a]
    return out


_swap_columns = swap_xz  # the keyword argument ``swap_xz`` of the functions below shadows the name


# --------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------
def _where(path, dataset) -> str:
    return f"{path}:{dataset}" if path is not None else f"segments array ({dataset})"


def _field_kind_ok(target: np.dtype, source: np.dtype) -> bool:
    """Whether values of ``source`` dtype may be stored in a field of ``target`` dtype without losing meaning."""
    if source.shape != () or source.names is not None:
        return False
    if target.kind in "iu":
        return source.kind in "iu"
    return source.kind in "iuf"


def _integer_range_problem(values: np.ndarray, target: np.dtype):
    """(first bad row, count) of integer values outside the range of ``target``, or None."""
    info = np.iinfo(target)
    bad = (values < info.min) | (values > info.max)
    if bad.any():
        return int(np.flatnonzero(bad)[0]), int(bad.sum())
    return None


def _value_problems(table: np.ndarray, name: str, target: np.dtype) -> list:
    """``[(reason, bad-row mask)]`` of the float field ``name`` of ``table`` stored as ``target``: not finite,
    too large for ``target``, negative (for :data:`NON_NEGATIVE_FIELDS`)."""
    values = table[name]
    finite = np.isfinite(values)
    out = [("is not finite (NaN or inf)", ~finite)]
    with np.errstate(invalid="ignore"):
        wide = values.astype(np.float64)
        out.append((f"overflows {target}", finite & (np.abs(wide) > np.finfo(target).max)))
        if name in NON_NEGATIVE_FIELDS:
            out.append(("is negative (energy deposits and stopping powers must be >= 0)", wide < 0))
    return [(reason, mask) for reason, mask in out if mask.any()]


def invalid_rows(table: np.ndarray) -> list:
    """``[(field, reason, bad-row mask)]`` for the canonical float fields of a structured array: values that are
    not finite, overflow the canonical float type, or are negative where :data:`NON_NEGATIVE_FIELDS` forbids it.
    Empty when every row is valid."""
    out = []
    for name in SEGMENT_DTYPE.names:
        if name in table.dtype.names and SEGMENT_DTYPE[name].kind == "f" and table.dtype[name].kind in "iuf":
            out += [(name, reason, mask) for reason, mask in _value_problems(table, name, SEGMENT_DTYPE[name])]
    return out


def _problem_text(table: np.ndarray, field: str, reason: str, mask: np.ndarray, index: np.ndarray) -> str:
    bad = np.flatnonzero(mask)
    value = float(table[field][bad[0]])
    return (f"field {field!r} row {index[bad[0]]} is {value:g} and {reason}; {len(bad)} row(s) of this field "
            f"affected: {rows_text(index[bad])}")


def _apply_invalid_policy(table: np.ndarray, invalid: str, where: str, index: np.ndarray):
    """``(kept rows, their original row numbers)`` after the ``invalid`` policy: "error" raises a
    :class:`SegmentError` naming every bad field, its first row and count; "drop" drops the rows with one warning."""
    problems = invalid_rows(table)
    if not problems:
        return table, index
    texts = [_problem_text(table, field, reason, mask, index) for field, reason, mask in problems]
    if invalid == "error":
        raise SegmentError(f"{where}: " + "; ".join(texts) + ". Pass invalid='drop' to drop such rows with a warning",
                           field=problems[0][0], rows=index[np.flatnonzero(problems[0][2])])
    bad = np.logical_or.reduce([mask for _, _, mask in problems])
    if bad.all():
        raise SegmentError(f"{where}: every one of the {len(table)} segment(s) has an invalid value (" +
                           "; ".join(texts) + "); nothing left to load", rows=index)
    warnings.warn(f"{where}: dropped {int(bad.sum())} of {len(table)} segment(s) with invalid values (" +
                  "; ".join(texts) + ")", UserWarning, stacklevel=3)
    return table[~bad], index[~bad]


def _to_canonical(table: np.ndarray, where: str) -> np.ndarray:
    """Check fields and dtypes of a structured array and return it with the canonical layout plus extra fields.

    Canonical fields come first in :data:`SEGMENT_DTYPE` order and dtype; extra fields follow in their original
    order and dtype; missing optional fields are zero. Values are not checked here (:func:`invalid_rows`).
    """
    if table.dtype.names is None:
        raise SegmentError(f"{where}: expected a table with named fields (compound dtype), got dtype {table.dtype}")
    if table.ndim != 1:
        raise SegmentError(f"{where}: expected a 1-D table of segments, got shape {table.shape}")
    names = table.dtype.names
    missing = [n for n in REQUIRED_FIELDS if n not in names]
    if missing:
        raise SegmentError(f"{where}: missing required field(s) {', '.join(missing)} "
                           f"(present: {', '.join(names)})")
    if len(table) == 0:
        raise SegmentError(f"{where}: the segments table is empty (0 rows)")
    for name in SEGMENT_DTYPE.names:
        if name not in names:
            continue
        src, dst = table.dtype[name], SEGMENT_DTYPE[name]
        if not _field_kind_ok(dst, src):
            expected = "an integer" if dst.kind in "iu" else "a real number"
            raise SegmentError(f"{where}: field {name!r} has dtype {src} but must be {expected} ({dst}); "
                               f"first value in row 0: {table[name][0]!r}")
        values = table[name]
        if dst.kind in "iu":
            problem = _integer_range_problem(values, dst)
            if problem is not None:
                row, count = problem
                raise SegmentError(f"{where}: field {name!r} row {row} has value {values[row]} outside the range "
                                   f"of {dst} ({count} row(s) affected)", field=name, rows=[row])
    extras = [(n, table.dtype[n]) for n in names if n not in SEGMENT_DTYPE.names]
    out_dtype = np.dtype([(n, SEGMENT_DTYPE[n]) for n in SEGMENT_DTYPE.names] + extras)
    out = np.zeros(len(table), dtype=out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):   # such values are reported by invalid_rows
        for name in names:
            out[name] = table[name]
    return out


def _checked(table: np.ndarray, where: str, invalid: str):
    """Canonical layout of ``table`` after the ``invalid`` policy: ``(rows kept, their original row numbers)``."""
    table = np.asarray(table)
    canonical = _to_canonical(table, where)
    kept, index = _apply_invalid_policy(table, invalid, where, np.arange(len(table)))
    return (canonical if len(kept) == len(table) else canonical[index]), index


def _apply_outside_policy(segments: np.ndarray, detector, outside: str, where: str,
                          index: np.ndarray | None = None) -> np.ndarray:
    """Handle rows whose midpoint (simulation frame) lies in no TPC according to ``outside``; ``index``: the
    original row number of each row (for the messages), default its position."""
    from .detector import resolve_detector

    det = resolve_detector(detector)
    tpc = det.tpc_of(segments["x"], segments["y"], segments["z"])
    bad = tpc < 0
    if not bad.any() or outside == "keep":
        return segments
    index = np.arange(len(segments)) if index is None else index
    count, first = int(bad.sum()), int(np.flatnonzero(bad)[0])
    row = int(index[first])
    if outside == "error":
        raise SegmentError(
            f"{where}: {count} of {len(segments)} segment(s) have their midpoint outside every TPC of detector "
            f"{det.name!r}; first is row {row} at (x, y, z) = ({segments['x'][first]:.4g}, "
            f"{segments['y'][first]:.4g}, {segments['z'][first]:.4g}) cm in the simulation frame (z = drift). "
            f"Was the x<->z swap right? Pass outside='drop' to drop them with a warning or outside='keep' to keep "
            f"them.", rows=index[bad])
    warnings.warn(f"{where}: dropped {count} of {len(segments)} segment(s) whose midpoint lies outside every TPC "
                  f"of detector {det.name!r} (first was row {row})", UserWarning, stacklevel=3)
    kept = segments[~bad]
    if len(kept) == 0:
        raise SegmentError(f"{where}: no segment lies inside a TPC of detector {det.name!r}; nothing left to load")
    return kept


def _list_datasets(h5file) -> list[str]:
    import h5py

    found = []
    h5file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------
def _check_modes(outside: str, invalid: str) -> None:
    if outside not in _OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {_OUTSIDE_MODES}, not {outside!r}")
    if invalid not in _INVALID_MODES:
        raise ValueError(f"invalid must be one of {_INVALID_MODES}, not {invalid!r}")


def validate_segments(segments: np.ndarray, *, detector=None, outside: str = "error", invalid: str = "error",
                      name: str = "segments") -> np.ndarray:
    """Check an in-memory segments array (simulation frame) like :func:`load_segments` checks a file.

    Returns the array in canonical layout (see :func:`load_segments`); raises :class:`SegmentError` otherwise.
    """
    _check_modes(outside, invalid)
    where = _where(None, name)
    out, index = _checked(segments, where, invalid)
    return _apply_outside_policy(out, detector, outside, where, index)


def load_segments(path, dataset: str = "segments", swap_xz: bool = True, detector=None,
                  outside: str = "error", invalid: str = "error") -> np.ndarray:
    """Read a ``segments`` table from an HDF5 file into the simulation frame (z = drift).

    Parameters
    ----------
    path : str or Path
        HDF5 file (edep-sim output converted by larnd-sim ``dumpTree.py``, or written by :func:`save_segments`).
    dataset : str
        Name (or ``group/name`` path) of the compound dataset, ``"segments"`` by default.
    swap_xz : bool
        ``True`` (default): the file is in the edep-sim frame (x = drift); x and z columns are exchanged on
        reading, exactly as larnd-sim does. ``False``: the file is already in the simulation frame.
    detector : Detector, (detector_yaml, layout_yaml) or None
        Geometry used to check that each segment midpoint lies in a TPC (``None``: built-in module0).
    outside : {"error", "drop", "keep"}
        What to do with segments whose midpoint lies in no TPC (:meth:`Detector.tpc_of`, which allows the
        reference's 0.02 cm tolerance): ``"error"`` (default) raises naming the first row and the count;
        ``"drop"`` removes them and emits a :class:`UserWarning` with the count; ``"keep"`` keeps them.
    invalid : {"error", "drop"}
        What to do with rows whose values cannot be simulated (:func:`invalid_rows`): a NaN or infinite number in
        a canonical float field, a value that overflows its float32 field, a negative ``dE`` or ``dEdx``.
        ``"error"`` (default) raises naming each field, its rows and their count; ``"drop"`` removes those rows
        and emits one :class:`UserWarning` with the count (row numbers in messages are the file's).

    Returns
    -------
    numpy structured array
        Fields of :data:`SEGMENT_DTYPE` first, in that order and with those dtypes (values converted from whatever
        numeric dtype and field order the file uses), then any extra fields of the file (e.g. ``n_photons``) with
        their own dtype. Missing optional fields (``t``, ``t_start``, ``t_end``, ``n_electrons``, ``long_diff``,
        ``tran_diff``, ``pixel_plane``) are filled with zeros.

    Raises
    ------
    SegmentFileNotFoundError
        The file does not exist.
    SegmentError
        The file is not HDF5; the dataset is missing (the message lists the datasets present) or not a table;
        a required field (eventID, trackID, pdgId, the start/end/mid positions, dx, dE, dEdx) is missing; a field
        has a non-numeric dtype (string, complex, bool, nested); an integer does not fit its canonical type; a
        value is NaN, infinite, too large for float32, or a negative dE / dEdx (with ``invalid="error"``; rows
        and count named); the table is empty; segments lie outside every TPC (with ``outside="error"``).
    """
    import h5py

    _check_modes(outside, invalid)
    path = Path(path)
    where = _where(path, dataset)
    if not path.exists():
        raise SegmentFileNotFoundError(f"{path}: segments file does not exist")
    if not path.is_file():
        raise SegmentError(f"{path}: is not a file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise SegmentError(f"{path}: cannot be opened as an HDF5 file ({err})") from err
    with h5:
        if dataset not in h5:
            present = _list_datasets(h5)
            listing = ", ".join(present) if present else "none"
            raise SegmentError(f"{path}: has no dataset {dataset!r}; datasets present: {listing}")
        obj = h5[dataset]
        if not isinstance(obj, h5py.Dataset):
            raise SegmentError(f"{where}: is a group, not a dataset; datasets present: "
                               f"{', '.join(_list_datasets(h5)) or 'none'}")
        if obj.dtype.names is None:
            raise SegmentError(f"{where}: expected a compound (table) dataset, got dtype {obj.dtype} "
                               f"and shape {obj.shape}")
        try:
            table = obj[()]
        except (OSError, TypeError, ValueError) as err:
            raise SegmentError(f"{where}: cannot be read ({err})") from err
    out, index = _checked(table, where, invalid)
    if swap_xz:
        out = _swap_columns(out)
    return _apply_outside_policy(out, detector, outside, where, index)


def save_segments(path, segments: np.ndarray, dataset: str = "segments", swap_xz: bool = True,
                  overwrite: bool = False) -> Path:
    """Write a segments array (simulation frame) to an HDF5 file.

    Parameters
    ----------
    path : str or Path
        Output file. It is created if absent; an existing file is opened for appending.
    segments : numpy structured array
        Segments in the simulation frame with at least the required fields; checked like :func:`load_segments`
        checks a file (no geometry check). Canonical fields are written with the canonical dtypes, extra fields
        as they are.
    dataset : str
        Dataset name (may contain ``/`` to create groups).
    swap_xz : bool
        ``True`` (default): write in the edep-sim frame (x = drift), so that ``load_segments`` with its default
        gives back the same array. ``False``: write the simulation frame unchanged.
    overwrite : bool
        If the dataset already exists: replace it (``True``) or raise :class:`~larnd_diff.errors.OutputExistsError`
        (a ``FileExistsError``; ``False``, default).

    ``load_segments(path, dataset, swap_xz=s)`` after ``save_segments(path, segs, dataset, swap_xz=s)`` returns an
    array equal to ``segs`` (in canonical layout) bit for bit.
    """
    import h5py

    path = Path(path)
    table, _ = _checked(segments, _where(None, dataset), "error")
    if swap_xz:
        table = _swap_columns(table)
    with h5py.File(path, "a") as h5:
        if dataset in h5:
            if not overwrite:
                raise OutputExistsError(f"{path}: dataset {dataset!r} already exists (pass overwrite=True)",
                                        file=path)
            del h5[dataset]
        h5.create_dataset(dataset, data=table)
    return path


# --------------------------------------------------------------------------------------------------------------
# output files and YAML inputs
# --------------------------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through symbolic and hard links; by resolved path if one is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path, *, overwrite: bool = False, inputs: Iterable = (), what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a Path.

    Raises :class:`~larnd_diff.errors.OutputError` when ``path`` is one of ``inputs`` (compared through symbolic
    and hard links; never allowed, even with ``overwrite``), is a directory, or its folder does not exist or is not
    writable; :class:`~larnd_diff.errors.OutputExistsError` when it exists and ``overwrite`` is False.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputError(f"{path}: the {what} would write over the input {source}; choose another file name "
                              f"(overwrite=True does not allow this)", file=path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the {what}", file=path)
    folder = Path(os.path.realpath(path)).parent
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot write the {what}: folder {folder} does not exist", file=path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: folder {folder} is not writable", file=path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass overwrite=True to replace it", file=path)
    return path


def check_outputs(paths: Iterable, *, overwrite: bool = False, inputs: Iterable = ()) -> None:
    """:func:`check_output` for each of ``paths`` (None entries skipped), which must also differ from each other."""
    paths = [Path(p) for p in paths if p is not None]
    inputs = list(inputs)
    for i, path in enumerate(paths):
        check_output(path, overwrite=overwrite, inputs=inputs)
        twin = next((p for p in paths[:i] if _same_file(p, path)), None)
        if twin is not None:
            raise OutputError(f"{path}: named for two outputs ({twin} too); give each output its own file", file=path)


@contextmanager
def atomic_output(path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file all at once: yields a fresh temporary path in the destination's folder (same suffix), which
    becomes ``path`` when the block succeeds (``os.replace``: atomic on one file system) and is removed when it
    fails, so a failure never leaves a partial file and never touches an existing ``path``.

    A symbolic link ``path`` is followed (its target is written). Raises
    :class:`~larnd_diff.errors.OutputExistsError` if ``path`` appeared meanwhile and ``overwrite`` is False.
    """
    target = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{target.suffix}", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)          # a fresh name: writers create the file themselves (with the usual permissions)
    tmp = Path(tmp)
    try:
        yield tmp
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{path}: appeared while it was being written; pass overwrite=True to "
                                    f"replace it", file=path)
        if not tmp.exists():
            raise OutputError(f"{path}: nothing was written", file=path)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "NON_NEGATIVE_FIELDS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SEGMENT_DTYPE",
    "SegmentError",
    "SegmentFileNotFoundError",
    "atomic_output",
    "check_output",
    "check_outputs",
    "invalid_rows",
    "load_segments",
    "save_segments",
    "swap_xz",
    "validate_segments",
]
