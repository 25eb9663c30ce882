"""Detector geometry and readout constants (module0 by default).

All coordinates are in the *simulation frame*: after the edep-sim x<->z swap, z is the drift axis and (x, y)
address the pixel plane. Lengths in cm, times in us. The geometry is derived exactly as larnd-sim derives it
from a detector YAML plus a pixel-layout YAML (:func:`_geometry_from_layout`); the package ships a compact
description of module0 (``larnd_diff/data/module0.yaml``) and :func:`load_detector` reads a user's larnd-sim files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
import yaml

from .errors import ConfigError, ConfigFileNotFoundError

#: Distance (cm) from the anode of the virtual plane where the induced-current model takes over.
VIRTUAL_PLANE_CM = 0.5
#: Tolerance (cm) of the TPC-membership box test in the drift stage (hard-coded in larnd-sim).
TPC_TOLERANCE_CM = 0.02
_MM_TO_CM = 0.1
# Parameter names whose nominal value a larnd-sim detector YAML may set.
_YAML_PARAMS = ("eField", "lifetime", "vdrift", "MeVToElectrons", "Ab", "kb", "long_diff", "tran_diff")


@dataclass(frozen=True)
class Electronics:
    """LArPix v2 front-end constants (larnd-sim ``fee.py``). Charges in electrons, voltages in mV."""

    threshold_e: float = 7000.0
    adc_hold_delay: int = 15          # clock cycles
    clock_cycle_us: float = 0.1
    gain_mv_per_e: float = 4.0 / 1000.0
    v_cm_mv: float = 288.0
    v_ref_mv: float = 1300.0
    v_pedestal_mv: float = 580.0
    adc_counts: int = 256
    max_adc_values: int = 10
    reset_noise_e: float = 900.0
    uncorrelated_noise_e: float = 500.0
    dead_ticks: int = 2               # ticks skipped after a successful conversion (reset)

    def integration_ticks(self, t_sampling: float) -> int:
        """Ticks integrated after the trigger tick: round((3 + hold delay) x clock / dt) = 18 for module0."""
        return int(round((3 + self.adc_hold_delay) * self.clock_cycle_us / t_sampling))

    def adc_pedestal(self) -> float:
        """Unrounded ADC value of zero charge (73.866 for module0)."""
        return (self.v_pedestal_mv - self.v_cm_mv) * self.adc_counts / (self.v_ref_mv - self.v_cm_mv)


@dataclass(frozen=True)
class Detector:
    """Geometry, time sampling and electronics of a pixelated LArTPC (frozen; arrays are read-only copies)."""

    name: str
    pixel_pitch: float                       # cm
    n_pixels: tuple[int, int]                # pixels per TPC along (x, y)
    n_pixels_per_tile: tuple[int, int]
    tpc_borders_t: tuple                     # per TPC ((x_lo, x_hi), (y_lo, y_hi), (z_anode, z_cathode_side))
    drift_length: float                      # cm
    time_interval: tuple[float, float] = (0.0, 200.0)   # us
    t_sampling: float = 0.1                  # us
    time_padding: float = 5.0                # us
    sampled_points: int = 30
    electronics: Electronics = field(default_factory=Electronics)
    nominal: Mapping[str, float] = field(default_factory=dict, hash=False)  # parameter values the YAML sets
    layout_path: str | None = None           # full pixel-layout YAML (needed only for LArPix packet export)
    tile_map: tuple = (((7, 5, 3, 1), (8, 6, 4, 2)), ((16, 14, 12, 10), (15, 13, 11, 9)))

    def __post_init__(self):
        object.__setattr__(self, "nominal", MappingProxyType(dict(self.nominal)))

    # --- derived quantities -------------------------------------------------------------------------------
    @property
    def n_tpcs(self) -> int:
        return len(self.tpc_borders_t)

    @property
    def tpc_borders(self) -> np.ndarray:
        """(n_tpc, 3, 2) array: x and y borders, then (anode z, cathode-side z) — the z pair is not sorted."""
        a = np.array(self.tpc_borders_t, dtype=np.float64)
        a.flags.writeable = False
        return a

    @property
    def anode_z(self) -> np.ndarray:
        return self.tpc_borders[:, 2, 0]

    @property
    def drift_sign(self) -> np.ndarray:
        """+1 where the cathode lies at larger z than the anode (electrons drift towards -z)."""
        b = self.tpc_borders
        return np.sign(b[:, 2, 1] - b[:, 2, 0])

    @property
    def n_ticks_window(self) -> int:
        """Ticks of the drift window: 2001 for (0, 200) us."""
        return int(round((self.time_interval[1] - self.time_interval[0]) / self.t_sampling)) + 1

    @property
    def n_ticks_event(self) -> int:
        """Ticks of one event's pixel waveform in larnd-sim: 3 x 2001 = 6003 (600.3 us)."""
        return 3 * self.n_ticks_window

    @property
    def event_slot_us(self) -> float:
        """Time slot given to each event in larnd-sim outputs: 3 x window end = 600 us."""
        return 3 * self.time_interval[1]

    @property
    def adc_tick_us(self) -> float:
        """larnd-sim's ADC time step: linspace(0, 600, 6004) spacing = 600/6003 us (not 0.1 us)."""
        return self.event_slot_us / self.n_ticks_event

    def pixel_index(self, x, y, plane):
        """(I, J) of points (x, y) cm in TPC ``plane``: I = ix + n_x * plane, J = iy; floor division."""
        b = self.tpc_borders
        plane = np.asarray(plane)
        ix = np.floor((np.asarray(x) - b[plane, 0, 0]) / self.pixel_pitch).astype(np.int64)
        iy = np.floor((np.asarray(y) - b[plane, 1, 0]) / self.pixel_pitch).astype(np.int64)
        return ix + self.n_pixels[0] * plane, iy

    def pixel_center(self, i, j):
        """Centre (x, y) in cm of pixels (I, J)."""
        i = np.asarray(i)
        plane = i // self.n_pixels[0]
        b = self.tpc_borders
        x = (i - self.n_pixels[0] * plane) * self.pixel_pitch + b[plane, 0, 0] + self.pixel_pitch / 2
        y = np.asarray(j) * self.pixel_pitch + b[plane, 1, 0] + self.pixel_pitch / 2
        return x, y

    def tpc_of(self, x, y, z, tolerance: float = TPC_TOLERANCE_CM) -> np.ndarray:
        """Index of the first TPC whose box (widened by ``tolerance`` cm) contains each point, -1 if none."""
        x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
        out = np.full(np.broadcast(x, y, z).shape, -1, dtype=np.int64)
        for i, b in enumerate(self.tpc_borders):
            inside = ((b[0, 0] - tolerance <= x) & (x <= b[0, 1] + tolerance)
                      & (b[1, 0] - tolerance <= y) & (y <= b[1, 1] + tolerance)
                      & (b[2].min() - tolerance <= z) & (z <= b[2].max() + tolerance))
            out = np.where((out < 0) & inside, i, out)
        return out

    def with_nominal(self, **values) -> "Detector":
        from dataclasses import replace
        return replace(self, nominal={**self.nominal, **values})


def _geometry_from_layout(layout: Mapping, tpc_centers, drift_length: float) -> dict:
    """larnd-sim's consts.load_detector_properties, geometry part, in the swapped frame."""
    pitch = float(layout["pixel_pitch"]) * _MM_TO_CM
    if "pixels_per_tile" in layout:
        ppt = tuple(int(v) for v in layout["pixels_per_tile"])
    else:
        pos = np.array(list(layout["chip_channel_to_position"].values()))
        ppt = (int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1)
    half = (ppt[0] * pitch / 2, ppt[1] * pitch / 2)  # (max(xs) + p) / 2
    tiles = {int(k): np.asarray(v, dtype=np.float64) * _MM_TO_CM for k, v in layout["tile_positions"].items()}
    orient = {int(k): v for k, v in layout["tile_orientations"].items()}
    centers = np.asarray(tpc_centers, dtype=np.float64)[:, [2, 1, 0]]  # x<->z swap of the centres
    anodes = np.unique([t[0] for t in tiles.values()])
    if len(centers) < len(anodes):
        raise ValueError(f"detector has {len(anodes)} anode planes but only {len(centers)} tpc_centers")
    borders = []
    for i, anode in enumerate(anodes):
        ids = sorted(k for k, t in tiles.items() if t[0] == anode)
        tx = np.array([tiles[k][2] for k in ids])
        ty = np.array([tiles[k][1] for k in ids])
        c = centers[i]
        borders.append((
            (float(tx.min() - half[0] + c[0]), float(tx.max() + half[0] + c[0])),
            (float(ty.min() - half[1] + c[1]), float(ty.max() + half[1] + c[1])),
            (float(anode + c[2]), float(anode + drift_length * orient[ids[0]][0] + c[2])),
        ))
    n_tiles_x = len(np.unique([t[2] for t in tiles.values()]))
    n_tiles_y = len(np.unique([t[1] for t in tiles.values()]))
    return dict(pixel_pitch=pitch, n_pixels_per_tile=ppt, n_pixels=(ppt[0] * n_tiles_x, ppt[1] * n_tiles_y),
                tpc_borders_t=tuple(borders))


def _build(name: str, props: Mapping, layout: Mapping, layout_path: str | None,
           props_path: str | None = None) -> Detector:
    from .errors import ConfigError
    from .params import check_value

    props_where = props_path or f"detector description {name!r}"
    layout_where = layout_path or f"pixel layout of {name!r}"
    for where, content, keys in ((props_where, props, ("tpc_centers", "drift_length")),
                                 (layout_where, layout, ("pixel_pitch", "tile_positions", "tile_orientations"))):
        if not isinstance(content, Mapping):
            raise ConfigError(f"{where}: expected a YAML mapping (key: value lines), got {type(content).__name__}",
                              file=where)
        missing = [k for k in keys if k not in content]
        if missing:
            raise ConfigError(f"{where}: lacks the key(s) {', '.join(missing)} (a larnd-sim "
                              f"{'detector-properties' if content is props else 'pixel-layout'} YAML has them)",
                              file=where, field=missing[0])
    geom = _geometry_from_layout(layout, props["tpc_centers"], float(props["drift_length"]))
    nominal = {k: float(props[k]) for k in _YAML_PARAMS if k in props}
    for key, value in nominal.items():
        check_value(key, value, props_where)
    ti = tuple(float(v) for v in props.get("time_interval", (0.0, 200.0)))
    return Detector(name=name, drift_length=float(props["drift_length"]), time_interval=ti, nominal=nominal,
                    layout_path=layout_path, **geom)


@lru_cache(maxsize=None)
def module0() -> Detector:
    """The built-in module0 detector (two TPCs of 140 x 280 pixels of 0.4434 cm, anodes at -/+30.431 cm)."""
    text = resources.files("larnd_diff").joinpath("data/module0.yaml").read_text()
    desc = yaml.safe_load(text)
    return _build(desc["name"], desc["detector"], desc["layout"], None)


def load_detector(detector_yaml: str | Path, layout_yaml: str | Path) -> Detector:
    """Build a detector from larnd-sim's detector-properties YAML and pixel-layout YAML files."""
    detector_yaml, layout_yaml = Path(detector_yaml), Path(layout_yaml)
    props = read_yaml(detector_yaml, "detector-properties YAML")
    layout = read_yaml(layout_yaml, "pixel-layout YAML")
    return _build(detector_yaml.stem, props, layout, str(layout_yaml), str(detector_yaml))


def read_yaml(path, what: str = "YAML file"):
    """The content of a YAML file; a :class:`~larnd_diff.errors.ConfigError` naming the file (and, for a syntax
    error, the line and column) when it is missing, unreadable or malformed."""
    path = Path(path)
    if not path.exists():
        raise ConfigFileNotFoundError(f"{path}: {what} does not exist", file=path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} is not a file", file=path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err})", file=path) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{path}"
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        context = getattr(err, "context", None)
        detail = f"{problem} ({' '.join(str(context).split())})" if context else problem
        raise ConfigError(f"{where}: malformed {what}: {detail}", file=path) from err


def detector_from_files(detector_yaml=None, layout_yaml=None) -> Detector:
    """The detector of a command line: both YAMLs (:func:`load_detector`), or module0 when no detector YAML is given
    (a layout YAML alone only supplies a chip/channel map, e.g. for LArPix packets)."""
    if detector_yaml:
        if not layout_yaml:
            raise ConfigError("--detector-yaml needs the pixel layout too: --layout-yaml FILE", file=detector_yaml)
        return load_detector(detector_yaml, layout_yaml)
    return module0()


def resolve_detector(detector) -> Detector:
    """``None`` -> built-in module0; a Detector passes through; a (detector_yaml, layout_yaml) pair is loaded."""
    if detector is None:
        return module0()
    if isinstance(detector, Detector):
        return detector
    if isinstance(detector, (tuple, list)) and len(detector) == 2:
        return load_detector(*detector)
    raise TypeError(f"detector must be None, a Detector or a (detector_yaml, layout_yaml) pair, not {detector!r}")


def diffusion_sigma(coefficient, drift_time):
    """Diffusion width sqrt(2 D t) in cm for D in cm^2/us and t in us."""
    return (2 * coefficient * drift_time) ** 0.5


__all__ = ["Detector", "Electronics", "module0", "load_detector", "detector_from_files", "resolve_detector",
           "read_yaml", "VIRTUAL_PLANE_CM", "TPC_TOLERANCE_CM", "diffusion_sigma"]
