"""Numba reference of the larnd-sim forward pass (the oracle).

``quench`` -> ``drift`` -> per event and 600-segment chunk: pixels under each segment, induced current on each
pixel, LArPix front end. Follows spec section 4 kernel by kernel, including the quirks marked (Q).
"""
from .drift import drift
from .pipeline import ChunkWaveforms, simulate
from .quench import quench

__all__ = ["simulate", "quench", "drift", "ChunkWaveforms"]
