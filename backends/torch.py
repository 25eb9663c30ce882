"""PyTorch adapter: reverse mode via ``torch.autograd.grad``, forward mode via ``torch.func.jvp``.

Why ``torch.autograd.grad`` and not ``loss.backward()`` (what EagerPy 0.30 does): ``backward`` accumulates
``.grad`` into every leaf the function closes over and fails on ``nn.Parameter``. Here the parameters are
detached copies made leaves, and only their gradients are returned; nothing else is touched
(tests/test_backends.py, ``test_torch_gradients_have_no_side_effects``).

``jit`` is the identity unless ``jit(f, compile=True)``, which uses ``torch.compile`` at the raw boundary (needs
compat patch 5, applied by ``larnd_diff.ops``); ``compile_glue`` is ``torch.compile(dynamic=True)``. Devices are
torch device strings ("cpu", "cuda", "cuda:1"); every tensor an op creates is put on its input's device. GPU
tensors can be handed to foreign (numba-cuda) kernels: ``device_vjp``, ``scratch_zeros``, ``device_array``.
torch is imported when the adapter is instantiated (``self.torch``), not with this module.
"""
from __future__ import annotations

import warnings

import eagerpy as ep
import numpy as np

from .base import Backend as _Base
from .base import Jitted, check_scalar, leaves, python_scan, split_aux, tree_map, unwrap
from .optim import BETA_1, BETA_2, EPSILON, Optimizer, entry, numeric_entries, raw, restore_entries

#: Largest per-step carry (elements) for which ``scan`` runs its loop on one CPU thread (see ``Backend.scan``).
SERIAL_SCAN_MAX = 1 << 16


def _flip_if(torch, x, axis, reverse):
    return torch.flip(x, (axis,)) if reverse else x


def _wrapper(tensor_class):
    """(wrap_tree, unwrap_tree) for raw tensors of ``tensor_class`` (the class is bound here, outside any region
    torch.compile traces)."""
    def wrap_tree(tree):
        return tree_map(lambda v: ep.PyTorchTensor(v) if isinstance(v, tensor_class) else v, tree)

    def unwrap_tree(tree):
        return tree_map(unwrap, tree)

    return wrap_tree, unwrap_tree


class Backend(_Base):
    name = "torch"
    framework = "torch"
    pip_extra = "torch"
    aliases = ("pytorch",)
    raw_modules = ("torch",)
    tensor_type = ep.PyTorchTensor
    host_callbacks_on_device = True

    def __init__(self):
        import torch

        self.torch = torch
        self._wrap_tree, self._unwrap_tree = _wrapper(torch.Tensor)

    def is_raw(self, x):
        return isinstance(x, self.torch.Tensor)

    def _dtype(self, name):
        """dtype string -> torch dtype ("float64" -> torch.float64); torch dtypes pass through."""
        if name is None or isinstance(name, self.torch.dtype):
            return name
        return getattr(self.torch, str(name))

    # ---- tensors ---------------------------------------------------------------------------
    def raw_asarray(self, value, dtype=None, device=None):
        torch = self.torch
        value = unwrap(value)
        if isinstance(value, torch.Tensor):
            return value.to(device=device or value.device, dtype=self._dtype(dtype) or value.dtype)
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

    def concrete_value(self, x):
        if self.torch.compiler.is_compiling():
            return None
        return unwrap(x).detach().cpu().double().numpy()

    def dtype_name(self, t):
        return str(unwrap(t).dtype).replace("torch.", "")

    def default_device(self):
        torch = self.torch
        return torch.get_default_device() if hasattr(torch, "get_default_device") else torch.device("cpu")

    def device_of(self, t):
        return unwrap(t).device

    def cast(self, x, dtype):
        return x.to(self._dtype(dtype))

    def linspace(self, start, stop, num, dtype, device=None):
        return self.torch.linspace(start, stop, num, dtype=self._dtype(dtype), device=device)

    # ---- ops -------------------------------------------------------------------------------
    def erf(self, x):
        return self.torch.erf(x)

    def log_ndtr(self, x):
        return self.torch.special.log_ndtr(x)

    def sigmoid(self, x):
        return self.torch.sigmoid(x)

    def floor(self, x):
        return self.torch.floor(x)

    def ceil(self, x):
        return self.torch.ceil(x)

    def round_half_even(self, x):
        return self.torch.round(x)  # torch rounds half to even, like numpy

    def cumsum(self, x, axis, reverse=False):
        torch = self.torch
        return _flip_if(torch, torch.cumsum(_flip_if(torch, x, axis, reverse), dim=axis), axis, reverse)

    def logcumsumexp(self, x, axis=-1, reverse=False):
        torch = self.torch
        return _flip_if(torch, torch.logcumsumexp(_flip_if(torch, x, axis, reverse), dim=axis), axis, reverse)

    def scatter_add(self, target, index, values):
        return target.index_add(0, index.to(target.device), values.to(target.dtype))

    def segment_sum(self, values, segment_ids, num_segments):
        out = self.torch.zeros((num_segments,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add(0, segment_ids, values)

    def gather(self, x, index, axis):
        axis = axis % x.ndim
        flat = self.torch.index_select(x, axis, index.reshape(-1))
        return flat.reshape(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]))

    def take_along_axis(self, x, index, axis):
        return self.torch.take_along_dim(x, index, dim=axis)

    def searchsorted(self, sorted_seq, values, side="left"):
        torch = self.torch
        common = torch.promote_types(sorted_seq.dtype, values.dtype)  # numpy compares in the common dtype
        return torch.searchsorted(sorted_seq.to(common).contiguous(), values.to(common).contiguous(),
                                  side=side).to(torch.int64)

    def stop_gradient(self, x):
        return x.detach()

    def einsum(self, subscripts, *xs):
        return self.torch.einsum(subscripts, *xs)

    def nan_to_num(self, x, nan=0.0):
        torch = self.torch
        return torch.where(torch.isnan(x), torch.as_tensor(nan, dtype=x.dtype, device=x.device), x)

    def index_set(self, x, index, values):
        index = index if isinstance(index, tuple) else (index,)
        values = self.torch.as_tensor(values, dtype=x.dtype, device=x.device)
        return x.index_put(index, values)

    # ---- transformations -------------------------------------------------------------------
    def _leaves(self, params):
        return {k: r.detach().requires_grad_(True) for k, r in self.float_params(params).items()}

    def value_and_grad(self, f, params, *args, has_aux=False):
        torch = self.torch
        leaves_ = self._leaves(params)
        with torch.enable_grad():
            value, aux = split_aux(f({k: ep.PyTorchTensor(v) for k, v in leaves_.items()}, *args), has_aux)
            raw_value = unwrap(value)
            check_scalar(raw_value)
            raw_value = raw_value.reshape(())
            if raw_value.requires_grad:
                grads = torch.autograd.grad(raw_value, list(leaves_.values()), allow_unused=True)
            else:  # f does not depend on any parameter
                grads = [None] * len(leaves_)
        grads = {k: ep.PyTorchTensor(torch.zeros_like(leaf) if g is None else g.detach())
                 for (k, leaf), g in zip(leaves_.items(), grads)}
        value = ep.PyTorchTensor(raw_value.detach())
        if has_aux:
            # aux outputs are returned without their graph so they do not keep it alive
            return (value, tree_map(lambda v: ep.PyTorchTensor(unwrap(v).detach())
                                    if isinstance(unwrap(v), torch.Tensor) else v, aux)), grads
        return value, grads

    def jvp(self, f, params, tangents, *args):
        torch = self.torch
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
        wrap_tree, unwrap_tree = self._wrap_tree, self._unwrap_tree

        def raw_body(*args, **kwargs):
            jitted._count()
            return unwrap_tree(f(*wrap_tree(args), **wrap_tree(kwargs)))

        if compile:
            ep.astensor(self.torch.zeros(1))  # eagerpy imports torch lazily; dynamo refuses that import inside
            compiled = self.torch.compile(raw_body, **compile_options)
        else:
            compiled = raw_body

        def call(*args, **kwargs):
            return wrap_tree(compiled(*unwrap_tree(args), **unwrap_tree(kwargs)))

        jitted._compiled = call
        return jitted

    def compile_glue(self, f):
        """``torch.compile(dynamic=True)`` at the raw boundary: one compilation for every size of the inputs (the
        first call takes tens of seconds; dynamo recompiles only for a new dtype, device or autograd mode)."""
        torch = self.torch
        wrap_tree, unwrap_tree = self._wrap_tree, self._unwrap_tree
        ep.astensor(torch.zeros(1))  # eagerpy imports torch lazily; dynamo refuses that import inside
        compiled = torch.compile(lambda *args: unwrap_tree(f(*wrap_tree(args))), dynamic=True)

        def call(*args):
            # Python numbers in f (detector constants) stay constants; only the tensors' sizes are symbolic, each
            # its own symbol (no "duck" unification of sizes that happen to be equal, which would recompile); a
            # machine whose compiler toolchain fails (no Triton, no C++ compiler) runs f eagerly, with a warning
            with torch._dynamo.config.patch(specialize_float=True, suppress_errors=True), \
                    torch.fx.experimental._config.patch(use_duck_shape=False):
                return wrap_tree(compiled(*unwrap_tree(args)))
        return call

    def checkpoint(self, f):
        """Non-reentrant ``torch.utils.checkpoint`` at the raw boundary (reentrant mode loses ep args)."""
        from torch.utils.checkpoint import checkpoint as _ckpt

        wrap_tree, unwrap_tree = self._wrap_tree, self._unwrap_tree

        def raw_f(*raws):
            return unwrap_tree(f(*wrap_tree(raws)))

        def wrapped(*args):
            return wrap_tree(_ckpt(raw_f, *unwrap_tree(args), use_reentrant=False))

        return wrapped

    def rng(self, seed, device=None):
        torch = self.torch
        device = torch.device(device) if device is not None else self.default_device()
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return _Rng(torch, gen, device, self._dtype)

    # ---- hand-written derivatives and loops -----------------------------------------------
    def custom_vjp(self, forward, backward):
        """A ``torch.autograd.Function``; residuals go through ``save_for_backward`` so torch checks that they
        were not modified in place."""
        class _Op(self.torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                out, residuals = forward(*args)
                ctx.save_for_backward(*residuals)
                ctx.n_args = len(args)
                return out

            @staticmethod
            def backward(ctx, g):
                grads = tuple(backward(tuple(ctx.saved_tensors), g))
                if len(grads) != ctx.n_args:
                    raise ValueError(f"backward returned {len(grads)} gradients for {ctx.n_args} inputs")
                return grads

        return _Op.apply

    def host_vjp(self, forward, backward, out_shape):
        """A ``torch.autograd.Function`` around the host functions; GPU tensors are copied to the host and back."""
        torch = self.torch

        def to_np(t):
            return t.detach().cpu().numpy()

        class _HostOp(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, *consts):
                ctx.save_for_backward(x, *consts)
                xh = to_np(x)
                y = np.asarray(forward(xh, *map(to_np, consts)), dtype=xh.dtype)
                return torch.from_numpy(y).to(x.device)

            @staticmethod
            def backward(ctx, g):
                x, *consts = ctx.saved_tensors
                xh = to_np(x)
                dx = np.asarray(backward(xh, *map(to_np, consts), to_np(g)), dtype=xh.dtype)
                return (torch.from_numpy(dx).to(x.device),) + (None,) * len(consts)

        return _HostOp.apply

    def device_vjp(self, forward, backward, out_shape):
        torch = self.torch

        class _DeviceOp(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, *consts):
                x64 = x.detach().to(torch.float64).contiguous()
                consts = tuple(c.contiguous() for c in consts)
                out = torch.zeros(out_shape, dtype=torch.float64, device=x.device)
                forward(x64, *consts, out)
                ctx.save_for_backward(x64, *consts)
                ctx.in_dtype = x.dtype
                return out.to(x.dtype)

            @staticmethod
            def backward(ctx, g):
                x64, *consts = ctx.saved_tensors
                dx = torch.zeros_like(x64)
                backward(x64, *consts, g.detach().to(torch.float64).contiguous(), dx)
                return (dx.to(ctx.in_dtype),) + (None,) * len(consts)

        return _DeviceOp.apply

    def scratch_zeros(self, device):
        torch = self.torch
        return lambda shape, dtype: torch.zeros(shape, dtype=getattr(torch, np.dtype(dtype).name), device=device)

    def device_array(self, x):
        return x.detach().contiguous()

    def scan(self, body, init, xs, reverse=False, keep=True):
        """The eager loop, on one intra-op thread when the steps are small and on the CPU.

        Measured on the 2-core development VM: ``torch.exp`` of 5,001 float64 numbers took 8 ms with torch's
        default 2 threads and 7.5 us with 1 (the thread pool's wake-up, paid on every one of the loop's ~10^5
        small ops). Per-step tensors below SERIAL_SCAN_MAX elements gain nothing from threads, so the loop
        runs with ``torch.set_num_threads(1)`` and restores the previous setting afterwards (process-wide
        while it runs). Large batches and GPU tensors run unchanged.
        """
        torch = self.torch
        carried = [a for a in leaves(tree_map(unwrap, init)) if isinstance(a, torch.Tensor)]
        small = all(a.device.type == "cpu" for a in carried) and max((a.numel() for a in carried), default=0) \
            < SERIAL_SCAN_MAX
        previous = torch.get_num_threads()
        if not small or previous == 1:
            return python_scan(body, init, xs, reverse, keep)
        torch.set_num_threads(1)
        try:
            return python_scan(body, init, xs, reverse, keep)
        finally:
            torch.set_num_threads(previous)

    # ---- devices and memory ---------------------------------------------------------------
    def gpu_count(self):
        cuda = self.torch.cuda
        return cuda.device_count() if cuda.is_available() else 0

    def reset_peak_memory(self, gpu):
        self.torch.cuda.synchronize(gpu)
        self.torch.cuda.reset_peak_memory_stats(gpu)

    def peak_memory(self, gpu):
        self.torch.cuda.synchronize(gpu)
        return int(self.torch.cuda.max_memory_allocated(gpu))

    # ---- fitting --------------------------------------------------------------------------
    def adam(self, values, *, lr, lr_decay, clip_norm, dtype, device):
        return _Adam(self.torch, values, lr, lr_decay, clip_norm, dtype, device)

    def hessian(self, f, names, x0, dtype, device):
        torch = self.torch
        from torch.func import grad, jvp

        dev = torch.device(device) if device is not None else torch.device("cpu")
        x = torch.tensor(x0, dtype=getattr(torch, dtype), device=dev)

        def flat(v):
            return raw(f({n: v[i] for i, n in enumerate(names)})).reshape(())

        g = grad(flat)
        eye = torch.eye(len(names), dtype=x.dtype, device=dev)
        cols = [jvp(g, (x,), (eye[j],))[1] for j in range(len(names))]
        return torch.stack(cols, 1).detach().cpu().numpy()


class _Rng:
    """Seeded torch.Generator bound to one device; returns EagerPy tensors."""

    def __init__(self, torch, gen, device, dtype_of):
        self._torch, self._gen, self._device, self._dtype_of = torch, gen, device, dtype_of

    def normal(self, shape, dtype="float32"):
        return ep.PyTorchTensor(self._torch.randn(tuple(shape), generator=self._gen, dtype=self._dtype_of(dtype),
                                                  device=self._device))

    def uniform(self, shape, dtype="float32"):
        return ep.PyTorchTensor(self._torch.rand(tuple(shape), generator=self._gen, dtype=self._dtype_of(dtype),
                                                 device=self._device))


class _Adam(Optimizer):
    """``torch.optim.Adam`` (the plain per-tensor loop) with ``clip_grad_norm_`` and ``ExponentialLR``."""

    backend = "torch"

    def __init__(self, torch, values, lr, lr_decay, clip_norm, dtype, device):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        self._torch = torch
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self._tensors = {n: torch.tensor(float(v), dtype=getattr(torch, dtype), device=dev)
                         for n, v in values.items()}
        # foreach=False: the plain per-tensor loop (deterministic and identical on every device)
        self._opt = torch.optim.Adam(list(self._tensors.values()), lr=lr, betas=(BETA_1, BETA_2), eps=EPSILON,
                                     foreach=False)
        self._sched = torch.optim.lr_scheduler.ExponentialLR(self._opt, gamma=lr_decay)

    def params(self):
        return dict(self._tensors)

    def values(self):
        return {n: float(t.item()) for n, t in self._tensors.items()}

    @property
    def lr(self):
        return float(self._opt.param_groups[0]["lr"])

    def set_epoch(self, epoch):
        if epoch < self._sched.last_epoch:
            raise ValueError(f"cannot go back from epoch {self._sched.last_epoch} to {epoch}")
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended at epoch 0
            warnings.simplefilter("ignore", UserWarning)
            while self._sched.last_epoch < epoch:
                self._sched.step()
        self.epoch = epoch

    def step(self, grads):
        torch = self._torch
        params = list(self._tensors.values())
        for p, g in zip(params, self._ordered(grads)):
            p.grad = torch.as_tensor(raw(g), dtype=p.dtype, device=p.device).detach().reshape(p.shape).clone()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm, foreach=False)
        self._opt.step()
        for p in params:
            p.grad = None

    def clamp(self, lower, upper):
        with self._torch.no_grad():
            for n in lower:
                self._tensors[n].clamp_(float(lower[n]), float(upper[n]))

    def _save_state(self):
        """Values; per parameter i every tensor of torch's Adam state ("adam/<i>/exp_avg" ...); the numbers of the
        parameter group and of the scheduler."""
        out = {f"values/{n}": np.array(t.detach().cpu().numpy()) for n, t in self._tensors.items()}
        saved = self._opt.state_dict()
        for i, per_param in saved["state"].items():
            out.update({f"adam/{i}/{k}": np.array(v.detach().cpu().numpy()) for k, v in per_param.items()})
        out.update(numeric_entries("group", saved["param_groups"][0]))
        out.update(numeric_entries("scheduler", self._sched.state_dict()))
        return out

    def _restore_state(self, state):
        torch = self._torch
        with torch.no_grad():
            for n, t in self._tensors.items():
                t.copy_(torch.from_numpy(np.array(entry(state, f"values/{n}"))))
        saved = self._opt.state_dict()
        per_param = {}
        for key, value in state.items():
            part = key.split("/")
            if part[0] == "adam":   # adam/<parameter index>/<state name>; load_state_dict moves them to the device
                per_param.setdefault(int(part[1]), {})[part[2]] = torch.from_numpy(np.array(value))
        saved["state"] = per_param
        saved["param_groups"] = [restore_entries("group", saved["param_groups"][0], state)]
        self._opt.load_state_dict(saved)
        self._sched.load_state_dict(restore_entries("scheduler", self._sched.state_dict(), state))
