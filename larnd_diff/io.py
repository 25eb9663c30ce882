"""Reading and writing the edep-sim / larnd-sim ``segments`` HDF5 table."""
from __future__ import annotations

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


def swap_xz(segments: np.ndarray) -> np.ndarray:
    """Exchange the x and z columns (edep-sim frame, x = drift  <->  simulation frame, z = drift). Returns a copy."""
    out = segments.copy()
    for a, b in _SWAP_PAIRS:
        out[a], out[b] = segments[b], segments[a]
    return out
