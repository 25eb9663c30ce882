"""One-parameter scans of the data-like loss around the truth: is its minimum at the true parameters?

For each target (``larnd_diff.fit.random_targets(n, seed=...)``, the closure's targets), the target hits are made
as a detector makes data: the Numba reference at larnd-sim precision with electronics noise (one fixed noise
realisation per target, the closure's). The loss is the data recipe's (``larnd_diff.fit.recipes.DATA``: the
negative log-likelihood of the hits under the expected-noise readout, ``larnd_diff/fit/likelihood.py``) summed over
the sample. Each parameter is moved alone on a grid around its true value, the others held at theirs.

Per parameter the JSON holds the grid (relative offsets), the loss minus its value at the truth, the grid's
argmin, and a parabola through the five grid points nearest the grid's minimum (lifetime's NLL is not symmetric
over a +-30 % grid): its minimum m and the one-parameter statistical error
sigma = (d^2 NLL / dp^2)^(-1/2) (the NLL rises by 1/2 at m +- sigma). ``pull = (m - truth) / sigma``: for a
likelihood, m scatters around the truth with that sigma from one noise realisation to the next, so |pull| < 2 in
19 of 20 scans is what "minimum at the truth within the statistical error" means here. Where the NLL has a
kink at the truth (a V rather than a parabola: eField, long_diff, tran_diff; see README "Calibration on data"
for why) the parabola's sigma is an upper bound and the grid's argmin is the better estimate of the minimum.

    python benchmarks/loss_scans.py --targets 1 --out benchmarks/results/loss_scans.json --plot docs/loss_scans.png
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

#: Half-width of each scan, relative to the true value: about three one-parameter sigmas on the CPU main job's
#: sample (measured; wider grids for parameters the sample constrains less).
HALF_WIDTH = {"Ab": 0.006, "kb": 0.12, "eField": 0.0015, "lifetime": 0.3, "long_diff": 0.1, "tran_diff": 0.04}


def parabola(x: np.ndarray, y: np.ndarray) -> dict:
    """Least-squares parabola y = a (x - m)^2 + c; ``sigma`` = 1 / sqrt(2 a) (y an NLL), None where a <= 0."""
    a2, a1, a0 = np.polyfit(x, y, 2)
    if a2 <= 0:
        return {"curvature": float(a2), "minimum": None, "sigma": None}
    m = -a1 / (2 * a2)
    return {"curvature": float(a2), "minimum": float(m), "sigma": float(1 / math.sqrt(2 * a2)),
            "residual_rms": float(np.sqrt(np.mean((np.polyval([a2, a1, a0], x) - y) ** 2)))}


def scan_target(segments, truth: dict, points: int, fit_kw: dict, seeds, names) -> dict:
    """Scans of the NLL summed over the noise realisations of ``seeds`` (one target data set per seed: the
    closure's fit seed picks the noise realisation); the statistical error of the summed scan's minimum is that
    of one realisation over sqrt(len(seeds))."""
    from larnd_diff.fit import build

    cals = [build(segments, dict(truth), recipe="data", seed=s, max_iter=1, progress=False, hessian=False, **fit_kw)
            for s in seeds]

    def total(values):
        return sum(cal.loss_at(values) * cal.n_batches for cal in cals)  # loss_at is the mean over batches

    at_truth = total(truth)
    out = {"truth": truth, "noise_seeds": list(seeds), "nll_at_truth": at_truth, "params": {}}
    for name in names:
        width = HALF_WIDTH[name]
        rel = np.linspace(-width, width, points)
        t0 = time.perf_counter()
        dnll = np.array([total({**truth, name: truth[name] * (1 + r)}) - at_truth for r in rel])
        near = np.argsort(np.abs(np.arange(points) - int(np.argmin(dnll))), kind="stable")[:5]
        par = parabola(rel[near], dnll[near])
        rel_min = par["minimum"]
        out["params"][name] = {
            "relative_offsets": rel.tolist(), "delta_nll": dnll.tolist(),
            "grid_argmin_relative": float(rel[int(np.argmin(dnll))]),
            "parabola_minimum_relative": rel_min, "sigma_relative": par["sigma"],
            "pull": None if rel_min is None else rel_min / par["sigma"],
            "parabola_residual_rms": par.get("residual_rms"), "seconds": time.perf_counter() - t0}
        p = out["params"][name]
        shown = "n/a" if rel_min is None else f"{rel_min * 100:+.3f} % (sigma {par['sigma'] * 100:.3f} %, " \
                                              f"pull {p['pull']:+.2f})"
        print(f"  {name:9s} minimum {shown}; grid argmin {p['grid_argmin_relative'] * 100:+.3f} %", flush=True)
    return out


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, name in zip(axes.ravel(), HALF_WIDTH):
        for k, res in enumerate(results):
            if name not in res["params"]:
                continue
            p = res["params"][name]
            x = np.array(p["relative_offsets"]) * 100
            label = f"target {k}" + (f", {len(res['noise_seeds'])} realisations" if len(res["noise_seeds"]) > 1
                                     else "")
            ax.plot(x, p["delta_nll"], "o-", ms=3, lw=1, color=f"C{k}", label=label)
            if p["parabola_minimum_relative"] is not None:
                ax.axvline(p["parabola_minimum_relative"] * 100, color=f"C{k}", ls=":", lw=1)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"{name}: offset from the truth (%)")
        ax.set_ylabel("NLL - NLL(truth)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Data-like loss (expected-noise NLL, noisy reference target): one-parameter scans; "
                 "dotted: parabola minimum")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1, help="closure targets to scan (default 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the targets (the closure's --seed; default 1)")
    ap.add_argument("--points", type=int, default=11, help="grid points per parameter (default 11)")
    ap.add_argument("--realisations", type=int, default=1,
                    help="noise realisations of each target's data, NLLs summed (default 1)")
    ap.add_argument("--params", nargs="+", default=list(HALF_WIDTH), choices=list(HALF_WIDTH))
    ap.add_argument("--events", type=int, default=10, help="events of the CPU main job's sample (default 10)")
    ap.add_argument("--tracks", type=int, default=1)
    ap.add_argument("--cuts", default="drift", choices=("drift", "paper"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--out", type=Path, required=True, help="JSON file")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the scans")
    args = ap.parse_args(argv)

    from larnd_diff.fit import default_sample, random_targets

    segments = default_sample(args.events, seed=1, cuts=args.cuts, fluctuations=True, tracks=args.tracks)
    fit_kw = {"dtype": args.dtype, **({"device": args.device} if args.device else {})}
    results = []
    for i, truth in enumerate(random_targets(args.targets, seed=args.seed)):
        print(f"target {i}: {truth}", flush=True)
        seeds = [args.seed + i + 1000 * k for k in range(args.realisations)]
        results.append(scan_target(segments, truth, args.points, fit_kw, seeds, args.params))
    pulls = [p["pull"] for r in results for p in r["params"].values() if p["pull"] is not None]
    doc = {"command": " ".join(["python", "benchmarks/loss_scans.py", *(argv or sys.argv[1:])]),
           "machine": platform.node(), "processor": platform.processor() or platform.machine(),
           "sample": {"events": args.events, "tracks": args.tracks, "cuts": args.cuts, "segments": len(segments),
                      "length_cm": float(np.sum(segments["dx"]))},
           "half_width_relative": HALF_WIDTH, "targets": results,
           "pulls_within_2": int(sum(abs(p) < 2 for p in pulls)), "pulls": len(pulls)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, allow_nan=False))
    if args.plot:
        plot(results, args.plot)
    print(f"{doc['pulls_within_2']} / {doc['pulls']} parabola minima within 2 sigma of the truth -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
