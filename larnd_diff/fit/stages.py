"""Stages: a warm-up fit on a smooth forward model, then the recipe's own fit from the warm-up's end point.

Why two stages (README "Calibration on data"): the data recipe's forward keeps larnd-sim's quadratures (hard pad
sampling, the z grid, the tick phases), because any continuous quadrature shifts the induced charge by 5-12 % rms
per pixel and moves the likelihood's minimum (long_diff by -16 to -19 %, tran_diff by -7 to -11 %). Its loss is
then a staircase in long_diff, tran_diff and eField, whose gradients are central differences on the staircase's
scale; started at nominal such a fit can stop in a false minimum (seed 1 target 1 of the main job: long_diff
-41 %). The ``continuous`` forward has no staircase (reverse-mode gradients equal central differences) and brings
every parameter near its optimum; the main stage then starts there and removes the quadrature bias.

A :class:`Warmup` is a part like the others: its settings are the ``warmup_*`` keywords, its checkpoints live in
``CHECKPOINT_DIR/warmup`` (resumable), and when it ends it writes ``stage.json`` there (its end point, read back on
resume, so a finished warm-up is never run again). One time budget covers both stages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from .options import Option, zero_is_none
from .recorder import atomic_write, json_safe

__all__ = ["Warmup", "run_staged", "WARMUP_DIR", "STAGE_NAME"]

WARMUP_DIR = "warmup"
STAGE_NAME = "stage.json"
_STAGE_FORMAT = "larnd-diff finished warm-up"


@dataclass(frozen=True)
class Warmup:
    """The first stage: ``max_iter`` iterations (0 = no warm-up) of the ``relaxation`` forward with reverse-mode
    gradients and learning rate ``lr`` (None: the recipe's); the recipe's other parts, no covariance."""

    max_iter: int = 0
    relaxation: str = "continuous"
    lr: Optional[float] = None

    OPTIONS = (
        Option("warmup_iter", "--warmup-iter", "iterations of the warm-up stage on the smooth continuous forward "
               "(reverse mode) before the fit itself; 0 = none", parse=zero_is_none(int), metavar="N"),
        Option("warmup_lr", "--warmup-lr", "learning rate of the warm-up stage", parse=float),
    )
    KEYWORDS = ("warmup_iter", "warmup_lr")

    def __post_init__(self):
        if self.max_iter < 0:
            raise ValueError(f"warmup_iter must be >= 0, got {self.max_iter}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"warmup_lr must be > 0, got {self.lr}")

    @property
    def enabled(self) -> bool:
        return self.max_iter > 0

    def keywords(self) -> dict:
        return {"warmup_iter": self.max_iter, "warmup_lr": self.lr}

    def with_keywords(self, kw: Mapping[str, Any]) -> "Warmup":
        """This warm-up with the ``warmup_*`` keywords of ``kw`` applied (``warmup_iter`` None or 0: none)."""
        out = self
        if "warmup_iter" in kw:
            out = replace(out, max_iter=int(kw["warmup_iter"] or 0))
        if kw.get("warmup_lr") is not None:
            out = replace(out, lr=float(kw["warmup_lr"]))
        return out

    def stage_keywords(self, kw: Mapping[str, Any]) -> dict:
        """The fit keywords of the warm-up stage from those of the whole fit."""
        directory = kw.get("checkpoint_dir")
        out = {**kw, "relaxation": self.relaxation, "fd_params": (), "max_iter": self.max_iter, "epochs": None,
               "hessian": False, "keep": "last", "history_path": None,
               "checkpoint_dir": None if directory is None else Path(directory) / WARMUP_DIR}
        if self.lr is not None:
            out["lr"] = self.lr
        return out


def read_stage(directory: Optional[Path]) -> Optional[dict]:
    """The finished warm-up recorded in ``directory`` (None: none recorded). Plain JSON, checked."""
    if directory is None or not (Path(directory) / STAGE_NAME).exists():
        return None
    path = Path(directory) / STAGE_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a finished warm-up record (not JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _STAGE_FORMAT or not isinstance(meta.get("params"), dict):
        raise ValueError(f"{path} is not a finished warm-up record (no 'format': {_STAGE_FORMAT!r} or no params)")
    return meta


def _summary(res) -> dict:
    return {"params": dict(res.params), "iterations": int(res.iterations), "wall_time_s": float(res.wall_time_s),
            "stop_reason": res.stop_reason, "final_loss": _last_loss(res.history)}


def _last_loss(history) -> Optional[float]:
    losses = [r.get("loss") for r in history or () if r.get("loss") is not None]
    return float(losses[-1]) if losses else None


def run_staged(make: Callable[..., Any], warmup: Warmup, kw: Mapping[str, Any]):
    """Run the warm-up (unless ``checkpoint_dir`` records it as finished and ``resume`` is on), then the main
    stage from its end point. ``make(**keywords)`` builds a :class:`~larnd_diff.fit.calibrator.Calibrator`. The
    target is made once, by the main stage's model, and fitted by both stages.

    Returns the main stage's :class:`~larnd_diff.fit.result.FitResult` with ``warmup`` = the warm-up's summary
    (end point, iterations, wall time, stop reason, last loss) and ``wall_time_s`` of both stages; if the time
    budget ends the warm-up, its own result (``stop_reason`` names the budget, ``warmup`` says it is unfinished).
    """
    stage_kw = warmup.stage_keywords(kw)
    directory = stage_kw["checkpoint_dir"]
    targets = make(**kw).objective  # the main stage's model makes the target once; both stages fit it
    done = read_stage(directory) if kw.get("resume") else None
    if done is None:
        if directory is not None and (directory / STAGE_NAME).exists() and not kw.get("overwrite"):
            raise FileExistsError(f"{directory / STAGE_NAME} records a finished warm-up of an earlier fit; pass "
                                  f"resume=True to continue that fit or overwrite=True")
        first = make(**stage_kw)
        first.objective.share_targets(targets)
        res = first.run()
        budget = kw.get("time_budget_s")
        if budget is not None and res.wall_time_s >= float(budget):
            res.warmup = {**_summary(res), "finished": False}
            return res
        done = {"format": _STAGE_FORMAT, **_summary(res), "relaxation": warmup.relaxation, "lr": warmup.lr}
        if directory is not None:
            text = json.dumps(json_safe(done), indent=1, allow_nan=False).encode("utf-8")
            atomic_write(directory / STAGE_NAME, lambda fh: fh.write(text))
    main_kw: Dict[str, Any] = {**kw, "init": {n: float(v) for n, v in done["params"].items()}}
    if kw.get("time_budget_s") is not None:
        main_kw["time_budget_s"] = max(float(kw["time_budget_s"]) - float(done["wall_time_s"]), 1e-9)
    main = make(**main_kw)
    main.objective.share_targets(targets)
    res = main.run()
    res.warmup = {k: v for k, v in done.items() if k != "format"} | {"finished": True}
    res.wall_time_s = float(res.wall_time_s) + float(done["wall_time_s"])
    return res
