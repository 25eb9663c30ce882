"""Stages: a warm-up fit on a smooth forward model, then the recipe's own fit from the warm-up's end point.

Why two stages (README "Calibration on data"): the data recipe's forward keeps larnd-sim's quadratures (hard pad
sampling, the z grid, the tick phases), because any continuous quadrature shifts the induced charge by 5-12 % rms
per pixel and moves the likelihood's minimum (long_diff by -16 to -19 %, tran_diff by -7 to -11 %). Its loss is
then a staircase in long_diff, tran_diff and eField, whose gradients are central differences on the staircase's
scale; started at nominal such a fit can stop in a false minimum (seed 1 target 1 of the main job: long_diff
-41 %). The ``continuous`` forward has no staircase (reverse-mode gradients equal central differences) and brings
every parameter near its optimum; the main stage then starts there and removes the quadrature bias.

The warm-up may scan a grid (``scan``): the loss on a log-spaced grid over the Table I ranges of a few parameters
(the diffusion constants in the data recipe), the others fixed, and the best grid point is the start for them. The
diffusion's likelihood valley is long and, with larnd-sim's quadratures, multimodal; the grid puts the start in a
part of it. At the warm-up's start (the data recipe's) it chose the truth's cell on two of three targets tried, at
its end (the charge scale fitted with the diffusion at nominal) on one of two (README "Calibration on data").
A profile of starts (``starts="profile"``) warms up once per value of the first scanned parameter and keeps the
end point the main stage's forward likes best: it found a target the single grid point lost and lost two it found
(README, "Where the warm-up must start"), so it is an option, not the data recipe's default.

A :class:`Warmup` is a part like the others: its settings are the ``warmup_*`` keywords, its checkpoints live in
``CHECKPOINT_DIR/warmup`` (resumable; the scan's result in ``scan.json`` there), and when it ends it writes
``stage.json`` there (its end point, read back on resume, so a finished warm-up is never run again). One time
budget covers both stages.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..params import SPECS
from .options import Option, parse_assignments, parse_names, zero_is_none
from .recorder import atomic_write, json_safe, read_json_record

__all__ = ["Warmup", "run_staged", "scan_grid", "profile_starts", "WARMUP_DIR", "STAGE_NAME", "SCAN_NAME"]

WARMUP_DIR = "warmup"
STAGE_NAME = "stage.json"
SCAN_NAME = "scan.json"
_STAGE_FORMAT = "larnd-diff finished warm-up"
_SCAN_FORMAT = "larnd-diff warm-up scan"
STARTS = ("best", "profile")


@dataclass(frozen=True)
class Warmup:
    """The first stage: ``max_iter`` iterations (0 = no warm-up) of the ``relaxation`` forward with reverse-mode
    gradients, the ``optimizer`` (None: the recipe's) at learning rate ``lr`` decaying by ``lr_decay`` per epoch
    (None: the recipe's); the recipe's other parts, no covariance. A smooth forward suits "bfgs" (trust-region
    quasi-Newton, ``lr`` its largest step in the coordinates; no step adaptation, which is Adam's). ``scan``:
    ``((name, points), ...)``, the grid searched (:func:`scan_grid`; () = none) at the ``scan_at`` "start" of the
    warm-up (the others at their start values) or at its "end" (the others at the warm-up's end point).
    ``params``: the parameters the warm-up iterations fit (None: all); the others stay where the start (or the
    scan at the start) put them until the main stage, so that the fast parameters settle before the slow ones
    move. ``step_scales``: ``((name, factor), ...)`` replacing the recipe's step scales in the warm-up (None: the
    recipe's): far from the optimum eField must travel percents, near it its sigma is 1e-4 relative."""

    max_iter: int = 0
    relaxation: str = "continuous"
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    lr_decay: Optional[float] = None
    scan: Tuple[Tuple[str, int], ...] = ()
    params: Optional[Tuple[str, ...]] = None
    step_scales: Optional[Tuple[Tuple[str, float], ...]] = None
    scan_at: str = "start"
    starts: str = "best"

    OPTIONS = (
        Option("warmup_iter", "--warmup-iter", "iterations of the warm-up stage (reverse mode on its own forward, "
               "--warmup-relaxation) before the fit itself; 0 = none", parse=zero_is_none(int), metavar="N"),
        Option("warmup_lr", "--warmup-lr", "learning rate of the warm-up stage", parse=float),
        Option("warmup_relaxation", "--warmup-relaxation", "forward of the warm-up stage and its scan (a relaxation "
               "preset)"),
        Option("warmup_params", "--warmup-params", "parameters the warm-up iterations fit (the others stay at their "
               "start until the scan); 'all' = every fitted one", parse=lambda t: None if t.strip() == "all"
               else parse_names(t), metavar="NAME,...|all"),
        Option("warmup_scan", "--warmup-scan", "grid searched at the start or the end of the warm-up "
               "(--warmup-scan-at): points per parameter, log-spaced over its Table I range; 'none' = no scan",
               parse=lambda t: {} if t.strip() == "none" else parse_assignments(t), metavar="NAME=POINTS,...|none"),
        Option("warmup_scan_at", "--warmup-scan-at", "the grid at the warm-up's start (the other parameters at their "
               "start) or at its end (at the warm-up's end point)", choices=("start", "end")),
        Option("warmup_starts", "--warmup-starts", "where the warm-up iterations start: the grid's 'best' point, or a "
               "'profile': once from the best point of every value of the first scanned parameter, the main stage "
               "then starting from the end point of lowest loss under its own forward", choices=STARTS),
    )
    KEYWORDS = ("warmup_iter", "warmup_lr", "warmup_relaxation", "warmup_scan", "warmup_params", "warmup_scan_at",
                "warmup_starts")

    def __post_init__(self):
        if self.max_iter < 0:
            raise ValueError(f"warmup_iter must be >= 0, got {self.max_iter}")
        if self.scan_at not in ("start", "end"):
            raise ValueError(f"warmup_scan_at must be 'start' or 'end', got {self.scan_at!r}")
        if self.starts not in STARTS:
            raise ValueError(f"warmup_starts must be one of {STARTS}, got {self.starts!r}")
        if self.starts == "profile" and not (self.scan and self.scan_at == "start"):
            raise ValueError("warmup_starts='profile' needs a scan at the start (warmup_scan, warmup_scan_at='start')")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"warmup_lr must be > 0, got {self.lr}")
        unknown = [n for n in self.params or () if n not in SPECS]
        if unknown:
            raise ValueError(f"warmup_params: unknown parameter(s) {unknown}; known: {sorted(SPECS)}")
        for name, points in self.scan:
            if name not in SPECS:
                raise ValueError(f"warmup_scan: unknown parameter {name!r}; known: {sorted(SPECS)}")
            if int(points) < 2 or int(points) != points:
                raise ValueError(f"warmup_scan: {name} needs a whole number of points >= 2, got {points}")

    @property
    def enabled(self) -> bool:
        return self.max_iter > 0 or bool(self.scan)

    def keywords(self) -> dict:
        return {"warmup_iter": self.max_iter, "warmup_lr": self.lr, "warmup_relaxation": self.relaxation,
                "warmup_scan": dict(self.scan), "warmup_params": self.params, "warmup_scan_at": self.scan_at,
                "warmup_starts": self.starts}

    def with_keywords(self, kw: Mapping[str, Any]) -> "Warmup":
        """This warm-up with the ``warmup_*`` keywords of ``kw`` applied (``warmup_iter`` None or 0: no
        iterations; ``warmup_scan`` {} or None: no scan). A profile of starts needs the scan at the start: a warm-up
        left without it starts from one point unless ``warmup_starts`` says otherwise."""
        changes: Dict[str, Any] = {}
        if "warmup_iter" in kw:
            changes["max_iter"] = int(kw["warmup_iter"] or 0)
        if kw.get("warmup_lr") is not None:
            changes["lr"] = float(kw["warmup_lr"])
        if kw.get("warmup_relaxation") is not None:
            changes["relaxation"] = kw["warmup_relaxation"]
        if "warmup_scan" in kw:
            changes["scan"] = tuple((str(k), int(v)) for k, v in dict(kw["warmup_scan"] or {}).items())
        if kw.get("warmup_scan_at") is not None:
            changes["scan_at"] = kw["warmup_scan_at"]
        if "warmup_params" in kw:
            changes["params"] = None if kw["warmup_params"] is None else tuple(kw["warmup_params"])
        if kw.get("warmup_starts") is not None:
            changes["starts"] = kw["warmup_starts"]
        elif not (changes.get("scan", self.scan) and changes.get("scan_at", self.scan_at) == "start"):
            changes["starts"] = "best"
        return replace(self, **changes)

    def restricted_to(self, names) -> "Warmup":
        """A recipe's warm-up for a fit of ``names``: its scan and warm-up parameters among them (a warm-up left
        with no parameter to fit keeps only its scan)."""
        names = set(names)
        scan = tuple((n, p) for n, p in self.scan if n in names)
        starts = self.starts if scan else "best"
        if self.params is None:
            return replace(self, scan=scan, starts=starts)
        params = tuple(n for n in self.params if n in names)
        return replace(self, scan=scan, params=params or None, max_iter=self.max_iter if params else 0,
                       starts=starts)

    def held(self, names) -> Tuple[str, ...]:
        """The fitted ``names`` the warm-up iterations hold at their start values."""
        return tuple(n for n in names if self.params is not None and n not in self.params)

    def stage_keywords(self, kw: Mapping[str, Any]) -> dict:
        """The fit keywords of the warm-up stage from those of the whole fit."""
        directory = kw.get("checkpoint_dir")
        out = {**kw, "relaxation": self.relaxation, "fd_params": (), "max_iter": self.max_iter, "epochs": None,
               "hessian": False, "keep": "last", "history_path": None,
               "checkpoint_dir": None if directory is None else Path(directory) / WARMUP_DIR}
        for key, value in (("lr", self.lr), ("optimizer", self.optimizer), ("lr_decay", self.lr_decay)):
            if value is not None:
                out[key] = value
        if self.step_scales is not None:
            out["step_scales"] = dict(self.step_scales)
        if self.optimizer is not None and self.optimizer != "adam-full":
            out["adapt_steps"] = None
        return out


def _write_record(path: Path, meta: dict) -> None:
    """A stage record (plain JSON, no NaN), written atomically."""
    text = json.dumps(json_safe(meta), indent=1, allow_nan=False).encode("utf-8")
    atomic_write(path, lambda fh: fh.write(text))


def _read_record(path: Path, fmt: str) -> dict:
    """The stage record at ``path``, checked to be of format ``fmt``."""
    return read_json_record(path, fmt, f"{fmt} record")


def read_stage(directory: Optional[Path]) -> Optional[dict]:
    """The finished warm-up recorded in ``directory`` (None: none recorded)."""
    if directory is None or not (Path(directory) / STAGE_NAME).exists():
        return None
    path = Path(directory) / STAGE_NAME
    meta = _read_record(path, _STAGE_FORMAT)
    if not isinstance(meta.get("params"), dict):
        raise ValueError(f"{path} is not a {_STAGE_FORMAT} record (no params)")
    return meta


def scan_grid(scan: Tuple[Tuple[str, int], ...]) -> Dict[str, np.ndarray]:
    """The scan's points per parameter (physical units): the centres of ``points`` equal cells of its Table I range in
    log scale (never on a bound, where a fit in the box would start stuck)."""
    return {name: SPECS[name].low * (SPECS[name].high / SPECS[name].low) ** ((np.arange(int(points)) + 0.5)
                                                                            / int(points))
            for name, points in scan}


def _run_scan(probe, base: Mapping[str, float], scan, directory: Optional[Path], resume: bool,
              progress: bool, overwrite: bool = False) -> dict:
    """The loss on the grid (the other parameters at ``base``), or the scan recorded in ``directory``."""
    path = None if directory is None else Path(directory) / SCAN_NAME
    if path is not None and path.exists():
        if resume:
            meta = _read_record(path, _SCAN_FORMAT)
            if meta.get("scan") != [list(x) for x in scan]:
                raise ValueError(f"{path} records another scan than {dict(scan)}; resume with the same warmup_scan")
            return meta
        if not overwrite:
            raise FileExistsError(f"{path} holds the scan of an earlier fit; pass resume=True to continue that fit "
                                  f"or overwrite=True")
    unknown = [n for n, _ in scan if n not in probe.names]
    if unknown:
        raise ValueError(f"warmup_scan: {unknown} are not fitted ({probe.names})")
    axes = scan_grid(scan)
    names = list(axes)
    points = [dict(zip(names, combo)) for combo in
              np.array(np.meshgrid(*axes.values(), indexing="ij")).reshape(len(names), -1).T]
    t0 = time.perf_counter()
    losses = []
    from tqdm.auto import tqdm

    for point in tqdm(points, desc="warm-up scan", unit="point", disable=not progress):
        losses.append(probe.loss_at({**base, **{k: float(v) for k, v in point.items()}}))
    best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    meta = {"format": _SCAN_FORMAT, "scan": [list(x) for x in scan], "base": dict(base),
            "points": [{k: float(v) for k, v in p.items()} for p in points], "losses": losses,
            "best": {k: float(v) for k, v in points[best].items()}, "best_loss": float(losses[best]),
            "wall_time_s": time.perf_counter() - t0}
    if path is not None:
        _write_record(path, meta)
    return meta


def _summary(res) -> dict:
    return {"params": dict(res.params), "iterations": int(res.iterations), "wall_time_s": float(res.wall_time_s),
            "stop_reason": res.stop_reason, "final_loss": _last_loss(res.history)}


def _last_loss(history) -> Optional[float]:
    losses = [r.get("loss") for r in history or () if r.get("loss") is not None]
    return float(losses[-1]) if losses else None


def profile_starts(scan: Mapping[str, Any]) -> List[Dict[str, float]]:
    """One start per value of the scan's first parameter: the grid point of lowest loss among those with that value
    (a profile of the loss over the first parameter), in increasing order of the value."""
    first = scan["scan"][0][0]
    best: Dict[float, Tuple[float, Dict[str, float]]] = {}
    for point, loss in zip(scan["points"], scan["losses"]):
        if loss is None or not np.isfinite(loss):
            continue
        value = float(point[first])
        if value not in best or loss < best[value][0]:
            best[value] = (float(loss), dict(point))
    return [best[v][1] for v in sorted(best)]


def _finished(directory: Optional[Path], kw: Mapping[str, Any]) -> Optional[dict]:
    """The finished warm-up recorded in ``directory`` when the fit resumes (None: none, or not resuming); an
    earlier fit's record is refused unless ``overwrite``."""
    done = read_stage(directory) if kw.get("resume") else None
    if done is None and directory is not None and (directory / STAGE_NAME).exists() and not kw.get("overwrite"):
        raise FileExistsError(f"{directory / STAGE_NAME} records a finished warm-up of an earlier fit; pass "
                              f"resume=True to continue that fit or overwrite=True")
    return done


def _warm_up_from(make, stage_kw: Mapping[str, Any], warmup: Warmup, start: Dict[str, float], targets,
                  directory: Optional[Path], kw: Mapping[str, Any], budget_s: Optional[float]):
    """The warm-up iterations from ``start`` (checkpoints in ``directory``): ``(summary, result)``, the summary with
    the end point under "params"; a finished run recorded in ``directory`` is read back on resume (result None)."""
    done = _finished(directory, kw)
    if done is not None:
        return {k: v for k, v in done.items() if k != "format"}, None
    names = list(start)
    held = warmup.held(names)
    free = tuple(n for n in names if n not in held)
    if not free:
        raise ValueError(f"warmup_params {warmup.params} names none of the fitted parameters {names}")
    stage = make(**{**stage_kw, "params": free, "init": {n: start[n] for n in free}, "checkpoint_dir": directory,
                    "time_budget_s": budget_s, "fixed": {**dict(kw.get("fixed") or {}),
                                                         **{n: start[n] for n in held}}})
    stage.objective.share_targets(targets)
    res = stage.run()
    summary = {**_summary(res), "held": list(held), "start": dict(start), "params": {**start, **res.params}}
    return summary, res


def run_staged(make: Callable[..., Any], warmup: Warmup, kw: Mapping[str, Any]):
    """Run the warm-up (unless ``checkpoint_dir`` records it as finished and ``resume`` is on), then the main
    stage from its end point. ``make(**keywords)`` builds a :class:`~larnd_diff.fit.calibrator.Calibrator`. The
    target is made once, by the main stage's model, and fitted by both stages.

    With ``starts="profile"`` the warm-up runs once from every start of :func:`profile_starts` (checkpoints in
    ``CHECKPOINT_DIR/warmup/start_K``, each resumable) and the main stage starts from the end point whose loss under
    the main stage's own forward is lowest (recorded under "starts" and "chosen").

    Returns the main stage's :class:`~larnd_diff.fit.result.FitResult` with ``warmup`` = the warm-up's summary
    (end point, iterations, wall time, stop reason, last loss) and ``wall_time_s`` of both stages; if the time
    budget ends the warm-up, its own result (``stop_reason`` names the budget, ``warmup`` says it is unfinished).
    """
    stage_kw = warmup.stage_keywords(kw)
    directory = stage_kw["checkpoint_dir"]
    main_probe = make(**kw)
    targets = main_probe.objective  # the main stage's model makes the target once; both stages fit it
    budget = None if kw.get("time_budget_s") is None else float(kw["time_budget_s"])
    done = _finished(directory, kw)
    if done is None:
        probe = make(**stage_kw)  # every fitted parameter, the warm-up's forward: the start and the scan
        probe.objective.share_targets(targets)
        start, scan, spent = dict(probe.init), None, 0.0
        summary = {"iterations": 0, "wall_time_s": 0.0, "stop_reason": "scan only", "final_loss": None}

        def grid(base):
            found = _run_scan(probe, base, warmup.scan, directory, bool(kw.get("resume")),
                              bool(kw.get("progress", True)), bool(kw.get("overwrite")))
            return found, {**base, **found["best"]}

        if warmup.scan and warmup.scan_at == "start":
            scan, start = grid(start)
            spent += float(scan["wall_time_s"])
        if warmup.max_iter > 0:
            starts = ([{**start, **p} for p in profile_starts(scan)] if warmup.starts == "profile" else [start])
            runs = []
            for k, point in enumerate(starts):
                sub = directory if directory is None or len(starts) == 1 else directory / f"start_{k}"
                left = None if budget is None else max(budget - spent, 1e-9)
                run, res = _warm_up_from(make, stage_kw, warmup, point, targets, sub, kw, left)
                spent += float(run["wall_time_s"])
                if budget is not None and spent >= budget and res is not None:
                    res.warmup = {**run, "finished": False}
                    return res
                if sub is not None and len(starts) > 1:
                    _write_record(sub / STAGE_NAME, {"format": _STAGE_FORMAT, **run})
                runs.append(run)
            t0 = time.perf_counter()
            summary = _chosen(runs, main_probe) if len(runs) > 1 else runs[0]
            spent += time.perf_counter() - t0
            start = dict(summary["params"])
        if warmup.scan and warmup.scan_at == "end":
            scan, start = grid(start)
            spent += float(scan["wall_time_s"])
        if scan is not None:
            summary["scan"] = {k: scan[k] for k in ("scan", "best", "best_loss", "wall_time_s")}
            if warmup.max_iter == 0:
                summary["final_loss"] = scan["best_loss"]
        summary["params"] = start
        summary["wall_time_s"] = spent
        done = {"format": _STAGE_FORMAT, **summary, "relaxation": warmup.relaxation, "optimizer": warmup.optimizer,
                "lr": warmup.lr, "lr_decay": warmup.lr_decay, "starts_rule": warmup.starts}
        if directory is not None:
            _write_record(directory / STAGE_NAME, done)
    main_kw: Dict[str, Any] = {**kw, "init": {n: float(v) for n, v in done["params"].items()}}
    if budget is not None:
        main_kw["time_budget_s"] = max(budget - float(done["wall_time_s"]), 1e-9)
    main = make(**main_kw)
    main.objective.share_targets(targets)
    res = main.run()
    res.warmup = {k: v for k, v in done.items() if k != "format"} | {"finished": True}
    res.wall_time_s = float(res.wall_time_s) + float(done["wall_time_s"])
    return res


def _chosen(runs, judge) -> dict:
    """The warm-up of several starts: the run whose end point has the lowest loss under ``judge`` (the main
    stage's forward), with every run's start, end point and both losses under "starts"."""
    for run in runs:
        run["loss"] = judge.loss_at(run["params"])
    losses = [r["loss"] if np.isfinite(r["loss"]) else np.inf for r in runs]
    k = int(np.argmin(losses))
    keys = ("start", "params", "final_loss", "loss", "iterations", "stop_reason")
    return {**runs[k], "iterations": sum(int(r["iterations"]) for r in runs), "chosen": k,
            "starts": [{key: r[key] for key in keys} for r in runs]}
