"""Integer geometry of the induced-current stage, planned on the host with NumPy.

The reference computes the same per chunk: :mod:`larnd_diff.reference.pixels` (pixels under a segment),
:mod:`larnd_diff.reference.induce` (time windows) and :mod:`larnd_diff.reference.scalars` (z interval, impact
tolerance, sampling grid). (Q) marks a larnd-sim quirk kept on purpose, as in the reference.

Everything here is *structure*: which pixels lie under each segment, which (segment, pixel) pairs overlap, the
in-pad sample ranges, the number of z samples and the tick windows. It is computed from detached float64 values
(no gradient flows through pixel choice, window sizes or sample counts: they are integers) and handed to
:mod:`larnd_diff.sim.induce`, which evaluates the differentiable charge and current on that structure.

Conventions (simulation frame, z = drift): lengths in cm, times in us, pixel ids (I, J) with I = ix + n_x * plane.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Target spacing (cm) of the z samples (larnd-sim writes it as t_sampling / 2 but uses it as a length).
Z_STEP_CM = 0.05
#: larnd-sim's fewest z samples of a pair
N_Z_MIN = 30
#: Upper bound (us) of the arrival delay t_s - t0 of the current model over the quarter pad (4.032 us at a corner).
MAX_ARRIVAL_DELAY_US = 4.04
#: Largest current-model time constant (us) over the quarter pad (C at a corner, 3.7497 us).
MAX_TIME_CONSTANT_US = 3.76
#: Largest fast time constant B (us) over the quarter pad (0.679 us at the centre).
MAX_FAST_CONSTANT_US = 0.68


# ---------------------------------------------------------------------------------------------- chunks
def chunk_index(event_id: np.ndarray, chunk_size: int | None):
    """Processing order of larnd-sim: events ascending, each split into chunks of ``chunk_size`` consecutive rows.

    Returns (order, chunk_of_segment, chunk_event): ``order`` lists segment rows chunk by chunk; chunk ids
    are consecutive integers in processing order; ``chunk_event`` (n_chunks,) the eventID of each chunk.
    """
    event_id = np.asarray(event_id)
    order = np.argsort(event_id, kind="stable")
    chunk = np.empty(len(event_id), np.int64)
    chunk_event = []
    n_chunks = 0
    if len(order):
        ev_sorted = event_id[order]
        starts = np.flatnonzero(np.r_[True, ev_sorted[1:] != ev_sorted[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for a, b in zip(starts, ends):
            size = (b - a) if not chunk_size else int(chunk_size)
            for c0 in range(a, b, size):
                chunk[order[c0:min(c0 + size, b)]] = n_chunks
                chunk_event.append(ev_sorted[a])
                n_chunks += 1
    return order, chunk, np.asarray(chunk_event, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- pixels
def pixel_of_point(x, y, plane, detector):
    """(I, J) of points (x, y) cm in TPC ``plane`` by floor division (Python ``//`` semantics, as larnd-sim)."""
    b = detector.tpc_borders
    pitch = detector.pixel_pitch
    i = np.floor_divide(x - b[plane, 0, 0], pitch).astype(np.int64) + detector.n_pixels[0] * plane
    j = np.floor_divide(y - b[plane, 1, 0], pitch).astype(np.int64)
    return i, j


def pixel_center(i, j, detector):
    """Centre (x, y) cm of pixels (I, J); the plane is taken from I (the folded-plane convention)."""
    n_x = detector.n_pixels[0]
    plane = np.floor_divide(i, n_x)
    b = detector.tpc_borders
    pitch = detector.pixel_pitch
    x = (i - n_x * plane) * pitch + b[plane, 0, 0] + pitch / 2
    y = j * pitch + b[plane, 1, 0] + pitch / 2
    return x, y


def bresenham_active_pixels(i0, j0, i1, j1, n_y):
    """Active pixels of every segment: integer Bresenham from (i0, j0) to (i1, j1), vectorised over segments.

    Error term D = 2m - M, step the minor axis when D >= 0 (ties: J is the major axis when |dI| = |dJ|).
    Returns (seg, I, J) of the valid slots (I >= 0 and 0 <= J <= n_y, larnd-sim's test), in slot order.
    """
    di, dj = i1 - i0, j1 - j0
    si = np.where(di > 0, 1, -1)
    sj = np.where(dj > 0, 1, -1)
    major_i = np.abs(di) > np.abs(dj)
    big = np.where(major_i, np.abs(di), np.abs(dj))
    small = np.where(major_i, np.abs(dj), np.abs(di))
    n = len(i0)
    err = 2 * small - big
    offset = np.zeros(n, np.int64)
    segs, ii, jj = [], [], []
    for s in range(int(big.max()) + 1 if n else 0):
        live = s <= big
        i = np.where(major_i, i0 + s * si, i0 + offset * si)
        j = np.where(major_i, j0 + offset * sj, j0 + s * sj)
        ok = live & (i >= 0) & (j >= 0) & (j <= n_y)
        idx = np.flatnonzero(ok)
        segs.append(idx)
        ii.append(i[idx])
        jj.append(j[idx])
        step = err >= 0
        offset = offset + step
        err = err - 2 * big * step + 2 * small
    if not segs:
        e = np.empty(0, np.int64)
        return e, e, e
    return np.concatenate(segs), np.concatenate(ii), np.concatenate(jj)


def neighbourhood_radius(sigma_T_max: float, pitch: float) -> int:
    """larnd-sim's neighbourhood radius R = ceil(5 sigma_T,max / p) + 1 (2 for module0)."""
    return int(math.ceil(5 * float(sigma_T_max) / pitch)) + 1


def neighbour_pairs(seg, i, j, radius, detector):
    """Distinct (segment, I, J) within +-radius of the active pixels, with larnd-sim's range checks.

    A neighbour is kept if I >= 0, 0 <= J < n_y and floor(I / n_x) < number of TPCs (the plane is folded into I,
    so a neighbour beyond the last column of TPC 0 is a TPC-1 pixel (Q), as in
    :func:`larnd_diff.reference.pixels.neighbourhood_pixels`). Sorted by (segment, I, J).
    """
    n_x, n_y = detector.n_pixels
    off = np.arange(-radius, radius + 1)
    a, b = np.meshgrid(off, off, indexing="ij")
    ni = (i[:, None] + a.reshape(1, -1)).reshape(-1)
    nj = (j[:, None] + b.reshape(1, -1)).reshape(-1)
    ns = np.repeat(seg, a.size)
    ok = (ni >= 0) & (nj >= 0) & (nj < n_y) & (np.floor_divide(ni, n_x) < detector.n_tpcs)
    ns, ni, nj = ns[ok], ni[ok], nj[ok]
    key = (ns * (detector.n_tpcs * n_x + 1) + ni) * (n_y + 1) + nj
    _, first = np.unique(key, return_index=True)
    return ns[first], ni[first], nj[first]


# ---------------------------------------------------------------------------------------------- z interval
def z_interval(xs, ys, zs, xe, ye, ze, x_p, y_p, tolerance):
    """larnd-sim's z_interval (:func:`larnd_diff.reference.scalars.z_interval`) in float64, vectorised over
    (segment, pixel) pairs.

    Returns (overlap, z_lo, z_hi, branch): the z range of the segment's infinite line that passes within
    ``tolerance`` (cm, xy distance) of the pixel centre; ``branch`` = 0 (foot inside), 1 (clamped to the
    smaller-x end), 2 (clamped to the larger-x end). No overlap when x_start == x_end or doca >= tolerance.
    """
    swap = xe < xs
    sx, sy, sz = np.where(swap, xe, xs), np.where(swap, ye, ys), np.where(swap, ze, zs)
    fx, fy, fz = np.where(swap, xs, xe), np.where(swap, ys, ye), np.where(swap, zs, ze)
    valid = xs != xe
    with np.errstate(divide="ignore", invalid="ignore"):
        dxf = np.where(valid, fx - sx, 1.0)
        m = (fy - sy) / dxf
        q = (fx * sy - sx * fy) / dxf
        xstar = (x_p + m * y_p - m * q) / (1 + m * m)
        before, after = xstar < sx, xstar > fx
        doca_line = np.abs(m * x_p - y_p + q) / np.sqrt(1 + m * m)
        doca = np.where(before, np.hypot(x_p - sx, y_p - sy),
                        np.where(after, np.hypot(x_p - fx, y_p - fy), doca_line))
        xstar = np.where(before, sx, np.where(after, fx, xstar))
        z_poca = sz + (xstar - sx) * (fz - sz) / dxf
        overlap = valid & (tolerance > doca)
        length_xy = np.hypot(fx - sx, fy - sy)
        h = np.sqrt(np.where(overlap, tolerance ** 2 - doca ** 2, 0.0))
        half = h * np.abs(fz - sz) / np.where(length_xy > 0, length_xy, 1.0)
    branch = np.where(before, 1, np.where(after, 2, 0))
    return overlap, z_poca - half, z_poca + half, branch


def tolerance_of(sigma_T, pitch):
    """Impact-factor tolerance tau = max(10 sqrt(2) sigma_T, p sqrt(2)) in cm
    (:func:`larnd_diff.reference.scalars.impact_tolerance`)."""
    return 2 * np.maximum(5 * math.sqrt(2) * sigma_T, pitch * math.sqrt(2) / 2)


def n_z_samples(z_lo, z_hi, sigma_L, fixed_step: bool = False):
    """Number of z samples N_z = max(30, ceil(|z_hi - z_lo + 8 sigma_L| / 0.05 cm)), as in
    :func:`larnd_diff.reference.scalars.pair_current` (the points span the range, step range / (N_z - 1)).
    ``fixed_step`` (``Relaxation.z_step="fixed"``): max(30, ceil(range / 0.05 cm) + 1), the points of a 0.05 cm
    step from the range's start covering it (:func:`larnd_diff.sim.induce.z_step_of`)."""
    steps = np.ceil(np.abs(z_hi - z_lo + 8 * sigma_L) / Z_STEP_CM)
    return np.maximum(N_Z_MIN, steps + 1 if fixed_step else steps).astype(np.int64)


# ---------------------------------------------------------------------------------------------- sampling grid
def _in_pad_range(origin, sign, step, sigma_T, centre, half_width, n_pts):
    first = np.zeros(len(origin), np.int64)
    count = np.zeros(len(origin), np.int64)
    for p in range(len(origin)):
        for k in range(n_pts):
            # the operations of larnd-sim's sample position, in its order: origin + sign (k step - 4 sigma_T)
            if abs(centre[p] - (origin[p] + sign[p] * (k * step[p] - 4 * sigma_T[p]))) <= half_width[p]:
                if count[p] == 0:
                    first[p] = k
                count[p] += 1
    return first, count


try:
    from numba import njit

    _in_pad_range = njit(cache=True)(_in_pad_range)
except ImportError:  # pragma: no cover - numba is a hard dependency of the package
    pass


def in_pad_range(origin, sign, step, sigma_T, centre, half_width, n_pts):
    """(first, count) of the sampling grid's positions origin + sign (k step - 4 sigma_T), k = 0..n_pts-1, within
    ``half_width`` (cm, a number or one per pair) of the pixel centre, per pair (one axis; float64 arrays, cm).
    In-pad samples are contiguous (the grid is monotone); a NaN grid has none. Comparisons in the reference's
    float64 arithmetic."""
    args = [np.ascontiguousarray(a, np.float64) for a in (origin, sign, step, sigma_T, centre)]
    width = np.ascontiguousarray(np.broadcast_to(np.asarray(half_width, np.float64), args[0].shape))
    return _in_pad_range(*args, width, int(n_pts))


# ---------------------------------------------------------------------------------------------- time windows
def signal_windows(t_start, t_end, vdrift, detector, on_placement: bool = False):
    """Signal windows of larnd-sim (:func:`larnd_diff.reference.induce.signal_window`,
    :func:`larnd_diff.reference.induce.first_tick_time`), float64 on the host.

    Returns (placement_tick, eval_start_us, n_ticks): placement tick = round_even(w_start / dt) with
    w_start = max(0, round_even((t_start - pad)/dt) dt); evaluation start T0 = max(0, floor((t_start - pad)/dt) dt)
    (floor, not round: the quirk); n_ticks = ceil((w_end - w_start)/dt) per segment (time_max = its chunk maximum).
    ``on_placement`` (``Relaxation.tick_phase="averaged"``): T0 = placement dt for every segment (the reference's
    floor puts it 0 or 1 tick earlier, by the phase of t_start; :func:`larnd_diff.sim.charge.average_tick_phase`
    then takes the mean of the two).
    """
    dt, pad = detector.t_sampling, detector.time_padding
    lo, hi = detector.time_interval
    w_end = np.minimum(hi, np.round((t_end + pad + 0.5 / vdrift) / dt) * dt)
    w_start = np.maximum(lo, np.round((t_start - pad) / dt) * dt)
    placement = np.round(w_start / dt).astype(np.int64)
    t0 = placement * dt if on_placement else np.maximum(lo, np.floor((t_start - pad) / dt) * dt)
    n_ticks = np.ceil((w_end - w_start) / dt).astype(np.int64)
    return placement, t0, n_ticks


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class PairPlan:
    """Host-side structure of one simulate call: (segment, pixel) pairs that overlap, sorted for evaluation.

    Per pair p (arrays of length n_pairs): seg (segment row), out_row (row of the output pixel list), pixel
    centre x_p / y_p (cm), branch of z_interval, n_z, in-pad x sample range [ix0, ix0 + nx) and y range
    [iy0, iy0 + ny) of the 30 x 30 grid, eval_start (T0, us), placement (event tick of window tick 0) and
    n_win (ticks of the pair's window that can carry current). nan_pair marks pairs of segments parallel to the
    anode (z_start = z_end) whose current is NaN in the reference (Q;
    :func:`larnd_diff.reference.scalars.line_point_at_z`).
    Output rows: rows (n_rows, 2) pixel ids, row_event (eventID), row_chunk; sorted (chunk order, I, J).
    """

    seg: np.ndarray
    out_row: np.ndarray
    x_p: np.ndarray
    y_p: np.ndarray
    branch: np.ndarray
    n_z: np.ndarray
    ix0: np.ndarray
    nx: np.ndarray
    iy0: np.ndarray
    ny: np.ndarray
    eval_start: np.ndarray
    placement: np.ndarray
    n_win: np.ndarray
    nan_pair: np.ndarray
    rows: np.ndarray
    row_event: np.ndarray
    row_chunk: np.ndarray
    n_ticks_event: int

    @property
    def n_pairs(self) -> int:
        return len(self.seg)


def plan_pairs(seg, detector, relaxation, chunk_size, tilt_flat: float = 0.0, smooth_ticks: int = 0) -> PairPlan:
    """Build the :class:`PairPlan` from detached per-segment float64 values.

    ``seg``: dict of NumPy arrays: eventID, x_start, y_start, z_start, x_end, y_end, z_end (simulation frame),
    plane (int, -1 outside every TPC), sigma_T, sigma_L (cm), t_start, t_end (us), vdrift (cm/us, scalar) and
    n_electrons. ``tilt_flat`` (cm) is added to z_end of segments with z_start = z_end before the geometry (the
    smooth preset's way around the reference's NaN quirk; 0 = reference behaviour). ``smooth_ticks``: extra
    ticks after the last arrival that a relaxed onset can reach.
    """
    pitch = detector.pixel_pitch
    n_x, n_y = detector.n_pixels
    n_pts = detector.sampled_points
    dt = detector.t_sampling
    vdrift = float(seg["vdrift"])
    plane = seg["plane"].astype(np.int64)
    xs, ys, zs = seg["x_start"], seg["y_start"], seg["z_start"]
    xe, ye, ze = seg["x_end"], seg["y_end"], seg["z_end"]
    flat = zs == ze
    if tilt_flat:
        ze = np.where(flat, ze + tilt_flat, ze)
    sigma_T, sigma_L = seg["sigma_T"], seg["sigma_L"]

    _, chunk, _ = chunk_index(seg["eventID"], chunk_size)
    n_chunks = int(chunk.max()) + 1 if len(chunk) else 0
    placement, t0, n_ticks = signal_windows(seg["t_start"], seg["t_end"], vdrift, detector,
                                            on_placement=relaxation.tick_phase == "averaged")
    time_max = np.zeros(n_chunks, np.int64)
    np.maximum.at(time_max, chunk, n_ticks)

    # ---- pixels under each segment, chunk by chunk (the radius is a chunk maximum)
    inside = plane >= 0
    all_s, all_i, all_j = [], [], []
    for c in range(n_chunks):
        members = np.flatnonzero((chunk == c) & inside)
        if not len(members):
            continue
        p = plane[members]
        i0, j0 = pixel_of_point(xs[members], ys[members], p, detector)
        i1, j1 = pixel_of_point(xe[members], ye[members], p, detector)
        a_s, a_i, a_j = bresenham_active_pixels(i0, j0, i1, j1, n_y)
        radius = neighbourhood_radius(sigma_T[chunk == c].max(), pitch)
        s_, i_, j_ = neighbour_pairs(members[a_s], a_i, a_j, radius, detector)
        all_s.append(s_)
        all_i.append(i_)
        all_j.append(j_)
    cat = (lambda xs_: np.concatenate(xs_) if xs_ else np.empty(0, np.int64))
    ps, pi, pj = cat(all_s), cat(all_i), cat(all_j)

    # ---- overlap test (z_interval) per pair
    x_p, y_p = pixel_center(pi, pj, detector)
    tol = tolerance_of(sigma_T[ps], pitch)
    overlap, z_lo, z_hi, branch = z_interval(xs[ps], ys[ps], zs[ps], xe[ps], ye[ps], ze[ps], x_p, y_p, tol)
    # pairs without charge are skipped, except the reference's NaN pairs (segments parallel to the anode):
    # their NaN current silences the pixel whatever the charge (Q; reference/scalars.py, line_point_at_z)
    keep = overlap & ((seg["n_electrons"][ps] != 0) | (flat[ps] & (tilt_flat == 0)))
    ps, pi, pj, x_p, y_p = ps[keep], pi[keep], pj[keep], x_p[keep], y_p[keep]
    z_lo, z_hi, branch = z_lo[keep], z_hi[keep], branch[keep]

    # ---- sampling grid: in-pad x / y sample ranges
    s_T, s_L = sigma_T[ps], sigma_L[ps]
    za, zb = np.minimum(zs[ps], ze[ps]), np.maximum(zs[ps], ze[ps])
    a_first = zs[ps] < ze[ps]
    ax, ay = np.where(a_first, xs[ps], xe[ps]), np.where(a_first, ys[ps], ye[ps])
    bx, by = np.where(a_first, xe[ps], xs[ps]), np.where(a_first, ye[ps], ys[ps])
    az = np.where(a_first, zs[ps], ze[ps])
    dz = zb - za
    nan_pair = dz == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_x = (bx - ax) / dz
        slope_y = (by - ay) / dz
        xa_, xb_ = ax + (z_lo - az) * slope_x, ax + (z_hi - az) * slope_x
        ya_, yb_ = ay + (z_lo - az) * slope_y, ay + (z_hi - az) * slope_y
        h_x = (np.abs(xb_ - xa_) + 8 * s_T) / (n_pts - 1)
        h_y = (np.abs(yb_ - ya_) + 8 * s_T) / (n_pts - 1)
    sgn_x = np.where(bx - ax >= 0, 1.0, -1.0)
    sgn_y = np.where(by - ay >= 0, 1.0, -1.0)
    # a linear pad edge also weighs the points within half a step outside the pad (sim/fused_scalars.py)
    linear = relaxation.pad_edge == "linear"
    ix0, nx = in_pad_range(xa_, sgn_x, h_x, s_T, x_p, pitch / 2 + (np.abs(h_x) / 2 if linear else 0.0), n_pts)
    iy0, ny = in_pad_range(ya_, sgn_y, h_y, s_T, y_p, pitch / 2 + (np.abs(h_y) / 2 if linear else 0.0), n_pts)
    # in-pad samples are contiguous (the grid is monotone); NaN pairs keep every sample (comparisons fail)
    nx = np.where(nan_pair, n_pts, nx)
    ny = np.where(nan_pair, n_pts, ny)
    ix0 = np.where(nan_pair, 0, ix0)
    iy0 = np.where(nan_pair, 0, iy0)
    n_z = np.where(nan_pair, n_pts, n_z_samples(z_lo, z_hi, s_L, fixed_step=relaxation.z_step == "fixed"))
    live = (nx > 0) & (ny > 0)

    # ---- tick windows: the pair carries current only until its last arrival (the hard stop)
    z_a = detector.anode_z[plane[ps]]
    z_first, z_last = z_lo - 4 * s_L, z_hi + 4 * s_L
    with np.errstate(invalid="ignore"):
        t_last = np.maximum(np.abs(z_first - z_a), np.abs(z_last - z_a))
        t_last = (t_last - 0.5) / vdrift + MAX_ARRIVAL_DELAY_US
        last_tick = np.ceil((t_last - t0[ps]) / dt)
    last_tick = np.where(np.isfinite(last_tick), last_tick, 0).astype(np.int64)
    tmax = time_max[chunk[ps]]
    n_win = np.minimum(tmax, np.maximum(last_tick + 2 + smooth_ticks, 1))
    n_win = np.where(nan_pair, tmax, n_win)
    live &= n_win > 0

    sel = np.flatnonzero(live)
    ps, pi, pj = ps[sel], pi[sel], pj[sel]
    # ---- output rows: (chunk, I, J) sorted; chunk order = processing order
    key = (chunk[ps] * (detector.n_tpcs * n_x + 1) + pi) * (n_y + 1) + pj
    uniq, inverse = np.unique(key, return_inverse=True)
    first = np.zeros(len(uniq), np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]
    rows = np.stack([pi[first], pj[first]], axis=1)
    row_chunk = chunk[ps[first]]
    return PairPlan(
        seg=ps, out_row=inverse.reshape(-1).astype(np.int64), x_p=x_p[sel], y_p=y_p[sel], branch=branch[sel],
        n_z=n_z[sel], ix0=ix0[sel], nx=nx[sel], iy0=iy0[sel], ny=ny[sel], eval_start=t0[ps],
        placement=placement[ps], n_win=n_win[sel], nan_pair=nan_pair[sel], rows=rows,
        row_event=np.asarray(seg["eventID"])[ps[first]].astype(np.int64), row_chunk=row_chunk,
        n_ticks_event=detector.n_ticks_event)


__all__ = ["PairPlan", "plan_pairs", "chunk_index", "pixel_of_point", "pixel_center", "bresenham_active_pixels",
           "neighbour_pairs", "neighbourhood_radius", "z_interval", "tolerance_of", "n_z_samples", "signal_windows"]
