"""Differentiable induced current of (segment, pixel) pairs, EagerPy tensors + larnd_diff.ops only.

Sparse by construction. For a pair, the reference sums over a 30 x 30 x N_z grid, for every tick, the charge
density rho(x_i, y_j, z_k) dV times a two-exponential current template with a hard stop at the arrival time
t_s = t0(z_k) + delay(i, j). Here:

* rows = the pair's in-pad (x_i, y_j) samples only (the host plan knows which; the rest are masked out by the
  reference anyway); per row the template (A, B, C, delay) is evaluated once;
* entries = (row, z_k): the charge weight w = rho dV dt is evaluated once (not per tick);
* the sum over z of w_k e^{-(t_s,k - T_n)/tau} / tau [T_n < t_s,k] for every tick n is a reverse linear
  recurrence F_n = D_n + e^{-dt/tau} F_{n+1}: each entry deposits w_k e^{-(t_s,k - T_m)/tau} / tau at the last
  tick m before its arrival (0 < t_s - T_m <= dt, no overflow), and the recurrence is solved by a blocked
  product with small triangular Toeplitz matrices plus a carry between blocks (recursively), so the work is
  rows x (N_z + ticks x block) instead of rows x N_z x ticks;
* a relaxed (sigmoid) onset only changes a few ticks around each arrival: added as a local correction.

Units: cm, us; charges in electrons per tick (current x dt), as the electronics stage expects.
"""
from __future__ import annotations

import math

import eagerpy as ep
import numpy as np

from larnd_diff import ops
from larnd_diff.response import AMPLITUDE_A, DELAY_US, MIN_TAU_US, TAU_B_US, TAU_C_US, pad_polynomial
from larnd_diff.sim.induce_layout import ONSET_TOLERANCE, PAIR_FIELDS
from larnd_diff.sim.pixels import N_Z_MIN

#: Block length of the recurrence solver.
BLOCK = 16


def current_template(dx, dy):
    """(A, B, C, delay) of the current model (:mod:`larnd_diff.response`) at offsets (dx, dy) cm from the pad
    centre (B, C, delay in us)."""
    a = ep.minimum(pad_polynomial(AMPLITUDE_A, dx, dy), 1.0)
    return a, pad_polynomial(TAU_B_US, dx, dy), pad_polynomial(TAU_C_US, dx, dy), pad_polynomial(DELAY_US, dx, dy)


def line_charge_norm(n_electrons, length, sigma_T, sigma_L):
    """Q / (L sigma_x sigma_y sigma_z sqrt(8 pi^3)) in electrons / cm^4, the density prefactor (the reference's
    :func:`larnd_diff.reference.scalars.density_norm`)."""
    return n_electrons / (length * sigma_T * sigma_T * sigma_L * math.sqrt(8 * math.pi ** 3))


def line_integral(a, b, length):
    """I = sqrt(pi) / (2 sqrt(a)) [erf((b + 2 a L) / (2 sqrt a)) - erf(b / (2 sqrt a))] (cm)."""
    sqa = ep.sqrt(a)
    return (math.sqrt(math.pi) / 2) / sqa * (ops.erf((b + 2 * a * length) / (2 * sqa)) - ops.erf(b / (2 * sqa)))


def discounted_reverse_cumsum(d, log_decay, block: int = BLOCK):
    """F[:, n] = sum_{m >= n} d[:, m] exp(log_decay (m - n)) for rows of d (R, W) >= 0; log_decay (R,) in [-2, 0].

    Reference implementation of the recurrence (the simulator uses :func:`discounted_cumsum_prescaled` on a
    reversed tick axis with the within-block scaling folded into the deposits).
    """
    r, w = d.shape
    nb = -(-w // block)
    if nb * block != w:
        d = ep.concatenate([d, ep.zeros(d, (r, nb * block - w))], axis=1)
    j = ops.asarray(d, np.arange(block, dtype=np.float64), ops.dtype_name(d))
    rev = ep.flip(d, axis=1).reshape((r, nb, block)) * ep.exp(-log_decay[:, None, None] * j[None, None, :])
    f = discounted_cumsum_prescaled(rev.reshape((r, nb * block)), log_decay, block)
    return ep.flip(f, axis=1)[:, nb * block - w:]


def discounted_cumsum_prescaled(d_scaled, log_decay, block: int = BLOCK):
    """Forward discounted cumulative sum F[:, n] = sum_{m <= n} d[:, m] a^(n - m), a = exp(log_decay) (R,),
    given d_scaled[:, bL + j] = d[:, bL + j] a^-j (W a multiple of ``block``; d >= 0).

    Within a block F[b, i] = a^i (cumsum_j<=i d_scaled[b, j] + c_b) with the carry c_b = a F[b, -1 of previous
    block]; the carries follow c_b = a^L (S_{b-1} + c_{b-1}) (S = block sums of d_scaled), solved with a small
    triangular Toeplitz product over blocks. Every exponent formed is <= 0 except the prescaling a^-j <= e^(2L),
    and all terms are non-negative, so nothing overflows or cancels.
    """
    r, w = d_scaled.shape
    dtype = ops.dtype_name(d_scaled)
    nb = w // block
    c = ops.cumsum(d_scaled.reshape((r, nb, block)), axis=2)
    i = ops.asarray(d_scaled, np.arange(block, dtype=np.float64), dtype)
    a_i = ep.exp(log_decay[:, None, None] * i[None, None, :])
    if nb == 1:
        return (c * a_i).reshape((r, w))
    # carry into block b: c_b = sum_{b' < b} a^{(b - b') L} ... expressed on the block sums S_b' = c[b', L-1]
    lag = np.arange(nb)[:, None] - np.arange(nb)[None, :]        # (b, b') -> b - b'
    lag_t = ops.asarray(d_scaled, np.maximum(lag, 0).astype(np.float64), dtype)
    lower = ops.asarray(d_scaled, (lag > 0).astype(np.float64), dtype)
    toeplitz = ep.exp((log_decay * block)[:, None, None] * lag_t[None]) * lower[None]   # a^{(b-b')L}, b' < b
    carry = ops.einsum("rbc,rc->rb", toeplitz, c[:, :, block - 1])
    return ((c + carry[:, :, None]) * a_i).reshape((r, w))


def smooth_window_ticks(sharpness, tau_max, dt, tol: float | None = None) -> int:
    """Ticks on each side of an arrival where sigmoid(s y) differs from the hard step by more than e^-tol
    (default ``induce_layout.ONSET_TOLERANCE``) for the largest time constant ``tau_max``; rows use their own tau."""
    if sharpness is None:
        return 0
    tol = ONSET_TOLERANCE if tol is None else tol
    return int(math.ceil(tau_max * tol / (float(sharpness) * dt))) + 1


def z_step_of(z_range, n_z, fixed_step):
    """Step of the z samples (cm): larnd-sim's z_range / (N_z - 1) (the points span the range), or with
    ``fixed_step`` (cm, ``Relaxation.z_step="fixed"``) min(z_range / (N_Z_MIN - 1), fixed_step): larnd-sim's step
    while its N_Z_MIN points are at most ``fixed_step`` apart, then ``fixed_step``, N_z following the range
    (:func:`larnd_diff.sim.pixels.n_z_samples`)."""
    if not fixed_step:
        return z_range / (n_z - 1)
    return ep.minimum(z_range / (N_Z_MIN - 1), fixed_step)


def pair_geometry(g, pitch, n_pts, z_step=0.0):
    """Differentiable per-pair geometry (larnd-sim's z_interval and sampling grid) from gathered per-pair tensors
    ``g`` (dict).

    Needs: z-ordered endpoints ax, ay, az, bx, by, bz; sigma_T, sigma_L; pixel centre x_p, y_p; host constants
    swap (x-ordering), branch (z_interval case), n_z, sgn_x, sgn_y. ``z_step``: 0 = larnd-sim's z samples spanning
    the range, else the fixed step in cm (:func:`z_step_of`). Returns a dict with the sampling grid origin and
    steps, the z range and the volume weight.
    """
    ax, ay, az, bx, by, bz = g["ax"], g["ay"], g["az"], g["bx"], g["by"], g["bz"]
    s_T, s_L = g["sigma_T"], g["sigma_L"]
    x_p, y_p = g["x_p"], g["y_p"]
    tol = 2 * ep.maximum(5 * math.sqrt(2) * s_T, pitch * math.sqrt(2) / 2)
    # z_interval works on the x-ordered endpoints S (smaller x) and F
    ab_x = g["x_first_is_a"]
    sx, sy, sz = ep.where(ab_x, ax, bx), ep.where(ab_x, ay, by), ep.where(ab_x, az, bz)
    fx, fy, fz = ep.where(ab_x, bx, ax), ep.where(ab_x, by, ay), ep.where(ab_x, bz, az)
    dxf = fx - sx
    m = (fy - sy) / dxf
    q = (fx * sy - sx * fy) / dxf
    foot = (x_p + m * y_p - m * q) / (1 + m * m)
    doca_line = ep.abs(m * x_p - y_p + q) / ep.sqrt(1 + m * m)
    doca_s = ep.sqrt((x_p - sx) ** 2 + (y_p - sy) ** 2 + 1e-300)
    doca_f = ep.sqrt((x_p - fx) ** 2 + (y_p - fy) ** 2 + 1e-300)
    br = g["branch"]
    xstar = ep.where(br == 1, sx, ep.where(br == 2, fx, foot))
    doca = ep.where(br == 1, doca_s, ep.where(br == 2, doca_f, doca_line))
    z_poca = sz + (xstar - sx) * (fz - sz) / dxf
    h = ep.sqrt(ep.maximum(tol * tol - doca * doca, 1e-300))
    length_xy = ep.sqrt(dxf * dxf + (fy - sy) ** 2)
    half = h * ep.abs(fz - sz) / length_xy
    z_lo, z_hi = z_poca - half, z_poca + half
    # line points at the interval ends (x(z), y(z) of the infinite line)
    dz = bz - az
    slope_x, slope_y = (bx - ax) / dz, (by - ay) / dz
    xa_, xb_ = ax + (z_lo - az) * slope_x, ax + (z_hi - az) * slope_x
    ya_, yb_ = ay + (z_lo - az) * slope_y, ay + (z_hi - az) * slope_y
    h_x = (ep.abs(xb_ - xa_) + 8 * s_T) / (n_pts - 1)
    h_y = (ep.abs(yb_ - ya_) + 8 * s_T) / (n_pts - 1)
    z_range = z_hi - z_lo + 8 * s_L
    h_z = z_step_of(z_range, g["n_z"], z_step)
    return dict(x0=xa_ - g["sgn_x"] * 4 * s_T, y0=ya_ - g["sgn_y"] * 4 * s_T, step_x=g["sgn_x"] * h_x,
                step_y=g["sgn_y"] * h_y, z0=z_lo - 4 * s_L, h_z=h_z, volume=ep.abs(h_x * h_y * h_z))


def pair_inputs(g, *, grid):
    """Everything of the row inputs that depends on the pair only: a dict of (n_pairs,) tensors named as
    :data:`~larnd_diff.sim.induce_layout.PAIR_FIELDS` (the rows follow with :func:`expand_rows`).

    g: per-pair tensors (see :func:`pair_geometry`, plus n_electrons, z_anode, vdrift).
    """
    pitch, n_pts, dt, edge, z_step = grid
    geo = pair_geometry(g, pitch, n_pts, z_step)
    ax, ay, az, bx, by, bz = g["ax"], g["ay"], g["az"], g["bx"], g["by"], g["bz"]
    s_T, s_L = g["sigma_T"], g["sigma_L"]
    ddx, ddy, ddz = bx - ax, by - ay, bz - az
    length = ep.sqrt(ddx * ddx + ddy * ddy + ddz * ddz)
    ux, uy, uz = ddx / length, ddy / length, ddz / length
    w_t, w_l = 1 / (s_T * s_T), 1 / (s_L * s_L)                 # Mahalanobis weights 1/sigma^2
    a_coef = (ux * ux + uy * uy) * w_t / 2 + uz * uz * w_l / 2
    sqrt_a = ep.sqrt(a_coef)
    # Q / (L sx sy sz sqrt(8 pi^3)) x sqrt(pi) / (2 sqrt a) x dV x dt: electrons per tick per unit current
    norm = (line_charge_norm(g["n_electrons"], length, s_T, s_L) * (math.sqrt(math.pi) / 2) / sqrt_a
            * geo["volume"] * dt)
    # sample relative to the segment start A: R(k) = (rx, ry, rz0 + k h_z); closest point on the line in the
    # diffusion metric s*(k) = s0 + s1 k; residual e(k) = e0 + k e1 (e1 per pair, e0 per row)
    rz0, hz = geo["z0"] - az, geo["h_z"]
    two_a = 2 * a_coef
    s1 = hz * uz * w_l / two_a
    e1x, e1y, e1z = -s1 * ux, -s1 * uy, hz - s1 * uz
    return dict(x0=geo["x0"], step_x=geo["step_x"], y0=geo["y0"], step_y=geo["step_y"], x_p=g["x_p"], y_p=g["y_p"],
                ax=ax, ay=ay, ux=ux, uy=uy, uz=uz, w_t=w_t, w_l=w_l, two_a=two_a, rz0=rz0, rz0_uz_wl=rz0 * uz * w_l,
                e1x=e1x, e1y=e1y, e1z=e1z, sqrt_a=sqrt_a, norm=norm,
                q2=(e1x * e1x + e1y * e1y) * w_t / 2 + e1z * e1z * w_l / 2, u1=sqrt_a * s1,
                u_len=sqrt_a * length, h_z=hz, z_an=g["z_anode"] - geo["z0"], vdrift=ep.zeros_like(hz) + g["vdrift"],
                edge=ep.zeros_like(hz) + edge)


def pad_edge_weight(d, step, edge):
    """Share of the grid cell of width |step| centred ``d`` (cm) from the pixel centre inside the pad of half-width
    ``edge`` (1 where ``edge`` is 0: larnd-sim's hard selection); tensors
    (:func:`larnd_diff.sim.fused_scalars.pad_edge_weight` in the kernels)."""
    linear = ep.minimum(ep.maximum((edge - ep.abs(d)) / ep.abs(step) + 0.5, 0.0), 1.0)
    return ep.where(edge > 0, linear, ep.ones_like(linear))


def expand_rows(pairf, rows, *, dtype):
    """Per-row inputs (a dict of (n_rows,) tensors named as :data:`induce_layout.ROW_FIELDS`) from the stacked per-pair
    inputs ``pairf`` (n_pairs, len(PAIR_FIELDS)) of :func:`pair_inputs` and the rows' in-pad sample (i, j).

    rows: dict with int tensors pair, i, j and float ``valid`` (0 on padded rows). The z samples of row r are
    k = 0..n_z-1 with weight coef exp(-(q0 + q1 k + q2 k^2)) (erf(u_len - u) + erf(u)), u = u0 + u1 k, and
    arrival time (|k h_z - z_an| - 0.5) / vdrift + delay. (:func:`larnd_diff.sim.fused_scalars.expand_row` is
    the same arithmetic in the kernels, with its hand-written gradient.)
    """
    per_row = ops.gather(pairf, rows["pair"], 0)                     # one gather of every per-pair value
    col = {name: per_row[:, c] for c, name in enumerate(PAIR_FIELDS)}
    x_i = col["x0"] + ops.cast(rows["i"], dtype) * col["step_x"]
    y_j = col["y0"] + ops.cast(rows["j"], dtype) * col["step_y"]
    weight = (pad_edge_weight(col["x_p"] - x_i, col["step_x"], col["edge"])
              * pad_edge_weight(col["y_p"] - y_j, col["step_y"], col["edge"]))
    amp, tau_fast, tau_slow, delay = current_template(ep.abs(col["x_p"] - x_i), ep.abs(col["y_p"] - y_j))
    # in-pad samples have B >= 0.087 us, C >= 1.84 us; the floor only guards padded rows
    tau_fast, tau_slow = ep.maximum(tau_fast, MIN_TAU_US), ep.maximum(tau_slow, MIN_TAU_US)
    ux, uy, uz, w_t, w_l = col["ux"], col["uy"], col["uz"], col["w_t"], col["w_l"]
    rx, ry = x_i - col["ax"], y_j - col["ay"]
    s0 = (rx * ux * w_t + ry * uy * w_t + col["rz0_uz_wl"]) / col["two_a"]
    e0x, e0y, e0z = rx - s0 * ux, ry - s0 * uy, col["rz0"] - s0 * uz
    e1x, e1y, e1z = col["e1x"], col["e1y"], col["e1z"]
    return dict(q0=(e0x * e0x + e0y * e0y) * w_t / 2 + e0z * e0z * w_l / 2,
                q1=(e0x * e1x + e0y * e1y) * w_t + e0z * e1z * w_l,
                q2=col["q2"], u0=col["sqrt_a"] * s0, u1=col["u1"],          # erf arguments sqrt(a) s*(k)
                u_len=col["u_len"], coef=col["norm"] * rows["valid"] * weight, h_z=col["h_z"], z_an=col["z_an"],
                vdrift=col["vdrift"], delay=delay, tau_fast=tau_fast, tau_slow=tau_slow, amp=amp)


def stack_pair_inputs(g, *, grid):
    """:func:`pair_inputs` stacked in :data:`PAIR_FIELDS` order, (n_pairs, len(PAIR_FIELDS))."""
    p = pair_inputs(g, grid=grid)
    return ep.stack([p[name] for name in PAIR_FIELDS], axis=1)


def row_inputs(g, rows, *, grid, dtype):
    """Per-row inputs of the entry loop, a dict of (n_rows,) tensors named as :data:`induce_layout.ROW_FIELDS`:
    :func:`expand_rows` of :func:`pair_inputs`. Everything that depends on the row only (not on the z sample or
    the tick) is computed here."""
    return expand_rows(stack_pair_inputs(g, grid=grid), rows, dtype=dtype)


def entry_waveforms(f, rows, *, n_pairs, n_rows, n_z, width, dt, sharpness, k_fast, k_slow, dtype,
                    straight_through=False):
    """Induced charge per tick (electrons) of a block of pairs on their windows, (n_pairs, width), from the
    per-row inputs ``f`` of :func:`row_inputs` (EagerPy: the portable implementation of the fused kernels).

    rows: dict with int tensors pair, n_z, n_win and float t0 (us) per row. ``sharpness`` None = hard stop; a
    number = sigmoid onset with correction windows of k_fast / k_slow ticks (fast / slow exponential), in the
    gradient only with ``straight_through`` (the corrections' value is taken out again).
    """
    rp = rows["pair"]
    hz, z_an, vd = f["h_z"], f["z_an"], f["vdrift"]
    amp, tau_fast, tau_slow, delay = f["amp"], f["tau_fast"], f["tau_slow"], f["delay"]
    t0, n_win = rows["t0"], rows["n_win"]
    mask_k = ops.cast(ops.asarray(rp, np.arange(n_z), "int64")[None, :] < rows["n_z"][:, None], dtype)

    # ---- entries (row, k): charge weight, arrival time, bucket tick
    k = ops.asarray(hz, np.arange(n_z, dtype=np.float64), dtype)[None, :]
    gauss = ep.exp(-(f["q0"][:, None] + k * (f["q1"][:, None] + k * f["q2"][:, None])))
    u = f["u0"][:, None] + k * f["u1"][:, None]
    weight = gauss * (ops.erf(f["u_len"][:, None] - u) + ops.erf(u)) * (f["coef"][:, None] * mask_k)
    t_s = (ep.abs(k * hz[:, None] - z_an[:, None]) - 0.5) / vd[:, None] + delay[:, None]
    m_raw = ops.cast(ops.ceil(ops.stop_gradient((t_s - t0[:, None]) / dt)), "int64") - 1
    arrived = m_raw >= 0
    m = ep.minimum(ep.maximum(m_raw, 0), (n_win - 1)[:, None])
    lag = ep.where(arrived, t_s - (t0[:, None] + ops.cast(m, dtype) * dt), 0.0)   # in (0, dt] unless clamped
    weight = ep.where(arrived, weight, 0.0)

    # deposits on a reversed tick axis m' = width - 1 - m, prescaled by a^-(m' mod BLOCK) for the block scan
    m_rev = (width - 1) - m
    j_rev = ops.cast(m_rev % BLOCK, dtype)
    flat = (ops.asarray(rp, np.arange(n_rows), "int64")[:, None] * width + m_rev).reshape((-1,))
    vals = [(weight * ep.exp((j_rev * dt - lag) / tau[:, None]) * (frac / tau)[:, None]).reshape((-1,))
            for frac, tau in ((amp, tau_fast), (1 - amp, tau_slow))]
    d_all = ops.scatter_add(ep.zeros(weight, (2 * n_rows * width,)), ep.concatenate([flat, flat + n_rows * width]),
                            ep.concatenate(vals)).reshape((2 * n_rows, width))
    f_all = discounted_cumsum_prescaled(d_all, ep.concatenate([-dt / tau_fast, -dt / tau_slow], axis=0))
    wave_rev = ops.segment_sum(f_all[:n_rows] + f_all[n_rows:], rp, n_pairs)
    wave = ep.flip(wave_rev, axis=1).reshape((n_pairs * width,))

    if sharpness is not None:
        idx_all, corr_all = [], []
        pair_base = (rp * width)[:, None]
        for frac, tau, k_side in ((amp, tau_fast, k_fast), (1 - amp, tau_slow, k_slow)):
            base = weight * (frac / tau)[:, None]
            # the row's own window (as the fused kernels): ceil(tol tau / (s dt)) + 1 ticks, at most k_side
            k_row = ops.cast(ops.ceil(ops.stop_gradient(ONSET_TOLERANCE * tau / (sharpness * dt))), "int64") + 1
            for d in range(-k_side + 1, k_side + 1):
                n = m_raw + d
                ok = ep.logical_and(ep.logical_and(n >= 0, n < n_win[:, None]),
                                    ep.logical_and(-k_row < d, k_row >= d)[:, None])
                y = (t_s - (t0[:, None] + ops.cast(n, dtype) * dt)) / tau[:, None]
                soft = ops.sigmoid(sharpness * y) * ep.exp(-ep.maximum(y, -10.0))
                hard = ep.exp(-ep.maximum(y, 0.0)) if d <= 0 else 0.0
                corr = ep.where(ok, base * (soft - hard), 0.0)
                if straight_through:
                    corr = corr - ops.stop_gradient(corr)
                corr_all.append(corr.reshape((-1,)))
                idx_all.append((pair_base + ep.minimum(ep.maximum(n, 0), width - 1)).reshape((-1,)))
        wave = ops.scatter_add(wave, ep.concatenate(idx_all), ep.concatenate(corr_all))
    return wave.reshape((n_pairs, width))


def _kernel_args(dt, sharpness, k_fast, k_slow, straight_through):
    """(gradient, value) scalar arguments of the fused kernels: the value's onset is the hard stop when the
    onset is straight-through."""
    args = (float(dt), sharpness, int(k_fast), int(k_slow))
    return args, (args if not straight_through else (float(dt), None, int(k_fast), int(k_slow)))


def fused_pair_waveforms(backend_name, pairf, rows, *, n_pairs, width, dt, sharpness, k_fast, k_slow,
                         straight_through=False):
    """The fused CPU kernels on one block of rows, from the stacked per-pair inputs ``pairf`` of
    :func:`stack_pair_inputs`: the rows are expanded on the host (``fused.expand_rows``, the arithmetic of
    :func:`expand_rows`) and the gradient comes back per pair, so no per-row tensor exists in the framework.

    rows: int tensors pair, i, j, n_z, n_win and float valid, t0 per row (no gradient). ``straight_through``:
    the value with the hard stop, the gradient with the sigmoid onset of ``sharpness``.
    """
    from larnd_diff.sim import fused

    args, value_args = _kernel_args(dt, sharpness, k_fast, k_slow, straight_through)
    consts = [rows[k].raw for k in ("pair", "i", "j", "valid", "n_z", "n_win", "t0")]

    def forward(x, pair, i, j, valid, n_z, n_win, t0):
        return fused.pair_forward(x, fused.RowLayout(pair, n_z, n_win, t0, n_pairs, width), i, j, valid,
                                  *value_args)

    def backward(x, pair, i, j, valid, n_z, n_win, t0, g):
        return fused.pair_backward(x, fused.RowLayout(pair, n_z, n_win, t0, n_pairs, width), i, j, valid, *args, g)

    op = ops.get_backend(backend_name).host_vjp(forward, backward, (n_pairs, width))
    return ep.astensor(op(pairf.raw, *consts))


def fused_charge(backend_name, pairf, table, t0, groups, *, n_rows, n_ticks, dt, sharpness, k_fast, k_slow,
                 target: str = "cpu", straight_through: bool = False):
    """Induced charge per tick (electrons) of every output row, (n_rows, n_ticks), from the stacked per-pair
    inputs ``pairf`` of :func:`stack_pair_inputs`, in one host call (``fused.charge_forward``, its gradient
    ``fused.charge_backward``): rows expanded, waveforms evaluated and placed on the rows' tick axis on the host.

    table (n_pairs, len(induce_layout.PAIR_TABLE)) int64 and t0 (n_pairs,) float64 us: NumPy host data of the pairs;
    groups: [(first, stop, width)] consecutive pairs evaluated together on the host (the GPU takes the whole
    event in one launch: no scratch to bound). For eagerly executed backends (the
    host data are closed over, not operands: under jax.jit use :func:`fused_pair_waveforms` per block).
    ``target`` "cuda": torch tensors on a GPU, the same steps in one numba-cuda kernel launch per pass
    (:func:`larnd_diff.sim.fused_cuda.charge_forward`), the host integers copied to the GPU once per call.
    ``straight_through``: the value with the hard stop, the gradient with the sigmoid onset of ``sharpness``.
    """
    from larnd_diff.sim import fused

    args, value_args = _kernel_args(dt, sharpness, k_fast, k_slow, straight_through)
    table = np.ascontiguousarray(table, np.int64)
    t0 = np.ascontiguousarray(t0, np.float64)
    groups = [(int(a), int(b), int(w)) for a, b, w in groups]
    if target == "cuda":
        from larnd_diff.sim import fused_cuda

        layout = fused_cuda.EventLayout(table, t0, upload=lambda a: ops.asarray(pairf, a).raw)
        op = ops.get_backend(backend_name).device_vjp(
            lambda x, out: fused_cuda.charge_forward(x, layout, *value_args, out),
            lambda x, g, dx: fused_cuda.charge_backward(x, layout, *args, g, dx), (int(n_rows), int(n_ticks)))
        return ep.astensor(op(pairf.raw))

    def forward(x):
        return fused.charge_forward(x, table, t0, groups, n_rows, n_ticks, *value_args)

    def backward(x, g):
        return fused.charge_backward(x, table, t0, groups, *args, g)

    op = ops.get_backend(backend_name).host_vjp(forward, backward, (int(n_rows), int(n_ticks)))
    return ep.astensor(op(pairf.raw))


__all__ = ["current_template", "line_charge_norm", "line_integral",
           "discounted_reverse_cumsum", "smooth_window_ticks", "pair_geometry", "pair_inputs",
           "stack_pair_inputs", "expand_rows", "row_inputs", "entry_waveforms",
           "fused_pair_waveforms", "fused_charge"]
