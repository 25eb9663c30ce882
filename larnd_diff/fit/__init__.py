"""Calibration: fit detector parameters by gradient descent so that simulated hits match target hits.

    import larnd_diff as ld
    from larnd_diff.fit import fit
    segs = ld.generate_muons(n_events=20, seed=1)
    res = fit(segs, target={"Ab": 0.85, "lifetime": 3000.0}, params=("Ab", "lifetime"), max_iter=300,
              checkpoint_dir="fit_out")
    res.params, res.relative_error(), res.correlation

A fit is composed of parts, each a small object with its own options (see README, "Architecture"):

=================  ===========================================================================================
objective          :mod:`.objective`: segments in batches of whole tracks, the target (data or simulated), the
                   model (simulator settings) and the loss
coordinates        :mod:`.coordinates`: parameterization, step scales, bounds as one projection
gradient           :mod:`.gradients`: reverse mode; central differences wrapping another estimator
optimiser          :mod:`.optimizer`: the framework's Adam or full-matrix Adam (:mod:`larnd_diff.backends.optim`)
controllers        :mod:`.controllers`: budget, step adaptation, convergence, best iterate
stages             :mod:`.stages`: the warm-up stage (grid scan, a subset of the parameters, another forward)
recorder           :mod:`.recorder`: history, checkpoints (JSON + npz, never pickle), fingerprint, resume
progress           :mod:`.progress`; uncertainty :mod:`.uncertainty` (Hessian -> covariance)
=================  ===========================================================================================

:class:`~.calibrator.Calibrator` composes them and runs the loop; :mod:`.recipes` holds named sets of parts and
the keyword front end :func:`fit`; :mod:`.closure`, :mod:`.plots`, :mod:`.toy` and :mod:`.cli` use them.
:mod:`.data` reads a detector's packets and reconstructs the fit's segments from them (calibration without truth).

``larnd_diff.fit(...)`` calls :func:`fit`: once this package is imported, ``larnd_diff.fit`` is the package, so the
package itself is callable.
"""
import sys
import types
from .calibrator import Calibrator
from .closure import closure, default_sample, random_targets, select
from .controllers import ADAPT_DEFAULTS, BestIterate, Budget, Convergence, StepAdaptation
from .coordinates import Coordinates, resolve_bounds
from .gradients import FD_STEP, CentralDifferences, ReverseMode
from .objective import DataTarget, HitsLoss, Model, Objective, SimulatedTarget, resolve_relaxation
from .optimizer import Optimiser
from .plots import plot_convergence_band, plot_correlation, plot_loss, plot_trajectories
from .progress import Progress
from .likelihood import NoiseLikelihood, match_rows
from .recipes import CLOSURE, CLOSURE_RECIPE, DATA, PAPER, PAPER_RECIPE, RECIPES, Recipe, build, fit
from .recorder import CHECKPOINT_NAME, HISTORY_NAME, Recorder, read_checkpoint, read_history
from .result import FitResult
from .stages import Warmup
from .toy import toy_loss, toy_simulator
from .uncertainty import HessianUncertainty, correlation_from_covariance, covariance_from_hessian

__all__ = ["Calibrator", "closure", "default_sample", "random_targets", "select", "ADAPT_DEFAULTS", "BestIterate",
           "Budget",
           "Convergence", "StepAdaptation", "Coordinates", "resolve_bounds", "FD_STEP", "CentralDifferences",
           "ReverseMode", "DataTarget", "HitsLoss", "Model", "Objective", "SimulatedTarget", "resolve_relaxation",
           "Optimiser", "plot_convergence_band", "plot_correlation", "plot_loss", "plot_trajectories", "Progress",
           "NoiseLikelihood", "match_rows", "CLOSURE", "CLOSURE_RECIPE", "DATA", "PAPER", "PAPER_RECIPE", "RECIPES",
           "Recipe", "build", "fit",
           "CHECKPOINT_NAME", "HISTORY_NAME", "Recorder", "read_checkpoint", "read_history", "FitResult",
           "toy_loss", "toy_simulator", "HessianUncertainty", "correlation_from_covariance",
           "covariance_from_hessian", "Warmup"]


class _CallablePackage(types.ModuleType):
    """``larnd_diff.fit(segments, target, ...)`` = :func:`larnd_diff.fit.recipes.fit` (``import larnd_diff as ld;
    ld.fit(...)`` then works whether or not the package was imported before)."""

    def __call__(self, *args, **kwargs):
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
