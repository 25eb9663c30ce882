"""How far is a relaxed simulator's induced charge from larnd-sim's, pixel by pixel, on data made by the reference?

At the true parameters of a data-like closure target (``larnd_diff.fit.recipes.DATA``: the Numba reference with
electronics noise on the CPU main job's sample), every pixel row's total induced charge and log-likelihood under
the expected-noise readout (``NoiseLikelihood.row_terms``, larnd_diff/fit/likelihood.py) with a reference-valued
forward (``--base``, default ``smooth``: larnd-sim's hard pad sampling, z grid and tick phases) and with a relaxed
one (``--relaxed``, e.g. ``continuous``). Per bin of the row's charge: the mean and rms of the relative charge
difference and the sum of the log-likelihood differences. A relaxation whose charge differs from larnd-sim's by more
than the readout resolves raises the NLL at the truth and moves the fit's minimum away from it.

    python benchmarks/quadrature_mismatch.py --relaxed continuous --out benchmarks/results/quadrature_mismatch.json
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_check import row_terms, write_result  # noqa: E402

BINS_E = (0.0, 1e3, 5e3, 2e4, np.inf)


def compare(segments, truth: dict, base: str, relaxed: str, seed: int) -> dict:
    from larnd_diff.fit.recipes import build

    rows = {}
    for name in (base, relaxed):
        cal = build(segments, truth, recipe="data", seed=seed, max_iter=1, progress=False, relaxation=name)
        rows[name] = row_terms(cal, truth)
    a, b = rows[base], rows[relaxed]
    common = sorted(set(a) & set(b))
    q_a = np.array([a[k][1] for k in common])
    q_b = np.array([b[k][1] for k in common])
    d_ll = np.array([b[k][0] - a[k][0] for k in common])
    rel = (q_b - q_a) / np.maximum(q_a, 1.0)
    bins = []
    for lo, hi in zip(BINS_E, BINS_E[1:]):
        m = (q_a >= lo) & (q_a < hi)
        bins.append({"charge_e": [lo, None if np.isinf(hi) else hi], "rows": int(m.sum()),
                     "mean_relative_difference": float(rel[m].mean()) if m.any() else None,
                     "rms_relative_difference": float(rel[m].std()) if m.any() else None,
                     "sum_delta_log_likelihood": float(d_ll[m].sum())})
    return {"rows": len(common), "rows_only_base": len(set(a) - set(b)), "rows_only_relaxed": len(set(b) - set(a)),
            "delta_nll": float(-d_ll.sum()), "bins": bins}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smooth", help="the forward with larnd-sim's values (default smooth)")
    ap.add_argument("--relaxed", default="continuous", help="the relaxed forward (default continuous)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the closure targets (default 1)")
    ap.add_argument("--targets", type=int, nargs="+", default=[0, 1], help="target indices (default 0 1)")
    ap.add_argument("--events", type=int, default=10, help="events of the CPU main job's sample (default 10)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file")
    args = ap.parse_args(argv)

    from larnd_diff.fit.closure import default_sample, random_targets

    t0 = time.time()
    segments = default_sample(args.events, 1, "drift", True, 1)
    targets = random_targets(max(args.targets) + 1, seed=args.seed)
    out = {"command": " ".join(["python", "benchmarks/quadrature_mismatch.py", *(sys.argv[1:] if argv is None
                                                                                   else argv)]),
           "machine": platform.node(), "base": args.base, "relaxed": args.relaxed, "targets": {}}
    for i in args.targets:
        out["targets"][str(i)] = r = compare(segments, targets[i], args.base, args.relaxed, args.seed + i)
        print(f"target {i}: {r['rows']} rows, NLL({args.relaxed}) - NLL({args.base}) at the truth "
              f"{r['delta_nll']:+.1f}")
        for b in r["bins"]:
            if b["rows"]:
                print(f"  charge {b['charge_e'][0]:>7.0f}+ e: {b['rows']:4d} rows, relative difference mean "
                      f"{b['mean_relative_difference']:+.4f} rms {b['rms_relative_difference']:.4f}, "
                      f"dlnL {b['sum_delta_log_likelihood']:+.1f}")
    out["wall_s"] = time.time() - t0
    return write_result(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
