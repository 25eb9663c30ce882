"""Loss landscape in two parameters (default eField x lifetime, the paper's Fig. 9), saved as an image.

    python examples/loss_landscape.py --backend torch --events 10 --grid 15 --out landscape.png
    python examples/loss_landscape.py --x Ab --y kb --toy

The target is simulated at ``--target`` values (default nominal); the loss is evaluated forward only on a grid
spanning each parameter's Table I range (``--span`` shrinks it around the target, e.g. 0.1 = +-10 %), averaged
over all mini-batches of the sample. The target point is marked; the grid minimum too.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from larnd_diff.fit import Calibrator, build, default_sample, toy_loss, toy_simulator
from larnd_diff.fit.options import parse_assignments
from larnd_diff.params import SPECS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--x", default="eField")
    p.add_argument("--y", default="lifetime")
    p.add_argument("--grid", type=int, default=15, help="points per axis")
    p.add_argument("--span", type=float, default=None,
                   help="relative half-width around the target (default: the Table I range)")
    p.add_argument("--target", default="", help="NAME=V,... target values (default nominal)")
    p.add_argument("--backend", default="torch", choices=("torch", "jax", "tensorflow"))
    p.add_argument("--loss", default="sdtw_adc")
    p.add_argument("--events", type=int, default=10)
    p.add_argument("--batch-length", type=float, default=100.0)
    p.add_argument("--toy", action="store_true", help="closed-form stand-in model instead of the simulator")
    p.add_argument("--out", type=Path, default=Path("loss_landscape.png"))
    return p.parse_args(argv)


def axis(name: str, centre: float, n: int, span: float | None) -> np.ndarray:
    spec = SPECS[name]
    lo, hi = (spec.low, spec.high) if span is None else (centre * (1 - span), centre * (1 + span))
    return np.linspace(lo, hi, n)


def scan(cal: Calibrator, xname: str, yname: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    z = np.empty((len(ys), len(xs)))
    for j, yv in enumerate(ys):
        for i, xv in enumerate(xs):
            z[j, i] = cal.loss_at({xname: xv, yname: yv})
    return z


def draw(xs, ys, z, xname, yname, target, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    finite = np.isfinite(z)
    zz = np.where(finite, z, np.nan)
    norm = None
    if finite.any() and np.all(z[finite] > 0):  # the interesting structure spans decades near the minimum
        from matplotlib.colors import LogNorm

        norm = LogNorm(vmin=np.nanmin(zz), vmax=np.nanmax(zz))
    mesh = ax.pcolormesh(xs, ys, zz, shading="nearest", cmap="viridis", norm=norm)
    fig.colorbar(mesh, ax=ax, label="loss")
    if finite.any():
        levels = np.geomspace(np.nanmin(zz), np.nanmax(zz), 12) if norm is not None else 12
        ax.contour(xs, ys, zz, levels=levels, colors="w", linewidths=0.5)
        j, i = np.unravel_index(np.nanargmin(zz), zz.shape)
        ax.plot(xs[i], ys[j], "wo", mfc="none", label="grid minimum")
    ax.plot(target[xname], target[yname], "r*", ms=12, label="target")
    ax.set_xlabel(f"{xname} [{SPECS[xname].unit}]")
    ax.set_ylabel(f"{yname} [{SPECS[yname].unit}]")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.x == args.y:
        raise SystemExit("--x and --y must differ")
    target = {n: SPECS[n].nominal for n in (args.x, args.y)}
    target.update(parse_assignments(args.target))
    segs = default_sample(args.events, seed=1)
    extra = {"simulator": toy_simulator, "loss": toy_loss} if args.toy else {"loss": args.loss}
    cal = build(segs, target, params=(args.x, args.y), backend=args.backend, max_iter=1,
                batch_length_cm=args.batch_length, progress=False, hessian=False, **extra)
    xs = axis(args.x, target[args.x], args.grid, args.span)
    ys = axis(args.y, target[args.y], args.grid, args.span)
    t0 = time.perf_counter()
    z = scan(cal, args.x, args.y, xs, ys)
    dt = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(xs, ys, z, args.x, args.y, target, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"x": args.x, "y": args.y, "xs": xs.tolist(),
                                                         "ys": ys.tolist(), "loss": z.tolist(),
                                                         "target": target}, indent=1))
    print(f"{args.grid}x{args.grid} losses over {cal.n_batches} batches in {dt:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
