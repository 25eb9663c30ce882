"""Closure tests: fit from the start to random targets whose true values are known, and report the errors."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..params import FIT_PARAMETERS, SPECS
from .coordinates import check_names
from .objective import derived_seed
from .recipes import fit
from .recorder import json_safe

__all__ = ["closure", "random_targets", "select", "default_sample"]


def random_targets(n: int, params: Sequence[str] = FIT_PARAMETERS, seed: int = 0) -> List[Dict[str, float]]:
    """``n`` target points drawn uniformly in the parameters' Table I ranges (seeded)."""
    check_names(list(params), "params")
    rng = np.random.default_rng(derived_seed("closure-targets", seed))
    return [{p: float(rng.uniform(SPECS[p].low, SPECS[p].high)) for p in params} for _ in range(n)]


def closure(segments, n_targets: int = 10, params: Sequence[str] = FIT_PARAMETERS, seed: int = 0,
            targets: Optional[Sequence[Mapping[str, float]]] = None, checkpoint_dir=None,
            tolerance: float = 0.01, only: Optional[Sequence[int]] = None, **fit_options) -> dict:
    """Closure test: fit from nominal to ``n_targets`` random targets (or the given ``targets``).

    ``only`` runs a subset of the target list by index (the others are not fitted); target ``i`` always gets the
    same fit seed and checkpoint sub-directory, so a closure can be split over processes or machines.

    Returns ``{"targets": [{"index", "target", "fitted", "relative_error", "errors", "pulls", "iterations",
    "iterations_to_1pct", "wall_time_s", "n_skipped", "max_relative_error", ...}, ...]}`` (JSON-safe; the
    ``iterations_to_1pct`` use ``tolerance``), plus the FitResults under the key ``"results"`` (not JSON; drop it
    before dumping).
    """
    targets = list(targets) if targets is not None else random_targets(n_targets, params, seed)
    chosen = range(len(targets)) if only is None else [int(i) for i in only]
    bad = [i for i in chosen if not 0 <= i < len(targets)]
    if bad:
        raise ValueError(f"only: target index(es) {bad} outside 0..{len(targets) - 1}")
    rows, results = [], []
    for i in chosen:
        tgt = targets[i]
        ck = Path(checkpoint_dir) / f"target_{i:03d}" if checkpoint_dir is not None else None
        res = fit(segments, dict(tgt), params=params, seed=seed + i, checkpoint_dir=ck, **fit_options)
        results.append(res)
        rows.append(json_safe({
            "index": i, "target": dict(tgt), "fitted": res.params, "relative_error": res.relative_error(),
            "max_relative_error": res.max_relative_error(), "errors": res.errors,
            "pulls": res.pulls() if res.errors else None, "iterations": res.iterations,
            "iterations_to_1pct": res.iterations_to(tolerance), "wall_time_s": res.wall_time_s,
            "wall_time_to_1pct_s": res.wall_time_to(tolerance), "n_skipped": res.n_skipped,
            "stop_reason": res.stop_reason, "at_bounds": res.at_bounds, "hessian_method": res.hessian_method,
            "hessian_posdef": res.hessian_posdef, "correlation": res.correlation,
            "selected_iteration": res.selected_iteration, "selected_loss": res.selected_loss,
            "warmup": res.warmup}))
    return {"targets": rows, "results": results}


def select(segments, cuts: str = "paper"):
    """The paper's track selection ("paper": only segments within 15 cm of the anode) or the same without the
    15 cm cut ("drift": tracks keep their whole drift span, which lifetime and diffusion need)."""
    from ..selection import SelectionCuts, select_tracks

    if cuts not in ("paper", "drift"):
        raise ValueError(f"cuts must be 'paper' or 'drift', got {cuts!r}")
    kept = select_tracks(segments, SelectionCuts() if cuts == "paper" else SelectionCuts(max_anode_distance_cm=None))
    if len(kept) == 0:
        raise ValueError("no track passes the selection; run without it or use more events")
    return kept


def default_sample(events: int = 10, seed: int = 1, cuts: str = "paper", fluctuations: bool = False,
                   tracks: int = 1):
    """Generated 1 GeV muons (``events`` events of ``tracks`` muons) through the selection ``cuts``. The closure
    command uses ``cuts="drift", fluctuations=True``: 10 events give 6 tracks, 440 segments, 218 cm; the paper's
    scale (100 events x 10 muons, paper cuts) gives 10,672 segments, 5,307 cm."""
    from ..generate import generate_muons

    return select(generate_muons(n_events=events, tracks_per_event=tracks, seed=seed, fluctuations=fluctuations),
                  cuts)
