"""The warm-up stage (larnd_diff/fit/stages.py) and the best-iterate result (larnd_diff/fit/calibrator.py).

What a user relies on: a fit with a warm-up runs the warm-up's forward first and the recipe's forward after, the
main stage starts where the warm-up ended, a resumed fit never repeats a finished warm-up, nothing of an earlier
fit is overwritten unasked, and ``keep="best"`` returns the iterate of the lowest loss. The loop runs on the
closed-form toy model (:mod:`larnd_diff.fit.toy`), which records the relaxation each forward pass asks for.
"""
from __future__ import annotations

import json
import shutil

import pytest

from larnd_diff.fit import DATA, build, fit, read_history, toy_loss, toy_simulator
from larnd_diff.fit.stages import SCAN_NAME, STAGE_NAME, WARMUP_DIR, Warmup, scan_grid

pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def segments():
    from larnd_diff.generate import generate_muons

    return generate_muons(n_events=4, seed=3)


@pytest.fixture(autouse=True)
def _torch(backend):
    """The fit machinery does not depend on the framework: it runs once, in the torch environment."""
    if backend != "torch":
        pytest.skip("framework-independent fit machinery: tested on torch only")
    pytest.importorskip("torch")


class RecordingSimulator:
    """The toy simulator, noting the relaxation of every forward pass."""

    def __init__(self):
        self.relaxations = []

    def __call__(self, segments, params, **kw):
        self.relaxations.append(kw.get("relaxation"))
        return toy_simulator(segments, params, **kw)


_OPTS = dict(params=("Ab", "lifetime"), backend="torch", loss=toy_loss, batch_length_cm=1e6, progress=False,
             hessian=False, seed=5, max_iter=4, warmup_iter=3, relaxation="smooth")


def _staged(segments, sim, **kw):
    opts = {**_OPTS, "simulator": sim, **kw}
    return fit(segments, {"Ab": 0.84, "lifetime": 3100.0}, **opts)


def test_warmup_runs_first_on_its_forward_and_hands_over_its_end_point(segments):
    sim = RecordingSimulator()
    res = _staged(segments, sim)
    # the target is simulated by the same stand-in (relaxation of the main stage); the model's passes follow
    model_passes = [r for r in sim.relaxations]
    assert model_passes.count("continuous") == 3, "one forward-and-backward pass per warm-up iteration"
    first_main = max(i for i, r in enumerate(model_passes) if r == "continuous") + 1
    assert all(r == "smooth" for r in model_passes[first_main:])
    assert res.warmup["finished"] and res.warmup["iterations"] == 3 and res.iterations == 4
    assert res.init == pytest.approx(res.warmup["params"], rel=1e-12), "the main stage starts at the warm-up's end"
    assert res.init != pytest.approx({"Ab": 0.8, "lifetime": 2200.0}), "the warm-up moved"
    assert res.wall_time_s >= res.warmup["wall_time_s"]


def test_a_resumed_fit_does_not_repeat_its_finished_warmup(segments, tmp_path):
    first = _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path)
    stage = json.loads((tmp_path / WARMUP_DIR / STAGE_NAME).read_text())
    assert stage["params"] == pytest.approx(first.warmup["params"], rel=1e-12)
    assert len(read_history(tmp_path / WARMUP_DIR / "history.jsonl")) == 3
    sim = RecordingSimulator()
    resumed = _staged(segments, sim, checkpoint_dir=tmp_path, resume=True, max_iter=6)
    assert "continuous" not in sim.relaxations
    assert resumed.iterations == 6 and resumed.init == pytest.approx(first.init, rel=1e-12)
    assert len(read_history(tmp_path / "history.jsonl")) == 6


def test_an_earlier_staged_fit_is_never_overwritten_unasked(segments, tmp_path):
    _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path)
    before = (tmp_path / WARMUP_DIR / STAGE_NAME).read_text()
    with pytest.raises(FileExistsError, match="resume=True"):
        _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path)
    assert (tmp_path / WARMUP_DIR / STAGE_NAME).read_text() == before
    with pytest.warns(RuntimeWarning, match="kept as"):
        again = _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path, overwrite=True)
    assert again.warmup["finished"]


def test_a_time_budget_spent_in_the_warmup_returns_the_unfinished_warmup(segments, tmp_path):
    res = _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path, time_budget_s=1e-9)
    assert res.warmup == {**res.warmup, "finished": False} and res.iterations == 1
    assert "time budget" in res.stop_reason
    assert not (tmp_path / WARMUP_DIR / STAGE_NAME).exists()
    done = _staged(segments, RecordingSimulator(), checkpoint_dir=tmp_path, resume=True)
    assert done.warmup["finished"] and done.warmup["iterations"] == 3 and done.iterations == 4


def test_the_scan_after_the_warmup_starts_the_fit_at_the_grid_point_of_the_lowest_loss(segments, tmp_path):
    truth = {"Ab": 0.84, "lifetime": 3100.0, "long_diff": 6.0e-6}
    opts = dict(params=("Ab", "lifetime", "long_diff"), warmup_iter=2, warmup_scan={"long_diff": 5},
                warmup_params=("Ab", "lifetime"), warmup_scan_at="end")
    res = fit(segments, truth, **{**_OPTS, "simulator": RecordingSimulator(), **opts, "checkpoint_dir": tmp_path})
    grid = scan_grid((("long_diff", 5),))["long_diff"]
    assert grid.min() > 2.0e-6 and grid.max() < 9.0e-6, "cell centres: never on a bound of the Table I range"
    nearest = float(grid[abs(grid - truth["long_diff"]).argmin()])
    scan = json.loads((tmp_path / WARMUP_DIR / SCAN_NAME).read_text())
    assert scan["best"] == {"long_diff": pytest.approx(nearest, rel=1e-12)}, "the toy is lowest nearest the truth"
    assert scan["losses"][int(abs(grid - nearest).argmin())] == min(scan["losses"])
    warm_end = read_history(tmp_path / WARMUP_DIR / "history.jsonl")[-1]["params"]
    assert scan["base"]["Ab"] != pytest.approx(0.8), "the grid is taken at the warm-up's end, not at the start"
    assert res.warmup["scan"]["best"] == scan["best"]
    assert res.init["long_diff"] == pytest.approx(nearest, rel=1e-12)
    assert res.init["Ab"] == pytest.approx(scan["base"]["Ab"]) and abs(res.init["Ab"] - warm_end["Ab"]) < 0.05
    # a resumed fit reads the recorded scan instead of scanning again; a fresh one never replaces it unasked
    (tmp_path / WARMUP_DIR / STAGE_NAME).unlink()
    with pytest.raises(FileExistsError, match="earlier fit"):
        fit(segments, truth, **{**_OPTS, "simulator": RecordingSimulator(), **opts, "checkpoint_dir": tmp_path})
    again = RecordingSimulator()
    fit(segments, truth, **{**_OPTS, "simulator": again, **opts, "checkpoint_dir": tmp_path, "resume": True})
    assert len(again.relaxations) < 5


def test_warmup_params_hold_the_others_where_the_scan_at_the_start_put_them(segments, tmp_path):
    truth = {"Ab": 0.84, "lifetime": 3100.0, "long_diff": 6.0e-6}
    opts = dict(params=("Ab", "lifetime", "long_diff"), warmup_iter=3, warmup_scan={"long_diff": 5},
                warmup_params=("Ab", "lifetime"), warmup_scan_at="start", checkpoint_dir=tmp_path)
    res = fit(segments, truth, **{**_OPTS, "simulator": RecordingSimulator(), **opts})
    warm = read_history(tmp_path / WARMUP_DIR / "history.jsonl")
    assert all(set(r["params"]) == {"Ab", "lifetime"} for r in warm), "the warm-up fits only its parameters"
    assert len({json.dumps(r["params"]) for r in warm}) == len(warm), "the warm-up moved Ab and lifetime"
    held = res.warmup["scan"]["best"]["long_diff"]
    assert res.warmup["held"] == ["long_diff"] and res.init["long_diff"] == pytest.approx(held, rel=1e-12)
    scan = json.loads((tmp_path / WARMUP_DIR / SCAN_NAME).read_text())
    assert scan["base"]["Ab"] == pytest.approx(0.8), "the grid at the start: the others at their start values"
    (tmp_path / WARMUP_DIR / STAGE_NAME).unlink()
    with pytest.raises(FileExistsError, match="scan of an earlier fit"):  # the scan comes first: it is refused first
        fit(segments, truth, **{**_OPTS, "simulator": RecordingSimulator(), **opts})
    assert json.loads((tmp_path / WARMUP_DIR / SCAN_NAME).read_text()) == scan
    assert res.init["Ab"] == pytest.approx(res.warmup["params"]["Ab"]) and res.init["Ab"] != pytest.approx(0.8)
    assert set(res.params) == {"Ab", "lifetime", "long_diff"}, "the main stage fits every parameter"
    with pytest.raises(ValueError, match="names none"):
        fit(segments, truth, **{**_OPTS, "simulator": RecordingSimulator(), **opts, "checkpoint_dir": None,
                                "warmup_params": ("kb",)})


def test_a_scan_of_an_unfitted_parameter_is_refused(segments):
    with pytest.raises(ValueError, match="not fitted"):
        _staged(segments, RecordingSimulator(), warmup_scan={"tran_diff": 3})
    with pytest.raises(ValueError, match="points >= 2"):
        Warmup(scan=(("tran_diff", 1),))


def test_keep_best_returns_the_lowest_loss_iterate(segments):
    # a step far too large for the toy: the iterates overshoot, so the last is not the best
    overshoot = dict(warmup_iter=0, max_iter=8, lr=0.5, parameterization="log", bounds="ranges", keep="best")
    res = _staged(segments, RecordingSimulator(), **overshoot)
    losses = [r["loss"] for r in res.history]
    assert res.selected_loss <= min(losses)
    if res.selected_iteration < res.iterations:
        rec = res.history[res.selected_iteration]
        assert rec["loss"] == res.selected_loss and res.params == pytest.approx(rec["params"], rel=1e-12)
    last = _staged(segments, RecordingSimulator(), **{**overshoot, "keep": "last"})
    assert last.selected_iteration == last.iterations and last.selected_loss is None
    assert min(losses) < losses[-1], "the case must overshoot for the test to mean anything"


def test_keep_best_survives_a_resume(segments, tmp_path):
    """The best iterate so far is part of the checkpoint: a fit resumed after its best iterate still returns it."""
    overshoot = dict(warmup_iter=0, lr=0.5, parameterization="log", bounds="ranges", keep="best")
    whole = _staged(segments, RecordingSimulator(), max_iter=8, **overshoot)
    _staged(segments, RecordingSimulator(), max_iter=5, checkpoint_dir=tmp_path, checkpoint_every=1, **overshoot)
    resumed = _staged(segments, RecordingSimulator(), max_iter=8, checkpoint_dir=tmp_path, resume=True, **overshoot)
    assert (resumed.selected_iteration, resumed.selected_loss) == (whole.selected_iteration, whole.selected_loss)
    assert resumed.params == pytest.approx(whole.params, rel=1e-12)


def test_keep_best_needs_one_batch(segments):
    with pytest.raises(ValueError, match="one batch"):
        _staged(segments, RecordingSimulator(), warmup_iter=0, keep="best", batch_length_cm=60)


def test_build_makes_one_stage_and_the_data_recipe_warms_up():
    with pytest.raises(TypeError, match="warm-up stage"):
        build(None, {"Ab": 0.8}, warmup_iter=5)
    assert DATA.warmup.enabled and DATA.warmup.relaxation == "continuous" and DATA.keep == "best"
    # a recipe's warm-up applies to the fitted parameters: its scan and warm-up parameters among them
    two = DATA.warmup.restricted_to(("Ab", "lifetime"))
    assert two.scan == () and two.params == ("Ab", "lifetime") and two.max_iter == DATA.warmup.max_iter
    diffusion = DATA.warmup.restricted_to(("long_diff",))
    assert diffusion.scan == (("long_diff", 4),) and diffusion.max_iter == 0 and diffusion.enabled
    with pytest.raises(ValueError, match="warmup_lr"):
        Warmup(max_iter=3, lr=0.0)


def test_a_profile_of_starts_warms_up_from_each_and_keeps_the_end_point_the_main_forward_likes_best(segments,
                                                                                                    tmp_path):
    truth = {"Ab": 0.84, "lifetime": 3100.0, "long_diff": 6.0e-6}
    opts = dict(params=("Ab", "lifetime", "long_diff"), warmup_iter=2, warmup_scan={"long_diff": 3},
                warmup_params=("Ab", "lifetime"), warmup_starts="profile", checkpoint_dir=tmp_path)
    sim = RecordingSimulator()
    res = fit(segments, truth, **{**_OPTS, "simulator": sim, **opts})
    grid = scan_grid((("long_diff", 3),))["long_diff"]
    starts = res.warmup["starts"]
    assert [s["start"]["long_diff"] for s in starts] == pytest.approx(list(grid), rel=1e-12), "one start per value"
    assert sim.relaxations.count("continuous") == 3 + 3 * 2, "the scan, then two iterations from each start"
    assert all(s["params"]["long_diff"] == s["start"]["long_diff"] for s in starts), "the diffusion is held"
    losses = [s["loss"] for s in starts]
    assert res.warmup["chosen"] == losses.index(min(losses)) and len(set(losses)) == 3
    assert res.init == pytest.approx(starts[res.warmup["chosen"]]["params"], rel=1e-12)
    assert res.warmup["iterations"] == 6
    for k in range(3):
        record = json.loads((tmp_path / WARMUP_DIR / f"start_{k}" / STAGE_NAME).read_text())
        assert record["params"] == pytest.approx(starts[k]["params"], rel=1e-12)
    # a resume after the warm-up's first start: it is read back, the others run
    (tmp_path / WARMUP_DIR / STAGE_NAME).unlink()
    for k in (1, 2):
        shutil.rmtree(tmp_path / WARMUP_DIR / f"start_{k}")
    again = RecordingSimulator()
    resumed = fit(segments, truth, **{**_OPTS, "simulator": again, **opts, "resume": True, "overwrite": True})
    assert again.relaxations.count("continuous") == 2 * 2, "the scan and the first start are read back"
    assert resumed.warmup["starts"][0]["params"] == pytest.approx(starts[0]["params"], rel=1e-12)
    assert resumed.warmup["chosen"] == res.warmup["chosen"]


def test_a_profile_of_starts_needs_a_scan_at_the_start():
    with pytest.raises(ValueError, match="scan at the start"):
        Warmup(max_iter=3, starts="profile")
    with pytest.raises(ValueError, match="scan at the start"):
        Warmup(max_iter=3, scan=(("long_diff", 3),), scan_at="end", starts="profile")
    profile = Warmup(max_iter=3, scan=(("long_diff", 3),), starts="profile")
    assert profile.with_keywords({"warmup_scan": None}).starts == "best", "no scan left: one start"
    assert profile.restricted_to(("Ab",)).starts == "best"
    assert profile.with_keywords({"warmup_iter": 5}).starts == "profile"
