"""larnd-diff: a differentiable simulator of the DUNE module0 pixelated LArTPC (LArPix readout).

    import larnd_diff as ld
    segs = ld.generate_muons(n_events=10, seed=1)        # or ld.load_segments("events.h5")
    hits = ld.simulate(segs, backend="torch", params={"Ab": 0.85}, relaxation="smooth")

Heavy modules (numba, frameworks) are imported on first use, not at ``import larnd_diff``.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "simulate": "api", "BACKENDS": "api", "value_and_grad": "api",
    "Params": "params", "PARAMETERS": "params", "FIT_PARAMETERS": "params", "drift_velocity": "params",
    "Detector": "detector", "module0": "detector", "load_detector": "detector",
    "Hits": "hits", "save_hits": "hits", "load_hits": "hits",
    "load_segments": "io", "save_segments": "io", "SegmentError": "io", "SEGMENT_DTYPE": "io",
    "generate_muons": "generate", "generate_mixed": "generate",
    "SelectionCuts": "selection", "select_tracks": "selection", "make_batches": "selection",
    "Relaxation": "sim.config", "SimConfig": "sim.config",
    "get_backend": "ops",
    "write_packets": "export",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'larnd_diff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
