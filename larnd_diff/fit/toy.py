"""A closed-form, differentiable stand-in for the simulator and a matching loss: tests and demos of the fit
machinery in milliseconds per step (no physics beyond the parameters' dependences)."""
from __future__ import annotations

import numpy as np

from ..hits import Hits

__all__ = ["toy_simulator", "toy_loss"]


def _unwrap(x):
    return getattr(x, "raw", x)


def toy_simulator(segments, params, *, backend="torch", dtype="float64", device=None, relaxation=None,
                  noise=False, seed=0):
    """One "hit" per segment: drift distance d = 30.43 - |z| cm, v = eField x mobility (always linked, so eField is
    identifiable from times), t = d / v; charge Q = dE * MeVToElectrons * Ab / (1 + kb dEdx / (eField rho)) *
    exp(-t / lifetime); adc = Q x [1, (sigma_L / 0.1 cm)^2, (sigma_T / 0.1 cm)^2] / 1000 with sigma^2 = 2 D t;
    time = [t, t, t]. It has the parameter dependences of the real physics, nothing else.
    """
    import eagerpy as ep

    from ..ops import get_backend
    from ..params import Params, electron_mobility

    b = get_backend(backend)
    p = Params(dict(params))

    def col(name):
        return b.asarray(np.asarray(segments[name], dtype=np.float64), dtype, device)

    def par(name):
        v = p[name]
        return ep.astensor(_unwrap(v)) if not isinstance(v, (int, float)) else v

    z, de, dedx = col("z"), col("dE"), col("dEdx")
    efield = par("eField")
    v = efield * electron_mobility(efield, par("temperature"))
    d = 30.43 - z.abs()
    t = d / v
    recomb = par("Ab") / (1 + par("kb") * dedx / (efield * par("lArDensity")))
    q = de * par("MeVToElectrons") * recomb * ep.exp(-t / par("lifetime")) / 1000.0
    s_l = 2 * par("long_diff") * t / 0.01
    s_t = 2 * par("tran_diff") * t / 0.01
    adc = ep.stack([q, q * s_l, q * s_t], axis=1)
    time_ = ep.stack([t, t, t], axis=1)
    if noise:
        adc = adc + b.rng(seed, device).normal(adc.shape, dtype) * 0.5
    n = len(segments)
    ev = np.asarray(segments["eventID"], dtype=np.int64)
    return Hits(event_id=ev, pixel=np.stack([np.arange(n), np.zeros(n, np.int64)], 1), adc=adc.raw,
                time=time_.raw, backtrack=np.arange(n).reshape(n, 1, 1).repeat(3, 1))


def toy_loss(sim: Hits, target: Hits):
    """Mean squared difference of adc and of time (in units of 10 us) between rows in the same order."""
    import eagerpy as ep

    a, ta = ep.astensor(_unwrap(sim.adc)), ep.astensor(_unwrap(target.adc))
    t, tt = ep.astensor(_unwrap(sim.time)), ep.astensor(_unwrap(target.time))
    return (((a - ta) ** 2).mean() + (((t - tt) / 10.0) ** 2).mean()).raw
