"""Many closure fits at once: one ``larnd-diff closure --only i`` process per (seed, target), run in parallel, then
one summary: per target the error of every parameter and its sigma, the pulls, and what fraction is within the
tolerance (JSON + a Markdown table).

    python benchmarks/closure_campaign.py --seeds 1 2 --targets 10 --procs 10 --out closures_gpu -- \\
        --events 100 --tracks 10 --cuts paper --device cuda:0 --dtype float32 --max-iter 300

Everything after ``--`` goes to ``larnd-diff closure`` unchanged (the default recipe there is the data-like closure:
target simulated by the Numba reference with electronics noise, the expected-noise likelihood). Each fit keeps its
own checkpoint directory under ``--out``, so a killed campaign continues with ``--resume`` in the passed options.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def pinned(cores):
    """preexec_fn pinning a child to ``cores`` (None: no pinning)."""
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def run_one(out: Path, seed: int, index: int, n_targets: int, extra: list, cores=None) -> Path:
    target_json = out / f"seed{seed}_target{index:03d}.json"
    cmd = ["larnd-diff", "closure", "--targets", str(n_targets), "--only", str(index), "--seed", str(seed), "-q",
           "--json", str(target_json), "--checkpoint-dir", str(out / f"seed{seed}"), *extra]
    log = (out / f"seed{seed}_target{index:03d}.log").open("w")
    t0 = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(len(cores)), "NUMBA_NUM_THREADS": str(len(cores))}
                              if cores else {}))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pinned(cores))
    _, status, usage = os.wait4(proc.pid, 0)
    wall, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
    (out / f"seed{seed}_target{index:03d}.usage.json").write_text(json.dumps(
        {"exit_status": os.waitstatus_to_exitcode(status), "wall_s": wall, "cpu_s": cpu,
         "max_rss_mb": usage.ru_maxrss / 1024, "cores": sorted(cores) if cores else None}))
    print(f"seed {seed} target {index}: exit {os.waitstatus_to_exitcode(status)} after {wall:.0f} s "
          f"({cpu:.0f} CPU s)", flush=True)
    return target_json


def summarize(rows: list, tolerance: float) -> dict:
    names = list(rows[0]["target"]) if rows else []
    pulls = {n: [r["pulls"][n] for r in rows if r.get("pulls") and r["pulls"].get(n) is not None] for n in names}
    def within_or_2_sigma(r):
        pull = r.get("pulls") or {}
        return all(abs(r["relative_error"][n]) < tolerance or (pull.get(n) is not None and abs(pull[n]) < 2)
                   for n in names)

    return {"fits": len(rows), "within_tolerance": sum(r["max_relative_error"] < tolerance for r in rows),
            "within_tolerance_or_2_sigma": sum(map(within_or_2_sigma, rows)), "tolerance": tolerance,
            "wall_s_per_fit": [r["wall_time_s"] for r in rows], "iterations": [r["iterations"] for r in rows],
            "max_abs_relative_error": {n: max(abs(r["relative_error"][n]) for r in rows) for n in names},
            "median_relative_sigma": {n: _median_or_none([r["errors"][n] / r["fitted"][n] for r in rows
                                                          if r.get("errors") and r["errors"].get(n)])
                                      for n in names},
            "pull_mean": {n: float(np.mean(p)) if p else None for n, p in pulls.items()},
            "pull_std": {n: float(np.std(p, ddof=1)) if len(p) > 1 else None for n, p in pulls.items()},
            "max_abs_pull": {n: float(np.max(np.abs(p))) if p else None for n, p in pulls.items()}}


def _median_or_none(values):
    """The median, or None (JSON null) where no fit has the value (never NaN: JSON has no NaN)."""
    return float(np.median(values)) if values else None


def table(rows: list) -> str:
    names = list(rows[0]["target"]) if rows else []
    head = ("| seed | target | " + " | ".join(f"{n} err (sigma)" for n in names)
            + " | iterations | fit wall s | process wall s (CPU s) |")
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for r in rows:
        cells = []
        for n in names:
            e = r["relative_error"][n] * 100
            s = (r.get("errors") or {}).get(n)
            cells.append(f"{e:+.2f} % ({s / r['fitted'][n] * 100:.2f} %)" if s else f"{e:+.2f} % (-)")
        lines.append(f"| {r['seed']} | {r['index']} | " + " | ".join(cells)
                     + f" | {r['iterations']} | {r['wall_time_s']:.0f} | {r['process_wall_s']:.0f} "
                       f"({r['process_cpu_s']:.0f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--procs", type=int, default=4, help="fits running at the same time")
    p.add_argument("--indices", type=int, nargs="+", default=None,
                   help="fit only these targets of each seed's list (default all --targets)")
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cores-per-fit", type=int, default=None,
                   help="pin each fit to its own this many CPU cores (and as many threads), e.g. 2 to time the CPU "
                        "main job as on a 2-core machine; needs procs x this many cores")
    args = p.parse_args(own)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, i) for s in args.seeds for i in (args.indices or range(args.targets))]
    t0 = time.perf_counter()
    free = queue.Queue()
    if args.cores_per_fit:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < args.procs * args.cores_per_fit:
            p.error(f"--procs {args.procs} x --cores-per-fit {args.cores_per_fit} needs "
                    f"{args.procs * args.cores_per_fit} cores, this process has {len(cores)}")
        for k in range(args.procs):
            free.put(set(cores[k * args.cores_per_fit:(k + 1) * args.cores_per_fit]))
    else:
        for _ in range(args.procs):
            free.put(None)

    def job(seed_index):
        cores = free.get()
        try:
            return run_one(args.out, *seed_index, args.targets, extra, cores)
        finally:
            free.put(cores)

    with ThreadPoolExecutor(args.procs) as pool:
        files = list(pool.map(job, jobs))
    rows = []
    for (seed, _), f in zip(jobs, files):
        if f.exists():
            usage = json.loads(f.with_suffix(".usage.json").read_text())
            for r in json.loads(f.read_text())["targets"]:
                rows.append({**r, "seed": seed, "process_wall_s": usage["wall_s"], "process_cpu_s": usage["cpu_s"]})
    out = {"command": " ".join(["python", "benchmarks/closure_campaign.py", *argv]),
           "wall_s": time.perf_counter() - t0, "summary": summarize(rows, args.tolerance), "fits": rows}
    (args.out / "campaign.json").write_text(json.dumps(out, indent=1, allow_nan=False))
    print(table(rows))
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
