"""Figures of fits: parameter trajectories, the loss, the convergence band of a closure, correlation matrices."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import numpy as np

from ..params import SPECS
from .progress import max_relative
from .recorder import HISTORY_NAME, read_checkpoint, read_history
from .result import FitResult

__all__ = ["plot_trajectories", "plot_convergence_band", "plot_loss", "plot_correlation"]


def _figure(nrows=1, ncols=1, size=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _history_of(obj) -> List[dict]:
    if isinstance(obj, FitResult):
        return obj.history
    if isinstance(obj, (str, Path)):
        return read_history(obj)
    return list(obj)


def plot_trajectories(result, path, target: Optional[Mapping[str, float]] = None) -> None:
    """One panel per parameter: value vs iteration (normalised by nominal), the target as a dashed line, the
    bounds of the fit (if any) as dotted lines."""
    hist = _history_of(result)
    target = target or (result.target if isinstance(result, FitResult) else None)
    bounds = result.bounds if isinstance(result, FitResult) else {}
    names = list(hist[0]["params"]) if hist else []
    ncols = min(3, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig, axes = _figure(nrows, ncols, (4.0 * ncols, 3.0 * nrows))
    it = [r["iteration"] for r in hist]
    for i, n in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        ax.plot(it, [r["params"][n] / SPECS[n].nominal for r in hist], lw=1)
        if target and n in target:
            ax.axhline(target[n] / SPECS[n].nominal, color="k", ls="--", lw=1, label="target")
        for edge in bounds.get(n, ()):
            if math.isfinite(edge):
                ax.axhline(edge / SPECS[n].nominal, color="0.5", ls=":", lw=1)
        ax.set_title(f"{n} [{SPECS[n].unit or '1'}]", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("value / nominal")
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _distance_curve(r) -> np.ndarray:
    """Max relative distance to the target per iteration of a FitResult or a fit directory."""
    if isinstance(r, (str, Path)):  # a fit's checkpoint directory (e.g. one target of a split closure)
        hist = read_history(Path(r) / HISTORY_NAME)
        if hist and all(h.get("max_rel_err") is not None for h in hist):  # a closure's history carries it
            return np.array([h["max_rel_err"] for h in hist])
        fingerprint = read_checkpoint(Path(r))["fingerprint"]
        tgt, names = fingerprint["target"], fingerprint["names"]
        return np.array([max_relative(h["params"], tgt, names) for h in hist])
    return np.array([max_relative(h["params"], r.target, r.names) for h in r.history] + [r.max_relative_error()])


def plot_convergence_band(results: Sequence, path, tolerance: float = 0.01) -> None:
    """Max relative distance to the target over parameters vs iteration for several fits: each fit as a thin
    line, the median and the min-max band over fits, the tolerance as a dashed line. ``results``: FitResults,
    or directories of closure fits (``<checkpoint-dir>/target_*``: the history alone is enough, the checkpoint
    is read only for histories without the recorded distance)."""
    fig, axes = _figure()
    ax = axes[0][0]
    curves = [_distance_curve(r) for r in results]
    labelled = len(results) <= 10  # few fits: one colour and a legend entry each
    for i, y in enumerate(curves):
        if labelled:
            ax.plot(np.arange(len(y)), y, color=f"C{i + 1}", alpha=0.8, lw=0.9, label=f"target {i}")
        else:
            ax.plot(np.arange(len(y)), y, color="tab:blue", alpha=0.25, lw=0.8)
    if curves:  # fits of different lengths (early stops): per iteration, the band is over the fits still running
        n = max(len(c) for c in curves)
        stack = np.full((len(curves), n), np.nan)
        for i, c in enumerate(curves):
            stack[i, :len(c)] = c
        x = np.arange(n)
        ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color="tab:blue", alpha=0.2,
                        label="min-max over fits")
        ax.plot(x, np.nanmedian(stack, 0), color="tab:blue", lw=1.5, label="median")
    ax.axhline(tolerance, color="k", ls="--", lw=1, label=f"{tolerance:.1%}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("max relative distance to target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_loss(result, path) -> None:
    """Loss per iteration (skipped steps marked) and its running mean over one epoch-ish window."""
    hist = _history_of(result)
    fig, axes = _figure()
    ax = axes[0][0]
    it = np.array([r["iteration"] for r in hist])
    loss = np.array([np.nan if r["loss"] is None else r["loss"] for r in hist], dtype=float)
    ax.plot(it, loss, lw=0.8, label="batch loss")
    if len(loss) >= 5:
        w = max(2, min(len(loss) // 10, 50))
        ax.plot(it[w - 1:], np.convolve(loss, np.ones(w) / w, "valid"), lw=1.5, label=f"mean of {w}")
    bad = [r["iteration"] for r in hist if r.get("skipped")]
    if bad:
        ax.plot(bad, np.zeros(len(bad)), "rx", label="skipped (NaN/inf)")
    finite = loss[np.isfinite(loss)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_correlation(correlation, names: Sequence[str], path, title: str = "correlation of the fitted parameters"):
    """The correlation matrix as a colour map with the values written in the cells (undefined cells grey)."""
    corr = np.asarray(correlation, dtype=float)
    fig, axes = _figure(size=(5.6, 4.8))
    ax = axes[0][0]
    shown = np.ma.masked_invalid(corr)
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1)
    im.cmap.set_bad("0.8")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "n/a" if not np.isfinite(corr[i, j]) else f"{corr[i, j]:+.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="w" if np.isfinite(corr[i, j]) and abs(corr[i, j]) > 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
