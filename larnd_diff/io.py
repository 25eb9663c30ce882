"""Reading and writing the edep-sim / larnd-sim ``segments`` HDF5 table.

Frames
------
edep-sim writes segments in its own frame, in which the **drift axis is x**. Everything inside larnd-diff works in
the *simulation frame*, in which the **drift axis is z** and (x, y) address the pixel plane (spec section 2.1). The
two frames differ only by exchanging the x and z columns (``x_start <-> z_start``, ``x_end <-> z_end``,
``x <-> z``); the exchange is its own inverse. :func:`load_segments` and :func:`save_segments` apply it by default
(``swap_xz=True``), so that files on disk stay in the edep-sim frame and arrays in memory are in the simulation
frame. Pass ``swap_xz=False`` for files that are already in the simulation frame.

Errors
------
Every problem with an input is reported as a :class:`SegmentError` (a ``ValueError``) whose message names the
file, the dataset and, where it applies, the field and the first offending row. Nothing is dropped silently: rows
outside every TPC are an error by default, and dropping them on request emits a warning with their count.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

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

_OUTSIDE_MODES = ("error", "drop", "keep")


class SegmentError(ValueError):
    """A segments file or array that cannot be used; the message names file, dataset, field and row."""


class SegmentFileNotFoundError(SegmentError, FileNotFoundError):
    """The segments file does not exist (also a ``FileNotFoundError``)."""


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


def _to_canonical(table: np.ndarray, where: str) -> np.ndarray:
    """Check fields and dtypes of a structured array and return it with the canonical layout plus extra fields.

    Canonical fields come first in :data:`SEGMENT_DTYPE` order and dtype; extra fields follow in their original
    order and dtype; missing optional fields are zero.
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
                                   f"of {dst} ({count} row(s) affected)")
        else:
            finite = np.isfinite(values)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise SegmentError(f"{where}: field {name!r} row {row} is {values[row]} (not finite); "
                                   f"{int((~finite).sum())} row(s) of this field are NaN or inf")
            big = np.abs(values.astype(np.float64)) > np.finfo(dst).max
            if big.any():
                row = int(np.flatnonzero(big)[0])
                raise SegmentError(f"{where}: field {name!r} row {row} = {values[row]} overflows {dst}")
    extras = [(n, table.dtype[n]) for n in names if n not in SEGMENT_DTYPE.names]
    out_dtype = np.dtype([(n, SEGMENT_DTYPE[n]) for n in SEGMENT_DTYPE.names] + extras)
    out = np.zeros(len(table), dtype=out_dtype)
    for name in names:
        out[name] = table[name]
    return out


def _apply_outside_policy(segments: np.ndarray, detector, outside: str, where: str) -> np.ndarray:
    """Handle rows whose midpoint (simulation frame) lies in no TPC according to ``outside``."""
    from .detector import resolve_detector

    det = resolve_detector(detector)
    tpc = det.tpc_of(segments["x"], segments["y"], segments["z"])
    bad = tpc < 0
    if not bad.any() or outside == "keep":
        return segments
    count, row = int(bad.sum()), int(np.flatnonzero(bad)[0])
    if outside == "error":
        raise SegmentError(
            f"{where}: {count} of {len(segments)} segment(s) have their midpoint outside every TPC of detector "
            f"{det.name!r}; first is row {row} at (x, y, z) = ({segments['x'][row]:.4g}, {segments['y'][row]:.4g}, "
            f"{segments['z'][row]:.4g}) cm in the simulation frame (z = drift). Was the x<->z swap right? "
            f"Pass outside='drop' to drop them with a warning or outside='keep' to keep them.")
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
def validate_segments(segments: np.ndarray, *, detector=None, outside: str = "error",
                      name: str = "segments") -> np.ndarray:
    """Check an in-memory segments array (simulation frame) like :func:`load_segments` checks a file.

    Returns the array in canonical layout (see :func:`load_segments`); raises :class:`SegmentError` otherwise.
    """
    if outside not in _OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {_OUTSIDE_MODES}, not {outside!r}")
    segments = np.asarray(segments)
    where = _where(None, name)
    out = _to_canonical(segments, where)
    return _apply_outside_policy(out, detector, outside, where)


def load_segments(path, dataset: str = "segments", swap_xz: bool = True, detector=None,
                  outside: str = "error") -> np.ndarray:
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
        value is NaN or infinite (first row and count named); the table is empty; segments lie outside every TPC
        (with ``outside="error"``).
    """
    import h5py

    if outside not in _OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {_OUTSIDE_MODES}, not {outside!r}")
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
    out = _to_canonical(np.asarray(table), where)
    if swap_xz:
        out = _swap_columns(out)
    return _apply_outside_policy(out, detector, outside, where)


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
        If the dataset already exists: replace it (``True``) or raise ``FileExistsError`` (``False``, default).

    ``load_segments(path, dataset, swap_xz=s)`` after ``save_segments(path, segs, dataset, swap_xz=s)`` returns an
    array equal to ``segs`` (in canonical layout) bit for bit.
    """
    import h5py

    path = Path(path)
    table = _to_canonical(np.asarray(segments), _where(None, dataset))
    if swap_xz:
        table = _swap_columns(table)
    with h5py.File(path, "a") as h5:
        if dataset in h5:
            if not overwrite:
                raise FileExistsError(f"{path}: dataset {dataset!r} already exists (pass overwrite=True)")
            del h5[dataset]
        h5.create_dataset(dataset, data=table)
    return path


__all__ = [
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SEGMENT_DTYPE",
    "SegmentError",
    "SegmentFileNotFoundError",
    "load_segments",
    "save_segments",
    "swap_xz",
    "validate_segments",
]
