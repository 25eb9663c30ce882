"""Where the optimiser moves: the coordinates u of the fitted parameters, their step scales and bounds.

``linear`` (the paper's): u = p / (nominal s); ``log``: u = ln(p / nominal) / s, with s a per-parameter step
scale (s < 1: smaller steps for a stiff parameter such as eField). Bounds are a box in physical units
("ranges" = every fitted parameter's Table I range, :data:`larnd_diff.params.PARAMETERS`), applied after every
optimiser step as one projection in u (projected Adam: the moments are kept), the same for every optimiser.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..params import SPECS
from .options import Option, parse_assignments, parse_bounds

__all__ = ["Coordinates", "resolve_bounds", "check_names"]


def check_names(names: Sequence[str], where: str) -> None:
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown} in {where}; known parameters: {sorted(SPECS)}")


def resolve_bounds(bounds, names: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """Box constraints on fitted parameters, physical units: None -> none; "ranges" -> every fitted parameter's
    physical range (:data:`larnd_diff.params.PARAMETERS`, the paper's Table I); a mapping ``{name: (lo, hi)}``
    (None for an open side) for some of them. Parameters not fitted are ignored, like ``step_scales``."""
    if bounds is None:
        return {}
    if isinstance(bounds, str):
        if bounds != "ranges":
            raise ValueError(f"bounds must be None, 'ranges' or {{name: (lo, hi)}}, got {bounds!r}")
        return {n: (float(SPECS[n].low), float(SPECS[n].high)) for n in names}
    if not isinstance(bounds, Mapping):
        raise TypeError(f"bounds must be None, 'ranges' or a mapping {{name: (lo, hi)}}, got {type(bounds).__name__}")
    check_names(list(bounds), "bounds")
    out = {}
    for n, pair in bounds.items():
        if n not in names:
            continue
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            raise ValueError(f"bounds[{n!r}] must be a pair (lo, hi), got {pair!r}") from None
        lo = -math.inf if lo is None else float(lo)
        hi = math.inf if hi is None else float(hi)
        if not lo < hi:
            raise ValueError(f"bounds[{n!r}]: need lo < hi, got ({lo:g}, {hi:g})")
        out[n] = (lo, hi)
    return out


@dataclass(frozen=True)
class Coordinates:
    """The optimiser's coordinates (see the module docstring). Holds no fit state; methods take the names."""

    parameterization: str = "linear"
    step_scales: Mapping[str, float] = field(default_factory=dict)
    bounds: Any = None

    OPTIONS = (
        Option("parameterization", "--parameterization", "optimiser coordinates: p/nominal or ln(p/nominal)",
               choices=("linear", "log")),
        Option("step_scales", "--step-scales", "per-parameter factors on the optimiser's step (coordinates u = "
               "ln(p/nominal) / S); the closure recipe uses eField=0.1: the drift time pins eField ~100x tighter "
               "than the others, and full steps on it make every hit time jump", parse=parse_assignments,
               metavar="NAME=S,..."),
        Option("bounds", "--bounds", "box constraints: 'ranges' = each parameter's physical range (the paper's "
               "Table I, larnd_diff.params), 'none', or NAME=LO:HI pairs in physical units (an empty side is "
               "open: lifetime=100:); the parameters are projected onto the box after every step",
               parse=parse_bounds, metavar="ranges|none|NAME=LO:HI,..."),
    )

    def __post_init__(self):
        if self.parameterization not in ("linear", "log"):
            raise ValueError(f"parameterization must be 'linear' (p / nominal, the paper's) or 'log' "
                             f"(ln(p / nominal)), got {self.parameterization!r}")
        bad = {k: v for k, v in dict(self.step_scales or {}).items() if not float(v) > 0}
        if bad:
            raise ValueError(f"step_scales must be > 0, got {bad}")

    @classmethod
    def from_keywords(cls, base: Optional["Coordinates"], kw: Mapping[str, Any]) -> "Coordinates":
        base = base or cls()
        return cls(parameterization=kw.get("parameterization", base.parameterization),
                   step_scales=dict(kw.get("step_scales", base.step_scales) or {}),
                   bounds=kw["bounds"] if "bounds" in kw else base.bounds)

    def keywords(self) -> dict:
        return {"parameterization": self.parameterization, "step_scales": dict(self.step_scales or {}),
                "bounds": self.bounds}

    # ------------------------------------------------------------------------------------------ per name
    def scale(self, name: str) -> float:
        return float((self.step_scales or {}).get(name, 1.0))

    def box(self, names: Sequence[str]) -> Dict[str, Tuple[float, float]]:
        """The bounds of ``names`` in physical units."""
        return resolve_bounds(self.bounds, names)

    def physical(self, name: str, u: float) -> float:
        """Physical value of one coordinate: nominal x s u (linear) or nominal x exp(s u) (log)."""
        nominal = float(SPECS[name].nominal)
        if self.parameterization == "log":
            return math.exp(self.scale(name) * float(u)) * nominal
        return self.scale(name) * float(u) * nominal

    def physical_tensor(self, name: str, u):
        """Physical value of one coordinate as a framework scalar that keeps the autodiff graph."""
        import eagerpy as ep

        u = getattr(u, "raw", u)
        s, nominal = self.scale(name), float(SPECS[name].nominal)
        if self.parameterization == "log":
            return (ep.astensor(u) * s).exp().raw * nominal if s != 1.0 else ep.astensor(u).exp().raw * nominal
        return u * (s * nominal)

    def coordinate(self, name: str, value: float) -> float:
        """The coordinate of one physical value (an infinite value, an open bound, stays infinite)."""
        if math.isinf(value):
            return value
        ratio = float(value) / float(SPECS[name].nominal)
        return (math.log(ratio) if self.parameterization == "log" else ratio) / self.scale(name)

    def relative_step(self, name: str, step: float) -> float:
        """The coordinate step that changes ``name`` by about ``step`` relative (central differences)."""
        return step / self.scale(name) if self.parameterization == "log" else step

    def jacobian(self, name: str, normalized: float) -> float:
        """d(p / nominal) / du at the point where p / nominal = ``normalized``."""
        return self.scale(name) * (normalized if self.parameterization == "log" else 1.0)

    # ------------------------------------------------------------------------------------------ dicts
    def to_physical(self, u: Mapping[str, float]) -> Dict[str, float]:
        return {n: self.physical(n, v) for n, v in u.items()}

    def to_internal(self, values: Mapping[str, float]) -> Dict[str, float]:
        return {n: self.coordinate(n, v) for n, v in values.items()}

    def internal_box(self, names: Sequence[str]):
        """The bounds in coordinates: ({name: lower}, {name: upper}); open sides are +-inf."""
        box = self.box(names)
        return ({n: self.coordinate(n, lo) for n, (lo, _) in box.items()},
                {n: self.coordinate(n, hi) for n, (_, hi) in box.items()})

    def check(self, names: Sequence[str], init: Mapping[str, float]) -> None:
        """Refuse a start outside the box and a log parameterization with a non-positive lower bound."""
        box = self.box(names)
        outside = {n: v for n, v in init.items() if n in box and not box[n][0] <= v <= box[n][1]}
        if outside:
            raise ValueError("init outside the bounds: " + ", ".join(
                f"{n} = {v:g} not in [{box[n][0]:g}, {box[n][1]:g}]" for n, v in outside.items()))
        if self.parameterization == "log" and any(lo <= 0 for lo, _ in box.values()):
            raise ValueError(f"log parameterization needs positive lower bounds, got {box}")

    def at_bounds(self, physical: Mapping[str, float]) -> Dict[str, str]:
        """{name: "lower" | "upper"} for the parameters held by a bound."""
        out = {}
        for n, (lo, hi) in self.box(list(physical)).items():
            for side, edge in (("lower", lo), ("upper", hi)):
                if math.isfinite(edge) and abs(physical[n] - edge) <= 1e-9 * abs(edge):
                    out[n] = side
        return out
