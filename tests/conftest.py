"""Shared test configuration: backend selection, markers and the location of ../shared."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

#: ../shared beside the checkout (reference outputs and real inputs); absent in a user's clone.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ALL_BACKENDS = ("numpy", "torch", "jax", "tensorflow")
_MODULE = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=None, choices=ALL_BACKENDS,
                     help="backend(s) to test (repeatable); default: $LARND_DIFF_BACKENDS or every installed one")
    parser.addoption("--gpu", action="store_true", default=False, help="run the tests marked gpu")


def selected_backends(config) -> list[str]:
    chosen = config.getoption("--backend")
    if not chosen:
        env = os.environ.get("LARND_DIFF_BACKENDS", "")
        chosen = [b.strip() for b in env.split(",") if b.strip()] or list(ALL_BACKENDS)
    unknown = sorted(set(chosen) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {unknown}; choose from {ALL_BACKENDS}")
    return chosen


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", selected_backends(metafunc.config), indirect=True)


@pytest.fixture
def backend(request):
    """Name of a backend under test; skips when its framework is not installed."""
    name = request.param
    if importlib.util.find_spec(_MODULE[name]) is None:
        pytest.skip(f"{name} is not installed (pip install larnd-diff[{name}])")
    return name


def pytest_collection_modifyitems(config, items):
    gpu = config.getoption("--gpu")
    skip_gpu = pytest.mark.skip(reason="GPU test: run with --gpu on a CUDA machine (tox -e gpu-<framework>)")
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backend)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)


def cuda_device(backend: str) -> str:
    """Device string of the first CUDA GPU visible to ``backend``; skips the test when there is none."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "cuda:0"
    elif backend == "jax":
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            return "cuda:0"
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "GPU:0"
    pytest.skip(f"no CUDA GPU visible to {backend} on this machine")


@pytest.fixture
def gpu_device(backend) -> str:
    return cuda_device(backend)


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path of ../shared; skips the test when it is absent (a user's clone has none)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: parity data of the real larnd-sim is only available beside the checkout")
    return SHARED
