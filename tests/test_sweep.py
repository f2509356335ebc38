"""Hyper-parameter sweeps: trials scored on validation only, test folds read once at the end."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from test_train import synthetic
from timnet import sweep as sweep_mod
from timnet.backends import LocalBackend
from timnet.errors import TimnetError
from timnet.features import save_features
from timnet.folds import make_folds
from timnet.run import Run
from timnet.train import TrainConfig


def test_sample_trials_grid_times_draws_seeded():
    space = {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32]},
             "label_smoothing": {"grid": [0.0, 0.1]}, "epochs": 3}
    a = sweep_mod.sample_trials(space, trials=3, seed=7)
    assert len(a) == 6 and a == sweep_mod.sample_trials(space, trials=3, seed=7)
    assert a != sweep_mod.sample_trials(space, trials=3, seed=8)
    assert sorted({t["label_smoothing"] for t in a}) == [0.0, 0.1]
    assert all(1e-4 <= t["lr"] <= 1e-2 and t["batch_size"] in (16, 32) and t["epochs"] == 3 for t in a)
    # nothing random: one trial per grid point, however many draws were asked for
    grid_only = {"ema_decay": {"grid": [0.0, 0.999]}, "epochs": 3}
    assert sweep_mod.sample_trials(grid_only, trials=8, seed=7) == [{"ema_decay": 0.0, "epochs": 3},
                                                                    {"ema_decay": 0.999, "epochs": 3}]


@pytest.mark.parametrize("space,message", [
    ({"learning_rate": 0.1}, "unknown parameter 'learning_rate'"),
    ({"val_fraction": 0.3}, "val_fraction is not searched (every trial is scored on the same validation shares"),
    ({"recipe": "strong"}, "recipe is not searched (a preset"),
    ({"lr": {"normal": [0, 1]}}, "expected one of choice, uniform"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "needs [low, high] with low < high"),
    ({"lr": {"loguniform": [0, 1]}}, "positive low bound"),
    ({"lr": {"uniform": ["a", "b"]}}, "uniform needs [low, high], two finite numbers; got ['a', 'b']"),
    ({"lr": {"loguniform": [0.1, "x"]}}, "two finite numbers"),
    ({"epochs": {"randint": [1, 2.5]}}, "randint needs [low, high], two finite integers"),
    ({"time_shift": {"randint": [False, True]}}, "two finite integers"),
    ({"time_shift": {"randint": [0, 10**30]}}, "two finite integers below 2**62; got [0, 1000000000000000000000000000000]"),
    ([1, 2], "expected a mapping"),
    # every value a space can give is checked, whatever the draws (these once failed only when drawn)
    ({"lr": {"uniform": [-0.001, 0.01]}}, "lr: --lr -0.001 invalid; expected a positive"),
    ({"dropout": {"uniform": [-0.02, 0.3]}}, "dropout: dropout (--dropout) -0.02 invalid"),
    ({"dropout": {"uniform": [-1.0e308, 1.0e308]}}, "with low < high, a finite range"),
    ({"epochs": {"uniform": [2, 4]}}, "epochs: takes whole numbers; expected randint, choice, grid or a value"),
    ({"epochs": 2.5}, "epochs: 2.5 invalid; expected a whole number"),
    ({"lr": True}, "lr: True invalid; expected a finite number"),
    ({"lr": "fast"}, "lr: 'fast' invalid; expected a finite number"),
    ({"lr": {"choice": [0.001, "x"]}}, "lr: 'x' invalid"),
    ({"batch_size": {"randint": [-4, 8]}}, "batch_size: --batch-size -4 invalid"),
    ({"lr_schedule": {"uniform": [0, 1]}}, "lr_schedule: takes a name"),
    ({"lr_schedule": "step"}, "lr_schedule: --lr-schedule 'step' unknown"),
    ({"save_every": 5}, "save_every is not searched (it changes no figure: give --save-every)"),
])
def test_bad_spaces_are_refused(space, message):
    with pytest.raises(TimnetError, match=re.escape(message)):
        sweep_mod.check_space(space)


@pytest.mark.parametrize("space", [
    {"warmup_epochs": 600, "epochs": 1000},  # rules between two options are the trials' to check
    {"swa_epochs": {"randint": [100, 200]}, "epochs": 1000},
    {"time_masks": {"grid": [1, 2]}, "time_mask_width": 5},
    {"select": {"choice": ["last", "best-val"]}, "patience": 10},
    {"patience": {"choice": [None, 10]}, "select": "best-val"},  # early stopping against none
    {"lr_schedule": {"choice": ["constant", "cosine"]}, "epochs": {"randint": [1.0, 3.0]}, "dropout": 0},
    {"plain_members": {"choice": [0, 1, 3]}, "members": 4, "vtlp": 0.1},  # mixed ensembles against augmented ones
])
def test_good_spaces_pass(space):
    sweep_mod.check_space(space)


def test_randint_bounds_written_as_whole_floats_draw_integers():
    space = {"time_shift": {"randint": [0.0, 3.0]}}
    sweep_mod.check_space(space)
    draws = sweep_mod.sample_trials(space, trials=20, seed=1)
    assert {type(t["time_shift"]) for t in draws} == {int} and {t["time_shift"] for t in draws} <= {0, 1, 2, 3}


class Spy(np.ndarray):
    """Features that log every indexed read: the order in which evaluation reaches test samples.
    (Training reads the whole array at once, so what training sees is shown by scrambling.)"""

    log: list = []

    def __getitem__(self, idx):
        if isinstance(idx, np.ndarray):
            Spy.log.append(("read", idx.copy()))
        return super().__getitem__(idx)


def test_sweep_never_reads_test_folds_before_the_end(tmp_path, monkeypatch):
    """Test folds are read once each, after every trial trained; and what a fold's test samples
    hold changes neither that fold's validation scores nor its choice of trial."""
    fs = synthetic()
    fs.x = fs.x.view(Spy)
    Spy.log = []
    real_load = sweep_mod.load_checkpoint

    def load_checkpoint(path):
        Spy.log.append(("load", path))
        return real_load(path)

    monkeypatch.setattr(sweep_mod, "load_checkpoint", load_checkpoint)
    space = {"lr": {"loguniform": [3e-4, 3e-3]}, "epochs": 2}
    def sweep(features, folder):
        def make_run(run_dir, config, model_overrides):
            return Run(features, run_dir, config=config, folds=3, seed=3, threads=1,
                       model_overrides=model_overrides, evaluate_test=False)

        return sweep_mod.run_sweep(features, folder, space=space, trials=2, base=TrainConfig(batch_size=16, val_fraction=0.25),
                                   backend=LocalBackend(1), seed=3, make_run=make_run, progress=False, log=lambda m: None)

    out = sweep(fs, tmp_path / "sw")
    events = [e for e, _ in Spy.log]
    assert events[0] == "load"  # nothing was read by index before the first fold's choice
    assert events == ["load", "read"] * 3  # then each fold: its chosen model, its test split, once
    reads = np.concatenate([idx for e, idx in Spy.log if e == "read"])
    assert sorted(reads.tolist()) == list(range(len(fs)))
    assert len(out["trials"]) == 2
    best = max(out["trials"], key=lambda t: t["val_uar"])
    assert out["best"]["trial"] == best["trial"]
    for fold in out["test"]["folds"]:  # each fold used the trial its own validation share chose
        val = {t: json.loads((tmp_path / "sw" / t / "validation.json").read_text())["folds"][fold["fold"] - 1]["val_uar"]
               for t in ("trial_001", "trial_002")}
        assert val[fold["trial"]] == max(val.values())
    for t in out["trials"]:  # the trials' own folders hold validation results only
        v = json.loads((tmp_path / "sw" / t["trial"] / "validation.json").read_text())
        assert all("war" not in f and "val_uar" in f for f in v["folds"])
    assert out["test"]["folds_n"] == 3 and 0 <= out["test"]["mean_uar"] <= 1

    # Fold 2's test samples, features and labels, replaced: fold 2's trials train and validate on
    # the same data (the other folds train on those samples, so only fold 2 must stay the same).
    monkeypatch.undo()
    test_idx = make_folds(len(fs), folds=3, seed=3)[1][1]
    scrambled = synthetic()
    rng = np.random.default_rng(11)
    scrambled.x[test_idx] = rng.standard_normal(scrambled.x[test_idx].shape).astype(np.float32)
    scrambled.y[test_idx] = (scrambled.y[test_idx] + rng.integers(1, 7, len(test_idx))) % 7
    other = sweep(scrambled, tmp_path / "scrambled")
    for t in ("trial_001", "trial_002"):
        a, b = (json.loads((tmp_path / d / t / "validation.json").read_text())["folds"][1] for d in ("sw", "scrambled"))
        assert a.pop("seconds") > 0 and b.pop("seconds") > 0 and a == b  # all but the wall time
        assert (tmp_path / "sw" / t / "fold_02" / "history.csv").read_text() == \
            (tmp_path / "scrambled" / t / "fold_02" / "history.csv").read_text()
    mine, theirs = out["test"]["folds"][1], other["test"]["folds"][1]
    assert mine["trial"] == theirs["trial"] and mine["val_uar"] == theirs["val_uar"]
    assert mine["confusion"] != theirs["confusion"]  # the test score did read the replaced samples
    from timnet.evaluate import score_weights  # a trial scored on test data by hand is warned of

    with pytest.warns(UserWarning, match="trial_001 is a validation-only run .* is choosing on test data"):
        score_weights(synthetic(), tmp_path / "sw" / "trial_001")


def test_sweep_cli_and_bad_space(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1e-4, 1e-3]}\nepochs: 1\ndropout: {choice: [0.1, 0.2]}\n")
    cmd = [sys.executable, "-m", "timnet", "sweep", str(features), "--space", str(space), "-o", str(tmp_path / "sw"),
           "--trials", "2", "--folds", "2", "--batch-size", "16", "--workers", "1", "-q", "--json", str(tmp_path / "s.json")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "s.json").read_text())
    assert [t["trial"] for t in out["trials"]] == ["trial_001", "trial_002"]
    assert isinstance(out["trials"][0]["lr"], float) and "configuration for a final model" in done.stdout
    notes = [tmp_path / "sw" / "trial_002" / "NOTES.md", tmp_path / "sw" / "trial_002" / "fold_01" / "mine.txt"]
    for note in notes:  # the user's, in a trial --overwrite removes
        note.write_text("mine")
    fewer = subprocess.run([*cmd[:cmd.index("--trials") + 1], "1", *cmd[cmd.index("--trials") + 2:], "--overwrite"],
                           capture_output=True, text=True)
    assert fewer.returncode == 0, fewer.stderr
    assert [p.parent.name for p in (tmp_path / "sw").glob("trial_*/run.json")] == ["trial_001"]  # not the old trial_002
    assert sorted((tmp_path / "sw" / "trial_002").rglob("*.*")) == sorted(notes)  # only timnet's files went
    assert "trial_002" not in fewer.stdout + fewer.stderr  # not called a trial left as it is
    # a finished trial fold whose model was deleted is said before anything trains, with what to do
    one = [*cmd[:cmd.index("--trials") + 1], "1", *cmd[cmd.index("--trials") + 2:]]
    model = tmp_path / "sw" / "trial_001" / "fold_02" / "model.pt"
    model.unlink()
    gone = subprocess.run(one, capture_output=True, text=True)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1, gone.stderr
    assert gone.stderr.startswith(f"timnet: error: {model}: missing, though its result.json says the fold is finished; ")
    assert "delete the result.json of each such fold and run the same `timnet sweep`" in gone.stderr
    (model.parent / "result.json").unlink()
    again = subprocess.run(one, capture_output=True, text=True)
    assert again.returncode == 0 and model.is_file(), again.stderr
    # an option the space also sets was silently overridden by it
    clash = subprocess.run([*cmd, "--epochs", "3"], capture_output=True, text=True)
    assert clash.returncode == 1 and clash.stderr == f"timnet: error: --epochs 3 and {space} both set epochs; give it in one place\n"
    # a training run's folder is not a sweep's
    train = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "tr"), "--folds", "2",
                            "--epochs", "1", "--workers", "1", "-q", "--no-report"], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    into_run = subprocess.run([*cmd[:cmd.index("-o") + 1], str(tmp_path / "tr"), *cmd[cmd.index("-o") + 2:]],
                              capture_output=True, text=True)
    assert into_run.returncode == 1 and "holds a training run (run.json)" in into_run.stderr, into_run.stderr
    assert not list((tmp_path / "tr").glob("trial_*"))
    # nor is a folder of the user's files (train refuses it as well)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    into_mine = subprocess.run([*cmd[:cmd.index("-o") + 1], str(tmp_path / "mine"), *cmd[cmd.index("-o") + 2:]],
                               capture_output=True, text=True)
    assert into_mine.returncode == 1 and "mine exists and is not a timnet SWEEP_DIR" in into_mine.stderr, into_mine.stderr
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    # and a sweep's folder is not a training run's, even with --overwrite (they would be mixed)
    into_sweep = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "sw"), "--folds",
                                 "2", "--epochs", "1", "--overwrite"], capture_output=True, text=True)
    assert into_sweep.returncode == 1 and into_sweep.stderr == (f"timnet: error: {tmp_path / 'sw'} holds a sweep (trial_NNN "
                                                                "runs); a training run writes fold_NN/ folds: give another RUN_DIR\n")
    assert not list((tmp_path / "sw").glob("fold_*"))
    seeds = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "sw"), "--seeds",
                            "1,2", "--epochs", "1", "--overwrite"], capture_output=True, text=True)
    assert seeds.returncode == 1 and "holds a sweep (trial_NNN runs)" in seeds.stderr and not list((tmp_path / "sw").glob("seed_*"))
    # another space puts other values behind the same trial_001: said as a sweep's, before any training
    space.write_text("lr: {loguniform: [2e-3, 3e-3]}\nepochs: 1\ndropout: {choice: [0.1, 0.2]}\n")
    changed = subprocess.run(cmd, capture_output=True, text=True)
    assert changed.returncode == 1 and changed.stderr.strip().count("\n") == 0, changed.stderr
    assert "trial_001 holds a trial of another sweep (train_config.lr differs: another space" in changed.stderr
    assert "SWEEP_DIR" in changed.stderr and "RUN_DIR" not in changed.stderr
    assert [p.parent.name for p in (tmp_path / "sw").glob("trial_*/run.json")] == ["trial_001"]
    assert sorted((tmp_path / "sw" / "trial_002").rglob("*.*")) == sorted(notes)
    # command-line options valid only beside the space's values are checked with them, trial by trial
    space.write_text("members: {grid: [2, 3]}\nepochs: 1\n")
    together = [*cmd[:cmd.index("--trials") + 1], "1", *cmd[cmd.index("--trials") + 2:]]
    together[together.index("-o") + 1] = str(tmp_path / "sw2")
    r = subprocess.run([*together, "--plain-members", "1", "--gain", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads((tmp_path / "sw2" / f"trial_00{i}" / "run.json").read_text())["identity"]["train_config"]
                  ["members"] for i in (1, 2)) == [2, 3]
    space.write_text("members: {grid: [1, 2]}\nepochs: 1\n")  # members 1: plain_members 1 is not fewer
    r = subprocess.run([*together, "--plain-members", "1", "--gain", "1", "--overwrite"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("timnet: error: --plain-members 1 invalid"), r.stderr
    r = subprocess.run([*together, "--workers", "0", "--overwrite"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("timnet: error: --workers 0"), r.stderr
    space.write_text("lr: [0.1\n")
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith(f"timnet: error: {space}: not a valid search space file")


@pytest.mark.parametrize("fold_major, expected", [(False, [(0, 1), (0, 3), (1, 1), (1, 2), (1, 3)]),
                                                  (True, [(0, 1), (1, 1), (1, 2), (0, 3), (1, 3)])])
def test_execute_runs_schedules_run_by_run_or_fold_by_fold(fold_major, expected, tmp_path):
    """Recipe selection pairs candidates fold by fold, so it schedules fold k of every run before
    fold k+1: work stopped part way leaves complete pairs. Finished folds are never scheduled."""
    from types import SimpleNamespace

    from timnet.run import execute_runs

    def fake_run(name, done):
        folder = tmp_path / name  # never made: no run.json, no partial fold to look at
        return SimpleNamespace(dir=folder, folds_n=3, config=TrainConfig(epochs=1), done_results=lambda: dict(done),
                               fold_dir=lambda k: folder / f"fold_{k:02d}", members_done=lambda k: set(),
                               write_summary=lambda results: dict(results))

    class Recording:
        def map(self, runs, tasks, on_epoch):
            self.tasks = list(tasks)
            for task in tasks:
                yield task, {"val_war": 0.5, "val_uar": 0.5, "epoch": 1, "epochs_run": 1, "seconds": 0.0}

    backend = Recording()
    kept = {"val_war": 1.0, "val_uar": 1.0}
    runs = [fake_run("a", {2: kept}), fake_run("b", {})]
    summaries = execute_runs(runs, backend=backend, progress=False, log=lambda m: None, fold_major=fold_major)
    assert backend.tasks == expected
    assert [sorted(s) for s in summaries] == [[1, 2, 3], [1, 2, 3]]
    assert summaries[0][2] is kept  # a finished fold is kept, not retrained


def test_trial_epochs_move_the_recipes_own_swa_window(tmp_path):
    """A trial's epochs take the strong recipe's averaging window (the last fifth) with them; a
    window the user set is kept."""
    from timnet.train import recipe_config

    fs = synthetic()

    def make_run(folder, config, model_overrides):
        return Run(fs, folder, config=config, folds=3, seed=3, evaluate_test=False)

    def windows(base, params_list, **kw):
        return [r.config.swa_epochs for r in sweep_mod.trial_runs(tmp_path / str(len(list(tmp_path.iterdir()))),
                                                                   params_list, base=base, make_run=make_run, **kw)]

    assert windows(recipe_config("strong", val_fraction=0.2), [{"epochs": 50}, {"epochs": 3}, {"lr": 0.002}]) == [10, 1, 100]
    assert windows(recipe_config("strong", val_fraction=0.2, epochs=50), [{"epochs": 100}]) == [20]
    assert windows(recipe_config("strong", val_fraction=0.2, swa_epochs=30), [{"epochs": 40}]) == [30]
    assert windows(recipe_config("paper", val_fraction=0.2), [{"epochs": 40}]) == [0]
    # --swa-epochs 100 given at 500 epochs is the preset's value, but given: kept (`timnet sweep` says which)
    given = recipe_config("strong", val_fraction=0.2, swa_epochs=100)
    assert windows(given, [{"epochs": 300}], swa_follows_epochs=False) == [100]
    assert windows(given, [{"epochs": 300}]) == [60]


def test_an_option_no_trial_depends_on_is_refused_before_anything_is_written(tmp_path):
    """Mask widths without masks, eval_every when nothing selects or stops on validation, plain_members
    without augmentation: every trial would be the same training. Refused, as save_every is."""
    from timnet.train import recipe_config

    fs = synthetic()

    def make_run(folder, config, model_overrides):
        return Run(fs, folder, config=config, folds=3, seed=3, evaluate_test=False)

    base = recipe_config("paper", val_fraction=0.2)
    for params, message in (([{"time_mask_width": 1}, {"time_mask_width": 20}], r"time_mask_width .* \(no --time-masks\)"),
                            ([{"eval_every": 1}, {"eval_every": 2}], r"eval_every .*: validation only reports\)"),
                            ([{"plain_members": 0, "members": 2}, {"plain_members": 1, "members": 2}],
                             r"plain_members .* \(no augmentation on: every member trains alike\)")):
        with pytest.raises(TimnetError, match=rf"^{message}; expected it left out of the space, or the option it depends on set too"):
            sweep_mod.trial_runs(tmp_path / "sw", params, base=base, make_run=make_run)
        assert not (tmp_path / "sw").exists()
    # where it does matter, in some trial at least, it is searched
    runs = sweep_mod.trial_runs(tmp_path / "ok", [{"time_masks": 0, "time_mask_width": 2}, {"time_masks": 1, "time_mask_width": 3}],
                                base=base, make_run=make_run)
    assert len(runs) == 2
    assert len(sweep_mod.trial_runs(tmp_path / "bv", [{"eval_every": 1}, {"eval_every": 2}], make_run=make_run,
                                    base=recipe_config("paper", val_fraction=0.2, select="best-val"))) == 2


def test_trials_whose_validation_figures_are_not_alike_are_said(tmp_path):
    """A best-val trial's figure is the best of its looks at the share that chose its epoch: beside
    a `last` trial's, or one looking more often or longer, it is higher for that alone."""
    from timnet.train import recipe_config

    fs = synthetic()

    def make_run(folder, config, model_overrides):
        return Run(fs, folder, config=config, folds=3, seed=3, evaluate_test=False)

    def note(params, **base):
        runs = sweep_mod.trial_runs(tmp_path / str(len(list(tmp_path.iterdir()))), params, make_run=make_run,
                                    base=recipe_config("paper", val_fraction=0.2, **base))
        return sweep_mod.optimism_note(runs)

    assert note([{"select": "last"}, {"select": "best-val"}]).startswith(
        "the trials differ in select: a best-val trial's validation figure is the best of its looks")
    assert note([{"patience": None}, {"patience": 10}, {"eval_every": 2}], select="best-val").endswith(
        "fix --eval-every and --patience for a fair comparison")
    assert note([{"lr": 1e-3}, {"lr": 2e-3}], select="best-val") is None  # alike in how they look: fair
    assert note([{"lr": 1e-3}, {"lr": 2e-3}]) is None


@pytest.mark.parametrize("name,text,message", [
    ("dup.yaml", "lr: 0.001\nepochs: 3\nlr: 0.002\n", "not a valid search space file ('lr' given twice)"),
    ("dup.json", '{"lr": 0.001, "lr": 0.002}', "not a valid search space file ('lr' given twice)"),
    ("nested.yaml", "lr:\n  choice: [0.1]\n  choice: [0.2]\n", "('choice' given twice)"),
    ("broken.yaml", "lr: 0.001\nepochs: [1, 2\n", "not a valid search space file (ParserError at line 3, column 1)"),
    ("broken.json", '{"lr": 0.001,\n "epochs": }', "not a valid search space file (JSONDecodeError at line 2, column 12)"),
])
def test_space_file_problems_are_located(tmp_path, name, text, message):
    """A key given twice once kept its last value silently; a parse error says where it stopped."""
    (tmp_path / name).write_text(text)
    with pytest.raises(TimnetError, match=re.escape(message)):
        sweep_mod.load_space(tmp_path / name)


def test_a_trial_of_other_threads_keeps_the_runs_hint(tmp_path):
    """Only values a sweep draws are blamed on another sweep: a trial folder trained with other
    --threads (another --workers, another machine) is told how to resume, as a training run is."""
    import pickle

    from timnet.errors import ConfigurationChanged

    fs = synthetic()

    def factory(threads):
        return lambda folder, config, overrides: Run(fs, folder, config=config, folds=3, seed=3, threads=threads,
                                                     evaluate_test=False)

    base = TrainConfig(epochs=1, val_fraction=0.2)
    sweep_mod.trial_runs(tmp_path, [{"lr": 0.001}], base=base, make_run=factory(1))
    with pytest.raises(TimnetError, match=r"trial_001 holds a trial run with a different configuration \(threads_per_fold\); "
                                          r"use another SWEEP_DIR or --overwrite \(which deletes its trials\); to resume it pass --threads 1$"):
        sweep_mod.trial_runs(tmp_path, [{"lr": 0.001}], base=base, make_run=factory(2))
    with pytest.raises(TimnetError, match=r"trial_001 holds a trial of another sweep \(train_config.lr differs"):
        sweep_mod.trial_runs(tmp_path, [{"lr": 0.002}], base=base, make_run=factory(1))
    # raised in a worker process, the refusal crosses back whole
    e = pickle.loads(pickle.dumps(ConfigurationChanged("run: different", ("seed",), "; hint")))
    assert (str(e), e.changed, e.hint) == ("run: different", ("seed",), "; hint")


def test_a_diverged_trial_is_recorded_and_chosen_nowhere(tmp_path):
    """A trial whose loss becomes NaN does not stop the sweep: its folds are recorded as diverged
    (kept when the sweep is run again, not trained again), and every choice is made among the others;
    members trained in other workers record it as the fold itself does. Only when every trial
    diverged is the sweep an error."""
    fs = synthetic()
    logs = []

    def sweep(space, folder, *, members=1, workers=1):
        def make_run(run_dir, config, model_overrides):
            return Run(fs, run_dir, config=config, folds=3, seed=3, threads=1, model_overrides=model_overrides,
                       evaluate_test=False)

        base = TrainConfig(batch_size=16, val_fraction=0.25, members=members)
        return sweep_mod.run_sweep(fs, folder, space=space, trials=1, base=base, backend=LocalBackend(workers), seed=3,
                                   make_run=make_run, progress=False, log=logs.append)

    space = {"lr": {"grid": [1e-3, 1e38]}, "epochs": 2}
    out = sweep(space, tmp_path / "sw")
    ok, lost = out["trials"]
    assert ok["val_uar"] is not None and lost["val_uar"] is None and lost["val_war"] is None
    assert out["best"]["trial"] == "trial_001" and {f["trial"] for f in out["test"]["folds"]} == {"trial_001"}
    assert ("trial_002: fold 1, 2, 3 diverged (the loss became NaN or infinite): chosen in no fold where it did, nor "
            "as the configuration for a final model") in logs
    for k in (1, 2, 3):
        fold = tmp_path / "sw" / "trial_002" / f"fold_{k:02d}"
        result = json.loads((fold / "result.json").read_text())
        assert "the loss is nan at epoch 1" in result["diverged"] and result["val_uar"] is None
        assert not list(fold.glob("state*.pt")) and not (fold / "diverged.json").exists()
    summary = json.loads((tmp_path / "sw" / "trial_002" / "validation.json").read_text())
    assert summary["diverged_folds"] == [1, 2, 3] and summary["mean_val_uar"] is None
    text = sweep_mod.format_sweep(out)
    assert re.search(r"trial_002 .* diverged +-$", text, re.M) and "trial_001" in text.splitlines()[1]

    logs.clear()  # run again: nothing trains, the diverged folds are kept as they are
    again = sweep(space, tmp_path / "sw")
    assert again["test"] == out["test"]
    assert sum("fold 1/3: done before, kept (diverged (" in m for m in logs) == 1  # trial_002's; trial_001's has figures

    # an ensemble's members trained in two workers: the member that diverged is recorded for its fold
    pooled = sweep(space, tmp_path / "pooled", members=2, workers=2)
    assert pooled["trials"][1]["val_uar"] is None and pooled["best"]["trial"] == "trial_001"
    assert not list((tmp_path / "pooled" / "trial_002").glob("fold_*/member_*.pt"))

    with pytest.raises(TimnetError, match="every trial of .* diverged .*; expected a space with lower learning rates"):
        sweep({"lr": 1e38, "epochs": 2}, tmp_path / "all")

    # its folder is said to be so by the commands that read a run's folds, not a missing file
    from timnet.evaluate import fold_models
    from timnet.report import plot_run

    with pytest.raises(TimnetError, match="trial_002: every finished fold diverged .*: nothing to draw"):
        plot_run(tmp_path / "sw" / "trial_002")
    with pytest.raises(TimnetError, match=r"trial_002: a sweep trial whose folds hold no model \(fold 1, 2, 3 diverged"):
        fold_models(tmp_path / "sw" / "trial_002", fs, folds=3, seed=3)


def test_a_fold_chooses_among_the_trials_that_converged_on_it_alone(tmp_path):
    """A trial that diverged on one fold is still a candidate on the others (leaving it out there would
    let the diverged fold's training part, which holds their test utterances, take part in their
    choice), but not the configuration for a final model; and a member of an ensemble's fold stops
    at its next epoch once another member recorded the fold as diverged."""
    fs = synthetic()

    def make_run(run_dir, config, model_overrides):
        return Run(fs, run_dir, config=config, folds=3, seed=3, threads=1, model_overrides=model_overrides,
                   evaluate_test=False)

    def sweep():
        return sweep_mod.run_sweep(fs, tmp_path / "sw", space={"lr": {"grid": [1e-3, 3e-3, 1e-2]}, "epochs": 3},
                                   trials=1, base=TrainConfig(batch_size=16, val_fraction=0.25), backend=LocalBackend(1),
                                   seed=3, make_run=make_run, progress=False, log=lambda m: None)

    first = sweep()
    picks = {f["fold"]: f["trial"] for f in first["test"]["folds"]}
    # the trial fold 1 chose is made to have diverged on fold 2 (as a NaN loss there records it)
    fold = tmp_path / "sw" / picks[1] / "fold_02"
    (fold / "model.pt").unlink()
    (fold / "result.json").write_text(json.dumps({"fold": 2, "diverged": "the loss is nan at epoch 2", "val_war": None,
                                                  "val_uar": None, "n_val": 20}))
    again = sweep()
    chosen = {f["fold"]: f["trial"] for f in again["test"]["folds"]}
    assert chosen[1] == picks[1] and chosen[3] == picks[3]  # fold 1 and 3 choose as before
    assert chosen[2] != picks[1] and again["best"]["trial"] != picks[1]
    assert next(t for t in again["trials"] if t["trial"] == picks[1])["val_uar"] is None

    # a member trained in another worker stops once the fold is recorded as diverged
    run = make_run(tmp_path / "members", TrainConfig(batch_size=16, val_fraction=0.25, epochs=50, members=2), {})
    run.prepare()
    seen = []

    def on_epoch(row):
        seen.append(row["epoch"])
        if row["epoch"] == 52:  # member 1's second epoch (counted after member 0's 50)
            (run.fold_dir(1) / "diverged.json").write_text(json.dumps({"member": 0, "message": "nan"}))

    run.train_member(1, 1, on_epoch=on_epoch)
    assert seen == [51, 52] and not (run.fold_dir(1) / "member_1.pt").exists()
    result = run.train_and_test_fold(1)  # the fold records it, trains nothing more
    assert result["diverged"] == "nan" and not list(run.fold_dir(1).glob("*.pt"))
