"""The progress meter of a fit: a tqdm bar with the loss and the largest relative parameter deviation (from the
target in a closure, from the start otherwise)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .options import Option

__all__ = ["Progress", "max_relative"]


def max_relative(values: Mapping[str, float], reference: Mapping[str, float], names: Sequence[str]) -> float:
    """max over ``names`` of |value - reference| / |reference|."""
    return max(abs(values[n] - reference[n]) / abs(reference[n]) for n in names)


@dataclass(frozen=True)
class Progress:
    enabled: bool = True

    OPTIONS = (Option("progress", "-q", "no progress bar", action="store_true", negate=True),)

    def bar(self, total: int, initial: int, desc: str):
        if not self.enabled:
            return _Silent()
        from tqdm.auto import tqdm

        return _Bar(tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True))


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, record, reference, names, closure: bool) -> None:
        pass


class _Bar(_Silent):
    def __init__(self, bar):
        self._bar = bar

    def __exit__(self, *exc):
        self._bar.close()
        return False

    def update(self, record, reference: Optional[Mapping[str, float]], names, closure: bool) -> None:
        key = "max_rel_err" if closure else "max_rel_dev_init"
        loss = record["loss"]
        self._bar.set_postfix({"loss": "nan" if loss is None else f"{loss:.4g}",
                               key: f"{max_relative(record['params'], reference, names):.2%}"}, refresh=False)
        self._bar.update(1)
