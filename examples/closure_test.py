"""A small closure test: fit random targets from nominal and save the plots.

    python examples/closure_test.py --backend torch --targets 3 --max-iter 300 --events 10 --out closure_out
    python examples/closure_test.py --toy            # the closed-form stand-in model: seconds, no physics

Writes ``closure.json`` (the ``larnd-diff closure`` format), ``convergence_band.png`` (max relative distance to
the target over parameters vs iteration, all fits: the paper's Fig. 16 style), ``trajectories_<i>.png``
(parameter / nominal vs iteration with the target) and ``loss_<i>.png`` per fit.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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
    p.add_argument("--toy", action="store_true", help="closed-form stand-in model instead of the simulator")
    p.add_argument("--out", type=Path, default=Path("closure_out"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    segs = default_sample(args.events, seed=1)
    print(f"{len(segs)} segments, {float(segs['dx'].sum()):.1f} cm of selected muon track")
    extra = {"simulator": toy_simulator, "loss": toy_loss} if args.toy else {"loss": args.loss}
    t0 = time.perf_counter()
    out = closure(segs, n_targets=args.targets, params=parse_names(args.params), seed=args.seed,
                  backend=args.backend, max_iter=args.max_iter, batch_length_cm=args.batch_length, lr=args.lr,
                  lr_decay=args.lr_decay, progress=True, hessian=False, **extra)
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
