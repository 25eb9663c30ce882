"""Soft-DTW forward + backward time per backend, JSON out.

Cases (float64, abs cost, gamma = 1, d = 1):
  * ``single``: one pair, n = m = 2000 (the survey's case, notes/eagerpy-compat.md section 9: 0.40-0.65 s for
    the numba/Cython packages on a 2-core CPU; ott-jax 0.74-0.79 s after a 15.6 s compile).
  * ``batch``: 8 pairs padded to 1000 x 1000, lengths drawn in [500, 1000].

Each backend runs in its own subprocess (clean imports, its own peak-RSS figure). Reported per case:
``first_s`` (first call: jax/tf trace and compile included), ``best_s`` / ``median_s`` over the following
repeats, and ``rss_rise_mb`` (peak resident memory rise of the subprocess). numpy is forward-only.

Usage::

    python benchmarks/bench_softdtw.py [--backends numpy torch jax tensorflow] [--n 2000] [--repeat 3]
                                       [--device cpu|cuda] [--torch-threads 1] [--out softdtw.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(n: int, batch: int, seed: int = 0):
    """(x, y, lengths_x, lengths_y) numpy float64 with padded items (NaN padding)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, n, 1))
    y = rng.normal(size=(batch, n, 1))
    if batch == 1:
        return x, y, [n], [n]
    lx = rng.integers(n // 2, n + 1, batch)
    ly = rng.integers(n // 2, n + 1, batch)
    for b in range(batch):
        x[b, lx[b]:] = np.nan
        y[b, ly[b]:] = np.nan
    return x, y, lx.tolist(), ly.tolist()


def _step_fn(backend: str, device: str):
    """A function (x, y, lx, ly) -> None that runs forward (+ backward) once and waits for the result."""
    from larnd_diff import ops
    from larnd_diff.softdtw import soft_dtw

    b = ops.get_backend(backend)
    dev = None if device == "cpu" else device

    def put(a):
        return b.asarray(a, "float64", dev)

    if backend == "numpy":
        def run(x, y, lx, ly):
            soft_dtw(x, y, 1.0, lx, ly)
        return run, put

    def loss(p, lx, ly):
        return soft_dtw(p["x"], p["y"], 1.0, lx, ly).sum()

    if backend == "jax":
        import jax

        def raw_loss(x, y, lx, ly):
            return soft_dtw(x, y, 1.0, lx, ly).sum()

        vg = jax.jit(jax.value_and_grad(raw_loss, argnums=(0, 1)))

        def run(x, y, lx, ly):
            v, (gx, gy) = vg(x.raw, y.raw, lx, ly)
            gx.block_until_ready()
        return run, put

    def run(x, y, lx, ly):
        value, grads = b.value_and_grad(lambda p: loss(p, lx, ly), {"x": x, "y": y})
        ops.to_numpy(grads["x"])  # waits for the device
    return run, put


def bench_one(backend: str, n: int, repeat: int, device: str, torch_threads: int = 1) -> dict:
    out = {"backend": backend, "device": device, "cases": {}}
    if backend == "torch":
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        out["torch_threads"] = torch.get_num_threads()
    run, put = _step_fn(backend, device)
    for case, (size, batch) in {"single": (n, 1), "batch": (n // 2, 8)}.items():
        x, y, lx, ly = _inputs(size, batch)
        if backend == "jax":
            import jax.numpy as jnp

            lx, ly = jnp.asarray(lx, dtype=jnp.int32), jnp.asarray(ly, dtype=jnp.int32)
        xt, yt = put(x), put(y)
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        run(xt, yt, lx, ly)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run(xt, yt, lx, ly)
            times.append(time.perf_counter() - t0)
        out["cases"][case] = {
            "n": size, "m": size, "batch": batch, "what": "forward" if backend == "numpy" else "forward+backward",
            "first_s": round(first, 4), "best_s": round(min(times), 4),
            "median_s": round(statistics.median(times), 4),
            "rss_rise_mb": round(_rss_mb() - rss0, 1),
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax", "tensorflow"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON file (default: print only)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1: each wavefront step is a few thousand numbers, too "
                         "small to split, and with 2 threads on a busy 2-core machine OpenMP waits dominated); "
                         "0 keeps torch's default")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one backend in-process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(bench_one(args.one, args.n, args.repeat, args.device, args.torch_threads)))
        return 0
    results = {"host": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
               "python": platform.python_version(), "results": []}
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--one", backend, "--n", str(args.n), "--repeat", str(args.repeat),
               "--device", args.device, "--torch-threads", str(args.torch_threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            results["results"].append({"backend": backend, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            results["results"].append(json.loads(lines[-1]))
        print(json.dumps(results["results"][-1]), flush=True)
    results["load_avg_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
