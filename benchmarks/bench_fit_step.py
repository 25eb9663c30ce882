"""Time of one calibration step per ~100 cm batch of muon track: forward + gradient of the Soft-DTW ADC loss for the
six fit parameters + the optimiser update, per backend and device.

    python benchmarks/bench_fit_step.py --backend torch --device cpu --repeat 3 --out fit_step_torch_cpu.json
    python benchmarks/bench_fit_step.py --backend torch jax --device cuda:0 --repeat 10

What runs is the real fit loop (:func:`larnd_diff.fit.build`; by default the paper's recipe: parameters normalised
by nominal, Adam lr 5e-2, global-norm clip 1, Soft-DTW with gamma 1 on the x, y, t-ordered ADC sequences, the six
parameters, vdrift linked to eField; ``--recipe data``: the expected-noise likelihood against a noisy reference
target) on one batch: the input of ``benchmarks/bench_sim.py`` (generated 1 GeV muons through the
paper's selection cuts, the first batch of about ``--length-cm`` cm; the same seed gives the same batch), fitted
towards a closure target drawn in the parameters' ranges. The fit records the wall time of each step
(``step_time_s`` in its history: loss and gradients copied to the host, so asynchronous GPU work is included, then
the optimiser update). The first ``--warmup`` steps (the target simulation, compilation, caches) are reported
separately; ``median_s`` is the median of the ``--repeat`` steps after them.

Also measured: the forward loss alone at the nominal point (``Calibrator.loss_at``; simulation + Soft-DTW, no
gradient), peak memory over the fit steps (GPU: the framework allocator's peak; CPU: growth of the resident set,
see ``larnd_diff.compare.PeakMemory``), and the Numba reference forward on the same batch (``--no-reference`` skips
it). Times per 100 cm are in ``per_100cm``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sim import muon_batch, track_length  # noqa: E402  (same input as the simulator benchmark)

FIT = ("Ab", "kb", "eField", "lifetime", "long_diff", "tran_diff")


def log(msg: str) -> None:
    print(f"[bench_fit_step] {msg}", file=sys.stderr, flush=True)


def bench_backend(segs, backend: str, device, dtype: str, repeat: int, warmup: int, loss, seed: int,
                  recipe: str) -> dict:
    from larnd_diff.compare import PeakMemory, check_device, placement
    from larnd_diff.fit import build, random_targets
    from larnd_diff.params import SPECS

    check_device(backend, device)
    target = random_targets(1, FIT, seed=seed)[0]
    length = track_length(segs)
    n_steps = warmup + repeat
    one_batch = max(length, float(segs["dx"].sum())) * 1.5 + 1.0
    cal = build(segs, target, recipe=recipe, params=FIT, backend=backend, max_iter=n_steps,
                **({"loss": loss} if loss else {}), batch_length_cm=one_batch, seed=seed, dtype=dtype,
                device=device, progress=False, hessian=False, stop_tol=None)
    if cal.n_batches != 1:
        raise RuntimeError(f"expected one batch, got {cal.n_batches}")
    log(f"{backend} on {device or 'the default device'}: {n_steps} fit steps ({warmup} warm-up)")
    mem = PeakMemory(backend, device)
    t0 = time.perf_counter()
    with placement(backend, device), mem:
        res = cal.run()
    wall = time.perf_counter() - t0
    steps = [float(r["step_time_s"]) for r in res.history]
    timed = steps[warmup:]
    out = {"target": target, "recipe": recipe, "loss": loss or recipe, "steps": len(steps),
           "warmup_steps_s": steps[:warmup],
           "times_s": timed, "median_s": statistics.median(timed) if timed else None,
           "min_s": min(timed) if timed else None, "first_s": steps[0] if steps else None, "wall_s": wall,
           "peak_bytes": mem.peak_bytes, "memory": mem.kind, "n_skipped": res.n_skipped,
           "loss_first": res.history[0]["loss"] if res.history else None,
           "loss_last": res.history[-1]["loss"] if res.history else None,
           "params_last": res.params}
    # forward loss alone (simulation + Soft-DTW, no gradient), after the fit's warm-up
    with placement(backend, device):
        nominal = {k: float(SPECS[k].nominal) for k in FIT}
        cal.loss_at(nominal)
        ftimes = []
        for _ in range(max(1, min(repeat, 3))):
            t = time.perf_counter()
            cal.loss_at(nominal)
            ftimes.append(time.perf_counter() - t)
    out["forward_loss"] = {"median_s": statistics.median(ftimes), "times_s": ftimes}
    return out


def bench_reference(segs, repeat: int) -> dict:
    from larnd_diff.reference import simulate as ref

    ref(segs, precision="float64")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        ref(segs, precision="float64")
        times.append(time.perf_counter() - t)
    return {"forward_float64": {"median_s": statistics.median(times), "times_s": times}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", nargs="+", default=["torch"], choices=("torch", "jax", "tensorflow"),
                    help="one or more differentiable backends (default torch)")
    ap.add_argument("--device", default=None, help="framework device (cpu, cuda:0, ...; default: the framework's)")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--length-cm", type=float, default=100.0, help="track length of the batch (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="input batch and closure target")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps after the warm-up (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (target simulation, compilation)")
    ap.add_argument("--recipe", default="paper", help="fit recipe (larnd_diff.fit.RECIPES; default the paper's: "
                    "Soft-DTW on ADC; 'data': the expected-noise likelihood against a noisy reference target)")
    ap.add_argument("--loss", default=None, help="loss of larnd_diff.losses instead of the recipe's")
    ap.add_argument("--no-reference", action="store_true", help="skip the Numba reference forward")
    ap.add_argument("--input", default=None, help="segments (.npy structured array in the simulation frame, or an "
                    "edep-sim .h5 file) instead of generated muons; fitted as one batch")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        ap.error("--repeat must be >= 1 and --warmup >= 0")

    import numpy as np

    if args.input is None:
        segs = muon_batch(args.length_cm, args.seed)
    elif args.input.endswith(".npy"):
        segs = np.load(args.input)
    else:
        from larnd_diff.io import load_segments
        segs = load_segments(args.input)
    length = track_length(segs)
    log(f"{len(segs)} segments, {length:.1f} cm of track")
    result = {"benchmark": "fit_step", "device": args.device, "dtype": args.dtype, "segments": int(len(segs)),
              "track_length_cm": length, "params": list(FIT), "python": sys.version.split()[0],
              "machine": platform.platform(), "processor": platform.processor(),
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "benchmarks/bench_fit_step.py",
                                                                      *(argv if argv is not None else sys.argv[1:])]),
              "backends": {}}
    for backend in args.backend:
        result["backends"][backend] = bench_backend(segs, backend, args.device, args.dtype, args.repeat, args.warmup,
                                                    args.loss, args.seed, args.recipe)
    if not args.no_reference:
        log("Numba reference forward")
        result["reference"] = bench_reference(segs, max(1, min(args.repeat, 3)))
    scale = 100.0 / length
    per100 = {}
    for name, r in result["backends"].items():
        if r["median_s"] is not None:
            per100[f"{name}.fit_step.s_per_100cm"] = r["median_s"] * scale
        per100[f"{name}.forward_loss.s_per_100cm"] = r["forward_loss"]["median_s"] * scale
        if r["peak_bytes"] is not None:
            per100[f"{name}.fit_step.peak_bytes_per_100cm"] = r["peak_bytes"] * scale
    if "reference" in result:
        per100["reference.forward_float64.s_per_100cm"] = result["reference"]["forward_float64"]["median_s"] * scale
    result["per_100cm"] = per100
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
