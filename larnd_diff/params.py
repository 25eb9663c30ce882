"""The physical parameters of the simulation: one table, one immutable container.

Every parameter appears exactly once in :data:`PARAMETERS` with its nominal value, the physical range used for
random closure targets (the paper's Table I, larnd-sim ``optimize/ranges.py``), its unit and a one-line doc.
:class:`Params` holds one value per parameter; a value may be a Python float or a tensor of any backend (the
differentiable simulator puts framework tensors here), so the functions in this module use plain arithmetic only.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterator, Mapping


@dataclass(frozen=True)
class ParamSpec:
    name: str
    nominal: float
    low: float
    high: float
    unit: str
    doc: str


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("Ab", 0.8, 0.78, 0.88, "", "Birks recombination constant A_B"),
    ParamSpec("kb", 0.0486, 0.04, 0.07, "(kV/cm)(g/cm^2)/MeV", "Birks recombination constant k_B"),
    ParamSpec("eField", 0.50, 0.45, 0.55, "kV/cm", "drift field (recombination; drift velocity when linked)"),
    ParamSpec("lifetime", 2200.0, 500.0, 5000.0, "us", "electron lifetime"),
    ParamSpec("long_diff", 4.0e-6, 2.0e-6, 9.0e-6, "cm^2/us", "longitudinal diffusion coefficient D_L"),
    ParamSpec("tran_diff", 8.8e-6, 4.0e-6, 14.0e-6, "cm^2/us", "transverse diffusion coefficient D_T"),
    ParamSpec("vdrift", 0.1587, 0.14, 0.18, "cm/us", "electron drift velocity (used when not linked to eField)"),
    ParamSpec("MeVToElectrons", 4.237e4, 3.48e4, 5.13e4, "e-/MeV", "ionisation electrons per MeV (1/W_ion)"),
    ParamSpec("lArDensity", 1.38, 1.37, 1.41, "g/cm^3", "liquid argon density"),
    ParamSpec("alpha", 0.93, 0.85, 1.1, "", "Box recombination alpha"),
    ParamSpec("beta", 0.207, 0.18, 0.22, "(kV/cm)(g/cm^2)/MeV", "Box recombination beta"),
    ParamSpec("temperature", 87.17, 85.0, 89.0, "K", "argon temperature (electron mobility model)"),
)

SPECS: Mapping[str, ParamSpec] = MappingProxyType({p.name: p for p in PARAMETERS})

#: The six parameters the paper fits at once.
FIT_PARAMETERS: tuple[str, ...] = ("Ab", "kb", "eField", "lifetime", "long_diff", "tran_diff")

# Li et al., NIM A 816 (2016) 160: electron mobility in LAr, E in kV/cm, T in K.
_MOBILITY_A = (551.6, 7158.3, 4440.43, 4.29, 43.63, 0.2053)
_MOBILITY_T0 = 89.0


def electron_mobility(efield, temperature):
    """Electron mobility in liquid argon in cm^2/(kV us) for a field in kV/cm and a temperature in K."""
    a0, a1, a2, a3, a4, a5 = _MOBILITY_A
    num = a0 + a1 * efield + a2 * efield**1.5 + a3 * efield**2.5
    den = 1 + (a1 / a0) * efield + a4 * efield**2 + a5 * efield**3
    return num / den * (temperature / _MOBILITY_T0) ** -1.5 / 1000.0


def drift_velocity(efield, temperature):
    """Electron drift velocity in cm/us from the mobility model (0.15965 cm/us at 0.5 kV/cm, 87.17 K)."""
    return efield * electron_mobility(efield, temperature)


class Params(Mapping[str, Any]):
    """Immutable named parameter values (floats or backend tensors).

    Missing names take their nominal value (the detector may supply its own nominal values, e.g. vdrift from the
    detector YAML). ``link_vdrift=True`` makes :attr:`vdrift_value` follow eField through the mobility model
    instead of using the ``vdrift`` entry.
    """

    __slots__ = ("_values", "link_vdrift")

    def __init__(self, values: Mapping[str, Any] | None = None, *, link_vdrift: bool = False,
                 nominal: Mapping[str, float] | None = None):
        base = {p.name: p.nominal for p in PARAMETERS}
        if nominal:
            _check_names(nominal, "nominal")
            base.update(nominal)
        if values:
            _check_names(values, "params")
            base.update(values)
        object.__setattr__(self, "_values", MappingProxyType(base))
        object.__setattr__(self, "link_vdrift", bool(link_vdrift))

    def __setattr__(self, key, value):
        raise AttributeError("Params is immutable; use .replace(name=value)")

    def __getitem__(self, key: str):
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def replace(self, **values) -> "Params":
        return Params({**self._values, **values}, link_vdrift=self.link_vdrift)

    @property
    def vdrift_value(self):
        """Drift velocity in cm/us: the ``vdrift`` entry, or eField x mobility when linked."""
        if self.link_vdrift:
            return drift_velocity(self._values["eField"], self._values["temperature"])
        return self._values["vdrift"]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self._values.items())
        return f"Params({inner}{', link_vdrift=True' if self.link_vdrift else ''})"


def _short(v) -> str:
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return type(v).__name__


def _check_names(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown} in {where}; known: {sorted(SPECS)}")


def as_params(params, nominal: Mapping[str, float] | None = None, link_vdrift: bool | None = None) -> Params:
    """Coerce ``None``, a mapping or a :class:`Params` into :class:`Params` (mapping entries override nominal)."""
    if isinstance(params, Params):
        return params if link_vdrift is None or link_vdrift == params.link_vdrift else \
            Params(dict(params), link_vdrift=link_vdrift)
    return Params(params or {}, nominal=nominal, link_vdrift=bool(link_vdrift))
