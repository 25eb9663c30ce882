"""PyTorch adapter: reverse mode via ``torch.autograd.grad``, forward mode via ``torch.func.jvp``.

Why ``torch.autograd.grad`` and not ``loss.backward()`` (what EagerPy 0.30 does): ``backward`` accumulates
``.grad`` into every leaf the function closes over (notes/eagerpy-compat.md B2) and fails on
``nn.Parameter`` (B1). Here the parameters are detached copies made leaves, and only their gradients are
returned; nothing else is touched.

``jit`` is the identity unless ``jit(f, compile=True)``, which uses ``torch.compile`` at the raw
boundary (needs compat patch 7, applied by ``larnd_diff.ops``). Devices are torch device strings
("cpu", "cuda", "cuda:1"); every tensor an op creates is put on its input's device.
"""
from __future__ import annotations

import eagerpy as ep
import numpy as np
import torch

from .base import Backend as _Base
from .base import Jitted, check_scalar, split_aux, tree_map, unwrap


def _dtype(name):
    """dtype string -> torch dtype ("float64" -> torch.float64); torch dtypes pass through."""
    if name is None or isinstance(name, torch.dtype):
        return name
    return getattr(torch, str(name))


def _flip_if(x, axis, reverse):
    return torch.flip(x, (axis,)) if reverse else x


def _wrap_tree(tree):
    return tree_map(lambda v: ep.PyTorchTensor(v) if isinstance(v, torch.Tensor) else v, tree)


def _unwrap_tree(tree):
    return tree_map(unwrap, tree)


def _detach_tree(tree):
    """Aux outputs are returned without their graph so they do not keep it alive."""
    return tree_map(lambda v: ep.PyTorchTensor(unwrap(v).detach()) if isinstance(unwrap(v), torch.Tensor) else v,
                    tree)


class Backend(_Base):
    name = "torch"
    framework = "torch"
    pip_extra = "torch"
    features = frozenset({"grad", "jvp", "jit", "fuse", "checkpoint", "float64", "gpu"})
    tensor_type = ep.PyTorchTensor

    def is_raw(self, x):
        return isinstance(x, torch.Tensor)

    def supports(self, feature):
        if feature == "gpu":
            return torch.cuda.is_available()
        return super().supports(feature)

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        value = unwrap(value)
        if isinstance(value, torch.Tensor):
            return value.to(device=device or value.device, dtype=_dtype(dtype) or value.dtype)
        arr = np.asarray(value, dtype=dtype)
        device = torch.device(device) if device is not None else self.default_device()
        if device.type == "cuda" and arr.dtype.isnative and arr.dtype != object:
            # staged through torch's cached pinned host memory: an asynchronous copy that does not wait for the
            # GPU's queue to drain (a pageable copy would; ~40 host constants per simulation)
            src = arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr, order="C")
            staged = torch.from_numpy(src).pin_memory()     # a copy: ``arr`` may be mutated later
            return staged.to(device, non_blocking=True)
        # torch.tensor copies (numpy arrays may be read-only or be mutated later by the caller)
        return torch.tensor(arr, device=device)

    def to_numpy(self, t):
        return unwrap(t).detach().cpu().numpy()

    def dtype_name(self, t):
        return str(unwrap(t).dtype).replace("torch.", "")

    def default_device(self):
        return torch.get_default_device() if hasattr(torch, "get_default_device") else torch.device("cpu")

    def device_of(self, t):
        return unwrap(t).device

    def cast(self, x, dtype):
        return x.to(_dtype(dtype))

    def linspace(self, start, stop, num, dtype, device=None):
        return torch.linspace(start, stop, num, dtype=_dtype(dtype), device=device)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return torch.erf(x)

    def log_ndtr(self, x):
        return torch.special.log_ndtr(x)

    def sigmoid(self, x):
        return torch.sigmoid(x)

    def floor(self, x):
        return torch.floor(x)

    def ceil(self, x):
        return torch.ceil(x)

    def round_half_even(self, x):
        return torch.round(x)  # torch rounds half to even, like numpy

    def cumsum(self, x, axis, reverse=False):
        return _flip_if(torch.cumsum(_flip_if(x, axis, reverse), dim=axis), axis, reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        return _flip_if(torch.logcumsumexp(_flip_if(x, axis, reverse), dim=axis), axis, reverse)

    def scatter_add(self, target, index, values):
        return target.index_add(0, index.to(target.device), values.to(target.dtype))

    def segment_sum(self, values, segment_ids, num_segments):
        out = torch.zeros((num_segments,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add(0, segment_ids, values)

    def gather(self, x, index, axis):
        axis = axis % x.ndim
        flat = torch.index_select(x, axis, index.reshape(-1))
        return flat.reshape(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]))

    def take_along_axis(self, x, index, axis):
        return torch.take_along_dim(x, index, dim=axis)

    def searchsorted(self, sorted_seq, values, side="left"):
        common = torch.promote_types(sorted_seq.dtype, values.dtype)  # numpy compares in the common dtype
        return torch.searchsorted(sorted_seq.to(common).contiguous(), values.to(common).contiguous(),
                                  side=side).to(torch.int64)

    def stop_gradient(self, x):
        return x.detach()

    def einsum(self, subscripts, *xs):
        return torch.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        return torch.where(torch.isnan(x), torch.as_tensor(nan, dtype=x.dtype, device=x.device), x)

    def index_set(self, x, index, values):
        index = index if isinstance(index, tuple) else (index,)
        values = torch.as_tensor(values, dtype=x.dtype, device=x.device)
        return x.index_put(index, values)

    # ---- transformations -------------------------------------------------------------------
    def _leaves(self, params):
        return {k: raw.detach().requires_grad_(True) for k, raw in self.float_params(params).items()}

    def value_and_grad(self, f, params, *args, has_aux=False):
        leaves = self._leaves(params)
        with torch.enable_grad():
            value, aux = split_aux(f({k: ep.PyTorchTensor(v) for k, v in leaves.items()}, *args), has_aux)
            raw_value = unwrap(value)
            check_scalar(raw_value)
            raw_value = raw_value.reshape(())
            if raw_value.requires_grad:
                grads = torch.autograd.grad(raw_value, list(leaves.values()), allow_unused=True)
            else:  # f does not depend on any parameter
                grads = [None] * len(leaves)
        grads = {k: ep.PyTorchTensor(torch.zeros_like(leaf) if g is None else g.detach())
                 for (k, leaf), g in zip(leaves.items(), grads)}
        value = ep.PyTorchTensor(raw_value.detach())
        if has_aux:
            return (value, _detach_tree(aux)), grads
        return value, grads

    def jvp(self, f, params, tangents, *args):
        keys = list(params)
        primals = tuple(self.raw_asarray(params[k]) for k in keys)
        tans = tuple(self.raw_asarray(tangents[k], self.dtype_name(p), p.device) if k in tangents
                     else torch.zeros_like(p) for k, p in zip(keys, primals))

        def raw_f(*raws):
            return unwrap(f({k: ep.PyTorchTensor(r) for k, r in zip(keys, raws)}, *args))

        out, tan_out = torch.func.jvp(raw_f, primals, tans)
        return ep.PyTorchTensor(out), ep.PyTorchTensor(tan_out)

    def jit(self, f, static_argnames=(), compile=False, **compile_options):
        """Identity by default; ``compile=True`` wraps the raw-boundary function in ``torch.compile``.

        Eager torch is already fast for the vectorised simulator on CPU, and torch.compile costs seconds
        per shape, so compiling is opt-in (measure first). ``trace_count`` counts Python executions of
        the body (eager: every call; compiled: every dynamo trace).
        """
        jitted = Jitted(f)

        def raw_body(*args, **kwargs):
            jitted._count()
            return _unwrap_tree(f(*_wrap_tree(args), **_wrap_tree(kwargs)))

        if compile:
            ep.astensor(torch.zeros(1))  # eagerpy imports torch lazily; dynamo refuses that import inside
            compiled = torch.compile(raw_body, **compile_options)
        else:
            compiled = raw_body

        def call(*args, **kwargs):
            return _wrap_tree(compiled(*_unwrap_tree(args), **_unwrap_tree(kwargs)))

        jitted._compiled = call
        return jitted

    def fuse(self, f):
        """``torch.compile(dynamic=True)`` at the raw boundary: one compilation for every size of the inputs (the
        first call takes tens of seconds; dynamo recompiles only for a new dtype, device or autograd mode)."""
        ep.astensor(torch.zeros(1))  # eagerpy imports torch lazily; dynamo refuses that import inside
        compiled = torch.compile(lambda *args: _unwrap_tree(f(*_wrap_tree(args))), dynamic=True)

        def call(*args):
            # Python numbers in f (detector constants) stay constants; only the tensors' sizes are symbolic, each
            # its own symbol (no "duck" unification of sizes that happen to be equal, which would recompile); a
            # machine whose compiler toolchain fails (no Triton, no C++ compiler) runs f eagerly, with a warning
            with torch._dynamo.config.patch(specialize_float=True, suppress_errors=True), \
                    torch.fx.experimental._config.patch(use_duck_shape=False):
                return _wrap_tree(compiled(*_unwrap_tree(args)))
        return call

    def checkpoint(self, f):
        """Non-reentrant ``torch.utils.checkpoint`` at the raw boundary (reentrant mode loses ep args)."""
        from torch.utils.checkpoint import checkpoint as _ckpt

        def raw_f(*raws):
            return _unwrap_tree(f(*_wrap_tree(raws)))

        def wrapped(*args):
            return _wrap_tree(_ckpt(raw_f, *_unwrap_tree(args), use_reentrant=False))

        return wrapped

    def rng(self, seed, device=None):
        device = torch.device(device) if device is not None else self.default_device()
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return _Rng(gen, device)


class _Rng:
    """Seeded torch.Generator bound to one device; returns EagerPy tensors."""

    def __init__(self, gen, device):
        self._gen, self._device = gen, device

    def normal(self, shape, dtype="float32"):
        return ep.PyTorchTensor(torch.randn(tuple(shape), generator=self._gen, dtype=_dtype(dtype),
                                            device=self._device))

    def uniform(self, shape, dtype="float32"):
        return ep.PyTorchTensor(torch.rand(tuple(shape), generator=self._gen, dtype=_dtype(dtype),
                                           device=self._device))
