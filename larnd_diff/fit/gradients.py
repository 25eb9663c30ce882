"""Gradient estimators: how the fit obtains d loss / d u at a point (objects, not flags of the loop).

An estimator is an ``(init, __call__)`` pair over explicit state, in the style of optax's transformations:
``state = est.init()``; ``loss, grad, state = est(point, state)``. ``point`` is a :class:`Point`: the batch's
loss as a function of the optimiser's coordinates at the current iteration (reverse mode through the
framework, or forward passes at shifted coordinates). Estimators compose: :class:`CentralDifferences` wraps
another estimator and replaces the gradient of some parameters by central differences of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .options import Option, parse_assignments, parse_fd_names, step_pairs, zero_is_none

__all__ = ["Point", "ReverseMode", "CentralDifferences", "FD_STEP", "gradient_from_keywords"]

#: Default relative parameter step of the central differences.
FD_STEP = 0.02


@dataclass(frozen=True)
class Point:
    """The batch loss around the current coordinates, as an estimator sees it.

    value_and_grad()      (loss, {name: float gradient}) by reverse mode at the current coordinates
    loss_at(shift)        forward-only loss at the current coordinates plus ``shift`` ({name: du})
    relative_step(n, h)   the coordinate step that changes parameter n by about h relative
    iteration             the fit's iteration (estimators that switch with time read it)
    """

    value_and_grad: Callable[[], Tuple[float, Dict[str, float]]]
    loss_at: Callable[[Mapping[str, float]], float]
    relative_step: Callable[[str, float], float]
    iteration: int


@dataclass(frozen=True)
class ReverseMode:
    """The framework's reverse-mode gradient of the batch loss (one forward and one backward pass)."""

    def init(self) -> dict:
        return {}

    def __call__(self, point: Point, state: dict):
        loss, grad = point.value_and_grad()
        return loss, grad, state

    def keywords(self) -> dict:
        return {"fd_params": (), "fd_step": FD_STEP, "fd_steps": {}, "fd_until": None, "fd_switch": None}


@dataclass(frozen=True)
class CentralDifferences:
    """Central differences of the batch loss for ``params`` (two forward passes each, relative step ``step``),
    on top of the gradient of ``inner`` for the others.

    Far from the optimum, pixels crossing the trigger threshold make hits appear and vanish, which reverse mode
    cannot see (a hit that appears was charge below threshold: zero gradient until it triggers); there the
    transverse diffusion's reverse-mode gradient can have the wrong sign. Near the optimum reverse mode is right
    and differences only add the loss's jumps, so they stop for good at iteration ``until``, or once the
    difference and the inner gradient agreed in sign ``switch`` iterations in a row (state: those counts).
    """

    params: Tuple[str, ...] = ("tran_diff",)
    step: float = FD_STEP
    #: per-parameter relative steps ((name, step), ...) replacing ``step`` for those names (eField's loss changes
    #: on a scale 100 times finer than the diffusion's)
    steps: Tuple[Tuple[str, float], ...] = ()
    until: Optional[int] = None
    switch: Optional[int] = None
    inner: Any = field(default_factory=ReverseMode)

    def __post_init__(self):
        for name, step in (("fd_step", self.step), *self.steps):
            if not float(step) > 0:
                raise ValueError(f"{name} step must be > 0 (relative change of the parameter), got {step}")
        if self.switch is not None and int(self.switch) < 1:
            raise ValueError(f"fd_switch must be >= 1 or None, got {self.switch}")
        if self.until is not None and int(self.until) < 1:
            raise ValueError(f"fd_until must be >= 1 or None, got {self.until}")

    def init(self) -> dict:
        return {"agree": {}, "inner": self.inner.init()}

    def active(self, name: str, iteration: int, state: dict) -> bool:
        if self.until is not None and iteration >= self.until:
            return False
        return self.switch is None or state["agree"].get(name, 0) < self.switch

    def __call__(self, point: Point, state: dict):
        loss, grad, inner_state = self.inner(point, state["inner"])
        names = [n for n in grad if n in self.params and self.active(n, point.iteration, state)]
        agree = dict(state["agree"])
        if names:
            fd = {n: self.difference(point, n) for n in names}
            if self.switch is not None:
                for n in names:  # consecutive iterations where both gradients point the same way
                    agree[n] = agree.get(n, 0) + 1 if fd[n] * grad[n] > 0 else 0
            grad = {**grad, **fd}
        return loss, grad, {"agree": agree, "inner": inner_state}

    def step_of(self, name: str) -> float:
        return float(dict(self.steps).get(name, self.step))

    def difference(self, point: Point, name: str) -> float:
        h = point.relative_step(name, self.step_of(name))
        plus, minus = (point.loss_at({name: sign * h}) for sign in (1.0, -1.0))
        return (plus - minus) / (2.0 * h)

    def keywords(self) -> dict:
        return {"fd_params": tuple(self.params), "fd_step": float(self.step), "fd_steps": dict(self.steps),
                "fd_until": self.until, "fd_switch": self.switch}


OPTIONS = (
    Option("fd_params", "--fd-params", "parameters whose gradient is taken by central differences of the loss "
           "(two forward passes each) instead of reverse mode, which cannot see hits appearing or vanishing at "
           "the trigger threshold; 'none' = reverse mode only", parse=parse_fd_names, metavar="NAME,...|none"),
    Option("fd_step", "--fd-step", f"relative parameter step of --fd-params (default {FD_STEP})", parse=float),
    Option("fd_steps", "--fd-steps", "per-parameter relative steps replacing --fd-step for those parameters "
           "(the data recipe: eField=2e-4)", parse=parse_assignments, metavar="NAME=STEP,..."),
    Option("fd_until", "--fd-until", "take the --fd-params gradients by central differences only in the first N "
           "iterations (the far field, where reverse mode is biased), reverse mode after; 0 = in every "
           "iteration", parse=zero_is_none(int), metavar="N"),
    Option("fd_switch", "--fd-switch", "return a --fd-params parameter to reverse mode for good once its central "
           "difference and reverse-mode gradient agreed in sign N iterations in a row (default: never)",
           parse=int, metavar="N"),
)


def gradient_from_keywords(base, kw: Mapping[str, Any]):
    """The estimator for the keywords ``kw`` on top of the recipe's ``base``: reverse mode when no parameter takes
    central differences, else :class:`CentralDifferences` (``fd_until`` None = no time limit)."""
    settings = {**(base or ReverseMode()).keywords(), **{k: v for k, v in kw.items() if k in _KEYS}}
    params = tuple(settings["fd_params"] or ())
    if not params:
        return ReverseMode()
    until, switch = settings["fd_until"], settings["fd_switch"]
    return CentralDifferences(params=params, step=float(settings["fd_step"]), steps=step_pairs(settings["fd_steps"]),
                              until=None if until is None else int(until),
                              switch=None if switch is None else int(switch))


_KEYS = ("fd_params", "fd_step", "fd_steps", "fd_until", "fd_switch")
