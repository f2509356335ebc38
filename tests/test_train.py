"""Cross-validated training on small synthetic features: splits, honest selection, resume."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ctrl_c_open, flip_a_stored_byte
from timnet.errors import TimnetError
from timnet.features import FeatureConfig, FeatureSet, save_features
from timnet.files import owned_temporary
from timnet.folds import default_folds, make_folds
from timnet.run import Run, seed_runs, train_all_data
from timnet.rundir import read_identity
from timnet.train import TrainConfig

LABELS = ("angry", "boredom", "disgust", "fear", "happy", "neutral", "sad")


def synthetic(n=84, frames=24, seed=0):
    """Learnable features: each class shifts a few MFCC channels; 6 speakers, 7 classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 7
    x = rng.standard_normal((n, frames, 39)).astype(np.float32)
    x[np.arange(n), :, y] += 1.5
    speakers = np.array([f"{i % 6:02d}" for i in range(n)])
    return FeatureSet(x=x, y=y.astype(np.int64), labels=LABELS, corpus="EMODB",
                      config=FeatureConfig(signal_length=(frames - 1) * 512), speakers=speakers,
                      files=np.array([f"wav/{i:03d}.wav" for i in range(n)]))


FAST = dict(epochs=4, batch_size=16, save_every=1)
TOO_FEW_TO_TRAIN = r"fold 1: --val-fraction 0.99: \d+ of this training part's \d+ utterances for validation leave \d+ to train on"


def test_random_folds_disjoint_and_cover():
    folds = make_folds(100, folds=10, seed=46)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(100))
    for tr, te in folds:
        assert not set(tr) & set(te) and len(tr) + len(te) == 100
    with pytest.raises(TimnetError, match=r"^--folds 11 invalid; expected 2\.\.10 for 10 samples$"):
        make_folds(10, folds=11, seed=46)
    with pytest.raises(TimnetError, match=r"^one.npz: 1 utterance; cross-validation needs at least 2$"):  # not "expected 2..1"
        make_folds(1, folds=2, seed=46, source="one.npz")
    with pytest.raises(TimnetError, match=r"^these features: 0 utterances; cross-validation needs at least 2$"):
        make_folds(0, folds=2, seed=46)


def test_random_folds_are_shuffled_by_the_seed():
    unshuffled = np.arange(100).reshape(10, 10)
    a, b = make_folds(100, folds=10, seed=46), make_folds(100, folds=10, seed=47)
    assert any(not np.array_equal(np.sort(te), row) for (_, te), row in zip(a, unshuffled))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, make_folds(100, folds=10, seed=46)))


@pytest.mark.realdata
def test_random_folds_are_the_authors_folds(reference):
    """EMODB's folds with seed 46 are the ones the authors' code made (their outputs record each sample's fold)."""
    folds = make_folds(len(reference["labels"]), folds=10, seed=46)
    for k, (_, te) in enumerate(folds, start=1):
        np.testing.assert_array_equal(te, np.flatnonzero(reference["test_fold"] == k))


@pytest.mark.parametrize("folds", [3, 6])
def test_speaker_folds_never_share_a_speaker(folds):
    fs = synthetic()
    splits = make_folds(len(fs), folds=folds, seed=1, split="speaker", speakers=fs.speakers)
    assert len(splits) == folds
    assert sorted(np.concatenate([te for _, te in splits]).tolist()) == list(range(len(fs)))
    for tr, te in splits:
        assert not set(fs.speakers[tr]) & set(fs.speakers[te])
    if folds == 6:  # leave-one-speaker-out
        assert [len(set(fs.speakers[te])) for _, te in splits] == [1] * 6
    else:  # GroupKFold: the seed decides which speakers test together
        again = make_folds(len(fs), folds=folds, seed=1, split="speaker", speakers=fs.speakers)
        other = make_folds(len(fs), folds=folds, seed=2, split="speaker", speakers=fs.speakers)
        def groups(ss):
            return sorted(tuple(sorted(set(fs.speakers[te]))) for _, te in ss)

        assert groups(again) == groups(splits) and groups(other) != groups(splits)
    with pytest.raises(TimnetError, match="needs at least 7 speakers; these features have 6"):
        make_folds(len(fs), folds=7, seed=1, split="speaker", speakers=fs.speakers)
    with pytest.raises(TimnetError, match=r"--folds 1 invalid; expected 2\.\.6 for 6 speakers \(--split speaker\)"):
        make_folds(len(fs), folds=1, seed=1, split="speaker", speakers=fs.speakers)


def test_a_speaker_validation_share_far_from_the_fraction_is_said(tmp_path):
    """Speaker folds hold out whole speakers: with five training speakers a fold holds out one
    (20 %) whatever smaller --val-fraction is asked, and the user hears it before training."""
    def prepare(fraction):
        config = TrainConfig(val_fraction=fraction, **FAST)
        Run(synthetic(), tmp_path / str(fraction), config=config, folds=6, seed=1, split="speaker").prepare()

    with pytest.warns(UserWarning, match=r"validation holds whole speakers \(1 of 5 training speakers per fold\), "
                                         r"20% of each training part on average where --val-fraction 0.05 asks 5%"):
        prepare(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(0.2)  # one speaker of five is the share asked


def test_default_folds_follow_the_speakers():
    """--split speaker without --folds: leave-one-speaker-out on small corpora (CASIA and SAVEE have
    4 speakers, EMOVO 6), 10 speaker-disjoint folds on larger ones (RAVDESS has 24)."""
    assert default_folds("random", np.array(list("abcd"))) == 10
    assert default_folds("speaker", np.repeat(list("abcd"), 5)) == 4
    assert default_folds("speaker", np.array([f"actor{i}" for i in range(24)])) == 10
    with pytest.raises(TimnetError, match="--split speaker needs at least 2 speakers; these features have 1"):
        default_folds("speaker", np.array(["only"] * 5))
    # a folders tree extracted without --speaker-pattern records "" for everyone: no ids, not one speaker
    assert default_folds("speaker", np.array([""] * 20)) == 10
    with pytest.raises(TimnetError, match="no speaker ids, which --split speaker needs; .*--speaker-pattern"):
        make_folds(20, folds=10, seed=1, split="speaker", speakers=np.array([""] * 20))


def test_a_validation_share_that_takes_a_class_whole_is_refused():
    """A large --val-fraction can round a small class's share up to all of it: the model would never
    see that class, so the split names it instead."""
    from timnet.train import validation_split

    y = np.array([0] * 60 + [1] * 60 + [2] * 2)
    tr, va = validation_split(np.arange(len(y)), y, fraction=0.2, seed=1)
    assert set(y[tr]) == {0, 1, 2}
    with pytest.raises(TimnetError, match=r"--val-fraction 0.8: every sad utterance of this training part goes to validation"):
        validation_split(np.arange(len(y)), y, fraction=0.8, seed=1, labels=("angry", "happy", "sad"))


def test_best_val_never_reads_test_labels(tmp_path):
    """Scrambling a fold's test labels leaves its training and selection unchanged."""
    config = TrainConfig(val_fraction=0.25, select="best-val", eval_every=1, patience=3, **FAST)
    a = Run(synthetic(), tmp_path / "a", config=config, folds=3, seed=5)
    a.prepare()
    ra = a.execute(progress=False, log=lambda m: None)
    rng = np.random.default_rng(9)
    for k, (_, test_idx) in enumerate(a.splits, start=1):
        scrambled = synthetic()
        scrambled.y[test_idx] = (scrambled.y[test_idx] + rng.integers(1, 7, len(test_idx))) % 7
        b = Run(scrambled, tmp_path / f"b{k}", config=config, folds=3, seed=5)
        b.prepare()
        rb = b.execute(progress=False, log=lambda m: None)
        fold = f"fold_{k:02d}/history.csv"
        assert (tmp_path / "a" / fold).read_text() == (tmp_path / f"b{k}" / fold).read_text()
        assert ra["folds"][k - 1]["epoch"] == rb["folds"][k - 1]["epoch"]
        assert ra["folds"][k - 1]["confusion"] != rb["folds"][k - 1]["confusion"]  # the test score saw them


def test_selection_needs_validation():
    with pytest.raises(TimnetError, match="need validation data"):
        TrainConfig(select="best-val")
    with pytest.raises(TimnetError, match="--patience"):
        TrainConfig(patience=0, val_fraction=0.1)


def test_different_config_in_used_run_dir_is_refused(tmp_path):
    fs = synthetic()
    Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3).prepare()
    with pytest.raises(TimnetError, match="different configuration \\(train_config.epochs\\).*--overwrite"):
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "epochs": 5}), folds=3).prepare()
    assert Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3).prepare() is True  # same: resume
    # another snapshot interval changes no figure: the run resumes (and a real change is still refused)
    assert Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "save_every": 7}), folds=3).prepare() is True
    with pytest.raises(TimnetError, match="different configuration \\(train_config.epochs\\)"):
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "save_every": 7, "epochs": 5}), folds=3).prepare()
    Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "epochs": 5}), folds=3).prepare(overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TimnetError, match="not a timnet RUN_DIR"):
        Run(fs, tmp_path / "other", config=TrainConfig(**FAST), folds=3).prepare()
    # a run file that cannot be read is said to be that, not a change of configuration
    (tmp_path / "r" / "run.json").write_text("{")
    with pytest.raises(TimnetError, match="run.json: not a readable timnet run file.*--overwrite") as e:
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "epochs": 5}), folds=3).prepare()
    assert "different configuration" not in str(e.value)
    for text, why in (("{", "not JSON"), ("[1]", "not a JSON object"), ('{"command": []}', "no identity in it")):
        (tmp_path / "r" / "run.json").write_text(text)
        with pytest.raises(TimnetError, match=rf"run.json: not a readable timnet run file \({why}\); expected the JSON "
                                              "object with an identity that `timnet train` writes"):
            read_identity(tmp_path / "r")


def train_cli(features, run_dir, *extra, env=None):
    cmd = [sys.executable, "-m", "timnet", "train", str(features), "-o", str(run_dir), "--folds", "3",
           "--epochs", "5", "--batch-size", "16", "--save-every", "1", "--threads", "1", "--no-report", "-q", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_resume_after_kill_equals_uninterrupted_and_is_deterministic(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    full = train_cli(features, tmp_path / "full", "--json", tmp_path / "full.json")
    assert full.returncode == 0, full.stderr

    def figures(path):
        r = json.loads(path.read_text())
        for f in r["folds"]:
            f.pop("seconds")
            f.pop("worker")  # which process ran the fold
        return r

    # (deterministic: the resumed runs below, in other processes, must equal it to the last bit)
    # `full` has no --seed and these runs --seed 46: equal figures show the default is the paper seed
    killed = train_cli(features, tmp_path / "resumed", "--workers", "1", "--seed", "46", env={"TIMNET_TEST_DIE_AFTER": "fold_02:3"})
    assert killed.returncode == -9
    assert (tmp_path / "resumed" / "fold_01" / "result.json").is_file()
    assert (tmp_path / "resumed" / "fold_02" / "state.pt").is_file()
    assert not (tmp_path / "resumed" / "fold_02" / "result.json").exists()
    assert not (tmp_path / "resumed" / "results.json").exists()
    resumed = train_cli(features, tmp_path / "resumed", "--workers", "1", "--seed", "46", "--json", tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "fold 1/3: done before, kept" in resumed.stderr
    a, b = figures(tmp_path / "full.json"), figures(tmp_path / "resumed.json")
    assert a == b
    assert a["seed"] == 46  # no --seed: the corpus's paper seed (the features say EMODB)
    for k in (1, 2, 3):
        h = f"fold_{k:02d}/history.csv"
        assert (tmp_path / "full" / h).read_text() == (tmp_path / "resumed" / h).read_text()

    # in parallel mode a killed worker ends the run with an error; the same command then resumes
    broken = train_cli(features, tmp_path / "par", "--workers", "2", env={"TIMNET_TEST_DIE_AFTER": "fold_01:2"})
    assert broken.returncode == 1 and "worker died (unfinished folds: 1" in broken.stderr
    par = train_cli(features, tmp_path / "par", "--workers", "2", "--json", tmp_path / "par.json")
    assert par.returncode == 0, par.stderr
    assert figures(tmp_path / "par.json") == a

    # `timnet test` on the RUN_DIR reproduces what `train` reported
    tested = subprocess.run([sys.executable, "-m", "timnet", "test", str(features), "--weights", str(tmp_path / "resumed"),
                             "--json", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stderr
    t = json.loads((tmp_path / "t.json").read_text())
    assert [f["war"] for f in t["folds"]] == [f["war"] for f in b["folds"]]
    assert t["mean_uar"] == b["mean_uar"] and t["seed"] == b["seed"]


def test_run_dir_contents(tmp_path):
    fs = synthetic()
    run = Run(fs, tmp_path / "r", config=TrainConfig(val_fraction=0.2, **FAST), folds=3, split="speaker", seed=3)
    run.prepare()
    summary = run.execute(progress=False, log=lambda m: None)
    assert summary["split"] == "speaker" and len(summary["folds"]) == 3 and summary["folds_n"] == 3
    for f in summary["folds"]:
        assert len(f["test_speakers"]) == 2
    assert sum(f["n_test"] for f in summary["folds"]) == len(fs)
    for m in ("war", "uar"):  # INTERFACE.md's means and (population) std over the folds
        values = [f[m] for f in summary["folds"]]
        assert summary[f"mean_{m}"] == pytest.approx(np.mean(values)) and summary[f"std_{m}"] == pytest.approx(np.std(values))
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == json.loads(json.dumps(summary))
    import torch
    ck = torch.load(tmp_path / "r" / "fold_01" / "model.pt", weights_only=True)
    tr, va, te = (set(ck["extra"][k]) for k in ("train_idx", "val_idx", "test_idx"))
    assert not (tr & va) and not (tr & te) and not (va & te) and len(tr | va | te) == len(fs)
    # speaker folds validate on speakers the fold neither trains nor tests on: 4 training speakers -> 1
    spk = {k: set(fs.speakers[sorted(v)]) for k, v in (("tr", tr), ("va", va), ("te", te))}
    assert len(spk["va"]) == 1 and not spk["va"] & (spk["tr"] | spk["te"])
    header = (tmp_path / "r" / "fold_01" / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,acc,val_loss,val_war,val_uar"
    assert (tmp_path / "r" / "results.csv").read_text().count("\n") == 3 + 1 + 2
    run_json = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run_json["versions"]["torch"] and run_json["command"]


def test_training_in_process_keeps_the_callers_threads_and_log(tmp_path):
    """A run trained in the caller's process (a notebook) sets torch's threads for its folds only,
    and its fold lines reach the caller's `log` with the progress bar shown as without it."""
    import torch

    before = torch.get_num_threads()
    for progress in (False, True):
        lines = []
        run = Run(synthetic(), tmp_path / f"r{progress}", config=TrainConfig(**FAST), folds=3, seed=5,
                  threads=before + 1)
        run.prepare()
        run.execute(progress=progress, log=lines.append)
        assert torch.get_num_threads() == before
        assert [line.split(":")[0] for line in lines] == ["fold 1/3", "fold 2/3", "fold 3/3"]
    seen = set()  # while a fold trains, torch has the run's threads: its figures depend on them
    run = Run(synthetic(), tmp_path / "direct", config=TrainConfig(**FAST), folds=3, seed=5, threads=before + 1)
    run.prepare()
    run.train_and_test_fold(1, on_epoch=lambda row: seen.add(torch.get_num_threads()))
    assert seen == {before + 1} and torch.get_num_threads() == before


def test_device_choice():
    import torch

    from timnet.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "cuda:", "cuda:-1"):  # torch.device would raise a bare RuntimeError for some
        with pytest.raises(TimnetError, match="unknown; expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(TimnetError, match="no CUDA device is available"):
            resolve_device("cuda")
    else:
        with pytest.raises(TimnetError, match="CUDA device\\(s\\)"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_fold_in_worker_process_equals_in_process(tmp_path):
    """The parallel (fast) schedule runs the same mathematics: same per-fold figures and weights."""
    import torch

    fs = synthetic()
    config = TrainConfig(**FAST)
    a = Run(fs, tmp_path / "serial", config=config, folds=3, seed=2, threads=1)
    a.prepare()
    ra = a.execute(workers=1, progress=False, log=lambda m: None)
    b = Run(fs, tmp_path / "parallel", config=config, folds=3, seed=2, threads=1)
    b.prepare()
    rb = b.execute(workers=2, progress=False, log=lambda m: None)
    assert [f["confusion"] for f in ra["folds"]] == [f["confusion"] for f in rb["folds"]]
    for k in (1, 2, 3):
        wa = torch.load(tmp_path / "serial" / f"fold_0{k}" / "model.pt", weights_only=True)["state_dict"]
        wb = torch.load(tmp_path / "parallel" / f"fold_0{k}" / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(wa[n], wb[n]) for n in wa)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie waiting for its (init) reaper counts as gone
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_stops_parallel_training_promptly(tmp_path, how):
    """Ctrl-C reaches the whole process group; `kill` (SIGTERM) reaches the parent alone. Either way
    the run stops within seconds and leaves no worker or manager process training on as an orphan."""
    import signal
    import time

    features = save_features(synthetic(), tmp_path / "f.npz")
    cmd = [sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "r"), "--folds", "6",
           "--epochs", "400", "--batch-size", "16", "--save-every", "1", "--threads", "1", "--workers", "2",
           "--no-report", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_open)
    deadline = time.time() + 60
    while not list((tmp_path / "r").glob("fold_*/state.pt")) and time.time() < deadline:
        time.sleep(0.2)
    children = _children(proc.pid)
    assert children, "the parallel run should have started worker processes"
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    if how == "ctrl-c":
        assert proc.returncode == 130 and "interrupted" in err
    else:
        assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err, err
    assert time.time() - t0 < 20
    while any(_alive(c) for c in children) and time.time() - t0 < 30:
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)], "processes of the run outlived it"
    assert len(list((tmp_path / "r").glob("fold_*/result.json"))) < 6  # the queued folds were not trained


@pytest.mark.parametrize("starting", [1, 3])
def test_ctrl_c_while_workers_start(tmp_path, starting):
    """Ctrl-C as the run's processes start (the manager: 1; the manager and both workers, still
    importing torch: 3). Each starts with SIGINT blocked, so none prints a traceback of its own, and
    the run ends with one line: a manager interrupted halfway through its start was left serving,
    and the parent then waited for it at exit forever."""
    import signal

    import time

    features = save_features(synthetic(), tmp_path / "f.npz")
    cmd = [sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "r"), "--folds", "4",
           "--epochs", "400", "--threads", "1", "--workers", "2", "--no-report", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_open)
    try:
        deadline, spawned = time.time() + 60, []
        while len(spawned) < starting and time.time() < deadline and proc.poll() is None:
            for c in _children(proc.pid):
                try:
                    status = Path(f"/proc/{c}/status").read_text()
                    spawned_by_us = "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
                except FileNotFoundError:
                    continue
                if spawned_by_us and c not in spawned:
                    blocked = int(status.split("SigBlk:")[1].split()[0], 16)
                    assert blocked >> (signal.SIGINT - 1) & 1, f"child {c} started with Ctrl-C open"
                    spawned.append(c)
            time.sleep(0.01)
        # a stalled poll may find the next process started too: the signal still lands as they start
        assert len(spawned) >= starting, "the run's processes did not start"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and err.strip() == "timnet: interrupted", err
        t0 = time.time()
        while any(_alive(c) for c in spawned) and time.time() - t0 < 30:
            time.sleep(0.2)
        assert not [c for c in spawned if _alive(c)], "processes of the run outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a failed check leaves no 400-epoch run behind


def test_signals_held_while_processes_start():
    """Within the block Ctrl-C and SIGTERM wait; at its end the first to arrive goes to its own
    handler, also when the block failed, and the handlers and the signal mask are as before."""
    import multiprocessing
    import signal

    from timnet.processes import signals_held

    context = multiprocessing.get_context("spawn")
    own = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner's worker may ignore it
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(KeyboardInterrupt):
        with signals_held(context):
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # held, not lost
    terms = []
    on_term = lambda *_: terms.append(1)  # noqa: E731
    signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            with signals_held(context):
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                raise OSError("the block failed")
        assert terms == [1] and isinstance(e.value.__context__, OSError)  # SIGTERM came first, Ctrl-C after
        assert signal.getsignal(signal.SIGTERM) is on_term
        assert (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])) == (before[0], before[2])
    finally:
        signal.signal(signal.SIGTERM, before[1])
        signal.signal(signal.SIGINT, own)


def test_test_refuses_run_dir_on_other_features(tmp_path):
    fs = synthetic()
    run = Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "epochs": 1}), folds=3, threads=1)
    run.prepare()
    run.execute(workers=1, progress=False, log=lambda m: None)
    other = save_features(synthetic(seed=1), tmp_path / "other.npz")
    r = subprocess.run([sys.executable, "-m", "timnet", "test", str(other), "--weights", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "trained on other features" in r.stderr


def test_run_written_by_older_versions_still_resumes(tmp_path):
    fs = synthetic()
    Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3, path="reference").prepare()
    run_file = tmp_path / "r" / "run.json"
    data = json.loads(run_file.read_text())
    # as written before --device, --path, sweeps and the recipe options existed
    for key in ("device", "path", "evaluate_test"):
        del data["identity"][key]
    for key in ("recipe", "lr_schedule", "ema_decay", "time_masks", "mixup_alpha", "plain_members"):
        del data["identity"]["train_config"][key]
    run_file.write_text(json.dumps(data))
    assert Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3, path="reference").prepare() is True
    with pytest.raises(TimnetError, match="different configuration \\(path\\).*to resume it pass --path reference"):
        Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3, path="fast").prepare()
    # a run of the one-member strong preset (before it became two members) is told how to resume
    with pytest.raises(TimnetError, match="\\(train_config.members\\).*to resume it pass --members 1$"):
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "members": 2}), folds=3, path="reference").prepare()
    # and so is one of a preset's values that changed together (strong: four members, then mixup)
    with pytest.raises(TimnetError, match="\\(train_config.members, train_config.mixup_alpha\\); use another .*to resume "
                                          "it pass --members 1 --mixup-alpha 0.0$"):
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "members": 4, "mixup_alpha": 0.2}), folds=3,
            path="reference").prepare()
    with pytest.raises(TimnetError, match="\\(train_config.lr, train_config.members\\); use another RUN_DIR or --overwrite \\(which deletes it\\)$"):
        Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "members": 2, "lr": 0.002}), folds=3, path="reference").prepare()


def test_several_seeds_one_run_each_and_their_spread(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    multi = train_cli(features, tmp_path / "multi", "--seeds", "1,2", "--epochs", "2", "--workers", "2",
                      "--json", tmp_path / "multi.json")
    assert multi.returncode == 0, multi.stderr
    single = train_cli(features, tmp_path / "single", "--seed", "2", "--epochs", "2", "--json", tmp_path / "single.json")
    assert single.returncode == 0, single.stderr
    out = json.loads((tmp_path / "multi.json").read_text())
    assert out["seeds"] == [1, 2] and json.loads((tmp_path / "multi" / "seeds.json").read_text()) == out  # one document
    # the contract's keys (README: --json) as a single seed's run has them
    assert {"corpus", "labels", "split", "folds_n", "folds", "mean_war", "mean_uar", "std_war", "std_uar"} <= set(out)
    assert out["labels"] == list(synthetic().labels)
    # a seed's run in RUN_DIR/seed_<s> is exactly the single-seed run with that seed
    seed2 = json.loads((tmp_path / "multi" / "seed_2" / "results.json").read_text())
    alone = json.loads((tmp_path / "single.json").read_text())
    assert [f["confusion"] for f in seed2["folds"]] == [f["confusion"] for f in alone["folds"]]
    assert [(f["seed"], f["fold"]) for f in out["folds"]] == [(s, k) for s in (1, 2) for k in (1, 2, 3)]
    assert [f["confusion"] for f in out["folds"] if f["seed"] == 2] == [f["confusion"] for f in alone["folds"]]
    means = [s["mean_uar"] for s in out["per_seed"]]
    assert out["mean_uar"] == pytest.approx(np.mean(means)) and out["std_uar"] == pytest.approx(np.std(means, ddof=1))
    # the same command again reads the finished runs; a seed's run not among --seeds is said to be left out
    (tmp_path / "multi" / "seed_9").mkdir()
    (tmp_path / "multi" / "seed_9" / "run.json").write_text((tmp_path / "multi" / "seed_2" / "run.json").read_text())
    again = train_cli(features, tmp_path / "multi", "--seeds", "1,2", "--epochs", "2", "--workers", "2")
    assert again.returncode == 0 and again.stderr.count("is finished: its results are read again") == 2, again.stderr
    assert f"{tmp_path / 'multi'}: seed_9 not among --seeds: left as it is, and not in the summary" in again.stderr
    (tmp_path / "multi" / "seed_9" / "run.json").unlink()
    (tmp_path / "multi" / "seed_9").rmdir()
    both = train_cli(features, tmp_path / "x", "--seed", "1", "--seeds", "1,2")
    assert both.returncode == 1 and "give --seed or --seeds, not both" in both.stderr
    again = train_cli(features, tmp_path / "single", "--seeds", "1,2", "--epochs", "2")
    assert again.returncode == 1 and "holds a single-seed run" in again.stderr
    for verb in (["test", features, "--weights"], ["plot"]):  # the seeds' folder is not one run: say which are
        r = subprocess.run([sys.executable, "-m", "timnet", *map(str, verb), str(tmp_path / "multi")],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "holds the runs of 2 seeds (seed_1, seed_2)" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "timnet", "test", str(features), "--weights", str(tmp_path / "multi" / "seed_2"),
                        "--seed", "5", "--json", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert r.returncode == 0 and "--seed 5 ignored" in r.stderr
    assert json.loads((tmp_path / "t.json").read_text())["seed"] == 2


def test_seeds_overwrite_replaces_a_single_seed_run_and_keeps_the_users_files(tmp_path):
    """--seeds --overwrite over a folder holding a single-seed run: that run's files go, the
    folder's other files (the user's) stay, with or without --overwrite."""
    fs, d = synthetic(), tmp_path / "work"
    Run(fs, d, config=TrainConfig(**FAST), folds=3).prepare()
    (d / "fold_01").mkdir()
    (d / "fold_01" / "model.pt").write_bytes(b"old")
    (d / "thesis").mkdir()
    (d / "thesis" / "chapter1.tex").write_text("mine")
    (d / "notes.md").write_text("mine too")

    def make(folder, seed):
        return Run(fs, folder, config=TrainConfig(**FAST), folds=3, seed=seed)

    with pytest.raises(TimnetError, match="holds a single-seed run"):
        seed_runs(d, seeds=[1, 2], make_run=make)
    with pytest.raises(TimnetError, match=TOO_FEW_TO_TRAIN):  # deletes nothing first
        seed_runs(d, seeds=[1, 2], overwrite=True, make_run=lambda folder, seed: Run(
            fs, folder, config=TrainConfig(**{**FAST, "val_fraction": 0.99}), folds=3, seed=seed))
    assert (d / "fold_01" / "model.pt").read_bytes() == b"old" and (d / "run.json").is_file()
    runs = seed_runs(d, seeds=[1, 2], make_run=make, overwrite=True)
    assert [r.dir for r in runs] == [d / "seed_1", d / "seed_2"]
    assert not (d / "run.json").exists() and not (d / "fold_01").exists()
    assert (d / "thesis" / "chapter1.tex").read_text() == "mine" and (d / "notes.md").read_text() == "mine too"
    with pytest.raises(TimnetError, match="not seed runs \\(notes.md, thesis\\)"):
        seed_runs(d, seeds=[1, 2], make_run=make)


def test_refused_seeds_write_nothing_and_overwrite_replaces_what_it_says(tmp_path):
    """A --seeds command refused by one seed's folder (another configuration) leaves no new seed
    folder that the corrected command would refuse next; --overwrite with other seeds deletes the
    old seeds' runs (README: `--seeds` runs are what it deletes), and with the same options but other
    folds (features of other speaker ids) it starts the run again, as the refusal's hint says."""
    fs, d = synthetic(), tmp_path / "work"

    def maker(epochs, fs=fs):
        return lambda folder, seed: Run(fs, folder, config=TrainConfig(**{**FAST, "epochs": epochs}), folds=3, seed=seed)

    seed_runs(d, seeds=[1, 2], make_run=maker(4))
    with pytest.raises(TimnetError, match=r"seed_1 holds a run with a different configuration \(train_config.epochs\)"):
        seed_runs(d, seeds=[3, 1], make_run=maker(3))
    assert not (d / "seed_3").exists()
    (d / "seed_2" / "plots").mkdir()
    (d / "seed_2" / "plots" / ".curves.png.abc123.tmp").write_bytes(b"half")  # a plot killed while writing
    (d / "seed_2" / "plots" / ".mine.tmp").write_bytes(b"the user's")
    live, drawing = owned_temporary(d / "seed_2" / "plots", prefix=".tsne.svg.", suffix=".tmp")  # a plot drawing now
    seed_runs(d, seeds=[1, 2], make_run=maker(4))  # resumed: the dead plot's temporary goes, the live one's stays
    assert sorted(p.name for p in (d / "seed_2" / "plots").iterdir()) == sorted([".mine.tmp", Path(drawing).name])
    os.close(live)
    runs = seed_runs(d, seeds=[3, 4], make_run=maker(3), overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["seed_2", "seed_3", "seed_4"] and not any(r.resumed for r in runs)
    # of the old seeds' runs only the user's file is left, in the folder that holds it
    assert [p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and "seed_2" in p.parts] == ["seed_2/plots/.mine.tmp"]
    # the same options, features with other speaker ids: other folds; --overwrite starts again
    single = tmp_path / "single"
    Run(fs, single, config=TrainConfig(**FAST), folds=3, split="speaker").prepare()
    (single / "fold_01").mkdir()
    (single / "fold_01" / "result.json").write_text("{}")
    other = replace(fs, speakers=np.array([f"{i % 3:02d}" for i in range(len(fs))]))
    with pytest.raises(TimnetError, match="these features give other folds .* or use another RUN_DIR or --overwrite"):
        Run(other, single, config=TrainConfig(**FAST), folds=3, split="speaker").prepare()
    assert Run(other, single, config=TrainConfig(**FAST), folds=3, split="speaker").prepare(overwrite=True) is False
    assert not (single / "fold_01").exists()
    assert Run(other, single, config=TrainConfig(**FAST), folds=3, split="speaker").prepare() is True


def test_a_damaged_snapshot_is_one_error_naming_it(tmp_path):
    """A snapshot cut short (a disk that filled) or holding something else stops the resume with
    the file's name and what to do, not a traceback from inside torch."""
    from timnet.train import load_saved

    good = tmp_path / "state.pt"
    torch.save({"epoch": 3}, good)
    assert load_saved(good) == {"epoch": 3}
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "text.pt"
    text.write_text("{}")
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    flipped = tmp_path / "flipped.pt"
    torch.save({"weights": torch.arange(64.0)}, good)
    flip_a_stored_byte(good, flipped)
    assert not torch.equal(torch.load(flipped)["weights"], torch.arange(64.0))  # loads, with a wrong weight
    for path, why in ((cut, r"\(.+\)"), (text, r"\((.*invalid load key.*|not a torch file of tensors and plain values)\)"), (listed, r"\(holds a list\)"),
                      (flipped, r"\(damaged: the bytes of .+/data/0 fail their checksum\)")):
        with pytest.raises(TimnetError) as e:
            load_saved(path)
        assert "\n" not in str(e.value)
        assert e.value.args[0].startswith(f"{path}: not a snapshot timnet can read (")
        assert e.value.args[0].endswith("delete it, and the same command trains that part again from its start")
        import re
        assert re.search(why, str(e.value)), str(e.value)


class _Payload:  # what a snapshot in a RUN_DIR from someone else could hold: code run by unpickling it
    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def test_a_snapshot_is_read_without_running_its_pickle(tmp_path):
    """Snapshots and finished members hold tensors and plain values only, and are read so (torch's
    weights_only): a RUN_DIR from elsewhere whose snapshot pickles code is refused, the code not run."""
    from timnet.run import _snapshot_machines
    from timnet.train import load_saved

    path = tmp_path / "state_member1.pt"
    torch.save({"epoch": 3, "cpu_dispatch": [{"cpu": _Payload(tmp_path / "ran")}]}, path)
    with pytest.raises(TimnetError, match=r"state_member1.pt: not a snapshot timnet can read \(it pickles posix.mkdir, "
                                          r"not only tensors and plain values: refused unread, as unpickling it could run code\)"):
        load_saved(path)
    assert _snapshot_machines(path) == [] and not (tmp_path / "ran").exists()
    torch.load(path, weights_only=False)  # what reading it so would have done
    assert (tmp_path / "ran").is_dir()


def test_options_that_change_nothing_are_said_and_do_not_block_a_resume(tmp_path):
    """A --time-mask-width without --time-masks (or --eval-every without validation) trains the same
    run: said at once, and the run resumes without it rather than being refused as another run; so
    do a preset's values given one by one rather than by its name."""
    features = save_features(synthetic(), tmp_path / "f.npz")

    def train(*options):
        return subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "run"),
                               "--folds", "2", "--epochs", "1", "--batch-size", "16", "--workers", "1", "-q",
                               "--no-report", *options], capture_output=True, text=True)

    first = train("--time-mask-width", "5", "--eval-every", "3")
    assert first.returncode == 0, first.stderr
    assert "timnet: warning: --time-mask-width 5 without --time-masks: no mask is drawn, so it changes nothing" in first.stderr
    assert "--eval-every 3 without --val-fraction" in first.stderr
    again = train()
    assert again.returncode == 0 and "different configuration" not in again.stderr, again.stderr
    assert "fold 1/2: done before, kept" in again.stderr + again.stdout
    held = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "all"), "--all-data",
                           "--epochs", "1", "--batch-size", "16", "--val-fraction", "0.25", "--threads", "1"],
                          capture_output=True, text=True)
    n = len(synthetic())
    val = len(torch.load(tmp_path / "all" / "model.pt", weights_only=True)["extra"]["val_idx"])
    assert held.returncode == 0 and val > 0, held.stderr
    assert f"one model on {n - val} of the {n} utterances ({val} held out for validation)" in held.stdout, held.stdout
    other = train("--time-masks", "1", "--time-mask-width", "5")  # a mask drawn: another run, refused as before
    # the width, the same in both, is not what changed, though only the new run's masks use it
    assert other.returncode == 1 and "different configuration (train_config.time_masks);" in other.stderr, other.stderr
    # a preset's name is a label: its values given one by one are the same run, and resume it
    preset = train("--recipe", "strong", "--members", "1", "--overwrite")
    assert preset.returncode == 0, preset.stderr
    by_hand = train("--swa-epochs", "1", "--mixup-alpha", "0.2")
    assert by_hand.returncode == 0 and "fold 1/2: done before, kept" in by_hand.stderr + by_hand.stdout, by_hand.stderr
    other = train("--mixup-alpha", "0.2")  # without the averaging: another run
    assert other.returncode == 1 and "different configuration (train_config.swa_epochs)" in other.stderr, other.stderr


def test_all_data_model_resumes_and_is_kept(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")

    def all_data(out, env=None):
        return subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(out), "--all-data",
                               "--epochs", "4", "--batch-size", "16", "--save-every", "1", "--threads", "1", "-q"],
                              capture_output=True, text=True, env={**os.environ, **(env or {})})

    full = all_data(tmp_path / "full")
    assert full.returncode == 0, full.stderr
    killed = all_data(tmp_path / "res", env={"TIMNET_TEST_DIE_AFTER": "res:2"})
    assert killed.returncode == -9 and (tmp_path / "res" / "state.pt").is_file()
    resumed = all_data(tmp_path / "res")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "full" / "history.csv").read_text() == (tmp_path / "res" / "history.csv").read_text()
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "res" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    stamp = (tmp_path / "res" / "model.pt").stat().st_mtime_ns
    again = all_data(tmp_path / "res")  # finished: kept, not trained again
    assert again.returncode == 0 and (tmp_path / "res" / "model.pt").stat().st_mtime_ns == stamp
    from timnet.predict import load_model

    model = load_model(tmp_path / "res")  # the folder itself, as `predict --model` and `export` take it
    assert len(model.models) == 1 and model.labels == synthetic().labels
    for verb in (["test", str(features), "--weights"], ["plot"]):  # no folds: said as such, not "unfinished"
        r = subprocess.run([sys.executable, "-m", "timnet", *verb, str(tmp_path / "res")], capture_output=True, text=True)
        assert r.returncode == 1 and "(--all-data) has no test folds; predict with it" in r.stderr, r.stderr
    no_score = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "j"),
                               "--all-data", "--json", str(tmp_path / "j.json")], capture_output=True, text=True)
    assert no_score.returncode == 1 and "no test split to score" in no_score.stderr and not (tmp_path / "j").exists()
    for option in (["--folds", "5"], ["--split", "speaker"]):  # would be silently ignored
        r = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "k"), "--all-data",
                            *option], capture_output=True, text=True)
        assert r.returncode == 1 and "--folds and --split do not apply" in r.stderr and not (tmp_path / "k").exists()
    r = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "k"), "--all-data",
                        "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 1 and "--workers 2 with --all-data" in r.stderr and not (tmp_path / "k").exists()


def test_all_data_dropout_and_best_val_epoch(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    out = tmp_path / "m"
    done = subprocess.run([sys.executable, "-m", "timnet", "train", str(features), "-o", str(out), "--all-data",
                           "--epochs", "4", "--batch-size", "16", "--threads", "1", "-q", "--dropout", "0.3",
                           "--val-fraction", "0.3", "--select", "best-val"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ck = torch.load(out / "model.pt", weights_only=True)
    assert ck["model_config"]["dropout"] == 0.3
    rows = (out / "history.csv").read_text().splitlines()[1:]
    uars = [float(r.split(",")[-1]) for r in rows]
    # the checkpoint names the epoch its weights come from: the first with the best validation UAR
    assert ck["extra"]["epoch"] == uars.index(max(uars)) + 1


def test_a_diverged_training_and_a_nan_model_are_errors(tmp_path):
    """A learning rate that overflows the weights makes the loss NaN: training stops with an error
    naming the epoch, and a model with NaN weights is refused for prediction rather than giving NaN
    probabilities."""
    from timnet.model import TIMNet, TIMNetConfig
    from timnet.predict import Predictor
    from timnet.train import train_fold

    fs = synthetic()
    with pytest.raises(TimnetError, match="the loss is nan at epoch 1; expected a finite loss"):
        train_fold(torch.from_numpy(fs.x), torch.from_numpy(fs.y), np.arange(60), np.empty(0, np.int64), model_config=TIMNetConfig(n_classes=7),
                   config=TrainConfig(**FAST, lr=1e38), seed=0)
    model = TIMNet(TIMNetConfig(n_classes=4))
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(TimnetError, match="m.pt: a model has non-finite"):
        Predictor([model], labels=("a", "b", "c", "d"), feature_config=FeatureConfig(signal_length=4096), source="m.pt")


def test_a_class_too_small_to_stratify_is_named(tmp_path):
    """A class with one utterance in a fold's training part cannot be on both sides of the
    validation split: the message names the class and the fold, and says what to change."""
    fs = synthetic()
    keep = np.flatnonzero(fs.y != 6)[:-1].tolist() + np.flatnonzero(fs.y == 6)[:2].tolist()  # two of the last class
    small = replace(fs, x=fs.x[keep], y=fs.y[keep], speakers=fs.speakers[keep], files=fs.files[keep])
    with pytest.raises(TimnetError, match=rf"^fold \d: --val-fraction 0.2: {LABELS[6]}: one utterance in this training "
                                          r"part, where each class needs one on either side; expected --val-fraction 0, or more data"):
        Run(small, tmp_path / "run", config=TrainConfig(**{**FAST, "val_fraction": 0.2}), folds=2).prepare()
    assert not (tmp_path / "run").exists()


def test_overwrite_deletes_nothing_before_the_new_run_is_known_valid_and_then_every_kind_of_output(tmp_path):
    """--overwrite with an option that fails (a validation share that cannot be stratified) keeps
    the old run; a successful one removes what any kind of run wrote there (an old --all-data
    model.pt, a report, the runs of --seeds, a killed write's hidden temporary), not the user's own files."""
    fs, d = synthetic(), tmp_path / "run"
    Run(fs, d, config=TrainConfig(**FAST), folds=3).prepare()
    (d / "fold_01").mkdir()
    (d / "fold_01" / "model.pt").write_bytes(b"finished fold")
    with pytest.raises(TimnetError, match=TOO_FEW_TO_TRAIN):
        Run(fs, d, config=TrainConfig(**{**FAST, "val_fraction": 0.99}), folds=3).prepare(overwrite=True)
    assert (d / "fold_01" / "model.pt").read_bytes() == b"finished fold" and (d / "run.json").is_file()

    for name in ("model.pt", "history.csv", "report.html", "seeds.json", "notes.md",
                 ".results.json.x1abc_9.tmp", ".my notes.tmp"):  # a killed write's leftover; the user's own
        (d / name).write_text("old")
    (d / "plots").mkdir()
    (d / "seed_7").mkdir()
    (d / "seed_7" / "run.json").write_text("{}")
    Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 5}), folds=3).prepare(overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [".my notes.tmp", "notes.md", "run.json"]

    # file by file: the user's notes in a fold folder (or one of a fold the new run lacks) and a
    # figure of theirs in plots/ stay, with the folders that hold them
    for name in ("fold_01/model.pt", "fold_01/history_member1.csv", "fold_01/mine.txt", "fold_07/result.json",
                 "fold_07/notes.txt", "fold_02/result.json", "plots/tsne.png", "plots/curves.svg", "plots/mine.png",
                 "seed_8/run.json", "seed_8/fold_01/model.pt", "seed_8/keep.txt"):
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_text("old")
    # ... but a fold folder the new run lacks, kept for a note, would make it no run: refused first
    before = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    with pytest.raises(TimnetError, match=r"fold_07 holds notes.txt, not timnet's, and the new 3-fold run has no "
                                          r"fold_07; expected it moved out of .*run before --overwrite$"):
        Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 4}), folds=3).prepare(overwrite=True)
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == before
    (d / "fold_07" / "notes.txt").unlink()
    Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 4}), folds=3).prepare(overwrite=True)
    left = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert left == [".my notes.tmp", "fold_01/mine.txt", "notes.md", "plots/mine.png", "run.json", "seed_8/keep.txt"]
    assert not (d / "fold_07").exists()  # emptied of timnet's files (result.json): gone


def test_one_process_writes_a_run_dir_at_a_time(tmp_path, capsys):
    """A train or sweep into a folder another timnet process is writing (the same command started
    twice, --overwrite of a run still training) is refused and touches nothing; a failed command
    leaves no folder it made; a resume clears the temporary files of a run killed mid-write."""
    from timnet.cli import main
    from timnet.files import folder_lock

    features = save_features(synthetic(), tmp_path / "f.npz")
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1e-4, 1e-3]}\n")
    busy = tmp_path / "busy"
    common = ["--folds", "3", "--epochs", "2", "--batch-size", "16", "--threads", "1", "-q"]
    with folder_lock(busy):  # another open file: the kernel's lock refuses it as it would another process
        (busy / "run.json").write_text("the other run's")
        for command in (["train", str(features), "-o", str(busy), "--no-report", "--overwrite", *common],
                        ["sweep", str(features), "--space", str(space), "-o", str(busy), "--trials", "1", "--overwrite",
                         *common]):
            assert main(command) == 1
            assert f"{busy} is being written by another timnet process" in capsys.readouterr().err
        assert sorted(p.name for p in busy.iterdir()) == ["run.json"] and (busy / "run.json").read_text() == "the other run's"

    new = tmp_path / "new"
    assert main(["train", str(features), "-o", str(new), "--val-fraction", "0.99", *common]) == 1
    assert "fewer than its 7 classes; expected a smaller --val-fraction (or 0), or more data" in capsys.readouterr().err and not new.exists()

    run = tmp_path / "run"
    assert main(["train", str(features), "-o", str(run), "--no-report", *common]) == 0
    stray = [run / ".results.json.x1abc_9.tmp", run / "fold_02" / ".state_member1.pt.x2.tmp"]  # what SIGKILL mid-write leaves
    users = run / ".my notes.tmp"
    for path in [*stray, users]:
        path.write_bytes(b"")
    assert main(["train", str(features), "-o", str(run), "--no-report", *common]) == 0
    assert not any(path.exists() for path in stray) and (run / "results.json").is_file() and users.exists()
    # a report drawn before folds that finished since is said to be stale, not silently left
    capsys.readouterr()
    (run / "report.html").write_text("drawn at fold 1")
    os.utime(run / "report.html", (0, 0))
    assert main(["train", str(features), "-o", str(run), "--no-report", *common]) == 0
    assert f"{run / 'report.html'} was drawn before the last folds finished; `timnet plot {run}`" in capsys.readouterr().err
    os.utime(run / "report.html")  # drawn now
    assert main(["train", str(features), "-o", str(run), "--no-report", *common]) == 0
    assert "report.html" not in capsys.readouterr().err
    # a finished fold whose model.pt was deleted stays done (the ledger restores figures so): said on resume
    (run / "fold_02" / "model.pt").unlink()
    assert main(["train", str(features), "-o", str(run), "--no-report", *common]) == 0
    assert (f"timnet: warning: {run}: fold_02 has figures but no model.pt, kept as done; `test` and `predict` cannot use "
            "it (delete its result.json and run the same `timnet train` to train it again)") in capsys.readouterr().err.splitlines()


def test_a_resume_names_a_damaged_finished_fold(tmp_path, capsys):
    """A done fold is kept on resume only if whole: a damaged result.json, or a model.pt gone or cut
    short, is one error naming the file and the remedy (not a traceback, not a fold 'kept' that
    test and predict then cannot read)."""
    fs, d = synthetic(), tmp_path / "run"

    def resume():
        run = Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 2}), folds=3)
        run.prepare()
        return run.execute(progress=False, log=lambda m: None)

    resume()
    result, model = d / "fold_01" / "result.json", d / "fold_02" / "model.pt"
    good_result, good_model = result.read_bytes(), model.read_bytes()
    for damaged, match in (('{"fold": 1, "war"', "fold_01/result.json: not a readable fold result"),
                           ("{}", "fold_01/result.json: not a timnet fold result")):
        result.write_text(damaged)
        with pytest.raises(TimnetError, match=f"{match}.*; delete it to train that fold again"):
            resume()
    result.write_bytes(good_result)
    model.write_bytes(good_model[:1000])
    with pytest.raises(TimnetError, match=r"fold_02/model.pt: cut short or damaged, though result.json says fold 2 is done; "
                                          r"delete .*fold_02/result.json to train that fold again"):
        resume()
    model.unlink()  # figures without weights, as the benchmarks' ledger restores a run: done, kept
    assert len(resume()["folds"]) == 3 and not model.exists()
    (d / "fold_02" / "result.json").unlink()  # the remedy: that fold alone trains again
    assert len(resume()["folds"]) == 3 and zipfile.is_zipfile(model)

    # `test` on a run short of a fold says so in its JSON and header, not only in a warning
    from timnet.cli import main

    features = save_features(fs, tmp_path / "f.npz")
    import shutil

    shutil.rmtree(d / "fold_03")
    capsys.readouterr()
    assert main(["test", str(features), "--weights", str(d), "--json", str(tmp_path / "t.json"), "--seed", "7"]) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["folds_n"] == 2 and t["run_folds_n"] == 3 and t["seed"] != 7
    out, err = capsys.readouterr()
    assert "folds=2 of 3 (an unfinished run)" in out
    assert f"timnet: warning: {d}: only 2 of 3 folds are finished; the means cover those" in err.splitlines()
    assert any(line.startswith("timnet: warning: --seed 7 ignored:") for line in err.splitlines())
    # a fold with its figures and no weights (`train` counts it done) is named with the way to retrain it
    kept = (d / "fold_02" / "model.pt").read_bytes()
    (d / "fold_02" / "model.pt").unlink()
    assert main(["test", str(features), "--weights", str(d)]) == 0
    assert (f"timnet: warning: {d}: only 1 of 3 folds are finished; fold_02 has figures but no model.pt (delete its "
            "result.json and run the same `timnet train` to train it again); the means cover those"
            ) in capsys.readouterr().err.splitlines()
    (d / "fold_02" / "model.pt").write_bytes(kept)
    (d / "run.json").unlink()
    assert main(["test", str(features), "--weights", str(d)]) == 1
    assert "run/run.json: missing; expected the run file `timnet train` writes" in capsys.readouterr().err


def test_a_seeds_folder_is_named_as_such(tmp_path):
    fs, d = synthetic(), tmp_path / "ms"
    seed_runs(d, seeds=[1, 2], make_run=lambda folder, seed: Run(fs, folder, config=TrainConfig(**FAST), folds=3, seed=seed))
    with pytest.raises(TimnetError, match=r"ms holds the runs of 2 seeds \(seed_1, seed_2\); use another RUN_DIR or --overwrite"):
        Run(fs, d, config=TrainConfig(**FAST), folds=3, seed=1).prepare()
    Run(fs, d, config=TrainConfig(**FAST), folds=3, seed=1).prepare(overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["run.json"]


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_seeds_out_of_numpys_range_are_one_error(tmp_path, seed):
    fs = synthetic()
    with pytest.raises(TimnetError, match=f"--seed {seed} invalid; expected an integer from 0 to 4294967295"):
        Run(fs, tmp_path / "r", config=TrainConfig(**FAST), folds=3, seed=seed)
    with pytest.raises(TimnetError, match=f"--seed {seed} invalid"):
        seed_runs(tmp_path / "m", seeds=[2, seed], make_run=lambda folder, s: Run(fs, folder, config=TrainConfig(**FAST),
                                                                                 folds=3, seed=s))
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


def test_seed_lists_repeated_or_empty_are_one_error(tmp_path):
    def make(folder, s):
        return Run(synthetic(), folder, config=TrainConfig(**FAST), folds=3, seed=s)

    for seeds, message in (([46, 47, 46], "--seeds 46,47,46: a seed is repeated"), ([], "expected at least one seed")):
        with pytest.raises(TimnetError, match=message):
            seed_runs(tmp_path / "m", seeds=seeds, make_run=make)
    assert not (tmp_path / "m").exists()


def test_infinite_rates_are_refused():
    for option, value in (("lr", float("inf")), ("mixup_alpha", float("inf")), ("lr", float("nan"))):
        with pytest.raises(TimnetError, match=f"--{option.replace('_', '-')} {value} invalid"):
            TrainConfig(**{option: value})


def test_augmentation_larger_than_the_features_and_endless_warmup_are_refused(tmp_path):
    fs = synthetic()  # 24 frames of 39 coefficients
    for option, value, limit in (("time_shift", 24, 23), ("time_mask_width", 25, 24), ("freq_mask_width", 40, 39)):
        with pytest.raises(TimnetError, match=f"--{option.replace('_', '-')} {value} invalid; expected at most {limit} "
                                              r"\(the features have 24 frames of 39 coefficients"):
            Run(fs, tmp_path / "r", config=TrainConfig(**FAST, **{option: value}), folds=3)
        with pytest.raises(TimnetError, match=f"--{option.replace('_', '-')} {value} invalid"):
            train_all_data(fs, tmp_path / "all", config=TrainConfig(**FAST, **{option: value}))
        Run(fs, tmp_path / "r", config=TrainConfig(**FAST, **{option: limit}), folds=3)  # the limit itself is fine
    assert not (tmp_path / "r").exists() and not (tmp_path / "all").exists()
    with pytest.raises(TimnetError, match=r"--warmup-epochs 50 invalid; expected at most --epochs \(4\)"):
        TrainConfig(**FAST, warmup_epochs=50)


def test_overwrite_of_a_folder_that_never_held_a_run_deletes_nothing_and_date_seeds_work(tmp_path):
    fs, d = synthetic(), tmp_path / "mine"
    d.mkdir()
    for name in ("model.pt", "results.csv", "notes.md"):
        (d / name).write_text("the user's")
    Run(fs, d, config=TrainConfig(**{**FAST, "val_fraction": 0.2}), folds=3, seed=20240101).prepare(overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["model.pt", "notes.md", "results.csv", "run.json"]


def test_a_run_resumed_on_other_speaker_ids_is_refused(tmp_path):
    """The same x and y with other speaker ids (another --speaker-pattern) give a speaker split other
    folds: the run's finished folds and the rest would not be one split, so resuming is refused
    (run.json keeps a digest of the folds); and folds of two splits are refused by `test`."""
    from timnet.evaluate import fold_models

    fs = synthetic()
    run = Run(fs, tmp_path / "r", config=TrainConfig(**{**FAST, "epochs": 1}), folds=3, split="speaker", threads=1)
    assert not run.prepare()
    run.execute(workers=1, progress=False, log=lambda m: None)
    assert Run(fs, tmp_path / "r", config=run.config, folds=3, split="speaker", threads=1).prepare()  # same: resumes
    other = replace(fs, speakers=np.roll(fs.speakers, 1))
    again = Run(other, tmp_path / "r", config=run.config, folds=3, split="speaker", threads=1)
    with pytest.raises(TimnetError, match="these features give other folds than the run's began with"):
        again.prepare()
    # a run made before the digest was kept resumes as before; its folds' test sets then overlap
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    del record["splits"]
    (tmp_path / "r" / "run.json").write_text(json.dumps(record))
    shutil.rmtree(tmp_path / "r" / "fold_03")
    assert again.prepare()
    again.execute(workers=1, progress=False, log=lambda m: None)
    with pytest.raises(TimnetError, match="test utterances overlap, so they are not the folds of one split"):
        fold_models(tmp_path / "r", fs, folds=3, seed=run.seed, split="speaker")


def test_a_run_that_lost_its_run_json_is_overwritten_whole(tmp_path):
    """--overwrite on a folder whose run.json is gone deletes its fold folders and outputs too:
    kept, their results would count as the new run's finished folds (another seed, other epochs)."""
    fs, d = synthetic(), tmp_path / "r"
    first = Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 1}), folds=3, seed=46, threads=1)
    first.prepare()
    first.execute(workers=1, progress=False, log=lambda m: None)
    (d / "run.json").unlink()
    (d / "notes.md").write_text("the user's")
    lines = []
    again = Run(fs, d, config=TrainConfig(**{**FAST, "epochs": 2}), folds=3, seed=7, threads=1)
    assert again.prepare(overwrite=True) is False
    again.execute(workers=1, progress=False, log=lines.append)
    assert not any("done before" in line for line in lines) and len(lines) == 3
    assert (d / "notes.md").read_text() == "the user's"
    assert json.loads((d / "fold_01" / "result.json").read_text())["epochs_run"] == 2


def test_ray_only_options_are_refused_on_the_local_backend(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    for option, said in (("--cpus-per-fold", "--workers and --threads share"), ("--gpus-per-fold", "--device cuda trains")):
        done = train_cli(features, tmp_path / "r", option, "1")
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{option} is for --backend ray; on the local backend {said}" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_fold_resumed_with_other_kernels_is_warned_of_and_recorded(tmp_path, monkeypatch):
    """The fast path's arithmetic (native C kernels, or PyTorch's) decides the last bits: a snapshot
    keeps it, and a resume under the other says so and records both in the fold's result."""
    from timnet.model import TIMNetConfig
    from timnet.train import train_fold

    fs = synthetic()
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    tr, va = np.arange(0, 60), np.arange(60, 84)
    config = TrainConfig(**{**FAST, "epochs": 1, "save_every": 1})
    state_path = tmp_path / "state.pt"
    _, state = train_fold(x, y, tr, va, model_config=TIMNetConfig(n_classes=len(fs.labels)), config=config, seed=1,
                          state_path=state_path)
    now = state.arithmetic
    snapshot = torch.load(state_path, weights_only=False)
    assert snapshot["arithmetic"] == now
    torch.save({**snapshot, "arithmetic": "other"}, state_path)
    with pytest.warns(UserWarning, match=f"state.pt: begun with the other arithmetic, resumed with {now}"):
        _, state = train_fold(x, y, tr, va, model_config=TIMNetConfig(n_classes=len(fs.labels)),
                              config=replace(config, epochs=2), seed=1, state_path=state_path)
    assert state.arithmetic == f"other, then {now}"

    # a torch with no fused CPU Adam (before 2.4) steps apart by rounding: said with the arithmetic,
    # so the snapshot begun with the fused one is resumed with a warning, not silently
    class NoFused(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            if kwargs.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **kwargs)

    torch.save(snapshot, state_path)
    monkeypatch.setattr(torch.optim, "Adam", NoFused)
    with pytest.warns(UserWarning, match=f"state.pt: begun with the {now} arithmetic, resumed with {now} with unfused Adam"):
        _, state = train_fold(x, y, tr, va, model_config=TIMNetConfig(n_classes=len(fs.labels)),
                              config=replace(config, epochs=2), seed=1, state_path=state_path)
    assert state.arithmetic == f"{now}, then {now} with unfused Adam"


def test_eval_every_without_a_validation_share_is_said(tmp_path):
    features = save_features(synthetic(), tmp_path / "f.npz")
    done = train_cli(features, tmp_path / "r", "--eval-every", "2", "--epochs", "1")
    assert done.returncode == 0 and "--eval-every 2 without --val-fraction: there is no validation share" in done.stderr
    done = train_cli(features, tmp_path / "v", "--eval-every", "2", "--epochs", "1", "--val-fraction", "0.2")
    assert done.returncode == 0 and "--eval-every" not in done.stderr, done.stderr


def test_a_fold_that_trains_on_no_utterance_of_a_class_is_said(tmp_path):
    """A class only one speaker holds is, in that speaker's fold, in no training part: the fold's
    recall of it is 0 by construction, and preparing the run says which folds and classes."""
    fs = synthetic()
    lone = (fs.y == 6) & (fs.speakers != "03")
    keep = ~lone  # the last class only from speaker 03
    fs = replace(fs, x=fs.x[keep], y=fs.y[keep], speakers=fs.speakers[keep], files=fs.files[keep])
    with pytest.warns(UserWarning, match=rf"a class with no utterance to train on \(fold \d: {LABELS[6]}\): those folds' "
                                         r"models cannot predict it, so its recall there is 0 by construction"):
        Run(fs, tmp_path / "speaker", config=TrainConfig(**FAST), folds=6, split="speaker").prepare()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class in every training part: nothing said
        Run(synthetic(), tmp_path / "random", config=TrainConfig(**FAST), folds=3).prepare()
