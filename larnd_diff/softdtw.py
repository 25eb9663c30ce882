"""Soft-DTW (Cuturi & Blondel 2017) and its divergence (Blondel, Mensch & Vert 2021), exact and batched.

Written once with EagerPy tensors; no framework is imported here. The per-framework pieces are methods of the
backend (``larnd_diff.backends.base.Backend``): ``custom_vjp`` (hand-written backward as a differentiable op),
``scan`` (a sequential loop that a tracing compiler does not unroll) and ``host_vjp`` (the Numba loops of
:mod:`larnd_diff.softdtw_host` as a differentiable op).

Definitions (gamma > 0, cost matrix C of shape (n, m), 1-based cells)::

    R[0, 0] = 0,  R[i, 0] = R[0, j] = +inf
    R[i, j] = C[i, j] + softmin(R[i-1, j-1], R[i-1, j], R[i, j-1]),   softmin(a) = -gamma log sum exp(-a / gamma)
    sdtw(x, y) = R[n, m]
    D(x, y)   = sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2          (the divergence: >= 0, 0 iff x == y)

How it is computed, and why:

* **Wavefront.** Cells on one anti-diagonal i + j = k depend only on diagonals k-1 and k-2, so each
  diagonal is one vectorised step over the batch and the diagonal: n + m - 1 sequential steps, each
  parallel over ``B x (n+1)`` cells. Nothing limits the length (no one-thread-per-cell kernel). Tables
  live in a skewed layout ``T[k-2, b, i] = T[b, i, k-i]`` (diagonal, batch, row).
* **Stable soft-min.** ``m - log(sum exp(m - a))`` with ``m`` the hard minimum, computed on costs
  pre-divided by gamma (so no division per step). ``+inf`` is represented by ``_BIG = 1e30`` so that
  cells outside the grid never produce ``inf - inf``: ``exp(-1e30) == 0`` exactly, and 1e30 is
  representable in float32.
* **Hand-written backward.** The E-matrix recursion of Cuturi & Blondel (Alg. 2), also by
  anti-diagonals: ``E[i,j] = dR[n,m]/dR[i,j] = sum over successors s of E[s] exp((P[s] - R[i,j]) / gamma)``
  with ``P[s] = R[s] - C[s]`` (the soft-min part of the successor), and ``dR[n,m]/dC = E``. The forward
  stores P (one table, n+m-1 by n+1 per item), so the backward recomputes ``R = C + P`` bit for bit and
  each exponent is exactly <= 0 for real transitions (clamping it at 0 only tames junk cells). No
  autodiff runs through the O(n m) loop: memory is the one table, and there is no graph of 10^7 nodes.
* **Padding.** Items of a batch have lengths (n_b, m_b) <= (N, M). Costs of padded cells are set to 0
  (so NaN padding cannot leak), the value of item b is read at cell (n_b, m_b), and the backward
  seeds E only there: cells after (n_b, m_b) are never predecessors of it, so they get E = 0 and
  padded inputs get gradient 0.
* **Costs.** ``"abs"``: sum over features of |x - y| (the paper's); ``"sq"``: sum of (x - y)^2; or any
  callable ``cost(x, y) -> (B, N, M)`` (EagerPy in, EagerPy out), whose derivative the framework's
  autodiff provides (cheap: it is one elementwise layer, not the loop). At x == y the abs cost is not
  differentiable; we use the subgradient 0 (``sign(0) = 0``), which is what torch, jax and
  tensorflow give for ``abs`` too, so hand-written and autodiff gradients agree.

Zero-length items have no alignment: their sdtw is +inf with gradient 0; the divergence of two empty
items is 0, of one empty and one non-empty +inf. gamma is a Python float, passed to the op as a 0-d
tensor (one compiled program for every gamma) and not differentiated.

Backends whose loops compile per input shape (``Backend.compiles_loops``: jax, tensorflow) get their inputs padded
to a few bucket sizes per octave (``_bucket``),
so that new lengths rarely mean a new compilation. Devices: everything is created on the inputs' device
(``ep.*_like``, ``ops.asarray(like, ...)``); on a GPU each step is ~30 small kernels (torch) or one fused
while-loop body (jax/XLA), so short sequences are launch-bound there.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Tuple, Union

import eagerpy as ep
import numpy as np

from larnd_diff import ops

__all__ = ["soft_dtw", "soft_dtw_divergence", "soft_dtw_cost_matrix", "pairwise_cost"]

#: Stand-in for +inf in the DP tables (see module docstring).
_BIG = 1e30
#: exp arguments are clipped at -700 (exp = 1e-304, i.e. 0 next to the leading 1 of every soft-min sum): the
#: 1e30 stand-ins would otherwise send -1e30 into exp, which takes a 5x slower path in torch's vectorised exp.
_EXP_FLOOR = 700.0

CostSpec = Union[str, Callable[[ep.Tensor, ep.Tensor], ep.Tensor]]


# =========================================================================================== small pieces
def _shift_right(a: ep.Tensor, fill: float) -> ep.Tensor:
    """``out[:, i] = a[:, i-1]``, ``out[:, 0] = fill`` (row i-1 of the previous diagonals)."""
    return ep.concatenate([ep.full_like(a[:, :1], fill), a[:, :-1]], axis=1)


def _shift_left(a: ep.Tensor, fill: float) -> ep.Tensor:
    """``out[:, i] = a[:, i+1]``, ``out[:, -1] = fill`` (row i+1 of the following diagonals)."""
    return ep.concatenate([a[:, 1:], ep.full_like(a[:, :1], fill)], axis=1)


def _softmin3(a: ep.Tensor, b: ep.Tensor, c: ep.Tensor) -> ep.Tensor:
    """``-log(exp(-a) + exp(-b) + exp(-c))`` (gamma = 1; callers pre-scale by 1/gamma).

    Max-subtraction form: the largest term is exp(0) = 1, so the sum is in [1, 3] and the log is >= 0,
    which also makes ``softmin <= min(a, b, c)`` hold exactly in floating point.
    """
    m = ep.minimum(ep.minimum(a, b), c)
    lo = -_EXP_FLOOR
    total = ep.exp(ep.maximum(m - a, lo)) + ep.exp(ep.maximum(m - b, lo)) + ep.exp(ep.maximum(m - c, lo))
    return m - ep.log(total)


def _index_dtype(like: ep.Tensor) -> str:
    """The integer dtype ``ep.arange`` gives on this backend (int32 on jax without x64 and on tensorflow)."""
    return ops.dtype_name(ep.arange(like, 0, 1))


def _lengths(like: ep.Tensor, lengths: Any, batch: int, full: int) -> ep.Tensor:
    """Per-item lengths as an integer tensor of ``like``'s backend; None means every item is ``full`` long.

    Lists and numpy arrays are range-checked here; tensors are taken as they are (they may be traced).
    """
    dtype = _index_dtype(like)
    if lengths is None:
        return ops.asarray(like, np.full(batch, full, dtype=np.int64), dtype)
    raw = lengths.raw if isinstance(lengths, ep.Tensor) else lengths
    host = isinstance(raw, (list, tuple, int, np.integer, np.ndarray))
    if not host and ops.backend_of(raw) == ops.backend_of(like):
        return ops.cast(ep.astensor(raw), dtype).reshape((batch,))
    arr = np.asarray(raw if host else ops.to_numpy(raw))
    arr = np.broadcast_to(arr, (batch,)).astype(np.int64)
    if np.any(arr < 0) or np.any(arr > full):
        raise ValueError(f"lengths must lie in [0, {full}], got {arr.tolist()}")
    return ops.asarray(like, arr, dtype)


def _valid_mask(like_int: ep.Tensor, lengths: ep.Tensor, size: int) -> ep.Tensor:
    """(B, size) bool: position < length."""
    return ep.arange(like_int, 0, size)[None, :] < lengths[:, None]


# =========================================================================================== cost
def pairwise_cost(x: ep.Tensor, y: ep.Tensor, kind: str) -> ep.Tensor:
    """(B, N, d), (B, M, d) -> (B, N, M): sum over features of |x - y| ("abs") or (x - y)^2 ("sq")."""
    diff = x[:, :, None, :] - y[:, None, :, :]
    if kind == "abs":
        return diff.abs().sum(axis=-1)
    if kind == "sq":
        return (diff * diff).sum(axis=-1)
    raise ValueError(f"cost must be 'abs', 'sq' or a callable, got {kind!r}")


def _cost_vjp(x: ep.Tensor, y: ep.Tensor, grad_c: ep.Tensor, kind: str) -> Tuple[ep.Tensor, ep.Tensor]:
    """Chain dvalue/dC (B, N, M) to (x, y) for the built-in costs.

    abs: dC/dx = sign(x - y) (0 at x == y, the subgradient autodiff frameworks use); sq: 2 (x - y).
    """
    diff = x[:, :, None, :] - y[:, None, :, :]
    local = diff.sign() if kind == "abs" else 2.0 * diff
    weighted = grad_c[:, :, :, None] * local
    return weighted.sum(axis=2), -weighted.sum(axis=1)


def _sanitize(x: ep.Tensor, mask: ep.Tensor) -> ep.Tensor:
    """Padded positions set to 0 so that NaN/inf padding cannot reach the tables or the gradient."""
    return ep.where(mask[:, :, None], x, ep.zeros_like(x))


# =========================================================================================== diagonals
def _diagonal_reader(c: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: ep.Tensor) -> Callable[[Any], ep.Tensor]:
    """``read(k) -> (B, N+1)``: row i holds C[i, k-i] / gamma (1-based), 0 off the grid or beyond (n_b, m_b).

    The diagonal is gathered from C inside each step rather than from a pre-skewed copy: that copy and its
    index would cost 3x the memory of C, and the step gathers only N+1 numbers per item. Masking with
    ``where`` (not a product) keeps NaN or inf in padded cells out of the tables.
    """
    batch, n, m = c.shape
    flat = c.reshape((batch, n * m))
    rows = ep.arange(nx, 0, n + 1)
    base = (rows - 1) * m - 1  # flat index of cell (i, j) is base[i] + j
    rows_ok = ep.logical_and((rows >= 1)[None, :], rows[None, :] <= nx[:, None])
    zero = _row_table(c, 0.0)
    inv = 1.0 / gamma  # 0-d tensor: one compiled program serves every gamma

    def read(k):
        j = k - rows
        d = ops.gather(flat, ep.clip(base + j, 0, n * m - 1), axis=1)
        ok = ep.logical_and(rows_ok, ep.logical_and((j >= 1)[None, :], j[None, :] <= ny[:, None]))
        return ep.where(ok, d, zero) * inv

    return read


def _row_table(c: ep.Tensor, fill: float) -> ep.Tensor:
    """(B, N+1) filled with ``fill``, dtype and device of the cost ``c`` (B, N, M): one diagonal's shape."""
    return ep.concatenate([ep.full_like(c[:, :1, 0], fill), ep.full_like(c[:, :, 0], fill)], axis=1)


def _unskew(t: ep.Tensor, n: int, m: int) -> ep.Tensor:
    """(N+M-1, B, N+1) diagonals (entry (k-2, b, i) = cell (i, k-i)) -> (B, N, M) table."""
    steps, batch, w = t.shape
    per_item = ep.transpose(t, (1, 0, 2)).reshape((batch, steps * w))
    i = ep.arange(t, 1, n + 1).reshape((n, 1))
    j = ep.arange(t, 1, m + 1).reshape((1, m))
    idx = ((i + j - 2) * w + i).reshape((-1,))
    return ops.gather(per_item, idx, axis=1).reshape((batch, n, m))


# =========================================================================================== the two passes
def _end_cells(nx: ep.Tensor, ny: ep.Tensor, w: int) -> Tuple[ep.Tensor, ep.Tensor]:
    """(B, W) bool marking row n_b (only for items with both lengths >= 1) and the end diagonal n_b + m_b."""
    rows = ep.arange(nx, 0, w)
    item_ok = ep.logical_and(nx >= 1, ny >= 1)
    return ep.logical_and(rows[None, :] == nx[:, None], item_ok[:, None]), nx + ny


def _forward(backend, c: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: ep.Tensor, keep: bool):
    """Forward DP. Returns (R[n_b, m_b] / gamma per item, skewed P table (N+M-1, B, N+1) or None)."""
    batch, n, m = c.shape
    read = _diagonal_reader(c, nx, ny, gamma)
    end_row, k_end = _end_cells(nx, ny, n + 1)
    big = _row_table(c, _BIG)
    r0 = ep.where((ep.arange(nx, 0, n + 1) == 0)[None, :], ep.zeros_like(big), big)  # R[0, 0] = 0
    val0 = ep.zeros_like(big[:, 0])

    def step(carry, k):
        prev2, prev1, val = carry
        p = _softmin3(_shift_right(prev2, _BIG), _shift_right(prev1, _BIG), prev1)
        r = read(k) + p
        hit = ep.logical_and(end_row, (k_end == k)[:, None])
        val = val + ep.where(hit, r, ep.zeros_like(r)).sum(axis=1)
        return (prev1, r, val), p

    ks = ep.arange(nx, 2, n + m + 1)
    (_, _, val), p_table = backend.scan(step, (r0, big, val0), ks, keep=keep)
    return val, p_table


def _backward(backend, c: ep.Tensor, p_table: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: ep.Tensor,
              g: ep.Tensor) -> ep.Tensor:
    """E recursion by anti-diagonals, seeded with the cotangent ``g`` (B,) at (n_b, m_b): dvalue/dC (B, N, M)."""
    batch, n, m = c.shape
    read = _diagonal_reader(c, nx, ny, gamma)
    end_row, k_end = _end_cells(nx, ny, n + 1)
    zero = ep.zeros_like(p_table[0])
    seed = g[:, None] + zero

    def step(carry, xs):
        e1, p1, se1, sp1, se2, sp2 = carry  # successors: diagonal k+1 (row i, and shifted: row i+1), k+2 (row i+1)
        p, k = xs
        r = read(k) + p  # bitwise the forward's R
        lo = -_EXP_FLOOR
        e = (se1 * ep.exp(ep.clip(sp1 - r, lo, 0.0)) + e1 * ep.exp(ep.clip(p1 - r, lo, 0.0))
             + se2 * ep.exp(ep.clip(sp2 - r, lo, 0.0)))
        hit = ep.logical_and(end_row, (k_end == k)[:, None])
        e = e + ep.where(hit, seed, zero)
        return (e, p, _shift_left(e, 0.0), _shift_left(p, 0.0), se1, sp1), e

    init = (zero, zero, zero, zero, zero, zero)
    ks = ep.arange(nx, 2, n + m + 1)
    _, e_table = backend.scan(step, init, (p_table, ks), reverse=True)
    return _unskew(e_table, n, m)


# =========================================================================================== ops
def _finish(value_scaled: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: ep.Tensor) -> ep.Tensor:
    ok = ep.logical_and(nx >= 1, ny >= 1)
    return ep.where(ok, value_scaled * gamma, ep.full_like(value_scaled, np.inf))


@lru_cache(maxsize=16)
def _xy_op(backend: str, kind: str) -> Callable:
    """Differentiable raw op (x, y, nx, ny, gamma) -> (B,) for a built-in cost; gamma a 0-d tensor (no
    derivative), so that jax compiles one program per shape, not one per gamma. The forward keeps its table for
    the backward only where there are gradients."""
    b = ops.get_backend(backend)
    keep = b.supports("grad")

    def forward(x_raw, y_raw, nx_raw, ny_raw, g_raw):
        x, y, nx, ny, gamma = (ep.astensor(v) for v in (x_raw, y_raw, nx_raw, ny_raw, g_raw))
        val, p_table = _forward(b, pairwise_cost(x, y, kind), nx, ny, gamma, keep)
        res = (x_raw, y_raw, nx_raw, ny_raw, g_raw) + ((p_table.raw,) if keep else ())
        return _finish(val, nx, ny, gamma).raw, res

    def backward(res, cot_raw):
        x, y, nx, ny, gamma, p_table = (ep.astensor(v) for v in res)
        e = _backward(b, pairwise_cost(x, y, kind), p_table, nx, ny, gamma, ep.astensor(cot_raw))
        gx, gy = _cost_vjp(x, y, e, kind)
        return gx.raw, gy.raw, None, None, None

    return b.custom_vjp(forward, backward)


@lru_cache(maxsize=16)
def _matrix_op(backend: str) -> Callable:
    """Differentiable raw op (C, nx, ny, gamma) -> (B,) on a precomputed cost matrix."""
    b = ops.get_backend(backend)
    keep = b.supports("grad")

    def forward(c_raw, nx_raw, ny_raw, g_raw):
        c, nx, ny, gamma = (ep.astensor(v) for v in (c_raw, nx_raw, ny_raw, g_raw))
        val, p_table = _forward(b, c, nx, ny, gamma, keep)
        res = (c_raw, nx_raw, ny_raw, g_raw) + ((p_table.raw,) if keep else ())
        return _finish(val, nx, ny, gamma).raw, res

    def backward(res, cot_raw):
        c, nx, ny, gamma, p_table = (ep.astensor(v) for v in res)
        e = _backward(b, c, p_table, nx, ny, gamma, ep.astensor(cot_raw))
        return e.raw, None, None, None

    return b.custom_vjp(forward, backward)


def _gamma_tensor(like: ep.Tensor, gamma: float) -> ep.Tensor:
    return ops.asarray(like, np.asarray(gamma, dtype=np.float64), ops.dtype_name(like))


# =========================================================================================== public API
def _as_sequences(t: ep.Tensor, name: str) -> ep.Tensor:
    """(n,) -> (1, n, 1); (B, n) -> (B, n, 1); (B, n, d) unchanged; integer inputs become float64."""
    if t.ndim == 1:
        t = t[None, :, None]
    elif t.ndim == 2:
        t = t[:, :, None]
    elif t.ndim != 3:
        raise ValueError(f"{name} must have shape (n,), (B, n) or (B, n, d); got {tuple(t.shape)}")
    if not ops.dtype_name(t).startswith(("float", "bfloat")):
        t = ops.cast(t, "float64")
    return t


def _on_backend(like: ep.Tensor, v: Any) -> ep.Tensor:
    """Second operand on the first one's backend (other backends' tensors and numpy go through numpy)."""
    raw = v.raw if isinstance(v, ep.Tensor) else v
    if isinstance(raw, (list, tuple, float, int)):
        raw = np.asarray(raw, dtype=np.float64)
    if ops.backend_of(raw) == ops.backend_of(like):
        return ep.astensor(raw)
    return ops.asarray(like, raw if isinstance(raw, np.ndarray) else ops.to_numpy(raw))


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return gamma


class _CompilingBackends:
    """``name in _COMPILED``: whether that backend's loops compile one program per input shape
    (``Backend.compiles_loops``), so that its inputs are padded to bucket sizes; asked of the registry, not a list of
    names (larnd_diff.losses tests membership)."""

    def __contains__(self, backend) -> bool:
        return ops.get_backend(backend).compiles_loops


_COMPILED = _CompilingBackends()


def _bucket(n: int) -> int:
    """Round a size up to one of 4 steps per octave (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...), <= 25 % extra.

    jax (and tensorflow's eager path) compile one program per shape, about a second each on CPU; the hit
    losses see a new sequence length for almost every event set, so unbucketed they would recompile all the
    time. Padding is free in meaning (lengths mask it) and cheap in time.
    """
    if n <= 8:
        return 8
    step = 2 ** (int(np.floor(np.log2(n))) - 2)
    return int(-(-n // step) * step)


def _pad_to(t: ep.Tensor, size: int, axis: int) -> ep.Tensor:
    extra = size - t.shape[axis]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = extra
    return ep.concatenate([t, ep.zeros(t, tuple(shape))], axis=axis)


def _use_host(kernel: str, like: ep.Tensor) -> bool:
    """Whether the DP runs as host loops (:mod:`larnd_diff.softdtw_host`) rather than as the wavefront.

    "auto": on the host whenever numba is there and the data is in host memory, or on a GPU of a backend whose
    loops run op by op (``Backend.compiles_loops`` False, e.g. torch: the cost matrix is copied, a few MB for a
    fit's hit sequences, far cheaper than n + m launches of ~30 kernels).
    """
    from larnd_diff import softdtw_host

    if kernel == "wavefront":
        return False
    if kernel not in ("auto", "host"):
        raise ValueError(f"kernel must be 'auto', 'host' or 'wavefront', got {kernel!r}")
    if not softdtw_host.available():
        if kernel == "host":
            raise ImportError("soft_dtw(kernel='host') needs numba")
        return False
    if kernel == "host":
        return True
    b = ops.get_backend(like)
    return b.on_host(like) or not b.compiles_loops


def _host_matrix(c: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: float) -> ep.Tensor:
    """Differentiable (w.r.t. c) host Soft-DTW values of cost matrices (B, N, M), inf for empty items."""
    from larnd_diff import softdtw_host as host

    op = ops.get_backend(c).host_vjp(lambda cc, a, b: host.sdtw_values(cc, a, b, gamma),
                                     lambda cc, a, b, g: host.sdtw_grad(cc, a, b, gamma, g), (c.shape[0],))
    return ep.astensor(op(c.raw, nx.raw, ny.raw))


def _sdtw(x: ep.Tensor, y: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: float, cost: CostSpec,
          kernel: str = "auto") -> ep.Tensor:
    """Batched sdtw on prepared EagerPy inputs (B, N, d), (B, M, d) with integer lengths."""
    backend = ops.backend_of(x)
    batch = x.shape[0]
    x, y = _pad_to(x, 1, 1), _pad_to(y, 1, 1)  # zero-size sequences: one masked position (lengths are 0)
    if _use_host(kernel, x):
        x = _sanitize(x, _valid_mask(nx, nx, x.shape[1]))
        y = _sanitize(y, _valid_mask(ny, ny, y.shape[1]))
        c = cost(x, y) if callable(cost) else pairwise_cost(x, y, cost)
        return _host_matrix(c, nx, ny, gamma)
    if ops.get_backend(backend).compiles_loops:
        pb = 1 << max(batch - 1, 0).bit_length()  # batch: next power of two
        x = _pad_to(_pad_to(x, _bucket(x.shape[1]), 1), pb, 0)
        y = _pad_to(_pad_to(y, _bucket(y.shape[1]), 1), pb, 0)
        nx, ny = _pad_to(nx, pb, 0), _pad_to(ny, pb, 0)  # padded items have length 0
        return _sdtw_core(backend, x, y, nx, ny, gamma, cost)[:batch]
    return _sdtw_core(backend, x, y, nx, ny, gamma, cost)


def _sdtw_core(backend: str, x: ep.Tensor, y: ep.Tensor, nx: ep.Tensor, ny: ep.Tensor, gamma: float,
               cost: CostSpec) -> ep.Tensor:
    x = _sanitize(x, _valid_mask(nx, nx, x.shape[1]))
    y = _sanitize(y, _valid_mask(ny, ny, y.shape[1]))
    g = _gamma_tensor(x, gamma)
    if callable(cost):
        c = cost(x, y)
        return ep.astensor(_matrix_op(backend)(c.raw, nx.raw, ny.raw, g.raw))
    return ep.astensor(_xy_op(backend, cost)(x.raw, y.raw, nx.raw, ny.raw, g.raw))


def _divergence(x, y, nx, ny, gamma, cost, kernel="auto") -> ep.Tensor:
    """sdtw(x,y) - (sdtw(x,x) + sdtw(y,y)) / 2 with the empty-item conventions of the module docstring."""
    xy = _sdtw(x, y, nx, ny, gamma, cost, kernel)
    xx = _sdtw(x, x, nx, nx, gamma, cost, kernel)
    yy = _sdtw(y, y, ny, ny, gamma, cost, kernel)
    both = ep.logical_and(nx >= 1, ny >= 1)
    zero = ep.zeros_like(xy)
    xy, xx, yy = (ep.where(both, v, zero) for v in (xy, xx, yy))  # no inf - inf for empty items
    safe = xy - 0.5 * (xx + yy)
    neither = ep.logical_and(nx == 0, ny == 0)
    return ep.where(both, safe, ep.where(neither, ep.zeros_like(xy), ep.full_like(xy, np.inf)))


def soft_dtw(x, y, gamma: float = 1.0, lengths_x=None, lengths_y=None, cost: CostSpec = "abs",
             divergence: bool = False, kernel: str = "auto"):
    """Soft-DTW value per batch item; native tensors in, native tensors out (EagerPy in, EagerPy out).

    Args:
      x, y: sequences of shape (n,) (one item, scalar features), (B, n) (B items, scalar features) or
        (B, n, d) (d features). ``y`` may have another length and is moved to ``x``'s backend if needed.
        Units are the caller's; the cost adds them up (scale features first).
      gamma: smoothing (same unit as the cost); > 0, static.
      lengths_x, lengths_y: (B,) integer lengths (list, numpy or tensor); None = the full padded length.
        Positions beyond an item's length are ignored (any value, NaN included).
      cost: "abs" (sum |x - y|, the paper's), "sq" (sum (x - y)^2), or ``callable(x, y) -> (B, N, M)``
        on EagerPy tensors (padded positions of x and y arrive as 0).
      divergence: return sdtw(x,y) - (sdtw(x,x) + sdtw(y,y)) / 2 instead (>= 0, 0 iff x == y).
      kernel: "wavefront" (the anti-diagonal formulation, framework ops, any device), "host" (Numba loops on
        the host, :mod:`larnd_diff.softdtw_host`; torch GPU tensors are copied) or "auto" (host for numpy,
        torch and host-memory jax/tensorflow arrays when numba is installed; else the wavefront).

    Returns:
      (B,) values (a 0-d value for 1-D inputs), differentiable w.r.t. x and y on torch, jax and
      tensorflow through the hand-written backward; works under ``jax.jit`` and ``tf.function``.
    """
    gamma = _check_gamma(gamma)
    xt, restore = ep.astensor_(x)
    yt = _on_backend(xt, y)
    scalar = xt.ndim == 1
    xt, yt = _as_sequences(xt, "x"), _as_sequences(yt, "y")
    if ops.dtype_name(yt) != ops.dtype_name(xt):
        yt = ops.cast(yt, ops.dtype_name(xt))
    if xt.shape[0] != yt.shape[0] or xt.shape[2] != yt.shape[2]:
        raise ValueError(f"x {tuple(xt.shape)} and y {tuple(yt.shape)} must agree in batch and feature size")
    if isinstance(cost, str) and cost not in ("abs", "sq"):
        raise ValueError(f"cost must be 'abs', 'sq' or a callable, got {cost!r}")
    batch = xt.shape[0]
    nx = _lengths(xt, lengths_x, batch, xt.shape[1])
    ny = _lengths(xt, lengths_y, batch, yt.shape[1])
    fn = _divergence if divergence else _sdtw
    out = fn(xt, yt, nx, ny, gamma, cost, kernel)
    return restore(out[0] if scalar else out)


def soft_dtw_divergence(x, y, gamma: float = 1.0, lengths_x=None, lengths_y=None, cost: CostSpec = "abs",
                        kernel: str = "auto"):
    """``soft_dtw(..., divergence=True)``: sdtw(x,y) - (sdtw(x,x) + sdtw(y,y)) / 2, >= 0, 0 iff x == y."""
    return soft_dtw(x, y, gamma, lengths_x, lengths_y, cost, divergence=True, kernel=kernel)


def soft_dtw_cost_matrix(c, gamma: float = 1.0, lengths_x=None, lengths_y=None):
    """Soft-DTW on a precomputed cost matrix ``c`` of shape (B, N, M) (or (N, M) -> 0-d value).

    Differentiable w.r.t. ``c`` (the gradient is the expected-alignment matrix E); padded cells are ignored.
    """
    gamma = _check_gamma(gamma)
    ct, restore = ep.astensor_(c)
    scalar = ct.ndim == 2
    if scalar:
        ct = ct[None]
    batch, n, m = ct.shape
    nx = _lengths(ct, lengths_x, batch, n)
    ny = _lengths(ct, lengths_y, batch, m)
    out = ep.astensor(_matrix_op(ops.backend_of(ct))(ct.raw, nx.raw, ny.raw, _gamma_tensor(ct, gamma).raw))
    return restore(out[0] if scalar else out)
