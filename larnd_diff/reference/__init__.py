"""Numba reference of the larnd-sim forward pass (the oracle)."""
