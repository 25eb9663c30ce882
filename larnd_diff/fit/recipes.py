"""Recipes: named sets of fit parts, and the keyword front end that builds a fit from them.

A recipe is a set of part instances (loss, coordinates, optimiser, gradient estimator, controllers, relaxation,
batch length). :func:`build` starts from a recipe and replaces what the keywords give, so ``fit(segs, target,
lr=0.1)`` is the paper's recipe with another learning rate, and ``larnd-diff closure --lr 0.1`` the closure
recipe with another one. Every keyword is declared once, by the part it belongs to (``OPTIONS``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..hits import Hits
from ..params import FIT_PARAMETERS
from . import controllers as _controllers
from . import gradients as _gradients
from .calibrator import Calibrator
from .controllers import Convergence, StepAdaptation, controllers_from_keywords
from .coordinates import Coordinates, check_names
from .gradients import CentralDifferences, ReverseMode, gradient_from_keywords
from .likelihood import NoiseLikelihood
from .objective import DataTarget, HitsLoss, Model, Objective, SimulatedTarget, true_values
from .optimizer import Optimiser
from .options import Option, parse_assignments, parse_names, step_pairs
from .progress import Progress
from .recorder import Recorder
from .stages import Warmup, run_staged
from .uncertainty import HessianUncertainty

__all__ = ["Recipe", "PAPER", "CLOSURE", "DATA", "RECIPES", "PAPER_RECIPE", "CLOSURE_RECIPE", "build", "fit",
           "FIT_OPTIONS", "ALL_OPTIONS"]


@dataclass(frozen=True)
class Recipe:
    """Default parts of a fit; :func:`build` replaces what keywords give."""

    name: str
    loss: Any = field(default_factory=HitsLoss)
    coordinates: Coordinates = field(default_factory=Coordinates)
    optimiser: Optimiser = field(default_factory=Optimiser)
    gradient: Any = field(default_factory=ReverseMode)
    adaptation: Optional[StepAdaptation] = None
    convergence: Optional[Convergence] = None
    relaxation: str = "smooth"
    batch_length_cm: float = 100.0
    target: Dict[str, Any] = field(default_factory=lambda: {"target_simulator": "same", "target_noise": False,
                                                            "target_precision": "float64"})
    uncertainty: HessianUncertainty = field(default_factory=HessianUncertainty)
    keep: str = "last"
    warmup: Warmup = field(default_factory=Warmup)

    def keywords(self) -> Dict[str, Any]:
        """The recipe as :func:`fit` keywords (``fit(segs, target, **recipe.keywords())``)."""
        conv = self.convergence
        return {**self.optimiser.keywords(), **self.coordinates.keywords(), **self.loss.keywords(),
                **self.gradient.keywords(), "relaxation": self.relaxation, "batch_length_cm": self.batch_length_cm,
                "stop_tol": None if conv is None else conv.tol, "stop_window": 20 if conv is None else conv.window,
                "adapt_steps": None if self.adaptation is None else self.adaptation.settings(), **self.target,
                **self.uncertainty.keywords(), "keep": self.keep, **self.warmup.keywords()}


#: The paper's recipe (arXiv 2309.04639): Adam on p / nominal, lr 5e-2 decaying x0.95 per epoch, global-norm clip 1,
#: Soft-DTW on the ADC sequences, 100 cm mini-batches, the smooth relaxation. The defaults of :func:`fit`.
PAPER = Recipe("paper")
#: The self-consistent closure recipe: full-matrix Adam on ln(p / nominal) with eField's step scaled by 0.1 and
#: per-parameter step factors adapted from the trajectory, lr 5e-2 decaying x0.99 per epoch, Soft-DTW divergence
#: on (x, y, t, ADC) with the ADC scale 1.5 counts, the whole sample as one batch, the fully continuous simulator,
#: tran_diff's gradient by central differences in the first 100 iterations (far from the optimum reverse mode
#: cannot see hits appearing at the threshold), the parameters kept in their Table I ranges, the stopping rule.
CLOSURE = Recipe("closure", loss=HitsLoss("sdtw", {"scales": {"adc": 1.5}}),
                 coordinates=Coordinates("log", {"eField": 0.1}, "ranges"),
                 optimiser=Optimiser("adam-full", 5e-2, 0.99, 1.0),
                 gradient=CentralDifferences(("tran_diff",), until=100),
                 adaptation=StepAdaptation.from_settings({"shrink": 0.7, "tstat": 2.0}),
                 convergence=Convergence(2e-3, 20, "log"), relaxation="smooth-continuous", batch_length_cm=1.0e6)
#: Calibration against data (and the data-like closure): the negative log-likelihood of the hits under the
#: expected-noise readout (:mod:`larnd_diff.fit.likelihood`) of the smooth simulator, whose induced charge has
#: larnd-sim's values (its hard pad sampling, z grid and tick phases: any continuous quadrature differs from them by
#: 5-12 % rms per pixel and biases the diffusion, README "Calibration on data"); the loss is therefore a staircase
#: in the diffusion parameters and eField (tick phases) whose reverse-mode gradient is the slope between its jumps,
#: so long_diff and tran_diff take central differences 2 % apart and eField 2e-4 apart (about two of its sigma;
#: benchmarks/gradient_check.py). Two stages (:mod:`larnd_diff.fit.stages`): a warm-up on the ``continuous``
#: forward, which has no staircase: a 4 x 4 grid over the Table I ranges of long_diff and tran_diff (their valley
#: is long and multimodal) picks their start, then 60 iterations (reverse mode, lr 5e-2 x0.99) fit Ab, kb, eField
#: and lifetime with the diffusion held there; then the fit itself, all six from that point at lr 1e-2, returning
#: its best iterate (the loss is the whole sample's, so iterates compare).
#: Full-matrix Adam on ln(p / nominal) (x0.98 per step, adapted step factors; eField's step x0.01 = 1e-4, about
#: its sigma, in the fit, x0.1 in the warm-up, where it travels percents), the Table I box, the stopping rule; the
#: covariance from second differences of the loss 3 % apart, eField's 2e-4 (no gradient: the curvature of the
#: staircase on that scale). A closure's target is made as a detector makes data: the Numba
#: reference at larnd-sim precision with electronics noise, whole events.
DATA = Recipe("data", loss=NoiseLikelihood(), coordinates=Coordinates("log", {"eField": 0.01}, "ranges"),
              optimiser=Optimiser("adam-full", 1e-2, 0.98, None),
              gradient=CentralDifferences(params=("eField", "long_diff", "tran_diff"), step=0.02,
                                          steps=(("eField", 2e-4),)),
              adaptation=StepAdaptation.from_settings({"shrink": 0.7, "tstat": 2.0}),
              convergence=Convergence(1e-3, 10, "log"), relaxation="smooth", batch_length_cm=1.0e6,
              target={"target_simulator": "reference", "target_noise": True, "target_precision": "larnd-sim"},
              uncertainty=HessianUncertainty(step=0.03, method="loss", steps=(("eField", 2e-2),)),
              keep="best", warmup=Warmup(max_iter=60, lr=5e-2, lr_decay=0.99, step_scales=(("eField", 0.1),),
                                         scan=(("long_diff", 4), ("tran_diff", 4)),
                                         params=("Ab", "kb", "eField", "lifetime")))
RECIPES: Dict[str, Recipe] = {"paper": PAPER, "closure": CLOSURE, "data": DATA}
PAPER_RECIPE: Dict[str, Any] = PAPER.keywords()
CLOSURE_RECIPE: Dict[str, Any] = CLOSURE.keywords()

#: Options of the fit itself (not of one part).
FIT_OPTIONS = (
    Option("params", "--params", f"comma-separated parameters to fit (default: {','.join(FIT_PARAMETERS)})",
           parse=parse_names),
    Option("init", "--init", "start values (physical units; default nominal)", parse=parse_assignments,
           metavar="NAME=V,..."),
    Option("batch_length_cm", "--batch-length", "cm of track per mini-batch", parse=float),
    Option("seed", "--seed", "seed of the batching, epoch orders and noise", parse=int),
    Option("callback", "", "callback(record) after every iteration; True stops early"),
)
ALL_OPTIONS = (FIT_OPTIONS + Model.OPTIONS + SimulatedTarget.OPTIONS + HitsLoss.OPTIONS + NoiseLikelihood.OPTIONS
               + Coordinates.OPTIONS
               + Optimiser.OPTIONS + _gradients.OPTIONS + _controllers.OPTIONS + Recorder.OPTIONS
               + Progress.OPTIONS + HessianUncertainty.OPTIONS + Warmup.OPTIONS)
_KEYWORDS = frozenset(o.keyword for o in ALL_OPTIONS)


def _recipe(recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a Recipe")
    return RECIPES[recipe]


def _default_recipe(target) -> str:
    return "data" if isinstance(target, Hits) else "paper"


def build(segments, target, *, recipe=None, **kw) -> Calibrator:
    """A :class:`Calibrator` from a recipe (a name of :data:`RECIPES` or a :class:`Recipe`; None: "data" for a
    :class:`~larnd_diff.hits.Hits` target, "paper" for parameter values) and fit keywords: one stage (:func:`fit`
    runs a recipe's warm-up stage first)."""
    unknown = sorted(set(kw) - _KEYWORDS)
    if unknown:
        raise TypeError(f"unknown fit keyword(s) {unknown}; known: {sorted(_KEYWORDS)}")
    staged = sorted(k for k in Warmup.KEYWORDS if kw.get(k))
    if staged:
        raise TypeError(f"build() makes one stage; {staged} configure the warm-up stage that fit() runs first")
    r = _recipe(_default_recipe(target) if recipe is None else recipe)
    if "loss" in kw and "loss_options" not in kw:
        kw["loss_options"] = {}  # the recipe's loss options belong to the recipe's loss
    settings = {**r.keywords(), **{k: v for k, v in kw.items() if v is not None or k in _NULLABLE}}
    names = list(kw.get("params") or FIT_PARAMETERS)
    check_names(names, "params")
    check_names(list(kw.get("fd_params") or ()), "fd_params")
    fixed = dict(kw.get("fixed") or {})
    check_names(list(fixed), "fixed")
    clash = sorted(set(fixed) & set(names))
    if clash:
        raise ValueError(f"parameter(s) {clash} are both fitted and fixed")
    link = kw.get("link_vdrift")
    model = Model(backend=settings.get("backend", "torch"), dtype=settings.get("dtype", "float64"),
                  device=kw.get("device"), relaxation=settings["relaxation"],
                  link_vdrift=("eField" in names) if link is None else bool(link), fixed=fixed,
                  noise=bool(kw.get("model_noise", False)), simulator=kw.get("simulator"),
                  readout=kw.get("readout"))
    if isinstance(target, Hits):
        tgt = DataTarget(target.numpy())
    elif isinstance(target, Mapping):
        check_names(list(target), "target")
        likelihood = settings["loss"] == NoiseLikelihood.name
        tgt = SimulatedTarget(true_values(target, names), settings["target_simulator"], bool(settings["target_noise"]),
                              settings["target_precision"], None if likelihood else 600)
    else:
        raise TypeError(f"target must be a Hits object (data) or a dict of parameter values, "
                        f"got {type(target).__name__}")
    if settings["loss"] == NoiseLikelihood.name:
        loss = NoiseLikelihood(n_nodes=kw.get("noise_nodes"), **{k: v for k, v in (settings.get("loss_options") or {})
                                                                 .items() if k in ("outlier_probability",)})
    else:
        loss = HitsLoss(settings["loss"], dict(settings.get("loss_options") or {}))
    objective = Objective(segments, tgt, model, loss, batch_length_cm=settings["batch_length_cm"],
                          seed=int(kw.get("seed", 0)))
    coords = Coordinates.from_keywords(r.coordinates, kw)
    optimiser = Optimiser.from_keywords(r.optimiser, kw)
    if settings.get("keep") == "best" and "keep" not in kw and objective.n_batches > 1:
        warnings.warn(f"the {r.name} recipe returns its best iterate only when the whole sample is one batch; this "
                      f"fit has {objective.n_batches} batches and returns its last iterate", UserWarning, stacklevel=3)
        settings["keep"] = "last"
    budget, controllers = controllers_from_keywords(settings, coords.parameterization, optimiser.method)
    uncertainty = HessianUncertainty(settings.get("hessian_batches"), float(settings["hessian_step"]),
                                     float(settings["covariance_scale"]), settings.get("hessian_method", "auto"),
                                     step_pairs(settings.get("hessian_steps"))) if kw.get("hessian", True) else None
    return Calibrator(objective, names, budget=budget, init=kw.get("init"), coordinates=coords, optimiser=optimiser,
                      gradient=gradient_from_keywords(r.gradient, kw), controllers=controllers,
                      recorder=Recorder.from_keywords(kw), progress=Progress(bool(kw.get("progress", True))),
                      uncertainty=uncertainty, callback=kw.get("callback"))


#: Keywords whose None is a value (not "not given"): None switches the feature off.
_NULLABLE = frozenset({"stop_tol", "adapt_steps", "clip_norm", "fd_until", "fd_switch", "bounds", "step_scales",
                       "hessian_batches", "loss_options"})


def fit(segments, target, params=FIT_PARAMETERS, *, recipe=None, **keywords):
    """Fit ``params`` of the simulator to ``target``; returns a :class:`~larnd_diff.fit.result.FitResult`.

    segments   segments table (simulation frame), e.g. after :func:`larnd_diff.selection.select_tracks`.
    target     :class:`~larnd_diff.hits.Hits` (data) or ``{name: true value}`` (a closure: the target is simulated).
    params     names of the parameters to fit (any subset of ``larnd_diff.params.PARAMETERS``).
    recipe     "paper", "closure" (self-consistent closures), "data" or a :class:`Recipe`: the parts used unless
               keywords say otherwise; default "data" for a Hits target, "paper" for parameter values.
    keywords   every part's settings (``larnd-diff fit --help`` lists them with their flags): backend, device,
               dtype, relaxation, link_vdrift, model_noise, fixed, simulator, readout; target_simulator,
               target_noise; loss, loss_options; parameterization, step_scales, bounds; optimizer, lr, lr_decay,
               clip_norm, optimizer_options; fd_params, fd_step, fd_steps, fd_until, fd_switch; max_iter, epochs,
               time_budget_s, stop_tol, stop_window, adapt_steps; checkpoint_dir, checkpoint_every,
               checkpoint_on_error, resume, overwrite, history_path; progress; hessian, hessian_batches, hessian_step,
               hessian_steps, covariance_scale, hessian_method; init, batch_length_cm, seed, callback, keep;
               warmup_iter, warmup_lr, warmup_relaxation, warmup_params, warmup_scan, warmup_scan_at, warmup_starts
               (the warm-up stage, :mod:`larnd_diff.fit.stages`: max_iter and the other keywords then belong to the
               main stage, time_budget_s to both).
    """
    if "checkpoint_dir" in keywords and keywords["checkpoint_dir"] is not None:
        keywords["checkpoint_dir"] = Path(keywords["checkpoint_dir"])
    r = _recipe(_default_recipe(target) if recipe is None else recipe)
    warmup = r.warmup.restricted_to(params).with_keywords(keywords)
    keywords = {k: v for k, v in keywords.items() if k not in Warmup.KEYWORDS}

    def stage(**kw):
        return build(segments, target, recipe=r, **{"params": tuple(params), **kw})

    return run_staged(stage, warmup, keywords) if warmup.enabled else stage(**keywords).run()
