"""Peak memory and wall time of one simulate call per backend and memory budget (issue 16 item 7).

    python benchmarks/bench_memory.py                                   # -> benchmarks/results/bench_memory.json
    python benchmarks/bench_memory.py --events small --backends torch --budgets default,none --modes forward,grad
    python benchmarks/bench_memory.py --device cuda:0 --backends torch --out memory_h100.json

Events (generated 1 GeV muons, written to and read back from an edep-sim file as on the command line):
``big``   = ``larnd-diff generate -n 1 --tracks 1110 --seed 3``: one event of 111,865 segments (the issue's event);
``small`` = ``larnd-diff generate -n 1 --tracks 100 --seed 3``: 9,689 segments.

Budgets (``SimConfig.memory_budget_bytes``): ``default`` (the SimConfig default), ``none`` (no bound: every call is
evaluated at once, as before the budget held) or a number of bytes. The reference (larnd_diff/reference, Numba,
600-segment chunks) has no budget and runs forward only.

Every case runs in a fresh process: after a warm-up call on the event's first 300 segments (Numba and framework
compilation, caches), the resident set size (RSS) is sampled every 5 ms during the measured call; reported are the
peak RSS (the samples' or, when the call raised it, the kernel's ``ru_maxrss``), its growth over the RSS before the
call and the wall time. The call is also
instrumented (without changing it) to report its pieces: the dense charges built (recomputations for the gradient
included) and the largest of them with its pairs, by the cost model of larnd_diff/sim/memory.py. Modes:
``forward`` = ``simulate`` (hard preset, the command line's default); ``grad`` = forward + reverse-mode gradient of
a fixed linear function of the ADC values with respect to the six fit parameters (smooth preset). This process
watches each case: one above ``--max-rss-gb``, or one that leaves the machine less than ``--reserve-gb`` available,
is stopped (this machine may be shared) and recorded as such with the RSS it had reached, like one over
``--timeout`` or one that fails. The JSON (``--out``; ``--append`` keeps the runs of an earlier invocation) is
rewritten after every case, so a long run keeps what it measured; a Markdown table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

EVENTS = {"big": dict(events=1, tracks=1110, seed=3), "small": dict(events=1, tracks=100, seed=3)}
FIT = ("Ab", "kb", "eField", "lifetime", "long_diff", "tran_diff")
WARMUP_SEGMENTS = 300
#: A budget that never splits a call.
NO_BOUND = 2**62
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_memory.json"


# ---------------------------------------------------------------------------------------------- child
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    """The machine's available memory (MemAvailable)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**62


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # kilobytes on Linux


class _PeakRss:
    """Highest RSS seen by a background thread while the ``with`` block runs (a thread needs the GIL, so a burst
    inside one long call can be missed: ``ru_maxrss`` is reported beside it)."""

    def __init__(self, period_s: float = 0.005):
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period_s)

    def __enter__(self):
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _config(budget):
    from larnd_diff.sim.config import SimConfig

    return SimConfig() if budget == "default" else SimConfig(memory_budget_bytes=_budget_bytes(budget))


def _budget_bytes(budget) -> int:
    from larnd_diff.sim.config import SimConfig

    if budget == "default":
        return SimConfig().memory_budget_bytes
    return NO_BOUND if budget == "none" else int(budget)


def _measured_call(segs, backend: str, mode: str, device, dtype: str, budget):
    """The function measured (returns the number of hit rows): the reference, a forward call (hard) or a forward
    call and the gradient of a linear function of its ADC values (smooth) with respect to the fit parameters."""
    from larnd_diff.sim import simulate

    if backend == "reference":
        from larnd_diff.reference import simulate as reference

        return lambda: len(reference(segs, precision="float64"))
    config = _config(budget)
    if mode == "forward":
        return lambda: len(simulate(segs, backend=backend, device=device, relaxation="hard", dtype=dtype,
                                    config=config))
    import eagerpy as ep

    from larnd_diff import ops
    from larnd_diff.params import SPECS

    b = ops.get_backend(backend)
    weights = np.random.default_rng(0).random((400_000, 10))

    def loss(p):
        h = simulate(segs, backend=backend, device=device, params=dict(p), relaxation="smooth", dtype=dtype,
                     config=config)
        adc = ops.nan_to_num(ep.astensor(h.adc), 0.0)
        return (adc * ops.asarray(adc, weights[:adc.shape[0]], dtype)).sum(), adc.shape[0]

    def forward_and_gradient():
        params = {k: b.asarray(np.asarray(SPECS[k].nominal), dtype, device) for k in FIT}
        (_, rows), grads = b.value_and_grad(loss, params, has_aux=True)
        values = [float(np.asarray(ops.to_numpy(v))) for v in grads.values()]
        if not all(np.isfinite(values)):
            raise RuntimeError(f"non-finite gradient {values}")
        return int(rows)
    return forward_and_gradient


def _count_pieces(dtype: str) -> list:
    """Wrap ``pipeline.induced_charge`` to record the model bytes of every dense charge (rows x ticks) and its
    pairs; the call itself is unchanged."""
    from larnd_diff.sim import memory, pipeline

    seen = []
    real = pipeline.induced_charge

    def recording(m, plan, pair_consts, n_rows, n_ticks, budget, *args):
        seen.append(memory.CELL_BYTES[dtype] * n_rows * n_ticks + memory.PAIR_BYTES * plan.n_pairs)
        return real(m, plan, pair_consts, n_rows, n_ticks, budget, *args)

    pipeline.induced_charge = recording
    return seen


def _gpu_peak_reset(backend, device):
    if backend == "torch" and device and "cuda" in str(device):
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_bytes(backend, device):
    if backend == "torch" and device and "cuda" in str(device):
        import torch
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return None


def child(args) -> dict:
    """One case in this (fresh) process; the result as a dict."""
    from larnd_diff.io import load_segments

    segs = load_segments(args.input)
    _measured_call(segs[:WARMUP_SEGMENTS], args.backend, args.mode, args.device, args.dtype, args.budget)()
    pieces = _count_pieces(args.dtype) if args.backend != "reference" else None
    _gpu_peak_reset(args.backend, args.device)
    fn = _measured_call(segs, args.backend, args.mode, args.device, args.dtype, args.budget)
    rss0, maxrss0 = _rss_bytes(), _maxrss_bytes()
    with _PeakRss() as sampler:
        t0 = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - t0
    maxrss = _maxrss_bytes()
    peak = max(sampler.peak, maxrss if maxrss > maxrss0 else 0)
    return dict(segments=int(len(segs)), hit_rows=rows, seconds=round(seconds, 2), rss_before_bytes=rss0,
                peak_rss_bytes=int(peak), rss_growth_bytes=int(peak - rss0),
                maxrss_bytes=maxrss, maxrss_raised_by_call=maxrss > maxrss0,
                dense_charges=None if pieces is None else len(pieces),
                largest_dense_charge_model_bytes=None if not pieces else int(max(pieces)),
                gpu_peak_bytes=_gpu_peak_bytes(args.backend, args.device))


# ---------------------------------------------------------------------------------------------- parent
def make_inputs(names, folder) -> dict:
    """Write each named event with the command line's generator and writer; returns name -> path."""
    from larnd_diff.generate import generate_muons
    from larnd_diff.io import save_segments

    paths = {}
    for name in names:
        spec = EVENTS[name]
        path = os.path.join(folder, f"{name}.h5")
        save_segments(path, generate_muons(n_events=spec["events"], tracks_per_event=spec["tracks"],
                                           seed=spec["seed"]))
        paths[name] = path
    return paths


def _process_rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError):
        return 0


def _guarded(cmd, args):
    """Run ``cmd``, watching it from this process every 5 ms (no GIL of its own to wait for): stopped past
    ``--max-rss-gb``, when the machine's available memory falls below ``--reserve-gb`` or past ``--timeout``.
    Returns (exit code, stdout, stderr, why it was stopped or None)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child_process = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        start, peak, why = time.perf_counter(), 0, None
        while child_process.poll() is None:
            peak = max(peak, _process_rss_bytes(child_process.pid))
            if peak > args.max_rss_gb * 2**30:
                why = f"stopped at RSS {peak / 2**30:.1f} GiB: over the {args.max_rss_gb:g} GiB cap"
            elif _available_bytes() < args.reserve_gb * 2**30:
                why = (f"stopped at RSS {peak / 2**30:.1f} GiB: the machine's available memory fell below "
                       f"{args.reserve_gb:g} GiB")
            elif time.perf_counter() - start > args.timeout:
                why = f"over the {args.timeout:.0f} s limit"
            if why:
                child_process.kill()
                child_process.wait()
                break
            time.sleep(0.005)
        out.seek(0)
        err.seek(0)
        return child_process.returncode, out.read(), err.read(), why


def measure(path, backend, mode, budget, args) -> dict:
    """Run one child process; its result, or why it gave none (stopped, killed, error)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--input", path, "--backends", backend,
           "--modes", mode, "--budgets", budget, "--dtype", args.dtype]
    cmd += ["--device", args.device] if args.device else []
    code, stdout, stderr, why = _guarded(cmd, args)
    if why:
        return dict(error=why)
    if code != 0:
        tail = " ".join(stderr.strip().splitlines()[-1:])
        return dict(error="killed (out of memory?)" if code == -signal.SIGKILL else f"exit {code}: {tail}")
    return json.loads(stdout.strip().splitlines()[-1])


def cases(args):
    """(event, backend, mode, budget) of every case asked for: the reference once per event and mode forward."""
    for event in args.events.split(","):
        for backend in args.backends.split(","):
            for mode in args.modes.split(","):
                if mode == "grad" and backend in ("reference", "numpy"):
                    continue
                if backend == "reference":
                    if not (args.device and "cuda" in args.device):
                        yield event, backend, mode, "n/a"
                    continue
                for budget in args.budgets.split(","):
                    yield event, backend, mode, budget


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "numba", "eagerpy", "torch", "jax", "tensorflow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _memory_total_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _commit() -> dict:
    """The commit measured and the simulator's files that differ from it (other work in the same checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "larnd_diff/sim", "larnd_diff/ops.py",
                                "backends"], cwd=root, capture_output=True, text=True)
    except OSError:
        return dict(commit="unknown")
    return dict(commit=head.stdout.strip(), uncommitted=[line[3:] for line in dirty.stdout.splitlines()])


def machine() -> dict:
    """Where the numbers were taken (the wall times depend on the load of a shared machine)."""
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), cpus_usable=len(os.sched_getaffinity(0)),
                memory_total_bytes=_memory_total_bytes(), load_average_1_5_15=list(os.getloadavg()),
                python=sys.version.split()[0], packages=_versions(),
                numba_num_threads=os.environ.get("NUMBA_NUM_THREADS", "default"))


def _mb(x) -> str:
    return "" if x is None else f"{x / 2**20:,.0f} MiB"


def table(runs) -> str:
    lines = ["| event (segments) | backend | mode | budget | peak RSS | RSS growth | largest dense charge (model) "
             "| time | hit rows |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        event = f"{r['event']} ({r['segments']:,})" if "segments" in r else r["event"]
        head = f"| {event} | {r['backend']} | {r['mode']} | {r['budget']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | |")
            continue
        lines.append(f"{head} {_mb(r['peak_rss_bytes'])} | {_mb(r['rss_growth_bytes'])} | "
                     f"{_mb(r['largest_dense_charge_model_bytes'])} | {r['seconds']:.1f} s | {r['hit_rows']:,} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="small,big", help="comma-separated: " + ", ".join(EVENTS))
    ap.add_argument("--backends", default="reference,numpy,torch", help="comma-separated (reference, numpy, "
                    "torch, jax, tensorflow)")
    ap.add_argument("--modes", default="forward", help="comma-separated: forward, grad (not reference, numpy)")
    ap.add_argument("--budgets", default="default,none", help="comma-separated: default, none or bytes")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    ap.add_argument("--max-rss-gb", type=float, default=14.0, help="stop a case whose RSS passes this (GiB)")
    ap.add_argument("--reserve-gb", type=float, default=2.0, help="stop a case when the machine's available "
                    "memory falls below this (GiB)")
    ap.add_argument("--note", default="", help="free text stored with the results (with --append: replaces the "
                    "stored one)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file for the results")
    ap.add_argument("--append", action="store_true", help="keep the runs already in --out that this invocation "
                    "does not measure again")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        args.backend, args.mode, args.budget = args.backends, args.modes, args.budgets
        print(json.dumps(child(args)))
        return

    result = dict(benchmark="bench_memory", note=args.note, code=_commit(), device=args.device or "cpu",
                  dtype=args.dtype, budgets={b: _budget_bytes(b) for b in args.budgets.split(",")},
                  events={k: EVENTS[k] for k in args.events.split(",")}, machine=machine(), runs=[])
    if args.append and Path(args.out).exists():
        result = _merged(json.loads(Path(args.out).read_text()), result, set(cases(args)))
    with tempfile.TemporaryDirectory() as folder:
        paths = make_inputs(args.events.split(","), folder)
        for event, backend, mode, budget in cases(args):
            run = dict(event=event, backend=backend, mode=mode, budget=budget,
                       budget_bytes=None if budget == "n/a" else _budget_bytes(budget),
                       date=time.strftime("%Y-%m-%d %H:%M"), load_average_1_5_15=list(os.getloadavg()))
            run.update(measure(paths[event], backend, mode, budget, args))
            print(json.dumps(run), file=sys.stderr, flush=True)
            result["runs"].append(run)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["runs"]))


def _case_of(run) -> tuple:
    return run["event"], run["backend"], run["mode"], run["budget"]


def _merged(old: dict, new: dict, measuring: set) -> dict:
    """``new`` with the runs of ``old`` that this invocation does not measure again (``--append``), each kept run
    with the code it measured and the load it ran under; the events and budgets of both; this invocation's note
    (the old one when none is given) and machine."""
    before = dict(code=old.get("code"), load_average_1_5_15=old.get("machine", {}).get("load_average_1_5_15"))
    kept = [{**before, **r} for r in old.get("runs", []) if _case_of(r) not in measuring]
    return dict(new, note=new["note"] or old.get("note", ""), events={**old.get("events", {}), **new["events"]},
                budgets={**old.get("budgets", {}), **new["budgets"]}, runs=kept)


if __name__ == "__main__":
    main()
