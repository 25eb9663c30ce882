"""Per-framework glue for hand-written derivatives and for long sequential loops.

Two small tools, written once per framework, so that an algorithm written with EagerPy tensors (Soft-DTW in
``larnd_diff.softdtw``) can

* be a differentiable op whose backward pass is a hand-written function instead of autodiff through its
  forward (``custom_vjp``): torch.autograd.Function, jax.custom_vjp, tf.custom_gradient, numpy forward-only;
* run a loop of many small sequential steps without unrolling it under a tracing compiler (``scan``): a Python
  loop on numpy and torch (on one CPU thread for small steps, see ``_scan_torch``), ``jax.lax.scan`` on jax,
  and ``tf.while_loop`` with a ``TensorArray`` on TensorFlow (traced once per call when eager).

Why: the Soft-DTW dynamic programme has n + m sequential anti-diagonal steps. Autodiff through them would
store every intermediate of every step (memory ~10x the DP table) and, under ``jax.jit``, a Python loop would
unroll into n + m copies of the step (minutes of XLA compile at n = 2000). The hand-written backward needs
only the DP table, and ``scan`` keeps the compiled program one step long.

Each framework is imported lazily inside its branch: importing this module imports no framework.
Functions handed to ``custom_vjp`` take and return **raw** framework tensors; ``scan`` bodies take and
return **EagerPy** tensors (the driver unwraps/rewraps at the framework boundary).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import eagerpy as ep

from .base import tree_map, unwrap

__all__ = ["custom_vjp", "cuda_vjp", "host_vjp", "scan"]

Forward = Callable[..., Tuple[Any, Tuple[Any, ...]]]
Backward = Callable[[Tuple[Any, ...], Any], Sequence[Any]]


# =========================================================================================== custom_vjp
def custom_vjp(backend_name: str, forward: Forward, backward: Backward) -> Callable[..., Any]:
    """A differentiable op from a forward and a hand-written backward (reverse-mode only).

    ``forward(*args) -> (output, residuals)``: raw tensors in; ``output`` one raw tensor; ``residuals`` a
    tuple of raw tensors kept for the backward pass.
    ``backward(residuals, cotangent) -> grads``: one entry per positional argument of ``forward``; ``None``
    for arguments that have no derivative (integer lengths, say).

    Returns ``op(*args) -> output`` (raw in, raw out). All positional arguments must be tensors; anything
    static (gamma, a cost kind) belongs in the closures. On numpy the op is ``forward`` without derivative.
    """
    name = backend_name.lower()
    if name in ("torch", "pytorch"):
        return _torch_op(forward, backward)
    if name == "jax":
        return _jax_op(forward, backward)
    if name in ("tensorflow", "tf"):
        return _tf_op(forward, backward)
    if name in ("numpy", "np"):
        return lambda *args: forward(*args)[0]
    raise ValueError(f"custom_vjp: no glue for backend {backend_name!r} (numpy, torch, jax, tensorflow)")


def _torch_op(forward: Forward, backward: Backward) -> Callable[..., Any]:
    import torch

    class _Op(torch.autograd.Function):
        # Residuals go through save_for_backward so torch checks they were not modified in place.
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


def _jax_op(forward: Forward, backward: Backward) -> Callable[..., Any]:
    import jax

    # Both halves are jitted: called eagerly, equal shapes then reuse one executable instead of re-tracing
    # and re-compiling the lax.scan body per call (inside an outer jit they are simply inlined). Running
    # small inputs op by op instead was measured slower: eager jax compiles every primitive per shape too.
    fwd = jax.jit(forward)
    bwd_jit = jax.jit(lambda residuals, g: tuple(backward(residuals, g)))

    @jax.custom_vjp
    def op(*args):
        return fwd(*args)[0]

    def bwd(residuals, g):
        # jax accepts None as "zero cotangent", also for integer inputs (whose cotangent type is float0).
        return bwd_jit(residuals, g)

    op.defvjp(fwd, bwd)
    return op


def _tf_op(forward: Forward, backward: Backward) -> Callable[..., Any]:
    import tensorflow as tf

    # Eager calls go through cached tf.functions: one trace per input signature instead of TF's per-op eager
    # cost on every step of the loops inside (inside an outer tf.function they are simply inlined).
    fwd = tf.function(forward, autograph=False)
    bwd = tf.function(lambda residuals, g: tuple(backward(residuals, g)), autograph=False)

    def op(*args):
        @tf.custom_gradient
        def inner(*xs):
            # stop_gradient: a watched input would make the tape record the tf.function call and build its
            # gradient-ready variant, in which the while loop keeps every step's intermediates (measured
            # +1 GB at n = 1500). The gradient comes from grad_fn, so the forward need not be recorded.
            out, residuals = fwd(*(tf.stop_gradient(v) for v in xs))

            def grad_fn(g):
                return list(bwd(tuple(residuals), g))

            return out, grad_fn

        return inner(*args)

    return op


# =========================================================================================== host_vjp
def host_vjp(backend_name: str, forward: Callable[..., Any], backward: Callable[..., Any],
             out_shape: Tuple[int, ...]) -> Callable[..., Any]:
    """A differentiable op whose forward and backward are NumPy functions run on the host (compiled kernels).

    ``forward(x, *consts) -> y`` with ``y.shape == out_shape``; ``backward(x, *consts, g) -> dx`` (the
    vector-Jacobian product for the cotangent ``g`` of y). Only ``x`` (float) is differentiable; ``consts``
    (integer or float host data) get no gradient. Returns ``op(x, *consts)``: raw tensors in, a raw tensor of
    x's dtype and device out. On jax the calls are ``jax.pure_callback`` (usable under ``jax.jit``), on
    TensorFlow ``tf.numpy_function``; the tensors must live in host memory (CPU devices).
    """
    import numpy as np

    name = backend_name.lower()

    def fwd_np(x, *consts):
        return np.asarray(forward(np.asarray(x), *map(np.asarray, consts)), dtype=np.asarray(x).dtype)

    def bwd_np(x, *rest):
        *consts, g = rest
        return np.asarray(backward(np.asarray(x), *map(np.asarray, consts), np.asarray(g)),
                          dtype=np.asarray(x).dtype)

    if name in ("numpy", "np"):
        return fwd_np
    if name in ("torch", "pytorch"):
        import torch

        def to_np(t):
            return t.detach().cpu().numpy()

        class _HostOp(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, *consts):
                ctx.save_for_backward(x, *consts)
                return torch.from_numpy(fwd_np(to_np(x), *map(to_np, consts))).to(x.device)

            @staticmethod
            def backward(ctx, g):
                x, *consts = ctx.saved_tensors
                dx = torch.from_numpy(bwd_np(to_np(x), *map(to_np, consts), to_np(g))).to(x.device)
                return (dx,) + (None,) * len(consts)

        return _HostOp.apply
    if name == "jax":
        import jax

        @jax.custom_vjp
        def op(x, *consts):
            return jax.pure_callback(fwd_np, jax.ShapeDtypeStruct(out_shape, x.dtype), x, *consts)

        def op_fwd(x, *consts):
            return op(x, *consts), (x, consts)

        def op_bwd(res, g):
            x, consts = res
            dx = jax.pure_callback(bwd_np, jax.ShapeDtypeStruct(x.shape, x.dtype), x, *consts, g)
            return (dx,) + (None,) * len(consts)

        op.defvjp(op_fwd, op_bwd)
        return op
    if name in ("tensorflow", "tf"):
        import tensorflow as tf

        def op(x, *consts):
            @tf.custom_gradient
            def inner(xv):
                y = tf.numpy_function(fwd_np, [xv, *consts], xv.dtype, stateful=False)
                y.set_shape(out_shape)

                def grad_fn(g):
                    dx = tf.numpy_function(bwd_np, [xv, *consts, g], xv.dtype, stateful=False)
                    dx.set_shape(xv.shape)
                    return dx

                return y, grad_fn

            return inner(x)

        return op
    raise ValueError(f"host_vjp: no glue for backend {backend_name!r} (numpy, torch, jax, tensorflow)")


def torch_zeros(device) -> Callable[..., Any]:
    """``zeros(shape, numpy dtype)`` -> a zeroed torch tensor on ``device``: scratch space for foreign CUDA kernels
    from torch's caching allocator (counted in torch's memory statistics)."""
    import numpy as np
    import torch

    return lambda shape, dtype: torch.zeros(shape, dtype=getattr(torch, np.dtype(dtype).name), device=device)


def cuda_vjp(backend_name: str, forward: Callable[..., Any], backward: Callable[..., Any],
             out_shape: Tuple[int, ...]) -> Callable[..., Any]:
    """A differentiable op whose forward and backward are CUDA kernels writing into preallocated arrays.

    ``forward(x, *consts, out)`` adds y into ``out`` (zeros of ``out_shape``, float64); ``backward(x, *consts,
    g, dx)`` writes the vector-Jacobian product into ``dx`` (zeros like x, float64). Arrays are handed over as
    framework tensors on the GPU (``__cuda_array_interface__``, zero-copy); x in float64. Torch only: jax and
    TensorFlow arrays cannot be written in place by a foreign kernel inside their compiled programs.
    """
    name = backend_name.lower()
    if name not in ("torch", "pytorch"):
        raise NotImplementedError(f"cuda_vjp: GPU kernels are wired for torch only, not {backend_name!r}")
    import torch

    class _CudaOp(torch.autograd.Function):
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

    return _CudaOp.apply


# =========================================================================================== scan
def scan(backend_name: str, body: Callable, init: Any, xs: Any, reverse: bool = False,
         keep: bool = True) -> Tuple[Any, Any]:
    """``jax.lax.scan`` semantics for EagerPy pytrees (nested tuples/lists/dicts of EagerPy tensors).

    ``body(carry, x) -> (carry, y)`` is written with EagerPy tensors; ``x`` is the slice ``t`` of every leaf
    of ``xs`` along axis 0 (length L). Returns ``(final carry, ys)`` with ``ys`` the ``y`` of every step
    stacked along a new axis 0, ``ys[t]`` belonging to ``xs[t]`` also when ``reverse`` (steps run
    t = L-1 .. 0). With ``keep=False`` the ``y`` are dropped (``ys`` is None): forward-only callers save
    the memory. The carry must keep its shapes and dtypes from step to step.
    """
    name = backend_name.lower()
    if name == "jax":
        return _scan_jax(body, init, xs, reverse, keep)
    if name in ("tensorflow", "tf"):
        import tensorflow as tf

        if not tf.executing_eagerly():
            return _scan_tf_graph(body, init, xs, reverse, keep)
        return _scan_tf_eager(body, init, xs, reverse, keep)
    if name in ("torch", "pytorch"):
        return _scan_torch(body, init, xs, reverse, keep)
    return _scan_python(body, init, xs, reverse, keep)


#: Largest per-step carry (elements) for which torch runs the loop on one CPU thread (see _scan_torch).
TORCH_SERIAL_MAX = 1 << 16


def _scan_torch(body, init, xs, reverse, keep):
    """The eager loop, on one intra-op thread when the steps are small and on the CPU.

    Measured on the 2-core development VM: ``torch.exp`` of 5,001 float64 numbers took 8 ms with torch's
    default 2 threads and 7.5 us with 1 (the thread pool's wake-up, paid on every one of the loop's ~10^5
    small ops). Per-step tensors below TORCH_SERIAL_MAX elements gain nothing from threads, so the loop
    runs with ``torch.set_num_threads(1)`` and restores the previous setting afterwards (process-wide
    while it runs). Large batches and GPU tensors run unchanged.
    """
    import torch

    leaves = [a for a in _leaves(tree_map(unwrap, init)) if isinstance(a, torch.Tensor)]
    small = all(a.device.type == "cpu" for a in leaves) and max((a.numel() for a in leaves), default=0) \
        < TORCH_SERIAL_MAX
    previous = torch.get_num_threads()
    if not small or previous == 1:
        return _scan_python(body, init, xs, reverse, keep)
    torch.set_num_threads(1)
    try:
        return _scan_python(body, init, xs, reverse, keep)
    finally:
        torch.set_num_threads(previous)


def _leaves(tree: Any) -> list:
    out: list = []
    tree_map(out.append, tree)
    return out


def _scan_python(body, init, xs, reverse, keep):
    """Eager loop: slices are views (numpy, torch), and the y are stacked once at the end."""
    length = int(_leaves(xs)[0].shape[0])
    carry, ys = init, []
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        carry, y = body(carry, tree_map(lambda a: a[t], xs))
        if keep:
            ys.append(y)
    if not keep:
        return carry, None
    if reverse:
        ys.reverse()
    if not ys:
        return carry, None
    return carry, _stack_trees(ys)


def _stack_trees(trees: list) -> Any:
    """Stack a list of identically structured pytrees leaf by leaf (EagerPy tensors)."""
    first = trees[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_stack_trees([t[i] for t in trees]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _stack_trees([t[k] for t in trees]) for k in first}
    return ep.stack(trees, axis=0)


def _scan_jax(body, init, xs, reverse, keep):
    from jax import lax

    def wrap(tree):
        return tree_map(lambda a: ep.astensor(a), tree)

    def raw_body(carry, x):
        c, y = body(wrap(carry), wrap(x))
        return tree_map(unwrap, c), (tree_map(unwrap, y) if keep else None)

    carry, ys = lax.scan(raw_body, tree_map(unwrap, init), tree_map(unwrap, xs), reverse=reverse)
    return wrap(carry), (wrap(ys) if keep else None)


def _scan_tf_eager(body, init, xs, reverse, keep):
    """Eager TensorFlow: build the while loop once in a throw-away ``tf.function`` and run it.

    TF's eager per-op cost (tens of microseconds) times n + m steps times ~25 ops made the plain Python loop
    20x slower than the graph; tracing one loop body costs a fraction of a second.
    """
    import tensorflow as tf

    def run():
        carry, ys = _scan_tf_graph(body, init, xs, reverse, keep)
        return tree_map(unwrap, carry), (tree_map(unwrap, ys) if keep else ())

    carry, ys = tf.function(run, autograph=False)()
    carry = tree_map(ep.astensor, carry)
    return carry, (tree_map(ep.astensor, ys) if keep else None)


def _scan_tf_graph(body, init, xs, reverse, keep):
    """Graph-mode TensorFlow: a ``tf.while_loop`` whose per-step outputs go into TensorArrays."""
    import tensorflow as tf

    raw_xs = _leaves(tree_map(unwrap, xs))
    static = raw_xs[0].shape[0]  # a Python int keeps the stacked ys' leading dimension static
    length = int(static) if static is not None else tf.shape(raw_xs[0])[0]
    init_raw = tree_map(unwrap, init)
    flat_init = _leaves(init_raw)

    def rebuild(template, flat):
        it = iter(flat)
        return tree_map(lambda _: ep.astensor(next(it)), template)

    # probe the structure of y once (shapes/dtypes) by tracing one step on the first slice
    x_template = tree_map(unwrap, xs)
    _, y_probe = body(init, tree_map(lambda a: ep.astensor(unwrap(a)[0]), xs))
    y_flat_probe = _leaves(tree_map(unwrap, y_probe)) if keep else []
    arrays = [tf.TensorArray(v.dtype, size=length, element_shape=v.shape) for v in y_flat_probe]

    def cond(t, *_):
        return t < length

    def step(t, flat_carry, arrs):
        idx = length - 1 - t if reverse else t
        x = tree_map(lambda a: ep.astensor(a[idx]), x_template)
        c, y = body(rebuild(init_raw, flat_carry), x)
        new_flat = [tf.ensure_shape(unwrap(v), f.shape) for v, f in zip(_leaves(c), flat_init)]
        y_flat = _leaves(tree_map(unwrap, y)) if keep else []
        arrs = [a.write(idx, v) for a, v in zip(arrs, y_flat)]
        return t + 1, new_flat, arrs

    _, flat_carry, arrays = tf.while_loop(cond, step, (tf.constant(0), flat_init, arrays))
    carry = rebuild(init_raw, flat_carry)
    if not keep:
        return carry, None
    stacked = iter([a.stack() for a in arrays])
    ys = tree_map(lambda _: ep.astensor(next(stacked)), tree_map(unwrap, y_probe))
    return carry, ys
