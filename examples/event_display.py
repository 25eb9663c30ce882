"""Event display: the hits of one generated event, pixel positions coloured by ADC, with the true segments.

    python examples/event_display.py --out docs/event_display.png
    python examples/event_display.py --compare reference torch --dtype float32 --out docs/event_display_compare.png
    python examples/event_display.py --compare torch jax --device cuda:0

``--compare A B`` draws the same event simulated by two backends ("reference" = the Numba reference, or numpy,
torch, jax, tensorflow) side by side: pixel-plane view and ADC samples against time for each, and the per-pixel ADC
differences B - A (``larnd_diff.compare.plot_event_comparison``). ``--relaxation``, ``--dtype`` and ``--device``
apply to the framework backends, ``--precision`` to the reference.
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


def simulate_with(segs, name: str, args):
    """(hits, label) of one side of a comparison."""
    if name == "reference":
        return ld.simulate(segs, precision=args.precision).numpy(), f"reference ({args.precision})"
    hits = ld.simulate(segs, backend=name, device=args.device, relaxation=args.relaxation, dtype=args.dtype)
    return hits.numpy(), f"{name} ({args.relaxation}, {args.dtype})"


def compare_main(args, det, segs):
    from larnd_diff.compare import CompareError, check_backends, plot_event_comparison

    names = [n for n in args.compare if n != "reference"]
    try:
        check_backends(names) if names else None
    except CompareError as exc:
        raise SystemExit(f"event_display.py: {exc}") from None
    (a, la), (b, lb) = (simulate_with(segs, n, args) for n in args.compare)
    if la == lb:
        la, lb = f"A: {la}", f"B: {lb}"
    out = args.out or "event_display_compare.png"
    plot_event_comparison(a, b, (la, lb), det, segs, path=out, dpi=args.dpi or 90,
                          title=f"{args.tracks} generated 1 GeV muons (seed {args.seed}): {la} vs {lb}")
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="PNG (default event_display.png / event_display_compare.png)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--tracks", type=int, default=3)
    p.add_argument("--backend", default="reference")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="two backends side by side (reference, numpy, torch, jax, tensorflow)")
    p.add_argument("--relaxation", default="hard", choices=("hard", "smooth"), help="framework backends (--compare)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="framework backends")
    p.add_argument("--device", default=None, help="framework device (--compare)")
    p.add_argument("--precision", default="float64", choices=("float64", "larnd-sim"),
                   help="the reference's arithmetic (--compare)")
    p.add_argument("--dpi", type=int, default=None, help="resolution (default 130; 90 with --compare)")
    args = p.parse_args(argv)

    det = ld.module0()
    segs = ld.generate_muons(n_events=1, tracks_per_event=args.tracks, seed=args.seed)
    if args.compare:
        return compare_main(args, det, segs)
    args.out = args.out or "event_display.png"
    hits = ld.simulate(segs, backend=args.backend).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [1, 1]})
    sc = draw_event(a, b, hits, segs, det, det.nominal.get("vdrift", 0.1587))
    fig.colorbar(sc, ax=[a, b], label="ADC counts", shrink=0.8)
    fig.suptitle(f"larnd-diff: {args.tracks} generated 1 GeV muons, {len(hits)} hit pixels "
                 f"({args.backend} backend)")
    fig.savefig(args.out, dpi=args.dpi or 130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
