"""Figure of reconstructed tracks over the hits, with the true tracks when the simulation truth is at hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np

_COLOURS = {"stopping": "tab:red", "through-going": "tab:blue", "no-bragg": "tab:green", "shower-like": "tab:gray"}


def busiest_event(report) -> int:
    """The event with the most reconstructed tracks that are not shower-like (the first on a tie)."""
    counts: dict[int, int] = {}
    for t in report.tracks:
        counts[t.event_id] = counts.get(t.event_id, 0) + (t.category != "shower-like")
    if not counts:
        return int(report.points.event_id[0]) if len(report.points) else 0
    return max(counts, key=lambda e: (counts[e], -e))


def plot_event(report, path: str | Path, *, event: int | None = None, truth: np.ndarray | None = None,
               truth_event: int | None = None) -> Path:
    """Two views (x-y: the pixel plane; z-y: drift against y) of one event: points coloured by their track's
    category, reconstructed polylines, and the true segments of ``truth`` (simulation frame) of ``truth_event``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    event = busiest_event(report) if event is None else int(event)
    pts = report.points
    sel = pts.event_id == event
    fig, axes = plt.subplots(1, 2, figsize=(10, 6), sharey=True)
    for ax, (a, label) in zip(axes, ((0, "x (cm)"), (2, "z = drift (cm)"))):
        ax.scatter(pts.xyz[sel & (report.point_track < 0), a], pts.xyz[sel & (report.point_track < 0), 1], s=2,
                   c="lightgray", label="points, no track")
        if truth is not None:
            seg = truth[truth["eventID"] == (event if truth_event is None else truth_event)]
            start = np.column_stack([seg["x_start"], seg["y_start"], seg["z_start"]])
            end = np.column_stack([seg["x_end"], seg["y_end"], seg["z_end"]])
            for s0, s1 in zip(start, end):
                ax.plot([s0[a], s1[a]], [s0[1], s1[1]], color="black", lw=3.5, alpha=0.25, solid_capstyle="butt")
            ax.plot([], [], color="black", lw=3.5, alpha=0.25, label="true segments")
        for i, t in enumerate(report.tracks):
            if t.event_id != event:
                continue
            mine = report.point_track == i
            colour = _COLOURS[t.category]
            ax.scatter(pts.xyz[mine, a], pts.xyz[mine, 1], s=2, color=colour, alpha=0.35)
            ax.plot(t.nodes[:, a], t.nodes[:, 1], color=colour, lw=1.0)
            if t.stops:
                ax.plot(t.end[a], t.end[1], marker="x", color=colour, ms=8)
                ax.annotate(t.species, (t.end[a], t.end[1]), fontsize=8, color=colour)
        ax.set_xlabel(label)
    for cat, colour in _COLOURS.items():
        axes[1].plot([], [], color=colour, lw=1.0, label=f"reco: {cat}")
    axes[0].set_ylabel("y (cm)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"event {event}: reconstructed tracks (x = stop) over hits" + (" and true segments" if truth is not
                                                                                  None else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
