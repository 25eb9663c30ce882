"""Configuration of the differentiable simulator: relaxations of the non-smooth steps, dtype and memory policy."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional


@dataclass(frozen=True)
class Relaxation:
    """How each non-smooth step of the reference (the Numba oracle, :mod:`larnd_diff.reference`) is treated.

    onset_sharpness  None = the reference's hard stop of the induced current at arrival; a number s replaces the
                     step by sigmoid(s * (t_s - t) / tau) (the paper uses 100) in the gradient, and in the value
                     too with ``onset="soft"``.
    onset            with a sharpness: "soft" = the sigmoid onset in value and gradient (the paper's relaxation:
                     a tick within ~tau/s of an arrival sees a part of the current the reference does not);
                     "straight-through" = the hard stop's value (the reference's current, tick for tick) with the
                     sigmoid onset's gradient (value + stop_gradient(hard - soft)). Ignored without a sharpness.
    charge           "truncate" = electron counts truncated to integers after quenching and after the lifetime
                     (reference); "continuous" = kept as real numbers.
    trigger          "tick" = integer trigger tick, time = tick * 600/6003 us (reference); "interpolated" = the
                     same tick selects the integration window, but the reported time carries the gradient of the
                     linearly interpolated threshold crossing (straight-through: forward value unchanged).
    adc              "round" = round-half-even digitisation (reference, no gradient); "continuous" = no rounding
                     (real-valued counts, differentiable); "straight-through" = forward value identical to "round"
                     (integer counts, like real data), gradient that of the continuous value
                     (x + stop_gradient(round(x) - x)). The smooth preset uses "straight-through"; for the fully
                     continuous ADC (e.g. finite differences of an ADC loss) use SMOOTH.replace(adc="continuous")
                     or the "smooth-continuous" preset (which also takes the soft onset).
    pad_edge         "hard" = larnd-sim's sampling of a pixel's pad: the grid points inside the pad, each weight 1
                     (the grid spans the segment +- 4 sigma_T, so points enter and leave the pad as sigma_T
                     changes: a pixel's charge jumps, by up to ~70 % on the edge pixels of a track, and between
                     jumps the grid's slope is not the charge's); "linear" = each grid point weighted by the share
                     of its cell inside the pad (the points within half a step outside included), the same sum on
                     average and continuous in sigma_T and the positions (README "Calibration on data").
    z_step           "spanning" = larnd-sim's z sampling: N_z = max(30, ceil(range / 0.05 cm)) points spanning the
                     z range exactly, so the step changes when N_z does and every sample moves (a pixel's pulse
                     shape jumps as sigma_L or the geometry changes); "fixed" = the same 30 spanning points while
                     the step range / 29 is at least 0.05 cm, else a 0.05 cm step from the range's start, the extra
                     point past its end (where the charge is negligible): continuous in the parameters.
    tick_phase       "reference" = larnd-sim's evaluation start floor((t_start - 5 us) / dt) dt with the placement
                     round(...): a segment's current is sampled 0 or 1 tick before the tick it lands on, flipping
                     each time its start time crosses a half tick (the whole pulse moves by a tick as the drift
                     velocity changes by ~1e-4); "averaged" = the mean of the two: every segment sampled on its
                     placement ticks, then half of each tick's charge moved to the next tick (the total and the
                     tick values of the reference's two cases kept, continuous in the drift velocity).
    """

    onset_sharpness: Optional[float] = None
    onset: Literal["soft", "straight-through"] = "soft"
    charge: Literal["truncate", "continuous"] = "truncate"
    trigger: Literal["tick", "interpolated"] = "tick"
    adc: Literal["round", "continuous", "straight-through"] = "round"
    pad_edge: Literal["hard", "linear"] = "hard"
    z_step: Literal["spanning", "fixed"] = "spanning"
    tick_phase: Literal["reference", "averaged"] = "reference"

    def __post_init__(self):
        for name, allowed in (("pad_edge", ("hard", "linear")), ("z_step", ("spanning", "fixed")),
                              ("tick_phase", ("reference", "averaged"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Relaxation.{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.onset not in ("soft", "straight-through"):
            raise ValueError(f"Relaxation.onset must be 'soft' or 'straight-through', not {self.onset!r}")
        if self.onset_sharpness is not None and not self.onset_sharpness > 0:
            raise ValueError(f"Relaxation.onset_sharpness must be None or > 0, not {self.onset_sharpness!r}")

    def replace(self, **kw) -> "Relaxation":
        return replace(self, **kw)


#: Reference semantics, quirks included: for parity tests against the Numba reference.
HARD = Relaxation()
#: The fitting default: every output carries a gradient. The induced current, ADC and time have the reference's
#: values (hard onset, integer counts, tick times) with straight-through gradients (sigmoid onset of sharpness
#: 100 as the paper, continuous ADC, interpolated crossing); only the electron counts are continuous in value.
#: ``SMOOTH.replace(onset="soft", adc="continuous")`` (:data:`SMOOTH_CONTINUOUS`, preset "smooth-continuous") is the
#: fully relaxed simulator whose values are themselves differentiable functions of the parameters (for finite
#: differences; the paper's forward).
SMOOTH = Relaxation(onset_sharpness=100.0, onset="straight-through", charge="continuous", trigger="interpolated",
                    adc="straight-through")
#: The fully relaxed simulator (the paper's forward): the smooth preset with the sigmoid onset in the value too and
#: real-valued, unrounded ADC counts, so that every output is a continuous function of the parameters except through
#: larnd-sim's pad sampling grid (:data:`CONTINUOUS` removes that too); the closure recipe's relaxation. Its values
#: differ from the reference's.
SMOOTH_CONTINUOUS = SMOOTH.replace(adc="continuous", onset="soft")

#: Every value a continuous function of the parameters: the fully relaxed simulator with linear pad edges (a
#: pixel's charge continuous in the transverse diffusion and the positions), a fixed z step (the pulse shape
#: continuous in the longitudinal diffusion) and averaged tick phases (the pulse times continuous in the drift
#: velocity, hence eField): reverse mode gives the slope of any loss of its outputs (benchmarks/gradient_check.py).
#: Its values are not larnd-sim's: per pixel the charge differs from the hard pad sampling by 5-12 % rms and every
#: pulse is half a tick wider, which biases fits to data made by the reference (tran_diff -3 to -11 %, long_diff
#: -16 to -19 % on the CPU data-like closures: README "Calibration on data"); the data recipe keeps :data:`SMOOTH`.
CONTINUOUS = SMOOTH_CONTINUOUS.replace(pad_edge="linear", z_step="fixed", tick_phase="averaged")

#: Relaxation presets by name, the same for ``ld.simulate``, ``larnd-diff simulate --relaxation`` and the fit.
PRESETS = {"hard": HARD, "smooth": SMOOTH, "smooth-continuous": SMOOTH_CONTINUOUS, "continuous": CONTINUOUS}


def as_relaxation(relaxation) -> Relaxation:
    """A :class:`Relaxation` from a preset name of :data:`PRESETS` or a Relaxation (returned as is)."""
    if isinstance(relaxation, Relaxation):
        return relaxation
    try:
        return PRESETS[relaxation]
    except (KeyError, TypeError):
        raise ValueError(f"unknown relaxation preset {relaxation!r}; choose one of {sorted(PRESETS)} "
                         "or pass a Relaxation") from None


def preset_name(relaxation) -> str | None:
    """The name of a preset equal to ``relaxation`` (a name or a Relaxation), None for a custom one."""
    relaxation = as_relaxation(relaxation)
    return next((name for name, preset in PRESETS.items() if preset == relaxation), None)


@dataclass(frozen=True)
class SimConfig:
    """Everything about *how* to simulate that is not physics.

    relaxation     Relaxation or preset name.
    dtype          "float64" or "float32" for the differentiable arithmetic.
    chunk_size     larnd-sim processes an event in chunks of 600 consecutive segments (a quirk: a pixel touched by
                   two chunks gets two independent waveforms). None = whole events.
    memory_budget_bytes  upper bound (bytes, default 512 MiB) for the working memory of one simulate call: calls
                   whose host plan or dense charge (rows x ticks) would exceed it are evaluated in pieces, runs of
                   whole chunks and groups of pixel rows on their own tick windows (larnd_diff/sim/memory.py),
                   each piece checkpointed on differentiable backends; the hits are those of the unsplit call.
    pad_multiple   padded sizes are rounded up to a power-of-two-ish grid so that jitted backends see few shapes.
    kernel         the induced current (rows expanded from the (segment, pixel) pairs, z samples x ticks per
                   in-pad row, placed on the pixels' ticks): "fused" = Numba kernels with a hand-written gradient
                   (CPU tensors; torch tensors on a GPU through numba-cuda; ~20x faster on CPU), "eager" = the
                   EagerPy implementation (any device), "auto" = fused where a kernel fits the tensors.
    compile        whether the glue around the fused kernels (the per-segment and per-pair inputs: quench, drift,
                   pair geometry, ~150 small operations forward and as many backward, whose cost on a GPU is one
                   launch each; and the gathering of the triggered samples) is compiled into a few kernels by the
                   backend (``Backend.compile_glue`` in backends/base.py, the feature "compile"; the torch
                   adapter's is torch.compile with dynamic shapes: one compilation per process of some tens of
                   seconds, then no recompilation when the input's size changes): "auto" = for tensors on a GPU,
                   "always" = also on the CPU (where the gain is small next to the kernels), "never". Backends
                   without the feature ignore it.
    """

    relaxation: Relaxation = HARD
    dtype: Literal["float64", "float32"] = "float64"
    chunk_size: Optional[int] = 600
    memory_budget_bytes: int = 512 * 2**20
    pad_multiple: int = 128
    kernel: Literal["auto", "fused", "eager"] = "auto"
    compile: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self):
        object.__setattr__(self, "relaxation", as_relaxation(self.relaxation))
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', not {self.dtype!r}")
        if self.kernel not in ("auto", "fused", "eager"):
            raise ValueError(f"kernel must be 'auto', 'fused' or 'eager', not {self.kernel!r}")
        if self.compile not in ("auto", "always", "never"):
            raise ValueError(f"compile must be 'auto', 'always' or 'never', not {self.compile!r}")
