"""A framework added from outside the repository, through the entry-point group ``larnd_diff.backends`` alone.

The test writes a distribution into a temporary directory on ``sys.path`` - ``larnd_diff_twin-0.0.dist-info``
(METADATA and entry_points.txt declaring ``numpy-twin = larnd_diff_twin:Backend``) and the adapter module
``larnd_diff_twin.py`` - and touches no other file. The adapter is "numpy-twin": NumPy's numerics under a tensor
type of its own, as a real third-party framework would have. Its raw tensors are an ndarray subclass that EagerPy
does not know and that the NumPy adapter does not claim by module; its EagerPy wrapper is a subclass of EagerPy's
NumPy tensor that keeps results twin tensors. So the registry must find the backend from the entry point, dispatch
must follow the twin's own types (``Backend.is_raw``, ``tensor_type``, ``raw_modules``), and ``ep.astensor`` must
wrap twin tensors (``larnd_diff.backends._compat``, patch 6) - exactly what a real framework's adapter relies on.
``simulate(backend="numpy-twin")`` must then give the numpy backend's hits bit for bit, as twin tensors.
"""
from __future__ import annotations

import sys
import textwrap

import eagerpy as ep
import numpy as np
import pytest

from larnd_diff import ops

ADAPTER = textwrap.dedent('''
    """numpy-twin: NumPy's adapter under another name, with a tensor type of its own."""
    import numpy as np
    import eagerpy as ep

    from larnd_diff.backends.numpy import Backend as NumpyBackend


    class TwinArray(np.ndarray):
        """The twin framework's tensor: NumPy memory, a type of its own."""


    def as_twin(x):
        return np.asarray(x).view(TwinArray)


    class TwinTensor(ep.NumPyTensor):
        """EagerPy's NumPy methods; every result (built with ``type(self)``) stays a twin tensor."""
        __slots__ = ()

        def __init__(self, raw):
            super().__init__(as_twin(raw))


    class Backend(NumpyBackend):
        name = "numpy-twin"
        framework = "numpy"
        aliases = ()
        raw_modules = (__name__,)
        tensor_type = TwinTensor

        def is_raw(self, x):
            return isinstance(x, TwinArray)

        def raw_asarray(self, value, dtype=None, device=None):
            return as_twin(super().raw_asarray(value, dtype, device))

        def from_numpy(self, array, like):
            return as_twin(array)
''')

METADATA = "Metadata-Version: 2.1\nName: larnd-diff-twin\nVersion: 0.0\n"
ENTRY_POINTS = "[larnd_diff.backends]\nnumpy-twin = larnd_diff_twin:Backend\n"


@pytest.fixture
def twin(tmp_path, monkeypatch):
    """The distribution on sys.path; the registry's caches and sys.modules restored afterwards."""
    info = tmp_path / "larnd_diff_twin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(METADATA)
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (tmp_path / "larnd_diff_twin.py").write_text(ADAPTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ops, "_INSTANCES", dict(ops._INSTANCES))
    monkeypatch.setattr(ops, "_BY_TYPE", dict(ops._BY_TYPE))
    yield
    sys.modules.pop("larnd_diff_twin", None)


def _fields(hits):
    h = hits.numpy()
    return {k: np.asarray(getattr(h, k)) for k in ("event_id", "pixel", "adc", "time", "charge")}


def test_entry_point_backend_is_registered(twin):
    assert "numpy-twin" in ops.known_backends() and "numpy-twin" in ops.available_backends()
    assert "numpy-twin" not in ops.gradient_backends()   # it inherits numpy's forward-only adapter
    b = ops.get_backend("numpy-twin")
    assert type(b).__module__ == "larnd_diff_twin" and not b.supports("grad")
    x = b.asarray(np.array([0.25, 1.5]))
    assert type(x).__name__ == "TwinTensor" and type(x.raw).__name__ == "TwinArray"
    # dispatch follows the twin's types: EagerPy, raw, and EagerPy's own astensor of a raw twin tensor
    assert ops.backend_of(x) == ops.backend_of(x.raw) == "numpy-twin"
    assert type(ep.astensor(x.raw)) is type(x)
    y = ops.erf(x)
    assert ops.backend_of(y) == "numpy-twin"
    np.testing.assert_array_equal(ops.to_numpy(y), ops.to_numpy(ops.erf(ops.get_backend("numpy").asarray(
        np.array([0.25, 1.5])))))
    # the built-in numpy backend keeps its own arrays
    assert ops.backend_of(np.zeros(2)) == "numpy"


@pytest.mark.parametrize("kernel", ["auto", "eager"])
def test_simulate_through_the_entry_point_backend(twin, kernel):
    import larnd_diff as ld
    from larnd_diff.sim.config import SimConfig

    segs = ld.generate_mixed(n_events=2, seed=7) if kernel == "auto" else ld.generate_muons(n_events=1, seed=3)
    config = SimConfig(kernel=kernel)
    hits = ld.simulate(segs, backend="numpy-twin", config=config)
    assert type(hits.adc).__name__ == "TwinArray" and ops.backend_of(hits.adc) == "numpy-twin"
    want = _fields(ld.simulate(segs, backend="numpy", config=config))
    got = _fields(hits)
    assert len(want["adc"]) > 0
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert np.array_equal(got[key], want[key], equal_nan=True), key
