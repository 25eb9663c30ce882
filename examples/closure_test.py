"""A closure test: fit random targets from nominal and save the plots.

    python examples/closure_test.py --targets 3 --out closure_out          # the CPU closure recipe, 6 parameters
    python examples/closure_test.py --recipe paper --events 10 --cuts paper --no-fluctuations --max-iter 300
                                                     # the paper's settings (Adam, Soft-DTW on ADC, 100 cm batches)
    python examples/closure_test.py --toy            # the closed-form stand-in model: seconds, no physics
    python examples/closure_test.py --params Ab,eField --max-length 40 --targets 3
                                                     # a 2-parameter closure on a short sample

Writes ``closure.json`` (the ``larnd-diff closure`` format), ``convergence_band.png`` (max relative distance to
the target over parameters vs iteration, all fits: the paper's Fig. 16 style), ``trajectories_<i>.png``
(parameter / nominal vs iteration with the target) and ``loss_<i>.png`` per fit. The recipes are
``larnd_diff.fit.CLOSURE_RECIPE`` (default) and ``PAPER_RECIPE``; ``--lr``, ``--lr-decay``, ``--loss``,
``--batch-length`` override single settings of the chosen one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from larnd_diff.cli_fit import default_sample, parse_names
from larnd_diff.fit import (RECIPES, closure, plot_convergence_band, plot_loss, plot_trajectories, toy_loss,
                            toy_simulator)
from larnd_diff.params import FIT_PARAMETERS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="closure", choices=sorted(RECIPES))
    p.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    p.add_argument("--targets", type=int, default=3)
    p.add_argument("--params", default=",".join(FIT_PARAMETERS))
    p.add_argument("--max-iter", type=int, default=400)
    p.add_argument("--events", type=int, default=10, help="generated 1 GeV muon events (one muon each)")
    p.add_argument("--cuts", default="drift", choices=("drift", "paper"),
                   help="track selection (see larnd-diff closure --help)")
    p.add_argument("--fluctuations", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch-length", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-decay", type=float, default=None)
    p.add_argument("--loss", default=None, help="a loss of larnd_diff.losses (the recipe's loss options are dropped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...)")
    p.add_argument("--max-length", type=float, default=None,
                   help="keep only whole tracks, shortest first, up to this many cm (a quick CPU sample)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop a fit once every parameter is within this relative distance of its target (a demo "
                        "shortcut: it looks at the target, which a real fit cannot)")
    p.add_argument("--time-budget", type=float, default=None, help="stop a fit after this many seconds")
    p.add_argument("--toy", action="store_true", help="closed-form stand-in model instead of the simulator")
    p.add_argument("--out", type=Path, default=Path("closure_out"))
    return p.parse_args(argv)


def shortest_tracks(segs, max_length_cm: float):
    """Whole tracks, shortest first, while their total length stays within ``max_length_cm``."""
    from larnd_diff.selection import track_index

    _, inv = track_index(segs)
    lengths = np.bincount(inv, weights=segs["dx"].astype(np.float64))
    order = np.argsort(lengths, kind="stable")
    keep = order[np.cumsum(lengths[order]) <= max_length_cm]
    return segs[np.isin(inv, keep)]


def stopper(stop_at, budget_s):
    """A fit callback: True (stop) when within ``stop_at`` of the target or after ``budget_s`` seconds."""
    if stop_at is None and budget_s is None:
        return None
    state = {"t0": None}

    def callback(rec):
        if rec["iteration"] == 0 or state["t0"] is None:
            state["t0"] = time.perf_counter()
        close = stop_at is not None and rec.get("max_rel_err", np.inf) < stop_at
        late = budget_s is not None and time.perf_counter() - state["t0"] > budget_s
        return close or late
    return callback


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    segs = default_sample(args.events, seed=1, cuts=args.cuts, fluctuations=args.fluctuations)
    if args.max_length is not None:
        segs = shortest_tracks(segs, args.max_length)
    print(f"{len(segs)} segments, {float(segs['dx'].sum()):.1f} cm of selected muon track")
    opts = dict(RECIPES[args.recipe])
    for key, value in (("lr", args.lr), ("lr_decay", args.lr_decay), ("batch_length_cm", args.batch_length)):
        if value is not None:
            opts[key] = value
    if args.loss is not None:
        opts.update(loss=args.loss, loss_options=None)
    if args.toy:
        opts.update(simulator=toy_simulator, loss=toy_loss, loss_options=None)
    t0 = time.perf_counter()
    out = closure(segs, n_targets=args.targets, params=parse_names(args.params), seed=args.seed,
                  backend=args.backend, max_iter=args.max_iter, progress=True, hessian=False, device=args.device,
                  callback=stopper(args.stop_at, args.time_budget), **opts)
    results = out.pop("results")
    out["settings"] = {"recipe": args.recipe, **{k: v for k, v in opts.items() if k not in ("simulator", "loss")},
                       "loss": "toy" if args.toy else str(opts["loss"]), "n_segments": int(len(segs)),
                       "track_length_cm": float(segs["dx"].sum())}
    (args.out / "closure.json").write_text(json.dumps(out, indent=1))
    plot_convergence_band(results, args.out / "convergence_band.png")
    for i, r in enumerate(results):
        plot_trajectories(r, args.out / f"trajectories_{i:03d}.png")
        plot_loss(r, args.out / f"loss_{i:03d}.png")
    for i, r in enumerate(out["targets"]):
        print(f"target {i}: max |rel err| {r['max_relative_error']:.3%}, <1 % after {r['iterations_to_1pct']} "
              f"iterations, {r['iterations']} iterations in {r['wall_time_s']:.1f} s ({r['stop_reason']})")
    print(f"total {time.perf_counter() - t0:.1f} s; plots and closure.json in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
