"""``larnd-diff fit`` and ``larnd-diff closure``: calibration from the command line.

    larnd-diff fit SEGMENTS.h5 --target TARGET.h5 --checkpoint-dir DIR [--resume] ...
    larnd-diff fit SEGMENTS.h5 --target-params Ab=0.85,lifetime=3000 --checkpoint-dir DIR ...
    larnd-diff closure --targets 10 --seed S --backend torch --max-iter N --json OUT.json

The options of the fit are declared by its parts (``OPTIONS`` of each, collected in
:data:`larnd_diff.fit.recipes.ALL_OPTIONS`); this module adds only what belongs to the commands (inputs, outputs,
the closure's sample). ``add_fit_commands(subparsers)`` hooks both into ``larnd-diff``; ``main(argv)`` runs them
stand-alone (``python -m larnd_diff.fit.cli closure ...``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..params import FIT_PARAMETERS
from . import controllers as _controllers
from . import gradients as _gradients
from .coordinates import Coordinates
from .likelihood import NoiseLikelihood
from .objective import HitsLoss, Model, SimulatedTarget
from .optimizer import Optimiser
from .options import Option, add_options, given_keywords, parse_assignments, parse_indices
from .progress import Progress
from .recipes import FIT_OPTIONS, RECIPES
from .recorder import Recorder, json_safe
from .uncertainty import HessianUncertainty

__all__ = ["add_fit_commands", "main"]

_GROUPS = (("fit", FIT_OPTIONS), ("model", Model.OPTIONS), ("simulated target", SimulatedTarget.OPTIONS),
           ("loss", HitsLoss.OPTIONS + NoiseLikelihood.OPTIONS), ("coordinates", Coordinates.OPTIONS),
           ("optimiser", Optimiser.OPTIONS),
           ("gradient", _gradients.OPTIONS), ("controllers", _controllers.OPTIONS), ("progress", Progress.OPTIONS),
           ("uncertainty", HessianUncertainty.OPTIONS))


def _describe(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_describe(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _with_recipe_defaults(options, recipe: str):
    """The options with the recipes' defaults appended to their help."""
    out = []
    for o in options:
        if o.flag and o.keyword in RECIPES[recipe].keywords():
            note = ", ".join(f"{_describe(r.keywords()[o.keyword])} with --recipe {name}" for name, r in
                             RECIPES.items())
            o = Option(**{**o.__dict__, "help": f"{o.help} (default: {note})"})
        out.append(o)
    return out


def _add_common(p: argparse.ArgumentParser, recipe: str, recorder_flags) -> list:
    """The parts' options (and ``--recipe``, ``--toy``, ``--plots``); returns every option added."""
    p.add_argument("--recipe", default=recipe, choices=sorted(RECIPES),
                   help=f"default parts (default {recipe}): 'data' = the negative log-likelihood of the hits under "
                        f"the expected-noise readout, full-matrix Adam on ln(p/nominal), reverse-mode gradients, "
                        f"parameters kept in their Table I ranges, stop on convergence; a closure's target is made "
                        f"as a detector makes data (the Numba reference at larnd-sim precision with electronics "
                        f"noise); 'paper' = Adam on p/nominal, lr 5e-2 x0.95 per epoch, clip 1, Soft-DTW on ADC, "
                        f"100 cm batches (the paper's); 'closure' = the self-consistent closure (target from the "
                        f"fit's own simulator without noise: a debugging aid): full-matrix Adam, Soft-DTW on (x, y, "
                        f"t, ADC), continuous ADC, tran_diff by central differences in the first 100 iterations. "
                        f"Options given explicitly override the recipe")
    added = []
    for title, options in _GROUPS + (("checkpoints", [o for o in Recorder.OPTIONS if o.keyword in recorder_flags]),):
        options = _with_recipe_defaults([o for o in options if o.flag], recipe)
        if title == "fit" and "init" not in recorder_flags:
            options = [o for o in options if o.keyword != "init"]
        add_options(p, options, f"{title} options")
        added += options
    p.add_argument("--toy", action="store_true",
                   help="use the closed-form stand-in model and loss (larnd_diff.fit.toy): exercises the fit "
                        "machinery in seconds, no physics")
    p.add_argument("--plots", type=Path, default=None, help="directory for the PNG plots")
    return added


def _fit_keywords(args, options) -> dict:
    kw = given_keywords(args, options)
    if args.toy:
        from .toy import toy_loss, toy_simulator

        kw.update(simulator=toy_simulator, loss=toy_loss, loss_options={})
        kw.setdefault("target_simulator", "same")  # the toy's target is the toy's own hits
        kw.setdefault("target_noise", False)
    return kw


def add_fit_commands(subparsers) -> None:
    """Add the ``fit`` and ``closure`` sub-commands to an argparse sub-parser collection."""
    f = subparsers.add_parser("fit", help="fit detector parameters to target hits (calibration)")
    f.add_argument("segments", type=Path, help="segments HDF5 (edep-sim frame unless --no-swap)")
    tgt = f.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--target", type=Path, help="target hits HDF5 (group 'hits', e.g. from larnd-diff simulate)")
    tgt.add_argument("--target-params", type=parse_assignments, metavar="NAME=V,...",
                     help="simulate the target with these values")
    f.add_argument("--select", action="store_true", help="apply the paper's track selection first")
    f.add_argument("--no-swap", action="store_true", help="segments are already in the simulation frame")
    f.add_argument("--json", type=Path, default=None, help="write the FitResult as JSON")
    f.set_defaults(func=cmd_fit, options=_add_common(f, "data", ("checkpoint_dir", "checkpoint_every", "resume",
                                                                  "overwrite", "history_path", "init")))

    c = subparsers.add_parser("closure", help="closure test: fit random targets from nominal, report errors")
    c.add_argument("--targets", type=int, default=10, help="number of random targets (default 10)")
    c.add_argument("--segments", type=Path, default=None,
                   help="segments HDF5 (default: a generated sample of 1 GeV muons, --events events, through --cuts)")
    c.add_argument("--events", type=int, default=10, help="events of the generated sample (default 10)")
    c.add_argument("--tracks", type=int, default=1,
                   help="1 GeV muons per event of the generated sample (default 1; the paper's scale is --events 100 "
                        "--tracks 10 --cuts paper)")
    c.add_argument("--only", type=parse_indices, default=None, metavar="I,J,...",
                   help="fit only these targets of the --targets list (0-based), e.g. to split a closure over "
                        "processes; target i keeps its seed and checkpoint sub-directory")
    c.add_argument("--sample-seed", type=int, default=1, help="seed of the generated sample (default 1)")
    c.add_argument("--cuts", default="drift", choices=("drift", "paper"),
                   help="track selection: 'paper' = the paper's cuts (only segments within 15 cm of the anode kept); "
                        "'drift' (default) = the same cuts without the 15 cm one, so tracks keep their whole drift "
                        "span (lifetime and diffusion grow with the drift time)")
    c.add_argument("--fluctuations", action=argparse.BooleanOptionalAction, default=True,
                   help="energy-loss fluctuations in the generated sample (default on: dE/dx varies along the "
                        "tracks, which separates Ab from kb)")
    c.add_argument("--no-swap", action="store_true", help="--segments are already in the simulation frame")
    c.add_argument("--json", type=Path, required=True, help="write the closure summary here")
    c.add_argument("--tolerance", type=float, default=0.01, help="for iterations_to_1pct (default 0.01)")
    c.add_argument("--self-consistent", dest="recipe", action="store_const", const="closure", default=argparse.SUPPRESS,
                   help="the self-consistent closure (= --recipe closure: target simulated by the fit's own "
                        "simulator without noise; a debugging aid, not evidence)")
    c.set_defaults(func=cmd_closure, options=_add_common(c, "data", ("checkpoint_dir", "checkpoint_every",
                                                                        "resume", "overwrite")))


def _load_segments(path: Path, no_swap: bool):
    from ..io import load_segments

    return load_segments(path, swap_xz=not no_swap)


def cmd_fit(args) -> int:
    from ..hits import load_hits
    from .closure import select
    from .plots import plot_loss, plot_trajectories
    from .recipes import fit

    kw = _fit_keywords(args, args.options)
    if kw.get("checkpoint_dir") is None:
        raise SystemExit("larnd-diff fit needs --checkpoint-dir (checkpoints and history.jsonl go there)")
    segs = _load_segments(args.segments, args.no_swap)
    segs = select(segs) if args.select else segs
    target = load_hits(args.target) if args.target is not None else args.target_params
    if kw.get("epochs") is None and kw.get("max_iter") is None:
        kw["epochs"] = 10
    res = fit(segs, target, params=kw.pop("params", FIT_PARAMETERS), recipe=args.recipe, **kw)
    print(res.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(res.to_dict(), indent=1, allow_nan=False))
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_trajectories(res, args.plots / "trajectories.png")
        plot_loss(res, args.plots / "loss.png")
    return 0


def cmd_closure(args) -> int:
    from .closure import closure, default_sample, select
    from .plots import plot_convergence_band, plot_trajectories

    kw = _fit_keywords(args, args.options)
    names = kw.pop("params", FIT_PARAMETERS)
    segs = select(_load_segments(args.segments, args.no_swap), args.cuts) if args.segments is not None \
        else default_sample(args.events, args.sample_seed, args.cuts, args.fluctuations, args.tracks)
    if kw.get("epochs") is None and kw.get("max_iter") is None:
        kw["max_iter"] = 400
    if kw.get("resume") and kw.get("checkpoint_dir") is None:
        raise SystemExit("--resume needs --checkpoint-dir")
    seed = kw.pop("seed", 0)
    out = closure(segs, n_targets=args.targets, params=names, seed=seed, checkpoint_dir=kw.pop("checkpoint_dir", None),
                  tolerance=args.tolerance, only=args.only, recipe=args.recipe, **kw)
    results = out.pop("results")
    settings = {**RECIPES[args.recipe].keywords(), **{k: v for k, v in kw.items() if k not in ("simulator", "loss")}}
    settings.update(params=list(names), n_segments=int(len(segs)), track_length_cm=float(segs["dx"].sum()),
                    loss="toy" if args.toy else settings["loss"], recipe=args.recipe, seed=seed, cuts=args.cuts,
                    sample=None if args.segments is not None else
                    {"generator": "generate_muons", "events": args.events, "tracks_per_event": args.tracks,
                     "seed": args.sample_seed, "fluctuations": args.fluctuations, "energy_gev": 1.0},
                    command=" ".join(["larnd-diff", *sys.argv[1:]]))
    out["settings"] = json_safe({k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, allow_nan=False))
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
