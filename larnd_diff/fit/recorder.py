"""The recorder: a fit never loses finished work, and resuming it is exact.

* **History**: one JSON line per iteration, written and flushed as it goes (``history.jsonl``); non-finite
  numbers are written as ``null`` (valid JSON everywhere).
* **Checkpoint**: ``checkpoint.json`` (format version, the fit's fingerprint, the loop position, the parts'
  states) and the arrays it names in ``checkpoint-<iteration>.npz`` (optimiser state and the parts' array
  states). Both are written atomically (temporary file, fsync, rename; the JSON last: it is the commit point), so a
  reader sees the old checkpoint or the new one. Nothing is ever unpickled: the JSON is parsed, the ``.npz`` read
  with ``allow_pickle=False``; an older pickle checkpoint (``checkpoint.pkl``) is refused unread.
* **Fingerprint**: every setting of the fit's parts plus SHA-256 hashes of the segments and target arrays: a
  checkpoint of another fit (other settings, another input file of the same length) is refused on resume.
* **Resume**: continues from the checkpoint; the history is cut back to the checkpoint's byte offset, so
  iterations redone after a hard kill are not duplicated. A history without a checkpoint is never truncated:
  resuming refuses, and ``overwrite`` keeps the old file aside (``history.jsonl.N``) and says so.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .options import Option

__all__ = ["Recorder", "LoopState", "CHECKPOINT_NAME", "HISTORY_NAME", "CHECKPOINT_VERSION", "read_history",
           "read_checkpoint", "json_safe", "atomic_write"]

CHECKPOINT_NAME = "checkpoint.json"
HISTORY_NAME = "history.jsonl"
LEGACY_CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_VERSION = 2
_FORMAT = "larnd-diff fit checkpoint"


def json_safe(obj):
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: non-finite floats -> None, NumPy
    scalars and arrays -> Python numbers and lists, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def read_history(path) -> List[dict]:
    """The records of a history JSON-lines file (a torn last line, from a hard kill, is ignored)."""
    out = []
    with open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
    return out


@dataclass
class LoopState:
    """Where a fit stands: the loop position and bookkeeping, the parts' states, the records so far."""

    iteration: int = 0
    n_skipped: int = 0
    skipped: Tuple[int, ...] = ()
    history_bytes: int = 0
    wall_time_s: float = 0.0
    stopped_early: bool = False
    stop_reason: str = ""
    parts: Optional[Dict[str, Any]] = None
    records: Optional[List[dict]] = None

    def position(self) -> dict:
        return {"iteration": self.iteration, "n_skipped": self.n_skipped, "skipped": list(self.skipped),
                "history_bytes": self.history_bytes, "wall_time_s": self.wall_time_s,
                "stopped_early": self.stopped_early, "stop_reason": self.stop_reason}


# ---------------------------------------------------------------------------------------------- files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write(path: Path, write) -> None:
    """``write(file object)`` into a temporary file beside ``path``, then rename: never a partial ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _split_arrays(tree, prefix: str, arrays: Dict[str, np.ndarray]):
    """JSON tree of ``tree`` with every NumPy array moved into ``arrays`` under a path key."""
    if isinstance(tree, np.ndarray):
        arrays[prefix] = tree
        return {"__array__": prefix}
    if isinstance(tree, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    return tree


def _join_arrays(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def read_json_record(path: Path, fmt: str, kind: str) -> dict:
    """The JSON object at ``path``, checked to carry ``"format": fmt`` (plain JSON: nothing runs); a file that is
    not one is refused as not a ``kind``."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a {kind} (not JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{path} is not a {kind} (no 'format': {fmt!r})")
    return meta


def read_checkpoint(directory) -> dict:
    """The checkpoint of a fit directory as a dict (``fingerprint``, ``loop``, ``parts``, ``optimizer``), read
    without running code: JSON and an ``.npz`` loaded with ``allow_pickle=False``."""
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    legacy = directory / LEGACY_CHECKPOINT
    if not path.exists() and legacy.exists():
        raise ValueError(f"{legacy} is a pickle checkpoint of an older larnd-diff; pickles can run arbitrary code, so "
                         f"it is not read. Start the fit afresh (overwrite=True / --overwrite, or another checkpoint "
                         f"directory); its history.jsonl stays readable")
    meta = read_json_record(path, _FORMAT, "larnd-diff checkpoint")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')} is not {CHECKPOINT_VERSION} (written by "
                         f"another larnd-diff version); start the fit afresh or use that version")
    name = str(meta.get("arrays", ""))
    if not name or Path(name).name != name:
        raise ValueError(f"{path}: 'arrays' must name a file in {directory}, got {name!r}")
    try:
        with np.load(directory / name, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise ValueError(f"{directory / name}: not a plain-array checkpoint ({exc}); it is not read") from None
    return {"fingerprint": meta["fingerprint"], "loop": meta["loop"], "parts": _join_arrays(meta["parts"], arrays),
            "optimizer": {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}}


def _differences(mine: Mapping, theirs: Mapping) -> List[str]:
    return sorted(k for k in set(mine) | set(theirs) if json_safe(mine.get(k)) != json_safe(theirs.get(k)))


# ---------------------------------------------------------------------------------------------- recorder
@dataclass(frozen=True)
class Recorder:
    """Where and how often a fit records itself (see the module docstring). ``directory`` None: no checkpoint
    (and no history unless ``history_path``)."""

    directory: Optional[Path] = None
    every: int = 10
    on_error: bool = True
    resume: bool = False
    overwrite: bool = False
    history_path: Optional[Path] = None

    OPTIONS = (
        Option("checkpoint_dir", "--checkpoint-dir", "checkpoints and history.jsonl go here", parse=Path),
        Option("checkpoint_every", "--checkpoint-every", "checkpoint every N iterations (and at the end and on "
               "errors)", parse=int, metavar="N"),
        Option("checkpoint_on_error", "", "checkpoint when the loop is left by an exception"),
        Option("resume", "--resume", "continue the fit checkpointed in --checkpoint-dir", action="store_true"),
        Option("overwrite", "--overwrite", "discard an earlier fit in --checkpoint-dir (its history is kept aside)",
               action="store_true"),
        Option("history_path", "--history", "history JSON lines (default DIR/history.jsonl)", parse=Path),
    )

    @classmethod
    def from_keywords(cls, kw: Mapping[str, Any]) -> "Recorder":
        directory = kw.get("checkpoint_dir")
        history = kw.get("history_path")
        if history is None and directory is not None:
            history = Path(directory) / HISTORY_NAME
        every = kw.get("checkpoint_every", 10)
        return cls(directory=None if directory is None else Path(directory), every=int(every) if every else 0,
                   on_error=bool(kw.get("checkpoint_on_error", True)), resume=bool(kw.get("resume", False)),
                   overwrite=bool(kw.get("overwrite", False)),
                   history_path=None if history is None else Path(history))

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.directory is None else self.directory / CHECKPOINT_NAME

    # ------------------------------------------------------------------------------------------ start
    def start(self, fingerprint: dict) -> Tuple[LoopState, Optional[dict]]:
        """The loop state to start from (fresh or resumed) and the checkpoint's optimiser state (None: fresh)."""
        if self.resume and self.directory is None:
            raise ValueError("resume=True needs checkpoint_dir (--checkpoint-dir): the history alone "
                             "cannot restore the optimiser")
        legacy = self.directory is not None and (self.directory / LEGACY_CHECKPOINT).exists()
        exists = self.checkpoint_path is not None and self.checkpoint_path.exists()
        if (exists or legacy) and not self.resume and not self.overwrite:
            raise FileExistsError(f"{self.directory} holds an earlier fit; pass resume=True to continue "
                                  f"it, overwrite=True to discard it, or use another checkpoint_dir")
        if (exists or legacy) and self.resume:
            ck = read_checkpoint(self.directory)
            diff = _differences(fingerprint, ck["fingerprint"])
            if diff:
                raise ValueError(f"{self.checkpoint_path} belongs to a different fit (differs in {diff}); use "
                                 f"another checkpoint_dir or resume with the same settings and inputs")
            loop = ck["loop"]
            state = LoopState(iteration=int(loop["iteration"]), n_skipped=int(loop["n_skipped"]),
                              skipped=tuple(int(i) for i in loop["skipped"]),
                              history_bytes=int(loop["history_bytes"]), wall_time_s=float(loop["wall_time_s"]),
                              parts=ck["parts"], records=[])
            return state, ck["optimizer"]
        return LoopState(records=[]), None

    def open_history(self, state: LoopState):
        """The history file opened for appending at the checkpoint's offset (earlier records loaded into
        ``state.records``); None without a history path."""
        path = self.history_path
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if state.history_bytes:
            if size < state.history_bytes:
                raise ValueError(f"{path} is shorter ({size} bytes) than its checkpoint says ({state.history_bytes});"
                                 f" it was truncated or replaced after the checkpoint was written")
            with open(path, "r+b") as fh:
                fh.truncate(state.history_bytes)
            state.records = read_history(path)
            return open(path, "ab")
        if size:
            if not self.overwrite:
                what = "but there is no checkpoint to resume from" if self.resume else "of an earlier fit"
                raise FileExistsError(f"{path} holds the history {what}; pass overwrite=True to start "
                                      f"afresh (the old history is kept aside), or choose another directory")
            aside = _free_name(path)
            os.replace(path, aside)
            warnings.warn(f"{path} held the history of an earlier fit: kept as {aside}", RuntimeWarning, stacklevel=3)
        return open(path, "wb")

    # ------------------------------------------------------------------------------------------ write
    @staticmethod
    def write(hist, state: LoopState, record: dict) -> dict:
        """Append one record (made JSON-safe) to the history and the state; returns the stored record."""
        record = json_safe(record)
        state.records.append(record)
        if hist is not None:
            line = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
            hist.write(line)
            hist.flush()
            state.history_bytes += len(line)
        return record

    def due(self, state: LoopState) -> bool:
        return bool(self.every) and state.iteration % self.every == 0

    def save(self, state: LoopState, fingerprint: dict, optimizer_state: Mapping[str, Any], hist=None) -> None:
        """Write the checkpoint (arrays first, then the JSON that names them; older array files removed)."""
        if self.directory is None:
            return
        if hist is not None and not hist.closed:  # the history up to the offset is on disk before the checkpoint
            hist.flush()
            os.fsync(hist.fileno())
        arrays = {f"optimizer/{k}": np.asarray(v) for k, v in optimizer_state.items()}
        parts = _split_arrays(state.parts or {}, "parts", arrays)
        bad = sorted(k for k, v in arrays.items() if v.dtype.hasobject)
        if bad:
            raise TypeError(f"checkpoint arrays must be plain numbers, not objects: {bad}")
        name = f"checkpoint-{state.iteration:08d}.npz"
        atomic_write(self.directory / name, lambda fh: np.savez(fh, **arrays))
        meta = {"format": _FORMAT, "version": CHECKPOINT_VERSION, "arrays": name, "fingerprint": json_safe(fingerprint),
                "loop": json_safe(state.position()), "parts": json_safe(parts)}
        atomic_write(self.checkpoint_path, lambda fh: fh.write(json.dumps(meta, indent=1, allow_nan=False).encode()))
        for old in self.directory.glob("checkpoint-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _free_name(path: Path) -> Path:
    k = 1
    while Path(f"{path}.{k}").exists():
        k += 1
    return Path(f"{path}.{k}")
