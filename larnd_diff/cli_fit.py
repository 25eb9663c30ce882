"""``larnd-diff fit`` and ``larnd-diff closure``: calibration from the command line.

    larnd-diff fit SEGMENTS.h5 --target TARGET.h5 --checkpoint-dir DIR [--resume] ...
    larnd-diff fit SEGMENTS.h5 --target-params Ab=0.85,lifetime=3000 --checkpoint-dir DIR ...
    larnd-diff closure --targets 10 --seed S --backend torch --max-iter N --json OUT.json

``add_fit_commands(subparsers)`` adds both to an argparse sub-parser collection (``larnd_diff.cli`` hooks them in);
``main(argv)`` runs them stand-alone (``python -m larnd_diff.cli_fit closure ...``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .params import FIT_PARAMETERS, SPECS

__all__ = ["add_fit_commands", "main", "parse_assignments", "parse_names"]


def parse_names(text: str) -> list[str]:
    """"Ab,kb,eField" -> ["Ab", "kb", "eField"], checking the names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise SystemExit(f"unknown parameter(s) {unknown}; known: {', '.join(sorted(SPECS))}")
    if not names:
        raise SystemExit("no parameter named")
    return names


def parse_assignments(text: str | None) -> dict:
    """"Ab=0.85,lifetime=3000" -> {"Ab": 0.85, "lifetime": 3000.0}, checking names and numbers."""
    out = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        if name not in SPECS:
            raise SystemExit(f"unknown parameter {name!r}; known: {', '.join(sorted(SPECS))}")
        try:
            out[name] = float(value)
        except ValueError:
            raise SystemExit(f"{name}: {value!r} is not a number") from None
    return out


def _add_optimizer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=",".join(FIT_PARAMETERS),
                   help=f"comma-separated parameters to fit (default: {','.join(FIT_PARAMETERS)})")
    p.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    p.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--relaxation", default="smooth", choices=("smooth", "hard"))
    p.add_argument("--loss", default="sdtw_adc", help="a loss of larnd_diff.losses (default sdtw_adc)")
    p.add_argument("--lr", type=float, default=5e-2, help="Adam learning rate (default 5e-2)")
    p.add_argument("--lr-decay", type=float, default=0.95, help="learning-rate factor per epoch (default 0.95)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip (default 1; 0 = off)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--batch-length", type=float, default=100.0, help="cm of track per mini-batch (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link-vdrift", action=argparse.BooleanOptionalAction, default=None,
                   help="drift velocity follows eField through the mobility model (default: on when eField is "
                        "fitted; unlinked, kb and eField are degenerate: they enter recombination only as "
                        "kb/eField)")
    p.add_argument("--model-noise", action="store_true", help="simulate the model with electronics noise")
    p.add_argument("--target-noise", action="store_true", help="simulated targets with electronics noise")
    p.add_argument("--target-simulator", default="same", choices=("same", "reference"),
                   help="simulate parameter targets with the fit's simulator (default) or the Numba reference")
    p.add_argument("--no-hessian", action="store_true", help="skip the Hessian/covariance at the end")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--plots", type=Path, default=None, help="directory for the PNG plots")
    p.add_argument("--toy", action="store_true",
                   help="use the closed-form stand-in model and loss (larnd_diff.fit.toy_simulator): exercises "
                        "the fit machinery in seconds, no physics")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _fit_options(args) -> dict:
    toy = {}
    if args.toy:
        from .fit import toy_loss, toy_simulator

        toy = {"simulator": toy_simulator, "loss": toy_loss}
    return dict(backend=args.backend, device=args.device, dtype=args.dtype, relaxation=args.relaxation,
                **{"loss": args.loss, **toy}, lr=args.lr, lr_decay=args.lr_decay, clip_norm=args.clip_norm or None,
                epochs=args.epochs, max_iter=args.max_iter, batch_length_cm=args.batch_length,
                link_vdrift=args.link_vdrift, model_noise=args.model_noise, target_noise=args.target_noise,
                target_simulator=args.target_simulator, hessian=not args.no_hessian,
                checkpoint_every=args.checkpoint_every, progress=not args.quiet)


def add_fit_commands(subparsers) -> None:
    """Add the ``fit`` and ``closure`` sub-commands to an argparse sub-parser collection."""
    f = subparsers.add_parser("fit", help="fit detector parameters to target hits (calibration)")
    f.add_argument("segments", type=Path, help="segments HDF5 (edep-sim frame unless --no-swap)")
    tgt = f.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--target", type=Path, help="target hits HDF5 (group 'hits', e.g. from larnd-diff simulate)")
    tgt.add_argument("--target-params", metavar="NAME=V,...", help="simulate the target with these values")
    f.add_argument("--checkpoint-dir", type=Path, required=True, help="checkpoints and history.jsonl go here")
    f.add_argument("--resume", action="store_true", help="continue the fit checkpointed in --checkpoint-dir")
    f.add_argument("--overwrite", action="store_true", help="discard an earlier fit in --checkpoint-dir")
    f.add_argument("--init", metavar="NAME=V,...", default=None, help="start values (default nominal)")
    f.add_argument("--history", type=Path, default=None, help="history JSON lines (default DIR/history.jsonl)")
    f.add_argument("--select", action="store_true", help="apply the paper's track selection first")
    f.add_argument("--no-swap", action="store_true", help="segments are already in the simulation frame")
    f.add_argument("--json", type=Path, default=None, help="write the FitResult as JSON")
    _add_optimizer_options(f)
    f.set_defaults(func=cmd_fit)

    c = subparsers.add_parser("closure", help="closure test: fit random targets from nominal, report errors")
    c.add_argument("--targets", type=int, default=10, help="number of random targets (default 10)")
    c.add_argument("--segments", type=Path, default=None,
                   help="segments HDF5 (default: a generated sample of 1 GeV muons, --events events, "
                        "with the paper's selection)")
    c.add_argument("--events", type=int, default=10, help="events of the generated sample (default 10)")
    c.add_argument("--sample-seed", type=int, default=1, help="seed of the generated sample (default 1)")
    c.add_argument("--no-swap", action="store_true", help="--segments are already in the simulation frame")
    c.add_argument("--checkpoint-dir", type=Path, default=None, help="one sub-directory per target")
    c.add_argument("--json", type=Path, required=True, help="write the closure summary here")
    c.add_argument("--tolerance", type=float, default=0.01, help="for iterations_to_1pct (default 0.01)")
    _add_optimizer_options(c)
    c.set_defaults(func=cmd_closure)


def _load_segments(path: Path, no_swap: bool, select: bool):
    from .io import load_segments

    segs = load_segments(path, swap_xz=not no_swap)
    return _select(segs) if select else segs


def _select(segs):
    from .selection import select_tracks

    kept = select_tracks(segs)
    if len(kept) == 0:
        raise SystemExit("no track passes the selection; run without it or use more events")
    return kept


def default_sample(events: int = 10, seed: int = 1):
    """The closure's default sample: ``events`` generated 1 GeV muons after the paper's selection."""
    from .generate import generate_muons

    return _select(generate_muons(n_events=events, seed=seed))


def cmd_fit(args) -> int:
    from .fit import fit, plot_loss, plot_trajectories
    from .hits import load_hits

    names = parse_names(args.params)
    segs = _load_segments(args.segments, args.no_swap, args.select)
    target = load_hits(args.target) if args.target is not None else parse_assignments(args.target_params)
    if args.epochs is None and args.max_iter is None:
        args.epochs = 10
    res = fit(segs, target, params=names, init=parse_assignments(args.init) or None,
              checkpoint_dir=args.checkpoint_dir, resume=args.resume, history_path=args.history,
              overwrite=args.overwrite, seed=args.seed, **_fit_options(args))
    print(res.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(res.to_dict(), indent=1, default=float))
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_trajectories(res, args.plots / "trajectories.png")
        plot_loss(res, args.plots / "loss.png")
    return 0


def cmd_closure(args) -> int:
    from .fit import closure, plot_convergence_band, plot_trajectories

    names = parse_names(args.params)
    segs = _load_segments(args.segments, args.no_swap, True) if args.segments is not None \
        else default_sample(args.events, args.sample_seed)
    if args.epochs is None and args.max_iter is None:
        args.max_iter = 300
    opts = _fit_options(args)
    out = closure(segs, n_targets=args.targets, params=names, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                  tolerance=args.tolerance, **opts)
    results = out.pop("results")
    out["settings"] = {"params": names, "n_segments": int(len(segs)),
                       "track_length_cm": float(segs["dx"].sum()),
                       **{k: v for k, v in opts.items() if k not in ("progress", "simulator", "loss")},
                       "loss": "toy" if args.toy else args.loss}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    within = sum(1 for r in out["targets"] if r["max_relative_error"] < args.tolerance)
    print(f"{within}/{len(out['targets'])} targets within {args.tolerance:.1%} after at most "
          f"{max(r['iterations'] for r in out['targets'])} iterations -> {args.json}")
    for i, r in enumerate(out["targets"]):
        print(f"  target {i}: max |rel err| {r['max_relative_error']:.3%}, to {args.tolerance:.0%}: "
              f"{r['iterations_to_1pct']} it, {r['wall_time_s']:.1f} s, skipped {r['n_skipped']}")
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_convergence_band(results, args.plots / "convergence_band.png", args.tolerance)
        for i, r in enumerate(results):
            plot_trajectories(r, args.plots / f"trajectories_{i:03d}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="larnd-diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fit_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
