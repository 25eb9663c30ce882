"""Speed and memory of the differentiable simulator per 100 cm of muon track, and of the Numba reference.

    python benchmarks/bench_sim.py --backend torch --device cpu --out bench_torch_cpu.json
    python benchmarks/bench_sim.py --backend jax --device cuda:0 --length-cm 100 --repeat 5

Input: generated 1 GeV muons (``larnd_diff.generate``) passed through the paper's selection cuts when
``larnd_diff.selection`` is available, packed into a batch of about ``--length-cm`` of track (sum of dx).
Measured per backend / device: forward time (hard and smooth presets), forward + gradient of the six fit
parameters (smooth preset; reverse mode), peak memory (GPU: the framework's allocator peak; CPU: growth of the
process's peak RSS), and the Numba reference forward on the same input (float64 and larnd-sim precision).
Times are medians over ``--repeat`` runs after one warm-up run (compilation excluded, reported separately).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import resource
import statistics
import sys
import time

import numpy as np

FIT = ("Ab", "kb", "eField", "lifetime", "long_diff", "tran_diff")


def muon_batch(length_cm: float, seed: int):
    from larnd_diff.generate import generate_muons

    segs = generate_muons(n_events=max(4, int(length_cm / 20) + 4), seed=seed)
    try:
        from larnd_diff.selection import make_batches, select_tracks

        sel = select_tracks(segs)
        if len(sel):
            segs = sel
        batches = make_batches(segs, length_cm=length_cm, seed=seed)
        segs = batches[0]
    except ImportError:
        pass
    return segs


def fit_batches(length_cm: float, seed: int):
    """The fit's 100 cm batches of 10-muon events (paper cuts) from enough generated events for ``length_cm``."""
    from larnd_diff.generate import generate_muons
    from larnd_diff.selection import make_batches, select_tracks

    segs = select_tracks(generate_muons(n_events=max(1, math.ceil(0.06 * length_cm)), tracks_per_event=10,
                                        seed=seed))
    return list(make_batches(segs, length_cm=100.0, seed=seed))


def muon_batches(length_cm: float, seed: int):
    """The fit's 100 cm batches of 10-muon events, concatenated until ``length_cm`` (one call on many batches)."""
    out, total = [], 0.0
    for batch in fit_batches(length_cm, seed):
        out.append(batch)
        total += track_length(batch)
        if total >= length_cm:
            break
    return np.concatenate(out)


def track_length(segs) -> float:
    return float(np.sum(np.sqrt((segs["x_end"] - segs["x_start"]) ** 2 + (segs["y_end"] - segs["y_start"]) ** 2
                                + (segs["z_end"] - segs["z_start"]) ** 2)))


def _sync(backend, device):
    if backend == "torch" and device and "cuda" in str(device):
        import torch
        torch.cuda.synchronize()


def _block(x):
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    return x


def _peak_reset(backend, device):
    if backend == "torch" and device and "cuda" in str(device):
        import torch
        torch.cuda.reset_peak_memory_stats()


def _peak(backend, device, rss0):
    if backend == "torch" and device and "cuda" in str(device):
        import torch
        return int(torch.cuda.max_memory_allocated())
    if backend == "jax" and device and "cuda" in str(device):
        import jax
        stats = jax.devices()[0].memory_stats() or {}
        return int(stats.get("peak_bytes_in_use", 0))
    if backend == "tensorflow" and device and "GPU" in str(device).upper():
        import tensorflow as tf
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)


def timed(fn, repeat):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times


def configured_simulate(kernel, compile):
    """``larnd_diff.sim.simulate`` with ``SimConfig(kernel=kernel, compile=compile)``."""
    from larnd_diff.sim import simulate
    from larnd_diff.sim.config import SimConfig

    return functools.partial(simulate, config=SimConfig(kernel=kernel, compile=compile))


def bench_backend(segs, backend, device, dtype, repeat, kernel="auto", compile="auto"):
    simulate = configured_simulate(kernel, compile)
    out = {}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for relax in ("hard", "smooth"):
        def fwd():
            h = simulate(segs, backend=backend, device=device, relaxation=relax, dtype=dtype)
            _block(h.adc)
            _sync(backend, device)
            return h
        _peak_reset(backend, device)
        first, med, times = timed(fwd, repeat)
        out[f"forward_{relax}"] = dict(first_s=first, median_s=med, times_s=times,
                                       peak_bytes=_peak(backend, device, rss0), rows=len(fwd()))
    if backend != "numpy":
        grad = gradient_call(segs, backend, device, dtype, simulate)
        _peak_reset(backend, device)
        first, med, times = timed(grad, repeat)
        out["forward_grad6_smooth"] = dict(first_s=first, median_s=med, times_s=times,
                                           peak_bytes=_peak(backend, device, rss0))
    return out


def gradient_call(segs, backend, device, dtype, simulate):
    """A function running one forward + 6-parameter gradient (smooth preset, reverse mode) of a fixed linear
    loss of the ADC values on ``segs``, waiting for the device."""
    import eagerpy as ep

    from larnd_diff import ops
    from larnd_diff.params import SPECS

    b = ops.get_backend(backend)
    weights = np.random.default_rng(0).random((200_000, 10))

    def loss(p):
        h = simulate(segs, backend=backend, device=device, params=dict(p), relaxation="smooth", dtype=dtype)
        a = ops.nan_to_num(ep.astensor(h.adc), 0.0)
        return (a * ops.asarray(a, weights[: a.shape[0]], dtype)).sum()

    def grad():
        params = {k: b.asarray(np.asarray(SPECS[k].nominal), dtype, device) for k in FIT}
        v, g = b.value_and_grad(loss, params)
        for x in g.values():
            _block(x.raw)
        _sync(backend, device)
    return grad


def bench_fit_batches(n_batches, backend, device, dtype, repeat, kernel, compile, seed):
    """Forward + gradient on each of the fit's first ``n_batches`` 100 cm batches in turn, one call per batch (the
    way a fit runs): per-batch medians over ``repeat`` passes, and their sum per 100 cm of the batches' track."""
    simulate = configured_simulate(kernel, compile)
    batches = fit_batches(100.0 * n_batches, seed)[:n_batches]
    calls = [gradient_call(b, backend, device, dtype, simulate) for b in batches]
    for call in calls:
        call()                                    # warm-up (compilation) on every batch
    times = [[] for _ in calls]
    for _ in range(repeat):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t0)
    lengths = [track_length(b) for b in batches]
    medians = [statistics.median(t) for t in times]
    return dict(lengths_cm=lengths, segments=[int(len(b)) for b in batches], median_s=medians,
                s_per_100cm=100.0 * sum(medians) / sum(lengths))


def bench_reference(segs, repeat, gpu=False):
    from larnd_diff.reference import simulate as ref

    out = {}
    for precision in ("float64", "larnd-sim"):
        first, med, times = timed(lambda: ref(segs, precision=precision), repeat)
        out[f"forward_{precision}"] = dict(first_s=first, median_s=med, times_s=times)
    if gpu:
        from larnd_diff.reference import cuda as ref_cuda

        first, med, times = timed(lambda: ref_cuda.simulate(segs, precision="larnd-sim"), repeat)
        out["forward_gpu_larnd-sim"] = dict(first_s=first, median_s=med, times_s=times)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="torch", choices=("numpy", "torch", "jax", "tensorflow", "none"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--length-cm", type=float, default=100.0,
                    help="track length of the input: one batch of 1-muon events up to this length (default)")
    ap.add_argument("--batches", action="store_true",
                    help="instead: 100 cm batches of 10-muon events concatenated up to --length-cm (one call)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--gpu-reference", action="store_true", help="also time the numba-cuda reference (CUDA GPU)")
    ap.add_argument("--kernel", default="auto", choices=("auto", "fused", "eager"),
                    help="SimConfig.kernel: fused Numba / numba-cuda kernels or the EagerPy implementation")
    ap.add_argument("--fit-batches", type=int, default=0, metavar="N",
                    help="also: forward + gradient on each of the fit's first N 100 cm batches, one call each")
    ap.add_argument("--compile", default="auto", choices=("auto", "always", "never"),
                    help="SimConfig.compile: compile the per-pair inputs with the framework's compiler (torch.compile)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    ap.add_argument("--input", default=None, help="segments (.npy structured array in the simulation frame, or an "
                    "edep-sim .h5 file) instead of generated muons")
    ap.add_argument("--save-input", default=None, help="write the benchmark's segments to this .npy file")
    args = ap.parse_args(argv)

    if args.input is None:
        segs = (muon_batches if args.batches else muon_batch)(args.length_cm, args.seed)
    elif args.input.endswith(".npy"):
        segs = np.load(args.input)
    else:
        from larnd_diff.io import load_segments
        segs = load_segments(args.input)
    if args.save_input:
        np.save(args.save_input, segs)
    length = track_length(segs)
    result = dict(backend=args.backend, device=args.device, dtype=args.dtype, kernel=args.kernel, compile=args.compile,
                  segments=int(len(segs)), track_length_cm=length, python=sys.version.split()[0],
                  machine=platform.platform(), processor=platform.processor())
    if args.backend != "none":
        result["sim"] = bench_backend(segs, args.backend, args.device, args.dtype, args.repeat, args.kernel,
                                      args.compile)
    if args.fit_batches and args.backend not in ("none", "numpy"):
        result["fit_batches"] = bench_fit_batches(args.fit_batches, args.backend, args.device, args.dtype,
                                                  args.repeat, args.kernel, args.compile, args.seed)
    if not args.no_reference:
        result["reference"] = bench_reference(segs, args.repeat, args.gpu_reference)
    scale = 100.0 / length
    per100 = {}
    for part in ("sim", "reference"):
        for k, v in result.get(part, {}).items():
            per100[f"{part}.{k}.s_per_100cm"] = v["median_s"] * scale
            if "peak_bytes" in v:
                per100[f"{part}.{k}.peak_bytes_per_100cm"] = v["peak_bytes"] * scale
    result["per_100cm"] = per100
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
