"""Robustness of the no-truth calibration: how far each fitted parameter moves when the fit's input is wrong in
the two ways the calibration slides test: positions shifted by +0.3 cm along the drift, ~10 % pions in a
proton selection.

The sample is a proton selection made by the generator (larnd_diff/generate.py ``generate_tracks``: straight
tracks, energy-loss fluctuations on): ``--tracks`` tracks that stop inside the detector (its truth says so), of
which ``--pion-fraction`` are charged pions (30-120 MeV) and the rest protons (60-250 MeV), two per event. One
target (``random_targets(1, seed)``, Table I ranges) is simulated as data (the Numba reference with electronics
noise, whole events, larnd-sim precision, vdrift from eField), written as LArPix packets and read back
(``larnd_diff.fit.data.load_data``: event t0 from the trigger packets, no truth, read-out pixels). Every variant
is then fitted to these same hits with the data recipe, from nominal:

input ``truth`` (the true segments, renumbered to the packets' events)
  base         the true segments
  shift_z      every segment moved by +0.3 cm in z, the drift axis of the simulation frame (README "Frames and
               units"); module0's two TPCs drift in opposite directions, so this is 0.3 cm closer to the anode in
               one and 0.3 cm farther in the other
  shift_drift  every segment moved 0.3 cm away from its TPC's anode (longer drift in both TPCs)
  pions        the pions' segments replaced by those of a proton on the same trajectory: dE/dx from the proton's
               residual range (larnd_diff/reco/segments.py ``track_segments``, the reconstruction's tables), i.e.
               the selection's pions taken for protons
input ``reco`` (the reconstruction of the packets' hits; its stopping tracks = the selection)
  base         every stopping track's segments with dE/dx from the range table of its true species (the
               majority truth of its hits, through the packets' truth association: used only to build this
               reference point); tracks that the reconstruction does not call stopping are left out
  shift_z, shift_drift   as above, applied to the reco base
  pions        every stopping track given the proton hypothesis (what a proton selection assumes)

Reported per variant and parameter: the fitted value, its error against the truth, its shift against the base of
the same input ((p - p_base) / p_base in %), the fit's sigma, iterations, wall time. JSON in
``benchmarks/results/reco_robustness_<tag>.json`` (no NaN).

    python benchmarks/reco_robustness.py --tracks 200 --device cuda:0 --dtype float32 --target-device cuda \\
        --procs 8 --max-iter 150 --tag h100
    python benchmarks/reco_robustness.py --tracks 4 --max-iter 3 --no-hessian --inputs truth --tag smoke  # CPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closure_no_truth import (LAYOUT_NAME, ROOT, SHARED, _init_worker, fit_row, fit_summary,  # noqa: E402
                              simulate_target, truth_input)

VARIANTS = ("base", "shift_z", "shift_drift", "pions")
INPUTS = ("truth", "reco")
PION_PDG, PROTON_PDG = 211, 2212


# ------------------------------------------------------------------------------------------------ the sample
def stopped_tracks(species: str, count: int, low_mev: float, high_mev: float, rng) -> list:
    """``count`` generated tracks of ``species`` that stop inside the detector, as a list of segment arrays."""
    from larnd_diff.generate import generate_tracks

    kept: list = []
    while len(kept) < count:
        n = 2 * (count - len(kept)) + 4
        segs, truth = generate_tracks([species] * n, rng.uniform(low_mev, high_mev, n), np.arange(n),
                                      np.ones(n, np.int64), seed=rng, fluctuations=True, return_truth=True)
        for event in truth["eventID"][truth["stopped"]]:
            kept.append(segs[segs["eventID"] == event])
    return kept[:count]


def proton_selection(n_tracks: int, pion_fraction: float, seed: int) -> np.ndarray:
    """Stopping protons and ``pion_fraction`` of pi+ (``n_tracks`` in all), shuffled, two per event."""
    rng = np.random.default_rng(seed)
    n_pions = int(round(pion_fraction * n_tracks))
    tracks = (stopped_tracks("proton", n_tracks - n_pions, 60.0, 250.0, rng)
              + stopped_tracks("pi+", n_pions, 30.0, 120.0, rng))
    out = []
    for k, i in enumerate(rng.permutation(len(tracks))):
        t = tracks[i].copy()
        t["eventID"], t["trackID"] = k // 2, k % 2 + 1
        out.append(t)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ variants
def shifted(segments: np.ndarray, shift_cm: float, mode: str, detector) -> np.ndarray:
    """Segments moved by ``shift_cm`` along z ("z") or away from their TPC's anode ("drift")."""
    out = segments.copy()
    if mode == "z":
        dz = np.full(len(out), shift_cm)
    else:
        anode = np.asarray(detector.anode_z)
        plane = np.argmin(np.abs(out["z"][:, None] - anode[None, :]), axis=1)
        dz = shift_cm * np.asarray(detector.drift_sign)[plane]
    for field in ("z_start", "z_end", "z"):
        out[field] = out[field] + dz
    return out


def _range_table(species: str, detector):
    from larnd_diff.reco import RecoConfig, range_table

    return range_table(species, detector.nominal.get("lArDensity"), RecoConfig().delta_cut_mev)


def as_proton(track: np.ndarray, detector) -> np.ndarray:
    """A generated (straight) track's segments redone as a proton stopping at the same end point."""
    from larnd_diff.reco import RecoConfig
    from larnd_diff.reco.segments import track_segments

    nodes = np.array([[track["x_start"][0], track["y_start"][0], track["z_start"][0]],
                      [track["x_end"][-1], track["y_end"][-1], track["z_end"][-1]]])
    return track_segments(nodes, event_id=int(track["eventID"][0]), track_id=int(track["trackID"][0]),
                          pdg=PROTON_PDG, boxes=np.sort(detector.tpc_borders, axis=2), step_cm=RecoConfig().step_cm,
                          table=_range_table("proton", detector))


def pions_as_protons(segments: np.ndarray, detector) -> np.ndarray:
    """The true input with every pion track replaced by :func:`as_proton`."""
    key = segments["eventID"].astype(np.int64) * 1000 + segments["trackID"]
    parts = []
    for k in np.unique(key):
        track = segments[key == k]
        parts.append(as_proton(track, detector) if abs(int(track["pdgId"][0])) == PION_PDG else track)
    return np.concatenate(parts)


def restep(tracks, species_of: dict, detector) -> np.ndarray:
    """Segments of reconstructed stopping tracks, each with the range table of ``species_of[(event, track)]``."""
    from larnd_diff.generate import particle_properties
    from larnd_diff.reco import RecoConfig
    from larnd_diff.reco.segments import track_segments

    boxes = np.sort(detector.tpc_borders, axis=2)
    parts = [track_segments(t.nodes, event_id=t.event_id, track_id=t.track_id,
                            pdg=particle_properties(species_of[(t.event_id, t.track_id)])[0], boxes=boxes,
                            step_cm=RecoConfig().step_cm, table=_range_table(species_of[(t.event_id, t.track_id)],
                                                                             detector))
             for t in tracks]
    return np.concatenate(parts)


def true_species_of_tracks(report, backtrack: np.ndarray, segments: np.ndarray) -> dict:
    """{(event, track): "proton" | "pi+" | "mu-"} of the reconstructed tracks: the majority PDG code of their
    points' first backtracked segment (evaluation only)."""
    names = {PROTON_PDG: "proton", PION_PDG: "pi+", 13: "mu-"}
    pts = report.points
    seg_row = backtrack[pts.row, pts.slot, 0]
    out = {}
    for i, t in enumerate(report.tracks):
        rows = seg_row[(report.point_track == i) & (seg_row >= 0)]
        if len(rows):
            codes, counts = np.unique(np.abs(segments["pdgId"][rows]), return_counts=True)
            out[(t.event_id, t.track_id)] = names.get(int(codes[np.argmax(counts)]), "mu-")
    return out


def reco_inputs(packets: Path, layout: Path, data_hits, segments: np.ndarray, shift_cm: float, detector) -> dict:
    """The reco variants (see the module docstring) and what the selection holds."""
    from larnd_diff.packets import read_packets
    from larnd_diff.reco import reconstruct

    _, report = reconstruct(data_hits, detector)
    truth_hits = read_packets(packets, layout, detector=detector, time_grid="ticks").hits
    species = true_species_of_tracks(report, truth_hits.backtrack, segments)
    selection = [t for t in report.tracks if t.stops and (t.event_id, t.track_id) in species]
    base = restep(selection, species, detector)
    protons = restep(selection, {k: "proton" for k in species}, detector)
    counts = {s: sum(species[(t.event_id, t.track_id)] == s for t in selection) for s in ("proton", "pi+", "mu-")}
    return {"variants": {"base": base, "shift_z": shifted(base, shift_cm, "z", detector),
                         "shift_drift": shifted(base, shift_cm, "drift", detector), "pions": protons},
            "selection": {"stopping_tracks": len(selection), "true_species": counts,
                          "reco_hypotheses": {s: sum(t.species == s for t in selection)
                                              for s in ("proton", "pi+", "mu-")},
                          "all_reco_tracks": report.counts()}}


def truth_inputs(segments: np.ndarray, hit_events, shift_cm: float, detector) -> dict:
    base = truth_input(segments, hit_events)
    return {"variants": {"base": base, "shift_z": shifted(base, shift_cm, "z", detector),
                         "shift_drift": shifted(base, shift_cm, "drift", detector),
                         "pions": pions_as_protons(base, detector)},
            "selection": {"tracks": int(len(np.unique(base["eventID"] * 1000 + base["trackID"]))),
                          "pion_tracks": int(len(np.unique((base["eventID"] * 1000 + base["trackID"])[
                              np.abs(base["pdgId"]) == PION_PDG])))}}


# ------------------------------------------------------------------------------------------------ fits
def fit_variant(job: tuple) -> dict:
    """One fit of the data recipe: (input, variant, segments, hits, readout, truth, settings) -> row."""
    from larnd_diff.checks import DegenerateSegmentWarning
    from larnd_diff.fit import fit

    warnings.filterwarnings("ignore", category=DegenerateSegmentWarning)
    source, variant, segments, hits, readout, truth, cfg = job
    res = fit(segments, hits, readout=readout, recipe="data", max_iter=cfg["max_iter"], device=cfg["device"],
              dtype=cfg["dtype"], seed=cfg["seed"], progress=False, hessian=cfg["hessian"])
    print(f"{source}/{variant}: {res.iterations} iterations, {res.wall_time_s:.0f} s", flush=True)
    return {"input": source, "variant": variant, "segments": int(len(segments)),
            "length_cm": float(segments["dx"].sum()), "params": fit_row(res, truth), **fit_summary(res)}


def add_shifts(rows: list) -> None:
    """Each row's shift of every parameter against the base fit of the same input, in % of the base value."""
    base = {r["input"]: r["params"] for r in rows if r["variant"] == "base"}
    for r in rows:
        if r["input"] in base:
            for name, v in r["params"].items():
                ref = base[r["input"]][name]["fitted"]
                v["shift_vs_base_pct"] = 100.0 * (v["fitted"] - ref) / ref


def table(rows: list) -> str:
    if not rows:
        return ""
    names = list(rows[0]["params"])
    lines = ["| input | variant | " + " | ".join(f"{n} shift (err)" for n in names) + " | iterations |",
             "|" + "---|" * (len(names) + 3)]
    for r in rows:
        cells = [f"{r['params'][n].get('shift_vs_base_pct', float('nan')):+.2f} % "
                 f"({r['params'][n]['error_pct']:+.2f} %)" for n in names]
        lines.append(f"| {r['input']} | {r['variant']} | " + " | ".join(cells) + f" | {r['iterations']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import larnd_diff as ld
    from larnd_diff.export import write_packets
    from larnd_diff.fit.closure import random_targets
    from larnd_diff.fit.data import load_data
    from larnd_diff.fit.objective import derived_seed
    from larnd_diff.fit.recorder import json_safe
    from larnd_diff.params import FIT_PARAMETERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=100, help="stopping tracks in the selection (default 100)")
    p.add_argument("--pion-fraction", type=float, default=0.1, help="fraction of pions (default 0.1)")
    p.add_argument("--shift-cm", type=float, default=0.3, help="the position shift (default 0.3 cm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the target, its noise, the fits")
    p.add_argument("--inputs", default="truth,reco", help="truth, reco or both (default)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--shared", type=Path, default=SHARED, help=f"the shared data folder (default {SHARED})")
    p.add_argument("--layout-yaml", type=Path, default=None, help=f"default: {LAYOUT_NAME} of the shared data")
    p.add_argument("--device", default=None, help="torch device of the fits")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--target-device", default="cpu", choices=("cpu", "cuda"),
                   help="the Numba reference on the CPU (default) or its CUDA kernels")
    p.add_argument("--max-iter", type=int, default=150, help="iteration budget of each fit (default 150)")
    p.add_argument("--hessian", action=argparse.BooleanOptionalAction, default=True, help="sigma from the Hessian")
    p.add_argument("--procs", type=int, default=1, help="fits at the same time, one per process")
    p.add_argument("--tag", default="run", help="output benchmarks/results/reco_robustness_<tag>.json")
    p.add_argument("--out", type=Path, default=None, help="output JSON (overrides --tag)")
    args = p.parse_args(argv)
    inputs = tuple(v for v in args.inputs.split(",") if v)
    variants = tuple(v for v in args.variants.split(",") if v)
    if not inputs or set(inputs) - set(INPUTS) or not variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--inputs from {INPUTS}, --variants from {VARIANTS}")
    if "base" not in variants:
        variants = ("base", *variants)    # shifts are measured against it
    layout = args.layout_yaml or args.shared / "data" / LAYOUT_NAME
    if not layout.is_file():
        raise SystemExit(f"{layout}: pixel layout not found (--layout-yaml or --shared)")
    out = args.out or ROOT / "benchmarks" / "results" / f"reco_robustness_{args.tag}.json"
    warnings.filterwarnings("ignore", message=".*degenerate segment.*")
    t_start = time.perf_counter()
    det = ld.module0()
    segs = proton_selection(args.tracks, args.pion_fraction, args.seed)
    truth = random_targets(1, FIT_PARAMETERS, args.seed)[0]
    hits = simulate_target(segs, truth, derived_seed("reco-robustness-target", args.seed), args.target_device)
    with tempfile.TemporaryDirectory() as folder:
        packets = Path(folder) / "packets.h5"
        write_packets(packets, hits, layout)
        data = load_data(packets, layout)
        made = {}
        if "truth" in inputs:
            made["truth"] = truth_inputs(segs, hits.event_id, args.shift_cm, det)
        if "reco" in inputs:
            made["reco"] = reco_inputs(packets, layout, data.hits, segs, args.shift_cm, det)
    cfg = {"max_iter": args.max_iter, "device": args.device, "dtype": args.dtype, "seed": args.seed,
           "hessian": args.hessian}
    jobs = [(src, v, made[src]["variants"][v], data.hits, data.readout, truth, cfg) for src in inputs for v in variants]
    if args.procs <= 1:
        _init_worker(os.cpu_count() or 1)
        rows = [fit_variant(j) for j in jobs]
    else:
        threads = max(1, (os.cpu_count() or 1) // args.procs)
        with ProcessPoolExecutor(args.procs, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            rows = list(pool.map(fit_variant, jobs))
    add_shifts(rows)
    result = {"benchmark": "robustness of the no-truth fit: +shift along the drift, pions in a proton selection",
              "command": " ".join(["python", "benchmarks/reco_robustness.py", *(argv or sys.argv[1:])]),
              "truth": truth, "sample": {"tracks": args.tracks, "pion_fraction": args.pion_fraction,
                                         "segments": int(len(segs)), "events": int(len(np.unique(segs["eventID"])))},
              "target_hits": {"rows": len(data.hits), "samples": int(data.hits.n_samples.sum())},
              "selections": {src: made[src]["selection"] for src in inputs},
              "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count()},
              "wall_s": time.perf_counter() - t_start, "fits": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False, default=str))
    print(table(rows))
    print(f"-> {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
