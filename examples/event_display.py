"""Event display: the hits of one generated event, pixel positions coloured by ADC, with the true segments.

    python examples/event_display.py --out docs/event_display.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import larnd_diff as ld  # noqa: E402


def draw_event(ax_xy, ax_zy, hits: ld.Hits, segments: np.ndarray, detector, vdrift: float):
    """Pixel-plane view (x, y) and side view (z from the hit time, y), hits coloured by ADC."""
    x, y = detector.pixel_center(hits.pixel[:, 0], hits.pixel[:, 1])
    filled = ~np.isnan(hits.adc)
    rows, slots = np.nonzero(filled)
    adc = hits.adc[rows, slots]
    plane = hits.pixel[rows, 0] // detector.n_pixels[0]
    anode = detector.anode_z[plane]
    sign = detector.drift_sign[plane]
    # Drift distance from the hit time (times start at the 0.5 cm virtual plane; a rough display coordinate).
    z = anode + sign * (hits.time[rows, slots] * vdrift + ld.detector.VIRTUAL_PLANE_CM)
    for seg in segments:
        ax_xy.plot([seg["x_start"], seg["x_end"]], [seg["y_start"], seg["y_end"]], color="0.6", lw=0.6, zorder=1)
        ax_zy.plot([seg["z_start"], seg["z_end"]], [seg["y_start"], seg["y_end"]], color="0.6", lw=0.6, zorder=1)
    first = ~np.isnan(hits.adc[:, 0])
    sc = ax_xy.scatter(x[first], y[first], c=np.nanmax(hits.adc[first], axis=1), s=6, marker="s", cmap="viridis",
                       zorder=2)
    ax_zy.scatter(z, y[rows], c=adc, s=6, cmap="viridis", vmin=sc.get_clim()[0], vmax=sc.get_clim()[1], zorder=2)
    for ax, xl in ((ax_xy, "x [cm]"), (ax_zy, "z (drift) [cm]")):
        ax.set_xlabel(xl)
        ax.set_ylabel("y [cm]")
    b = detector.tpc_borders
    ax_xy.set_xlim(b[:, 0].min(), b[:, 0].max())
    ax_zy.set_xlim(b[:, 2].min(), b[:, 2].max())
    for a in detector.anode_z:
        ax_zy.axvline(a, color="k", lw=0.8)
    return sc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="event_display.png")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--tracks", type=int, default=3)
    p.add_argument("--backend", default="reference")
    args = p.parse_args(argv)

    det = ld.module0()
    segs = ld.generate_muons(n_events=1, tracks_per_event=args.tracks, seed=args.seed)
    hits = ld.simulate(segs, backend=args.backend).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [1, 1]})
    sc = draw_event(a, b, hits, segs, det, det.nominal.get("vdrift", 0.1587))
    fig.colorbar(sc, ax=[a, b], label="ADC counts", shrink=0.8)
    fig.suptitle(f"larnd-diff: {args.tracks} generated 1 GeV muons, {len(hits)} hit pixels "
                 f"({args.backend} backend)")
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
