"""larnd-diff: a differentiable simulator of the DUNE module0 pixelated LArTPC (LArPix readout).

    import larnd_diff as ld
    segs = ld.generate_muons(n_events=10, seed=1)        # or ld.load_segments("events.h5")
    hits = ld.simulate(segs, backend="torch", params={"Ab": 0.85}, relaxation="smooth")

Heavy modules (numba, frameworks) are imported on first use, not at ``import larnd_diff``.
"""
import sys
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.util import spec_from_file_location
from pathlib import Path

__version__ = "0.1.0"


class _CheckoutBackendsFinder(MetaPathFinder):
    """Resolve ``larnd_diff.backends`` to the top-level ``backends/`` of a source checkout.

    Installed, ``backends/`` is the subpackage ``larnd_diff.backends`` (setup.cfg ``package_dir``); Python started
    inside the checkout imports this source tree instead, where ``backends/`` sits beside the package.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def find_spec(self, name, path=None, target=None):
        if name != f"{__name__}.backends":
            return None
        return spec_from_file_location(name, self.directory / "__init__.py",
                                       submodule_search_locations=[str(self.directory)])


_checkout_backends = Path(__file__).resolve().parent.parent / "backends"
if not (Path(__file__).resolve().parent / "backends").is_dir() and (_checkout_backends / "__init__.py").is_file() \
        and not any(isinstance(f, _CheckoutBackendsFinder) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutBackendsFinder(_checkout_backends))

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
    "load_packets": "packets", "read_packets": "packets", "load_target": "packets", "PacketError": "packets",
    "reconstruct": "reco", "RecoConfig": "reco", "generate_tracks": "generate",
    "fit": "fit", "FitResult": "fit", "closure": "fit",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'larnd_diff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
