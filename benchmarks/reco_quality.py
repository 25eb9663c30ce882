"""Reconstruction quality against simulation truth: packets -> hits -> tracks -> segments, compared with the input.

For each sample (the Geant4 mixed sample of ../shared/data, and generated stopping muons and protons) and for
electronics noise off and on: simulate with the Numba reference, export LArPix packets with the layout YAML, read
them back (event t0 from the trigger packets), reconstruct, and compare with the true tracks of the input segments:

* track finding: a *reconstructable* true track is a muon, pion, kaon or proton with at least ``--min-samples``
  samples among the read-back hits and ``--min-length`` cm of visible track; it is *found* when a reconstructed
  track has it as its majority truth and holds at least half of its samples. Efficiency = found /
  reconstructable. Purity = mean fraction of a reconstructed track's samples that belong to its majority true
  track; also the fraction of reconstructed tracks whose majority truth is a track-like particle (not an
  electron, photon shower or nucleus).
* endpoints: for each found true track, its best reconstructed track (most samples); the two ends paired with the
  true ends (the pairing with the smaller sum); distances in cm; the stop of stopping tracks separately; the
  signed drift-coordinate offset of the ends.
* dE/dx: for reconstructed stopping tracks whose true track is a muon or proton (or pion, JSON only) that stops
  (truth.py: contained end with a Bragg rise), each segment's dE/dx against the true dE/dx over the same stretch
  of the true track (the segment's length at the true residual range of its midpoint). Bias = median ratio - 1,
  width = half the 16-84 % interval of the ratio; also the ratio of summed energies. Through-going muons: the
  assumed dE/dx against the true mean dE/dx of the track.
* hypothesis: confusion of the true class against the reconstructed species for stopping tracks.

    python benchmarks/reco_quality.py                      # full: 100 Geant4 events + 60 generated, noise off/on
    python benchmarks/reco_quality.py --events 10 --generated 10 --json /tmp/q.json   # quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import larnd_diff as ld
from larnd_diff.export import write_packets
from larnd_diff.generate import generate_tracks
from larnd_diff.packets import read_packets
from larnd_diff.reco import reconstruct
from larnd_diff.reco.plot import busiest_event, plot_event
from larnd_diff.reco.truth import (CLASSES, TRACK_PDGS, compare_dedx, match_tracks, point_truth, true_class,
                                   true_tracks)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPECIES_COLUMNS = ("mu-", "pi+", "proton")


def stopping_sample(n_events: int, seed: int) -> np.ndarray:
    """Two tracks per event: a muon of 30-150 MeV and a proton of 60-250 MeV kinetic energy (most stop)."""
    rng = np.random.default_rng(seed)
    species = ["mu-", "proton"] * n_events
    kinetic = np.where(np.array(species) == "mu-", rng.uniform(30, 150, 2 * n_events),
                       rng.uniform(60, 250, 2 * n_events))
    event = np.repeat(np.arange(n_events), 2)
    track = np.tile([1, 2], n_events)
    return generate_tracks(species, kinetic, event, track, seed=rng)


def quantiles(x, qs=(16, 50, 84)) -> list:
    x = np.asarray(x, np.float64)
    return [round(float(v), 4) for v in np.percentile(x, qs)] if len(x) else [None] * len(qs)


def pair_ends(reco_track, true) -> tuple[float, float, int]:
    """(distance of the reco start to its true end, of the reco end to its, index of the true end paired with
    the reco end: 0 = true start, 1 = true end)."""
    straight = np.linalg.norm(reco_track.start - true.start) + np.linalg.norm(reco_track.end - true.end)
    swapped = np.linalg.norm(reco_track.start - true.end) + np.linalg.norm(reco_track.end - true.start)
    if straight <= swapped:
        return (float(np.linalg.norm(reco_track.start - true.start)), float(np.linalg.norm(reco_track.end - true.end)),
                1)
    return float(np.linalg.norm(reco_track.start - true.end)), float(np.linalg.norm(reco_track.end - true.start)), 0


def drift_offset(reco_point, true_point, detector) -> float:
    """Signed offset (cm) of a reconstructed point along the drift, positive = farther from its anode."""
    plane = max(int(detector.tpc_of(*reco_point)), 0)
    return float((reco_point[2] - true_point[2]) * detector.drift_sign[plane])


def simulated_hits(segs: np.ndarray, *, name: str, noise: bool, seed: int, cache: Path | None):
    """(hits of the Numba reference, seconds); with ``cache`` the hits are kept in (and reused from) a file."""
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name)
    path = None if cache is None else cache / f"{slug}_{len(segs)}seg_noise{int(noise)}_seed{seed}.h5"
    if path is not None and path.exists():
        return ld.load_hits(path), float("nan")
    t0 = time.perf_counter()
    hits = ld.simulate(segs, noise=noise, seed=seed)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        ld.save_hits(path, hits, mode="w")
    return hits, seconds


def evaluate(segs: np.ndarray, *, name: str, noise: bool, layout: Path, min_samples: int, min_length: float,
             seed: int, cache: Path | None = None, figure: Path | None = None) -> dict:
    det = ld.module0()
    hits, t_sim = simulated_hits(segs, name=name, noise=noise, seed=seed, cache=cache)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packets.h5"
        unmapped = write_packets(path, hits, layout)
        t0 = time.perf_counter()
        read = read_packets(path, layout)
        t_read = time.perf_counter() - t0
    loaded = read.hits
    t0 = time.perf_counter()
    reco_segs, report = reconstruct(loaded)
    t_reco = time.perf_counter() - t0

    event_of = dict(enumerate(np.unique(segs["eventID"]).tolist()))   # export numbers events in this order
    if figure is not None:
        event = busiest_event(report)
        plot_event(report, figure, event=event, truth=segs, truth_event=event_of[event])
    truth, key_of_row = true_tracks(segs, det)
    labels, from_backtrack = point_truth(report, loaded, segs, key_of_row, event_of)
    match = match_tracks(report.point_track, labels, len(report.tracks), len(truth))
    samples_of = match.true_samples
    reconstructable = [t for t in truth if abs(t.pdg) in TRACK_PDGS and samples_of[t.key] >= min_samples
                       and t.length_cm >= min_length]

    # track finding ---------------------------------------------------------------------------------------------
    best_for: dict[int, int] = {}
    for i, k in enumerate(match.true_key):
        if k >= 0 and (k not in best_for or match.completeness[i] > match.completeness[best_for[k]]):
            best_for[int(k)] = i
    found = [t for t in reconstructable if t.key in best_for and match.completeness[best_for[t.key]] >= 0.5]
    kept = [i for i, t in enumerate(report.tracks) if t.category != "shower-like"]
    majority = Counter(true_class(truth[match.true_key[i]].pdg) if match.true_key[i] >= 0 else "none" for i in kept)
    track_like = [i for i in kept if match.true_key[i] >= 0 and abs(truth[match.true_key[i]].pdg) in TRACK_PDGS]

    # endpoints ---------------------------------------------------------------------------------------------------
    end_dist, stop_dist, drift = [], [], []
    for t in found:
        i = best_for[t.key]
        if match.completeness[i] < 0.8 or match.purity[i] < 0.8:
            continue
        rt = report.tracks[i]
        d_start, d_end, end_pair = pair_ends(rt, t)
        end_dist += [d_start, d_end]
        true_end = t.end if end_pair == 1 else t.start
        true_start = t.start if end_pair == 1 else t.end
        drift += [drift_offset(rt.start, true_start, det), drift_offset(rt.end, true_end, det)]
        if t.stops and rt.stops:
            stop_dist.append(float(np.linalg.norm(rt.end - t.end)))

    # dE/dx -------------------------------------------------------------------------------------------------------
    ratios = {"mu": [], "p": [], "pi": []}
    energy = {"mu": [0.0, 0.0], "p": [0.0, 0.0], "pi": [0.0, 0.0]}
    correct_ratios = {"mu": [], "p": [], "pi": []}
    through = []
    confusion = {c: Counter() for c in CLASSES}          # truth stops
    selection = {c: Counter() for c in CLASSES}          # every reconstructed stopping track
    category_vs_truth = Counter()
    for i, rt in enumerate(report.tracks):
        k = match.true_key[i]
        if k < 0 or rt.category == "shower-like":
            continue
        t = truth[k]
        category_vs_truth[(rt.category, "stops" if t.stops else "does not stop")] += 1
        if rt.stops:
            selection[t.cls][rt.species] += 1
            if t.stops:
                confusion[t.cls][rt.species] += 1
        good = match.purity[i] >= 0.8 and match.completeness[i] >= 0.8
        own = reco_segs[(reco_segs["eventID"] == rt.event_id) & (reco_segs["trackID"] == rt.track_id)]
        if rt.stops and t.stops and t.cls in ratios and good and len(own):
            c = compare_dedx(own, t, segs)
            ok = c["true"] > 0
            ratio = c["reco"][ok] / c["true"][ok]
            ratios[t.cls] += ratio.tolist()
            energy[t.cls][0] += float(np.sum(own["dE"][ok]))
            energy[t.cls][1] += float(np.sum(c["true"][ok] * own["dx"][ok]))
            if rt.species == {"mu": "mu-", "p": "proton", "pi": "pi+"}[t.cls]:
                correct_ratios[t.cls] += ratio.tolist()
        if rt.category == "through-going" and t.cls == "mu" and good and len(own):
            seg = segs[t.rows]
            through.append(float(own["dEdx"][0]) / (float(seg["dE"].sum()) / float(seg["dx"].sum())))

    def dedx_stats(r, e=None):
        r = np.asarray(r)
        out = {"segments": int(len(r))}
        if len(r):
            q16, q50, q84 = np.percentile(r, [16, 50, 84])
            out.update(bias=round(float(q50 - 1), 4), width=round(float((q84 - q16) / 2), 4),
                       mean_ratio=round(float(np.mean(r)), 4))
        if e is not None and e[1] > 0:
            out["energy_ratio"] = round(e[0] / e[1], 4)
        return out

    return {
        "sample": name, "noise": noise, "events": int(len(event_of)), "segments_in": int(len(segs)),
        "hits": {"rows_simulated": int(len(hits)), "samples_simulated": int(hits.n_samples.sum()),
                 "samples_read": int(loaded.n_samples.sum()), "unmapped_samples": int(unmapped),
                 "t0_source": read.t0_source},
        "truth_labels": {"backtracked_fraction": round(float(from_backtrack.mean()), 4),
                         "unlabelled_fraction": round(float(np.mean(labels < 0)), 4)},
        "tracks": {"true_reconstructable": len(reconstructable), "found": len(found),
                   "efficiency": round(len(found) / max(len(reconstructable), 1), 4),
                   "efficiency_by_class": {c: round(sum(t.cls == c for t in found)
                                                    / max(sum(t.cls == c for t in reconstructable), 1), 4)
                                           for c in ("mu", "pi", "p")},
                   "reco": report.counts(),
                   "hit_purity_mean": round(float(np.mean(match.purity[kept])) if kept else float("nan"), 4),
                   "track_like_fraction": round(len(track_like) / max(len(kept), 1), 4),
                   "majority_class_of_reco_tracks": dict(majority)},
        "endpoints_cm": {"pairs": len(end_dist) // 2, "distance_q16_50_84": quantiles(end_dist),
                         "distance_q95": quantiles(end_dist, (95,))[0],
                         "stop_distance_q16_50_84": quantiles(stop_dist), "stops": len(stop_dist),
                         "drift_offset_q16_50_84": quantiles(drift)},
        "dedx": {"stopping_muons": dedx_stats(ratios["mu"], energy["mu"]),
                 "stopping_protons": dedx_stats(ratios["p"], energy["p"]),
                 "stopping_muons_right_hypothesis": dedx_stats(correct_ratios["mu"]),
                 "stopping_protons_right_hypothesis": dedx_stats(correct_ratios["p"]),
                 "stopping_pions": dedx_stats(ratios["pi"], energy["pi"]),
                 "through_going_muons": dedx_stats(through)},
        "hypothesis_confusion_true_stopping": {c: {s: confusion[c][s] for s in SPECIES_COLUMNS} for c in CLASSES
                                               if sum(confusion[c].values())},
        "stopping_selection_by_true_class": {c: {s: selection[c][s] for s in SPECIES_COLUMNS} for c in CLASSES
                                             if sum(selection[c].values())},
        "category_vs_truth": {f"{a} / {b}": n for (a, b), n in sorted(category_vs_truth.items())},
        "seconds": {"simulate": round(t_sim, 1), "read_packets": round(t_read, 2), "reconstruct": round(t_reco, 2)},
    }


def markdown(results: list[dict]) -> str:
    def fmt(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:+.1f} %" if pct else f"{v:.2f}"

    head = ("| sample | noise | true tracks | efficiency (μ / π / p) | hit purity | track-like reco | "
            "endpoint Δ median / 84 % (cm) | stop Δ median (cm) | drift offset median (cm) | "
            "dE/dx bias ± width, stopping μ | stopping p | through-going μ |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t, e, d = r["tracks"], r["endpoints_cm"], r["dedx"]
        eff = t["efficiency_by_class"]

        def dd(s):
            return (f"{fmt(s.get('bias'), True)} ± {100 * s['width']:.1f} % ({s['segments']})"
                    if s.get("segments") else "–")
        lines.append(
            f"| {r['sample']} | {'on' if r['noise'] else 'off'} | {t['true_reconstructable']} | "
            f"{100 * t['efficiency']:.1f} % ({100 * eff['mu']:.0f} / {100 * eff['pi']:.0f} / {100 * eff['p']:.0f}) | "
            f"{100 * t['hit_purity_mean']:.1f} % | {100 * t['track_like_fraction']:.1f} % | "
            f"{fmt(e['distance_q16_50_84'][1])} / {fmt(e['distance_q16_50_84'][2])} | "
            f"{fmt(e['stop_distance_q16_50_84'][1])} | {fmt(e['drift_offset_q16_50_84'][1])} | "
            f"{dd(d['stopping_muons'])} | {dd(d['stopping_protons'])} | {dd(d['through_going_muons'])} |")
    for key, title in (("hypothesis_confusion_true_stopping", "Hypothesis of reconstructed stopping tracks whose "
                        "true particle stops"),
                       ("stopping_selection_by_true_class", "Every reconstructed stopping track, by the class of "
                        "its majority true particle")):
        lines += ["", f"{title} (reconstructed as μ / π / p):", ""]
        lines.append("| sample | noise | " + " | ".join(f"true {c}" for c in CLASSES) + " |")
        lines.append("|---|---|" + "---|" * len(CLASSES))
        for r in results:
            conf = r[key]
            cells = [" / ".join(str(conf[c][s]) for s in SPECIES_COLUMNS) if c in conf else "–" for c in CLASSES]
            lines.append(f"| {r['sample']} | {'on' if r['noise'] else 'off'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100, help="events of the Geant4 mixed sample (0: skip it)")
    p.add_argument("--generated", type=int, default=60, help="generated events of a stopping muon + proton (0: skip)")
    p.add_argument("--noise", choices=("off", "on", "both"), default="both")
    p.add_argument("--layout", type=Path, default=SHARED / "multi_tile_layout-2.2.16.yaml")
    p.add_argument("--mixed", type=Path, default=SHARED / "mixed_sample.h5")
    p.add_argument("--min-samples", type=int, default=10, help="samples a true track needs to count")
    p.add_argument("--min-length", type=float, default=3.0,
                   help="visible length (cm) a true track needs to count (the reconstruction's smallest track)")
    p.add_argument("--cache", type=Path, default=None, help="keep the simulated hits in this folder and reuse them")
    p.add_argument("--figure", type=Path, default=None,
                   help="figure of the busiest event of the first sample with noise on (or the last noise setting)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "reco_quality.json")
    args = p.parse_args(argv)
    noises = {"off": (False,), "on": (True,), "both": (False, True)}[args.noise]
    samples = []
    if args.events:
        segs = ld.load_segments(args.mixed)
        segs = segs[np.isin(segs["eventID"], np.unique(segs["eventID"])[:args.events])]
        samples.append(("Geant4 mixed", segs))
    if args.generated:
        samples.append(("generated stopping μ + p", stopping_sample(args.generated, args.seed)))
    results = []
    for k, (name, segs) in enumerate(samples):
        for noise in noises:
            figure = args.figure if k == 0 and noise == noises[-1] else None
            r = evaluate(segs, name=name, noise=noise, layout=args.layout, min_samples=args.min_samples,
                         min_length=args.min_length, seed=args.seed, cache=args.cache, figure=figure)
            print(f"[{name}, noise {'on' if noise else 'off'}] {json.dumps(r['tracks'])} {r['seconds']}", flush=True)
            results.append(r)
    out = {"command": "python benchmarks/reco_quality.py " + " ".join(argv or []),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "date": time.strftime("%Y-%m-%d"), "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
