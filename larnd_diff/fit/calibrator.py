"""The calibrator: composes the fit's parts and runs the loop.

One iteration = one batch = one optimiser step: the gradient estimator gives the batch loss and its gradient in
the optimiser's coordinates, a step with a non-finite loss or gradient is skipped (recorded and counted, never
silent), the optimiser steps and the coordinates' box projects, the controllers adapt and may stop the fit, the
recorder writes the history line and, when due, the checkpoint. Everything the loop needs lives in its parts or
in the explicit :class:`~larnd_diff.fit.recorder.LoopState`.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from ..params import SPECS
from .coordinates import Coordinates, check_names
from .gradients import Point, ReverseMode
from .optimizer import Optimiser
from .progress import Progress, max_relative
from .recorder import LoopState, Recorder
from .result import FitResult

__all__ = ["Calibrator"]


class Calibrator:
    """One fit of the parameters ``params`` of ``objective`` (see :mod:`larnd_diff.fit`); ``run()`` fits.

    objective    :class:`~larnd_diff.fit.objective.Objective` (segments, batches, target, model, loss)
    params       names of the fitted parameters; ``init`` their start values (physical units, default nominal)
    coordinates  :class:`~larnd_diff.fit.coordinates.Coordinates` (parameterization, step scales, bounds)
    optimiser    :class:`~larnd_diff.fit.optimizer.Optimiser`
    gradient     a gradient estimator (:mod:`larnd_diff.fit.gradients`)
    budget       :class:`~larnd_diff.fit.controllers.Budget`; ``controllers`` further controllers, in order
    recorder, progress, uncertainty (None = no covariance), callback(record) -> True stops early
    """

    def __init__(self, objective, params: Sequence[str], *, budget, init: Optional[Mapping[str, float]] = None,
                 coordinates: Coordinates = Coordinates(), optimiser: Optimiser = Optimiser(),
                 gradient=ReverseMode(), controllers: Sequence = (), recorder: Recorder = Recorder(),
                 progress: Progress = Progress(), uncertainty=None, callback: Optional[Callable] = None):
        from ..ops import get_backend

        self.names = list(params)
        if not self.names:
            raise ValueError("params is empty: name at least one parameter to fit")
        check_names(self.names, "params")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"params lists a parameter twice: {self.names}")
        self.init = {n: float(SPECS[n].nominal) for n in self.names}
        if init:
            check_names(list(init), "init")
            extra = sorted(set(init) - set(self.names))
            if extra:
                raise ValueError(f"init gives parameter(s) {extra} that are not fitted ({self.names})")
            self.init.update({k: float(v) for k, v in init.items()})
        coordinates.check(self.names, self.init)
        self.backend = get_backend(objective.model.backend)
        self.backend.require("grad", "it is forward-only, and fitting needs gradients")
        self.objective, self.coordinates, self.optimiser, self.gradient = objective, coordinates, optimiser, gradient
        self.budget, self.controllers = budget, tuple(controllers)
        self.recorder, self.progress, self.uncertainty, self.callback = recorder, progress, uncertainty, callback
        self.total_iterations = budget.total(objective.n_batches)
        for c in self.controllers:
            if hasattr(c, "check"):
                c.check(objective)

    # ------------------------------------------------------------------------------------------ settings
    def fingerprint(self) -> dict:
        """Every setting that shapes the trajectory, and hashes of the inputs (resume refuses any difference)."""
        return {"names": self.names, "init": self.init, **self.objective.keywords(),
                **self.coordinates.keywords(), **self.optimiser.keywords(), **self.gradient.keywords(),
                "controllers": [[type(c).__name__, _settings(c)] for c in self.controllers]}

    @property
    def n_batches(self) -> int:
        return self.objective.n_batches

    @property
    def checkpoint_path(self):
        return self.recorder.checkpoint_path

    def _part_names(self):
        return ["gradient"] + [f"{type(c).__name__}_{i}" for i, c in enumerate(self.controllers)]

    # ------------------------------------------------------------------------------------------ loss
    def batch_loss(self, b: int, u: Mapping[str, Any], noise_seed: int = 0):
        """Loss of batch ``b`` at coordinates ``u`` (raw or EagerPy framework scalars); a raw scalar."""
        self.objective.target_hits(b)  # simulate (and cache) the target outside the differentiated region
        fitted = {n: self.coordinates.physical_tensor(n, u[n]) for n in self.names}
        return self.objective.loss(b, fitted, noise_seed)

    def _point(self, opt, b: int, noise_seed: int, iteration: int) -> Point:
        be, model = self.backend, self.objective.model

        def value_and_grad():
            self.objective.target_hits(b)
            value, grads = be.value_and_grad(lambda p: be.wrap(self.batch_loss(b, p, noise_seed)), opt.params())
            return float(be.to_numpy(value)), {n: float(np.asarray(be.to_numpy(grads[n])).reshape(()))
                                               for n in self.names}

        def loss_at(shift):
            here = opt.values()
            point = {k: be.raw_asarray(v + shift.get(k, 0.0), model.dtype, model.device) for k, v in here.items()}
            return float(be.to_numpy(self.batch_loss(b, point, noise_seed)))

        return Point(value_and_grad, loss_at, self.coordinates.relative_step, iteration)

    def full_loss(self, u: Mapping[str, Any], batches: Optional[Sequence[int]] = None, reduce: str = "mean"):
        """Mean (``reduce="sum"``: sum) of the batch losses over ``batches`` (default all) at coordinates ``u``
        (framework scalars)."""
        idx = list(range(self.objective.n_batches)) if batches is None else [int(b) for b in batches]
        total = None
        for b in idx:
            v = self.batch_loss(b, u)
            total = v if total is None else total + v
        return total if reduce == "sum" else total / len(idx)

    def loss_at(self, values: Mapping[str, float], batches: Optional[Sequence[int]] = None) -> float:
        """Mean batch loss at physical parameter ``values`` of the fitted parameters (forward only; for scans)."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise KeyError(f"loss_at needs values for {missing}")
        model = self.objective.model
        u = {n: self.backend.raw_asarray(self.coordinates.coordinate(n, values[n]), model.dtype, model.device)
             for n in self.names}
        return float(self.backend.to_numpy(self.full_loss(u, batches)))

    # ------------------------------------------------------------------------------------------ run
    def _start(self):
        model = self.objective.model
        state, saved = self.recorder.start(self.fingerprint())
        opt = self.optimiser.make(self.backend.name, self.coordinates.to_internal(self.init), model.dtype,
                                  model.device)
        fresh = {"gradient": self.gradient.init(), **{k: c.init() for k, c in
                                                      zip(self._part_names()[1:], self.controllers)}}
        if saved is not None:
            opt.load_state(saved)
            fresh.update(state.parts or {})
        state.parts = fresh
        return opt, state

    def run(self) -> FitResult:
        opt, state = self._start()
        hist = self.recorder.open_history(state)
        t_session, wall_before = time.perf_counter(), state.wall_time_s
        consistent = True
        reference = self.objective.true_values or self.init
        try:
            with self.progress.bar(self.total_iterations, state.iteration, f"fit[{self.backend.name}]") as bar:
                while state.iteration < self.total_iterations and not state.stopped_early:
                    consistent = False
                    record = self._step(opt, state)
                    stop = self._control(record, opt, state)
                    consistent = True
                    record["elapsed_s"] = wall_before + time.perf_counter() - t_session
                    record = self.recorder.write(hist, state, record)
                    state.wall_time_s = wall_before + time.perf_counter() - t_session
                    bar.update(record, reference, self.names, self.objective.true_values is not None)
                    stop = stop or self.budget.out_of_time(state.wall_time_s)
                    if self.callback is not None and self.callback(record) is True:
                        stop = stop or "callback"
                    if stop:
                        state.stopped_early, state.stop_reason = True, stop
                    if self.recorder.due(state):
                        self.recorder.save(state, self.fingerprint(), opt.state(), hist)
        except BaseException:
            if consistent and self.recorder.on_error:
                state.wall_time_s = wall_before + time.perf_counter() - t_session
                self.recorder.save(state, self.fingerprint(), opt.state(), hist)
            raise
        finally:
            if hist is not None:
                hist.close()
        state.wall_time_s = wall_before + time.perf_counter() - t_session
        self.recorder.save(state, self.fingerprint(), opt.state())
        if state.n_skipped:
            warnings.warn(f"{state.n_skipped} of {state.iteration} fit steps were skipped because the loss or a "
                          f"gradient was NaN/inf (iterations {list(state.skipped[:20])}"
                          f"{' ...' if state.n_skipped > 20 else ''})", RuntimeWarning, stacklevel=2)
        return self._result(opt, state)

    def _step(self, opt, state: LoopState) -> dict:
        it = state.iteration
        n_batches = self.objective.n_batches
        epoch, k = divmod(it, n_batches)
        if opt.epoch != epoch or it == 0:
            opt.set_epoch(epoch)
        b = int(self.objective.batches.epoch_order(epoch)[k])
        values = opt.values()
        t0 = time.perf_counter()
        reason = None
        point = self._point(opt, b, self.objective.model_seed(epoch, b), it)
        try:
            loss, grad, state.parts["gradient"] = self.gradient(point, state.parts["gradient"])
        except FloatingPointError as exc:  # numpy-level overflow in a backend counts as a non-finite step
            loss, grad, reason = float("nan"), {n: float("nan") for n in self.names}, f"error: {exc}"
        if reason is None and not math.isfinite(loss):
            reason = "loss is not finite"
        elif reason is None and not all(math.isfinite(v) for v in grad.values()):
            reason = "gradient is not finite: " + ", ".join(n for n in self.names if not math.isfinite(grad[n]))
        lr = opt.lr
        if reason is None:
            grad64 = {n: np.float64(v) for n, v in grad.items()}
            opt.step(grad64, loss) if getattr(opt, "needs_loss", False) else opt.step(grad64)
            lower, upper = self.coordinates.internal_box(self.names)
            if lower:
                opt.clamp(lower, upper)
        else:
            state.n_skipped += 1
            state.skipped = tuple(state.skipped) + (it,)
        state.iteration = it + 1
        record = {"iteration": it, "epoch": epoch, "batch_in_epoch": k, "batch": b,
                  "batch_length_cm": float(self.objective.batches.lengths_cm[b]), "lr": lr, "loss": loss,
                  "grad_norm": float(math.sqrt(sum(v * v for v in grad.values()))),
                  "params": self.coordinates.to_physical(values), "grad": grad, "skipped": reason is not None,
                  "reason": reason, "step_time_s": time.perf_counter() - t0}
        truth = self.objective.true_values
        if truth is not None:
            record["max_rel_err"] = max_relative(record["params"], truth, self.names)
        return record

    def _control(self, record: dict, opt, state: LoopState) -> Optional[str]:
        """Run the controllers in order (their states in ``state.parts``); the first stop reason wins."""
        scales = {n: self.coordinates.scale(n) for n in self.names}
        stop = None
        for key, c in zip(self._part_names()[1:], self.controllers):
            state.parts[key], reason = c.update(record, state.parts[key], opt, scales=scales)
            stop = stop or reason
        return stop

    # ------------------------------------------------------------------------------------------ result
    def _result(self, opt, state: LoopState) -> FitResult:
        u = opt.values()
        selected, selected_loss, keep = state.iteration, None, "last"
        for key, c in zip(self._part_names()[1:], self.controllers):
            if hasattr(c, "select"):  # a controller that picks the result among the iterates (BestIterate)
                last_loss = self.loss_at(self.coordinates.to_physical(u))
                selected, selected_loss, chosen = c.select(state.parts[key], state.iteration, last_loss)
                u = self.coordinates.to_internal(chosen) if chosen is not None else u
                keep = "best"
        physical = self.coordinates.to_physical(u)
        normalized = {n: physical[n] / float(SPECS[n].nominal) for n in self.names}
        truth = self.objective.true_values
        done = state.iteration >= self.total_iterations
        res = FitResult(names=list(self.names), params=physical, normalized=normalized, init=dict(self.init),
                        target=dict(truth) if truth else None, history=state.records, iterations=state.iteration,
                        epochs=state.iteration / self.objective.n_batches, n_batches=self.objective.n_batches,
                        n_skipped=state.n_skipped, skipped_iterations=list(state.skipped),
                        wall_time_s=state.wall_time_s, backend=self.backend.name,
                        checkpoint_path=str(self.checkpoint_path) if self.checkpoint_path else None,
                        history_path=str(self.recorder.history_path) if self.recorder.history_path else None,
                        stopped_early=state.stopped_early,
                        stop_reason=state.stop_reason or ("max_iter/epochs" if done else ""),
                        bounds=self.coordinates.box(self.names), at_bounds=self.coordinates.at_bounds(physical),
                        keep=keep, selected_iteration=selected, selected_loss=selected_loss)
        if self.uncertainty is not None:
            self._add_uncertainties(res, u)
        return res

    def _add_uncertainties(self, res: FitResult, u: Dict[str, float]) -> None:
        batches = self.uncertainty.batches
        for b in (range(self.objective.n_batches) if batches is None else batches):
            self.objective.target_hits(int(b))
        model = self.objective.model
        # a likelihood is summed over the whole sample (its curvature is the information); other losses averaged
        reduce = "sum" if getattr(self.objective.loss_part, "is_likelihood", False) else "mean"
        out = self.uncertainty.estimate(lambda p: self.full_loss(p, batches, reduce), u, self.coordinates,
                                        res.normalized,
                                        self.backend.name, model.dtype, model.device)
        for key, value in out.items():
            setattr(res, key, value)


def _settings(part) -> dict:
    return part.settings() if hasattr(part, "settings") else {k: v for k, v in vars(part).items()}
