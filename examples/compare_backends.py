"""Every installed backend side by side on one input: agreement with the reference, gradients, time.

    python examples/compare_backends.py --events 3 --json compare.json --figure compare.png
    python examples/compare_backends.py --input events.h5 --backends torch jax --device cuda:0

For each backend: ADC rows identical to / within one count of the Numba reference (hard preset vs the float64
reference), mean |dADC| per hit pixel of the smooth preset, forward time (hard), forward + gradient time of the
six fit parameters (smooth), and the relative spread of those gradients across backends.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import larnd_diff as ld
from larnd_diff import ops
from larnd_diff.ops import available_backends, get_backend
from larnd_diff.params import FIT_PARAMETERS, SPECS


def adc_rows(hits) -> dict:
    """(event, I, J) -> ADC row with empty slots as 0."""
    h = hits.numpy()
    return {(int(e), int(p[0]), int(p[1])): np.nan_to_num(a) for e, p, a in zip(h.event_id, h.pixel, h.adc)}


def agreement(ours, ref) -> dict:
    a, b = adc_rows(ours), adc_rows(ref)
    keys = sorted(set(a) | set(b))
    empty = np.zeros(10)
    diff = np.array([np.abs(a.get(k, empty) - b.get(k, empty)).max() for k in keys])
    total = np.array([np.abs(a.get(k, empty) - b.get(k, empty)).sum() for k in keys])
    return {"hit_pixels": len(keys), "identical": float(np.mean(diff == 0)), "within_1": float(np.mean(diff <= 1)),
            "mean_abs_dadc_per_hit_pixel": float(total.mean()) if len(keys) else 0.0}


def timed(fn, repeat: int = 2):
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def loss_and_grads(segs, backend: str, device):
    """Sum of the smooth ADC values and its gradient w.r.t. the six fit parameters."""
    b = get_backend(backend)

    def loss(p):
        hits = ld.simulate(segs, backend=backend, device=device, relaxation="smooth",
                           params={k: v.raw for k, v in p.items()})
        return ops.nan_to_num(b.wrap(hits.adc)).sum()

    start = {k: b.asarray(SPECS[k].nominal, "float64", device) for k in FIT_PARAMETERS}
    value, grads = b.value_and_grad(loss, start)
    return float(b.to_numpy(value)), {k: float(b.to_numpy(g)) for k, g in grads.items()}


def compare(segs, backends, device, repeat: int) -> dict:
    ref = ld.simulate(segs, precision="float64")
    out = {"n_segments": int(len(segs)), "track_cm": float(segs["dx"].sum()), "backends": {}}
    for name in backends:
        row = {}
        hard, row["forward_hard_s"] = timed(lambda: ld.simulate(segs, backend=name, device=device), repeat)
        row["hard_vs_reference"] = agreement(hard, ref)
        smooth = ld.simulate(segs, backend=name, device=device, relaxation="smooth")
        row["smooth_vs_reference"] = agreement(smooth, ref)
        if get_backend(name).supports("grad"):
            (value, grads), row["forward_grad6_s"] = timed(lambda: loss_and_grads(segs, name, device), repeat)
            row["loss"], row["gradients"] = value, grads
        out["backends"][name] = row
    grads = [r["gradients"] for r in out["backends"].values() if "gradients" in r]
    if len(grads) > 1:
        spread = {k: float(np.ptp([g[k] for g in grads]) / max(abs(grads[0][k]), 1e-300)) for k in FIT_PARAMETERS}
        out["gradient_relative_spread"] = spread
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["backends"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ident = [result["backends"][n]["hard_vs_reference"]["identical"] * 100 for n in names]
    a.bar(names, ident)
    a.set_ylim(min(ident + [95.0]) - 1, 100.5)
    a.set_ylabel("hard preset: ADC rows identical to the reference [%]")
    fwd = [result["backends"][n]["forward_hard_s"] for n in names]
    grad = [result["backends"][n].get("forward_grad6_s", np.nan) for n in names]
    x = np.arange(len(names))
    b.bar(x - 0.2, fwd, 0.4, label="forward (hard)")
    b.bar(x + 0.2, grad, 0.4, label="forward + 6 gradients (smooth)")
    b.set_xticks(x, names)
    b.set_yscale("log")
    b.set_ylabel("seconds")
    b.legend()
    fig.suptitle(f"{result['n_segments']} segments, {result['track_cm']:.0f} cm of track")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="segments HDF5 (default: generated 1 GeV muons)")
    p.add_argument("--events", type=int, default=2, help="generated events (without --input)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backends", nargs="*", default=None, help="default: every installed framework")
    p.add_argument("--device", default=None)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    segs = ld.load_segments(args.input) if args.input else ld.generate_muons(n_events=args.events, seed=args.seed)
    result = compare(segs, args.backends or available_backends(), args.device, args.repeat)
    for name, row in result["backends"].items():
        h = row["hard_vs_reference"]
        print(f"{name:11s} identical {h['identical']:.2%}  within1 {h['within_1']:.2%}  "
              f"smooth |dADC| {row['smooth_vs_reference']['mean_abs_dadc_per_hit_pixel']:.3f}  "
              f"fwd {row['forward_hard_s']:.2f} s  fwd+grad {row.get('forward_grad6_s', float('nan')):.2f} s")
    if "gradient_relative_spread" in result:
        spread = {k: f"{v:.1e}" for k, v in result["gradient_relative_spread"].items()}
        print("gradient spread across backends:", spread)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.figure:
        plot(result, args.figure)


if __name__ == "__main__":
    main()
