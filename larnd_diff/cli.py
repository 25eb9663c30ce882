"""The ``larnd-diff`` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _params(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--param expects NAME=VALUE, got {item!r}")
        out[name] = float(value)
    return out


def _detector(args):
    from .detector import load_detector, module0

    if args.detector_yaml:
        if not args.layout_yaml:
            raise SystemExit("--detector-yaml needs the pixel layout too: --layout-yaml FILE")
        return load_detector(args.detector_yaml, args.layout_yaml)
    return module0()  # a --layout-yaml alone only supplies the channel map of --packets


def cmd_generate(args) -> int:
    from .generate import generate_mixed, generate_muons
    from .io import save_segments

    t0 = time.perf_counter()
    if args.sample == "muons":
        segs = generate_muons(n_events=args.events, tracks_per_event=args.tracks, seed=args.seed,
                              energy_gev=args.energy)
    else:
        segs = generate_mixed(n_events=args.events, tracks_per_event=args.tracks, seed=args.seed)
    save_segments(args.output, segs, overwrite=args.overwrite)
    print(f"wrote {len(segs)} segments of {args.events} events ({float(segs['dx'].sum()):.1f} cm of track) "
          f"to {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_simulate(args) -> int:
    from .api import simulate
    from .hits import save_hits
    from .io import load_segments

    det = _detector(args)
    segs = load_segments(args.input, swap_xz=not args.no_swap, detector=det, outside=args.outside)
    t0 = time.perf_counter()
    hits = simulate(segs, backend=args.backend, device=args.device, params=_params(args.param),
                    noise=args.noise, seed=args.seed, detector=det, relaxation=args.relaxation,
                    precision=args.precision, progress=not args.quiet).numpy()
    wall = time.perf_counter() - t0
    save_hits(args.output, hits, mode="w", attrs={"backend": args.backend, "input": str(args.input),
                                                 "params": json.dumps(_params(args.param))})
    n_samples = int(hits.n_samples.sum())
    print(f"{len(hits)} hit pixels, {n_samples} ADC samples from {len(segs)} segments in {wall:.1f} s "
          f"-> {args.output}")
    if args.packets:
        from .export import write_packets

        layout = args.layout_yaml or det.layout_path
        if layout is None:
            raise SystemExit("--packets needs the pixel-layout YAML with the chip/channel map: --layout-yaml FILE")
        unmapped = write_packets(args.output, hits, layout, det, segments=segs)
        print(f"LArPix packets written ({unmapped} samples on pixels without a read-out channel skipped)")
    return 0


def cmd_compare(args) -> int:
    from .compare import CompareError, compare, format_table, load_input, plot, to_json

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[compare {time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

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
        to_json(result, args.json)
        progress(f"JSON written to {args.json}")
    if args.figure:
        plot(result, args.figure)
        progress(f"figure written to {args.figure}")
    return 0


def _simulate_backends() -> tuple:
    """"reference" and the registry's backends (built-in and entry points; larnd_diff.ops)."""
    from .ops import known_backends

    return ("reference", *known_backends())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="larnd-diff", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a sample of tracks (segments HDF5, edep-sim frame)")
    g.add_argument("-o", "--output", required=True, type=Path)
    g.add_argument("--sample", choices=("muons", "mixed"), default="muons",
                   help="1 GeV muons entering through the border (default) or mixed mu/pi/p of 0.1-2 GeV")
    g.add_argument("-n", "--events", type=int, default=10)
    g.add_argument("--tracks", type=int, default=1, help="tracks per event")
    g.add_argument("--energy", type=float, default=1.0, help="muon energy in GeV")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("simulate", help="simulate pixel hits of a segments file")
    s.add_argument("input", type=Path)
    s.add_argument("-o", "--output", required=True, type=Path, help="HDF5 file for the hits (group 'hits')")
    s.add_argument("--backend", default="reference", choices=_simulate_backends())
    s.add_argument("--device", default=None)
    s.add_argument("--relaxation", default="hard", choices=("hard", "smooth"))
    s.add_argument("--precision", default="larnd-sim", choices=("larnd-sim", "float64"),
                   help="reference arithmetic (larnd-sim = its float32 map, matches the real outputs)")
    s.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)")
    s.add_argument("--noise", action="store_true", help="electronics noise on")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-swap", action="store_true", help="input is already in the simulation frame (z = drift)")
    s.add_argument("--outside", choices=("error", "drop", "keep"), default="error",
                   help="segments outside every TPC: stop with an error (default), drop them (counted), keep")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
