"""The simulation result: one row per (event, pixel) with up to K ADC samples."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

#: Number of backtracked segment ids kept per ADC sample (larnd-sim's track_pixel_map width).
N_BACKTRACK = 5
#: ADC value of an empty slot in comparisons (digitize(0), the pedestal, as in larnd-sim outputs).
PEDESTAL = 74.0


@dataclass(frozen=True)
class Hits:
    """Hits of one or more events.

    Attributes (n rows, K = 10 samples):
      event_id  (n,)      eventID of the row.
      pixel     (n, 2)    pixel id (I, J), I = ix + 140 * TPC, J = iy
                          (:meth:`larnd_diff.detector.Detector.pixel_index`).
      adc       (n, K)    digitised ADC value; NaN marks an empty slot.
      time      (n, K)    ADC time in us from the start of the event; NaN marks an empty slot.
      charge    (n, K)    converted charge in electrons before digitisation; NaN for an empty slot.
      backtrack (n, K, 5) row numbers (in the input segments table) of the segments contributing to each sample,
                          -1 = none; ``None`` where the producer does not backtrack.

    Arrays are NumPy arrays for the reference, and the chosen framework's tensors for the differentiable
    simulator (so autodiff flows through them). :meth:`numpy` converts any of them.
    """

    event_id: Any
    pixel: Any
    adc: Any
    time: Any
    charge: Any = None
    backtrack: Any = None

    def __len__(self) -> int:
        return int(self.pixel.shape[0])

    @property
    def n_samples(self):
        """Number of filled ADC slots per row (NumPy)."""
        return np.sum(~np.isnan(_np(self.adc)), axis=1)

    def numpy(self) -> "Hits":
        return Hits(**{f.name: (None if getattr(self, f.name) is None else _np(getattr(self, f.name)))
                       for f in fields(self)})

    def select(self, rows) -> "Hits":
        """Rows by boolean mask or integer index (NumPy arrays only)."""
        h = self.numpy()
        return Hits(**{f.name: (None if getattr(h, f.name) is None else getattr(h, f.name)[rows])
                       for f in fields(h)})

    def event(self, event_id) -> "Hits":
        return self.select(np.asarray(self.numpy().event_id) == event_id)

    def replace(self, **kw) -> "Hits":
        return replace(self, **kw)

    @staticmethod
    def concatenate(parts: list["Hits"], n_samples: int = 10) -> "Hits":
        parts = [p.numpy() for p in parts if len(p)]
        if not parts:
            return Hits.empty(n_samples)
        out = {}
        for f in fields(Hits):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in vals) else np.concatenate(vals)
        return Hits(**out)

    @staticmethod
    def empty(n_samples: int = 10, backtrack: bool = True) -> "Hits":
        nan = np.empty((0, n_samples))
        return Hits(event_id=np.empty(0, np.int64), pixel=np.empty((0, 2), np.int64), adc=nan, time=nan.copy(),
                    charge=nan.copy(),
                    backtrack=np.empty((0, n_samples, N_BACKTRACK), np.int64) if backtrack else None)


def _np(x):
    """Any backend's array (raw or EagerPy) to NumPy."""
    if x is None or isinstance(x, np.ndarray):
        return x
    raw = getattr(x, "raw", x)  # EagerPy tensor
    if hasattr(raw, "detach"):  # torch
        return raw.detach().cpu().numpy()
    if hasattr(raw, "numpy"):  # tensorflow
        return raw.numpy()
    return np.asarray(raw)


def adc_rows(hits: Hits, adc=None) -> dict:
    """{(event, I, J): ADC row (float64) with empty slots read as the pedestal}; ``adc`` overrides hits.adc."""
    h = hits.numpy()
    values = h.adc if adc is None else adc
    return {(int(e), int(p[0]), int(p[1])): np.nan_to_num(np.asarray(a, np.float64), nan=PEDESTAL)
            for e, p, a in zip(h.event_id, h.pixel, values)}


def save_hits(path, hits: Hits, group: str = "hits", mode: str = "a", attrs: dict | None = None,
              overwrite: bool = False) -> None:
    """Write hits to an HDF5 group (one dataset per field; NaN marks empty slots).

    ``mode``: "a" adds the group to the file (created if absent), "w" truncates the file first. An existing group
    is replaced only with ``overwrite=True``; otherwise :class:`~larnd_diff.errors.OutputExistsError`.
    """
    import h5py

    from .errors import OutputExistsError

    h = hits.numpy()
    with h5py.File(path, mode) as f:
        if group in f:
            if not overwrite:
                raise OutputExistsError(f"{path}: group {group!r} already exists (pass overwrite=True to replace it)",
                                        file=path)
            del f[group]
        g = f.create_group(group)
        for fld in fields(h):
            value = getattr(h, fld.name)
            if value is not None:
                g.create_dataset(fld.name, data=value, compression="gzip", shuffle=True)
        for k, v in (attrs or {}).items():
            g.attrs[k] = v


def load_hits(path, group: str = "hits") -> Hits:
    """Read hits written by :func:`save_hits`; input errors name the file (and the groups it has)."""
    from pathlib import Path

    import h5py

    from .errors import InputError, InputFileNotFoundError, MissingDataError

    if not Path(path).exists():
        raise InputFileNotFoundError(f"{path}: hits file does not exist", file=path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot be opened as an HDF5 file ({err})", file=path) from err
    with f:
        if group not in f:
            raise MissingDataError(f"{path} has no group {group!r} (it has {sorted(f.keys())})", file=path,
                                   field=group)
        g = f[group]
        return Hits(**{fld.name: (g[fld.name][()] if fld.name in g else None) for fld in fields(Hits)})
