"""The fit's optimisers and Hessians, framework-free: the protocol, a host-side full-matrix Adam, two dispatchers.

Each framework's own Adam is a method of its adapter (``Backend.adam``: torch.optim, optax, keras); this module
holds what is the same on every framework:

* :class:`Optimizer`, the protocol of the calibration loop, and the helpers that make an optimiser's state a flat,
  checkpointable ``dict[str, numpy.ndarray]`` (:func:`numeric_entries`, :func:`restore_entries`, :func:`entry`);
* :class:`FullMatrixAdam` (state on the host, any framework with gradients);
* :func:`make_optimizer` and :func:`hessian`, thin dispatchers to the backend (with the finite-difference
  fallback of the Hessian).

The framework Adams add the two things the paper's recipe needs on top of Adam, the same way on each framework:
**global-norm gradient clipping** (``clip_norm``; the paper uses 1) through the framework's own clipping, and
**exponential learning-rate decay per epoch** (``lr * lr_decay ** epoch``; the paper uses 5e-2 and 0.95). Their
exact update rules are therefore the frameworks' (tests/test_fit.py checks each against a hand-computed step):

=========== ================================================ ===================================================
framework   clipping factor for global norm ``n > c``        Adam denominator (eps = 1e-8 everywhere)
=========== ================================================ ===================================================
torch       ``c / (n + 1e-6)``                               ``sqrt(v / (1 - b2^t)) + eps``
jax/optax   ``c / n``                                        ``sqrt(v / (1 - b2^t)) + eps``
tensorflow  ``c / n``                                        ``sqrt(v) + eps`` with lr * sqrt(1 - b2^t)/(1 - b1^t);
                                                             keras keeps the learning rate in float32 and
                                                             rounds b1, b2 to float32 in the bias corrections
=========== ================================================ ===================================================

The parameters are scalars (the fit's normalised parameters, value / nominal) held in the framework's own
containers. ``state()`` returns parameters and optimiser state as a flat mapping of plain-string keys to numeric
NumPy arrays (scalars as 0-d arrays), which round-trips bit-exactly through ``np.savez`` and
``np.load(..., allow_pickle=False)``; ``load_state()`` restores it into an optimiser made with the same settings.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Mapping, Tuple, Union

import numpy as np

from .base import NotSupported

#: Adam's constants (the frameworks' defaults, torch's epsilon for all three).
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-8

__all__ = ["make_optimizer", "Optimizer", "FullMatrixAdam", "TrustRegionBFGS", "METHODS", "hessian", "global_norm",
           "BETA_1", "BETA_2", "EPSILON", "numeric_entries", "restore_entries", "entry"]


def global_norm(grads: Mapping[str, Any]) -> float:
    """sqrt(sum of squares) over all gradient entries (NumPy float, NaN/inf propagate)."""
    return float(math.sqrt(sum(float(np.sum(np.square(np.asarray(g, dtype=np.float64)))) for g in grads.values())))


def _check_settings(lr: float, lr_decay: float, clip_norm: float | None) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")


# ============================================================================================== checkpointable state
_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)


def _is_numeric(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, _SCALARS) for v in value)


def numeric_entries(prefix: str, mapping: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """The numeric entries of a framework's state dict (numbers and lists/tuples of numbers) as arrays under
    ``"<prefix>/<key>"``. Other entries (None, strings) are configuration that the constructor rebuilds."""
    return {f"{prefix}/{k}": np.array(v) for k, v in mapping.items() if _is_numeric(v)}


def _like(template: Any, value: np.ndarray) -> Any:
    """``value`` in the Python type of ``template`` (a number, or a list/tuple of numbers)."""
    if isinstance(template, (list, tuple)):
        items = value.reshape(-1).tolist()
        if len(items) != len(template):
            raise ValueError(f"checkpointed optimiser state has {len(items)} entries where {len(template)} belong")
        return type(template)(type(t)(v) for t, v in zip(template, items))
    return type(template)(value.item())


def restore_entries(prefix: str, template: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """``template`` (the live state dict of an optimiser made with the same settings) with its numeric entries
    replaced by those :func:`numeric_entries` wrote under ``prefix``, in the template's Python types."""
    return {k: (_like(v, entry(state, f"{prefix}/{k}")) if _is_numeric(v) else v) for k, v in template.items()}


def entry(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """``state[key]`` as a NumPy array, or a KeyError that says the checkpoint does not match this optimiser."""
    if key not in state:
        raise KeyError(f"checkpointed optimiser state lacks {key!r}: it was written by another optimiser or with "
                       f"other parameters")
    return np.asarray(state[key])


def _check_flat(state: Dict[str, Any]) -> Dict[str, np.ndarray]:
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf":
            raise TypeError(f"optimiser state entry {k!r} is not a numeric NumPy array")
    return state


# ============================================================================================== protocol
class Optimizer:
    """Adam over named scalar parameters, with per-epoch exponential decay and global-norm clipping.

    ``params()`` gives the current values as raw framework tensors (what ``Backend.value_and_grad`` takes),
    ``values()`` as Python floats; ``step(grads)`` applies one clipped Adam update; ``set_epoch(e)`` sets the
    learning rate to ``lr * lr_decay ** e`` (call it before the first step of every epoch, or after a resume);
    ``clamp(lower, upper)`` projects onto bounds; ``state()`` / ``load_state()`` checkpoint (module docstring).
    """

    backend = "abstract"

    def __init__(self, values: Mapping[str, float], lr: float, lr_decay: float, clip_norm: float | None,
                 dtype: str, device: Any):
        _check_settings(lr, lr_decay, clip_norm)
        self.names = tuple(values)
        self.lr0, self.lr_decay, self.clip_norm, self.dtype, self.device = lr, lr_decay, clip_norm, dtype, device
        self.epoch = 0

    def params(self) -> Dict[str, Any]:
        raise NotImplementedError

    def values(self) -> Dict[str, float]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def step(self, grads: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def clamp(self, lower: Mapping[str, float], upper: Mapping[str, float]) -> None:
        """Project the named parameters onto [lower, upper] (projected Adam: the moments are kept)."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def state(self) -> Dict[str, np.ndarray]:
        """Parameters and optimiser state: plain-string keys, numeric NumPy arrays (copies), scalars 0-d."""
        return _check_flat({**self._save_state(), "epoch": np.array(self.epoch, np.int64)})

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned (also after ``np.savez`` / ``np.load``), bit for bit."""
        self._restore_state(state)
        self.epoch = int(entry(state, "epoch"))

    def _save_state(self) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _ordered(self, grads: Mapping[str, Any]):
        missing = [n for n in self.names if n not in grads]
        if missing:
            raise KeyError(f"gradients missing for {missing}; the optimiser holds {list(self.names)}")
        return [grads[n] for n in self.names]


def raw(x):
    """The raw tensor of an EagerPy tensor; anything else unchanged."""
    return getattr(x, "raw", x)


# ============================================================================================== full-matrix Adam
class FullMatrixAdam(Optimizer):
    """Adam with a full second-moment *matrix* (full-matrix AdaGrad/Adam, Duchi et al. 2011; Agarwal et al.
    2019), for a handful of scalar parameters; the same on every framework (the state lives on the host).

    Diagonal Adam rescales each parameter by its own gradient scale. When one *combination* of parameters
    dominates every gradient (in the detector fit: the overall charge scale, to which Ab, kb, lifetime and
    tran_diff all contribute), each weak parameter's gradient is mostly that combination's, its sign flips with
    it, and the weak parameter hardly moves. Here the second moment is the matrix V = E[g g^T]; the step
    ``lr V^-1/2 m`` whitens the gradient in V's eigenbasis, so every *direction* moves at ~lr, the dominant
    combination and the weak ones alike (a rotation-invariant Adam).

    Per step t (g clipped to global norm ``clip_norm`` first, factor c / n as optax and keras)::

        m = b1 m + (1 - b1) g;   V = b2 V + (1 - b2) g g^T
        m_hat = m / (1 - b1^t);  V_hat = V / (1 - b2^t) = Q diag(lam) Q^T
        x -= lr Q diag(1 / (sqrt(lam) + eps)) Q^T m_hat

    eps = ``EPSILON`` (1e-8) plus ``rel_eps`` (1e-6) x sqrt(max lam) (regularises directions with no gradient
    yet). The learning rate decays per epoch as in the framework optimisers. ``params()`` gives framework
    tensors (what ``Backend.value_and_grad`` takes); the state is NumPy float64, so checkpoints are exact.
    """

    backend = "host"

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device, framework: Any = "torch",
                 rel_eps: float = 1e-6, beta1: float = BETA_1, beta2: float = BETA_2):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        from larnd_diff.ops import get_backend

        self._b = get_backend(framework)
        self.backend = self._b.name
        self.rel_eps = float(rel_eps)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        if not (0 <= self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ValueError(f"need 0 <= beta1 < 1 and 0 < beta2 < 1, got {beta1}, {beta2}")
        n = len(self.names)
        self._x = np.array([float(values[k]) for k in self.names], dtype=np.float64)
        self._factors = np.ones(n)  # per-parameter factors on the whitened step (set_factors)
        self._m = np.zeros(n)
        self._v = np.zeros((n, n))
        self._t = 0
        self._lr = float(lr)

    def params(self):
        return {k: self._b.raw_asarray(float(v), self.dtype, self.device) for k, v in zip(self.names, self._x)}

    def values(self):
        return {k: float(v) for k, v in zip(self.names, self._x)}

    @property
    def lr(self):
        return self._lr

    def set_epoch(self, epoch):
        self._lr = self.lr0 * self.lr_decay ** epoch
        self.epoch = epoch

    def factors(self) -> Dict[str, float]:
        """Per-parameter factors on the step (1 = plain full-matrix Adam)."""
        return {k: float(v) for k, v in zip(self.names, self._factors)}

    def set_factors(self, factors: Mapping[str, float]) -> None:
        """Multiply parameter k's component of every later step by ``factors[k]`` (after the whitening)."""
        for k, v in factors.items():
            if not float(v) > 0:
                raise ValueError(f"step factor of {k} must be > 0, got {v}")
            self._factors[self.names.index(k)] = float(v)

    def direction(self) -> np.ndarray:
        """The current preconditioned step direction V_hat^-1/2 m_hat (before the learning rate)."""
        if self._t == 0:
            return np.zeros_like(self._x)
        m_hat = self._m / (1 - self.beta1 ** self._t)
        v_hat = self._v / (1 - self.beta2 ** self._t)
        lam, q = np.linalg.eigh(0.5 * (v_hat + v_hat.T))
        lam = np.maximum(lam, 0.0)
        root = np.sqrt(lam)
        inv = 1.0 / (root + EPSILON + self.rel_eps * float(root.max()))
        return q @ (inv * (q.T @ m_hat))

    def step(self, grads):
        g = np.array([float(np.asarray(self._b.to_numpy(raw(v)) if not isinstance(v, (int, float)) else v)
                            .reshape(())) for v in self._ordered(grads)], dtype=np.float64)
        if self.clip_norm is not None:
            norm = float(np.sqrt(np.sum(g * g)))
            if norm > self.clip_norm:
                g = g * (self.clip_norm / norm)
        self._t += 1
        self._m = self.beta1 * self._m + (1 - self.beta1) * g
        self._v = self.beta2 * self._v + (1 - self.beta2) * np.outer(g, g)
        self._x = self._x - self._lr * self._factors * self.direction()

    def clamp(self, lower, upper):
        for n in lower:
            i = self.names.index(n)
            self._x[i] = min(max(self._x[i], float(lower[n])), float(upper[n]))

    def _save_state(self):
        return {"values": self._x.copy(), "m": self._m.copy(), "v": self._v.copy(), "t": np.array(self._t, np.int64),
                "lr": np.array(self._lr, np.float64), "factors": self._factors.copy()}

    def _restore_state(self, state):
        n = len(self.names)
        parts = {k: np.array(entry(state, k), dtype=np.float64) for k in ("values", "m", "v", "factors")}
        if parts["values"].shape != (n,) or parts["v"].shape != (n, n):
            raise ValueError(f"checkpointed full-matrix Adam state is for {parts['values'].size} parameters, "
                             f"this optimiser holds {n}")
        self._x, self._m, self._v, self._factors = parts["values"], parts["m"], parts["v"], parts["factors"]
        self._t, self._lr = int(entry(state, "t")), float(entry(state, "lr"))


# ============================================================================================== trust-region BFGS
class TrustRegionBFGS(Optimizer):
    """Quasi-Newton steps for a smooth, deterministic loss of a handful of parameters (a likelihood evaluated on
    the whole sample each iteration): the BFGS inverse-Hessian estimate from successive gradients, steps limited
    to a trust radius that grows while the loss falls as predicted and shrinks when it does not (Nocedal & Wright,
    Numerical Optimization, ch. 4 and 6). Written here because the fit's loop evaluates one point per iteration
    and checkpoints between them, which the closed loops of scipy.optimize do not allow.

    ``step(grads, loss)`` needs the loss at the point the gradient belongs to: a point whose loss is above the best
    one is rejected (the next step starts again from the best point, with a quarter of the radius); its gradient
    still updates the curvature. A loss that is not smooth at the scale of the steps (jumps from
    discretisation) defeats the trust-region test: use Adam there. ``lr`` is the largest radius (in the
    coordinates), decaying per epoch like the other optimisers' learning rates; the first step goes ``lr`` down
    the gradient. ``values()`` is the point to evaluate next.
    """

    backend = "host"
    needs_loss = True

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device, framework: Any = "torch"):
        super().__init__(values, lr, lr_decay, None, dtype, device)
        from larnd_diff.ops import get_backend

        self._b = get_backend(framework)
        self.backend = self._b.name
        n = len(self.names)
        self._x = np.array([float(values[k]) for k in self.names], dtype=np.float64)
        self._best_x, self._best_g = self._x.copy(), np.zeros(n)
        self._best_f = np.inf
        self._h = np.full((n, n), np.nan)      # inverse-Hessian estimate; NaN until the first curvature pair
        self._radius = float(lr)
        self._predicted = 0.0                  # the model's loss decrease for the step from the best point
        self._t = 0
        self._lr = float(lr)

    def params(self):
        return {k: self._b.raw_asarray(float(v), self.dtype, self.device) for k, v in zip(self.names, self._x)}

    def values(self):
        return {k: float(v) for k, v in zip(self.names, self._x)}

    @property
    def lr(self):
        return self._lr

    def set_epoch(self, epoch):
        self._lr = self.lr0 * self.lr_decay ** epoch
        self._radius = min(self._radius, self._lr)
        self.epoch = epoch

    def step(self, grads, loss=None):
        if loss is None or not np.isfinite(loss):
            raise ValueError("the trust-region BFGS step needs the finite loss of the point its gradient belongs to")
        g = np.array([float(np.asarray(self._b.to_numpy(raw(v)) if not isinstance(v, (int, float)) else v)
                            .reshape(())) for v in self._ordered(grads)], dtype=np.float64)
        if self._t > 0:
            self._learn_curvature(self._x - self._best_x, g - self._best_g)
            ratio = (self._best_f - loss) / self._predicted if self._predicted > 0 else -1.0
            length = float(np.linalg.norm(self._x - self._best_x))
            if ratio < 0.25:
                self._radius = 0.25 * length
            elif ratio > 0.75 and length > 0.9 * self._radius:
                self._radius = min(2.0 * self._radius, self._lr)
        if loss <= self._best_f:
            self._best_x, self._best_f, self._best_g = self._x.copy(), float(loss), g
        self._t += 1
        self._x = self._best_x + self._proposal()

    def _learn_curvature(self, s, y):
        sy = float(s @ y)
        if not sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            return  # no positive curvature along s (noise or a non-convex patch): keep the estimate
        if np.isnan(self._h).any():
            self._h = np.eye(len(s)) * (sy / float(y @ y))
        rho = 1.0 / sy
        v = np.eye(len(s)) - rho * np.outer(s, y)
        self._h = v @ self._h @ v.T + rho * np.outer(s, s)

    def _proposal(self) -> np.ndarray:
        g = self._best_g
        if np.isnan(self._h).any():
            p = -g * (self._radius / max(float(np.linalg.norm(g)), 1e-300))
            self._predicted = float(-(g @ p))
            return p
        p = -(self._h @ g)
        norm = float(np.linalg.norm(p))
        if norm > self._radius:
            p *= self._radius / norm
        b = np.linalg.pinv(self._h, hermitian=True)
        self._predicted = float(-(g @ p) - 0.5 * p @ b @ p)
        return p

    def clamp(self, lower, upper):
        for n in lower:
            i = self.names.index(n)
            self._x[i] = min(max(self._x[i], float(lower[n])), float(upper[n]))

    def _save_state(self):
        return {"values": self._x.copy(), "best_x": self._best_x.copy(), "best_g": self._best_g.copy(),
                "best_f": np.array(self._best_f, np.float64), "h": self._h.copy(),
                "radius": np.array(self._radius, np.float64), "predicted": np.array(self._predicted, np.float64),
                "t": np.array(self._t, np.int64), "lr": np.array(self._lr, np.float64)}

    def _restore_state(self, state):
        n = len(self.names)
        self._x = np.array(entry(state, "values"), np.float64)
        if self._x.shape != (n,):
            raise ValueError(f"checkpointed BFGS state is for {self._x.size} parameters, this optimiser holds {n}")
        self._best_x, self._best_g = np.array(entry(state, "best_x"), np.float64), np.array(entry(state, "best_g"),
                                                                                             np.float64)
        self._h = np.array(entry(state, "h"), np.float64)
        self._best_f, self._radius = float(entry(state, "best_f")), float(entry(state, "radius"))
        self._predicted, self._lr = float(entry(state, "predicted")), float(entry(state, "lr"))
        self._t = int(entry(state, "t"))


# ============================================================================================== dispatchers
#: Optimiser methods of :func:`make_optimizer`.
METHODS = ("adam", "adam-full", "bfgs")


def _gradient_backend(backend: Any, why: str):
    from larnd_diff.ops import get_backend

    b = get_backend(backend)
    if not b.supports("grad"):
        raise NotSupported(b.name, "grad", f"it is forward-only, and {why}", b._alternatives("grad"))
    return b


def make_optimizer(backend: Any, values: Mapping[str, float], *, lr: float = 5e-2, lr_decay: float = 0.95,
                   clip_norm: float | None = 1.0, dtype: str = "float64", device: Any = None,
                   method: str = "adam", **options) -> Optimizer:
    """An optimiser over the named scalar ``values``: ``method="adam"`` the framework's own Adam
    (``Backend.adam``; see the module docstring for the exact rules), ``"adam-full"`` :class:`FullMatrixAdam`
    (host state, any framework with gradients; ``options``: its beta1, beta2, rel_eps), ``"bfgs"``
    :class:`TrustRegionBFGS` (host state; its ``step`` takes the loss too). ``backend``: a name or a Backend."""
    b = _gradient_backend(backend, "fitting needs gradients")
    if method == "adam-full":
        return FullMatrixAdam(dict(values), lr, lr_decay, clip_norm, dtype, device, framework=b, **options)
    if method == "bfgs":
        return TrustRegionBFGS(dict(values), lr, lr_decay, clip_norm, dtype, device, framework=b, **options)
    if method != "adam":
        raise ValueError(f"unknown optimiser method {method!r}; choose one of {METHODS}")
    if options:
        raise TypeError(f"the framework Adam takes no options {sorted(options)} (its betas are the paper's)")
    return b.adam(dict(values), lr=lr, lr_decay=lr_decay, clip_norm=clip_norm, dtype=dtype, device=device)


def _hessian_fd(b, f, names, x0, dtype, device, step):
    """Central differences of reverse-mode gradients: column j = (g(x + h_j e_j) - g(x - h_j e_j)) / 2h_j
    (``step``: the h_j, one per name)."""
    def grad_at(x):
        params = {n: b.raw_asarray(x[i], dtype, device) for i, n in enumerate(names)}
        _, grads = b.value_and_grad(lambda p: f({n: raw(p[n]) for n in names}), params)
        return np.array([float(b.to_numpy(grads[n])) for n in names])

    n = len(names)
    h = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = step[j]
        h[:, j] = (grad_at(x0 + e) - grad_at(x0 - e)) / (2 * step[j])
    return h


def _hessian_loss(b, f, names, x0, dtype, device, step):
    """Central second differences of the value of ``f`` alone (1 + 2n + 2n(n - 1) forward passes): the curvature
    on the scale ``step`` (one per name), for a loss whose gradient is not its slope on that scale (jumps finer
    than it)."""
    def value_at(x):
        return float(b.to_numpy(f({n: b.raw_asarray(x[i], dtype, device) for i, n in enumerate(names)})))

    n = len(names)
    f0 = value_at(x0)
    e = np.diag(step)
    h = np.zeros((n, n))
    for i in range(n):
        h[i, i] = (value_at(x0 + e[i]) - 2 * f0 + value_at(x0 - e[i])) / step[i] ** 2
        for j in range(i):
            h[i, j] = h[j, i] = (value_at(x0 + e[i] + e[j]) - value_at(x0 + e[i] - e[j])
                                 - value_at(x0 - e[i] + e[j]) + value_at(x0 - e[i] - e[j])) / (4 * step[i] * step[j])
    return h


def hessian(backend: Any, f: Callable[[Dict[str, Any]], Any], values: Mapping[str, float], *,
            method: str = "auto", step: Union[float, Mapping[str, float]] = 1e-3, dtype: str = "float64",
            device: Any = None) -> Tuple[np.ndarray, str]:
    """Hessian of the scalar ``f({name: raw scalar tensor})`` at ``values``; returns ``(H, method_used)``.

    ``method``: "fwd_over_rev" (``Backend.hessian``: a jvp of the gradient, exact to rounding), "fd" (central
    differences of gradients with step ``step`` in the parameters' units; O(step^2) truncation error), or "auto"
    (forward-over-reverse, falling back to "fd" when the backend has none or cannot push tangents through ``f``:
    e.g. a simulator step that leaves autodiff for NumPy, or data-dependent shapes under jax tracing), or "loss"
    (central second differences of the value alone, step ``step``: no gradient used); ``step`` is one number or a
    mapping name -> step (names it lacks take 1e-3). The result is symmetrised,
    (H + H^T) / 2, which for "fwd_over_rev" only removes rounding noise.
    """
    if method not in ("auto", "fwd_over_rev", "fd", "loss"):
        raise ValueError(f"method must be 'auto', 'fwd_over_rev', 'fd' or 'loss', got {method!r}")
    b = _gradient_backend(backend, "the Hessian needs derivatives")
    names = list(values)
    x0 = np.array([float(values[n]) for n in names], dtype=np.float64)
    steps = np.array([float(step.get(n, 1e-3)) if isinstance(step, Mapping) else float(step) for n in names])
    if method == "fwd_over_rev" or (method == "auto" and b.implements("hessian")):
        try:
            h = b.hessian(f, names, x0, dtype, device)
            return (h + h.T) / 2, "fwd_over_rev"
        except Exception as exc:
            if method == "fwd_over_rev":
                raise
            warnings.warn(f"forward-over-reverse Hessian failed on {b.name} ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); using finite differences of gradients", RuntimeWarning,
                          stacklevel=2)
    if method == "loss":
        return _hessian_loss(b, f, names, x0, dtype, device, steps), "loss"
    h = _hessian_fd(b, f, names, x0, dtype, device, steps)
    return (h + h.T) / 2, "fd"
