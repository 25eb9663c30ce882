"""Is the data-like loss smooth, and is its reverse-mode gradient its slope? Differences of the loss at growing
steps against the gradient, per parameter, at a point of a fit.

The loss is the data recipe's (``larnd_diff.fit.recipes.DATA``: the negative log-likelihood of a closure target made
by the Numba reference with electronics noise, ``larnd_diff/fit/likelihood.py``), in the fit's coordinates
(``u = ln(p / nominal)``, eField's scaled by its step scale). At the point, for each parameter alone and each step
h: ``L(u + h) - L(u)`` and ``L(u - h) - L(u)`` next to the reverse-mode prediction ``+-h g``, and the central
difference ``(L(u + h) - L(u - h)) / 2h``. A smooth loss shows the prediction at the small steps and a central
difference that changes little with h; a jump of the loss shows as a difference far above the prediction at the
smallest step. For the largest jump of each parameter the row (pixel) of the sample whose log-likelihood changed
most is reported with its total charge before and after: a jump of the charge itself (not of a trigger
probability) points at the simulator's quadrature (the in-pad sampling grid, ``larnd_diff/sim/pixels.py``).

    python benchmarks/gradient_check.py --out benchmarks/results/gradient_check.json           # at nominal
    python benchmarks/gradient_check.py --at history.jsonl:68 --out gc.json                      # a fit's point
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

STEPS = (1e-4, 1e-3, 1e-2)


def _numpy(x):
    x = getattr(x, "raw", x)
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def row_terms(cal, physical: dict):
    """Per (event, pixel) row of the model: (log-likelihood, total charge e-, observed samples) at physical
    parameter values (the data recipe's NoiseLikelihood.row_terms)."""
    import eagerpy as ep

    be, model, obj = cal.backend, cal.objective.model, cal.objective
    fitted = {n: ep.astensor(be.raw_asarray(float(v), model.dtype, model.device)) for n, v in physical.items()}
    t = obj.loss_part.row_terms(model, obj.batches[0], fitted, obj.target_hits(0))
    keys = [(int(e), int(r[0]), int(r[1])) for e, r in zip(np.asarray(t["events"]), np.asarray(t["rows"]))]
    return dict(zip(keys, zip(_numpy(t["log_likelihood"]).tolist(), _numpy(t["charge"]).sum(axis=1).tolist(),
                              np.isfinite(t["adc"]).sum(axis=1).tolist())))


def largest_row_change(cal, before: dict, after: dict) -> dict:
    a, b = row_terms(cal, before), row_terms(cal, after)
    common = sorted(set(a) & set(b), key=lambda k: -abs(b[k][0] - a[k][0]))
    if not common:
        return {}
    k = common[0]
    return {"event": k[0], "pixel": [k[1], k[2]], "delta_log_likelihood": b[k][0] - a[k][0],
            "charge_before_e": a[k][1], "charge_after_e": b[k][1], "observed_samples": a[k][2],
            "rows_only_before": len(set(a) - set(b)), "rows_only_after": len(set(b) - set(a))}


def check(cal, point: dict, steps=STEPS) -> dict:
    """Reverse-mode gradient and loss differences at ``point`` (physical values of the fitted parameters)."""
    be, model = cal.backend, cal.objective.model
    names = cal.names
    u0 = {n: cal.coordinates.coordinate(n, point[n]) for n in names}
    cal.objective.target_hits(0)
    value, grads = be.value_and_grad(lambda q: be.wrap(cal.batch_loss(0, q)),
                                     {n: be.raw_asarray(u0[n], model.dtype, model.device) for n in names})
    base = float(be.to_numpy(value))
    out = {"loss": base, "params": {}}
    for n in names:
        g = float(np.asarray(be.to_numpy(grads[n])).reshape(()))
        rows = []
        for h in steps:
            diff = {}
            for sign in (1, -1):
                u = dict(u0)
                u[n] += sign * h
                diff[sign] = cal.loss_at(cal.coordinates.to_physical(u)) - base
            rows.append({"step": h, "plus": diff[1], "minus": diff[-1], "predicted_plus": h * g,
                         "central_difference": (diff[1] - diff[-1]) / (2 * h)})
        jump = max(rows[0]["plus"] - rows[0]["predicted_plus"], -rows[0]["minus"] - rows[0]["predicted_plus"],
                   key=abs)
        u = dict(u0)
        u[n] += STEPS[0] if abs(rows[0]["plus"]) >= abs(rows[0]["minus"]) else -STEPS[0]
        worst = largest_row_change(cal, point, cal.coordinates.to_physical(u))
        out["params"][n] = {"reverse_mode": g, "steps": rows, "jump_at_smallest_step": jump,
                            "largest_row_change": worst}
        print(f"{n:10s} reverse mode {g:+10.1f}; central differences "
              + ", ".join(f"h={r['step']:g}: {r['central_difference']:+10.1f}" for r in rows)
              + f"; L(u+-{steps[0]:g}) - L(u): {rows[0]['plus']:+.2f} / {rows[0]['minus']:+.2f}", flush=True)
    return out


def table(result: dict) -> str:
    lines = ["| parameter | reverse mode | " + " | ".join(f"central diff. h={h:g}" for h in STEPS)
             + f" | L(u+h)-L(u), L(u-h)-L(u) at h={STEPS[0]:g} | largest row: charge before -> after (e-) |",
             "|---|" + "---|" * (len(STEPS) + 3)]
    for n, r in result["params"].items():
        w = r["largest_row_change"] or {}
        row = (f"{w['charge_before_e']:.0f} -> {w['charge_after_e']:.0f} (dlnL {w['delta_log_likelihood']:+.1f})"
               if w else "-")
        lines.append(f"| {n} | {r['reverse_mode']:+.1f} | "
                     + " | ".join(f"{s['central_difference']:+.1f}" for s in r["steps"])
                     + f" | {r['steps'][0]['plus']:+.2f}, {r['steps'][0]['minus']:+.2f} | {row} |")
    return "\n".join(lines)


def point_from(spec: str, truth: dict) -> dict:
    """"truth", "nominal" or HISTORY.jsonl:ITERATION (the parameters of that iteration of a fit's history)."""
    from larnd_diff.params import SPECS

    if spec == "truth":
        return dict(truth)
    if spec == "nominal":
        return {n: float(SPECS[n].nominal) for n in truth}
    path, _, it = spec.rpartition(":")
    if not path or not it.isdigit():
        raise SystemExit(f"--at must be truth, nominal or HISTORY.jsonl:ITERATION, got {spec!r}")
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["iteration"] == int(it):
                return {n: float(rec["params"][n]) for n in truth}
    raise SystemExit(f"{path} has no iteration {it}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="seed of the closure targets (default 1)")
    ap.add_argument("--target", type=int, default=1, help="index of the target in the seed's list (default 1)")
    ap.add_argument("--targets", type=int, default=5, help="length of the seed's target list (default 5)")
    ap.add_argument("--at", default="nominal", help="truth, nominal or HISTORY.jsonl:ITERATION (default nominal)")
    ap.add_argument("--relaxation", default="smooth", help="relaxation preset of the model (default smooth)")
    ap.add_argument("--events", type=int, default=10, help="events of the CPU main job's sample (default 10)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file")
    args = ap.parse_args(argv)

    from larnd_diff.fit.closure import default_sample, random_targets
    from larnd_diff.fit.recipes import build

    t0 = time.time()
    segs = default_sample(args.events, 1, "drift", True, 1)
    truth = random_targets(args.targets, seed=args.seed)[args.target]
    cal = build(segs, truth, recipe="data", seed=args.seed + args.target, max_iter=1, progress=False,
                relaxation=args.relaxation)
    point = point_from(args.at, truth)
    result = check(cal, point)
    md = table(result)
    print(md)
    out = {"command": " ".join(["python", "benchmarks/gradient_check.py", *(sys.argv[1:] if argv is None else argv)]),
           "machine": platform.node(), "wall_s": time.time() - t0, "truth": truth, "point": point,
           "relaxation": args.relaxation, "n_segments": int(len(segs)), **result, "table": md}
    return write_result(args.out, out)


def write_result(path: Path, out: dict) -> int:
    """The JSON result file (no NaN); 0, the exit status."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
