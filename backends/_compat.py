"""Fixes for EagerPy 0.30.0 on today's frameworks, and its ``astensor`` opened to third-party adapters.

EagerPy is pinned (its upstream is dormant), so these patches are stable; tests/test_backends.py
(``test_compat_fixes``) shows each breakage they fix. ``apply()`` is called when ``larnd_diff.ops`` is imported.
It only edits EagerPy's own wrapper modules, which never import a framework themselves: the patched functions
look the framework up through the module globals EagerPy fills lazily the first time a tensor of that framework
is wrapped. So importing larnd_diff still imports no framework. Each patch marks what it installed, which makes
``apply()`` idempotent without a global flag.

1. TF ``common_dtype`` calls ``np.find_common_type`` (removed in numpy 2) on every mixed-dtype comparison.
2. JAX ``index_update`` calls ``jax.ops.index_update`` (removed in jax 0.3.2) -> ``.at[].set``.
3. JAX ``x[[0, 2]]``: jax rejects Python-list indices -> convert lists (and ranges) to arrays.
4. TF ``full`` ignores the template dtype (float64 template gave a float32 tensor) -> cast the fill value.
5. Torch ``raw`` is ``cast(torch.Tensor, super().raw)``, which torch.compile cannot trace -> plain property.
6. ``ep.astensor`` knows EagerPy's four frameworks only and raises ValueError for any other tensor -> it asks the
   larnd_diff registry then (``larnd_diff.ops.wrap_foreign``), so code written with ``ep.astensor`` also wraps a
   third-party adapter's tensors.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Callable, Optional

import eagerpy as ep
import eagerpy.tensor.jax as _ep_jax
import eagerpy.tensor.tensorflow as _ep_tf
import numpy
from eagerpy.tensor.base import unwrap_

_MARK = "_larnd_diff_compat"


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


def _is_patched(obj) -> bool:
    return getattr(obj, _MARK, False)


# 1 --------------------------------------------------------------------------------------------
class _NumpyWithFindCommonType:
    """numpy as EagerPy's TF module sees it, plus the removed ``find_common_type``."""

    _larnd_diff_compat = True

    def __getattr__(self, name):
        return getattr(numpy, name)

    @staticmethod
    def find_common_type(array_types, scalar_types):
        return numpy.result_type(*array_types, *scalar_types)


def _patch_tf_common_type():
    if not _is_patched(_ep_tf.np):
        _ep_tf.np = _NumpyWithFindCommonType()


# 2 --------------------------------------------------------------------------------------------
@_mark
def _jax_index_update(self, indices, values):
    indices, values = unwrap_(indices, values)
    if isinstance(indices, tuple):
        indices = unwrap_(*indices)
    return type(self)(self.raw.at[indices].set(values))


def _patch_jax_index_update():
    if not _is_patched(ep.JAXTensor.index_update):
        ep.JAXTensor.index_update = _jax_index_update


# 3 --------------------------------------------------------------------------------------------
_original_jax_getitem_preprocess = _ep_jax.getitem_preprocess


@_mark
def _jax_getitem_preprocess(x):
    if isinstance(x, (list, range)):
        return _ep_jax.np.asarray(list(x))  # _ep_jax.np is jax.numpy once a JAXTensor exists
    return _original_jax_getitem_preprocess(x)


def _patch_jax_list_index():
    if not _is_patched(_ep_jax.getitem_preprocess):
        _ep_jax.getitem_preprocess = _jax_getitem_preprocess


# 4 --------------------------------------------------------------------------------------------
def _make_tf_full():
    @_mark
    @_ep_tf.samedevice
    def full(self, shape, value):
        tf = _ep_tf.tf
        if not isinstance(shape, Iterable):
            shape = (shape,)
        return type(self)(tf.fill(shape, tf.cast(value, self.raw.dtype)))
    return full


def _patch_tf_full():
    if not _is_patched(ep.TensorFlowTensor.full):
        ep.TensorFlowTensor.full = _make_tf_full()


# 5 --------------------------------------------------------------------------------------------
def _torch_raw(self):
    return self._raw


_torch_raw_property = property(_mark(_torch_raw))


def _patch_torch_raw():
    if not _is_patched(ep.PyTorchTensor.raw.fget):
        ep.PyTorchTensor.raw = _torch_raw_property


# 6 --------------------------------------------------------------------------------------------
def _make_astensor(original: Callable[[Any], Any], wrap_foreign: Callable[[Any], Any]):
    @_mark
    def astensor(x):
        try:
            return original(x)
        except ValueError as unknown:   # "Unknown type": not one of EagerPy's frameworks
            try:
                return wrap_foreign(x)
            except TypeError:           # no adapter claims it either
                raise unknown from None
    return astensor


def _patch_astensor(wrap_foreign: Callable[[Any], Any]) -> None:
    module = sys.modules["eagerpy.astensor"]  # the module whose astensor ``ep.astensor_`` and ``ep.astensors`` call
    if not _is_patched(module.astensor):
        module.astensor = ep.astensor = _make_astensor(module.astensor, wrap_foreign)


def apply(wrap_foreign: Optional[Callable[[Any], Any]] = None) -> None:
    """Install all patches once; calling again is a no-op. ``wrap_foreign(raw) -> EagerPy tensor`` (the registry's,
    TypeError for tensors no adapter claims) enables patch 6."""
    _patch_tf_common_type()
    _patch_jax_index_update()
    _patch_jax_list_index()
    _patch_tf_full()
    _patch_torch_raw()
    if wrap_foreign is not None:
        _patch_astensor(wrap_foreign)
