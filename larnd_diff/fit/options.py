"""How a fit part declares its settings once, for the keyword front end and the command line alike.

Every part of the fit (objective, coordinates, optimiser, gradient estimator, controllers, recorder, ...) lists its
settings as :class:`Option` entries: the keyword of :func:`larnd_diff.fit.fit`, the command-line flag, the parser
of the flag's text and the help. ``larnd-diff fit`` and ``larnd-diff closure`` build their parsers from these lists
(:mod:`larnd_diff.fit.cli`), so an option exists in one place: a new part brings its own options and no other file
changes.

The text parsers below turn a flag's text into the keyword's value ("Ab=0.85,lifetime=3000" -> a dict); they
raise ``argparse.ArgumentTypeError`` so that argparse reports the flag and the text.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..params import SPECS

__all__ = ["Option", "parse_names", "parse_assignments", "parse_bounds", "parse_loss_scales",
           "parse_fd_names", "parse_indices", "add_options", "given_keywords", "zero_is_none"]


@dataclass(frozen=True)
class Option:
    """One setting of a fit part.

    keyword  the :func:`larnd_diff.fit.fit` keyword (and the attribute of the parsed command line)
    flag     the command-line flag ("" = keyword only: not on the command line)
    help     one sentence for ``--help`` (the recipes' defaults are appended by the command line)
    parse    text -> value for the command line (None: a plain string); ``action``: an argparse action instead
    """

    keyword: str
    flag: str
    help: str
    parse: Optional[Callable[[str], Any]] = None
    choices: Optional[Sequence[str]] = None
    metavar: Optional[str] = None
    action: Any = None
    negate: bool = False        # a store_true flag that sets the keyword to False (e.g. --no-hessian -> hessian)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option], title: str) -> None:
    """Add ``options`` to ``parser`` under a group ``title``. An option not given is absent from the parsed
    namespace (``argparse.SUPPRESS``), so that a value such as None ("off") can be given explicitly."""
    group = parser.add_argument_group(title)
    for o in options:
        if not o.flag:
            continue
        if o.action is not None:
            dest = o.keyword if not o.negate else f"_negated_{o.keyword}"
            action = argparse.BooleanOptionalAction if o.action == "store_optional_bool" else o.action
            group.add_argument(o.flag, dest=dest, action=action, default=argparse.SUPPRESS, help=o.help)
            continue
        group.add_argument(o.flag, dest=o.keyword, type=o.parse, default=argparse.SUPPRESS, choices=o.choices,
                           metavar=o.metavar, help=o.help)


def given_keywords(args: argparse.Namespace, options: Sequence[Option]) -> dict:
    """The keywords of ``options`` that the command line gave, as :func:`fit` keywords."""
    given = vars(args)
    out = {}
    for o in options:
        if o.negate and given.get(f"_negated_{o.keyword}"):
            out[o.keyword] = False
        elif o.flag and not o.negate and o.keyword in given:
            out[o.keyword] = given[o.keyword]
    return out


def zero_is_none(parse):
    """A parser whose 0 means "off" (None): ``--stop-tol 0``, ``--fd-until 0``, ``--clip-norm 0``."""
    def parse_or_none(text: str):
        value = parse(text)
        return None if value == 0 else value
    parse_or_none.__name__ = getattr(parse, "__name__", "number")
    return parse_or_none


# ---------------------------------------------------------------------------------------------- text parsers
def _known(name: str) -> str:
    if name not in SPECS:
        raise argparse.ArgumentTypeError(f"unknown parameter {name!r}; known: {', '.join(sorted(SPECS))}")
    return name


def parse_names(text: str) -> tuple:
    """"Ab,kb,eField" -> ("Ab", "kb", "eField"), checking the names."""
    names = tuple(_known(n.strip()) for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("no parameter named")
    return names


def parse_assignments(text: str) -> dict:
    """"Ab=0.85,lifetime=3000" -> {"Ab": 0.85, "lifetime": 3000.0}, checking names and numbers."""
    out = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        name = _known(name.strip())
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None
    return out


def parse_bounds(text: str):
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
        name = _known(name.strip())
        try:
            out[name] = tuple(float(v) if v.strip() else None for v in (lo, hi))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {rng!r} is not LO:HI with numbers") from None
    return out


def parse_loss_scales(text: str) -> dict:
    """"adc=1.5,t=0.3" -> {"scales": {"adc": 1.5, "t": 0.3}} (keywords of the sdtw/chamfer/mmd losses)."""
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in ("x", "y", "t", "adc"):
            raise argparse.ArgumentTypeError(f"expected F=S with F in x, y, t, adc, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key.strip()}: {value!r} is not a number") from None
    return {"scales": out} if out else {}


def step_pairs(steps) -> tuple:
    """{name: step} (or None) as the ((name, step), ...) a frozen part keeps (CentralDifferences.steps,
    HessianUncertainty.steps)."""
    return tuple((str(n), float(v)) for n, v in (steps or {}).items())


def parse_fd_names(text: str) -> tuple:
    """"tran_diff,long_diff" -> ("tran_diff", "long_diff"); "none" -> ()."""
    return () if text.strip().lower() in ("", "none", "off") else parse_names(text)


def parse_indices(text: str) -> list:
    """"0,3,5" -> [0, 3, 5]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated target indices, got {text!r}") from None
