"""Controllers: what the fit does between steps, each an ``(init, update)`` pair over explicit state.

``state = c.init()``; after every iteration ``state, stop = c.update(record, state, optimizer)``: ``stop`` is a
sentence when the controller ends the fit, else None. A controller may adjust the optimiser (step factors) and
annotate the iteration's record (written to the history after the controllers ran). Their states are saved in
checkpoints (NumPy arrays in the ``.npz``, the rest in JSON), so a resumed fit continues exactly.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

from .options import Option, zero_is_none

__all__ = ["Budget", "Convergence", "StepAdaptation", "BestIterate", "KEEP", "ADAPT_DEFAULTS",
           "controllers_from_keywords", "OPTIONS"]

#: What a fit returns: its last iterate, or its best one (:class:`BestIterate`).
KEEP = ("last", "best")

#: Defaults of the per-parameter step adaptation (:class:`StepAdaptation`).
ADAPT_DEFAULTS: Dict[str, float] = {"window": 10, "low": 0.2, "high": 0.6, "shrink": 0.5, "grow": 1.5, "max": 1.0,
                                    "min": 1e-3, "tstat": 0.0}


@dataclass(frozen=True)
class Budget:
    """How long a fit may run: ``max_iter`` iterations or ``epochs`` epochs (whichever first; one of them is
    needed), and at most ``seconds`` of wall time. A resumed fit with a larger budget continues."""

    max_iter: Optional[int] = None
    epochs: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self):
        if self.max_iter is None and self.epochs is None:
            raise ValueError("give epochs, max_iter or both (the fit stops at whichever comes first)")

    def total(self, n_batches: int) -> int:
        limits = [int(self.max_iter)] if self.max_iter is not None else []
        if self.epochs is not None:
            limits.append(int(self.epochs) * n_batches)
        return min(limits)

    def out_of_time(self, wall_time_s: float) -> Optional[str]:
        if self.seconds is not None and wall_time_s >= self.seconds:
            return f"time budget of {self.seconds:g} s"
        return None


@dataclass(frozen=True)
class Convergence:
    """The stopping rule (needs no target): every fitted parameter stayed within ``tol`` over the last ``window``
    iterations, in the optimiser's coordinates (log: relative change; linear: p / nominal), step scales applied."""

    tol: float
    window: int = 20
    parameterization: str = "linear"

    def __post_init__(self):
        if not self.tol > 0:
            raise ValueError(f"stop_tol must be > 0 or None, got {self.tol}")
        if int(self.window) < 1:
            raise ValueError(f"stop_window must be >= 1, got {self.window}")

    def init(self) -> dict:
        return {"recent": np.zeros((0, 0))}

    def update(self, record: dict, state: dict, optimizer, *, scales: Mapping[str, float], **_):
        values = optimizer.values()
        row = [scales[n] * float(values[n]) for n in values]
        recent = [list(r) for r in state["recent"]] + [row]
        recent = recent[-(int(self.window) + 1):]
        state = {"recent": np.asarray(recent, dtype=np.float64)}
        if len(recent) <= int(self.window):
            return state, None
        arr = state["recent"]
        if float((arr.max(axis=0) - arr.min(axis=0)).max()) < self.tol:
            return state, (f"converged: every parameter moved less than {self.tol:g} ({self.parameterization} "
                           f"coordinates) over the last {int(self.window)} iterations")
        return state, None


@dataclass(frozen=True)
class StepAdaptation:
    """Per-parameter step factors of full-matrix Adam adapted from the trajectory (Rprop's idea on windows).

    Every ``window`` iterations, a parameter whose net movement over the window is below ``low`` x its possible
    movement (sum of lr x factor) is oscillating about its optimum: its factor is multiplied by ``shrink``; one
    that moved more than ``high`` x is still travelling: its factor grows by ``grow`` (up to ``max``). With
    ``tstat`` > 0, a parameter whose gradient over the window has a steady sign (|mean| > tstat x standard
    error) is on a slope, not at its bottom: it is never shrunk and grows instead (weak parameters such as the
    diffusion constants move slowly through noisy gradients and would otherwise freeze on a plateau). Stiff
    parameters settle and stop shaking the hits, while slow ones keep their step. Needs no target.
    """

    window: int = 10
    low: float = 0.2
    high: float = 0.6
    shrink: float = 0.5
    grow: float = 1.5
    max: float = 1.0
    min: float = 1e-3
    tstat: float = 0.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, float]) -> "StepAdaptation":
        unknown = sorted(set(settings) - set(ADAPT_DEFAULTS))
        if unknown:
            raise ValueError(f"adapt_steps: unknown key(s) {unknown}; known: {sorted(ADAPT_DEFAULTS)}")
        merged = {**ADAPT_DEFAULTS, **dict(settings)}
        return cls(**{k: (int(v) if k == "window" else float(v)) for k, v in merged.items()})

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ADAPT_DEFAULTS}

    def init(self) -> dict:
        return {"trail": np.zeros((0, 0))}

    def update(self, record: dict, state: dict, optimizer, **_):
        names = list(record["grad"])
        w, k = int(self.window), len(names)
        values = optimizer.values()
        row = [float(values[n]) for n in names] + [float(record["grad"][n]) for n in names] + [float(record["lr"])]
        trail = ([list(r) for r in state["trail"]] + [row])[-(w + 1):]
        state = {"trail": np.asarray(trail, dtype=np.float64)}
        if (record["iteration"] + 1) % w == 0 and len(trail) > w:
            optimizer.set_factors(self._factors(state["trail"], optimizer.factors(), names, k, w))
        record["step_factors"] = optimizer.factors()  # the factors of the next step
        return state, None

    def _factors(self, arr, factors, names, k, w) -> Dict[str, float]:
        capacity = arr[1:, -1].sum()  # the lr of the steps that moved trail[0] -> trail[-1]
        grads = arr[1:, k:2 * k]      # the gradients of those steps
        mean, sd = grads.mean(axis=0), grads.std(axis=0)
        tstat = np.abs(mean) / (sd / math.sqrt(w) + 1e-300)
        new = {}
        for i, n in enumerate(names):
            ratio = abs(arr[-1, i] - arr[0, i]) / (capacity * factors[n])
            pulled = self.tstat > 0 and tstat[i] > self.tstat  # a steady pull: on a slope, not at the bottom
            f = factors[n]
            if ratio < self.low and not pulled:
                f *= self.shrink
            elif ratio > self.high or pulled:
                f = min(f * self.grow, self.max)
            new[n] = max(f, self.min)
        return new


@dataclass(frozen=True)
class BestIterate:
    """Remembers the iterate of the lowest loss; the fit returns it (``keep="best"``) instead of the last one.

    Record i holds the values at which step i's loss was taken, so each record is a candidate; the last iterate
    (after the last step) is one more, its loss taken at the end. Losses of different batches are not comparable:
    the fit must see the whole sample in one batch (:meth:`check`).
    """

    def check(self, objective) -> None:
        if objective.n_batches != 1:
            raise ValueError(f"keep='best' compares the losses of iterations, which needs the whole sample in one "
                             f"batch (this fit has {objective.n_batches}); raise batch_length_cm or keep='last'")

    def init(self) -> dict:
        return {"loss": None, "iteration": -1, "params": {}}  # JSON-safe (checkpointed): no loss yet = None

    def update(self, record: dict, state: dict, optimizer, **_):
        loss = record.get("loss")
        if record.get("skipped") or loss is None or not math.isfinite(loss):
            return state, None
        if state["loss"] is None or loss < state["loss"]:
            state = {"loss": float(loss), "iteration": int(record["iteration"]), "params": dict(record["params"])}
        return state, None

    def select(self, state: dict, last_iteration: int, last_loss: float):
        """(iteration, loss, physical values or None = the last iterate) of the lowest loss."""
        if state["loss"] is None or (math.isfinite(last_loss) and last_loss <= state["loss"]):
            return last_iteration, float(last_loss), None
        return int(state["iteration"]), float(state["loss"]), {k: float(v) for k, v in state["params"].items()}


def parse_adapt(text: str) -> dict:
    """"off" -> {} (no adaptation); "on" -> {"window": 10}; "shrink=0.7,window=10" -> overrides."""
    text = text.strip()
    if text in ("off", "none", "0"):
        return {}
    if text in ("on", "1", ""):
        return {"window": 10}
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"expected off, on or KEY=V,..., got {item!r}")
        key = key.strip()
        if key not in ADAPT_DEFAULTS:
            raise argparse.ArgumentTypeError(f"unknown key {key!r}; known: {sorted(ADAPT_DEFAULTS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a number") from None
    return out


OPTIONS = (
    Option("max_iter", "--max-iter", "stop after this many iterations", parse=int),
    Option("epochs", "--epochs", "stop after this many epochs (passes over all batches)", parse=int),
    Option("time_budget_s", "--time-budget", "stop a fit after S seconds of wall time (checkpointed, resumable)",
           parse=float, metavar="S"),
    Option("stop_tol", "--stop-tol", "stop when every parameter moved less than this (optimiser coordinates) over "
           "the last --stop-window iterations; 0 = never", parse=zero_is_none(float)),
    Option("stop_window", "--stop-window", "iterations of the stopping rule", parse=int),
    Option("keep", "--keep", "the result: the last iterate, or the best (lowest loss; whole-sample batches only)",
           choices=KEEP),
    Option("adapt_steps", "--adapt-steps", "per-parameter step factors adapted from the trajectory (adam-full "
           "only): 'off', 'on' (larnd_diff.fit.ADAPT_DEFAULTS) or overrides such as shrink=0.7,window=10",
           parse=parse_adapt, metavar="off|on|KEY=V,..."),
)


def controllers_from_keywords(kw: Mapping[str, Any], parameterization: str, optimizer_method: str):
    """(budget, [adaptation, convergence, best iterate]) from fit keywords (``stop_tol`` None/0 and
    ``adapt_steps`` None/{} switch those off; ``keep="best"`` adds :class:`BestIterate`)."""
    budget = Budget(kw.get("max_iter"), kw.get("epochs"), kw.get("time_budget_s"))
    out = []
    if kw.get("adapt_steps"):
        if optimizer_method != "adam-full":
            raise ValueError("adapt_steps needs optimizer='adam-full' (per-parameter step factors)")
        out.append(StepAdaptation.from_settings(kw["adapt_steps"]))
    if kw.get("stop_tol"):
        out.append(Convergence(float(kw["stop_tol"]), int(kw.get("stop_window") or 20), parameterization))
    elif kw.get("stop_tol") is not None and not kw["stop_tol"] >= 0:
        raise ValueError(f"stop_tol must be > 0 or None, got {kw['stop_tol']}")
    if int(kw.get("stop_window") or 20) < 1:
        raise ValueError(f"stop_window must be >= 1, got {kw.get('stop_window')}")
    keep = kw.get("keep") or "last"
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if keep == "best":
        out.append(BestIterate())
    return budget, out
