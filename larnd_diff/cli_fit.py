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


#: Command-line option -> fit keyword, for the options a recipe sets (``--recipe``).
_RECIPE_OPTIONS = {"optimizer": "optimizer", "parameterization": "parameterization", "lr": "lr",
                   "lr_decay": "lr_decay", "clip_norm": "clip_norm", "loss": "loss", "batch_length": "batch_length_cm",
                   "relaxation": "relaxation", "stop_tol": "stop_tol", "stop_window": "stop_window",
                   "step_scales": "step_scales", "adapt_steps": "adapt_steps", "loss_options": "loss_options",
                   "fd_params": "fd_params", "fd_until": "fd_until", "bounds": "bounds"}


def _add_optimizer_options(p: argparse.ArgumentParser, recipe: str) -> None:
    from .fit import FD_STEP, RECIPES

    p.add_argument("--recipe", default=recipe, choices=sorted(RECIPES),
                   help=f"default optimiser/loss settings (default {recipe}): 'paper' = Adam on p/nominal, lr 5e-2 "
                        f"x0.95 per epoch, clip 1, Soft-DTW on ADC, 100 cm batches, smooth relaxation (the paper's); "
                        f"'closure' = full-matrix Adam on ln(p/nominal), Soft-DTW on (x, y, t, ADC), the whole "
                        f"sample per step, continuous ADC, tran_diff's gradient by central differences in the "
                        f"first 100 iterations, parameters kept in their Table I ranges, stop on convergence. "
                        f"Options given explicitly override the recipe")
    p.add_argument("--params", default=",".join(FIT_PARAMETERS),
                   help=f"comma-separated parameters to fit (default: {','.join(FIT_PARAMETERS)})")
    p.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    p.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--relaxation", default=None, choices=("smooth", "smooth-continuous", "hard"),
                   help="simulator relaxation: smooth (the reference's values: hard current onset, integer ADC; "
                        "straight-through gradients), smooth-continuous (real-valued ADC and sigmoid onset in the "
                        "value: a continuous loss), hard (default: the recipe's)")
    p.add_argument("--loss", default=None, help="a loss of larnd_diff.losses, e.g. sdtw_adc (the paper's), sdtw "
                                                "(x, y, t, ADC), chamfer, mmd (default: the recipe's)")
    p.add_argument("--optimizer", default=None, choices=("adam", "adam-full"),
                   help="adam = the framework's Adam; adam-full = full-matrix Adam (default: the recipe's)")
    p.add_argument("--parameterization", default=None, choices=("linear", "log"),
                   help="optimiser coordinates: p/nominal or ln(p/nominal) (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--lr-decay", type=float, default=None, help="learning-rate factor per epoch (default: recipe)")
    p.add_argument("--clip-norm", type=float, default=None, help="global gradient-norm clip (0 = off; default: recipe)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--batch-length", type=float, default=None, help="cm of track per mini-batch (default: recipe)")
    p.add_argument("--stop-tol", type=float, default=None,
                   help="stop when every parameter moved less than this (optimiser coordinates) over the last "
                        "--stop-window iterations; 0 = never (default: the recipe's)")
    p.add_argument("--stop-window", type=int, default=None, help="iterations of the stopping rule (default: recipe)")
    p.add_argument("--step-scales", type=parse_assignments, default=None, metavar="NAME=S,...",
                   help="per-parameter factors on the optimiser's step (coordinates u = ln(p/nominal) / S); the "
                        "closure recipe uses eField=0.1: the drift time pins eField ~100x tighter than the others, "
                        "and full steps on it make every hit time jump (default: the recipe's)")
    p.add_argument("--adapt-steps", type=_parse_adapt, default=None, metavar="off|on|KEY=V,...",
                   help="per-parameter step factors adapted from the trajectory (adam-full only): 'off', 'on' "
                        "(defaults of larnd_diff.fit.ADAPT_DEFAULTS) or overrides such as shrink=0.7,window=10 "
                        "(default: the recipe's)")
    p.add_argument("--loss-scales", type=_parse_scales, default=None, dest="loss_options", metavar="F=S,...",
                   help="feature scales of the sdtw/chamfer/mmd losses, e.g. adc=1.5,t=0.3 (x, y in cm, t in us, "
                        "adc in counts; default: the recipe's)")
    p.add_argument("--fd-params", type=_fd_names, default=None, metavar="NAME,...|none",
                   help="parameters whose gradient is taken by central differences of the loss (two forward "
                        "passes each) instead of reverse mode, which cannot see hits appearing or vanishing at "
                        "the trigger threshold (default: the recipe's)")
    p.add_argument("--fd-step", type=float, default=FD_STEP,
                   help=f"relative parameter step of --fd-params (default {FD_STEP})")
    p.add_argument("--fd-switch", type=int, default=None, metavar="N",
                   help="return a --fd-params parameter to reverse mode for good once its central difference "
                        "and reverse-mode gradient agreed in sign N iterations in a row (default: never)")
    p.add_argument("--fd-until", type=int, default=None, metavar="N",
                   help="take the --fd-params gradients by central differences only in the first N iterations "
                        "(the far field, where reverse mode is biased), reverse mode after; 0 = in every iteration "
                        "(default: the recipe's)")
    p.add_argument("--bounds", type=_parse_bounds, default=None, metavar="ranges|none|NAME=LO:HI,...",
                   help="box constraints: 'ranges' = each parameter's physical range (the paper's Table I, "
                        "larnd_diff.params), 'none', or NAME=LO:HI pairs in physical units (an empty side is "
                        "open: lifetime=100:); the parameters are projected onto the box after every step "
                        "(default: the recipe's; the closure recipe uses 'ranges')")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop a fit after S seconds of wall time (default: no limit)")
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


def _parse_adapt(text: str):
    text = text.strip()
    if text in ("off", "none", "0"):
        return {}
    if text in ("on", "1", ""):
        return {"window": 10}
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--adapt-steps: expected off, on or KEY=V,..., got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--adapt-steps: {key}: {value!r} is not a number") from None
    from .fit import ADAPT_DEFAULTS

    unknown = sorted(set(out) - set(ADAPT_DEFAULTS))
    if unknown:
        raise SystemExit(f"--adapt-steps: unknown key(s) {unknown}; known: {sorted(ADAPT_DEFAULTS)}")
    return out


def _parse_scales(text: str):
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in ("x", "y", "t", "adc"):
            raise SystemExit(f"--loss-scales: expected F=S with F in x, y, t, adc, got {item!r}")
        out[key.strip()] = float(value)
    return {"scales": out} if out else {}


def _parse_bounds(text: str):
    """"ranges" -> "ranges"; "none" -> {} (no bounds); "lifetime=500:5000,long_diff=:9e-6" -> {name: (lo, hi)}."""
    text = text.strip()
    if text in ("ranges", "none"):
        return text if text == "ranges" else {}
    out = {}
    for item in text.split(","):
        name, eq, rng = item.strip().partition("=")
        lo, colon, hi = rng.partition(":")
        if not eq or not colon:
            raise argparse.ArgumentTypeError(f"expected ranges, none or NAME=LO:HI, got {item.strip()!r}")
        if name.strip() not in SPECS:
            raise argparse.ArgumentTypeError(f"unknown parameter {name.strip()!r}; known: {', '.join(sorted(SPECS))}")
        try:
            out[name.strip()] = tuple(float(v) if v.strip() else None for v in (lo, hi))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name.strip()}: {rng!r} is not LO:HI with numbers") from None
    return out


def _apply_recipe(args) -> None:
    """Fill the options not given on the command line from ``--recipe``."""
    from .fit import RECIPES

    recipe = RECIPES[args.recipe]
    if (args.loss is not None or getattr(args, "toy", False)) and args.loss_options is None:
        args.loss_options = {}  # the recipe's loss options belong to the recipe's loss
    for opt, key in _RECIPE_OPTIONS.items():
        if getattr(args, opt) is None:
            setattr(args, opt, recipe[key])


def _fit_options(args) -> dict:
    _apply_recipe(args)
    toy = {}
    if args.toy:
        from .fit import toy_loss, toy_simulator

        toy = {"simulator": toy_simulator, "loss": toy_loss}
    return dict(backend=args.backend, device=args.device, dtype=args.dtype, relaxation=args.relaxation,
                **{"loss": args.loss, **toy}, lr=args.lr, lr_decay=args.lr_decay, clip_norm=args.clip_norm or None,
                epochs=args.epochs, max_iter=args.max_iter, batch_length_cm=args.batch_length,
                optimizer=args.optimizer, parameterization=args.parameterization,
                stop_tol=args.stop_tol or None, stop_window=args.stop_window, step_scales=args.step_scales,
                adapt_steps=args.adapt_steps or None, loss_options=args.loss_options or None,
                time_budget_s=args.time_budget, fd_params=args.fd_params or (), fd_step=args.fd_step,
                fd_switch=args.fd_switch, fd_until=args.fd_until or None, bounds=args.bounds or None,
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
    _add_optimizer_options(f, "paper")
    f.set_defaults(func=cmd_fit)

    c = subparsers.add_parser("closure", help="closure test: fit random targets from nominal, report errors")
    c.add_argument("--targets", type=int, default=10, help="number of random targets (default 10)")
    c.add_argument("--segments", type=Path, default=None,
                   help="segments HDF5 (default: a generated sample of 1 GeV muons, --events events, "
                        "through --cuts)")
    c.add_argument("--events", type=int, default=10, help="events of the generated sample (default 10)")
    c.add_argument("--tracks", type=int, default=1,
                   help="1 GeV muons per event of the generated sample (default 1; the paper's scale is "
                        "--events 100 --tracks 10 --cuts paper)")
    c.add_argument("--only", type=_indices, default=None, metavar="I,J,...",
                   help="fit only these targets of the --targets list (0-based), e.g. to split a closure over "
                        "processes; target i keeps its seed and checkpoint sub-directory")
    c.add_argument("--resume", action="store_true",
                   help="continue the fits found in --checkpoint-dir (targets without a checkpoint start fresh)")
    c.add_argument("--sample-seed", type=int, default=1, help="seed of the generated sample (default 1)")
    c.add_argument("--cuts", default="drift", choices=("drift", "paper"),
                   help="track selection: 'paper' = the paper's cuts (only segments within 15 cm of the anode "
                        "kept); 'drift' (default) = the same cuts without the 15 cm one, so tracks keep their "
                        "whole drift span (lifetime and diffusion grow with the drift time)")
    c.add_argument("--fluctuations", action=argparse.BooleanOptionalAction, default=True,
                   help="energy-loss fluctuations in the generated sample (default on: dE/dx varies along the "
                        "tracks, which separates Ab from kb)")
    c.add_argument("--no-swap", action="store_true", help="--segments are already in the simulation frame")
    c.add_argument("--checkpoint-dir", type=Path, default=None, help="one sub-directory per target")
    c.add_argument("--json", type=Path, required=True, help="write the closure summary here")
    c.add_argument("--tolerance", type=float, default=0.01, help="for iterations_to_1pct (default 0.01)")
    _add_optimizer_options(c, "closure")
    c.set_defaults(func=cmd_closure)


def _fd_names(text: str) -> tuple:
    """"tran_diff,long_diff" -> ("tran_diff", "long_diff"); "none" -> ()."""
    return () if text.strip().lower() in ("", "none", "off") else tuple(parse_names(text))


def _indices(text: str) -> list[int]:
    """"0,3,5" -> [0, 3, 5]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated target indices, got {text!r}") from None


def _load_segments(path: Path, no_swap: bool, select: bool):
    from .io import load_segments

    segs = load_segments(path, swap_xz=not no_swap)
    return _select(segs) if select else segs


def _select(segs, cuts: str = "paper"):
    from .selection import SelectionCuts, select_tracks

    kept = select_tracks(segs, SelectionCuts() if cuts == "paper" else SelectionCuts(max_anode_distance_cm=None))
    if len(kept) == 0:
        raise SystemExit("no track passes the selection; run without it or use more events")
    return kept


def default_sample(events: int = 10, seed: int = 1, cuts: str = "paper", fluctuations: bool = False,
                   tracks: int = 1):
    """Generated 1 GeV muons (``events`` events of ``tracks`` muons) through the selection ``cuts``: "paper" (the
    paper's, near-anode segments only) or "drift" (the paper's without the 15 cm near-anode cut). The closure
    command uses ``cuts="drift", fluctuations=True``: 10 events give 6 tracks, 440 segments, 218 cm, 500 hit
    samples; the paper's scale (100 events x 10 muons, paper cuts) gives 10,672 segments, 5,307 cm."""
    if cuts not in ("paper", "drift"):
        raise ValueError(f"cuts must be 'paper' or 'drift', got {cuts!r}")
    from .generate import generate_muons

    return _select(generate_muons(n_events=events, tracks_per_event=tracks, seed=seed, fluctuations=fluctuations),
                   cuts)


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
    segs = _select(_load_segments(args.segments, args.no_swap, False), args.cuts) if args.segments is not None \
        else default_sample(args.events, args.sample_seed, args.cuts, args.fluctuations, args.tracks)
    if args.epochs is None and args.max_iter is None:
        args.max_iter = 400
    opts = _fit_options(args)
    if args.resume and args.checkpoint_dir is None:
        raise SystemExit("--resume needs --checkpoint-dir")
    out = closure(segs, n_targets=args.targets, params=names, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                  tolerance=args.tolerance, only=args.only, resume=args.resume, **opts)
    results = out.pop("results")
    out["settings"] = {"params": names, "n_segments": int(len(segs)),
                       "track_length_cm": float(segs["dx"].sum()),
                       **{k: v for k, v in opts.items() if k not in ("progress", "simulator", "loss")},
                       "loss": "toy" if args.toy else args.loss, "recipe": args.recipe,
                       "sample": None if args.segments is not None else
                       {"generator": "generate_muons", "events": args.events, "tracks_per_event": args.tracks,
                        "seed": args.sample_seed,
                        "fluctuations": args.fluctuations, "energy_gev": 1.0},
                       "cuts": args.cuts, "command": " ".join(["larnd-diff", *sys.argv[1:]])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    within = sum(1 for r in out["targets"] if r["max_relative_error"] < args.tolerance)
    print(f"{within}/{len(out['targets'])} targets within {args.tolerance:.1%} after at most "
          f"{max(r['iterations'] for r in out['targets'])} iterations -> {args.json}")
    for r in out["targets"]:
        print(f"  target {r['index']}: max |rel err| {r['max_relative_error']:.3%}, to {args.tolerance:.1%}: "
              f"{r['iterations_to_1pct']} it, {r['wall_time_s']:.1f} s, skipped {r['n_skipped']}"
              + "".join(f"; {n} ended on its {side} bound" for n, side in r["at_bounds"].items()))
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_convergence_band(results, args.plots / "convergence_band.png", args.tolerance)
        for row, r in zip(out["targets"], results):
            plot_trajectories(r, args.plots / f"trajectories_{row['index']:03d}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="larnd-diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fit_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
