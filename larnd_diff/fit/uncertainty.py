"""Uncertainties of the fitted parameters from the curvature of the loss at the optimum.

**Convention.** The loss is read as a negative log-likelihood, ``L = -ln p + const``, summed over what the
estimate uses, so the covariance of the optimiser's coordinates is ``H^-1`` (a loss that is chi^2 needs ``2 H^-1``,
a mean over N independent terms ``H^-1 / N``: ``scale``). The Hessian H is taken in the optimiser's coordinates u
(forward-over-reverse where the framework can push tangents through the simulator, else central differences of
gradients with step ``step``, see :func:`larnd_diff.backends.optim.hessian`); with the log parameterization
d(p / nominal)/du = s p / nominal, so the normalised covariance is J cov_u J. The physical covariance is
D cov D with D = diag(nominal); the correlation does not depend on the scale. When H is not positive definite
(a flat or degenerate direction) the pseudo-inverse is used, ``posdef`` is False and the errors of directions
with non-positive variance are None (never NaN in a JSON file).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..params import SPECS
from .options import Option

__all__ = ["HessianUncertainty", "covariance_from_hessian", "correlation_from_covariance"]


def covariance_from_hessian(h: np.ndarray, scale: float = 1.0):
    """(scale * H^-1, positive_definite); the pseudo-inverse when H is not positive definite."""
    h = np.asarray(h, dtype=np.float64)
    try:
        np.linalg.cholesky(h)
        return scale * np.linalg.inv(h), True
    except np.linalg.LinAlgError:
        return scale * np.linalg.pinv(h, hermitian=True), False


def correlation_from_covariance(cov: np.ndarray) -> np.ndarray:
    """cov_ij / sqrt(cov_ii cov_jj); NaN where a variance is not positive (a flat or wrong-sign direction)."""
    var = np.diag(cov).astype(np.float64)
    sd = np.where(var > 0, np.sqrt(np.abs(var)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cov / np.outer(sd, sd)


@dataclass(frozen=True)
class HessianUncertainty:
    """Covariance from the Hessian of the loss over ``batches`` (None = all) at the fitted point."""

    batches: Optional[Sequence[int]] = None
    step: float = 1e-3
    scale: float = 1.0
    #: "auto" (forward-over-reverse where the framework can, else differences of gradients), "fd" (differences of
    #: gradients ``step`` apart: the curvature on that scale, for losses with kinks finer than it), "loss" (second
    #: differences of the loss alone, ``step`` apart: for losses whose gradient is not their slope on that scale,
    #: e.g. larnd-sim's sampling jumps) or "fwd_over_rev"
    method: str = "auto"
    #: per-parameter steps ((name, step), ...) in the optimiser's coordinates replacing ``step`` for those names
    steps: Tuple[Tuple[str, float], ...] = ()

    OPTIONS = (
        Option("hessian", "--no-hessian", "skip the Hessian/covariance at the end", action="store_true", negate=True),
        Option("hessian_batches", "", "batches of the Hessian (default all)"),
        Option("hessian_step", "", "finite-difference step of the Hessian fallback (optimiser coordinates)"),
        Option("covariance_scale", "", "factor on H^-1 (see larnd_diff.fit.uncertainty)"),
        Option("hessian_method", "", "auto | fd | loss | fwd_over_rev (see larnd_diff.fit.uncertainty)"),
        Option("hessian_steps", "", "{name: step} replacing hessian_step for those parameters (the data recipe: "
               "eField 2e-2 in its coordinate, 2e-4 relative: about two of its sigma)"),
    )

    def keywords(self) -> dict:
        return {"hessian_batches": None if self.batches is None else [int(b) for b in self.batches],
                "hessian_step": self.step, "covariance_scale": self.scale, "hessian_method": self.method,
                "hessian_steps": dict(self.steps)}

    def estimate(self, loss: Callable, u: Mapping[str, float], coords, normalized: Mapping[str, float],
                 backend: str, dtype: str, device) -> dict:
        """``loss(u_tensors)``: the loss as a function of the optimiser's coordinates; returns the FitResult
        fields hessian, hessian_method, hessian_posdef, covariance, covariance_physical, correlation, errors."""
        from ..backends.optim import hessian

        names = list(u)
        step = {n: float(dict(self.steps).get(n, self.step)) for n in names}
        h, method = hessian(backend, loss, dict(u), method=self.method, step=step, dtype=dtype, device=device)
        cov_u, posdef = covariance_from_hessian(h, self.scale)
        jac = np.array([coords.jacobian(n, normalized[n]) for n in names])
        cov = cov_u * np.outer(jac, jac)
        d = np.array([float(SPECS[n].nominal) for n in names])
        physical = cov * np.outer(d, d)
        var = np.diag(physical)
        errors: Dict[str, Optional[float]] = {n: (float(math.sqrt(var[i])) if var[i] > 0 else None)
                                              for i, n in enumerate(names)}
        if not posdef:
            warnings.warn(f"the Hessian at the fitted point is not positive definite (eigenvalues "
                          f"{np.round(np.linalg.eigvalsh(h), 6).tolist()}, method {method}): not a minimum of the "
                          f"loss, or a flat/degenerate direction; the covariance is a pseudo-inverse and the errors "
                          f"of directions with non-positive variance are undefined", RuntimeWarning, stacklevel=3)
        return {"hessian": h, "hessian_method": method, "hessian_posdef": posdef, "covariance": cov,
                "covariance_physical": physical, "correlation": correlation_from_covariance(cov), "errors": errors}
