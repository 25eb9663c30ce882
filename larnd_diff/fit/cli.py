"""``larnd-diff fit`` and ``larnd-diff closure``: calibration from the command line.

    larnd-diff fit SEGMENTS.h5 --target TARGET.h5 --checkpoint-dir DIR [--resume] ...
    larnd-diff fit --target PACKETS.h5 --layout-yaml LAYOUT.yaml --checkpoint-dir DIR ...   (no truth: segments
                                                                   reconstructed from the packets' hits)
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

import numpy as np

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
from .stages import Warmup
from .uncertainty import HessianUncertainty

__all__ = ["add_fit_commands", "main"]

_GROUPS = (("fit", FIT_OPTIONS), ("model", Model.OPTIONS), ("simulated target", SimulatedTarget.OPTIONS),
           ("loss", HitsLoss.OPTIONS + NoiseLikelihood.OPTIONS), ("coordinates", Coordinates.OPTIONS),
           ("optimiser", Optimiser.OPTIONS),
           ("gradient", _gradients.OPTIONS), ("controllers", _controllers.OPTIONS), ("progress", Progress.OPTIONS),
           ("uncertainty", HessianUncertainty.OPTIONS), ("warm-up stage", Warmup.OPTIONS))



#: Iterations of a closure fit unless --max-iter or --epochs says otherwise. The data recipe (larnd-sim's values,
#: the drift group by central differences: a reverse pass and six forward passes per iteration) runs them after its
#: warm-up stage (a 4 x 4 diffusion grid and 60 iterations; larnd_diff/fit/stages.py), from near the optimum, and
#: returns the best of them (README "Calibration on data").
CLOSURE_MAX_ITER = {"data": 60}
#: ... and with the other recipes
OTHER_CLOSURE_MAX_ITER = 400

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
    f.add_argument("segments", type=Path, nargs="?", default=None,
                   help="segments HDF5 (edep-sim frame unless --no-swap). Omitted: the segments are reconstructed "
                        "from the --target hits (larnd_diff.reco: tracks, hypotheses, dE/dx from residual range; "
                        "no truth is read), once, before the fit, with the drift velocity --reco-vdrift")
    tgt = f.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--target", type=Path,
                     help="target HDF5: LArPix packets (larpix-control 'packets' dataset, with --layout-yaml: "
                          "the data path) or hits (group 'hits', e.g. from larnd-diff simulate)")
    tgt.add_argument("--target-params", type=parse_assignments, metavar="NAME=V,...",
                     help="simulate the target with these values (needs SEGMENTS)")
    f.add_argument("--select", action="store_true", help="apply the paper's track selection first")
    f.add_argument("--no-swap", action="store_true", help="segments are already in the simulation frame")
    f.add_argument("--json", type=Path, default=None, help="write the FitResult as JSON")
    _add_data_options(f)
    f.set_defaults(func=cmd_fit, options=_add_common(f, "data", ("checkpoint_dir", "checkpoint_every", "resume",
                                                                  "overwrite", "history_path", "init")))

    c = subparsers.add_parser("closure", help="closure test: fit random targets from nominal, report errors",
                               description="Closure test: fit random targets (Table I ranges) from nominal and "
                                           "report each parameter's error, sigma and pull. Without --max-iter or "
                                           f"--epochs a fit stops after {CLOSURE_MAX_ITER['data']} iterations with "
                                           f"the data recipe, {OTHER_CLOSURE_MAX_ITER} with the others (or earlier by "
                                           "the stopping rule).")
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


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Options of a packets target and of the reconstruction (larnd_diff/fit/data.py)."""
    from .data import RECO_CATEGORIES

    g = p.add_argument_group("data target and reconstruction (calibration without truth)")
    g.add_argument("--layout-yaml", type=Path, default=None,
                   help="larnd-sim pixel layout YAML: channel -> pixel map of a --target packets file, and the "
                        "pixels with a read-out channel (the model leaves the others out). Without it a --target "
                        "file is read as hits")
    g.add_argument("--event-t0", default=None, metavar="slots|T0,T1,...",
                   help="only for packets files without trigger packets: 'slots' (larnd-sim's one 600 us slot per "
                        "event) or comma-separated absolute event times in us on the packet clock (default: from "
                        "the trigger packets; a file without them and without --event-t0 is an error)")
    g.add_argument("--reco-vdrift", type=float, default=None, metavar="CM_PER_US",
                   help="drift velocity of the reconstruction in cm/us (default: the nominal 0.1587). It is not "
                        "refreshed during the fit: a target whose drift velocity differs from it has its "
                        "reconstructed tracks stretched along the drift, which pulls the fitted eField")
    g.add_argument("--reco-tracks", type=_names, default=RECO_CATEGORIES, metavar="CATEGORY,...",
                   help="reconstructed track categories that become the fit's segments (default "
                        f"{','.join(RECO_CATEGORIES)}; 'stopping' = dE/dx from residual range, the others at the "
                        "mean loss of a 1 GeV muon; shower-like tracks never become segments)")
    g.add_argument("--reco-species", type=_names, default=None, metavar="SPECIES,...",
                   help="keep only tracks of these hypotheses (mu-, pi+, proton; tracks that do not stop are "
                        "mu-), e.g. --reco-tracks stopping --reco-species proton for a proton selection "
                        "(default: every hypothesis)")
    g.add_argument("--reco", type=_reco_knobs, default={}, metavar="KNOB=V,...",
                   help="reconstruction knobs (fields of larnd_diff.reco.RecoConfig, e.g. cluster_eps_cm=2.0,"
                        "trigger_latency_us=2.36; see its docstring)")
    g.add_argument("--reco-out", type=Path, default=None, metavar="SEGMENTS.h5",
                   help="also write the reconstructed segments here (edep-sim frame, as larnd-diff reco -o)")
    g.add_argument("--overwrite-reco-out", action="store_true", help="replace an existing --reco-out file")


def _reco_knobs(text: str) -> dict:
    from ..reco.config import parse_knobs

    try:
        return parse_knobs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _names(text: str) -> tuple:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _load_segments(path: Path, no_swap: bool):
    from ..io import load_segments

    return load_segments(path, swap_xz=not no_swap)


def _fit_inputs(args):
    """(segments, target, readout) of ``larnd-diff fit``: the segments file, or the segments reconstructed from
    the target's hits; the target's hits (packets or hits file) or parameter values; the read-out pixels."""
    from ..packets import parse_event_t0
    from .closure import select
    from .data import check_events, load_data, reconstructed_input, save_reconstructed

    if args.segments is None and args.target is None:
        raise SystemExit("larnd-diff fit: --target-params simulates its target from SEGMENTS; give a segments file")
    if args.reco_out is not None:
        if args.segments is not None:
            raise SystemExit("larnd-diff fit: --reco-out writes reconstructed segments; it needs the segments to "
                             "be reconstructed (no SEGMENTS argument)")
        from ..io import check_output

        check_output(args.reco_out, overwrite=args.overwrite_reco_out, inputs=(args.target,))
    try:
        event_t0 = parse_event_t0(args.event_t0)
    except ValueError as err:
        raise SystemExit(f"larnd-diff fit: --event-t0: {err}") from None
    data = load_data(args.target, args.layout_yaml, event_t0=event_t0) if args.target is not None else None
    if data is not None:
        print(f"target {data.path}: {data.source}; {len(data.hits)} pixel rows, "
              f"{int(data.hits.n_samples.sum())} samples")
    if args.segments is not None:
        segs = _load_segments(args.segments, args.no_swap)
        if data is not None:
            n = check_events(segs, data.hits, args.segments)
            print(f"segments {args.segments}: {len(segs)} segments covering {n} of the target's "
                  f"{len(np.unique(data.hits.event_id))} events")
    else:
        data = data.without_truth()
        segs, report = reconstructed_input(data.hits, vdrift=args.reco_vdrift, categories=args.reco_tracks,
                                           species=args.reco_species, **args.reco)
        print(_reco_summary(report, segs, args))
        if args.reco_out is not None:
            save_reconstructed(args.reco_out, segs, overwrite=args.overwrite_reco_out)
            print(f"reconstructed segments (edep-sim frame) -> {args.reco_out}")
    segs = select(segs) if args.select else segs
    target = data.hits if data is not None else args.target_params
    return segs, target, (data.readout if data is not None else None)


def _reco_summary(report, segs, args) -> str:
    from ..reco import CATEGORIES

    counts = report.counts()
    kept = len(np.unique(segs["eventID"].astype(np.int64) * (1 << 20) + segs["trackID"]))
    species = f" / {','.join(args.reco_species)}" if args.reco_species else ""
    return (f"segments reconstructed from the target (no truth; vdrift {report.vdrift} cm/us, not refreshed during "
            f"the fit): {len(report.tracks)} tracks ({', '.join(f'{counts[c]} {c}' for c in CATEGORIES)}); kept "
            f"{kept} tracks ({','.join(args.reco_tracks)}{species}): {len(segs)} segments, "
            f"{float(segs['dx'].sum()):.0f} cm")


def cmd_fit(args) -> int:
    from .plots import plot_correlation, plot_loss, plot_trajectories
    from .recipes import fit

    kw = _fit_keywords(args, args.options)
    if kw.get("checkpoint_dir") is None:
        raise SystemExit("larnd-diff fit needs --checkpoint-dir (checkpoints and history.jsonl go there)")
    segs, target, readout = _fit_inputs(args)
    if readout is not None:
        kw["readout"] = readout
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
        if res.correlation is not None:
            plot_correlation(res.correlation, list(res.params), args.plots / "correlation.png")
    return 0


def cmd_closure(args) -> int:
    from .closure import closure, default_sample, select
    from .plots import plot_convergence_band, plot_correlation, plot_trajectories

    kw = _fit_keywords(args, args.options)
    names = kw.pop("params", FIT_PARAMETERS)
    segs = select(_load_segments(args.segments, args.no_swap), args.cuts) if args.segments is not None \
        else default_sample(args.events, args.sample_seed, args.cuts, args.fluctuations, args.tracks)
    if kw.get("epochs") is None and kw.get("max_iter") is None:
        kw["max_iter"] = CLOSURE_MAX_ITER.get(args.recipe, OTHER_CLOSURE_MAX_ITER)
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
        warm = r.get("warmup") or {}
        print(f"  target {r['index']}: max |rel err| {r['max_relative_error']:.3%}, to {args.tolerance:.1%}: "
              f"{r['iterations_to_1pct']} it, {r['wall_time_s']:.1f} s, skipped {r['n_skipped']}"
              + (f"; after a warm-up of {warm['iterations']} it{' and a scan' if warm.get('scan') else ''}"
                 if warm else "")
              + "".join(f"; {n} ended on its {side} bound" for n, side in r["at_bounds"].items()))
        print("    " + ", ".join(_error_with_sigma(r, n) for n in r["target"]))
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_convergence_band(results, args.plots / "convergence_band.png", args.tolerance)
        for row, r in zip(out["targets"], results):
            plot_trajectories(r, args.plots / f"trajectories_{row['index']:03d}.png")
            if row["correlation"] is not None:
                plot_correlation(row["correlation"], list(row["target"]),
                                 args.plots / f"correlation_{row['index']:03d}.png",
                                 title=f"target {row['index']}: correlation of the fitted parameters")
    return 0


def _error_with_sigma(row: dict, name: str) -> str:
    """"Ab +0.12 % (sigma 0.30 %, pull +0.4)" for a closure row; sigma and pull only where the Hessian gave them."""
    text = f"{name} {row['relative_error'][name] * 100:+.2f} %"
    sigma = (row.get("errors") or {}).get(name)
    if sigma:
        text += f" (sigma {sigma / abs(row['fitted'][name]) * 100:.2f} %, pull {row['pulls'][name]:+.1f})"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="larnd-diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fit_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
