"""The optimiser of the fit: which one and its hyper-parameters; the update rule itself is the framework's own
Adam or the host-side full-matrix Adam of :mod:`larnd_diff.backends.optim` (NaN steps are skipped and the box
projection applied by the calibrator, the same for every optimiser)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .options import Option, zero_is_none

__all__ = ["Optimiser"]


@dataclass(frozen=True)
class Optimiser:
    """``method`` "adam" (the framework's Adam, the paper's), "adam-full" (full-matrix Adam,
    :class:`larnd_diff.backends.optim.FullMatrixAdam`) or "bfgs" (trust-region quasi-Newton,
    :class:`larnd_diff.backends.optim.TrustRegionBFGS`: ``lr`` is its largest step); learning rate ``lr``
    decaying by ``lr_decay`` per epoch; global gradient-norm clip ``clip_norm`` (None = off); ``options`` of
    adam-full (beta1, beta2, rel_eps)."""

    method: str = "adam"
    lr: float = 5e-2
    lr_decay: float = 0.95
    clip_norm: Optional[float] = 1.0
    options: Mapping[str, float] = field(default_factory=dict)

    OPTIONS = (
        Option("optimizer", "--optimizer", "adam = the framework's Adam; adam-full = full-matrix Adam; bfgs = "
               "trust-region quasi-Newton (a deterministic loss: the whole sample per step)",
               choices=("adam", "adam-full", "bfgs")),
        Option("lr", "--lr", "learning rate", parse=float),
        Option("lr_decay", "--lr-decay", "learning-rate factor per epoch", parse=float),
        Option("clip_norm", "--clip-norm", "global gradient-norm clip (0 = off)", parse=zero_is_none(float)),
        Option("optimizer_options", "", "adam-full's beta1, beta2, rel_eps"),
    )

    @classmethod
    def from_keywords(cls, base: Optional["Optimiser"], kw: Mapping[str, Any]) -> "Optimiser":
        base = base or cls()
        clip = kw.get("clip_norm", base.clip_norm)
        return cls(method=kw.get("optimizer", base.method), lr=float(kw.get("lr", base.lr)),
                   lr_decay=float(kw.get("lr_decay", base.lr_decay)), clip_norm=clip or None,
                   options=dict(kw.get("optimizer_options", base.options) or {}))

    def keywords(self) -> dict:
        return {"optimizer": self.method, "lr": self.lr, "lr_decay": self.lr_decay, "clip_norm": self.clip_norm,
                "optimizer_options": dict(self.options)}

    def make(self, backend_name: str, start: Mapping[str, float], dtype: str, device):
        """A fresh optimiser over the coordinates ``start``."""
        from ..backends.optim import make_optimizer

        return make_optimizer(backend_name, dict(start), lr=self.lr, lr_decay=self.lr_decay, clip_norm=self.clip_norm,
                              dtype=dtype, device=device, method=self.method, **dict(self.options))
