"""Time the Numba reference (larnd_diff.reference.simulate) on CPU, after JIT compilation.

    python benchmarks/bench_reference.py [--input module0_corsika.h5] [--repeat 3] [--out results/reference_cpu.json]

Writes JSON: total wall seconds (best and median of the repeats), CPU seconds summed over threads, seconds per cm
of segment length (geometric length of all segments) and per event, sizes, and machine info (with the 1-minute load
average: on a shared machine, wall times depend on the other processes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[0].parent / "shared"


def machine_info() -> dict:
    import numba
    info = dict(platform=platform.platform(), python=platform.python_version(), processor=platform.processor(),
                cpu_count=os.cpu_count(), numba=numba.__version__, numpy=np.__version__,
                numba_threads=numba.config.NUMBA_NUM_THREADS, load_average_1min=os.getloadavg()[0])
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(SHARED / "data" / "module0_corsika.h5"), help="edep-sim segments HDF5")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--precision", default="larnd-sim", choices=["larnd-sim", "float64"])
    ap.add_argument("--noise", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "reference_cpu.json"))
    args = ap.parse_args(argv)

    import h5py

    from larnd_diff.io import swap_xz
    from larnd_diff.reference import simulate

    with h5py.File(args.input) as f:
        segs = swap_xz(f["segments"][:])
    n_events = len(np.unique(segs["eventID"]))
    length_cm = float(np.sum(np.sqrt(sum((segs[f"{a}_end"].astype(np.float64) - segs[f"{a}_start"]) ** 2
                                         for a in "xyz"))))
    t = time.perf_counter()
    first = segs[segs["eventID"] == segs["eventID"][0]]
    simulate(first, precision=args.precision, noise=args.noise)     # JIT (or cache load)
    jit_s = time.perf_counter() - t
    times, cpu, hits = [], [], None
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        hits = simulate(segs, precision=args.precision, noise=args.noise)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best = min(times)
    result = dict(
        benchmark="larnd_diff.reference.simulate (Numba, CPU)", input=str(args.input), precision=args.precision,
        noise=args.noise, n_segments=int(len(segs)), n_events=n_events, segment_length_cm=length_cm,
        n_hit_pixels=len(hits), n_samples=int(hits.n_samples.sum()),
        seconds_total_best=best, seconds_total_median=statistics.median(times), seconds_all=times,
        cpu_seconds_all_threads=cpu,
        seconds_per_cm=best / length_cm, seconds_per_event=best / n_events, first_call_seconds_incl_jit=jit_s,
        machine=machine_info(), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return result


if __name__ == "__main__":
    main()
