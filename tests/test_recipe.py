"""Training recipes: the paper's untouched, the strong one's pieces, resume, and no test access."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import FAST, synthetic, train_cli
from timnet.errors import TimnetError
from timnet.features import save_features
from timnet.recipe import EMA, SWA, augment, change_gain, learning_rate, measure_bn, stretch_time, warp_vocal_tract
from timnet.run import Run
from timnet.train import TrainConfig, recipe_config, train_fold


def test_paper_recipe_is_spec_section_4():
    """The paper's settings pinned by value (SPEC.md §4), not by comparing the defaults with themselves."""
    c = recipe_config("paper")
    assert (c.epochs, c.batch_size, c.lr, c.beta1, c.beta2, c.adam_eps) == (500, 64, 1e-3, 0.93, 0.98, 1e-8)
    assert c.label_smoothing == 0.1 and c.select == "last" and c.patience is None and c.members == 1
    assert c.adam_eps_rule == "torch"  # SPEC.md §4's eps 1e-8 in PyTorch's terms (keras: an option)
    from timnet.model import TIMNet, TIMNetConfig
    from timnet.train import _adam

    for fused in (False, True):
        opt = _adam(TIMNet(TIMNetConfig()), c, fused=fused)
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.93, 0.98)
        assert opt.defaults["lr"] == 1e-3 and opt.defaults["eps"] == 1e-8 and opt.defaults["weight_decay"] == 0


def test_paper_recipe_is_the_default_and_changes_nothing():
    assert recipe_config("paper") == TrainConfig()
    x = torch.randn(3, 20, 39)
    assert augment(x, TrainConfig(), torch.Generator()) is x
    assert all(learning_rate(TrainConfig(), s, 8) == 1e-3 for s in (0, 7, 3999))


def test_selection_reads_candidates_from_the_runs_that_train_them(monkeypatch):
    """`swa` trains the paper's recipe and `swa+vtlp+gain` the `vtlp+gain` one step for step, so their
    last weights score "paper" and "vtlp+gain" (the two runs CASIA's selection trains), fold by
    fold; an ensemble's first j members score the smaller ensembles; a run named itself is never
    replaced by another's figures."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import recipe_selection

    def summary(*last):
        return {"folds": [{"fold": k, "val_uar": 0.0, "val_uar_last": u} for k, u in enumerate(last, start=1)]}

    derived = recipe_selection.derived_candidates(["swa", "swa+vtlp+gain"], [summary(0.8, 0.7), summary(0.9)])
    assert derived == {"paper": ("its last weights: swa", {"folds": [{"fold": 1, "val_uar": 0.8}, {"fold": 2, "val_uar": 0.7}]}),
                       "vtlp+gain": ("its last weights: swa+vtlp+gain", {"folds": [{"fold": 1, "val_uar": 0.9}]})}
    assert "paper" not in recipe_selection.derived_candidates(["paper", "swa"], [summary(0.1), summary(0.2)])
    p = recipe_selection.paired(derived["vtlp+gain"][1]["folds"], derived["paper"][1]["folds"], "val_uar", "val_uar")
    assert (p["n"], p["mean"], p["se"]) == (1, pytest.approx(0.1), None)  # fold 1 only, the pairs both have: no spread

    # a four-member run: its member 0 is "swa", its first 2 and 3 members "swa-x2" and "swa-x3", its
    # member 0's last weights "paper"; the ensemble's last weights are no candidate's
    x4 = {"folds": [{"fold": k, "val_uar": 0.9, "val_uar_single": 0.1 * k, "val_uar_last": 0.5, "val_uar_single_last": 0.4,
                     "val_first_members": [{"members": 2, "val_uar": 0.2 * k}, {"members": 3, "val_uar": 0.3 * k}]}
                    for k in (1, 2)]}
    derived = recipe_selection.derived_candidates(["swa-x2", "swa-x4"], [summary(0.6), x4])
    assert set(derived) == {"swa", "swa-x3", "paper"}  # swa-x2 ran itself
    assert derived["paper"] == ("its first member's last weights: swa-x4", {"folds": [{"fold": 1, "val_uar": 0.4}, {"fold": 2, "val_uar": 0.4}]})
    assert derived["swa"] == ("its first member: swa-x4", {"folds": [{"fold": 1, "val_uar": 0.1}, {"fold": 2, "val_uar": 0.2}]})
    assert derived["swa-x3"][0] == "its first 3 members: swa-x4"
    assert [f["val_uar"] for f in derived["swa-x3"][1]["folds"]] == [pytest.approx(0.3), pytest.approx(0.6)]

    # a mixed four (members 0-1 plain): its first one and two members are "swa" and "swa-x2", and member
    # 0's last weights "paper"; its first three are no candidate's. Augmented throughout, member 0 is
    # "swa+vtlp+gain" and its last weights "vtlp+gain"
    derived = recipe_selection.derived_candidates(["swa-mixed-x4"], [x4])
    assert {n: how for n, (how, _) in derived.items()} == {
        "swa": "its first member: swa-mixed-x4", "swa-x2": "its first 2 members: swa-mixed-x4",
        "paper": "its first member's last weights: swa-mixed-x4"}
    derived = recipe_selection.derived_candidates(["swa+vtlp+gain-x4"], [x4])
    assert set(derived) == {"swa+vtlp+gain", "vtlp+gain"}


def test_selection_says_how_much_of_the_test_folds_its_validation_shares_hold(monkeypatch, tmp_path):
    """The selection's validation shares come from another split of the same corpus, so they hold
    utterances the paper's ten folds test on: the count the table prints is those shares' union, and
    each test fold's share of it is read off the same seed's ten folds."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import recipe_selection
    from timnet.folds import make_folds

    fs = synthetic(n=140)
    run = Run(fs, tmp_path / "r", config=TrainConfig(val_fraction=0.2, **FAST), folds=5, seed=46)
    got = recipe_selection.validation_overlap(run, fs)
    union = set().union(*(run.validation_split(k)[1].tolist() for k in range(1, 6)))
    assert got["in_validation"] == len(union) and got["utterances"] == 140 and got["share"] == len(union) / 140
    shares = [len(union & set(te.tolist())) / len(te) for _, te in make_folds(140, folds=10, seed=46)]
    assert (got["min_fold_share"], got["max_fold_share"]) == (min(shares), max(shares))
    # five shares of a fifth of four fifths each, drawn apart: more than a third, less than all
    assert 1 / 3 < got["share"] < 1 and got["min_fold_share"] < got["max_fold_share"]


def test_selection_offers_an_ensemble_every_other_candidates_run(monkeypatch, tmp_path):
    """An ensemble candidate looks for members in every other candidate's run folder, the largest
    ensembles first (which member trains alike is _common.members_from's to say: test_ledger);
    a one-member candidate keeps no members to be given."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import recipe_selection

    calls = []
    monkeypatch.setattr(recipe_selection, "members_from", lambda run_dir, source: calls.append(source))
    run = type("R", (), {"dir": tmp_path / "x"})()

    def sources(name):
        calls.clear()
        recipe_selection.reuse_members(run, name, tmp_path)
        return [p.name for p in calls]

    assert sources("swa") == [] and sources("paper") == []
    got = sources("swa-mixed-x4")
    assert sorted(got) == sorted(n for n in recipe_selection.CANDIDATES if n != "swa-mixed-x4")
    sizes = [recipe_selection.CANDIDATES[n].get("members", 1) for n in got]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 4


def test_selection_gives_a_finished_folds_members_to_the_next_candidate_in_the_same_session(monkeypatch, tmp_path, capsys):
    """Fold models do not outlive a machine (the ledger keeps figures): a mixed ensemble takes an
    augmented ensemble's members fold by fold as the selection finishes them, not only those found
    at its start, and its folds are those it trains from scratch."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import _common
    import recipe_selection

    tiny = {**FAST, "epochs": 2, "time_shift": 2, "members": 4}
    monkeypatch.setattr(recipe_selection, "CANDIDATES", {"aug-x4": tiny, "mixed-x4": {**tiny, "plain_members": 2}})
    features = save_features(synthetic(), tmp_path / "f.npz")

    def select(candidates: str, runs: Path, workers: int = 2) -> list[dict]:
        monkeypatch.setattr(_common, "LEDGER", runs.with_name(runs.name + "_ledger"))  # each its own: none restored
        monkeypatch.setattr("sys.argv", ["recipe_selection.py", str(features), "--runs", str(runs), "--json",
                                         str(runs.with_suffix(".json")), "--folds", "2", "--workers", str(workers),
                                         "--candidates", candidates])
        assert recipe_selection.main() == 0
        return [json.loads(p.read_text()) for p in sorted(runs.glob(f"{candidates.split(',')[-1]}/fold_*/result.json"))]

    # neither has a finished fold at the start; in the pool, mixed-x4's members 2-3 wait for the
    # fold of aug-x4 that gives them while its members 0-1 train (in one process: the order)
    for workers in (2, 1):
        mixed = select("aug-x4,mixed-x4", tmp_path / f"runs{workers}", workers)
        source = str(tmp_path / f"runs{workers}" / "aug-x4")
        assert [f.get("members_from") for f in mixed] == [{"2": source, "3": source}] * 2
        assert "members 2, 3 taken from" in capsys.readouterr().err
    scratch = select("mixed-x4", tmp_path / "alone")  # the same candidate with no other run beside it: all trained
    assert not any("members_from" in f for f in scratch)
    assert [(f["val_loss"], f["val_uar"]) for f in mixed] == [(f["val_loss"], f["val_uar"]) for f in scratch]
    assert [f["val_first_members"] for f in mixed] == [f["val_first_members"] for f in scratch]


def test_strong_preset_and_overrides(monkeypatch):
    # the preset is the candidate benchmarks/recipe_selection.py chose on validation data: "swa+mixup-x4"
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import recipe_selection

    strong = recipe_config("strong")
    assert recipe_config("paper", **recipe_selection.CANDIDATES["swa+mixup-x4"]) == TrainConfig(**{**vars(strong), "recipe": "paper"})
    assert strong.swa_epochs == 100 and strong.epochs == 500 and strong.members == 4 and strong.mixup_alpha == 0.2
    # its one-member form, the tables' strong-1member, is the "swa+mixup" candidate
    assert recipe_config("paper", **recipe_selection.CANDIDATES["swa+mixup"]) == TrainConfig(
        **{**vars(recipe_config("strong", members=1)), "recipe": "paper"})
    # the preset's window is the last fifth of an explicit --epochs; an explicit window is kept
    assert recipe_config("strong", epochs=50).swa_epochs == 10
    assert recipe_config("strong", epochs=3).swa_epochs == 1
    assert recipe_config("strong", epochs=50, swa_epochs=30).swa_epochs == 30
    assert recipe_config("strong", swa_epochs=0, members=1, mixup_alpha=0) == TrainConfig(recipe="strong")
    c = recipe_config("strong", epochs=7)
    assert c.recipe == "strong" and c.epochs == 7 and c.swa_epochs == 1
    with pytest.raises(TimnetError, match=r"--recipe strong sets --swa-epochs: add --swa-epochs 0"):
        recipe_config("strong", ema_decay=0.999)
    with pytest.raises(TimnetError, match=r"best-val or --patience \(--recipe strong sets --swa-epochs"):
        recipe_config("strong", val_fraction=0.2, select="best-val")
    with pytest.raises(TimnetError, match="--recipe 'fancy' unknown"):
        recipe_config("fancy")
    with pytest.raises(TimnetError, match="--ema-decay 1.0 invalid"):
        TrainConfig(ema_decay=1.0)


def test_augment_shift_and_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 12 * 5, dtype=torch.float32).view(2, 12, 5)
    shifted = augment(x, TrainConfig(time_shift=3), g)
    for b in range(2):  # a circular shift of whole frames
        k = [torch.equal(shifted[b], torch.roll(x[b], s, dims=0)) for s in range(-3, 4)]
        assert sum(k) == 1
    g = torch.Generator().manual_seed(1)
    masked = augment(x, TrainConfig(time_masks=1, time_mask_width=4, freq_masks=1, freq_mask_width=2), g)
    fill = x.mean(1, keepdim=True).expand_as(x)
    changed = masked != x
    assert changed.any() and torch.equal(masked[changed], fill[changed])  # masked cells hold the utterance mean
    again = augment(x, TrainConfig(time_masks=1, time_mask_width=4, freq_masks=1, freq_mask_width=2),
                    torch.Generator().manual_seed(1))
    assert torch.equal(masked, again)
    for axis in ("time", "freq"):  # masks of width 0 would mask nothing while their draws change the run
        with pytest.raises(TimnetError, match=f"--{axis}-masks 2 needs --{axis}-mask-width"):
            TrainConfig(**{f"{axis}_masks": 2})


def test_tempo_reads_frames_at_scaled_times_about_the_centre():
    t = 21
    x = torch.arange(t, dtype=torch.float32)[None, :, None].repeat(3, 1, 2)  # frame t holds t
    rate = torch.tensor([1.0, 1.2, 0.8], dtype=torch.float64)
    out = stretch_time(x, rate)
    assert torch.equal(out[0], x[0])
    centre = (t - 1) / 2
    for b in (1, 2):
        want = (centre + (torch.arange(t) - centre) * rate[b]).clamp(0, t - 1).float()
        assert torch.allclose(out[b, :, 0], want, atol=1e-5)  # faster: the ends come from further out
    assert out[1, 0, 0] == 0 and out[1, -1, 0] == t - 1  # beyond the ends: the end frames


def test_vtlp_is_a_warp_of_the_envelope_the_mfccs_describe():
    """Against an independent construction: the log-mel envelope of random MFCCs (inverse
    orthonormal DCT), read at f / alpha with numpy's interpolation, back to MFCCs with scipy."""
    import librosa
    import scipy.fft

    rng = np.random.default_rng(0)
    c = torch.from_numpy(rng.standard_normal((2, 5, 39)))
    assert torch.allclose(warp_vocal_tract(c, torch.ones(2, dtype=torch.float64)), c, atol=1e-10)  # identity at 1
    alpha = np.array([1.1, 0.9])
    # the centres of the bands of the features' own filter bank (timnet.audio: librosa's, 22050 Hz)
    bank = librosa.filters.mel(sr=22050, n_fft=2048)
    bins = np.fft.rfftfreq(2048, 1 / 22050)
    centres = librosa.mel_frequencies(n_mels=130, fmin=0.0, fmax=11025)[1:-1]
    assert np.all(np.abs(bins[bank.argmax(1)] - centres) <= bins[1])  # each band peaks at its centre
    out = warp_vocal_tract(c, torch.from_numpy(alpha)).numpy()
    for b in range(2):
        envelope = scipy.fft.idct(np.r_[c[b].numpy().T, np.zeros((128 - 39, 5))], type=2, norm="ortho", axis=0)
        warped = np.stack([np.interp(centres / alpha[b], centres, e) for e in envelope.T], axis=1)  # (128, 5)
        want = librosa.feature.mfcc(S=warped, n_mfcc=39).T  # the MFCCs librosa makes of that log-mel spectrum
        assert np.allclose(out[b], want, atol=1e-9)
    # a formant moves up in frequency for alpha > 1 and down for alpha < 1
    peak = np.exp(-0.5 * ((np.arange(128) - 40) / 3.0) ** 2)
    mf = torch.from_numpy(scipy.fft.dct(peak, type=2, norm="ortho")[:39])[None, None, :].repeat(2, 1, 1)
    moved = warp_vocal_tract(mf, torch.from_numpy(alpha)).numpy()
    bands = [np.argmax(scipy.fft.idct(np.r_[moved[b, 0], np.zeros(89)], type=2, norm="ortho")) for b in range(2)]
    assert bands[0] > 40 > bands[1]


def test_gain_is_what_a_louder_recording_gives():
    """The MFCCs (timnet's own front end) of the same centre-padded utterance at half the amplitude
    differ from the original's by what change_gain adds: -6.02 dB on c0, nothing elsewhere."""
    from timnet.audio import mfcc

    rng = np.random.default_rng(0)
    t = np.arange(30000) / 22050
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t)))
    y = np.r_[np.zeros(8000), speech, np.zeros(8000)].astype(np.float32)  # padding, as SPEC.md §1 pads
    loud, quiet = mfcc(y), mfcc(0.5 * y)
    want = change_gain(torch.from_numpy(loud)[None], torch.tensor([20 * np.log10(0.5)], dtype=torch.float64))[0]
    assert np.abs(quiet - want.numpy()).max() < 1e-3  # float32 rounding of values near 500
    assert np.abs(quiet[:, 0] - loud[:, 0]).min() > 60  # c0 did move, by 6.02 * sqrt(128) = 68


def test_tempo_and_vtlp_in_augment_are_seeded_and_checked():
    x = torch.randn(4, 30, 39)
    config = TrainConfig(tempo=0.1, vtlp=0.1, gain=6)
    a = augment(x, config, torch.Generator().manual_seed(3))
    b = augment(x, config, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    for name, bad in (("tempo", 0.5), ("vtlp", 0.5), ("gain", -1.0)):
        with pytest.raises(TimnetError, match=f"--{name} {bad} invalid"):
            TrainConfig(**{name: bad})


def test_a_vtlp_run_resumed_under_other_numpy_loops_is_warned_of(tmp_path):
    """VTLP's band centres come through numpy's exp, which AVX-512 loops round apart from AVX2 ones:
    a resume in a process whose numpy runs the other loops trains the rest of the run other bits."""
    from timnet import dispatch
    from timnet.run import dispatch_change

    fs = synthetic()
    config = TrainConfig(**{**FAST, "epochs": 1, "vtlp": 0.1})
    run = Run(fs, tmp_path / "r", config=config, folds=3, threads=1)
    run.prepare()
    run.execute(workers=1, progress=False, log=lambda m: None)
    assert dispatch_change(run.dir, config) is None  # trained in this process
    run_file = run.dir / "run.json"
    data = json.loads(run_file.read_text())
    now = dispatch.state()["numpy_avx512"]
    data["versions"]["cpu_dispatch"]["numpy_avx512"] = not now
    run_file.write_text(json.dumps(data))
    assert dispatch_change(run.dir, TrainConfig(**FAST)) is None  # without VTLP no numpy arithmetic trains
    for path in (run.dir / "fold_03").iterdir():  # one fold left to train
        path.unlink()
    resumed = Run(fs, run.dir, config=config, folds=3, threads=1)
    assert resumed.prepare() is True
    with pytest.warns(UserWarning, match=f"AVX-512 loops {'off' if now else 'on'}, this process has them "
                                         f"{'on' if now else 'off'}; --vtlp rounds apart"):
        resumed.execute(workers=1, progress=False, log=lambda m: None)
    # a mixed ensemble: its plain members have no VTLP, so only its augmented ones are told of
    mixed = TrainConfig(**{**FAST, "epochs": 1, "vtlp": 0.1, "members": 3, "plain_members": 2})
    assert dispatch_change(run.dir, mixed, todo={0, 1}) is None and dispatch_change(run.dir, mixed, todo={2})
    del data["versions"]["cpu_dispatch"]  # a run from before it was recorded: nothing to compare
    run_file.write_text(json.dumps(data))
    assert dispatch_change(run.dir, config) is None


def test_a_run_resumed_on_another_vendors_cpu_or_mkl_branch_is_warned_of(tmp_path):
    """torch's MKL picks its kernels by the CPU's vendor and MKL_CBWR: a run resumed where either
    differs trains the rest on another path, VTLP or not; runs that recorded neither are not compared."""
    from timnet import dispatch
    from timnet.run import dispatch_change

    fs = synthetic()
    config = TrainConfig(**{**FAST, "epochs": 1})
    run = Run(fs, tmp_path / "r", config=config, folds=2, threads=1)
    run.prepare()
    run_file = run.dir / "run.json"
    data = json.loads(run_file.read_text())
    now = dispatch.state()
    assert data["versions"]["cpu_dispatch"]["cpu_vendor"] == now["cpu_vendor"] and dispatch_change(run.dir, config) is None
    # MKL's branch as MKL reports it where both record it (None where torch has no MKL), else MKL_CBWR
    mkl = "mkl_branch" if now["mkl_branch"] else "mkl_cbwr"
    for key, other in (("cpu_vendor", "OtherVendor"), (mkl, "COMPATIBLE")):
        changed = {**data["versions"]["cpu_dispatch"], key: other}
        run_file.write_text(json.dumps({**data, "versions": {**data["versions"], "cpu_dispatch": changed}}))
        note = dispatch_change(run.dir, config)
        assert note and other in note and "torch's MKL chooses its kernels by them" in note, note
        assert dispatch_change(run.dir, config, todo=set()) is None  # nothing left to train: nothing to tell
    # and through a resumed run (one fold left), VTLP or not
    run.execute(workers=1, progress=False, log=lambda m: None)
    for path in (run.dir / "fold_02").iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match="COMPATIBLE.*torch's MKL chooses its kernels by them"):
        Run(fs, run.dir, config=config, folds=2, threads=1).execute(workers=1, progress=False, log=lambda m: None)
    before = {k: v for k, v in data["versions"]["cpu_dispatch"].items() if k != "mkl_branch"}
    run_file.write_text(json.dumps({**data, "versions": {**data["versions"], "cpu_dispatch": {**before, "mkl_cbwr": "X"}}}))
    assert "MKL_CBWR=X" in dispatch_change(run.dir, config)  # recorded before the branch was: MKL_CBWR compared
    older = {k: v for k, v in before.items() if k not in ("cpu_vendor", "mkl_cbwr")}
    run_file.write_text(json.dumps({**data, "versions": {**data["versions"], "cpu_dispatch": older}}))
    assert dispatch_change(run.dir, config) is None



def test_a_fold_begun_on_another_machine_is_warned_of_and_recorded(tmp_path, monkeypatch):
    """A snapshot keeps what decided the bits of each process that trained it: a fold begun on another
    vendor's CPU and resumed here (where run.json was made) is warned of, and its result lists both
    machines (a benchmark takes no member from a fold whose list holds another MKL)."""
    from dataclasses import replace

    import timnet.train
    from timnet import dispatch
    from timnet.train import fold_seed

    fs = synthetic()
    config = TrainConfig(**{**FAST, "epochs": 2, "save_every": 1})
    run = Run(fs, tmp_path / "r", config=config, folds=2, threads=1)
    run.prepare()
    here = dispatch.state()
    there = {**here, "cpu_vendor": "OtherVendor"}
    fdir, x, y, tr, va = run._fold_data(2)
    monkeypatch.setattr(timnet.train.dispatch, "state", lambda: there)
    train_fold(x, y, tr, va, model_config=run.model_config, config=replace(config, epochs=1), seed=fold_seed(run.seed, 2),
               state_path=fdir / "state.pt")  # fold 2's first epoch, trained elsewhere
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="an unfinished fold trained on a OtherVendor CPU"):
        run.execute(workers=1, progress=False, log=lambda m: None)
    assert json.loads((run.fold_dir(1) / "result.json").read_text())["cpu_dispatch"] == [here]
    assert json.loads((fdir / "result.json").read_text())["cpu_dispatch"] == [there, here]
    # numpy's loops matter to a snapshot of a member with VTLP alone; a snapshot of a member not left to train, not at all
    from timnet.run import dispatch_change

    torch.save({"cpu_dispatch": [{**here, "numpy_avx512": not here["numpy_avx512"]}]}, fdir / "state.pt")
    vtlp = replace(config, vtlp=0.1)
    assert dispatch_change(run.dir, config, folders=[fdir]) is None
    assert "an unfinished fold trained with numpy's AVX-512 loops" in dispatch_change(run.dir, vtlp, folders=[fdir])
    two = replace(vtlp, members=2)
    assert dispatch_change(run.dir, two, todo={1}, folders=[fdir]) is None


def test_ema_is_a_bias_corrected_average():
    """After updates with w1, w2, w3 the average is (d^2 w1 + d w2 + w3) / (d^2 + d + 1): the
    initial weights have no share in it."""
    models = [torch.nn.Linear(3, 2) for _ in range(4)]
    ema = EMA(models[0], 0.9)
    for m in models[1:]:
        ema.update(m)
    d = 0.9
    want = (d**2 * models[1].weight + d * models[2].weight + models[3].weight) / (d**2 + d + 1)
    assert torch.allclose(ema.model.weight, want, atol=1e-6)


def test_swa_is_the_mean_of_the_weights_with_fresh_bn_statistics():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)) for _ in range(4)]
    swa = SWA(models[0])
    for m in models[1:]:
        swa.update(m)
    want = sum(m[0].weight for m in models[1:]) / 3  # the initial weights have no share
    assert swa.count == 3 and torch.allclose(swa.model[0].weight, want, atol=1e-6)
    x = torch.randn(40, 3)
    state = torch.get_rng_state()
    model = swa.finish(x, batch_size=10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    assert not model.training and model[1].momentum == models[0][1].momentum
    with torch.no_grad():
        h = model[0](x)
    # four equal batches: the cumulative average of batch means is the mean over all of x
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)


def test_bn_is_measured_on_shuffled_batches():
    """A training part is stored class by class: batches taken in order would each hold one class
    and measure only the spread within classes. Shuffled, they measure the spread of the data."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(64, 2) * 0.1 + 10 * c for c in range(4)])  # four far-apart classes, in order
    bn = torch.nn.BatchNorm1d(2)
    measure_bn(bn, x, batch_size=64, seed=3)
    assert torch.allclose(bn.running_var, x.var(0), rtol=0.25)  # in order it would be about 0.01
    again = torch.nn.BatchNorm1d(2)
    measure_bn(again, x, batch_size=64, seed=3)
    assert torch.equal(bn.running_var, again.running_var)  # the seed alone decides the batches


def test_validation_watches_but_never_steers_the_paper_recipe():
    """With the paper's selection ("last"), validating every epoch changes nothing: the fold's model
    equals, weight for weight, the one trained on the same data with no validation at all (no
    mode left switched, no random draw taken, no weights swapped in)."""
    from timnet.run import model_config_for

    fs = synthetic()
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    tr, va = np.arange(0, 60), np.arange(60, 84)
    kw = dict(model_config=model_config_for(fs), seed=3)
    watched, state = train_fold(x, y, tr, va, config=TrainConfig(**FAST, val_fraction=0.25), **kw)
    alone, _ = train_fold(x, y, tr, va[:0], config=TrainConfig(**FAST), **kw)
    assert all("val_uar" in row for row in state.history) and state.best is not None
    assert all(torch.equal(alone.state_dict()[k], v) for k, v in watched.state_dict().items())


def test_best_val_keeps_the_best_epochs_weights_and_patience_stops_there():
    """--select best-val ships the weights of its best validation epoch (those of a run trained
    for just that many epochs), not the last epoch's under the best epoch's label; --patience P
    stops P epochs after the last improvement."""
    from timnet.run import model_config_for

    fs = synthetic()
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    tr, va = np.arange(0, 60), np.arange(60, 84)
    y[va[::2]] = (y[va[::2]] + 3) % 7  # half the validation labels untaught: the best epoch is neither first nor last
    kw = dict(model_config=model_config_for(fs), seed=3)
    chosen, state = train_fold(x, y, tr, va, config=TrainConfig(epochs=12, batch_size=16, val_fraction=0.25,
                                                                   select="best-val"), **kw)
    best = state.best["epoch"]
    assert 1 < best < 12 and max(r["val_uar"] for r in state.history) == state.best["uar"]
    short, _ = train_fold(x, y, tr, va[:0], config=TrainConfig(epochs=best, batch_size=16), **kw)
    assert all(torch.equal(short.state_dict()[k], v) for k, v in chosen.state_dict().items())
    last, _ = train_fold(x, y, tr, va[:0], config=TrainConfig(epochs=12, batch_size=16), **kw)
    assert not all(torch.equal(last.state_dict()[k], v) for k, v in chosen.state_dict().items())

    _, stopped = train_fold(x, y, tr, va, config=TrainConfig(epochs=60, batch_size=16, val_fraction=0.25,
                                                              select="best-val", patience=2), **kw)
    assert stopped.stopped_early and len(stopped.history) == stopped.best["epoch"] + 2 < 60
    # patience running out at the budget's last epoch: the budget ended it, not an early stop
    _, ran_out = train_fold(x, y, tr, va, config=TrainConfig(epochs=len(stopped.history), batch_size=16, val_fraction=0.25,
                                                              select="best-val", patience=2), **kw)
    assert ran_out.history == stopped.history and not ran_out.stopped_early


def test_swa_trains_like_the_paper_and_averages_its_last_epochs():
    """SWA changes no step of training (its raw weights equal the paper recipe's); the fold's
    model is the average of the weights after each epoch of the window."""
    fs = synthetic()
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    tr, va = np.arange(0, 60), np.arange(60, 84)
    from timnet.run import model_config_for

    mc = model_config_for(fs)
    kw = dict(model_config=mc, seed=3, path="reference")
    plain, _ = train_fold(x, y, tr, va[:0], config=TrainConfig(**FAST), **kw)
    swa_model, state = train_fold(x, y, tr, va[:0], config=TrainConfig(**FAST, swa_epochs=2), **kw)
    raw = state.model.state_dict()
    assert all(torch.equal(raw[k], v) for k, v in plain.state_dict().items())  # same training
    assert state.swa.count == 2
    assert not torch.equal(swa_model.classifier.weight, plain.classifier.weight)
    # the same with augmentations: `swa+vtlp+gain` trains `vtlp+gain` step for step
    aug = dict(vtlp=0.1, tempo=0.1, gain=6.0)
    augmented, _ = train_fold(x, y, tr, va[:0], config=TrainConfig(**FAST, **aug), **kw)
    _, state = train_fold(x, y, tr, va[:0], config=TrainConfig(**FAST, **aug, swa_epochs=2), **kw)
    raw = state.model.state_dict()
    assert all(torch.equal(raw[k], v) for k, v in augmented.state_dict().items())
    assert not torch.equal(augmented.classifier.weight, plain.classifier.weight)  # the augmentations did act
    with pytest.raises(TimnetError, match="--swa-epochs 5 invalid"):
        TrainConfig(**FAST, swa_epochs=5)
    with pytest.raises(TimnetError, match="choose one"):
        TrainConfig(swa_epochs=10, ema_decay=0.99)
    with pytest.raises(TimnetError, match="best-val"):
        TrainConfig(swa_epochs=10, val_fraction=0.2, select="best-val")


def test_validation_runs_pair_averaged_weights_with_the_last_ones(tmp_path):
    """A validation-only run of an averaging recipe also scores the last weights of the same
    training: for SWA those are the paper recipe's, fold by fold."""
    fs = synthetic()
    base = dict(**FAST, val_fraction=0.25)
    out = {}
    for name, extra in (("paper", {}), ("swa", {"swa_epochs": 2})):
        run = Run(fs, tmp_path / name, config=TrainConfig(**base, **extra), folds=3, seed=5, evaluate_test=False)
        run.prepare()
        out[name] = run.execute(progress=False, log=lambda m: None)["folds"]
    assert "val_uar_last" not in out["paper"][0]
    assert [f["val_uar_last"] for f in out["swa"]] == [f["val_uar"] for f in out["paper"]]
    assert [f["val_war_last"] for f in out["swa"]] == [f["val_war"] for f in out["paper"]]
    # two members: the "last weights" are the ensemble of both members' last weights, as on test
    # folds, and the first member's own are kept apart (the paper's recipe again)
    for name, extra in (("paper-x2", {"members": 2}), ("swa-x2", {"members": 2, "swa_epochs": 2})):
        run = Run(fs, tmp_path / name, config=TrainConfig(**base, **extra), folds=3, seed=5, evaluate_test=False)
        run.prepare()
        out[name] = run.execute(progress=False, log=lambda m: None)["folds"]
    assert [f["val_uar_last"] for f in out["swa-x2"]] == [f["val_uar"] for f in out["paper-x2"]]
    assert [f["val_uar_single_last"] for f in out["swa-x2"]] == [f["val_uar"] for f in out["paper"]]
    assert [f["val_uar_single"] for f in out["swa-x2"]] == [f["val_uar"] for f in out["swa"]]


def test_swa_resumes_exactly(tmp_path):
    _assert_same_models(*_full_and_killed_then_resumed(tmp_path, "--swa-epochs", "3", "--epochs", "4"))


def _assert_same_models(full: Path, resumed: Path) -> None:
    """Every tensor of every fold's model (each member's, for an ensemble) is the same in both runs:
    the last optimiser step of a fold shows in no history row, only in the weights."""
    for k in (1, 2, 3):
        a, b = (torch.load(d / f"fold_{k:02d}/model.pt", weights_only=True) for d in (full, resumed))
        states = [(a["state_dict"], b["state_dict"])] + list(zip(a.get("members", []), b.get("members", [])))
        assert len(a.get("members", [])) == len(b.get("members", []))
        for x, y in states:
            assert x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x), f"fold {k}"


def _full_and_killed_then_resumed(tmp_path, *args, die="fold_02:2") -> tuple[Path, Path]:
    """Two runs of `timnet train *args`: one uninterrupted, one killed after fold 2's epoch 2 (or `die`) and resumed."""
    features = save_features(synthetic(), tmp_path / "f.npz")
    full = train_cli(features, tmp_path / "full", *args, "--json", tmp_path / "full.json")
    assert full.returncode == 0, full.stderr
    killed = train_cli(features, tmp_path / "res", *args, "--workers", "1", env={"TIMNET_TEST_DIE_AFTER": die})
    assert killed.returncode == -9
    resumed = train_cli(features, tmp_path / "res", *args, "--json", tmp_path / "res.json")
    assert resumed.returncode == 0, resumed.stderr
    return tmp_path / "full", tmp_path / "res"


def test_best_val_and_patience_resume_exactly_from_an_older_snapshot(tmp_path):
    """Killed at epoch 5 with snapshots every 4 epochs, fold 2's best epoch in the snapshot: the
    resumed fold replays epoch 5 from the epoch-4 snapshot, and the best weights, best epoch and
    patience count it restores give the uninterrupted run's model and stopping epoch."""
    full, res = _full_and_killed_then_resumed(tmp_path, "--val-fraction", "0.25", "--select", "best-val", "--patience", "2",
                                              "--save-every", "4", "--epochs", "8", die="fold_02:5")
    assert (res / "fold_02" / "test_died_after_epoch_5").exists()
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "res.json"))
    assert a["folds"][1]["epoch"] <= 4 < 5 < a["folds"][1]["epochs_run"]  # the best was only in the snapshot
    keys = ("confusion", "epoch", "epochs_run", "stopped_early")
    assert [[f[k] for k in keys] for f in a["folds"]] == [[f[k] for k in keys] for f in b["folds"]]
    for k in (1, 2, 3):
        h = f"fold_{k:02d}/history.csv"
        assert (full / h).read_text() == (res / h).read_text()
        x, y = (torch.load(d / f"fold_{k:02d}" / "model.pt", weights_only=True)["state_dict"] for d in (full, res))
        assert all(torch.equal(x[n], y[n]) for n in x)


def test_cosine_schedule_with_warmup():
    c = TrainConfig(lr_schedule="cosine", warmup_epochs=2, epochs=10)
    lrs = [learning_rate(c, s, 4) for s in range(40)]
    assert lrs[0] == pytest.approx(1e-3 / 8) and lrs[7] == pytest.approx(1e-3)
    assert all(x >= y for x, y in zip(lrs[8:], lrs[9:])) and 1e-5 <= lrs[-1] < 1.5e-5


def test_strong_recipe_resumes_exactly(tmp_path):
    _assert_same_models(*_full_and_killed_then_resumed(tmp_path, "--recipe", "strong", "--mixup-alpha", "0.4", "--epochs", "3"))
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "res.json"))
    assert [f["confusion"] for f in a["folds"]] == [f["confusion"] for f in b["folds"]]
    assert [f["last_weights"] for f in a["folds"]] == [f["last_weights"] for f in b["folds"]]
    for k in (1, 2, 3):
        h = f"fold_{k:02d}/history.csv"
        assert (tmp_path / "full" / h).read_text() == (tmp_path / "res" / h).read_text()


def test_keras_eps_rule_resumes_exactly(tmp_path):
    """Keras's epsilon depends on the step count, which a resumed fold takes up where it stopped:
    killed after fold 2's epoch 2 and resumed, the run's histories and weights equal the uninterrupted run's."""
    _assert_same_models(*_full_and_killed_then_resumed(tmp_path, "--adam-eps-rule", "keras", "--epochs", "4"))
    for k in (1, 2, 3):
        h = f"fold_{k:02d}/history.csv"
        assert (tmp_path / "full" / h).read_text() == (tmp_path / "res" / h).read_text()


def test_strong_recipe_never_reads_test_data(tmp_path):
    """Scrambling one fold's test labels and replacing its test features by noise leaves that fold's
    training, averaged weights and BN statistics unchanged: the strong recipe's choices (which
    epochs to average, the BN statistics of the average) are made without the test split."""
    config = recipe_config("strong", **{**FAST, "epochs": 5})
    assert config.swa_epochs == 1
    config = recipe_config("strong", **{**FAST, "epochs": 5, "swa_epochs": 3})  # a real average
    fs = synthetic()
    a = Run(fs, tmp_path / "a", config=config, folds=3, seed=5)
    a.prepare()
    ra = a.execute(progress=False, log=lambda m: None)
    changed = synthetic()
    test_idx = a.splits[1][1]
    changed.y[test_idx] = np.roll(changed.y[test_idx], 1)
    changed.x[test_idx] = np.random.default_rng(1).standard_normal(changed.x[test_idx].shape).astype(np.float32) * 50
    # the fingerprint covers the data, so this is a separate run on different data
    b = Run(changed, tmp_path / "b", config=config, folds=3, seed=5)
    b.prepare()
    rb = b.execute(progress=False, log=lambda m: None)
    assert config.members == 4  # the preset's four members: every history and every member's weights are compared
    for history in ("history.csv", *(f"history_member{m}.csv" for m in range(1, config.members))):
        assert (tmp_path / "a" / "fold_02" / history).read_text() == (tmp_path / "b" / "fold_02" / history).read_text()
    assert ra["folds"][1]["epoch"] == rb["folds"][1]["epoch"]
    ma, mb = (torch.load(tmp_path / r / "fold_02" / "model.pt", weights_only=True)["members"] for r in "ab")
    assert len(ma) == config.members and any("running_mean" in k for k in ma[-1])  # BN statistics are compared too
    assert all(torch.equal(wa[k], wb[k]) for wa, wb in zip(ma, mb) for k in wa)
    assert ra["folds"][1]["confusion"] != rb["folds"][1]["confusion"]  # the test split did change


@pytest.mark.parametrize("members", [1, 2])
def test_averaging_run_scores_its_last_weights_as_the_paper_recipe(tmp_path, members):
    """An SWA run's folds also report their last weights on the test split (an ensemble: its
    members' last weights), which are the paper recipe's model step for step: the same figures a
    paper-recipe run gives, and not the averaged model's."""
    fs = synthetic()
    runs = {}
    for name, config in (("swa", recipe_config("paper", **{**FAST, "swa_epochs": 2, "members": members})),
                         ("paper", recipe_config("paper", **{**FAST, "members": members}))):
        run = Run(fs, tmp_path / name, config=config, folds=3, seed=7, path="reference")
        run.prepare()
        runs[name] = run.execute(progress=False, log=lambda m: None)["folds"]
    assert all("last_weights" not in f for f in runs["paper"])
    assert [f["last_weights"] for f in runs["swa"]] == [{"war": f["war"], "uar": f["uar"]} for f in runs["paper"]]
    assert any(f["last_weights"]["war"] != f["war"] for f in runs["swa"])  # the averaged model scores otherwise


@pytest.mark.parametrize("fused", [False, True])
def test_keras_eps_rule_takes_the_authors_adam_steps(fused):
    """--adam-eps-rule keras: timnet's Adam with its per-step epsilon takes the steps of the authors'
    Keras Adam, here from its formula in float64 (lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    p -= lr_t m / (sqrt(v) + eps)); the torch rule does not, on gradients small enough for eps to count."""
    from timnet.train import _adam, adam_eps

    g = torch.Generator().manual_seed(0)
    start = torch.randn(64, generator=g, dtype=torch.float64)
    grads = [torch.randn(64, generator=g, dtype=torch.float64) * 10.0 ** -torch.randint(5, 10, (64,), generator=g)
             for _ in range(8)]
    c = TrainConfig()
    m = v = torch.zeros_like(start)
    keras = start.clone()
    for t, grad in enumerate(grads, start=1):
        m, v = c.beta1 * m + (1 - c.beta1) * grad, c.beta2 * v + (1 - c.beta2) * grad**2
        keras -= c.lr * (1 - c.beta2**t) ** 0.5 / (1 - c.beta1**t) * m / (v.sqrt() + c.adam_eps)

    def steps(rule):
        config = TrainConfig(adam_eps_rule=rule)
        holder = torch.nn.Module()
        holder.p = torch.nn.Parameter(start.clone())
        opt = _adam(holder, config, fused=fused)
        for t, grad in enumerate(grads, start=1):
            holder.p.grad = grad.clone()
            for group in opt.param_groups:
                group["eps"] = adam_eps(config, t)
            opt.step()
        return holder.p.detach()

    moved = (keras - start).abs()
    assert float(((steps("keras") - keras).abs() / moved).max()) < 1e-9
    assert float(((steps("torch") - keras).abs() / moved).max()) > 0.1
    with pytest.raises(TimnetError, match="--adam-eps-rule 'tf' unknown; expected one of torch, keras"):
        TrainConfig(adam_eps_rule="tf")


def test_training_sets_the_keras_epsilon_of_each_step():
    """train_fold gives Adam the rule's epsilon at every step, counted across epochs: after 4 epochs
    of 4 steps the last step's is the 16th's; the torch rule's stays 1e-8."""
    from timnet.run import model_config_for

    fs = synthetic()
    x, y = torch.from_numpy(fs.x), torch.from_numpy(fs.y)
    tr = np.arange(0, 60)
    kw = dict(model_config=model_config_for(fs), seed=3)
    torch_rule, s1 = train_fold(x, y, tr, tr[:0], config=TrainConfig(**FAST), **kw)
    keras_rule, s2 = train_fold(x, y, tr, tr[:0], config=TrainConfig(**FAST, adam_eps_rule="keras"), **kw)
    assert [grp["eps"] for grp in s1.optimizer.param_groups] == [1e-8]
    assert [grp["eps"] for grp in s2.optimizer.param_groups] == [pytest.approx(1e-8 / (1 - 0.98**16) ** 0.5, rel=1e-12)]
    assert any(not torch.equal(keras_rule.state_dict()[k], v) for k, v in torch_rule.state_dict().items())


def test_keras_eps_rule_is_recorded_and_reported(tmp_path):
    """The rule is part of the run's identity (run.json) and the report's protocol table names it;
    a run of the default rule is reported as before, without the row."""
    from timnet import report
    from timnet.rundir import read_identity

    features = save_features(synthetic(), tmp_path / "f.npz")
    for rule in ("keras", None):
        run = tmp_path / f"run_{rule}"
        r = train_cli(features, run, "--epochs", "1", *(("--adam-eps-rule", rule) if rule else ()))
        assert r.returncode == 0, r.stderr
        identity = read_identity(run)
        assert identity["train_config"]["adam_eps_rule"] == (rule or "torch")
        table = report._protocol({"identity": identity, "features": str(features)}, [], [], run)
        assert ("Adam epsilon" in table) == (rule == "keras") and ("1e-08, added as keras adds it" in table) == (rule == "keras")
