"""Recombination (quenching): ionisation electrons that escape recombination, per segment.

The Birks and box models of the reference, :mod:`larnd_diff.reference.quench`, on tensors.

Units: dE in MeV, dEdx in MeV/cm, eField in kV/cm, lArDensity in g/cm^3, MeVToElectrons in e-/MeV.
Parameters come from a :class:`larnd_diff.params.Params` (or any mapping with the same names); each may be a
Python float or an EagerPy tensor, so gradients flow to them.
"""
from __future__ import annotations

import eagerpy as ep

from larnd_diff import ops
from larnd_diff.sim.config import as_relaxation

MODELS = ("birks", "box")


def birks_recombination(dEdx, params):
    """Birks survival fraction R = A_B / (1 + k_B dE/dx / (E rho)) (Amoruso et al., NIM A 523 (2004) 275)."""
    # Same operation order as larnd-sim (float64), so that truncated electron counts agree bit for bit.
    return params["Ab"] / (1 + params["kb"] * dEdx / (params["eField"] * params["lArDensity"]))


def box_recombination(dEdx, params):
    """Box-model survival fraction R = max(0, ln(alpha + xi) / xi), xi = beta dE/dx / (E rho) (Baller 2013).

    At dE/dx = 0 the formula is 0/0; larnd-sim's unit test expects 0 there, which is what this returns
    (with a finite gradient: the division uses a safe denominator).
    """
    xi = params["beta"] * dEdx / (params["eField"] * params["lArDensity"])
    positive = xi > 0
    safe_xi = ep.where(positive, xi, ep.ones_like(xi))
    r = ep.log(params["alpha"] + safe_xi) / safe_xi
    return ep.where(positive, ep.maximum(r, 0.0), ep.zeros_like(r))


def quench(dE, dEdx, params, relaxation="hard", model: str = "birks"):
    """Number of ionisation electrons surviving recombination for segments with energy dE and dE/dx.

    n = R(dEdx) x dE x MeVToElectrons with R from the Birks (default, the one larnd-sim uses) or Box model.
    ``relaxation.charge``: "truncate" stores floor(max(n, 0)) like larnd-sim's unsigned-integer field (no
    gradient through the count); "continuous" returns n itself (differentiable in every parameter).
    Inputs whose count the reference cannot store (negative dE or dEdx, more than 2^32 - 1 electrons) are rejected
    before any backend runs (:mod:`larnd_diff.checks`, called by :func:`larnd_diff.simulate`), so both simulators
    see the same inputs; this function itself does not check values (they may be traced).
    """
    relaxation = as_relaxation(relaxation)
    if model == "birks":
        recombination = birks_recombination(dEdx, params)
    elif model == "box":
        recombination = box_recombination(dEdx, params)
    else:
        raise ValueError(f"unknown recombination model {model!r}; choose one of {MODELS}")
    n_electrons = recombination * dE * params["MeVToElectrons"]
    return electron_count(n_electrons, relaxation)


def electron_count(n_electrons, relaxation):
    """Apply the charge relaxation: integer truncation of a non-negative count, or the real value."""
    if relaxation.charge == "truncate":
        return ops.floor(ep.maximum(n_electrons, 0.0))
    if relaxation.charge == "continuous":
        return n_electrons
    raise ValueError(f"unknown charge relaxation {relaxation.charge!r}; choose 'truncate' or 'continuous'")


__all__ = ["MODELS", "birks_recombination", "box_recombination", "electron_count", "quench"]
