"""What a fit returns: :class:`FitResult` (parameter dicts in physical units unless named ``normalized``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..params import SPECS
from .progress import max_relative
from .recorder import json_safe

__all__ = ["FitResult"]


@dataclass
class FitResult:
    names: List[str]
    params: Dict[str, float]
    normalized: Dict[str, float]
    init: Dict[str, float]
    target: Optional[Dict[str, float]]
    history: List[dict]
    iterations: int
    epochs: float
    n_batches: int
    n_skipped: int
    skipped_iterations: List[int]
    wall_time_s: float
    backend: str
    hessian: Optional[np.ndarray] = None
    hessian_method: Optional[str] = None
    hessian_posdef: Optional[bool] = None
    covariance: Optional[np.ndarray] = None             # normalised units (p / nominal)
    covariance_physical: Optional[np.ndarray] = None
    correlation: Optional[np.ndarray] = None
    errors: Optional[Dict[str, Optional[float]]] = None  # sqrt(diag covariance_physical); None where undefined
    checkpoint_path: Optional[str] = None
    history_path: Optional[str] = None
    stopped_early: bool = False
    stop_reason: str = ""
    bounds: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # the box of the fit (physical units)
    at_bounds: Dict[str, str] = field(default_factory=dict)  # {name: "lower" | "upper"} held by a bound at the end
    keep: str = "last"                                  # "best": params are the iterate of the lowest loss
    selected_iteration: Optional[int] = None            # the iterate returned (= iterations: the last one)
    selected_loss: Optional[float] = None               # its loss (keep="best")
    warmup: Optional[dict] = None                       # the warm-up stage (larnd_diff/fit/stages.py), if any

    def relative_error(self) -> Dict[str, float]:
        """(fitted - target) / target per parameter (needs a target given as parameter values)."""
        if self.target is None:
            raise ValueError("relative errors need a target given as parameter values")
        return {n: (self.params[n] - self.target[n]) / self.target[n] for n in self.names}

    def max_relative_error(self) -> float:
        return max(abs(v) for v in self.relative_error().values())

    def pulls(self) -> Dict[str, Optional[float]]:
        """(fitted - target) / sigma per parameter (None where sigma is undefined)."""
        if self.target is None or self.errors is None:
            raise ValueError("pulls need a target given as parameter values and the fit's errors")
        return {n: ((self.params[n] - self.target[n]) / self.errors[n] if self.errors.get(n) else None)
                for n in self.names}

    def iterations_to(self, tolerance: float = 0.01) -> Optional[int]:
        """Number of optimiser iterations after which every parameter was first within ``tolerance`` (relative)
        of its target; None if never. History record i holds the values after i iterations."""
        if self.target is None:
            raise ValueError("iterations_to needs a target given as parameter values")
        for rec in self.history:
            if max_relative(rec["params"], self.target, self.names) < tolerance:
                return int(rec["iteration"])
        if self.max_relative_error() < tolerance:
            return self.iterations
        return None

    def wall_time_to(self, tolerance: float = 0.01) -> Optional[float]:
        """Wall time (s, from the start of the fit) at which every parameter was first within ``tolerance``."""
        it = self.iterations_to(tolerance)
        if it is None:
            return None
        if it == 0:
            return 0.0
        # record i holds the values after i iterations, reached when step i - 1 ended
        done = [r for r in self.history if int(r["iteration"]) == it - 1]
        return float(done[0].get("elapsed_s") or 0.0) if done else self.wall_time_s

    def summary(self) -> str:
        lines = [f"{self.iterations} iterations ({self.epochs:.2f} epochs of {self.n_batches} batches) on "
                 f"{self.backend} in {self.wall_time_s:.1f} s; {self.n_skipped} step(s) skipped for NaN/inf"]
        if self.warmup:
            w = self.warmup
            lines.append(f"  after a warm-up of {w['iterations']} iterations ({w['wall_time_s']:.1f} s, included)"
                         if w.get("finished") else "  this is the warm-up stage, stopped by the time budget: resume "
                         "the fit to go on")
        if self.keep == "best" and self.selected_iteration is not None:
            lines.append(f"  values of iteration {self.selected_iteration} (lowest loss, {self.selected_loss:.6g})")
        for n in self.names:
            err = ""
            if self.errors:
                err = f" +- {self.errors[n]:.4g}" if self.errors.get(n) is not None else " +- (undefined)"
            tgt = f"  target {self.target[n]:.6g} ({(self.params[n] / self.target[n] - 1) * 100:+.3f} %)" \
                if self.target else ""
            lines.append(f"  {n:>10s} = {self.params[n]:.6g}{err} {SPECS[n].unit}{tgt}")
        for n, side in self.at_bounds.items():
            lines.append(f"  warning: {n} ended on its {side} bound: the bound, not the data, holds it there")
        if self.hessian_method:
            lines.append(f"  Hessian by {self.hessian_method}; positive definite: {self.hessian_posdef}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-safe dict (arrays as lists, non-finite numbers as None)."""
        return json_safe(asdict(self))
