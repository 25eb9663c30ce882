"""The physical parameters of the simulation: one table, one immutable container.

Every parameter appears exactly once in :data:`PARAMETERS` with its nominal value, the physical range used for
random closure targets (the paper's Table I, larnd-sim ``optimize/ranges.py``), its unit, a one-line doc and its
physical *domain*: the values for which the model means something (:class:`Domain`). Every value must be finite;
beyond that:

==============================================  ===========  ======================================================
parameters                                      domain       why
==============================================  ===========  ======================================================
Ab                                              (0, 1]       the fraction of ionisation electrons that escape
                                                             recombination at dE/dx -> 0: more than all of them
                                                             (> 1) would create charge, 0 or less none
kb, beta                                        [0, inf)     a negative k_B (beta) makes the survival fraction grow
                                                             with dE/dx and diverge; 0 = no dE/dx dependence
eField, lifetime, long_diff, tran_diff,         (0, inf)     divisors of the model (Birks and Box denominators,
vdrift, MeVToElectrons, lArDensity,                          exp(-t / lifetime), drift time = distance / vdrift,
alpha, temperature                                           the Gaussian widths sqrt(2 D t), ln(alpha + xi), the
                                                             mobility's T^-1.5): 0 divides by zero, < 0 is
                                                             unphysical
==============================================  ===========  ======================================================

:class:`Params` checks every value it is given (floats, NumPy values and framework tensors whose value is concrete:
under ``jax.jit``, ``tf.function`` or ``torch.compile`` the traced values are skipped) and raises a
:class:`~larnd_diff.errors.ParameterError` naming the parameter, the value and the allowed range.
A value may be a Python float or a tensor of any backend (the differentiable simulator puts framework tensors
here), so the functions in this module use plain arithmetic only. TensorFlow variables are kept as variables and
read whenever the value is used (so a ``tf.GradientTape`` sees the read); a torch ``nn.Parameter`` is a tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from .errors import ParameterError, UnknownParameterError


@dataclass(frozen=True)
class Domain:
    """The allowed values of a parameter: finite numbers between ``low`` and ``high`` (open or closed ends)."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def contains(self, values) -> np.ndarray:
        """Element-wise: finite and inside the interval."""
        v = np.asarray(values, dtype=np.float64)
        above = v >= self.low if self.low_closed else v > self.low
        below = v <= self.high if self.high_closed else v < self.high
        return np.isfinite(v) & above & below

    def __str__(self) -> str:
        return (f"{'[' if self.low_closed else '('}{_number(self.low)}, "
                f"{_number(self.high)}{']' if self.high_closed else ')'}")


#: Domains used in :data:`PARAMETERS`.
POSITIVE = Domain(0.0)
NON_NEGATIVE = Domain(0.0, low_closed=True)
FRACTION = Domain(0.0, 1.0, high_closed=True)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    nominal: float
    low: float
    high: float
    unit: str
    doc: str
    domain: Domain = Domain()


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("Ab", 0.8, 0.78, 0.88, "", "Birks recombination constant A_B", FRACTION),
    ParamSpec("kb", 0.0486, 0.04, 0.07, "(kV/cm)(g/cm^2)/MeV", "Birks recombination constant k_B", NON_NEGATIVE),
    ParamSpec("eField", 0.50, 0.45, 0.55, "kV/cm", "drift field (recombination; drift velocity when linked)",
              POSITIVE),
    ParamSpec("lifetime", 2200.0, 500.0, 5000.0, "us", "electron lifetime", POSITIVE),
    ParamSpec("long_diff", 4.0e-6, 2.0e-6, 9.0e-6, "cm^2/us", "longitudinal diffusion coefficient D_L", POSITIVE),
    ParamSpec("tran_diff", 8.8e-6, 4.0e-6, 14.0e-6, "cm^2/us", "transverse diffusion coefficient D_T", POSITIVE),
    ParamSpec("vdrift", 0.1587, 0.14, 0.18, "cm/us", "electron drift velocity (used when not linked to eField)",
              POSITIVE),
    ParamSpec("MeVToElectrons", 4.237e4, 3.48e4, 5.13e4, "e-/MeV", "ionisation electrons per MeV (1/W_ion)",
              POSITIVE),
    ParamSpec("lArDensity", 1.38, 1.37, 1.41, "g/cm^3", "liquid argon density", POSITIVE),
    ParamSpec("alpha", 0.93, 0.85, 1.1, "", "Box recombination alpha", POSITIVE),
    ParamSpec("beta", 0.207, 0.18, 0.22, "(kV/cm)(g/cm^2)/MeV", "Box recombination beta", NON_NEGATIVE),
    ParamSpec("temperature", 87.17, 85.0, 89.0, "K", "argon temperature (electron mobility model)", POSITIVE),
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
    """Immutable named parameter values (floats or backend tensors), each checked against its domain.

    Missing names take their nominal value (the detector may supply its own nominal values, e.g. vdrift from the
    detector YAML). ``link_vdrift=True`` makes :attr:`vdrift_value` follow eField through the mobility model
    instead of using the ``vdrift`` entry. ``values`` and ``nominal`` may be any mapping (a dict, a flax
    ``FrozenDict``, a torch ``nn.ParameterDict``, ...) of floats, NumPy values or framework tensors; a
    ``tf.Variable`` is kept and read each time its value is taken, so gradient tapes see it.
    Raises :class:`~larnd_diff.errors.UnknownParameterError` (a ``KeyError``) for an unknown name and
    :class:`~larnd_diff.errors.ParameterError` for a value outside its domain.
    """

    __slots__ = ("_values", "link_vdrift")

    def __init__(self, values: Mapping[str, Any] | None = None, *, link_vdrift: bool = False,
                 nominal: Mapping[str, float] | None = None):
        base = {p.name: p.nominal for p in PARAMETERS}
        for given, where in ((nominal, "nominal values"), (values, "params")):
            if given is None:
                continue
            given = plain_mapping(given, where)
            _check_names(given, where)
            for name, value in given.items():
                check_value(name, value, where)
            base.update(given)
        object.__setattr__(self, "_values", MappingProxyType(base))
        object.__setattr__(self, "link_vdrift", bool(link_vdrift))

    def __setattr__(self, key, value):
        raise AttributeError("Params is immutable; use .replace(name=value)")

    def __getitem__(self, key: str):
        return _read(self._values[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def replace(self, **values) -> "Params":
        return Params({**self._values, **values}, link_vdrift=self.link_vdrift)

    @property
    def vdrift_value(self):
        """Drift velocity in cm/us: the ``vdrift`` entry, or eField x mobility when linked."""
        if self.link_vdrift:
            return drift_velocity(self["eField"], self["temperature"])
        return self["vdrift"]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self._values.items())
        return f"Params({inner}{', link_vdrift=True' if self.link_vdrift else ''})"


def _short(v) -> str:
    try:
        return f"{float(v):.6g}"
    except (TypeError, ValueError):
        return type(v).__name__


def _number(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def _check_names(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise UnknownParameterError(f"unknown parameter(s) {unknown} in {where}; known: {sorted(SPECS)}",
                                    parameter=unknown[0])


def plain_mapping(values, where: str = "params") -> dict:
    """A dict of a mapping or a mapping-like container (anything with ``keys()`` and item access, e.g. a torch
    ``nn.ParameterDict``); a :class:`~larnd_diff.errors.ParameterError` for anything else."""
    if isinstance(values, Params):
        return dict(values._values)
    if isinstance(values, Mapping):
        return dict(values)
    if hasattr(values, "keys") and hasattr(values, "__getitem__"):
        return {k: values[k] for k in values.keys()}
    raise ParameterError(f"{where} must be a mapping of parameter name -> value, not {type(values).__name__}")


def _backend(value):
    """The adapter of a framework tensor or variable (None for plain Python and NumPy values, or a type no
    backend claims); the registry imports no framework to answer."""
    if isinstance(value, (bool, int, float, np.number, np.ndarray)):
        return None
    from .ops import backend_of, get_backend

    try:
        return get_backend(backend_of(value))
    except (TypeError, ValueError, ImportError):
        return None


def _read(value):
    """The value to compute with: a framework variable (``tf.Variable``) read into a tensor, an operation gradient
    tapes record (``Backend.read``)."""
    b = _backend(value)
    return value if b is None else b.read(value)


def concrete_value(value) -> Optional[np.ndarray]:
    """The value as a float64 NumPy array when it is concrete; None for a traced value (jax.jit, tf.function,
    torch.compile) or an array type this function does not know. Looks through autodiff wrappers that carry a
    concrete primal (``jax.grad``). Raises :class:`~larnd_diff.errors.ParameterError` for a non-number."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ParameterError(f"{value!r} is not a number", value=value)
    for _ in range(8):
        value = getattr(value, "raw", value) if type(value).__module__.startswith("eagerpy") else value
        if isinstance(value, (bool, int, float, np.number, np.ndarray)):
            return np.asarray(value, dtype=np.float64)
        b = _backend(value)
        concrete = b.concrete_value(value) if b is not None else _as_float_array(value)
        if concrete is not None:
            return concrete
        value = getattr(value, "primal", None)   # jax.grad's tracers carry the concrete value
        if value is None:
            return None
    return None


def _as_float_array(value):
    try:
        return np.asarray(value, dtype=np.float64)
    except Exception:
        return None


def check_value(name: str, value, where: str = "params") -> None:
    """Raise :class:`~larnd_diff.errors.ParameterError` unless ``value`` (float, array or tensor with a concrete
    value) is finite and inside the domain of parameter ``name``; traced values pass unchecked."""
    spec = SPECS[name]
    try:
        v = concrete_value(value)
    except ParameterError:
        raise ParameterError(f"{where}: parameter {name!r} = {value!r} is not a number", parameter=name,
                             value=value) from None
    if v is None:
        return
    bad = ~spec.domain.contains(v)
    if not bad.any():
        return
    first = float(v.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]])
    what = "is not finite" if not math.isfinite(first) else "is outside its physical domain"
    count = f" ({int(bad.sum())} of {v.size} elements)" if v.size > 1 else ""
    unit = f" {spec.unit}" if spec.unit else ""
    raise ParameterError(f"{where}: parameter {name!r} = {first:g}{count} {what}; allowed: {spec.domain}{unit} "
                         f"({spec.doc})", parameter=name, value=first)


def as_params(params, nominal: Mapping[str, float] | None = None, link_vdrift: bool | None = None) -> Params:
    """Coerce ``None``, a mapping or a :class:`Params` into :class:`Params` (mapping entries override nominal)."""
    if isinstance(params, Params):
        return params if link_vdrift is None or link_vdrift == params.link_vdrift else \
            Params(params._values, link_vdrift=link_vdrift)
    return Params(params or {}, nominal=nominal, link_vdrift=bool(link_vdrift))
