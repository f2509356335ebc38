"""benchmarks/_common.py's ledger: finished folds carried to a fresh RUN_DIR, never into another run;
the table scripts' tables in progress."""
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train import FAST, synthetic
from timnet.errors import TimnetError
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

    # a RUN_DIR of another configuration is left alone (recording: the test below)
    other = _run(fs, tmp_path / "c", label_smoothing=0.2)
    assert _common.restore(other.dir, "t/paper") == 0 and not other.done_results()


def test_each_fold_is_recorded_as_timnet_says_it_finished(tmp_path, monkeypatch):
    """A session's end kills a table's run with no `finally` left to record it: folds go to the ledger
    as timnet's line for each says it finished (a line the pattern must keep matching)."""
    from timnet.backends import LocalBackend
    from timnet.features import save_features
    from timnet.run import execute_runs

    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    fs = synthetic()
    lines = []
    for folder, val in (("test", 0.0), ("val", 0.25)):
        run = Run(fs, tmp_path / folder, config=TrainConfig(**{**FAST, "epochs": 1, "val_fraction": val}), folds=2, seed=5,
                  evaluate_test=not val)
        run.prepare()
        for _ in range(2):  # trained, then "done before, kept"
            execute_runs([run], backend=LocalBackend(1), progress=False, log=lines.append)
    assert [bool(_common.FOLD_DONE.search(m)) for m in lines] == [True, True, False, False] * 2, lines

    recorded = []
    monkeypatch.setattr(_common, "record", lambda run_dir, key: recorded.append(len(list(Path(run_dir).glob("fold_*/result.json")))))
    features = save_features(fs, tmp_path / "f.npz")
    out, _ = _common.train(str(features), tmp_path / "run", "--folds", "2", "--epochs", "1", "--workers", "1", record_as="t/run")
    assert out["folds_n"] == 2 and recorded == [1, 2]  # after each fold, not once at the end


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
    # the mean of fewer seeds than asked for says so in its cell
    assert "| **mean (± std over seeds)** | **0.6000** (1/2 seeds) | **0.5000** (1/2 seeds) |" in text


def test_speaker_table_pairs_last_weights_over_complete_seeds_only():
    """The averaged-minus-last-weights difference of a leave-one-speaker-out run: over the folds of
    complete seeds (a seed part way through is left out, as from the means), with the s.e. of the
    folds and that of the speakers' mean differences (a speaker's folds share its utterances)."""
    import speaker_independent as si

    def fold(spk, d):
        return {"test_speakers": [spk], "war": 0.5 + d, "uar": 0.5, "last_weights": {"war": 0.5, "uar": 0.5}}

    per_seed = {1: [fold("a", 0.1), fold("b", 0.0)], 2: [fold("a", 0.3), fold("b", 0.2)], 3: [fold("a", 9.0)]}
    text = si.paired(per_seed, per_seed, [1, 2], lambda f: f["last_weights"])
    d = np.array([0.1, 0.0, 0.3, 0.2])  # seed 3's fold left out
    by_speaker = np.array([0.2, 0.1])
    assert text.startswith(f"WAR {d.mean():+.4f} ± {d.std(ddof=1) / 2:.4f} (by speaker ± "
                           f"{by_speaker.std(ddof=1) / np.sqrt(2):.4f}), UAR +0.0000 ± 0.0000"), text
    assert "4 folds of seeds 1, 2" in text and "2 speakers'" in text and "WAR ahead on 3, behind on 0" in text
    assert si.paired(per_seed, per_seed, [], lambda f: f["last_weights"]) == "too few folds of complete seeds"

    # against another recipe: folds matched by seed and speaker, not by position
    other = {1: [fold("b", 0.5), fold("a", 0.0)], 2: [fold("b", 0.0), fold("a", 0.0)]}
    d = np.array([0.6 - 0.5, 0.5 - 1.0, 0.8 - 0.5, 0.7 - 0.5])  # (seed 1, a), (1, b), (2, a), (2, b)
    by_speaker = np.array([(d[0] + d[2]) / 2, (d[1] + d[3]) / 2])
    want = (f"WAR {d.mean():+.4f} ± {d.std(ddof=1) / 2:.4f} (by speaker ± {by_speaker.std(ddof=1) / np.sqrt(2):.4f}), "
            "UAR +0.0000 ± 0.0000")
    assert si.paired(per_seed, other, [1, 2]).startswith(want)
    out = {n: {"seeds": f, **si.summary(f, 2)} for n, f in (("swa", other), ("strong", per_seed))}
    text = si.table("X", ["a", "b"], out)
    assert f"- strong minus swa, paired over the folds of the seeds complete in both: {want}" in text


def test_speaker_table_reads_an_ensembles_first_member_and_last_weights():
    """`--recipes swa,strong` gives the one-member figures too: each fold's first member alone (and
    the ensemble's last weights) become table entries of their own, only where every fold has them."""
    import speaker_independent as si

    def fold(spk, war, first, last=None):
        return {"test_speakers": [spk], "war": war, "uar": war, "members": [{"war": first, "uar": first}, {"war": 0.0, "uar": 0.0}],
                **({"last_weights": {"war": last, "uar": last}} if last is not None else {})}

    per_seed = {1: [fold("a", 0.8, 0.6, 0.7), fold("b", 0.6, 0.4, 0.5)]}
    extra = si.other_weights("strong", per_seed, 2)
    assert list(extra) == ["strong: last weights", "strong: first member"]
    assert extra["strong: first member"]["mean_war"] == pytest.approx(0.5)
    assert extra["strong: last weights"]["mean_war"] == pytest.approx(0.6)
    text = si.table("X", ["a", "b"], {"strong": {"seeds": per_seed, **si.summary(per_seed, 2)}, **extra})
    assert "| a | 0.8000 | 0.8000 | 0.7000 | 0.7000 | 0.6000 | 0.6000 |" in text
    per_seed[1][1].pop("last_weights")  # a member taken from another run: no last weights for the fold
    assert list(si.other_weights("strong", per_seed, 2)) == ["strong: first member"]
    assert si.other_weights("swa", {1: [{"test_speakers": ["a"], "war": 0.5, "uar": 0.5}]}, 1) == {}


def test_ten_fold_pairs_each_recipe_with_the_first_by_fold():
    """Each recipe minus the first and minus the first's last weights, folds matched by number
    over the folds both finished (a fold only one has is left out)."""
    import ten_fold

    def fold(k, war, last=None):
        return {"fold": k, "war": war, "uar": war, "n_test": 10, **({"last_weights": {"war": last, "uar": last}} if last else {})}

    swa = [fold(1, 0.5, 0.4), fold(2, 0.6, 0.7), fold(3, 0.7, 0.7)]
    strong = [fold(3, 0.8), fold(1, 0.5), fold(4, 0.9)]  # fold 4: swa lacks it; fold 2: strong does
    lines = ten_fold.paired_lines({"swa": {"folds": swa}, "strong": {"folds": strong}})
    d, last = np.array([0.1, 0.0]), np.array([0.1, 0.1])  # folds 3 and 1
    assert lines == [f"- strong minus swa, paired by fold over 2 folds: WAR {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(2):.4f}, "
                     f"UAR {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(2):.4f} (mean ± s.e.; WAR ahead on 1, behind on 0, equal on 1)",
                     f"- strong minus swa: last weights, paired by fold over 2 folds: WAR {last.mean():+.4f} ± 0.0000, "
                     "UAR +0.1000 ± 0.0000 (mean ± s.e.; WAR ahead on 2, behind on 0, equal on 0)"]


def test_a_table_refuses_a_run_folder_of_another_configuration(tmp_path, monkeypatch, capsys):
    """A table reads every finished fold in RUNS/<recipe>: a folder holding another recipe, seed,
    feature file or fold count is an error naming what differs, not figures under the wrong name;
    and a run.json that cannot be read matches no ledger entry (nothing restored or recorded)."""
    from timnet.rundir import features_fingerprint

    fs = synthetic()
    run = _run(fs, tmp_path / "r")
    monkeypatch.setitem(_common.RECIPE_ARGS, "t", ("paper", {**FAST, "epochs": 2}))
    fp = features_fingerprint(fs)
    _common.check_run_is(run.dir, "t", seed=5, fingerprint=fp, folds=3, split="random")  # its own recipe
    _common.check_run_is(tmp_path / "none", "t", seed=5, fingerprint=fp, folds=3, split="random")  # nothing there yet
    for kw, why in (({"seed": 6}, "seed 5 (expected 6)"), ({"folds": 10}, "folds 3 (expected 10)"),
                    ({"fingerprint": "0" * 16}, "features_fingerprint"), ({"split": "speaker"}, "split 'random'")):
        with pytest.raises(TimnetError, match=rf"{run.dir}: holds another run than recipe 't'.*{re.escape(why)}"):
            _common.check_run_is(run.dir, "t", **{"seed": 5, "fingerprint": fp, "folds": 3, "split": "random", **kw})
    # what differs, and only that: --plain-members 0, inert beside one member, is not said to change
    with pytest.raises(TimnetError, match=r"train_config.members 1 \(expected 4\), train_config.mixup_alpha 0.0 "
                                          r"\(expected 0.2\); move it away"):
        monkeypatch.setitem(_common.RECIPE_ARGS, "t", ("paper", {**FAST, "epochs": 2, "members": 4, "mixup_alpha": 0.2}))
        _common.check_run_is(run.dir, "t", seed=5, fingerprint=fp, folds=3, split="random")
    monkeypatch.setitem(_common.RECIPE_ARGS, "t", ("paper", {**FAST, "epochs": 2, "label_smoothing": 0.2}))
    with pytest.raises(TimnetError, match=r"train_config.label_smoothing 0.1 \(expected 0.2\)"):
        _common.check_run_is(run.dir, "t", seed=5, fingerprint=fp, folds=3, split="random")

    # the ledger's own entry is checked before it is restored: moving the run folder would not help
    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    run.execute(progress=False, log=lambda m: None)
    assert _common.record(run.dir, "t/x") == 3
    with pytest.raises(TimnetError, match=r"ledger/t/x: holds another run .*label_smoothing.*the ledger's t/x is another "
                                          r"run: record this table's under another key"):
        _common.check_run_is(_common.LEDGER / "t/x", "t", seed=5, fingerprint=fp, folds=3, split="random", ledger_key="t/x")

    # a run file that cannot be read is said so, and is never recorded, nor restored into
    broken = tmp_path / "broken"
    shutil.copytree(run.dir, broken)
    (broken / "run.json").write_text("{")
    assert _common.restore(broken, "t/x") == 0
    assert _common.record(broken, "t/x") == 0 and _common.record(broken, "t/new") == 0
    assert _common.record(broken, "t/x", replace=True) == 0 and not (_common.LEDGER / "t/new").exists()
    assert json.loads((_common.LEDGER / "t/x/run.json").read_text())["identity"]["seed"] == 5  # the entry kept
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "run.json").write_text("{")
    (_common.LEDGER / "t/x/run.json").write_text("[")  # two unreadable run files are not one configuration
    assert _common.restore(fresh, "t/x") == 0 and not list(fresh.glob("fold_*"))
    err = capsys.readouterr().err
    assert f"ledger: {broken / 'run.json'} cannot be read: not recorded" in err
    assert f"ledger: {fresh / 'run.json'} cannot be read: not restored" in err and "another configuration" not in err


def test_table_scripts_check_the_runs_they_read(tmp_path, monkeypatch, capsys):
    """ten_fold.py and speaker_independent.py refuse a run folder of another seed, split or fold
    count under a recipe's name before they print a table of it."""
    import speaker_independent
    import ten_fold
    from timnet.features import save_features

    fs = synthetic()
    features = tmp_path / "f.npz"
    save_features(fs, features)
    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    monkeypatch.setitem(_common.RECIPE_ARGS, "t", ("paper", {**FAST, "epochs": 2}))
    argv = [str(features), "--recipes", "t", "--table-only", "--json", str(tmp_path / "t.json")]

    def refused(script, runs, why):
        monkeypatch.setattr(sys, "argv", [script.__name__, "--runs", str(runs), *argv])
        with pytest.raises(TimnetError, match=why):
            script.main()

    Run(fs, tmp_path / "a" / "t", config=TrainConfig(**{**FAST, "epochs": 2}), folds=10, seed=47).prepare()
    refused(ten_fold, tmp_path / "a", r"seed 47 \(expected 46\)")  # EMODB's paper seed
    Run(fs, tmp_path / "b" / "t", config=TrainConfig(**{**FAST, "epochs": 2}), folds=3, seed=46).prepare()
    refused(ten_fold, tmp_path / "b", r"folds 3 \(expected 10\)")
    for s in (46, 47, 48):  # the speakers' folds of each seed, one seed of them trained on random folds
        Run(fs, tmp_path / "c" / "t" / f"seed_{s}", config=TrainConfig(**{**FAST, "epochs": 2}), folds=6, seed=s,
            split="speaker" if s != 47 else "random").prepare()
    refused(speaker_independent, tmp_path / "c", r"seed_47: holds another run .* with seed 47 .*split 'random' \(expected 'speaker'\)")


def test_ten_fold_table_pairs_an_averaging_run_with_its_last_weights(tmp_path, monkeypatch):
    """A strong (SWA) run in progress: its folds so far, matched by number, and its last weights
    (the paper's recipe step for step) as a second column with their own mean; a run without
    them gets none."""
    import ten_fold

    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    fs = synthetic()
    run = _run(fs, tmp_path / "strong", swa_epochs=1)
    run.execute(progress=False, log=lambda m: None)
    (run.fold_dir(2) / "result.json").unlink()  # fold 2 unfinished, fold 3 done
    folds = ten_fold.finished_folds(run.dir)
    assert [f["fold"] for f in folds] == [1, 3] and all({"war", "uar"} <= set(f["last_weights"]) for f in folds)
    s = ten_fold.summary(folds)
    assert s["mean_uar_last"] == pytest.approx((folds[0]["last_weights"]["uar"] + folds[1]["last_weights"]["uar"]) / 2)
    assert s["n_test"] == folds[0]["n_test"] + folds[1]["n_test"]
    paper = [{k: v for k, v in f.items() if k != "last_weights"} for f in folds]
    text = ten_fold.table("EMODB", {"strong": {"folds": folds, **s}, "paper": {"folds": paper, **ten_fold.summary(paper)}},
                          n_folds=3)
    assert "strong: last weights WAR" in text and "paper: last weights" not in text
    f3 = folds[1]
    row = (f"| 3 | {f3['n_test']} | {f3['war']:.4f} | {f3['uar']:.4f} | "
           f"{f3['last_weights']['war']:.4f} | {f3['last_weights']['uar']:.4f} | {f3['war']:.4f} | {f3['uar']:.4f} |")
    assert row in text and "| 2 |  | – | – | – | – | – | – |" in text and "- strong: 2 of 3 folds finished" in text
    mean = next(line for line in text.splitlines() if "mean ± std" in line)  # a mean of 2 folds says so
    assert mean.count("(2/3 folds)") == 6 and f"**{_common.pm(s['mean_war'], s['std_war'])}** (2/3 folds)" in mean


def test_ten_fold_table_shows_the_smaller_ensembles_of_a_larger_one():
    """A four-member run also scored its first two and first three members on each fold (nested
    seeds): the table gives them columns of their own, with their means; a fold missing one (an
    older record) leaves that column without a mean rather than a mean of fewer folds."""
    import ten_fold

    def fold(k, war, two, three):
        return {"fold": k, "n_test": 10, "war": war, "uar": war, "first_member": {"war": 0.5, "uar": 0.5},
                "first_members": [{"members": 2, "war": two, "uar": two}, {"members": 3, "war": three, "uar": three}]}

    folds = [fold(1, 0.9, 0.7, 0.8), fold(2, 0.7, 0.5, 0.6)]
    s = ten_fold.summary(folds)
    assert s["mean_war_first2"] == pytest.approx(0.6) and s["mean_uar_first3"] == pytest.approx(0.7)
    text = ten_fold.table("EMODB", {"strong": {"folds": folds, **s}}, n_folds=2)
    assert ("| 1 | 10 | 0.9000 | 0.9000 | 0.5000 | 0.5000 | 0.7000 | 0.7000 | 0.8000 | 0.8000 |" in text
            and "strong: first 3 members WAR" in text)
    folds[1]["first_members"] = folds[1]["first_members"][:1]
    s = ten_fold.summary(folds)
    assert "mean_war_first3" not in s and "mean_war_first2" in s
    last = ten_fold.table("EMODB", {"strong": {"folds": folds, **s}}, n_folds=2).splitlines()
    assert [line for line in last if line.startswith("| 2 |")] == ["| 2 | 10 | 0.7000 | 0.7000 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | – | – |"]
    assert [line for line in last if "mean ± std" in line][0].endswith("| – | – |")


def test_ten_fold_seeds_spread_counts_only_complete_seeds():
    """Other seeds of the protocol: each seed's mean over its folds, and mean ± sample std over the
    complete seeds only (a seed in progress is listed by its count of folds)."""
    import ten_fold

    def folds(wars, last=None):
        return [{"fold": k + 1, "n_test": 10, "war": w, "uar": w - 0.1,
                 **({"last_weights": {"war": last[k], "uar": last[k] - 0.1}} if last else {})}
                for k, w in enumerate(wars)]

    per_seed = {7: folds([0.8, 0.9], last=[0.7, 0.9]), 8: folds([0.6, 0.8], last=[0.6, 0.6]), 9: folds([1.0])}
    per_seed = {s: {"folds": f, **ten_fold.summary(f)} for s, f in per_seed.items()}
    o = {**per_seed[7], "seeds": per_seed, **ten_fold.over_seeds(per_seed, n_folds=2)}
    assert o["complete_seeds"] == [7, 8]
    assert o["seeds_mean_war"] == pytest.approx(0.775) and o["seeds_std_war"] == pytest.approx(0.1061, abs=1e-4)
    assert o["seeds_mean_war_last"] == pytest.approx(0.7) and o["seeds_std_uar_last"] == pytest.approx(0.1414, abs=1e-4)
    lines = ten_fold.seed_lines("strong", o, n_folds=2)
    assert "7: 0.8500 / 0.7500, 8: 0.7000 / 0.6000, 9: 1 of 2 folds" in lines[0]
    assert "WAR **0.7750 ± 0.1061**" in lines[0] and "strong: last weights" in lines[1]
    one = {7: per_seed[7], 9: per_seed[9]}
    assert ten_fold.over_seeds(one, n_folds=2)["seeds_std_war"] is None  # one complete seed has no spread


def test_ledger_never_overwrites_another_configuration_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "LEDGER", tmp_path / "ledger")
    fs = synthetic()
    a = _run(fs, tmp_path / "a")
    a.execute(progress=False, log=lambda m: None)
    assert _common.record(a.dir, "t/x") == 3
    stale = _run(fs, tmp_path / "stale", label_smoothing=0.2)
    stale.execute(progress=False, log=lambda m: None)
    assert _common.record(stale.dir, "t/x") == 0  # refused: the ledger keeps a's folds
    assert _common._identity(tmp_path / "ledger/t/x/run.json") == _common._identity(a.dir / "run.json")
    assert _common.record(stale.dir, "t/x", replace=True) == 3
    assert _common._identity(tmp_path / "ledger/t/x/run.json") == _common._identity(stale.dir / "run.json")


def test_a_mixed_ensemble_takes_its_plain_members_from_a_finished_ensemble(tmp_path):
    """A mixed ensemble's plain members (--plain-members) are those of the ensemble without
    augmentation: a finished one gives them, and the folds equal the mixed run's from scratch."""
    fs = synthetic()
    source = _run(fs, tmp_path / "plain", members=3)
    plain = source.execute(progress=False, log=lambda m: None)
    augmented = _run(fs, tmp_path / "augmented", members=3, time_shift=2)
    for k in (1, 2, 3):  # as if finished: fold models, every member augmented
        shutil.copytree(source.fold_dir(k), augmented.fold_dir(k))
    mixed = _run(fs, tmp_path / "mixed", members=4, plain_members=2, time_shift=2)
    assert _common.first_members_from(mixed.dir, augmented.dir, count=2) == 0  # its members 0-1 differ
    assert _common.first_members_from(mixed.dir, source.dir, count=3) == 0  # its member 2 is augmented here
    assert _common.first_members_from(mixed.dir, source.dir, count=2) == 3
    log = []
    got = mixed.execute(progress=False, log=log.append)
    scratch = _run(fs, tmp_path / "scratch", members=4, plain_members=2, time_shift=2).execute(progress=False, log=lambda m: None)
    assert [f["confusion"] for f in got["folds"]] == [f["confusion"] for f in scratch["folds"]]
    assert [f["members"] for f in got["folds"]] == [f["members"] for f in scratch["folds"]]
    assert [f["members"][:2] for f in got["folds"]] == [f["members"][:2] for f in plain["folds"]]
    assert [f["member_seconds"][:2] for f in got["folds"]] == [f["member_seconds"][:2] for f in plain["folds"]]


def test_a_mixed_ensemble_takes_its_augmented_members_from_the_augmented_ensemble(tmp_path, capsys):
    """Member m depends on its index alone: an augmented ensemble gives a mixed one its augmented
    members (2-3 beside plain 0-1), and a smaller one all of its members; the folds equal those
    trained from scratch, and no last-weights figure mixes in a member's final weights."""
    fs = synthetic()
    source = _run(fs, tmp_path / "augmented", members=4, time_shift=2, swa_epochs=1)
    augmented = source.execute(progress=False, log=lambda m: None)
    mixed = _run(fs, tmp_path / "mixed", members=4, plain_members=2, time_shift=2, swa_epochs=1)
    assert _common.first_members_from(mixed.dir, source.dir, count=2) == 0  # its members 0-1 are plain
    assert _common.members_from(mixed.dir, source.dir) == 3
    assert f"members 2, 3 taken from {source.dir}'s finished fold models (3 folds)" in capsys.readouterr().err
    assert sorted(p.name for p in mixed.fold_dir(1).glob("member_*.pt")) == ["member_2.pt", "member_3.pt"]
    got = mixed.execute(progress=False, log=lambda m: None)
    scratch = _run(fs, tmp_path / "scratch", members=4, plain_members=2, time_shift=2, swa_epochs=1).execute(
        progress=False, log=lambda m: None)
    assert [f["confusion"] for f in got["folds"]] == [f["confusion"] for f in scratch["folds"]]
    assert [f["members"] for f in got["folds"]] == [f["members"] for f in scratch["folds"]]
    assert [f["members"][2:] for f in got["folds"]] == [f["members"][2:] for f in augmented["folds"]]
    assert all("last_weights" in f for f in scratch["folds"]) and not any("last_weights" in f for f in got["folds"])
    assert all(f["members_from"] == {"2": str(source.dir), "3": str(source.dir)} for f in got["folds"])
    assert not any("members_from" in f for f in scratch["folds"])
    # a two-member run of the same options: both members given, nothing left to train
    two = _run(fs, tmp_path / "two", members=2, time_shift=2, swa_epochs=1)
    assert _common.members_from(two.dir, source.dir) == 3
    log = []
    both = two.execute(progress=False, log=log.append)
    assert [f["members"] for f in both["folds"]] == [f["members"][:2] for f in augmented["folds"]]
    assert [f["member_seconds"] for f in both["folds"]] == [f["member_seconds"][:2] for f in augmented["folds"]]


def test_vtlp_members_are_not_taken_from_a_run_under_other_numpy_loops(tmp_path):
    """A member with VTLP trains other bits under numpy's AVX-512 loops than under AVX2 ones
    (timnet.run.dispatch_change): one trained under the other loops (where the source run began, or
    any process that trained part of a source fold) is not given; plain ones are."""
    from timnet import dispatch
    from timnet.rundir import recorded_cpu_dispatch

    source = tmp_path / "source"
    source.mkdir()
    now = dispatch.state()["numpy_avx512"]
    want = {"train_config": {"vtlp": 0.1, "members": 4, "plain_members": 2}}
    for loops, skew in ((now, []), (not now, [2, 3])):
        (source / "run.json").write_text(json.dumps({"versions": {"cpu_dispatch": {"numpy_avx512": loops}}}))
        assert _common._dispatch_skew([recorded_cpu_dispatch(source)], want, [0, 1, 2, 3]) == skew
        assert _common._dispatch_skew([{"numpy_avx512": now}, {"numpy_avx512": loops}], want, [0, 1, 2, 3]) == skew
    assert _common._dispatch_skew([{"numpy_avx512": not now}], {"train_config": {"vtlp": 0.0, "members": 2}}, [0, 1]) == []
    (source / "run.json").write_text(json.dumps({"versions": {}}))  # loops not recorded: nothing to compare
    assert _common._dispatch_skew([recorded_cpu_dispatch(source)], want, [2, 3]) == []


def test_an_ensemble_run_takes_its_first_member_from_the_single_run(tmp_path):
    """A finished one-member run gives a two-member run of the same configuration its member 0:
    only member 1 is trained, and the folds equal those of the ensemble trained from scratch."""
    fs = synthetic()
    single = _run(fs, tmp_path / "one")
    one = single.execute(progress=False, log=lambda m: None)
    assert _common.first_members_from(tmp_path / "two", single.dir, members=2) == 3
    assert all((tmp_path / "two" / f"fold_{k:02d}" / "member_0.pt").is_file() for k in (1, 2, 3))
    derived = _run(fs, tmp_path / "two", members=2)  # timnet takes the derived run.json as its own
    log = []
    two = derived.execute(progress=False, log=log.append)
    scratch = _run(fs, tmp_path / "scratch", members=2).execute(progress=False, log=lambda m: None)
    assert [f["confusion"] for f in two["folds"]] == [f["confusion"] for f in scratch["folds"]]
    assert [f["members"][0] for f in two["folds"]] == [{"war": f["war"], "uar": f["uar"]} for f in one["folds"]]
    assert _common.first_members_from(tmp_path / "two", single.dir) == 0  # finished folds are left alone
    import ten_fold  # its table puts the first member alone beside the ensemble

    folds = ten_fold.finished_folds(derived.dir)
    s = ten_fold.summary(folds)
    assert s["mean_war_first"] == pytest.approx(one["mean_war"]) and "mean_war_last" not in s
    text = ten_fold.table("EMODB", {"strong": {"folds": folds, **s}}, n_folds=3)
    assert "strong: first member WAR" in text and f"{one['mean_war']:.4f} ±" in text

    # a source of another configuration gives a prepared ensemble run nothing, and a run.json
    # derived from it is refused by timnet when the options say otherwise
    other = _run(fs, tmp_path / "other", label_smoothing=0.2)
    for k in (1, 2, 3):  # as if finished: fold models, another identity
        shutil.copytree(single.fold_dir(k), other.fold_dir(k))
    _run(fs, tmp_path / "three", members=2)
    assert _common.first_members_from(tmp_path / "three", other.dir) == 0
    assert _common.first_members_from(tmp_path / "four", other.dir, members=2) == 3
    with pytest.raises(TimnetError, match="different configuration"):
        _run(fs, tmp_path / "four", members=2)


def test_table_recipe_names_give_the_configs_they_name():
    """The table scripts' recipe names, passed to `timnet train` as options, give the presets and
    the strong preset's one-member form (the speaker-independent tables' recipe); and the ledger
    keeps each name's runs under that configuration."""
    from timnet import cli
    from timnet.train import recipe_config

    def config(options):
        args = cli.build_parser().parse_args(["train", "f.npz", "-o", "r", *options])
        explicit = cli._given_training_options(args)  # what `timnet train` itself passes on
        return recipe_config(args.recipe, **explicit)

    assert config(_common.recipe_args("paper")) == TrainConfig()
    # the preset's values written out, so that a change to the preset shows here too
    assert config(_common.recipe_args("strong")) == recipe_config("paper", swa_epochs=100, mixup_alpha=0.2, members=4,
                                                                  recipe="strong")
    one = config(_common.recipe_args("strong-1member"))
    assert one == recipe_config("strong", members=1) and one.swa_epochs == 100
    # the strong recipes of earlier stops keep their figures under their selection names
    assert config(_common.recipe_args("swa-x4")) == recipe_config("paper", swa_epochs=100, members=4)
    assert config(_common.recipe_args("paper-keras-eps")) == recipe_config("paper", adam_eps_rule="keras")
    assert config(_common.recipe_args("swa-x4")) == dataclasses.replace(recipe_config("strong"), mixup_alpha=0.0, recipe="paper")
    assert [_common.recipe_members(n) for n in ("paper", "strong", "strong-1member", "swa", "swa-x2", "swa-x4")] == [1, 4, 1, 1, 2, 4]
    with pytest.raises(SystemExit, match="recipe 'strong-x2' unknown"):
        _common.recipe_args("strong-x2")
    # a one-member recipe gives member 0 only to the ensembles that train it: strong-1member is
    # strong's first member, not swa-x4's (whose members train without mixup); swa is swa-x4's
    assert [_common.gives_first_member("strong-1member", n) for n in ("strong", "swa-x4", "swa-x2", "swa")] == [True, False, False, False]
    assert [_common.gives_first_member("swa", n) for n in ("strong", "swa-x4", "swa-x2")] == [False, True, True]
    assert not _common.gives_first_member(None, "strong")
    from dataclasses import asdict

    from timnet.rundir import decisive

    # the ledger's runs resume under their table names: each holds its name's configuration
    for name in ("swa", "swa-x2", "swa-x4"):
        found = [_common._identity(run)["train_config"] for key in ("tenfold_emodb", "tenfold_casia", "loso_emodb", "loso_casia")
                 for run in (_common.LEDGER / key / name).glob("**/run.json")]
        want = decisive({"train_config": asdict(config(_common.recipe_args(name)))})["train_config"]
        assert found and all(c == want for c in found), name  # as timnet compares runs


def test_first_members_of_a_several_seed_run(tmp_path, capsys, monkeypatch):
    """The speaker-independent table trains with --seeds: each seed's one-member run gives member 0
    of the same seed's ensemble run, which `timnet train --seeds` then resumes as its own; a source
    with figures only (a ledger restore) is said to give nothing."""
    import json

    from test_train import train_cli
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    args = ("--seeds", "1,2", "--epochs", "2", "--workers", "2")
    one = train_cli(features, tmp_path / "one", *args, "--json", tmp_path / "one.json")
    assert one.returncode == 0, one.stderr
    # the taking runs train in the command too, which pins MKL as it did for the source (this test
    # process may not be pinned); _common compares with the process that trains them
    command = json.loads((tmp_path / "one" / "seed_1" / "run.json").read_text())["versions"]["cpu_dispatch"]
    monkeypatch.setattr(_common, "_taker_mkl", lambda: command)
    for s in (1, 2):
        assert _common.take_first_members(tmp_path / "two" / f"seed_{s}", tmp_path / "one" / f"seed_{s}", members=2) == 3
    two = train_cli(features, tmp_path / "two", *args, "--members", "2", "--json", tmp_path / "two.json")
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / f).read_text())["runs"] for f in ("one.json", "two.json"))
    assert [[f["members"][0] for f in r["folds"]] for r in b] == [[{"war": f["war"], "uar": f["uar"]} for f in r["folds"]] for r in a]

    shutil.copytree(tmp_path / "one" / "seed_1", tmp_path / "figures_only")
    for model in (tmp_path / "figures_only").glob("fold_*/model.pt"):
        model.unlink()
    capsys.readouterr()
    assert _common.take_first_members(tmp_path / "three", tmp_path / "figures_only", members=2) == 0
    assert "no fold models" in capsys.readouterr().err
    # ... unless the ensemble run is itself finished (restored from the ledger too): nothing trains
    assert _common.take_first_members(tmp_path / "two" / "seed_1", tmp_path / "figures_only", members=2) == 0
    assert capsys.readouterr().err == ""


def test_table_scripts_say_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    """A benchmark script given a missing feature file says so in one line (exit 2), as `timnet` does."""
    def main():
        raise TimnetError(f"{tmp_path / 'none.npz'}: no such feature file")

    monkeypatch.setattr(sys, "argv", ["ten_fold.py"])
    with pytest.raises(SystemExit) as stop:
        _common.run_main(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"ten_fold.py: error: {tmp_path / 'none.npz'}: no such feature file\n"
    # where `timnet train --seeds` keeps a seed's run: RUN_DIR itself for one seed
    assert _common.seed_run(tmp_path, 46, [46]) == tmp_path
    assert _common.seed_run(tmp_path, 47, [46, 47]) == tmp_path / "seed_47"


def test_members_are_not_taken_from_a_fold_trained_under_another_mkl(tmp_path):
    """torch's MKL takes its kernels by the CPU's vendor and branch (timnet.dispatch.mkl_change), and
    every member's products go through it: a source fold whose worker ran another MKL gives nothing.
    (One trained by the pinned command is taken: test_first_members_of_a_several_seed_run.)"""
    single = _run(synthetic(), tmp_path / "one")
    single.execute(progress=False, log=lambda m: None)
    here = _common._taker_mkl()  # folds 2-3 as if trained by the pinned command here, fold 1 elsewhere
    for k, vendor in ((1, "OtherVendor"), (2, here["cpu_vendor"]), (3, here["cpu_vendor"])):
        path = single.dir / f"fold_{k:02d}" / "result.json"
        done = json.loads(path.read_text())
        done["worker"] = {**done["worker"], **{key: here[key] for key in ("mkl_cbwr", "mkl_branch")}, "cpu_vendor": vendor}
        path.write_text(json.dumps(done))
        assert (_common._mkl_skew(done, single.dir) is None) == (k > 1)
    assert "OtherVendor" in _common._mkl_skew(json.loads((single.dir / "fold_01" / "result.json").read_text()), single.dir)
    assert _common.first_members_from(tmp_path / "two", single.dir, members=2) == 2  # folds 2 and 3 only
    assert not (tmp_path / "two" / "fold_01").exists() and (tmp_path / "two" / "fold_02" / "member_0.pt").is_file()
    done = json.loads((single.dir / "fold_02" / "result.json").read_text())
    assert done["cpu_dispatch"] == [here]
    done["cpu_dispatch"].append({**here, "cpu_vendor": "FourthVendor"})  # a member, or part of one, trained elsewhere
    assert "FourthVendor" in _common._mkl_skew(done, single.dir)
    # no worker record: the process that began the source run is compared
    run_file = single.dir / "run.json"
    data = json.loads(run_file.read_text())
    data["versions"]["cpu_dispatch"]["cpu_vendor"] = "ThirdVendor"
    run_file.write_text(json.dumps(data))
    assert "ThirdVendor" in _common._mkl_skew({}, single.dir)
