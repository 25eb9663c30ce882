"""larnd-diff: differentiable simulator of the DUNE module0 pixelated LArTPC."""
__version__ = "0.1.0"
