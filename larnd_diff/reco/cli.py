"""``larnd-diff reco``: LArPix packets (or a hits file) -> reconstructed segments file (+ a figure)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _event_t0(text: str | None):
    from larnd_diff.packets import parse_event_t0

    try:
        return parse_event_t0(text)
    except ValueError as err:
        raise SystemExit(f"--event-t0: {err}") from None


def _truth(args, packets_path: Path):
    """Truth segments (simulation frame) for the figure: --truth FILE, else the packets file's 'tracks'."""
    import h5py

    from larnd_diff.io import load_segments

    if args.truth is not None:
        return load_segments(args.truth, outside="keep")
    with h5py.File(packets_path, "r") as f:
        has_tracks = "tracks" in f
    # larnd-diff's and larnd-sim's exports store the processed segments in the simulation frame
    return load_segments(packets_path, dataset="tracks", swap_xz=False, outside="keep") if has_tracks else None


def _read_input(args, det):
    """(hits, description of the source) of a packets file or a hits file."""
    from larnd_diff.packets import PacketError, file_kind, read_packets

    kind = file_kind(args.input)
    if "packets" in kind and args.layout_yaml is not None:
        read = read_packets(args.input, args.layout_yaml, detector=det, event_t0=_event_t0(args.event_t0))
        return read.hits, f"packets, event t0 from {read.t0_source}", kind
    if "hits" in kind:
        from larnd_diff.hits import load_hits

        return load_hits(args.input), "hits group (times from each event's t0)", kind
    if "packets" in kind:
        raise SystemExit("a packets file needs the pixel layout: --layout-yaml FILE")
    raise PacketError(f"{args.input}: holds neither LArPix 'packets' nor a 'hits' group", file=args.input)


def cmd_reco(args) -> int:
    import numpy as np

    from larnd_diff.detector import detector_from_files
    from larnd_diff.io import atomic_output, check_output, check_outputs, save_segments
    from larnd_diff.reco import reconstruct

    inputs = (args.input, args.layout_yaml, args.detector_yaml, args.truth)
    check_output(args.output, overwrite=args.overwrite, inputs=inputs)
    check_outputs((args.output, args.plot, args.report), overwrite=args.overwrite, inputs=inputs)
    det = detector_from_files(args.detector_yaml, args.layout_yaml)
    t_start = time.perf_counter()
    hits, source, kind = _read_input(args, det)
    segments, report = reconstruct(hits, det, vdrift=args.vdrift)
    wall = time.perf_counter() - t_start
    counts = report.counts()
    print(f"{args.input}: {report.n_events} events read ({source}); {len(report.tracks)} tracks "
          f"({', '.join(f'{counts[c]} {c}' for c in ('stopping', 'through-going', 'no-bragg', 'shower-like'))}), "
          f"{len(segments)} segments, vdrift {report.vdrift} cm/us, {wall:.1f} s")
    if len(segments) == 0:
        print("larnd-diff reco: error: no track was reconstructed; no segments file written", file=sys.stderr)
        return 1
    with atomic_output(args.output, overwrite=args.overwrite) as tmp:
        save_segments(tmp, segments)
    print(f"segments (edep-sim frame, x = drift) -> {args.output}")
    if args.report:
        args.report.write_text(json.dumps({"input": str(args.input), "source": source, "vdrift": report.vdrift,
                                           "counts": counts, "tracks": [t.as_dict() for t in report.tracks]},
                                          indent=1, default=float))
        print(f"track report -> {args.report}")
    if args.plot:
        from larnd_diff.reco.plot import busiest_event, plot_event

        truth = _truth(args, args.input) if "packets" in kind or args.truth else None
        event = busiest_event(report) if args.plot_event is None else args.plot_event
        truth_event = event
        if truth is not None and source.startswith("packets"):
            # the export numbers events 0, 1, ... in the order of the input's sorted eventIDs
            ids = np.unique(truth["eventID"])
            truth_event = int(ids[event]) if 0 <= event < len(ids) else None
            truth = truth if truth_event is not None else None
        plot_event(report, args.plot, event=event, truth=truth, truth_event=truth_event)
        print(f"figure of event {event}{' with truth' if truth is not None else ''} -> {args.plot}")
    return 0


def add_reco_command(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("reco", help="reconstruct segments from LArPix packets (or hits): tracks, hypotheses, "
                                    "dE/dx from range; writes a segments file for simulate and fit")
    r.add_argument("input", type=Path, help="packets HDF5 (larpix-control format) or a hits file")
    r.add_argument("-o", "--output", required=True, type=Path, help="segments HDF5 (edep-sim frame)")
    r.add_argument("--layout-yaml", type=Path, help="larnd-sim pixel layout YAML (channel -> pixel map)")
    r.add_argument("--detector-yaml", type=Path, help="larnd-sim detector properties YAML (default: module0)")
    r.add_argument("--event-t0", default=None,
                   help="only for files without trigger packets: 'slots' (larnd-sim's 600 us per event) or "
                        "comma-separated absolute event times in us")
    r.add_argument("--vdrift", type=float, default=None, help="drift velocity in cm/us (default: nominal)")
    r.add_argument("--plot", type=Path, default=None, help="figure of one event (PNG)")
    r.add_argument("--plot-event", type=int, default=None, help="event of the figure (default: most tracks)")
    r.add_argument("--truth", type=Path, default=None,
                   help="true segments for the figure (default: the packets file's 'tracks' dataset, if any)")
    r.add_argument("--report", type=Path, default=None, help="JSON list of the tracks")
    r.add_argument("--overwrite", action="store_true", help="replace existing output files")
    r.set_defaults(func=cmd_reco)
    return r
