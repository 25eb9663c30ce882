"""Where one simulator call spends its host time: per-stage host time and op counts of forward + gradient.

    python benchmarks/profile_sim.py --device cuda:0 --dtype float32 --out profile.json

Wraps the pipeline's stages (host plan, per-segment and per-pair inputs, induced current, electronics, row
selection, backward pass) with ``torch.profiler.record_function`` labels, runs ``--repeat`` forward + 6-parameter
gradient calls of the benchmark batch (``bench_sim.muon_batch``) and reports per label the host (CPU) time per
call and the number of torch operations and kernel launches it issued. Host time is what limits a small batch on a
GPU: the kernels run asynchronously, so a stage's CPU time is the time the Python thread spends issuing it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (module, function) pairs wrapped with a profiler label of the same name.
STAGES = (
    ("larnd_diff.sim.pipeline", "_plan_inputs"),
    ("larnd_diff.sim.pixels", "plan_pairs"),
    ("larnd_diff.sim.induce", "fused_charge"),
    ("larnd_diff.sim.electronics", "electronics"),
)
#: Functions that ``Backend.compiled_glue`` may compile: labelled as they are handed to it (compiled or not).
COMPILABLE = (
    ("larnd_diff.sim.pipeline", "_event_pair_inputs"),
    ("larnd_diff.sim.electronics", "running_integral"),
    ("larnd_diff.sim.electronics", "_gather_samples"),
)


def _labelled(fn, label):
    import torch

    def wrapped(*a, **kw):
        with torch.profiler.record_function(f"stage:{label}"):
            return fn(*a, **kw)
    return wrapped


def _label_stages(backend):
    """Label the stages; the compilable functions by their result from ``backend.compiled_glue`` (or, uncompiled, the
    ``functools.partial`` the modules bind), so that a compiled function is timed as a whole, not traced."""
    import importlib

    for module, name in STAGES:
        mod = importlib.import_module(module)
        setattr(mod, name, _labelled(getattr(mod, name), name))
    compiled_glue = backend.compiled_glue
    names = {getattr(importlib.import_module(m), n): n for m, n in COMPILABLE}
    backend.compiled_glue = lambda fn, **static: _labelled(compiled_glue(fn, **static), names.get(fn, fn.__name__))
    for module in ("larnd_diff.sim.pipeline", "larnd_diff.sim.electronics"):
        importlib.import_module(module).functools = _PartialLabels(names)


class _PartialLabels:
    """Stands in for a module's ``functools``: ``partial`` of a fusable function comes back labelled."""

    def __init__(self, names):
        import functools
        self._names, self._functools = names, functools

    def partial(self, fn, *a, **kw):
        p = self._functools.partial(fn, *a, **kw)
        return _labelled(p, self._names[fn]) if fn in self._names else p

    def __getattr__(self, name):
        return getattr(self._functools, name)


def main(argv=None):
    import eagerpy as ep
    import torch
    from bench_sim import FIT, muon_batch, track_length

    from larnd_diff import ops
    from larnd_diff.params import SPECS
    from larnd_diff.sim import simulate
    from larnd_diff.sim.config import SimConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--length-cm", type=float, default=100.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compile", default="auto", choices=("auto", "always", "never"), help="SimConfig.compile")
    ap.add_argument("--out", default=None, help="JSON file for the table")
    args = ap.parse_args(argv)

    segs = muon_batch(args.length_cm, 0)
    b = ops.get_backend("torch")
    _label_stages(b)
    weights = np.random.default_rng(0).random((200_000, 10))

    def loss(p):
        h = simulate(segs, backend="torch", device=args.device, params=dict(p), relaxation="smooth",
                     dtype=args.dtype, config=SimConfig(compile=args.compile))
        a = ops.nan_to_num(ep.astensor(h.adc), 0.0)
        return (a * ops.asarray(a, weights[: a.shape[0]], args.dtype)).sum()

    def step():
        params = {k: ep.astensor(b.asarray(np.asarray(SPECS[k].nominal), args.dtype, args.device).raw
                                 .requires_grad_(True)) for k in FIT}
        with torch.profiler.record_function("stage:forward"):
            value = loss(params)
        with torch.profiler.record_function("stage:backward"):
            grads = torch.autograd.grad(value.raw, [params[k].raw for k in FIT])
        for g in grads:
            g.cpu()

    step()
    step()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if "cuda" in args.device:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.repeat):
            with torch.profiler.record_function("stage:call"):
                step()
    events = prof.events()
    stages = {}
    for ev in events:
        if ev.name.startswith("stage:"):
            s = stages.setdefault(ev.name[6:], dict(cpu_ms=0.0, ops=0, launches=0))
            s["cpu_ms"] += ev.cpu_time_total / 1e3 / args.repeat
    # op and launch counts: attribute every aten op / launch to the innermost enclosing stage by time interval
    spans = sorted(((ev.time_range.start, ev.time_range.end, ev.name[6:]) for ev in events
                    if ev.name.startswith("stage:") and ev.name not in ("stage:call",)), key=lambda s: s[1] - s[0])
    for ev in events:
        kind = "ops" if ev.name.startswith("aten::") else (
            "launches" if ev.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC") else None)
        if kind is None:
            continue
        t = ev.time_range.start
        for a, z, name in spans:
            if a <= t <= z:
                stages[name][kind] += 1 / args.repeat
                break
    table = {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in stages.items()}
    print(f"batch: {len(segs)} segments, {track_length(segs):.1f} cm; per call (host time, ops, launches):")
    for k, v in sorted(table.items(), key=lambda kv: -kv[1]["cpu_ms"]):
        print(f"  {k:20s} {v['cpu_ms']:8.2f} ms  {v['ops']:7.1f} ops  {v['launches']:6.1f} launches")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if "cuda" in args.device:
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if hasattr(prof.key_averages()[0],
                                                                                 "self_cuda_time_total")
                                        else "self_device_time_total", row_limit=15))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=args.device, dtype=args.dtype, stages=table), indent=1))


if __name__ == "__main__":
    main()
