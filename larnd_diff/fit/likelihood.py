"""The likelihood loss: the negative log-likelihood of the target's hits under the expected-noise readout.

The model side is the noiseless induced charge of every pixel row (:meth:`Model.waveforms`); the readout's
electronics noise (900 e- reset, 500 e- discriminator and conversion: the reference front end's,
larnd_diff/reference/scalars.py pixel_triggers) enters analytically through
:func:`larnd_diff.sim.expected_noise.readout_log_likelihood`: per pixel, the probability of exactly the observed
samples (trigger ticks and ADC counts) and of nothing more. Its minimum sits at the true parameters in
expectation over the noise (a likelihood), and its curvature is the information the data carry, so the Hessian
of the summed loss gives the covariance directly (:mod:`larnd_diff.fit.uncertainty`).

Rows are matched by (event, pixel). A pixel with hits in the target where the model has no row (no charge at
all) contributes the outlier term of the likelihood (a constant: its samples are counted and reported).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from ..hits import Hits
from .options import Option

__all__ = ["NoiseLikelihood", "match_rows"]


def _keys(events, pixels) -> np.ndarray:
    events, pixels = np.asarray(events, np.int64), np.asarray(pixels, np.int64)
    return (events << 20) | (pixels[:, 0] << 10) | pixels[:, 1]


def match_rows(rows, row_events, target: Hits, adc_tick_us: float) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """The target's samples on the model's rows: obs_tick (n_rows, K) int64 (-1 = empty), obs_adc (n_rows, K) (NaN =
    empty), and the number of target rows and samples on pixels the model has no row for.

    An (event, pixel) that the target lists twice (a simulation that chunked an event) is merged in time order."""
    n_rows = len(rows)
    t_adc = np.asarray(target.adc, np.float64) if len(target) else np.zeros((0, 10))
    t_time = np.asarray(target.time, np.float64) if len(target) else np.zeros((0, 10))
    k = t_adc.shape[1]
    tick = np.full((n_rows, k), -1, np.int64)
    adc = np.full((n_rows, k), np.nan)
    if not len(target):
        return tick, adc, 0, 0
    tkeys = _keys(target.event_id, target.pixel)
    if n_rows:
        model_keys = _keys(row_events, rows)
        order = np.argsort(model_keys, kind="stable")
        pos = np.minimum(np.searchsorted(model_keys[order], tkeys), n_rows - 1)
        found = model_keys[order][pos] == tkeys
    else:
        order, pos, found = np.zeros(0, np.int64), np.zeros(len(tkeys), np.int64), np.zeros(len(tkeys), bool)
    lost = ~found
    ticks = np.where(np.isfinite(t_adc), np.rint(np.nan_to_num(t_time) / adc_tick_us), -1).astype(np.int64)
    _, first, counts = np.unique(tkeys, return_index=True, return_counts=True)
    single = np.zeros(len(tkeys), bool)
    single[first[counts == 1]] = True
    direct = found & single
    tick[order[pos[direct]]] = ticks[direct]
    adc[order[pos[direct]]] = t_adc[direct]
    for key in np.unique(tkeys[found & ~single]):
        same = np.flatnonzero(tkeys == key)
        t, a = ticks[same].ravel(), t_adc[same].ravel()
        keep = np.isfinite(a)
        by_time = np.argsort(t[keep], kind="stable")[:k]
        row = order[pos[same[0]]]
        tick[row, :len(by_time)] = t[keep][by_time]
        adc[row, :len(by_time)] = a[keep][by_time]
    return tick, adc, int(lost.sum()), int(np.isfinite(t_adc[lost]).sum())


@dataclass(frozen=True)
class NoiseLikelihood:
    """Loss ``"nll"``: -log L of the target's hits given the model's waveforms (see the module docstring),
    summed over the batch's pixels. ``n_nodes``: quadrature nodes over the reset baseline; ``outlier_probability``:
    the mixture floor for what the model cannot explain; the model simulates whole events (``chunk_size`` None:
    a detector has no larnd-sim chunks) and the target must be made the same way."""

    n_nodes: Optional[int] = None
    outlier_probability: float = 1e-6
    chunk_size: Optional[int] = None

    OPTIONS = (
        Option("noise_nodes", "--noise-nodes", "quadrature nodes of the expected-noise likelihood over the reset "
               "baseline (default: larnd_diff.sim.expected_noise.NOISE_NODES)", parse=int),
    )
    is_likelihood = True
    name = "nll"

    def keywords(self) -> dict:
        return {"loss": self.name, "loss_options": {"n_nodes": self.n_nodes,
                                                    "outlier_probability": self.outlier_probability,
                                                    "chunk_size": self.chunk_size}}

    def row_terms(self, model, segments, fitted, target: Hits) -> dict:
        """The likelihood row by row: ``log_likelihood`` (raw framework tensor, one per model row), the model's
        ``charge`` per row and tick (electrons), its ``rows`` (pixel ids) and ``events``, the matched target samples
        ``adc`` (NaN = empty), and the target's ``lost_rows`` / ``lost_samples`` on pixels the model has no row for."""
        from ..detector import resolve_detector
        from ..sim.expected_noise import NOISE_NODES, readout_log_likelihood

        detector = resolve_detector(None)
        charge, rows, events = model.waveforms(segments, fitted, chunk_size=self.chunk_size)
        tick, adc, lost_rows, lost_samples = match_rows(rows, events, target.numpy(), detector.adc_tick_us)
        ll = readout_log_likelihood(charge, detector, tick, adc, n_nodes=self.n_nodes or NOISE_NODES,
                                    outlier_probability=self.outlier_probability)
        return dict(log_likelihood=getattr(ll, "raw", ll), charge=charge, rows=rows, events=events, adc=adc,
                    lost_rows=lost_rows, lost_samples=lost_samples, n_ticks_event=detector.n_ticks_event)

    def __call__(self, model, segments, fitted, target: Hits, *, noise_seed: int = 0) -> Any:
        t = self.row_terms(model, segments, fitted, target)
        # target pixels the model has no row for: the outlier term alone (a constant, no gradient)
        outlier = (t["lost_rows"] * math.log(self.outlier_probability)
                   - t["lost_samples"] * math.log(t["n_ticks_event"] * 176.0))
        return -(_sum(t["log_likelihood"]) + outlier)


def _sum(x):
    import eagerpy as ep

    return ep.astensor(x).sum().raw
