"""Every installed backend side by side on one input: agreement with the reference, gradients, time, memory.

    python examples/compare_backends.py --events 3 --json compare.json --figure compare.png
    python examples/compare_backends.py --input events.h5 --backends torch jax --device cuda:0

A thin script over :mod:`larnd_diff.compare` (the same as ``larnd-diff compare``; see that module for what is
measured and the JSON layout). Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import sys

from larnd_diff.compare import CompareError, compare, format_table, load_input, plot, to_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="segments HDF5 (default: generated 1 GeV muons)")
    p.add_argument("--events", type=int, default=2, help="generated events (without --input)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backends", nargs="+", default=None, help="default: every installed framework")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-grad", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    segs, source = load_input(args.input, events=args.events, seed=args.seed)
    try:
        result = compare(segs, args.backends, args.device, args.repeat, dtype=args.dtype, grad=not args.no_grad,
                         source=source, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except CompareError as exc:
        p.error(str(exc))
    print(format_table(result))
    if args.json:
        to_json(result, args.json)
    if args.figure:
        plot(result, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
