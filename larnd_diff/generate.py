"""Track generator without Geant4: straight charged tracks stepped through the TPCs with Bethe–Bloch energy loss.

Model (every choice below is deliberate and documented; nothing here claims Geant4 fidelity)
------------------------------------------------------------------------------------------------
* **Kinematics.** Each primary starts on the surface of the box that bounds all TPC volumes, at a point that lies
  on a TPC face (points on the cathode gap strip are rejected and redrawn), and points inwards. Directions are
  isotropic *flux* through the surface: cos-weighted (Lambert, ``cos(theta) = sqrt(u)`` to the inward normal),
  which is what an isotropic particle field crossing a surface gives; ``angular="uniform"`` draws uniformly over
  the inward hemisphere instead. Entry faces are chosen in proportion to their area. Tracks are straight lines:
  no multiple Coulomb scattering, no hadronic interactions, no decays, no secondaries.
* **Energies.** ``energy_gev`` / ``kinetic_energy_gev`` are **kinetic** energies. Masses and charges come from the
  ``particle`` package (PDG data).
* **Mean energy loss.** Bethe–Bloch with the density-effect correction (PDG Review "Passage of particles through
  matter", eqs. 34.5 and 34.7; Sternheimer parameters of liquid argon from the PDG atomic and nuclear properties
  table: I = 188.0 eV, Z/A = 18/39.948, -C = 5.2146, x0 = 0.2, x1 = 3.0, a = 0.19559, k = 3.0, delta0 = 0;
  density 1.396 g/cm^3 unless the detector or the caller gives another). By default the **restricted** form
  (PDG eq. 34.12) with ``delta_cut_mev = 1`` MeV is used: energy transfers above 1 MeV would make delta rays
  that Geant4/edep-sim records as separate tracks, and the muon segments of edep-sim files carry the restricted
  loss (1.96 MeV/cm on average in ``module0_corsika.h5``, against 2.29 MeV/cm unrestricted at 1 GeV). This
  generator does not create delta rays: the particle slows down with the restricted loss and deposits all of it,
  so a stopping particle deposits exactly its kinetic energy, while the range of an energetic muon comes out a
  few per cent too long. For protons and pions below ~1 GeV, W_max < 1 MeV for most of the range and the
  restricted and full formulas coincide. ``delta_cut_mev=None`` uses the unrestricted mean loss.
* **Stepping.** Steps are at most ``step_cm`` long, end on TPC boundaries, and are shortened so that the mean loss
  of one step is at most ``max_loss_fraction`` of the kinetic energy (never below ``min_step_cm``); the loss of a
  step is evaluated at the step's midpoint energy (second-order). Below beta*gamma = 0.05, where the Bethe formula
  fails (no shell corrections), the rest of the energy is deposited in one last step of length T/(2 S(T)) (the
  residual range when S ~ 1/beta^2 ~ 1/T). The Bragg rise therefore appears at the end of stopping tracks.
* **Gaps.** Between two TPCs (e.g. the module0 cathode gap, 0.32 cm) the particle keeps losing energy (treated as
  LAr) but deposits nothing in the table; the truth table records that energy as ``lost_outside_mev``. Every
  segment has both endpoints inside one TPC box.
* **Fluctuations** (``fluctuations=True``): the loss of each step is drawn from a Gaussian with the Bohr variance
  sigma^2 = xi * T_up * (1 - beta^2 / 2), xi = (K/2) (Z/A) z^2 rho dx / beta^2, T_up = min(delta cut, W_max),
  truncated to [0, T]. With the hard collisions above the delta cut excluded, this is the Gaussian limit of the
  Vavilov distribution; it lacks the residual asymmetry of thin steps (kappa = xi / T_up < 1), which is accepted.

Output segments are in :data:`larnd_diff.io.SEGMENT_DTYPE`, simulation frame (z = drift), one row per step:
eventID, trackID (1, 2, ... inside an event), pdgId, start/end/midpoint, dx = step length (cm), dE (MeV),
dEdx = dE/dx (MeV/cm); times and simulation outputs are zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detector import Detector, resolve_detector
from .io import SEGMENT_DTYPE

#: K = 4 pi N_A r_e^2 m_e c^2 in MeV cm^2 / mol (PDG Review, Table 34.1).
K_MEV_CM2_PER_MOL = 0.307075
#: Below this beta*gamma the Bethe formula is not used (PDG: valid down to beta*gamma ~ 0.05).
LOWEST_BETA_GAMMA = 0.05
#: Aliases accepted for particle names besides the ``particle`` package's own names (e.g. "p", "mu-", "pi+").
_SPECIES_ALIASES = {"proton": "p", "antiproton": "p~", "muon": "mu-", "electron": "e-", "positron": "e+"}


@dataclass(frozen=True)
class Medium:
    """Stopping-power constants of a medium (PDG atomic and nuclear properties table); energies in MeV."""

    name: str
    z_over_a: float              # <Z/A> in mol/g
    mean_excitation_mev: float   # I
    density_g_cm3: float
    c_bar: float                 # Sternheimer -C
    x0: float
    x1: float
    a: float
    k: float
    delta0: float = 0.0          # density effect below x0 (0 for insulators)


def liquid_argon(density_g_cm3: float | None = None) -> Medium:
    """Liquid argon (PDG table: I = 188.0 eV, Z/A = 18/39.948, rho = 1.396 g/cm^3, Sternheimer parameters)."""
    return Medium(name="liquid argon", z_over_a=18.0 / 39.948, mean_excitation_mev=188.0e-6,
                  density_g_cm3=1.396 if density_g_cm3 is None else float(density_g_cm3),
                  c_bar=5.2146, x0=0.2000, x1=3.0000, a=0.19559, k=3.0000, delta0=0.0)


def electron_mass_mev() -> float:
    from particle import Particle

    return float(Particle.from_pdgid(11).mass)


def particle_properties(species) -> tuple[int, float, float]:
    """(PDG code, mass in MeV, charge in units of e) of a species given by name (``"mu-"``, ``"pi+"``, ``"p"``
    or ``"proton"``) or PDG code, from the ``particle`` package."""
    from particle import Particle
    from particle.particle import ParticleNotFound

    try:
        if isinstance(species, (int, np.integer)):
            p = Particle.from_pdgid(int(species))
        else:
            p = Particle.from_name(_SPECIES_ALIASES.get(str(species), str(species)))
    except (ParticleNotFound, ValueError) as err:
        raise ValueError(f"unknown particle species {species!r}") from err
    if p.mass is None or p.charge is None or p.charge == 0:
        raise ValueError(f"species {species!r} ({p.name}) is not a charged particle with a known mass")
    return int(p.pdgid), float(p.mass), float(p.charge)


# --------------------------------------------------------------------------------------------------------------
# energy loss
# --------------------------------------------------------------------------------------------------------------
def beta_gamma_of(kinetic_mev, mass_mev):
    """beta*gamma = p / (M c) of a particle of kinetic energy T and mass M."""
    gamma = 1.0 + np.asarray(kinetic_mev, dtype=np.float64) / mass_mev
    return np.sqrt(np.maximum(gamma * gamma - 1.0, 0.0))


def max_energy_transfer_mev(beta_gamma, mass_mev, electron_mass=None):
    """W_max: largest kinetic energy given to a free electron in one collision (PDG eq. 34.4)."""
    me = electron_mass_mev() if electron_mass is None else electron_mass
    bg = np.asarray(beta_gamma, dtype=np.float64)
    gamma = np.sqrt(1.0 + bg * bg)
    ratio = me / mass_mev
    return 2.0 * me * bg * bg / (1.0 + 2.0 * gamma * ratio + ratio * ratio)


def density_effect_delta(beta_gamma, medium: Medium):
    """Sternheimer density-effect correction delta(beta*gamma) (PDG eq. 34.7), x = log10(beta*gamma)."""
    x = np.log10(np.maximum(np.asarray(beta_gamma, dtype=np.float64), 1e-30))
    two_ln10 = 2.0 * np.log(10.0)
    high = two_ln10 * x - medium.c_bar
    mid = high + medium.a * np.clip(medium.x1 - x, 0.0, None) ** medium.k
    low = medium.delta0 * 10.0 ** (2.0 * (x - medium.x0))
    return np.where(x >= medium.x1, high, np.where(x >= medium.x0, mid, low))


def stopping_power_mev_per_cm(kinetic_mev, mass_mev, charge, medium: Medium, delta_cut_mev: float | None = 1.0,
                              electron_mass=None):
    """Mean (restricted) energy loss -dE/dx in MeV/cm from the Bethe formula with density effect.

    ``delta_cut_mev`` = T_cut of the restricted formula (PDG eq. 34.12): only energy transfers below
    T_up = min(T_cut, W_max) count; ``None`` gives the full mean loss (PDG eq. 34.5).
    """
    me = electron_mass_mev() if electron_mass is None else electron_mass
    bg = beta_gamma_of(kinetic_mev, mass_mev)
    beta2 = bg * bg / (1.0 + bg * bg)
    wmax = max_energy_transfer_mev(bg, mass_mev, me)
    tup = wmax if delta_cut_mev is None else np.minimum(delta_cut_mev, wmax)
    log_term = 0.5 * np.log(2.0 * me * bg * bg * tup / medium.mean_excitation_mev ** 2)
    bracket = log_term - 0.5 * beta2 * (1.0 + tup / wmax) - 0.5 * density_effect_delta(bg, medium)
    per_gram = K_MEV_CM2_PER_MOL * charge ** 2 * medium.z_over_a / beta2 * bracket
    return per_gram * medium.density_g_cm3


def energy_loss_sigma_mev(kinetic_mev, mass_mev, charge, medium: Medium, step_cm,
                          delta_cut_mev: float | None = 1.0, electron_mass=None):
    """Bohr standard deviation (MeV) of the energy lost over ``step_cm``: sqrt(xi * T_up * (1 - beta^2 / 2))."""
    me = electron_mass_mev() if electron_mass is None else electron_mass
    bg = beta_gamma_of(kinetic_mev, mass_mev)
    beta2 = bg * bg / (1.0 + bg * bg)
    wmax = max_energy_transfer_mev(bg, mass_mev, me)
    tup = wmax if delta_cut_mev is None else np.minimum(delta_cut_mev, wmax)
    xi = 0.5 * K_MEV_CM2_PER_MOL * medium.z_over_a * charge ** 2 * medium.density_g_cm3 * step_cm / beta2
    return np.sqrt(xi * tup * (1.0 - 0.5 * beta2))


def lowest_bethe_kinetic_mev(mass_mev) -> np.ndarray:
    """Kinetic energy at beta*gamma = 0.05, below which the last step deposits everything that is left."""
    return mass_mev * (np.sqrt(1.0 + LOWEST_BETA_GAMMA ** 2) - 1.0)


# --------------------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------------------
def tpc_boxes(detector: Detector) -> np.ndarray:
    """(n_tpc, 3, 2) array of sorted (low, high) bounds of each TPC in cm."""
    return np.sort(detector.tpc_borders, axis=2)


def _face_basis(axis: int, side: int):
    """Inward normal and two tangents of the box face perpendicular to ``axis`` at its low (0) or high (1) side."""
    normal = np.zeros(3)
    normal[axis] = 1.0 if side == 0 else -1.0
    u = np.zeros(3)
    u[(axis + 1) % 3] = 1.0
    v = np.cross(normal, u)
    return normal, u, v


def sample_border_entries(n: int, rng: np.random.Generator, detector: Detector, angular: str = "cosine"):
    """Entry points (n, 3) on the surface of the box bounding all TPCs and inward unit directions (n, 3).

    Faces are chosen with probability proportional to their area and points uniformly on them; points that are
    not on a TPC face (the cathode-gap strip) are redrawn. ``angular="cosine"``: cos(theta) to the inward
    normal = sqrt(u) (isotropic flux through the surface); ``"uniform"``: cos(theta) = u (uniform in solid angle
    over the inward hemisphere).
    """
    if angular not in ("cosine", "uniform"):
        raise ValueError(f"angular must be 'cosine' or 'uniform', not {angular!r}")
    boxes = tpc_boxes(detector)
    lo, hi = boxes[:, :, 0].min(axis=0), boxes[:, :, 1].max(axis=0)
    size = hi - lo
    faces = [(axis, side) for axis in range(3) for side in (0, 1)]
    areas = np.array([size[(a + 1) % 3] * size[(a + 2) % 3] for a, _ in faces])
    points = np.empty((n, 3))
    dirs = np.empty((n, 3))
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        face = rng.choice(len(faces), size=m, p=areas / areas.sum())
        pts = lo + rng.random((m, 3)) * size
        u1, u2 = rng.random(m), rng.random(m)
        cos_t = np.sqrt(u1) if angular == "cosine" else u1
        sin_t = np.sqrt(np.maximum(1.0 - cos_t ** 2, 0.0))
        phi = 2.0 * np.pi * u2
        d = np.empty((m, 3))
        for f, (axis, side) in enumerate(faces):
            sel = face == f
            pts[sel, axis] = lo[axis] if side == 0 else hi[axis]
            normal, u, v = _face_basis(axis, side)
            d[sel] = (cos_t[sel, None] * normal + (sin_t[sel] * np.cos(phi[sel]))[:, None] * u
                      + (sin_t[sel] * np.sin(phi[sel]))[:, None] * v)
        on_tpc = detector.tpc_of(pts[:, 0], pts[:, 1], pts[:, 2], tolerance=0.0) >= 0
        points[todo[on_tpc]] = pts[on_tpc]
        dirs[todo[on_tpc]] = d[on_tpc]
        todo = todo[~on_tpc]
    return points, dirs


def tpc_chords(points: np.ndarray, directions: np.ndarray, detector: Detector, shrink_cm: float = 1e-5):
    """Parameter intervals [t_in, t_out] (cm along each line, t >= 0) inside each TPC box, sorted by t_in.

    Returns (t_in, t_out) of shape (n, n_tpc); unused slots are NaN. Intervals are shrunk by ``shrink_cm`` at both
    ends so that rounded endpoints stay inside the boxes.
    """
    boxes = tpc_boxes(detector)
    n, m = len(points), len(boxes)
    t_in = np.full((n, m), np.nan)
    t_out = np.full((n, m), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / directions
    for j, box in enumerate(boxes):
        t1 = (box[:, 0] - points) * inv
        t2 = (box[:, 1] - points) * inv
        parallel = directions == 0.0
        inside_slab = (points >= box[:, 0]) & (points <= box[:, 1])
        near = np.where(parallel, np.where(inside_slab, -np.inf, np.inf), np.minimum(t1, t2))
        far = np.where(parallel, np.where(inside_slab, np.inf, -np.inf), np.maximum(t1, t2))
        enter = np.maximum(near.max(axis=1), 0.0) + shrink_cm
        leave = far.min(axis=1) - shrink_cm
        ok = leave > enter
        t_in[ok, j], t_out[ok, j] = enter[ok], leave[ok]
    order = np.argsort(np.where(np.isnan(t_in), np.inf, t_in), axis=1)
    return np.take_along_axis(t_in, order, axis=1), np.take_along_axis(t_out, order, axis=1)


# --------------------------------------------------------------------------------------------------------------
# stepping
# --------------------------------------------------------------------------------------------------------------
TRUTH_DTYPE = np.dtype([
    ("eventID", "u4"), ("trackID", "u4"), ("pdgId", "i4"), ("kinetic_energy_mev", "f8"), ("mass_mev", "f8"),
    ("start", "f8", (3,)), ("direction", "f8", (3,)), ("deposited_mev", "f8"), ("lost_outside_mev", "f8"),
    ("exit_kinetic_mev", "f8"), ("stopped", "?"), ("n_segments", "i8"),
])


@dataclass(frozen=True)
class _Kinematics:
    mass: np.ndarray
    charge: np.ndarray
    low: np.ndarray        # kinetic energy below which the last step is taken


def _mean_loss_over(T, length, kin: _Kinematics, idx, medium, cut, me):
    """Mean energy lost over ``length`` cm (midpoint rule; residual-range rule below the Bethe limit)."""
    m, q, low = kin.mass[idx], kin.charge[idx], kin.low[idx]
    s0 = stopping_power_mev_per_cm(np.maximum(T, low), m, q, medium, cut, me)
    t_mid = np.maximum(T - 0.5 * s0 * length, low)
    loss = stopping_power_mev_per_cm(t_mid, m, q, medium, cut, me) * length
    below = T <= low
    residual_range = T / (2.0 * s0)
    frac_left = np.clip(1.0 - length / np.where(below, residual_range, 1.0), 0.0, 1.0)
    loss = np.where(below, T * (1.0 - np.sqrt(frac_left)), loss)
    return np.minimum(loss, T)


def step_tracks(points, directions, kinetic_mev, mass_mev, charge, detector: Detector, rng=None, *,
                step_cm: float = 0.5, fluctuations: bool = False, delta_cut_mev: float | None = 1.0,
                medium: Medium | None = None, max_loss_fraction: float = 0.1, min_step_cm: float = 0.005):
    """Step straight tracks through the TPC volumes, vectorised over tracks.

    Returns ``(track_index, start, end, dE, truth)``: per segment the index of its track, start and end points
    (cm, simulation frame), deposited energy (MeV), sorted by track then along the track; and per track a dict of
    arrays ``deposited``, ``lost_outside``, ``exit_kinetic``, ``stopped``.
    """
    det = resolve_detector(detector)
    medium = liquid_argon(det.nominal.get("lArDensity")) if medium is None else medium
    if fluctuations and rng is None:
        raise ValueError("fluctuations=True needs a numpy Generator (rng)")
    me = electron_mass_mev()
    points = np.asarray(points, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    n = len(points)
    T = np.asarray(kinetic_mev, dtype=np.float64).copy()
    kin = _Kinematics(np.broadcast_to(np.asarray(mass_mev, dtype=np.float64), (n,)),
                      np.broadcast_to(np.abs(np.asarray(charge, dtype=np.float64)), (n,)),
                      lowest_bethe_kinetic_mev(np.broadcast_to(np.asarray(mass_mev, dtype=np.float64), (n,))))
    t_in, t_out = tpc_chords(points, directions, det)
    n_int = np.sum(~np.isnan(t_in), axis=1)
    lost = np.zeros(n)
    deposited = np.zeros(n)
    stopped = np.zeros(n, dtype=bool)
    k = np.zeros(n, dtype=np.int64)
    active = n_int > 0
    t = np.where(active, t_in[:, 0], 0.0)
    # energy lost before the first TPC: only when the entry point is not on a TPC face (the chords are shrunk by
    # 1e-5 cm, which is not a gap)
    first_gap = np.where(active, t, 0.0)
    idx = np.flatnonzero(active & (first_gap > 1e-3))
    if idx.size:
        loss = _mean_loss_over(T[idx], first_gap[idx], kin, idx, medium, delta_cut_mev, me)
        T[idx] -= loss
        lost[idx] += loss
    stopped |= active & (T <= 0)
    active &= T > 0
    seg_track, seg_t0, seg_dx, seg_de = [], [], [], []
    rows = np.arange(n)
    while active.any():
        idx = rows[active]
        Ti, m, q, low = T[idx], kin.mass[idx], kin.charge[idx], kin.low[idx]
        remaining = t_out[idx, k[idx]] - t[idx]
        s0 = stopping_power_mev_per_cm(np.maximum(Ti, low), m, q, medium, delta_cut_mev, me)
        final = Ti <= low
        dx_loss = np.maximum(max_loss_fraction * Ti / s0, min_step_cm)
        dx = np.where(final, Ti / (2.0 * s0), np.minimum(step_cm, dx_loss))
        dx = np.minimum(dx, remaining)
        de = _mean_loss_over(Ti, dx, kin, idx, medium, delta_cut_mev, me)
        if fluctuations:
            sigma = energy_loss_sigma_mev(np.maximum(Ti, low), m, q, medium, dx, delta_cut_mev, me)
            de = np.where(final, de, de + sigma * rng.standard_normal(idx.size))
            de = np.clip(de, 0.0, Ti)
        ends_here = final & (dx >= Ti / (2.0 * s0) * (1.0 - 1e-12))
        de = np.where(ends_here, Ti, de)
        seg_track.append(idx)
        seg_t0.append(t[idx].copy())
        seg_dx.append(dx)
        seg_de.append(de)
        T[idx] = Ti - de
        deposited[idx] += de
        t[idx] += dx
        done = (T[idx] <= 0.0) | ends_here
        T[idx[done]] = 0.0
        stopped[idx[done]] = True
        active[idx[done]] = False
        # tracks that reached the end of their current TPC chord: cross the gap to the next one or leave
        live = idx[~done]
        at_end = live[t[live] >= t_out[live, k[live]] - 1e-9]
        if at_end.size:
            nxt = k[at_end] + 1
            has_next = nxt < n_int[at_end]
            leaving = at_end[~has_next]
            active[leaving] = False
            crossing = at_end[has_next]
            if crossing.size:
                gap = t_in[crossing, nxt[has_next]] - t[crossing]
                loss = _mean_loss_over(T[crossing], gap, kin, crossing, medium, delta_cut_mev, me)
                T[crossing] -= loss
                lost[crossing] += loss
                t[crossing] = t_in[crossing, nxt[has_next]]
                k[crossing] = nxt[has_next]
                dead = crossing[T[crossing] <= 0.0]
                T[dead] = 0.0
                stopped[dead] = True
                active[dead] = False
    if seg_track:
        track = np.concatenate(seg_track)
        t0 = np.concatenate(seg_t0)
        dx = np.concatenate(seg_dx)
        de = np.concatenate(seg_de)
    else:
        track, t0, dx, de = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
    order = np.lexsort((t0, track))
    track, t0, dx, de = track[order], t0[order], dx[order], de[order]
    start = points[track] + directions[track] * t0[:, None]
    end = points[track] + directions[track] * (t0 + dx)[:, None]
    truth = {"deposited": deposited, "lost_outside": lost, "exit_kinetic": np.where(stopped, 0.0, T),
             "stopped": stopped}
    return track, start, end, de, dx, truth


def segments_from_steps(track, start, end, de, dx, event_id, track_id, pdg) -> np.ndarray:
    """Fill a :data:`SEGMENT_DTYPE` array from per-step arrays (simulation frame); dEdx = dE/dx (0 if dx = 0)."""
    out = np.zeros(len(track), dtype=SEGMENT_DTYPE)
    out["eventID"] = np.asarray(event_id)[track]
    out["trackID"] = np.asarray(track_id)[track]
    out["pdgId"] = np.asarray(pdg)[track]
    mid = 0.5 * (start + end)
    for i, axis in enumerate("xyz"):
        out[f"{axis}_start"] = start[:, i]
        out[f"{axis}_end"] = end[:, i]
        out[axis] = mid[:, i]
    out["dx"] = dx
    out["dE"] = de
    with np.errstate(divide="ignore", invalid="ignore"):
        out["dEdx"] = np.where(dx > 0, de / np.where(dx > 0, dx, 1.0), 0.0)
    return out


def generate_tracks(species, kinetic_energy_mev, event_id, track_id, *, seed=None, detector=None,
                    step_cm: float = 0.5, fluctuations: bool = False, angular: str = "cosine",
                    delta_cut_mev: float | None = 1.0, density_g_cm3: float | None = None,
                    return_truth: bool = False):
    """Generate one straight track per entry of ``species`` (names or PDG codes) with the given kinetic energies.

    Entry points and directions are drawn as in :func:`sample_border_entries`; the tracks are stepped with
    :func:`step_tracks`. ``seed`` is an int or a ``numpy.random.Generator``. Returns the segments array, and with
    ``return_truth=True`` also a :data:`TRUTH_DTYPE` array with one row per track (kinetic energy, start,
    direction, energy deposited, energy lost between TPCs, kinetic energy on leaving, whether it stopped).
    Energy balance per track: kinetic = deposited + lost_outside + exit_kinetic.
    """
    det = resolve_detector(detector)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    species = list(species)
    props = {s: particle_properties(s) for s in set(species)}
    pdg = np.array([props[s][0] for s in species], dtype=np.int64)
    mass = np.array([props[s][1] for s in species])
    charge = np.array([props[s][2] for s in species])
    kinetic = np.asarray(kinetic_energy_mev, dtype=np.float64)
    if np.any(~np.isfinite(kinetic)) or np.any(kinetic <= 0):
        raise ValueError("kinetic energies must be positive and finite")
    density = det.nominal.get("lArDensity", None) if density_g_cm3 is None else density_g_cm3
    medium = liquid_argon(density)
    points, dirs = sample_border_entries(len(species), rng, det, angular)
    track, start, end, de, dx, truth = step_tracks(points, dirs, kinetic, mass, charge, det, rng, step_cm=step_cm,
                                                   fluctuations=fluctuations, delta_cut_mev=delta_cut_mev,
                                                   medium=medium)
    segments = segments_from_steps(track, start, end, de, dx, event_id, track_id, pdg)
    if not return_truth:
        return segments
    info = np.zeros(len(species), dtype=TRUTH_DTYPE)
    info["eventID"], info["trackID"], info["pdgId"] = event_id, track_id, pdg
    info["kinetic_energy_mev"], info["mass_mev"] = kinetic, mass
    info["start"], info["direction"] = points, dirs
    info["deposited_mev"], info["lost_outside_mev"] = truth["deposited"], truth["lost_outside"]
    info["exit_kinetic_mev"], info["stopped"] = truth["exit_kinetic"], truth["stopped"]
    info["n_segments"] = np.bincount(track, minlength=len(species))
    return segments, info


def _event_and_track_ids(n_events: int, tracks_per_event: int):
    if n_events < 1 or tracks_per_event < 1:
        raise ValueError("n_events and tracks_per_event must be >= 1")
    event_id = np.repeat(np.arange(n_events, dtype=np.uint32), tracks_per_event)
    track_id = np.tile(np.arange(1, tracks_per_event + 1, dtype=np.uint32), n_events)
    return event_id, track_id


def generate_muons(n_events: int = 100, tracks_per_event: int = 1, energy_gev: float = 1.0, seed=0,
                   detector=None, step_cm: float = 0.5, fluctuations: bool = False, *, species="mu-",
                   angular: str = "cosine", delta_cut_mev: float | None = 1.0,
                   density_g_cm3: float | None = None, return_truth: bool = False):
    """Seeded sample of muons of **kinetic** energy ``energy_gev`` (the paper's control sample: 1 GeV muons).

    ``n_events`` x ``tracks_per_event`` muons (``species``, default ``"mu-"``) enter through the border of the TPC
    volumes with cos-weighted isotropic inward directions and are stepped into segments (simulation frame);
    ``eventID`` = 0 .. n_events-1, ``trackID`` = 1 .. tracks_per_event. See the module docstring for the physics
    and :func:`generate_tracks` for ``return_truth``.
    """
    event_id, track_id = _event_and_track_ids(n_events, tracks_per_event)
    kinetic = np.full(len(event_id), 1000.0 * float(energy_gev))
    return generate_tracks([species] * len(event_id), kinetic, event_id, track_id, seed=seed, detector=detector,
                           step_cm=step_cm, fluctuations=fluctuations, angular=angular,
                           delta_cut_mev=delta_cut_mev, density_g_cm3=density_g_cm3, return_truth=return_truth)


def generate_mixed(n_events: int = 100, seed=0, species=("mu-", "pi+", "proton"),
                   kinetic_energy_gev=(0.1, 2.0), tracks_per_event: int = 1, detector=None, step_cm: float = 0.5,
                   fluctuations: bool = False, *, angular: str = "cosine", delta_cut_mev: float | None = 1.0,
                   density_g_cm3: float | None = None, return_truth: bool = False):
    """Seeded mixed sample: each track's species is drawn uniformly from ``species`` and its **kinetic** energy
    uniformly in ``kinetic_energy_gev`` = (low, high) GeV; otherwise as :func:`generate_muons`."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    low, high = (float(v) for v in kinetic_energy_gev)
    if not 0.0 < low <= high:
        raise ValueError(f"kinetic_energy_gev must be (low, high) with 0 < low <= high, not {kinetic_energy_gev}")
    species = tuple(species)
    if not species:
        raise ValueError("species must not be empty")
    event_id, track_id = _event_and_track_ids(n_events, tracks_per_event)
    choice = rng.integers(len(species), size=len(event_id))
    kinetic = 1000.0 * rng.uniform(low, high, size=len(event_id))
    return generate_tracks([species[c] for c in choice], kinetic, event_id, track_id, seed=rng, detector=detector,
                           step_cm=step_cm, fluctuations=fluctuations, angular=angular,
                           delta_cut_mev=delta_cut_mev, density_g_cm3=density_g_cm3, return_truth=return_truth)


__all__ = [
    "K_MEV_CM2_PER_MOL",
    "TRUTH_DTYPE",
    "Medium",
    "beta_gamma_of",
    "density_effect_delta",
    "energy_loss_sigma_mev",
    "generate_mixed",
    "generate_muons",
    "generate_tracks",
    "liquid_argon",
    "lowest_bethe_kinetic_mev",
    "max_energy_transfer_mev",
    "particle_properties",
    "sample_border_entries",
    "segments_from_steps",
    "step_tracks",
    "stopping_power_mev_per_cm",
    "tpc_chords",
]
