"""Ensembles of members per fold (--members): averaging, checkpoints, pairing with the single model, resume."""
import json

import numpy as np
import pytest
import torch

from test_train import FAST, synthetic, train_cli
from timnet.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from timnet.errors import TimnetError
from timnet.features import save_features
from timnet.model import TIMNet, TIMNetConfig, TIMNetEnsemble
from timnet.predict import load_model
from timnet.run import Run
from timnet.train import TrainConfig, member_seed


def test_ensemble_averages_probabilities_and_round_trips(tmp_path):
    fs = synthetic()
    config = TIMNetConfig(dilations=3, n_classes=7)
    torch.manual_seed(0)
    members = [TIMNet(config).eval() for _ in range(3)]
    ens = TIMNetEnsemble(members).eval()
    x = torch.from_numpy(fs.x[:5])
    with torch.no_grad():
        want = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
        logits, z = ens(x, return_features=True)
    assert torch.allclose(logits.softmax(-1), want, atol=1e-6)
    assert z.shape == (5, 3 * config.n_filters)

    path = save_checkpoint(tmp_path / "m.pt", ens, feature_config=fs.config, labels=fs.labels, corpus="EMODB")
    raw = read_checkpoint(path)
    assert len(raw["members"]) == 3 and raw["format"] == "timnet-checkpoint/2"  # older timnets refuse it
    # the first member stands where a single model's weights are
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in members[0].state_dict().items())
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, TIMNetEnsemble)
    with torch.no_grad():
        assert torch.allclose(loaded(x).softmax(-1), want, atol=1e-6)
    assert np.allclose(load_model(path).predict_features(fs.x[:5]), want.numpy(), atol=1e-6)
    assert load_model(path).networks == 3  # one checkpoint, three TIM-Nets

    pytest.importorskip("onnxruntime")
    from timnet.onnx_export import export_onnx

    onnx_path = export_onnx(load_model(path), tmp_path / "m.onnx")
    np.testing.assert_allclose(load_model(onnx_path).predict_features(fs.x[:5]), want.numpy(), atol=1e-5, rtol=0)

    with pytest.raises(TimnetError, match="two or more members"):
        TIMNetEnsemble(members[:1])
    with pytest.raises(TimnetError, match="--members 0 invalid"):
        TrainConfig(members=0)
    assert member_seed(46046, 0) == 46046 and len({member_seed(46046, m) for m in range(4)}) == 4


def _run(fs, folder, **kw):
    run = Run(fs, folder, config=TrainConfig(**{**FAST, "epochs": 2, **kw}), folds=3, seed=5,
              evaluate_test=kw.get("val_fraction", 0) == 0)
    run.prepare()
    return run, run.execute(progress=False, log=lambda m: None)


def test_first_member_is_the_single_model(tmp_path):
    """Member 0 trains from the fold's own seed: it is the single-model recipe, weight for weight,
    so an ensemble's run also gives the single model's figures on the same data."""
    fs = synthetic()
    single, s1 = _run(fs, tmp_path / "one")
    ens, s2 = _run(fs, tmp_path / "two", members=2)
    for k in (1, 2, 3):
        a = read_checkpoint(single.fold_dir(k) / "model.pt")
        b = read_checkpoint(ens.fold_dir(k) / "model.pt")
        assert all(torch.equal(a["state_dict"][n], b["members"][0][n]) for n in a["state_dict"])
        assert not torch.equal(b["members"][0]["classifier.weight"], b["members"][1]["classifier.weight"])
        assert (ens.fold_dir(k) / "history_member1.csv").is_file()
        assert not list(ens.fold_dir(k).glob("member_*.pt")) and not list(ens.fold_dir(k).glob("state*.pt"))
    for f1, f2 in zip(s1["folds"], s2["folds"]):
        assert f2["members"][0] == {"war": f1["war"], "uar": f1["uar"]}
        assert len(f2["members"]) == 2

    # validation-only runs pair the ensemble with its first member on the same validation share
    _, v1 = _run(fs, tmp_path / "v1", val_fraction=0.25)
    _, v2 = _run(fs, tmp_path / "v2", val_fraction=0.25, members=2)
    assert [f["val_uar_single"] for f in v2["folds"]] == [f["val_uar"] for f in v1["folds"]]

    # members are nested (member m's seed does not depend on --members): a run of three also scores
    # the two-member ensemble, on the test split and on a validation share
    _, s3 = _run(fs, tmp_path / "three", members=3)
    for f2, f3 in zip(s2["folds"], s3["folds"]):
        assert f3["first_members"] == [{"members": 2, "war": f2["war"], "uar": f2["uar"]}]
        assert f3["members"][:2] == f2["members"] and len(f3["members"]) == 3
    _, v3 = _run(fs, tmp_path / "v3", val_fraction=0.25, members=3)
    assert [f["val_first_members"] for f in v3["folds"]] == [
        [{"members": 2, "val_war": f["val_war"], "val_uar": f["val_uar"]}] for f in v2["folds"]]
    assert all("first_members" not in f and "val_first_members" not in f for f in s2["folds"] + v2["folds"])


def test_plain_members_are_the_unaugmented_runs_members(tmp_path):
    """A mixed ensemble (--plain-members N): its first N members are, weight for weight, the members of
    the same run without augmentation; the others are those of the run augmented throughout."""
    from timnet import recipe

    fs = synthetic()
    aug = dict(vtlp=0.1, gain=6.0, time_shift=2)
    plain, _ = _run(fs, tmp_path / "plain", members=3)
    augmented, _ = _run(fs, tmp_path / "aug", members=3, **aug)
    mixed, summary = _run(fs, tmp_path / "mixed", members=3, plain_members=2, **aug)
    for k in (1, 2, 3):
        p, a, m = (read_checkpoint(r.fold_dir(k) / "model.pt")["members"] for r in (plain, augmented, mixed))
        for i, want in ((0, p), (1, p), (2, a)):
            assert all(torch.equal(m[i][n], want[i][n]) for n in m[i]), (k, i)
        assert not torch.equal(m[2]["classifier.weight"], p[2]["classifier.weight"])  # augmentation did change it
    assert summary["folds"][0]["members"][:2] == _run(fs, tmp_path / "plain2", members=2)[1]["folds"][0]["members"]
    from timnet.report import render_report

    assert "the first 2 of 3 without augmentation" in render_report(mixed.dir, {})  # the report says so
    # every augmentation, and nothing else, is off for a plain member
    every = TrainConfig(members=2, plain_members=1, time_shift=3, time_masks=1, time_mask_width=2, freq_masks=1,
                        freq_mask_width=2, tempo=0.1, vtlp=0.1, gain=3.0, mixup_alpha=0.2, lr=2e-3)
    assert every.for_member(1) is every
    assert every.for_member(0) == TrainConfig(members=2, plain_members=1, lr=2e-3)
    # ... and the training data of a plain member is untouched, with no draw made
    x, g = torch.randn(4, 24, 39), torch.Generator().manual_seed(1)
    before = g.get_state()
    assert recipe.augment(x, every.for_member(0), g) is x and recipe.mixup(x, every.for_member(0), g)[1] is None
    assert torch.equal(g.get_state(), before)
    for bad in (dict(plain_members=2, members=2), dict(plain_members=-1), dict(plain_members=1)):
        with pytest.raises(TimnetError, match="--plain-members .* invalid; expected 0 or more and fewer than --members"):
            TrainConfig(**bad)


def test_members_resume_exactly(tmp_path):
    """Killed inside the second member: the first is kept, the second resumes from its snapshot."""
    features = save_features(synthetic(), tmp_path / "f.npz")
    args = ("--members", "2", "--epochs", "3", "--plain-members", "1", "--vtlp", "0.1")  # a mixed ensemble: either kind resumes
    full = train_cli(features, tmp_path / "full", *args, "--json", tmp_path / "full.json")
    assert full.returncode == 0, full.stderr
    killed = train_cli(features, tmp_path / "res", *args, "--workers", "1",
                       env={"TIMNET_TEST_DIE_AFTER": "fold_02/state_member1.pt:2"})
    assert killed.returncode == -9
    assert (tmp_path / "res" / "fold_02" / "member_0.pt").is_file()  # the finished member was kept
    before = torch.load(tmp_path / "res" / "fold_02" / "state_member1.pt", weights_only=False)["seconds"]
    assert before > 0  # the snapshot keeps the training time so far
    resumed = train_cli(features, tmp_path / "res", *args, "--json", tmp_path / "res.json")
    assert resumed.returncode == 0, resumed.stderr
    assert "no augmentation on" not in full.stderr
    alike = train_cli(features, tmp_path / "alike", "--members", "2", "--plain-members", "1", "--epochs", "1")
    assert alike.returncode == 0 and "--plain-members 1 with no augmentation on: every member trains alike" in alike.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "res.json"))
    assert b["folds"][1]["member_seconds"][1] > before  # ... and the resumed member's time adds to it
    assert [f["confusion"] for f in a["folds"]] == [f["confusion"] for f in b["folds"]]
    for k in (1, 2, 3):
        x, y = (read_checkpoint(tmp_path / d / f"fold_{k:02d}" / "model.pt")["members"] for d in ("full", "res"))
        assert all(torch.equal(x[m][n], y[m][n]) for m in (0, 1) for n in x[m])


def test_members_of_a_fold_train_in_parallel_to_the_same_weights(tmp_path):
    """With two workers an ensemble's fold is split into its members, each in a worker of its own;
    the weights and figures are those of members trained one after another in one process."""
    from timnet.backends import LocalBackend, _units
    from timnet.run import execute_runs

    fs = synthetic()
    runs = []
    for name, workers in (("one", 1), ("two", 2)):
        run = Run(fs, tmp_path / name, config=TrainConfig(**{**FAST, "epochs": 2, "members": 3}), folds=2, seed=5)
        run.prepare()
        runs.append(run)
        (summary,) = execute_runs([run], backend=LocalBackend(workers), progress=False, log=lambda m: None)
        runs[-1].summary = summary
    one, two = runs
    assert [f["confusion"] for f in one.summary["folds"]] == [f["confusion"] for f in two.summary["folds"]]
    assert [f["members"] for f in one.summary["folds"]] == [f["members"] for f in two.summary["folds"]]
    # a fold's seconds are its members' training summed, wherever they trained, and the evaluation after
    for f in one.summary["folds"] + two.summary["folds"]:
        assert len(f["member_seconds"]) == 3 and all(t > 0 for t in f["member_seconds"])
        assert sum(f["member_seconds"]) <= f["seconds"] < sum(f["member_seconds"]) + 30
        assert f["member_epochs"] == [{"epoch": 2, "epochs_run": 2, "stopped_early": False}] * 3
    for k in (1, 2):
        x, y = (read_checkpoint(r.fold_dir(k) / "model.pt")["members"] for r in (one, two))
        assert all(torch.equal(x[m][n], y[m][n]) for m in range(3) for n in x[m])
        assert not list(two.fold_dir(k).glob("member_*.pt"))  # kept only until the fold is finished
    # the split: members first, the fold after them; a member already kept is not trained again
    (two.fold_dir(1) / "member_1.pt").touch()
    assert _units([two], [(0, 1)], 2) == [("member", (0, 1), 0), ("member", (0, 1), 2), ("fold", (0, 1))]
    assert _units([two], [(0, 1)], 1) == [("fold", (0, 1))]


def test_progress_counts_members_trained_at_once():
    """Members of one fold report epochs m * epochs + e, interleaved: the bar counts each once."""
    from timnet.progress import FoldProgress

    class R:  # what FoldProgress reads of a run
        config = TrainConfig(epochs=3, members=2)

    bar = FoldProgress([R()], [(0, 1)], enabled=True)  # a disabled tqdm counts nothing
    for e in (1, 4, 2, 5, 5, 3):  # member 0's epochs 1-3 and member 1's 4-6 (5 repeated: a resume)
        bar.epoch((0, 1), {"epoch": e, "loss": 1.0})
    assert bar.bar.n == 5 and set(bar.status) == {((0, 1), 0), ((0, 1), 1)}
    bar.finished((0, 1))  # member 1 stopped early at its epoch 2
    assert bar.bar.n == 6 and not bar.status


def test_a_member_waits_for_the_fold_that_gives_it():
    """LocalBackend's `waits`: a member another run's fold gives (the benchmarks' member reuse) does
    not start until that fold has finished, nor a fold before its members; other members start at once."""
    from timnet.backends import _ready

    source, taker = (0, 1), (1, 1)
    units = [*(("member", source, m) for m in range(4)), ("fold", source),
             *(("member", taker, m) for m in range(4)), ("fold", taker)]
    waits = {(taker, 2): source, (taker, 3): source, ((1, 2), 2): (0, 2)}
    finished: set = set()

    def ready(planned=(source, taker)):
        return [u for u in units if _ready(u, units, finished=finished, planned=set(planned), waits=waits)]

    assert ready() == [*units[:4], *units[5:7]]  # the taker's members 2-3 wait, and both folds
    assert ready(planned=[taker]) == units[:4] + units[5:9]  # a source fold not planned (done before): none waits
    finished.add(source)
    assert ready() == units[:4] + units[5:9]
