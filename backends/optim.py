"""Optimizer and second-derivative glue for the calibration loop, one small class per framework.

Every fit optimiser here is the framework's own, maintained Adam; this module only adds the two things the
paper's recipe needs on top of it, the same way on each framework:

* **global-norm gradient clipping** (``clip_norm``; the paper uses 1) through the framework's own clipping:
  ``torch.nn.utils.clip_grad_norm_``, ``optax.clip_by_global_norm``, keras' ``global_clipnorm``;
* **exponential learning-rate decay per epoch** (``lr * lr_decay ** epoch``; the paper uses 5e-2 and 0.95)
  through ``torch.optim.lr_scheduler.ExponentialLR``, ``optax.inject_hyperparams`` (the learning rate is a
  hyper-parameter in the optimiser state) and the keras optimiser's learning-rate variable.

The exact update rules therefore are the frameworks' (tests/test_fit.py checks each against a hand-computed
step):

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
containers (leaf tensors, a pytree, ``tf.Variable``). ``state()`` returns a picklable snapshot (parameters and
optimiser state, bit-exact) and ``load_state()`` restores it, which is what checkpoint/resume needs.
NumPy has no autodiff, so :func:`make_optimizer` raises ``NotSupported`` for it.

:func:`hessian` gives the Hessian of a scalar function of the parameters: forward-over-reverse (a jvp of the
gradient, one pass per parameter: ``torch.func.jvp(torch.func.grad)``, ``jax.jvp(jax.grad)``,
``tf.autodiff.ForwardAccumulator`` around a ``GradientTape``) where that works through the function, else central
finite differences of reverse-mode gradients (``method`` tells which was used).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np

from .base import NotSupported

#: Adam's constants (the frameworks' defaults, torch's epsilon for all three).
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-8

__all__ = ["make_optimizer", "Optimizer", "FullMatrixAdam", "METHODS", "hessian", "global_norm", "BETA_1", "BETA_2",
           "EPSILON"]


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


class Optimizer:
    """Adam over named scalar parameters, with per-epoch exponential decay and global-norm clipping.

    ``params()`` gives the current values as raw framework tensors (what ``Backend.value_and_grad`` takes),
    ``values()`` as Python floats; ``step(grads)`` applies one clipped Adam update; ``set_epoch(e)`` sets the
    learning rate to ``lr * lr_decay ** e`` (call it before the first step of every epoch, or after a resume).
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

    def state(self) -> Dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _ordered(self, grads: Mapping[str, Any]):
        missing = [n for n in self.names if n not in grads]
        if missing:
            raise KeyError(f"gradients missing for {missing}; the optimiser holds {list(self.names)}")
        return [grads[n] for n in self.names]


def _raw(x):
    return getattr(x, "raw", x)


# ============================================================================================== torch
class _TorchAdam(Optimizer):
    backend = "torch"

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        import torch

        self._torch = torch
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self._tensors = {n: torch.tensor(float(v), dtype=getattr(torch, dtype), device=dev)
                         for n, v in values.items()}
        # foreach=False: the plain per-tensor loop (deterministic and identical on every device)
        self._opt = torch.optim.Adam(list(self._tensors.values()), lr=lr, betas=(BETA_1, BETA_2), eps=EPSILON,
                                     foreach=False)
        self._sched = torch.optim.lr_scheduler.ExponentialLR(self._opt, gamma=lr_decay)

    def params(self):
        return dict(self._tensors)

    def values(self):
        return {n: float(t.item()) for n, t in self._tensors.items()}

    @property
    def lr(self):
        return float(self._opt.param_groups[0]["lr"])

    def set_epoch(self, epoch):
        if epoch < self._sched.last_epoch:
            raise ValueError(f"cannot go back from epoch {self._sched.last_epoch} to {epoch}")
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended at epoch 0
            warnings.simplefilter("ignore", UserWarning)
            while self._sched.last_epoch < epoch:
                self._sched.step()
        self.epoch = epoch

    def step(self, grads):
        torch = self._torch
        params = list(self._tensors.values())
        for p, g in zip(params, self._ordered(grads)):
            p.grad = torch.as_tensor(_raw(g), dtype=p.dtype, device=p.device).detach().reshape(p.shape).clone()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm, foreach=False)
        self._opt.step()
        for p in params:
            p.grad = None

    def clamp(self, lower, upper):
        with self._torch.no_grad():
            for n in lower:
                self._tensors[n].clamp_(float(lower[n]), float(upper[n]))

    def state(self):
        return {"values": {n: t.detach().cpu().clone() for n, t in self._tensors.items()},
                # deep copies: state_dict() shares the live moment tensors, which later steps update in place
                "optimizer": copy.deepcopy(self._opt.state_dict()),
                "scheduler": copy.deepcopy(self._sched.state_dict()), "epoch": self.epoch}

    def load_state(self, state):
        with self._torch.no_grad():
            for n, t in self._tensors.items():
                t.copy_(state["values"][n])
        self._opt.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._sched.load_state_dict(copy.deepcopy(state["scheduler"]))
        self.epoch = state["epoch"]


# ============================================================================================== jax
class _OptaxAdam(Optimizer):
    backend = "jax"

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        import jax
        import jax.numpy as jnp
        import optax

        from larnd_diff.ops import get_backend

        self._jax, self._jnp = jax, jnp
        b = get_backend("jax")  # turns on jax_enable_x64 when float64 is asked for
        self._params = {n: b.raw_asarray(float(v), dtype, device) for n, v in values.items()}
        adam = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=BETA_1, b2=BETA_2, eps=EPSILON)
        parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []) + [adam]
        self._tx = optax.chain(*parts)
        self._state = self._tx.init(self._params)
        self._set_lr(lr)

    def _hyper(self, state=None):
        return (state or self._state)[-1].hyperparams

    def _set_lr(self, value: float) -> None:
        hp = self._hyper()
        hp["learning_rate"] = self._jnp.asarray(value, dtype=hp["learning_rate"].dtype)

    def params(self):
        return dict(self._params)

    def values(self):
        return {n: float(v) for n, v in self._params.items()}

    @property
    def lr(self):
        return float(self._hyper()["learning_rate"])

    def set_epoch(self, epoch):
        self._set_lr(self.lr0 * self.lr_decay ** epoch)
        self.epoch = epoch

    def step(self, grads):
        import optax

        g = {n: self._jnp.asarray(_raw(v), dtype=self._params[n].dtype).reshape(self._params[n].shape)
             for n, v in zip(self.names, self._ordered(grads))}
        updates, self._state = self._tx.update(g, self._state, self._params)
        self._params = optax.apply_updates(self._params, updates)

    def clamp(self, lower, upper):
        for n in lower:
            self._params[n] = self._jnp.clip(self._params[n], float(lower[n]), float(upper[n]))

    def state(self):
        to_np = lambda t: self._jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
        return {"values": to_np(self._params), "optimizer": to_np(self._state), "epoch": self.epoch}

    def load_state(self, state):
        to_jnp = lambda t: self._jax.tree_util.tree_map(self._jnp.asarray, t)  # noqa: E731
        self._params = to_jnp(dict(state["values"]))
        self._state = to_jnp(state["optimizer"])
        self.epoch = state["epoch"]


# ============================================================================================== tensorflow
class _KerasAdam(Optimizer):
    backend = "tensorflow"

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device):
        super().__init__(values, lr, lr_decay, clip_norm, dtype, device)
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"the tensorflow fit backend needs keras on its tensorflow backend, but "
                               f"KERAS_BACKEND is {keras.backend.backend()!r}; unset it or set it to 'tensorflow'")
        self._tf = tf
        with tf.device(device) if device is not None else _null():
            self._vars = {n: tf.Variable(np.asarray(float(v), dtype=dtype), name=f"fit_{n}")
                          for n, v in values.items()}
        self._opt = keras.optimizers.Adam(learning_rate=lr, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                                          global_clipnorm=clip_norm)
        self._opt.build(list(self._vars.values()))

    def params(self):
        return {n: v.read_value() for n, v in self._vars.items()}

    def values(self):
        return {n: float(v.numpy()) for n, v in self._vars.items()}

    @property
    def lr(self):
        return float(np.asarray(self._opt.learning_rate))

    def set_epoch(self, epoch):
        self._opt.learning_rate = self.lr0 * self.lr_decay ** epoch
        self.epoch = epoch

    def step(self, grads):
        tf = self._tf
        pairs = [(tf.reshape(tf.cast(_raw(g), v.dtype), v.shape), v)
                 for v, g in zip(self._vars.values(), self._ordered(grads))]
        self._opt.apply_gradients(pairs)

    def clamp(self, lower, upper):
        for n in lower:
            v = self._vars[n]
            v.assign(self._tf.clip_by_value(v, float(lower[n]), float(upper[n])))

    def state(self):
        return {"values": {n: v.numpy() for n, v in self._vars.items()},
                "optimizer": [np.asarray(v.numpy()) for v in self._opt.variables], "epoch": self.epoch}

    def load_state(self, state):
        for n, v in self._vars.items():
            v.assign(state["values"][n])
        if len(state["optimizer"]) != len(self._opt.variables):
            raise ValueError("checkpointed keras optimiser state does not match this optimiser's variables")
        for var, value in zip(self._opt.variables, state["optimizer"]):
            var.assign(value)
        self.epoch = state["epoch"]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_OPTIMIZERS = {"torch": _TorchAdam, "jax": _OptaxAdam, "tensorflow": _KerasAdam}


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

    def __init__(self, values, lr, lr_decay, clip_norm, dtype, device, framework: str = "torch",
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
        g = np.array([float(np.asarray(self._b.to_numpy(_raw(v)) if not isinstance(v, (int, float)) else v)
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

    def state(self):
        return {"values": self._x.copy(), "m": self._m.copy(), "v": self._v.copy(), "t": self._t,
                "lr": self._lr, "epoch": self.epoch, "factors": self._factors.copy()}

    def load_state(self, state):
        self._x = np.array(state["values"], dtype=np.float64)
        self._m = np.array(state["m"], dtype=np.float64)
        self._v = np.array(state["v"], dtype=np.float64)
        self._t, self._lr, self.epoch = int(state["t"]), float(state["lr"]), int(state["epoch"])
        self._factors = np.array(state.get("factors", np.ones(len(self.names))), dtype=np.float64)


#: Optimiser methods of :func:`make_optimizer`.
METHODS = ("adam", "adam-full")


def make_optimizer(backend: str, values: Mapping[str, float], *, lr: float = 5e-2, lr_decay: float = 0.95,
                   clip_norm: float | None = 1.0, dtype: str = "float64", device: Any = None,
                   method: str = "adam", **options) -> Optimizer:
    """An optimiser over the named scalar ``values``: ``method="adam"`` the framework's own Adam (see the
    module docstring for the exact rules), ``"adam-full"`` :class:`FullMatrixAdam` (host state, any framework;
    ``options``: its beta1, beta2, rel_eps)."""
    name = getattr(backend, "name", backend)
    name = {"pytorch": "torch", "tf": "tensorflow", "np": "numpy"}.get(name, name)
    if name == "numpy":
        raise NotSupported("numpy", "grad", "fitting needs gradients and NumPy is forward-only",
                           ["torch", "jax", "tensorflow"])
    if name not in _OPTIMIZERS:
        raise ValueError(f"no fit optimiser for backend {name!r}; available: {sorted(_OPTIMIZERS)}")
    if method == "adam-full":
        return FullMatrixAdam(dict(values), lr, lr_decay, clip_norm, dtype, device, framework=name, **options)
    if method != "adam":
        raise ValueError(f"unknown optimiser method {method!r}; choose one of {METHODS}")
    if options:
        raise TypeError(f"the framework Adam takes no options {sorted(options)} (its betas are the paper's)")
    return _OPTIMIZERS[name](dict(values), lr, lr_decay, clip_norm, dtype, device)


# ============================================================================================== Hessian
def _hessian_torch(f, names, x0, dtype, device):
    import torch
    from torch.func import grad, jvp

    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.tensor(x0, dtype=getattr(torch, dtype), device=dev)

    def flat(v):
        return _raw(f({n: v[i] for i, n in enumerate(names)})).reshape(())

    g = grad(flat)
    cols = [jvp(g, (x,), (torch.eye(len(names), dtype=x.dtype, device=dev)[j],))[1] for j in range(len(names))]
    return torch.stack(cols, 1).detach().cpu().numpy()


def _hessian_jax(f, names, x0, dtype, device):
    import jax
    import jax.numpy as jnp

    from larnd_diff.ops import get_backend

    x = get_backend("jax").raw_asarray(np.asarray(x0), dtype, device)

    def flat(v):
        return jnp.reshape(_raw(f({n: v[i] for i, n in enumerate(names)})), ())

    g = jax.grad(flat)
    eye = jnp.eye(len(names), dtype=x.dtype)
    cols = [jax.jvp(g, (x,), (eye[j],))[1] for j in range(len(names))]
    return np.asarray(jnp.stack(cols, 1))


def _hessian_tf(f, names, x0, dtype, device):
    import tensorflow as tf

    x = tf.constant(np.asarray(x0, dtype=dtype))
    eye = np.eye(len(names), dtype=dtype)
    cols = []
    for j in range(len(names)):
        with tf.autodiff.ForwardAccumulator(x, tf.constant(eye[j])) as acc:
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = tf.reshape(_raw(f({n: x[i] for i, n in enumerate(names)})), ())
            g = tape.gradient(value, x)
        cols.append(acc.jvp(g, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    return tf.stack(cols, 1).numpy()


_FWD_OVER_REV = {"torch": _hessian_torch, "jax": _hessian_jax, "tensorflow": _hessian_tf}


def _hessian_fd(backend, f, names, x0, dtype, device, step):
    """Central differences of reverse-mode gradients: column j = (g(x + h e_j) - g(x - h e_j)) / 2h."""
    from larnd_diff.ops import get_backend

    b = get_backend(backend)

    def grad_at(x):
        params = {n: b.raw_asarray(x[i], dtype, device) for i, n in enumerate(names)}
        _, grads = b.value_and_grad(lambda p: f({n: _raw(p[n]) for n in names}), params)
        return np.array([float(b.to_numpy(grads[n])) for n in names])

    n = len(names)
    h = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = step
        h[:, j] = (grad_at(x0 + e) - grad_at(x0 - e)) / (2 * step)
    return h


def hessian(backend: str, f: Callable[[Dict[str, Any]], Any], values: Mapping[str, float], *,
            method: str = "auto", step: float = 1e-3, dtype: str = "float64", device: Any = None
            ) -> Tuple[np.ndarray, str]:
    """Hessian of the scalar ``f({name: raw scalar tensor})`` at ``values``; returns ``(H, method_used)``.

    ``method``: "fwd_over_rev" (jvp of the gradient, exact to rounding), "fd" (central differences of
    gradients with step ``step`` in the parameters' units; O(step^2) truncation error), or "auto" (forward-over-
    reverse, falling back to "fd" when the framework cannot push tangents through ``f``: e.g. a simulator step
    that leaves autodiff for NumPy, or data-dependent shapes under jax tracing). The result is symmetrised,
    (H + H^T) / 2, which for "fwd_over_rev" only removes rounding noise.
    """
    name = getattr(backend, "name", backend)
    if method not in ("auto", "fwd_over_rev", "fd"):
        raise ValueError(f"method must be 'auto', 'fwd_over_rev' or 'fd', got {method!r}")
    if name == "numpy":
        raise NotSupported("numpy", "grad", "the Hessian needs derivatives and NumPy is forward-only",
                           ["torch", "jax", "tensorflow"])
    names = list(values)
    x0 = np.array([float(values[n]) for n in names], dtype=np.float64)
    if method in ("auto", "fwd_over_rev") and name in _FWD_OVER_REV:
        try:
            h = _FWD_OVER_REV[name](f, names, x0, dtype, device)
            return (h + h.T) / 2, "fwd_over_rev"
        except Exception as exc:
            if method == "fwd_over_rev":
                raise
            warnings.warn(f"forward-over-reverse Hessian failed on {name} ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); using finite differences of gradients", RuntimeWarning,
                          stacklevel=2)
    h = _hessian_fd(name, f, names, x0, dtype, device, step)
    return (h + h.T) / 2, "fd"
