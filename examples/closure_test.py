"""A data-like closure assembled from the fit's parts, with its plots.

    python examples/closure_test.py --targets 2 --out closure_out        # 6 parameters, CPU, a few minutes each
    python examples/closure_test.py --params Ab,lifetime --events 6      # a 2-parameter closure on a short sample

The same as ``larnd-diff closure`` (the command line is the tool for real runs), written out so that each part of
the fit is visible: the objective (segments in batches, a target made by the Numba reference with electronics
noise, the differentiable model, the expected-noise likelihood), the coordinates, the optimiser, the gradient
estimator, the controllers, the uncertainty. Writes ``closure.json``, ``convergence_band.png``,
``trajectories_<i>.png`` and ``correlation_<i>.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from larnd_diff.fit import (Budget, Calibrator, Convergence, Coordinates, HessianUncertainty, Model, NoiseLikelihood,
                            Objective, Optimiser, Progress, ReverseMode, SimulatedTarget, StepAdaptation,
                            default_sample, plot_convergence_band, plot_correlation, plot_trajectories,
                            random_targets)
from larnd_diff.fit.options import parse_names
from larnd_diff.fit.recorder import json_safe
from larnd_diff.params import FIT_PARAMETERS


def one_fit(segs, truth, names, seed, max_iter, device):
    model = Model(backend="torch", device=device, relaxation="smooth", link_vdrift="eField" in names)
    target = SimulatedTarget(truth, simulator="reference", noise=True, precision="larnd-sim", chunk_size=None)
    objective = Objective(segs, target, model, NoiseLikelihood(), batch_length_cm=1e6, seed=seed)
    cal = Calibrator(objective, names, budget=Budget(max_iter=max_iter),
                     coordinates=Coordinates("log", {"eField": 0.1}, "ranges"),
                     optimiser=Optimiser("adam-full", lr=5e-2, lr_decay=0.99, clip_norm=None),
                     gradient=ReverseMode(), controllers=(StepAdaptation.from_settings({"shrink": 0.7, "tstat": 2}),
                                                          Convergence(1e-3, 20, "log")),
                     progress=Progress(True), uncertainty=HessianUncertainty())
    return cal.run()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=2)
    p.add_argument("--params", type=parse_names, default=FIT_PARAMETERS)
    p.add_argument("--events", type=int, default=10, help="generated 1 GeV muon events (one muon each)")
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...)")
    p.add_argument("--out", type=Path, default=Path("closure_out"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    segs = default_sample(args.events, seed=1, cuts="drift", fluctuations=True)
    results = [one_fit(segs, truth, list(args.params), args.seed + i, args.max_iter, args.device)
               for i, truth in enumerate(random_targets(args.targets, args.params, args.seed))]
    rows = [json_safe({"target": r.target, "fitted": r.params, "errors": r.errors, "pulls": r.pulls(),
                       "relative_error": r.relative_error(), "iterations": r.iterations}) for r in results]
    (args.out / "closure.json").write_text(json.dumps({"targets": rows}, indent=1, allow_nan=False))
    plot_convergence_band(results, args.out / "convergence_band.png")
    for i, r in enumerate(results):
        plot_trajectories(r, args.out / f"trajectories_{i:03d}.png")
        plot_correlation(r.correlation, r.names, args.out / f"correlation_{i:03d}.png")
        print(f"target {i}:\n{r.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
