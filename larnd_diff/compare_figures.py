"""Figures of a backend comparison (:func:`larnd_diff.compare.compare`) and of two simulations of one event.

``plot(result)``: agreement, smooth-preset differences, times and peak memory per backend (four panels);
``plot_event_comparison(hits_a, hits_b)``: the pixel plane and ADC samples of both and their per-pixel
differences (``pixel_differences``). Re-exported by :mod:`larnd_diff.compare`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["plot", "pixel_differences", "plot_event_comparison"]


# ============================================================================================== figures
def _figure(nrows=1, ncols=1, size=(6.4, 4.8), layout=None, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def plot(result: dict, path=None, dpi: int = 110):
    """Four panels: hard-preset agreement, smooth-preset |dADC|, times, peak memory. Returns the Figure."""
    names = list(result["backends"])
    rows = [result["backends"][n] for n in names]
    x = np.arange(len(names))
    fig, ax = _figure(2, 2, (11, 7.5))
    a = ax[0][0]
    ident = [r["hard_vs_reference"]["identical"] * 100 for r in rows]
    within = [r["hard_vs_reference"]["within_1"] * 100 for r in rows]
    ls = [r["hard_vs_reference_larnd_sim"]["identical"] * 100 for r in rows]
    a.bar(x - 0.27, ident, 0.27, label="identical (ref. float64)")
    a.bar(x, within, 0.27, label="within ±1 (ref. float64)")
    a.bar(x + 0.27, ls, 0.27, label="identical (ref. larnd-sim precision)")
    a.set_ylim(min(ident + within + ls + [95.0]) - 1, 100.6)
    a.set_xticks(x, names)
    a.set_ylabel("hit pixels [%]")
    a.set_title("hard preset: ADC rows vs the Numba reference", fontsize=10)
    a.legend(fontsize=7, loc="lower right")

    a = ax[0][1]
    sm = [r["smooth_vs_reference"]["mean_abs_dadc_per_hit_pixel"] for r in rows]
    un = [r["smooth_vs_reference"].get("mean_abs_dadc_vs_unrounded", np.nan) for r in rows]
    a.bar(x - 0.2, sm, 0.4, label="vs reference ADC")
    a.bar(x + 0.2, un, 0.4, label="vs reference ADC before rounding")
    a.set_xticks(x, names)
    a.set_ylabel("mean |ΔADC| per hit pixel")
    a.set_title("smooth preset vs the reference", fontsize=10)
    a.legend(fontsize=7)

    a = ax[1][0]
    parts = [("forward_hard_s", "forward (hard)"), ("forward_smooth_s", "forward (smooth)"),
             ("forward_grad6_s", "forward + 6 gradients (smooth)")]
    for i, (key, label) in enumerate(parts):
        a.bar(x + (i - 1) * 0.27, [r.get(key) or np.nan for r in rows], 0.27, label=label)
    a.axhline(result["reference"]["forward_s"], color="k", ls="--", lw=1, label="Numba reference forward")
    a.set_xticks(x, names)
    a.set_yscale("log")
    a.set_ylabel("seconds (median)")
    a.set_title("time", fontsize=10)
    a.legend(fontsize=7)

    a = ax[1][1]
    mem_f = [(r.get("peak_bytes_forward") or np.nan) / 2**20 for r in rows]
    mem_g = [(r.get("peak_bytes_grad") or np.nan) / 2**20 for r in rows]
    a.bar(x - 0.2, mem_f, 0.4, label="forward")
    a.bar(x + 0.2, mem_g, 0.4, label="forward + gradient")
    a.set_xticks(x, names)
    a.set_ylabel("peak memory [MiB]")
    kinds = sorted({r["memory"] for r in rows})
    a.set_title("peak memory (" + "; ".join(k.replace(" (jax cannot reset it)", "") for k in kinds) + ")",
                fontsize=8)
    a.legend(fontsize=7)
    g = result.get("gradient_agreement")
    if g:
        a.text(0.02, 0.97, f"gradients agree to {g['worst']:.1e} (relative, vs {g['relative_to']})",
               transform=a.transAxes, va="top", fontsize=8)
    inp = result["input"]
    fig.suptitle(f"{inp['source']}: {inp['n_segments']} segments, {inp['track_cm']:.0f} cm of track; "
                 f"simulator {result['dtype']}, device {result['device'] or 'default'}", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


# ============================================================================================== event display
def pixel_differences(hits_a, hits_b) -> dict:
    """Per hit pixel (union of both, matched by (event, I, J)): ADC rows with empty slots as the pedestal,
    ``delta_sum`` = sum over slots of (b - a), ``max_abs`` = max |b - a|, and which side has it."""
    from .hits import PEDESTAL, adc_rows

    a, b = adc_rows(hits_a), adc_rows(hits_b)
    keys = sorted(set(a) | set(b))
    width = next(iter(a.values() or b.values()), np.zeros(10)).shape[0]
    empty = np.full(width, PEDESTAL)
    da = np.array([a.get(k, empty) for k in keys]).reshape(len(keys), width)
    db = np.array([b.get(k, empty) for k in keys]).reshape(len(keys), width)
    return {"keys": np.array(keys, dtype=np.int64).reshape(len(keys), 3), "delta_sum": (db - da).sum(axis=1),
            "max_abs": np.abs(db - da).max(axis=1) if len(keys) else np.zeros(0),
            "in_a": np.array([k in a for k in keys], bool), "in_b": np.array([k in b for k in keys], bool)}


def _draw_xy(ax, hits, detector, segments, vmin, vmax):
    h = hits.numpy()
    for seg in segments if segments is not None else ():
        ax.plot([seg["x_start"], seg["x_end"]], [seg["y_start"], seg["y_end"]], color="0.7", lw=0.6, zorder=1)
    if not len(h):
        return None
    x, y = detector.pixel_center(h.pixel[:, 0], h.pixel[:, 1])
    filled = ~np.isnan(h.adc[:, 0])
    sc = ax.scatter(x[filled], y[filled], c=np.nanmax(h.adc[filled], axis=1), s=7, marker="s", cmap="viridis",
                    vmin=vmin, vmax=vmax, zorder=2)
    return sc


def _draw_time_adc(ax, hits, detector):
    h = hits.numpy()
    rows, slots = np.nonzero(~np.isnan(h.adc))
    if not len(rows):
        return
    _, y = detector.pixel_center(h.pixel[rows, 0], h.pixel[rows, 1])
    ax.scatter(h.time[rows, slots], h.adc[rows, slots], c=y, s=5, cmap="plasma", zorder=2)


def plot_event_comparison(hits_a, hits_b, labels=("A", "B"), detector=None, segments=None, path=None,
                          title: Optional[str] = None, dpi: int = 110):
    """Two simulations of the same event(s) side by side, and their per-pixel ADC differences. Returns the Figure.

    Columns A and B: pixel-plane view (x, y; pixels coloured by their largest ADC, the true segments in grey)
    above a time/ADC view (every ADC sample: time in us against ADC counts, coloured by the pixel's y). Third
    column: the per-pixel difference sum over slots of ADC_B - ADC_A (empty slots read as the pedestal; pixels
    with no difference in light grey) on the pixel plane, and the histogram of the per-pixel max |dADC|.
    """
    from matplotlib.colors import TwoSlopeNorm

    from .detector import module0

    det = detector or module0()
    ha, hb = hits_a.numpy(), hits_b.numpy()
    fig, ax = _figure(2, 3, (15, 9.5), layout="constrained", gridspec_kw={"height_ratios": [1.45, 1]})
    both = np.concatenate([ha.adc.ravel(), hb.adc.ravel()])
    both = both[~np.isnan(both)]
    vmin, vmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    sc = None
    for col, (h, label) in enumerate(((ha, labels[0]), (hb, labels[1]))):
        s = _draw_xy(ax[0][col], h, det, segments, vmin, vmax)
        sc = s or sc
        ax[0][col].set_title(f"{label}\n{len(h)} hit pixels, {int(h.n_samples.sum())} ADC samples", fontsize=10)
        _draw_time_adc(ax[1][col], h, det)
        ax[1][col].set_title(f"{label}: ADC samples (colour: pixel y)", fontsize=9)
        ax[1][col].set_xlabel("time [us]")
        ax[1][col].set_ylabel("ADC counts")
    if sc is not None:
        fig.colorbar(sc, ax=[ax[0][0], ax[0][1]], label="largest ADC of the pixel", shrink=0.85)
    lims = [a.get_xlim() + a.get_ylim() for a in (ax[1][0], ax[1][1])]
    for a in (ax[1][0], ax[1][1]):  # the same ranges on both sides
        a.set_xlim(min(v[0] for v in lims), max(v[1] for v in lims))
        a.set_ylim(min(v[2] for v in lims), max(v[3] for v in lims))

    diff = pixel_differences(ha, hb)
    k = diff["keys"]
    a = ax[0][2]
    for seg in segments if segments is not None else ():
        a.plot([seg["x_start"], seg["x_end"]], [seg["y_start"], seg["y_end"]], color="0.85", lw=0.6, zorder=1)
    if len(k):
        x, y = det.pixel_center(k[:, 1], k[:, 2])
        same = diff["max_abs"] == 0
        a.scatter(x[same], y[same], s=7, marker="s", color="0.75", zorder=2, label=f"identical ({same.sum()})")
        d = diff["delta_sum"][~same]
        if d.size:
            lim = max(float(np.abs(d).max()), 1.0)
            s2 = a.scatter(x[~same], y[~same], c=d, s=12, marker="s", cmap="coolwarm",
                           norm=TwoSlopeNorm(0.0, -lim, lim), zorder=3, label=f"different ({(~same).sum()})")
            fig.colorbar(s2, ax=a, label="Σ ΔADC over the pixel's samples", shrink=0.85)
        a.legend(fontsize=7, loc="upper right")
    a.set_title(f"per-pixel ADC difference\n{labels[1]} − {labels[0]}", fontsize=10)
    a = ax[1][2]
    if len(k):
        m = diff["max_abs"]
        edges = np.arange(-0.5, max(float(m.max()), 3.0) + 1.5, 1.0) if m.max() <= 40 else 40
        a.hist(m, bins=edges, color="tab:blue")
        a.set_yscale("log")
        frac = float(np.mean(m == 0))
        a.text(0.97, 0.95, f"{len(m)} hit pixels\n{frac:.2%} identical ADC rows\n{np.mean(m <= 1):.2%} within ±1\n"
               f"only in A: {int((~diff['in_b']).sum())}\nonly in B: {int((~diff['in_a']).sum())}",
               transform=a.transAxes, ha="right", va="top", fontsize=8)
    a.set_xlabel("max |ΔADC| over the pixel's samples")
    a.set_ylabel("hit pixels")
    a.set_title("per-pixel ADC differences (A = left, B = middle)", fontsize=9)
    b = det.tpc_borders
    for a in ax[0]:
        a.set_xlim(b[:, 0].min(), b[:, 0].max())
        a.set_ylim(b[:, 1].min(), b[:, 1].max())
        a.set_xlabel("x [cm]")
        a.set_ylabel("y [cm]")
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
