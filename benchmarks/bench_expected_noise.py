"""Cost of the expected-noise front end on a realistic fit batch, against the simulator in the same process.

The batch: ``select_tracks(generate_muons(n_events=10, tracks_per_event=10, seed=1))`` simulated with
``backend=torch, relaxation="smooth", return_waveforms=True``; observed samples = one noisy reference readout of
the same charge (reference ``front_end``, noise on, 6003 ticks). Timed (median of ``--repeat``): the simulator's
forward + gradient (sum of the charge, backward to the segment energies) and ``readout_log_likelihood``'s forward
+ gradient with respect to the charge, one after the other in the same process (the shared CPU's load changes
over minutes: compare the ratio). Writes ``benchmarks/results/noise_model_cost_<tag>.json``.

    python benchmarks/bench_expected_noise.py --repeat 5 --nodes 24 32 40
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def batch(seed: int = 1):
    import larnd_diff as ld

    return ld.select_tracks(ld.generate_muons(n_events=10, tracks_per_event=10, seed=seed))


def track_length_cm(segs) -> float:
    d = [segs[f"{a}_end"] - segs[f"{a}_start"] for a in "xyz"]
    return float(np.sum(np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)))


def noisy_observation(charge: np.ndarray, detector, seed: int):
    """One noisy readout of ``charge`` (n_rows, n_ticks) e- by the reference front end: (ticks, adc)."""
    from larnd_diff.reference.electronics import E_CHARGE, digitize, front_end
    from larnd_diff.reference.rng import create_streams, n_streams

    fee = detector.electronics
    dt = detector.t_sampling
    wf = np.ascontiguousarray(np.nan_to_num(charge) * E_CHARGE / dt)
    state = create_streams(n_streams(len(wf)), np.uint64(seed))
    q, ticks, _ = front_end(wf, detector.n_ticks_event, dt, fee.threshold_e, fee.integration_ticks(dt),
                            fee.max_adc_values, fee.reset_noise_e, fee.uncorrelated_noise_e, state, True)
    adc = np.where(ticks >= 0, digitize(np.where(ticks >= 0, q, 0.0), fee), np.nan)
    return ticks, adc


def median_time(fn, repeat: int) -> dict:
    """Medians of wall-clock and process CPU seconds (CPU time is what a shared, loaded machine leaves stable)."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return dict(wall_s=float(np.median(wall)), cpu_s=float(np.median(cpu)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nodes", type=int, nargs="+", default=[40])
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tag", default="torch_cpu2")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from larnd_diff.detector import module0
    from larnd_diff.sim import simulate
    from larnd_diff.sim.expected_noise import readout_log_likelihood

    if args.threads:
        torch.set_num_threads(args.threads)
    det = module0()
    segs = batch()
    length = track_length_cm(segs)
    _, charge, plan = simulate(segs, backend="torch", relaxation="smooth", dtype=args.dtype, return_waveforms=True)
    host = charge.raw.detach().double().numpy()
    ticks, adc = noisy_observation(host, det, seed=7)
    dE = torch.tensor(np.asarray(segs["dE"], np.float64), requires_grad=True)

    def sim_step():
        fields = {n: segs[n] for n in segs.dtype.names}
        fields["dE"] = dE
        _, q, _ = simulate(fields, backend="torch", relaxation="smooth", dtype=args.dtype, return_waveforms=True)
        q.raw.sum().backward()

    sim_step()
    out = dict(batch=dict(track_length_cm=length, n_rows=int(host.shape[0]), n_ticks=int(host.shape[1]),
                          observed_samples=int((ticks >= 0).sum()), dtype=args.dtype),
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                            load_average=os.getloadavg()),
               simulator_forward_gradient=median_time(sim_step, args.repeat), likelihood={})
    for n in args.nodes:
        x = torch.tensor(host, dtype=getattr(torch, args.dtype), requires_grad=True)

        def forward():
            return readout_log_likelihood(x, det, ticks, adc, n_nodes=n)

        def step():
            forward().sum().backward()

        step()
        both = median_time(step, args.repeat)
        sim = out["simulator_forward_gradient"]
        out["likelihood"][str(n)] = dict(forward=median_time(forward, args.repeat), forward_gradient=both,
                                         cpu_ratio_to_simulator=both["cpu_s"] / sim["cpu_s"],
                                         wall_ratio_to_simulator=both["wall_s"] / sim["wall_s"],
                                         cpu_s_per_100cm=100.0 * both["cpu_s"] / length)
    out["simulator_cpu_s_per_100cm"] = 100.0 * out["simulator_forward_gradient"]["cpu_s"] / length
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"noise_model_cost_{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
