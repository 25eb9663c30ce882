"""A small closure test: fit random targets from nominal and save the plots.

    python examples/closure_test.py --backend torch --targets 3 --max-iter 300 --events 10 --out closure_out
    python examples/closure_test.py --toy            # the closed-form stand-in model: seconds, no physics
    python examples/closure_test.py --params Ab,eField --loss sdtw --max-length 15 --stop-at 0.01 --targets 3
                                                     # the 2-parameter closure measured in the fit report

Writes ``closure.json`` (the ``larnd-diff closure`` format), ``convergence_band.png`` (max relative distance to
the target over parameters vs iteration, all fits: the paper's Fig. 16 style), ``trajectories_<i>.png``
(parameter / nominal vs iteration with the target) and ``loss_<i>.png`` per fit.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from larnd_diff.cli_fit import default_sample, parse_names
from larnd_diff.fit import closure, plot_convergence_band, plot_loss, plot_trajectories, toy_loss, toy_simulator
from larnd_diff.params import FIT_PARAMETERS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    p.add_argument("--targets", type=int, default=3)
    p.add_argument("--params", default=",".join(FIT_PARAMETERS))
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--events", type=int, default=10, help="generated 1 GeV muon events (paper's selection)")
    p.add_argument("--batch-length", type=float, default=100.0)
    p.add_argument("--lr", type=float, default=5e-2)
    p.add_argument("--lr-decay", type=float, default=0.95)
    p.add_argument("--loss", default="sdtw_adc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...)")
    p.add_argument("--max-length", type=float, default=None,
                   help="keep only whole tracks, shortest first, up to this many cm (a quick CPU sample)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop a fit once every parameter is within this relative distance of its target")
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
    segs = default_sample(args.events, seed=1)
    if args.max_length is not None:
        segs = shortest_tracks(segs, args.max_length)
    print(f"{len(segs)} segments, {float(segs['dx'].sum()):.1f} cm of selected muon track")
    extra = {"simulator": toy_simulator, "loss": toy_loss} if args.toy else {"loss": args.loss}
    t0 = time.perf_counter()
    out = closure(segs, n_targets=args.targets, params=parse_names(args.params), seed=args.seed,
                  backend=args.backend, max_iter=args.max_iter, batch_length_cm=args.batch_length, lr=args.lr,
                  lr_decay=args.lr_decay, progress=True, hessian=False, device=args.device,
                  callback=stopper(args.stop_at, args.time_budget), **extra)
    results = out.pop("results")
    (args.out / "closure.json").write_text(json.dumps(out, indent=1))
    plot_convergence_band(results, args.out / "convergence_band.png")
    for i, r in enumerate(results):
        plot_trajectories(r, args.out / f"trajectories_{i:03d}.png")
        plot_loss(r, args.out / f"loss_{i:03d}.png")
    for i, r in enumerate(out["targets"]):
        print(f"target {i}: max |rel err| {r['max_relative_error']:.3%}, <1 % after {r['iterations_to_1pct']} "
              f"iterations, {r['wall_time_s']:.1f} s")
    print(f"total {time.perf_counter() - t0:.1f} s; plots and closure.json in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
