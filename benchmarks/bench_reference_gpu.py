"""Time the reference on a CUDA GPU (larnd_diff.reference.cuda.simulate, numba-cuda) after JIT compilation.

    python benchmarks/bench_reference_gpu.py [--inputs a.h5 b.h5] [--repeat 3] [--cpu] \
        [--out results/reference_gpu.json]

Per input file: JIT time (first call on the first event, kernels compiled; reported separately), total wall
seconds of the whole file after JIT (best and median of the repeats; the GPU is synchronised by the
device-to-host copies at the end of every chunk), seconds per 100 cm of segment length (geometric length of all
segments) and per event, hit counts; with ``--cpu`` also the CPU reference on the same machine (one timed run after
its JIT) for a same-machine ratio. Writes JSON with machine and GPU info.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from bench_reference import machine_info as cpu_machine_info  # same folder: run as a script

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[0].parent / "shared"
DEFAULT_INPUTS = [str(SHARED / "data" / "module0_corsika.h5"), str(SHARED / "data" / "test_inputs.h5")]


def gpu_info() -> dict:
    from numba import cuda
    info = {}
    try:
        dev = cuda.get_current_device()
        name = dev.name
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = list(dev.compute_capability)
    except Exception as exc:   # simulator or driver trouble: still write the timings
        info["gpu"] = f"unknown ({exc})"
    try:
        import numba_cuda
        info["numba_cuda"] = numba_cuda.__version__
    except ImportError:
        pass
    try:
        info["cuda_runtime"] = ".".join(map(str, cuda.runtime.get_version()))
    except Exception:
        pass
    return info


def machine_info() -> dict:
    info = cpu_machine_info()
    info.pop("load_average_1min", None)
    info.update(gpu_info())
    return info


def bench_file(path: str, repeat: int, precision: str, with_cpu: bool) -> dict:
    import h5py

    from larnd_diff.io import swap_xz
    from larnd_diff.reference import cuda as rc
    from larnd_diff.reference import simulate as simulate_cpu

    with h5py.File(path) as f:
        segs = swap_xz(f["segments"][:])
    n_events = len(np.unique(segs["eventID"]))
    length_cm = float(np.sum(np.sqrt(sum((segs[f"{a}_end"].astype(np.float64) - segs[f"{a}_start"]) ** 2
                                         for a in "xyz"))))
    first = segs[segs["eventID"] == segs["eventID"][0]]
    t = time.perf_counter()
    rc.simulate(first, precision=precision)          # compiles the kernels (and loads the CPU helpers)
    jit_s = time.perf_counter() - t
    t = time.perf_counter()
    rc.simulate(first, precision=precision)
    first_event_after_jit = time.perf_counter() - t
    times, hits = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        hits = rc.simulate(segs, precision=precision)
        times.append(time.perf_counter() - t)
    best = min(times)
    res = dict(input=path, n_segments=int(len(segs)), n_events=n_events, segment_length_cm=length_cm,
               n_hit_pixels=len(hits), n_samples=int(hits.n_samples.sum()),
               jit_seconds_first_event=jit_s, first_event_seconds_after_jit=first_event_after_jit,
               seconds_total_best=best, seconds_total_median=statistics.median(times), seconds_all=times,
               seconds_per_100cm=100 * best / length_cm, seconds_per_event=best / n_events)
    if with_cpu:
        simulate_cpu(first, precision=precision)     # CPU JIT / cache load
        t = time.perf_counter()
        cpu_hits = simulate_cpu(segs, precision=precision)
        cpu_s = time.perf_counter() - t
        res.update(cpu_seconds_total=cpu_s, cpu_seconds_per_100cm=100 * cpu_s / length_cm,
                   cpu_over_gpu=cpu_s / best, cpu_n_hit_pixels=len(cpu_hits))
    print(json.dumps(res, indent=1), flush=True)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", nargs="+", default=DEFAULT_INPUTS, help="edep-sim segments HDF5 files")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--precision", default="larnd-sim", choices=["larnd-sim", "float64"])
    ap.add_argument("--cpu", action="store_true", help="also time the CPU reference on this machine")
    ap.add_argument("--out", default=str(HERE / "results" / "reference_gpu.json"))
    args = ap.parse_args(argv)

    from larnd_diff.reference import cuda as rc
    if not rc.is_available():
        raise SystemExit("no CUDA GPU usable by numba-cuda on this machine")
    result = dict(benchmark="larnd_diff.reference.cuda.simulate (numba-cuda, GPU)", precision=args.precision,
                  noise=False, files={}, machine=machine_info(),
                  date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        if not Path(path).is_file():
            print(f"skipping {path}: not found")
            continue
        result["files"][Path(path).name] = bench_file(path, args.repeat, args.precision, args.cpu)
        out.write_text(json.dumps(result, indent=1))     # partial results survive a time limit
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
