"""Cost of the expected-noise front end on a realistic fit batch, against the simulator in the same process.

The batch: ``select_tracks(generate_muons(n_events=10, tracks_per_event=10, seed=1))`` simulated with
``backend=torch, relaxation="smooth", return_waveforms=True``; observed samples = one noisy reference readout of
the same charge (reference ``front_end``, noise on, 6003 ticks). Timed (median of ``--repeat``): the simulator's
forward + gradient (sum of the charge, backward to the segment energies) and ``readout_log_likelihood``'s forward
+ gradient with respect to the charge, one after the other in the same process (the shared CPU's load changes
over minutes: compare the ratio). Writes ``benchmarks/results/noise_model_cost_<tag>.json``.

    python benchmarks/bench_expected_noise.py --repeat 5 --nodes 24 32 40

``--accuracy`` instead measures the approximations on the same batch and observation (float64, torch): the
baseline quadrature (log-likelihood per row and d(sum)/d(charge scale) against 160 nodes), the flat head and tail
(against a head at 100 e- and a tail tolerance of 0.01 e-), and the hidden failed conversions on a slow pulse
(frequencies of its most common two-sample patterns in the reference Monte Carlo against the likelihood), writing
``benchmarks/results/noise_model_accuracy.json``.
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


def work(det, host, ticks):
    """Load-independent size of the likelihood's work on the batch: evaluated (tick, cycle) entries of the
    observed cycles (flat) and of the open end cycles (blocks, real and padded), and the number of cycles."""
    from larnd_diff.sim import expected_noise_cycles as cyc
    from larnd_diff.sim import expected_noise_plan as plan_mod
    from larnd_diff.sim.expected_noise import NODE_HALF_WIDTH, _cut_dead

    fee = det.electronics
    win = plan_mod.row_windows(host, det.n_ticks_event)
    obs_t = np.where(ticks >= 0, ticks, -1)
    cycles, _ = plan_mod.observed_cycles(win, obs_t, fee.max_adc_values)
    n_obs = int(np.sum(cycles.trigger >= 0))
    reach = fee.threshold_e + NODE_HALF_WIDTH * fee.reset_noise_e + plan_mod.DEAD_SIGMAS * fee.uncorrelated_noise_e
    end = _cut_dead(plan_mod.Cycles(*(a[n_obs:] for a in cycles)), win, reach)
    blks = cyc.blocks(end, win, fee)
    return dict(observed_cycles=n_obs, observed_ticks=int(cycles.length[:n_obs].sum()),
                end_cycles=int(len(end.row)), end_ticks=int(end.length.sum()),
                end_padded_ticks=int(sum(len(b.rows) * b.width for _, b in blks)), end_blocks=len(blks))


def interleaved_times(fns: dict, repeat: int) -> dict:
    """Wall-clock and process CPU seconds of each function, called in turn ``repeat`` times (so that the load of a
    shared machine hits all of them alike): medians and minima (the minimum is the least disturbed run)."""
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return {k: dict(wall_median_s=float(np.median(wall[k])), wall_min_s=float(np.min(wall[k])),
                    cpu_median_s=float(np.median(cpu[k])), cpu_min_s=float(np.min(cpu[k]))) for k in fns}


def scale_derivative(host, det, ticks, adc, **kw):
    """(sum of the log-likelihood, its derivative with respect to a global scale of the charge at 1)."""
    import torch

    from larnd_diff.sim.expected_noise import readout_log_likelihood

    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    ll = readout_log_likelihood(torch.tensor(host) * scale, det, ticks, adc, **kw)
    total = ll.sum()
    total.backward()
    return ll.detach().numpy(), float(scale.grad)


def accuracy(det, host, ticks, adc):
    import functools

    import larnd_diff.sim.expected_noise_plan as plan_mod
    from larnd_diff.sim.expected_noise import NOISE_NODES

    out = {}
    ref_ll, ref_d = scale_derivative(host, det, ticks, adc, n_nodes=160)
    quad = {}
    for n in (16, 24, 32, 40, 48, 64, 96):
        ll, d = scale_derivative(host, det, ticks, adc, n_nodes=n)
        quad[str(n)] = dict(max_abs_row=float(np.max(np.abs(ll - ref_ll))), sum=float(np.sum(ll - ref_ll)),
                            scale_derivative_rel=float(d / ref_d - 1.0))
    out["quadrature_vs_160_nodes"] = dict(rows=len(ll), sum_ll_160=float(ref_ll.sum()), scale_derivative_160=ref_d,
                                          nodes=quad)
    base_ll, base_d = scale_derivative(host, det, ticks, adc, n_nodes=NOISE_NODES)
    original = plan_mod.row_windows
    try:
        plan_mod.row_windows = functools.partial(original, head_e=100.0, flat_e=0.01)
        fine_ll, fine_d = scale_derivative(host, det, ticks, adc, n_nodes=NOISE_NODES)
    finally:
        plan_mod.row_windows = original
    out["flat_head_tail_vs_100e_0.01e"] = dict(max_abs_row=float(np.max(np.abs(base_ll - fine_ll))),
                                               sum=float(np.sum(base_ll - fine_ll)),
                                               scale_derivative_rel=float(base_d / fine_d - 1.0))
    out["hidden_failures_slow_pulse"] = slow_pulse_patterns(det)
    return out


def slow_pulse_patterns(det, reps=4000, n_seeds=5, total=1000):
    """18 ke over 150 ticks (a track almost along the drift), where failed conversions are common: the
    probabilities of no sample and of exactly one sample implied by readout_log_likelihood (summed over every
    single-sample outcome: tick 0-399, counts 81-100), by expected_readout (exact chain) and in the reference MC."""
    from larnd_diff import ops
    from larnd_diff.reference.electronics import E_CHARGE, front_end
    from larnd_diff.reference.rng import create_streams, n_streams
    from larnd_diff.sim.expected_noise import expected_readout, readout_log_likelihood

    fee = det.electronics
    q = np.zeros(300)
    q[40:190] = 18000.0 / 150
    wf = np.ascontiguousarray(np.tile(q, (reps, 1)) * E_CHARGE / det.t_sampling)
    counts = []
    for seed in range(1, n_seeds + 1):
        state = create_streams(n_streams(reps), np.uint64(seed))
        _, _, c = front_end(wf, total, det.t_sampling, fee.threshold_e, fee.integration_ticks(det.t_sampling),
                            fee.max_adc_values, fee.reset_noise_e, fee.uncorrelated_noise_e, state, True)
        counts.append(c)
    counts = np.concatenate(counts)
    ticks, adcs = np.meshgrid(np.arange(400), np.arange(81, 101), indexing="ij")
    obs_t = np.concatenate([np.full((1, 1), -1), ticks.reshape(-1, 1)])
    obs_a = np.concatenate([np.full((1, 1), np.nan), adcs.reshape(-1, 1).astype(np.float64)])
    nb = ops.get_backend("numpy")
    ll = ops.to_numpy(readout_log_likelihood(nb.asarray(np.tile(q, (len(obs_t), 1)), "float64"), det, obs_t, obs_a,
                                             total_ticks=total, outlier_probability=0.0))
    filled = ops.to_numpy(expected_readout(nb.asarray(q[None, :], "float64"), det, total_ticks=total,
                                           max_samples=3).filled)[0]
    n = len(counts)
    mc = [float(np.mean(counts == k)) for k in (0, 1)]
    return dict(realisations=n, p_no_sample=dict(likelihood=float(np.exp(ll[0])), chain=float(1 - filled[0]),
                                                 mc=mc[0], mc_err=float(np.sqrt(mc[0] * (1 - mc[0]) / n))),
                p_one_sample=dict(likelihood=float(np.exp(ll[1:]).sum()), chain=float(filled[0] - filled[1]),
                                  mc=mc[1], mc_err=float(np.sqrt(mc[1] * (1 - mc[1]) / n))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nodes", type=int, nargs="+", default=[40])
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tag", default="torch_cpu2")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--accuracy", action="store_true", help="measure the approximations instead (see above)")
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
    if args.accuracy:
        out = accuracy(det, host, ticks, adc)
        print(json.dumps(out, indent=1))
        if not args.no_write:
            (RESULTS / "noise_model_accuracy.json").write_text(json.dumps(out, indent=1) + "\n")
        return
    dE = torch.tensor(np.asarray(segs["dE"], np.float64), requires_grad=True)

    def sim_step():
        fields = {n: segs[n] for n in segs.dtype.names}
        fields["dE"] = dE
        _, q, _ = simulate(fields, backend="torch", relaxation="smooth", dtype=args.dtype, return_waveforms=True)
        q.raw.sum().backward()

    fns = {"simulator_forward_gradient": sim_step}
    for n in args.nodes:
        x = torch.tensor(host, dtype=getattr(torch, args.dtype), requires_grad=True)

        def forward(x=x, n=n):
            return readout_log_likelihood(x, det, ticks, adc, n_nodes=n)

        fns[f"likelihood_{n}_forward"] = forward
        fns[f"likelihood_{n}_forward_gradient"] = lambda forward=forward: forward().sum().backward()
    for fn in fns.values():
        fn()
    times = interleaved_times(fns, args.repeat)
    sim = times["simulator_forward_gradient"]
    out = dict(batch=dict(track_length_cm=length, n_rows=int(host.shape[0]), n_ticks=int(host.shape[1]),
                          observed_samples=int((ticks >= 0).sum()), dtype=args.dtype),
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                            load_average_before=os.getloadavg()),
               times=times, ratios_to_simulator={})
    for n in args.nodes:
        t = times[f"likelihood_{n}_forward_gradient"]
        out["ratios_to_simulator"][str(n)] = dict(cpu_min=t["cpu_min_s"] / sim["cpu_min_s"],
                                                  cpu_median=t["cpu_median_s"] / sim["cpu_median_s"],
                                                  wall_min=t["wall_min_s"] / sim["wall_min_s"],
                                                  likelihood_cpu_min_s_per_100cm=100.0 * t["cpu_min_s"] / length)
    out["simulator_cpu_min_s_per_100cm"] = 100.0 * sim["cpu_min_s"] / length
    out["work"] = work(det, host, ticks)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"noise_model_cost_{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
