"""Numba reference of the larnd-sim forward pass (the oracle).

``quench`` -> ``drift`` -> per event and 600-segment chunk: pixels under each segment, induced current on each
pixel, LArPix front end. Follows larnd-sim kernel by kernel, including its quirks (marked (Q) where the code keeps
one on purpose).
"""
from .drift import drift
from .pipeline import ChunkWaveforms, simulate
from .quench import quench

__all__ = ["simulate", "quench", "drift", "ChunkWaveforms"]
