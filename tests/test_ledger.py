"""benchmarks/_common.py's ledger: finished folds carried to a fresh RUN_DIR, never into another run."""
import json
import sys
from pathlib import Path

import pytest

from test_train import FAST, synthetic
from timnet.run import Run
from timnet.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402


def _run(fs, folder, **kw):
    run = Run(fs, folder, config=TrainConfig(**{**FAST, "epochs": 2, **kw}), folds=3, seed=5)
    run.prepare()
    return run


def test_ledger_restores_finished_folds_into_a_fresh_run(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    fs = synthetic()
    first = _run(fs, tmp_path / "a")
    summary = first.execute(progress=False, log=lambda m: None)
    (first.fold_dir(3) / "result.json").unlink()  # as if fold 3 had not finished
    assert _common.record(first.dir, "t/paper") == 2

    fresh = tmp_path / "b"
    assert _common.restore(fresh, "t/paper") == 2
    again = _run(fs, fresh)
    assert sorted(again.done_results()) == [1, 2]
    trained = []
    out = again.execute(progress=False, log=trained.append)
    assert sum("done before" in m for m in trained) == 2  # only fold 3 was trained
    assert [f["confusion"] for f in out["folds"]] == [f["confusion"] for f in summary["folds"]]

    # a RUN_DIR of another configuration is left alone, and recording it replaces the key
    other = _run(fs, tmp_path / "c", label_smoothing=0.2)
    assert _common.restore(other.dir, "t/paper") == 0 and not other.done_results()
    other.execute(progress=False, log=lambda m: None)
    assert _common.record(other.dir, "t/paper") == 3
    recorded = json.loads((tmp_path / "ledger" / "t/paper/run.json").read_text())["identity"]
    assert recorded["train_config"]["label_smoothing"] == pytest.approx(0.2)


def test_speaker_table_counts_only_complete_seeds():
    """A table in progress: a seed with a fold missing has no mean; one complete seed has no spread."""
    import speaker_independent as si

    def fold(k, war):
        return {"fold": k, "test_speakers": [f"s{k}"], "war": war, "uar": war - 0.1, "n_test": 10, "seconds": 1.0}

    per_seed = {1: [fold(1, 0.5), fold(2, 0.7)], 2: [fold(1, 0.9)]}
    s = si.summary(per_seed, n_folds=2)
    assert s["complete_seeds"] == [1] and s["mean_war"] == pytest.approx(0.6) and s["std_war"] is None
    s = si.summary({**per_seed, 2: [fold(1, 0.9), fold(2, 0.5)]}, n_folds=2)
    assert s["mean_war"] == pytest.approx(0.65) and s["std_war"] == pytest.approx(0.0707, abs=1e-4)
    text = si.table("X", ["s1", "s2"], {"paper": {"seeds": per_seed, **si.summary(per_seed, 2)}})
    assert "| s1 | 0.7000 | 0.6000 |" in text and "| s2 | 0.7000 | 0.6000 |" in text  # s1: mean of both seeds
