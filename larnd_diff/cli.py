"""The ``larnd-diff`` command line.

An input error (a bad file, field, row, parameter or output path) ends with one line on stderr naming what and
where, and exit status 2; ``--debug`` (or ``LARND_DIFF_DEBUG=1``) shows the traceback instead. Warnings (rows
dropped on request, degenerate segments) are one line each too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .errors import InputError, ParameterError, cli_spelling


def _params(items: list[str] | None) -> dict:
    """``--param NAME=VALUE`` options as a dict, names and physical domains checked before any work."""
    from .params import SPECS, check_value

    out = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        if name not in SPECS:
            raise ParameterError(f"--param {item}: unknown parameter {name!r}; known: {', '.join(sorted(SPECS))}",
                                 parameter=name)
        try:
            out[name] = float(value)
        except ValueError:
            raise ParameterError(f"--param {item}: {value!r} is not a number", parameter=name) from None
        check_value(name, out[name], "--param")
    return out


def _detector(args):
    from .detector import detector_from_files

    return detector_from_files(args.detector_yaml, args.layout_yaml)


def cmd_generate(args) -> int:
    from .generate import generate_mixed, generate_muons
    from .io import atomic_output, check_output, save_segments

    check_output(args.output, overwrite=args.overwrite)
    t0 = time.perf_counter()
    if args.sample == "muons":
        segs = generate_muons(n_events=args.events, tracks_per_event=args.tracks, seed=args.seed,
                              energy_gev=args.energy)
    else:
        segs = generate_mixed(n_events=args.events, tracks_per_event=args.tracks, seed=args.seed)
    with atomic_output(args.output, overwrite=args.overwrite) as tmp:
        save_segments(tmp, segs)
    print(f"wrote {len(segs)} segments of {args.events} events ({float(segs['dx'].sum()):.1f} cm of track) "
          f"to {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_simulate(args) -> int:
    from .api import simulate
    from .hits import save_hits
    from .io import atomic_output, check_output, load_segments

    # everything that can be checked is checked before the simulation: output path, parameters, detector, layout
    check_output(args.output, overwrite=args.overwrite, inputs=(args.input, args.detector_yaml, args.layout_yaml))
    params = _params(args.param)
    det = _detector(args)
    layout = _packet_layout(args, det) if args.packets else None
    segs = load_segments(args.input, swap_xz=not args.no_swap, detector=det, outside=args.outside,
                         invalid=args.invalid)
    t0 = time.perf_counter()
    hits = simulate(segs, backend=args.backend, device=args.device, params=params,
                    noise=args.noise, seed=args.seed, detector=det, relaxation=args.relaxation,
                    precision=args.precision, progress=not args.quiet).numpy()
    wall = time.perf_counter() - t0
    unmapped = None
    with atomic_output(args.output, overwrite=args.overwrite) as tmp:
        save_hits(tmp, hits, mode="w", attrs={"backend": args.backend, "input": str(args.input),
                                             "params": json.dumps(params)})
        if layout is not None:
            from .export import write_packets

            unmapped = write_packets(tmp, hits, layout, det, segments=segs)
    n_samples = int(hits.n_samples.sum())
    print(f"{len(hits)} hit pixels, {n_samples} ADC samples from {len(segs)} segments in {wall:.1f} s "
          f"-> {args.output}")
    if unmapped is not None:
        print(f"LArPix packets written ({unmapped} samples on pixels without a read-out channel skipped)")
    return 0


def _packet_layout(args, det):
    """The pixel-layout YAML of ``--packets``, read and checked now (before any simulation)."""
    from .export import ChannelMap

    layout = args.layout_yaml or det.layout_path
    if layout is None:
        raise InputError("--packets needs the pixel-layout YAML with the chip/channel map: --layout-yaml FILE")
    ChannelMap(layout, det)
    return layout


def cmd_compare(args) -> int:
    from .compare import CompareError, compare, format_table, load_input, plot, to_json
    from .io import atomic_output, check_outputs

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[compare {time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    check_outputs((args.json, args.figure), overwrite=args.overwrite, inputs=(args.input,))
    t0 = time.perf_counter()
    try:
        segs, source = load_input(args.input, events=args.events, seed=args.seed, swap_xz=not args.no_swap,
                                  outside=args.outside)
        result = compare(segs, backends=args.backends, device=args.device, repeat=args.repeat, dtype=args.dtype,
                         grad=not args.no_grad, source=source, progress=progress)
    except CompareError as exc:
        print(f"larnd-diff compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        with atomic_output(args.json, overwrite=args.overwrite) as tmp:
            to_json(result, tmp)
        progress(f"JSON written to {args.json}")
    if args.figure:
        with atomic_output(args.figure, overwrite=args.overwrite) as tmp:
            plot(result, tmp)
        progress(f"figure written to {args.figure}")
    return 0


def _simulate_backends() -> tuple:
    """"reference" and the registry's backends (built-in and entry points; larnd_diff.ops)."""
    from .ops import known_backends

    return ("reference", *known_backends())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="larnd-diff", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (anywhere on the command line; or set "
                        "LARND_DIFF_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a sample of tracks (segments HDF5, edep-sim frame)")
    g.add_argument("-o", "--output", required=True, type=Path)
    g.add_argument("--sample", choices=("muons", "mixed"), default="muons",
                   help="1 GeV muons entering through the border (default) or mixed mu/pi/p of 0.1-2 GeV")
    g.add_argument("-n", "--events", type=int, default=10)
    g.add_argument("--tracks", type=int, default=1, help="tracks per event")
    g.add_argument("--energy", type=float, default=1.0, help="muon energy in GeV")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("simulate", help="simulate pixel hits of a segments file")
    s.add_argument("input", type=Path)
    s.add_argument("-o", "--output", required=True, type=Path, help="HDF5 file for the hits (group 'hits')")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT (never the input)")
    s.add_argument("--backend", default="reference", choices=_simulate_backends())
    s.add_argument("--device", default=None)
    s.add_argument("--relaxation", default="hard", choices=_relaxation_presets(),
                   help="framework backends: hard (reference semantics, default), smooth (the reference's values, "
                        "straight-through gradients), smooth-continuous (fully relaxed: soft onset, real-valued ADC)")
    s.add_argument("--precision", default="larnd-sim", choices=("larnd-sim", "float64"),
                   help="reference arithmetic (larnd-sim = its float32 map, matches the real outputs)")
    s.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)")
    s.add_argument("--noise", action="store_true", help="electronics noise on")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-swap", action="store_true", help="input is already in the simulation frame (z = drift)")
    s.add_argument("--outside", choices=("error", "drop", "keep"), default="error",
                   help="segments outside every TPC: stop with an error (default), drop them (counted), keep")
    s.add_argument("--invalid", choices=("error", "drop"), default="error",
                   help="segments with NaN/inf values or negative dE or dEdx: stop with an error naming them "
                        "(default), or drop them (counted in one warning)")
    s.add_argument("--detector-yaml", type=Path, help="larnd-sim detector properties YAML (default: module0)")
    s.add_argument("--layout-yaml", type=Path,
                   help="larnd-sim pixel layout YAML (geometry with --detector-yaml; chip/channel map of --packets)")
    s.add_argument("--packets", action="store_true",
                   help="also write LArPix packets + mc_packets_assn + tracks (needs --layout-yaml)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("compare", help="every installed backend side by side: agreement with the reference, "
                                       "gradients, time, memory (table; JSON and figure on request)")
    c.add_argument("input", nargs="?", type=Path, help="segments HDF5 (default: generated 1 GeV muons)")
    c.add_argument("-n", "--events", type=int, default=2, help="generated events without INPUT (default 2)")
    c.add_argument("--seed", type=int, default=1, help="generator seed without INPUT")
    c.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="simulator backends to compare (default: every installed one of "
                        f"{' '.join(_simulate_backends()[1:])})")
    c.add_argument("--device", default=None, help="framework device, e.g. cpu or cuda:0 (default: the framework's; "
                                                  "numpy always runs on the CPU)")
    c.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="simulator float type")
    c.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up run (median reported)")
    c.add_argument("--no-grad", action="store_true", help="skip the forward + gradient timing")
    c.add_argument("--json", type=Path, default=None, help="write the full result as JSON")
    c.add_argument("--figure", type=Path, default=None, help="write the four-panel figure (PNG, PDF, ...)")
    c.add_argument("--overwrite", action="store_true", help="replace existing --json / --figure files")
    c.add_argument("--no-swap", action="store_true", help="INPUT is already in the simulation frame (z = drift)")
    c.add_argument("--outside", choices=("error", "drop", "keep"), default="error",
                   help="segments of INPUT outside every TPC: error (default), drop, keep")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_compare)

    from .fit.cli import add_fit_commands

    add_fit_commands(sub)
    from .reco.cli import add_reco_command

    add_reco_command(sub)
    return p


def _relaxation_presets() -> tuple:
    from .sim.config import PRESETS

    return tuple(PRESETS)


def _split_debug(argv) -> tuple:
    """(argv without ``--debug``, whether to show tracebacks): ``--debug`` anywhere before ``--``, or the
    environment variable LARND_DIFF_DEBUG set to anything but "" or "0"."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or os.environ.get("LARND_DIFF_DEBUG", "") not in ("", "0")
    return [a for i, a in enumerate(argv) if not (i < end and a == "--debug")], debug


def error_line(exc: BaseException) -> str:
    """One line for an error: its message on one line, API keyword hints written as flags
    (``outside='drop'`` -> ``--outside drop``, ``resume=True`` -> ``--resume``)."""
    if isinstance(exc, KeyError) and not isinstance(exc, InputError) and len(exc.args) == 1:
        text = str(exc.args[0])          # KeyError's str() quotes the message
    elif isinstance(exc, SystemExit):
        text = str(exc.code)
    else:
        text = str(exc)
    return cli_spelling(" ".join(text.split()) or type(exc).__name__)


def _one_line_warning(prog: str):
    """A ``warnings.showwarning`` that prints ``<prog>: warning: <message>`` on one line (flags for API hints)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {error_line(Warning(str(message)))}", file=file or sys.stderr)

    return show


#: Errors that mean the input or the command line is wrong: one line, exit status 2.
USAGE_ERRORS = (InputError, OSError, ValueError, KeyError)


def main(argv: list[str] | None = None) -> int:
    argv, debug = _split_debug(argv)
    args = build_parser().parse_args(argv)
    if debug:
        return args.func(args)
    prog = f"larnd-diff {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(prog)
            return args.func(args)
    except SystemExit as exc:
        if not isinstance(exc.code, str):   # an exit status: pass it on
            raise
        print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as exc:
        hint = "" if isinstance(exc, (InputError, OSError)) else " (--debug shows the traceback)"
        print(f"{prog}: error: {error_line(exc)}{hint}", file=sys.stderr)
        return 2
    except Exception as exc:   # a bug, not an input error: one line and how to get the traceback to report it
        print(f"{prog}: internal error: {type(exc).__name__}: {error_line(exc)} (rerun with --debug for the "
              f"traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
