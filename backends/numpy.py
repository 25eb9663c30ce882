"""NumPy adapter: forward-only, CPU-only, the float64 baseline every other backend is compared to.

It overrides no transformation, so gradients and jvp raise ``NotSupported`` and jit, checkpoint, custom_vjp and
scan are the protocol's generic defaults (identity, forward only, a Python loop); host kernels run on its arrays
directly (``from_numpy`` shares their memory). ``erf`` uses scipy when installed and a vectorised ``math.erf``
otherwise.
"""
from __future__ import annotations

import math

import eagerpy as ep
import numpy as np

from .base import Backend as _Base
from .base import unwrap


def _erf_impl():
    """scipy's vectorised erf if available (fast), else math.erf element by element (exact, slow)."""
    try:
        from scipy.special import erf
        return erf
    except ImportError:  # pragma: no cover - scipy is present in every tested environment
        return np.vectorize(math.erf, otypes=[np.float64])


def _flip_if(x, axis, reverse):
    return np.flip(x, axis) if reverse else x


class Backend(_Base):
    name = "numpy"
    framework = "numpy"
    pip_extra = ""
    aliases = ("np",)
    raw_modules = ("numpy",)
    tensor_type = ep.NumPyTensor

    def __init__(self):
        self._erf = _erf_impl()

    def is_raw(self, x):
        return isinstance(x, (np.ndarray, np.generic))

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        self._check_device(device)
        return np.array(unwrap(value), dtype=dtype)  # copy: callers may mutate their array later

    def _check_device(self, device):
        if device not in (None, "cpu") and str(device) != "cpu":
            raise ValueError(f"backend '{self.name}' runs on the CPU only; got device={device!r}")

    def from_numpy(self, array, like):
        return array

    def to_numpy(self, t):
        return np.asarray(unwrap(t))

    def dtype_name(self, t):
        return np.asarray(unwrap(t)).dtype.name

    def default_device(self):
        return "cpu"

    def device_of(self, t):
        return "cpu"

    def cast(self, x, dtype):
        return np.asarray(x).astype(dtype)

    def linspace(self, start, stop, num, dtype, device=None):
        return np.linspace(start, stop, num, dtype=dtype)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return self._erf(x).astype(x.dtype, copy=False)

    def log_ndtr(self, x):
        from scipy.special import log_ndtr

        return log_ndtr(x).astype(x.dtype, copy=False)

    def sigmoid(self, x):
        # tanh form: no overflow warning for large |x| (exp(-x) would overflow for x << 0)
        return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)

    def floor(self, x):
        return np.floor(x)

    def ceil(self, x):
        return np.ceil(x)

    def round_half_even(self, x):
        return np.round(x)

    def cumsum(self, x, axis, reverse=False):
        return _flip_if(np.cumsum(_flip_if(x, axis, reverse), axis=axis), axis, reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        return _flip_if(np.logaddexp.accumulate(_flip_if(x, axis, reverse), axis=axis), axis, reverse)

    def scatter_add(self, target, index, values):
        out = np.array(target, copy=True)
        np.add.at(out, index, values)
        return out

    def segment_sum(self, values, segment_ids, num_segments):
        out = np.zeros((num_segments,) + values.shape[1:], dtype=values.dtype)
        np.add.at(out, segment_ids, values)
        return out

    def gather(self, x, index, axis):
        return np.take(x, index, axis=axis)

    def take_along_axis(self, x, index, axis):
        return np.take_along_axis(x, index, axis=axis)

    def searchsorted(self, sorted_seq, values, side="left"):
        return np.searchsorted(sorted_seq, values, side=side).astype(np.int64)

    def stop_gradient(self, x):
        return x

    def einsum(self, subscripts, *xs):
        return np.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        return np.where(np.isnan(x), np.asarray(nan, dtype=x.dtype), x)

    def index_set(self, x, index, values):
        out = np.array(x, copy=True)
        out[index] = values
        return out

    # ---- transformations -------------------------------------------------------------------
    def rng(self, seed, device=None):
        self._check_device(device)
        return _Rng(np.random.default_rng(seed), self.wrap)


class _Rng:
    """Seeded numpy Generator returning EagerPy tensors (made by ``wrap``) of the requested dtype."""

    def __init__(self, gen, wrap):
        self._gen, self._wrap = gen, wrap

    def normal(self, shape, dtype="float64"):
        return self._wrap(self._gen.standard_normal(shape).astype(dtype))

    def uniform(self, shape, dtype="float64"):
        return self._wrap(self._gen.random(shape).astype(dtype))
