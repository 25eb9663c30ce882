"""The fit as parts: composing a Calibrator by hand, checkpoints that cannot run code, resume integrity.

The loop runs on the closed-form toy model (:mod:`larnd_diff.fit.toy`): milliseconds per step.
"""
from __future__ import annotations

import inspect
import json
import math
import pickle
import warnings

import numpy as np
import pytest

from larnd_diff.fit import (CHECKPOINT_NAME, HISTORY_NAME, Budget, Calibrator, CentralDifferences, Convergence,
                            Coordinates, DataTarget, HitsLoss, Model, Objective, Optimiser, Progress,
                            SimulatedTarget, build, fit, read_checkpoint, read_history, toy_loss, toy_simulator)


@pytest.fixture(scope="module")
def segments():
    from larnd_diff.generate import generate_muons

    return generate_muons(n_events=4, seed=3)


def _toy(segments, **kw):
    opts = dict(params=("Ab", "lifetime"), backend="torch", loss=toy_loss, simulator=toy_simulator,
                batch_length_cm=60, progress=False, hessian=False, seed=5, max_iter=6)
    opts.update(kw)
    target = opts.pop("target", {"Ab": 0.84, "lifetime": 3100.0})
    return fit(segments, target, **opts)


@pytest.fixture(autouse=True)
def _torch(backend):
    """The fit machinery does not depend on the framework: it runs once, in the torch environment."""
    if backend != "torch":
        pytest.skip("framework-independent fit machinery: tested on torch only")
    pytest.importorskip("torch")


def test_calibrator_is_composed_of_parts(segments, backend):
    """A fit assembled by hand from its parts equals the keyword front end's, and the calibrator's constructor
    takes parts, not flags."""
    model = Model(backend="torch", simulator=toy_simulator)
    objective = Objective(segments, SimulatedTarget({"Ab": 0.84, "lifetime": 3100.0}), model, HitsLoss(toy_loss),
                          batch_length_cm=60, seed=5)
    cal = Calibrator(objective, ("Ab", "lifetime"), budget=Budget(max_iter=8), coordinates=Coordinates("log"),
                     optimiser=Optimiser("adam-full", lr=0.05, lr_decay=0.9),
                     gradient=CentralDifferences(("lifetime",), step=1e-3, until=4),
                     controllers=(Convergence(1e-9, 3, "log"),), progress=Progress(False))
    by_hand = cal.run()
    by_keywords = _toy(segments, max_iter=8, parameterization="log", optimizer="adam-full", lr=0.05, lr_decay=0.9,
                       fd_params=("lifetime",), fd_step=1e-3, fd_until=4, stop_tol=1e-9, stop_window=3)
    assert by_hand.params == by_keywords.params
    assert len(inspect.signature(Calibrator.__init__).parameters) - 1 <= 12


def test_checkpoint_is_json_and_plain_arrays(segments, backend, tmp_path):
    _toy(segments, checkpoint_dir=tmp_path, checkpoint_every=2)
    meta = json.loads((tmp_path / CHECKPOINT_NAME).read_text())
    assert meta["version"] == 2 and meta["loop"]["iteration"] == 6
    arrays = list(tmp_path.glob("checkpoint-*.npz"))
    assert len(arrays) == 1   # older array files are removed once the JSON names the new one
    with np.load(arrays[0], allow_pickle=False) as npz:
        assert all(not npz[k].dtype.hasobject for k in npz.files)
    ck = read_checkpoint(tmp_path)
    assert ck["fingerprint"]["names"] == ["Ab", "lifetime"] and ck["optimizer"]


class _Payload:
    """Unpickling this writes a marker file: the proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_checkpoint_is_refused_unread(segments, backend, tmp_path):
    marker = tmp_path / "code-ran"
    ck = tmp_path / "fit"
    ck.mkdir()
    (ck / "checkpoint.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="pickle checkpoint .* not read"):
        _toy(segments, checkpoint_dir=ck, resume=True)
    with pytest.raises(FileExistsError):            # nor silently replaced by a fresh fit
        _toy(segments, checkpoint_dir=ck)
    assert not marker.exists()


def test_crafted_object_array_checkpoint_is_refused_unread(segments, backend, tmp_path):
    marker = tmp_path / "code-ran"
    _toy(segments, checkpoint_dir=tmp_path / "fit", max_iter=2)
    (npz,) = (tmp_path / "fit").glob("checkpoint-*.npz")
    arrays = dict(np.load(npz, allow_pickle=False))
    arrays["optimizer/values"] = np.array([_Payload(marker)], dtype=object)
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ValueError, match="not a plain-array checkpoint"):
        _toy(segments, checkpoint_dir=tmp_path / "fit", resume=True, max_iter=4)
    assert not marker.exists()


def test_resume_without_checkpoint_keeps_the_history(segments, backend, tmp_path):
    """A history without a checkpoint is never truncated: resuming refuses; overwrite keeps it aside, loudly."""
    _toy(segments, checkpoint_dir=tmp_path, checkpoint_every=0, max_iter=5)
    (tmp_path / CHECKPOINT_NAME).unlink()
    for old in tmp_path.glob("checkpoint-*.npz"):
        old.unlink()
    before = (tmp_path / HISTORY_NAME).read_bytes()
    with pytest.raises(FileExistsError, match="no checkpoint to resume from"):
        _toy(segments, checkpoint_dir=tmp_path, resume=True)
    assert (tmp_path / HISTORY_NAME).read_bytes() == before
    with pytest.warns(RuntimeWarning, match="kept as"):
        _toy(segments, checkpoint_dir=tmp_path, overwrite=True, max_iter=2)
    assert (tmp_path / f"{HISTORY_NAME}.1").read_bytes() == before
    assert len(read_history(tmp_path / HISTORY_NAME)) == 2


def test_resume_refuses_other_inputs_of_the_same_size(segments, backend, tmp_path):
    """The fingerprint covers the content of the inputs, not their row count."""
    _toy(segments, checkpoint_dir=tmp_path / "a", max_iter=3)
    other = segments.copy()
    other["dE"] = other["dE"] * 1.01
    with pytest.raises(ValueError, match="segments_sha256"):
        _toy(other, checkpoint_dir=tmp_path / "a", resume=True)
    data = toy_simulator(segments, {"Ab": 0.85, "lifetime": 2600.0}, backend="torch").numpy()
    _toy(segments, target=data, checkpoint_dir=tmp_path / "b", max_iter=3)
    shifted = data.replace(adc=data.adc + 1.0)
    with pytest.raises(ValueError, match="target_sha256"):
        _toy(segments, target=shifted, checkpoint_dir=tmp_path / "b", resume=True)


def test_output_files_hold_no_nan(segments, backend, tmp_path):
    """Skipped steps (NaN loss) and undefined errors are null in the history and the result's JSON."""
    calls = {"n": 0}

    def flaky(sim, target):
        calls["n"] += 1
        value = toy_loss(sim, target)
        return value * float("nan") if calls["n"] == 2 else value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _toy(segments, loss=flaky, checkpoint_dir=tmp_path, hessian=True)
    text = (tmp_path / HISTORY_NAME).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_history(tmp_path / HISTORY_NAME)[1]["loss"] is None
    json.dumps(res.to_dict(), allow_nan=False)   # raises on NaN/inf
    assert all(v is None or math.isfinite(v) for v in res.to_dict()["errors"].values())


def test_data_target_part_cuts_batches(segments, backend):
    data = toy_simulator(segments, {"Ab": 0.85, "lifetime": 2600.0}, backend="torch").numpy()
    cal = build(segments, data, params=("Ab",), backend="torch", loss=toy_loss, simulator=toy_simulator,
                batch_length_cm=60, max_iter=1, progress=False)
    assert isinstance(cal.objective.target, DataTarget)
    rows = sum(len(cal.objective.target.hits(cal.objective.model, cal.objective.batches, b, 0))
               for b in range(cal.objective.n_batches))
    assert rows == len(data)


def test_unknown_keyword_is_named(segments, backend):
    with pytest.raises(TypeError, match="unknown fit keyword.*lr_decy"):
        _toy(segments, lr_decy=0.9)


def test_central_differences_take_each_parameters_own_step():
    """``steps`` replaces ``step`` for the parameters it names (the data recipe: eField 2e-4, the diffusion 2 %):
    on L = a^3 + b^3 at a = b = 1 the central difference is 3 + h^2 for the step h used."""
    from larnd_diff.fit.gradients import Point

    point = Point(value_and_grad=lambda: (2.0, {"Ab": 3.0, "lifetime": 3.0}),
                  loss_at=lambda shift: sum((1.0 + shift.get(n, 0.0)) ** 3 for n in ("Ab", "lifetime")),
                  relative_step=lambda name, h: h, iteration=0)
    est = CentralDifferences(("Ab", "lifetime"), step=0.5, steps=(("lifetime", 0.1),))
    _, grad, _ = est(point, est.init())
    assert grad["Ab"] == pytest.approx(3 + 0.25) and grad["lifetime"] == pytest.approx(3 + 0.01)
    assert est.keywords()["fd_steps"] == {"lifetime": 0.1}
    with pytest.raises(ValueError, match="lifetime step must be > 0"):
        CentralDifferences(("lifetime",), steps=(("lifetime", 0.0),))
