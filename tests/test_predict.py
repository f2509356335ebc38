"""Using a model: predict files in many formats, windows, ensembles, ONNX, the Python API."""
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import timnet
from conftest import DATA, PRETRAINED, flip_a_stored_byte, need, write_tone
from timnet.checkpoint import save_checkpoint
from timnet.errors import TimnetError
from timnet.features import FeatureConfig, file_features, waveform_features
from timnet.model import TIMNet, TIMNetConfig
from timnet.predict import load_model, window_starts

CFG = FeatureConfig(signal_length=16384)  # 33 frames: small and fast
LABELS = ("angry", "calm", "sad")


def make_run(root, folds=2):
    """A RUN_DIR-shaped folder of random-weight fold checkpoints."""
    for k in range(1, folds + 1):
        torch.manual_seed(k)
        model = TIMNet(TIMNetConfig(n_classes=3, dilations=4))
        save_checkpoint(root / f"fold_{k:02d}" / "model.pt", model, feature_config=CFG, labels=LABELS, corpus="TOY",
                        extra={"fold": k})
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "8k": write_tone(d / "a8k.wav", sr=8000, seed=1, seconds=0.6),
        "16k": write_tone(d / "b16k.wav", sr=16000, seed=2, seconds=0.6),
        "44k": write_tone(d / "c44k.wav", sr=44100, seed=3, seconds=0.6),
        "48k_stereo_24": write_tone(d / "d48k.wav", sr=48000, channels=2, subtype="PCM_24", seed=4, seconds=0.6),
        "flac": write_tone(d / "e.flac", sr=16000, fmt="FLAC", seed=5, seconds=0.6),
        "long": write_tone(d / "f30s.wav", sr=16000, seconds=30.0, seed=6),
        "1.2s": write_tone(d / "g.wav", sr=22050, seconds=1.2, seed=7),
    }


def test_formats_and_windows(run_dir, clips, monkeypatch):
    model = load_model(run_dir)
    assert len(model.models) == 2 and model.labels == LABELS
    for name, path in clips.items():
        pred = model.predict_file(path)
        assert pred.label in LABELS and abs(sum(pred.probs.values()) - 1) < 1e-5
        if name not in ("long", "1.2s"):  # whole-file features, resampled and mixed down as in training
            expected = model.predict_features(file_features(path, CFG)[None])[0]
            np.testing.assert_allclose([pred.probs[l] for l in LABELS], expected, atol=1e-6)
        if name == "long":  # 30 s at a 0.74 s window, half-window hop -> many windows
            assert len(pred.windows) > 40 and pred.windows[-1]["end_s"] == pytest.approx(30.0, abs=0.01)
            mean = np.mean([[w["probs"][l] for l in LABELS] for w in pred.windows], axis=0)
            np.testing.assert_allclose([pred.probs[l] for l in LABELS], mean, atol=1e-5)
        else:
            assert pred.windows == []
    windowed = model.predict_file(clips["long"], window=0.5, hop=0.5)
    assert len(windowed.windows) == 60
    import timnet.predict

    monkeypatch.setattr(timnet.predict, "WINDOW_BATCH", 7)  # windows scored in batches: the same windows, the same scores
    batched = model.predict_file(clips["long"], window=0.5, hop=0.5)
    assert [w["start_s"] for w in batched.windows] == [w["start_s"] for w in windowed.windows]
    np.testing.assert_allclose([list(w["probs"].values()) for w in batched.windows],
                               [list(w["probs"].values()) for w in windowed.windows], atol=1e-6)
    monkeypatch.undo()
    # the longest window as printed (0.743 s: 0.74304 rounded) or to the millisecond above is the signal length
    assert model.predict_file(clips["long"], window=0.744).windows == model.predict_file(clips["long"]).windows
    with pytest.raises(TimnetError, match="^window 0.745 invalid"):
        model.predict_file(clips["long"], window=0.745)
    # up to 2.5 times the signal length: centre-cropped exactly as the training features
    x = file_features(clips["1.2s"], CFG)[None]
    np.testing.assert_allclose([model.predict_file(clips["1.2s"]).probs[l] for l in LABELS], model.predict_features(x)[0], atol=1e-6)
    assert len(model.predict_file(clips["1.2s"], window=0.5).windows) > 1


def test_window_starts_cover_the_recording_to_its_last_sample():
    from timnet.predict import window_starts

    assert window_starts(10, 4, 3) == [0, 3, 6]  # the last window ends on the last sample
    assert window_starts(11, 4, 3) == [0, 2, 5, 7]  # else spread evenly: no tail window a sample from the last
    assert window_starts(5, 4, 100) == [0, 1]  # a hop beyond the recording still reaches its end
    # 2.5 windows and a sample: five windows, not a fifth a sample after the fourth ([..., 144000, 144001])
    assert window_starts(240001, 96000, 48000) == [0, 36000, 72000, 108001, 144001]
    for n, win, step in ((1000, 300, 7), (1000, 999, 1), (12345, 2048, 1024), (10**6, 96000, 48000), (96001, 96000, 96000)):
        starts = window_starts(n, win, step)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert starts[0] == 0 and starts[-1] + win == n and max(gaps) <= step
        assert len(starts) == -(-(n - win) // step) + 1 and max(gaps) - min(gaps) <= 1  # as few as reach, even


def test_show_windows_prints_each_window(run_dir, clips, capsys, monkeypatch):
    from timnet import cli

    argv = ["predict", str(clips["long"]), "--model", str(run_dir), "--window", "0.5", "--hop", "0.5"]
    assert cli.main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # the header and the file's line
    assert cli.main(argv + ["--show-windows"]) == 0
    lines = capsys.readouterr().out.splitlines()
    windows = load_model(run_dir).predict_file(clips["long"], window=0.5, hop=0.5).windows
    assert len(lines) == 2 + len(windows) == 62
    assert lines[2].split()[:3] == ["0.00-0.50", windows[0]["label"], f"{windows[0]['probs'][windows[0]['label']]:.3f}"]
    assert lines[-1].split()[0] == "29.50-30.00"
    assert "window" not in capsys.readouterr().err  # 60 windows: one batch, no bar
    # more windows than one batch: a bar on stderr from the command, none from the API by default
    n = len(load_model(run_dir).predict_file(clips["long"], window=0.5, hop=0.25).windows)
    assert capsys.readouterr().err == "" and n > 64
    assert cli.main(argv[:-1] + ["0.25"]) == 0
    assert capsys.readouterr().err == ""  # stderr is no terminal here: a bar redrawn in place would be noise
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(argv[:-1] + ["0.25"]) == 0
    # the bar's first drawing (its later ones come at tqdm's intervals, and leave=False clears it:
    # a fast machine may never draw n/n)
    assert f" 0/{n} [" in capsys.readouterr().err
    assert cli.main(argv[:-1] + ["0.25", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_an_empty_folder_among_inputs_is_an_error_row_and_odd_names_one_line(run_dir, clips, tmp_path, capsys, monkeypatch):
    """A folder with no audio among other inputs is one error row, as a missing file is, and the
    others are predicted; alone, it is the command's error. A file name holding a newline still
    gives one error line. `--model ''` is refused, not read as the current folder. The smallest
    --window and --hop the messages print are taken."""
    from timnet import cli

    (tmp_path / "empty").mkdir()
    out = tmp_path / "p.json"
    assert cli.main(["predict", str(clips["16k"]), str(tmp_path / "empty"), "--model", str(run_dir), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())
    assert [r["file"] for r in rows] == [str(clips["16k"]), str(tmp_path / "empty")]
    assert rows[0]["label"] in LABELS and "empty: no audio files" in rows[1]["error"]
    assert "timnet: error: " + str(tmp_path / "empty") + ": no audio files" in captured.err
    assert cli.main(["predict", str(tmp_path / "empty"), "--model", str(run_dir)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    odd = tmp_path / "bad\nname.wav"
    odd.write_bytes(b"RIFF")
    assert cli.main(["predict", str(odd), "--model", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"timnet: error: {tmp_path}/bad\\nname.wav: " + captured.err.split("name.wav: ", 1)[1]
    assert captured.err.count("\n") == 1 and len(captured.out.splitlines()) == 2  # the header and the file's row
    monkeypatch.chdir(tmp_path)  # a name under the column's 60 characters: the columns line up on it as printed
    assert cli.main(["predict", "bad\nname.wav", "--model", str(run_dir)]) == 1
    header, row = capsys.readouterr().out.splitlines()
    assert header.index("label") == row.index("ERROR") == len("bad\\nname.wav") + 2
    assert cli.main(["predict", str(clips["16k"]), "--model", ""]) == 1
    assert capsys.readouterr().err == "timnet: error: --model '': empty path; expected a file or folder name\n"
    config = load_model(run_dir).feature_config
    for option in ("--window", "--hop"):
        assert cli.main(["predict", str(clips["16k"]), "--model", str(run_dir), option, "1e-9"]) == 1
        bound = re.search(r"expected (?:at least one sample \()?([0-9.e-]+)", capsys.readouterr().err)[1]
        assert cli.main(["predict", str(clips["16k"]), "--model", str(run_dir), option, bound]) == 0, (option, bound, config)
        capsys.readouterr()


def test_features_match_training_features(run_dir, clips):
    model = load_model(run_dir)
    y, sr = sf.read(str(clips["48k_stereo_24"]), dtype="float32")
    direct = model.predict(y, sr)
    x = file_features(clips["48k_stereo_24"], CFG)[None]
    np.testing.assert_allclose([direct.probs[l] for l in LABELS], model.predict_features(x)[0], atol=1e-6)


def test_ensemble_is_mean_of_folds(run_dir, clips):
    ens = load_model(run_dir)
    singles = [load_model(run_dir / f"fold_0{k}" / "model.pt") for k in (1, 2)]
    x = np.stack([file_features(p, CFG) for p in list(clips.values())[:3]])
    np.testing.assert_allclose(ens.predict_features(x), np.mean([s.predict_features(x) for s in singles], axis=0), atol=1e-6)


def test_checkpoint_alone_predicts(run_dir, clips, tmp_path):
    lone = tmp_path / "lonely" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(run_dir / "fold_01" / "model.pt", lone)
    pred = timnet.load_model(lone).predict_file(clips["16k"])
    # the checkpoint carries all it needs (labels, feature settings): the same figures as in its run
    expected = load_model(run_dir / "fold_01" / "model.pt").predict_features(file_features(clips["16k"], CFG)[None])[0]
    np.testing.assert_allclose([pred.probs[l] for l in LABELS], expected, atol=1e-6)
    assert pred.label == LABELS[int(np.argmax(expected))]


def test_checkpoint_that_does_not_fit_its_config_is_one_error(run_dir, tmp_path):
    """A checkpoint of another version or an edited one: an error naming the file, not a traceback."""
    from timnet.checkpoint import load_checkpoint

    payload = torch.load(run_dir / "fold_01" / "model.pt", weights_only=True)
    for name, edit, why in (("unknown_key", lambda c: c["model_config"].update(gating="new"), "gating"),
                            ("wrong_size", lambda c: c["model_config"].update(n_filters=7), "size mismatch"),
                            # a default standing in would crop to another length, silently
                            ("no_length", lambda c: c["feature_config"].pop("signal_length"),
                             "feature_config without signal_length"),
                            ("no_labels", lambda c: c.pop("labels"), "labels"),
                            ("labels", lambda c: c.update(labels=["a"]), "labels ['a'] for a model of "),
                            ("mfcc", lambda c: c["feature_config"].update(n_mfcc=20), "features of 20 MFCCs for a model of "),
                            ("rate", lambda c: c["feature_config"].update(sample_rate=0), "sample rate 0"),
                            # an ensemble's file whose members are gone would load as its first member alone
                            ("gone", lambda c: c.update(format="timnet-checkpoint/2", members=[]),
                             "an ensemble's checkpoint with 0 members; expected two or more"),
                            ("none", lambda c: c.update(format="timnet-checkpoint/2"), "members")):
        bad = tmp_path / f"{name}.pt"
        edited = {**payload, "model_config": dict(payload["model_config"]), "feature_config": dict(payload["feature_config"])}
        edit(edited)
        torch.save(edited, bad)
        with pytest.raises(TimnetError, match=f"{name}.pt: a timnet checkpoint this version cannot load") as e:
            load_checkpoint(bad)
        assert "\n" not in str(e.value) and why in str(e.value), str(e.value)
    damaged = bytearray((run_dir / "fold_01" / "model.pt").read_bytes())  # its end record whole, its directory not
    at = damaged.rindex(b"PK\x01\x02")
    damaged[at:at + 4] = b"XXXX"
    (tmp_path / "dir.pt").write_bytes(bytes(damaged))
    with pytest.raises(TimnetError, match=r"dir.pt: not a readable timnet checkpoint \(a damaged zip archive"):
        load_checkpoint(tmp_path / "dir.pt")
    with pytest.raises(TimnetError, match="a folder, not checkpoint file"):
        load_checkpoint(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes((run_dir / "fold_01" / "model.pt").read_bytes()[:1000])
    with pytest.raises(TimnetError, match=r"cut.pt: not a readable timnet checkpoint \(not a whole file: cut short"):
        load_checkpoint(cut)
    npz = tmp_path / "features.npz"  # a zip archive, but not torch's
    np.savez(npz, x=np.zeros(3))
    with pytest.raises(TimnetError, match=r"not a readable timnet checkpoint \(a zip archive torch.save did not write"):
        load_checkpoint(npz)
    whole = tmp_path / "whole.pt"  # torch's own file, but of a pickled module, which weights_only refuses
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(TimnetError, match=r"not a readable timnet checkpoint \(a torch file of other objects"):
        load_checkpoint(whole)
    flipped = tmp_path / "flipped.pt"  # a whole zip with one stored byte of a weight inverted
    record = flip_a_stored_byte(run_dir / "fold_01" / "model.pt", flipped)
    torch.load(flipped, weights_only=True)  # which torch reads without a word
    with pytest.raises(TimnetError, match=rf"flipped.pt: a damaged timnet checkpoint \(the bytes of {record} fail their "
                                          r"checksum: a disk or copy error\); expected a model.pt"):
        load_checkpoint(flipped)


def test_unfinished_multi_seed_and_wrong_corpus_runs(run_dir, clips, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "run.json").write_text(json.dumps({"identity": {"folds": 5}}))
    with pytest.warns(UserWarning, match="only 2 of 5 folds are finished"):
        load_model(unfinished)
    r = subprocess.run([sys.executable, "-m", "timnet", "predict", str(clips["16k"]), "--model", str(unfinished)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "timnet: warning:" in r.stderr and "only 2 of 5 folds" in r.stderr
    with pytest.raises(TimnetError, match="^corpus emodb: .* is a model of TOY"):
        load_model(run_dir, corpus="emodb")
    assert load_model(run_dir, corpus="toy").labels == LABELS
    with pytest.raises(TimnetError, match="unknown corpus 'foo'; expected one of casia, emodb"):
        load_model(run_dir, corpus="foo")
    seeds = tmp_path / "seeds"
    for s in (1, 2):
        shutil.copytree(unfinished, seeds / f"seed_{s}")
    with pytest.raises(TimnetError, match="holds the runs of 2 seeds"):
        load_model(seeds)
    # a fold folder past the run's folds (a copy from another run) is not ensembled with them
    stray = tmp_path / "stray"
    shutil.copytree(run_dir, stray)
    (stray / "run.json").write_text(json.dumps({"identity": {"folds": 2}}))
    assert len(load_model(stray).models) == 2
    shutil.copytree(stray / "fold_02", stray / "fold_03")
    expected = (r"stray: fold_03 is not a fold of this 2-fold run \(its run.json\); expected fold_01 to fold_02 only: "
                "move it out of the run folder")
    with pytest.raises(TimnetError, match=expected):
        load_model(stray)
    r = subprocess.run([sys.executable, "-m", "timnet", "export", str(stray), "-o", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and re.search(expected, r.stderr) and r.stderr.count("\n") == 1, r.stderr


def test_silent_and_short_warnings(run_dir):
    model = load_model(run_dir)
    pred = model.predict(np.zeros(1600, np.float32), 16000)
    assert "silent audio" in pred.warnings and "very short audio (0.1 s)" in pred.warnings
    # a file of a few samples gives its length, not 0.00 s
    assert "very short audio (0.0031 s)" in model.predict(np.full(50, 0.1, np.float32), 16000).warnings
    tone = np.sin(np.arange(32000) * 0.05).astype(np.float32)
    assert model.predict(tone * 0.5, 16000).warnings == []
    # the features are of the absolute level: far quieter than any corpus is flagged, not silence
    assert model.predict(tone * 0.001, 16000).warnings == [
        "quiet audio (-63 dBFS RMS, below -35): the features are of the absolute level, as in the paper, "
        "so raise the level for a reliable prediction"]
    # below the corpora's lowest rate (16 kHz) the top of the mel range is empty: telephone audio
    assert model.predict(tone * 0.5, 8000).warnings == [
        "sample rate 8000 Hz, below 16000 Hz: nothing above 4 kHz, where every corpus's recordings have sound, "
        "so the features' upper bands are empty"]
    # a DC offset beyond any training recording's is said, and is not taken for sound: silence
    # with one is silent, not speech
    offset = model.predict(tone * 0.5 + 0.02, 16000).warnings  # (the tone's own mean is about +0.0007)
    assert len(offset) == 1 and re.fullmatch(r"a DC offset of \+0\.02\d \(no training recording's exceeds 0\.01\): it shifts "
                                             r"the features; subtract the mean \(or high-pass the audio\) for a reliable "
                                             r"prediction", offset[0]), offset
    assert model.predict(np.full(32000, 0.02, np.float32), 16000).warnings[1] == "silent audio"
    assert model.predict(tone * 0.5 + 0.005, 16000).warnings == []  # within the corpora's (EMODB's largest: 0.006)
    # and far louder than any: near full scale, or beyond it (floats that were never in [-1, 1])
    assert model.predict(tone * 0.9, 16000).warnings == [
        "loud audio (-4 dBFS RMS, above -8): the features are of the absolute level, as in the paper, "
        "so lower the level for a reliable prediction"]
    loud = model.predict(tone * 3, 16000).warnings
    assert loud[0] == "samples beyond full scale (peak 3.00): expected floats in [-1, 1]"
    assert loud[1].startswith("loud audio (7 dBFS RMS")
    # one channel of two beyond full scale is flagged though their mean is not; NaN is refused
    stereo = np.stack([tone * 1.2, tone * 0], axis=1)
    assert "samples beyond full scale (peak 1.20): expected floats in [-1, 1]" in model.predict(stereo, 16000).warnings
    # a lossy codec's few percent beyond full scale is not (an Ogg of an EMODB file decodes to peak 1.008)
    assert not any("full scale" in w for w in model.predict(tone * 1.05, 16000).warnings)
    with pytest.raises(TimnetError, match="waveform has 1 NaN or infinite samples"):
        model.predict(np.where(np.arange(32000) == 5, np.nan, tone), 16000)
    # hard clipping (flat tops at the peak) is said however the clipped audio was scaled after, and in
    # one channel of two; a tone's rounded tops at any level are not clipping, nor a flat top below -20 dBFS
    clipped = np.clip(tone * 2, -1, 1)
    for audio in (clipped, clipped * 0.5, np.stack([clipped, tone * 0.5], axis=1)):
        said = [w for w in model.predict(audio, 16000).warnings if w.startswith("clipped audio")]
        assert len(said) == 1 and re.fullmatch(r"clipped audio \((?:63|31)\.\d % of samples flat at the peak, (?:1\.00|0\.50)\): "
                                               "speech distorted as no training recording was; record at a lower gain "
                                               "for a reliable prediction", said[0]), said
    for audio in (tone, tone * 3, clipped * 0.05, np.round(tone * 0.09 * 128) / 128):
        assert not any(w.startswith("clipped") for w in model.predict(audio, 16000).warnings)


def test_silence_in_the_scored_audio_is_said_and_silent_windows_left_out(run_dir):
    """The whole-recording checks describe what the model saw: a silent centre crop is said, silent
    windows do not vote (a model's answer for silence is a confident class, not no emotion), and
    very short windows are said as a very short file is."""
    model = load_model(run_dir)
    sr, n = CFG.sample_rate, CFG.signal_length
    tone = (0.3 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
    gap = np.concatenate([tone[: n // 2], np.zeros(n + n // 2, np.float32), tone[: n // 2]])  # 2.5 x: cropped to silence
    pred = model.predict(gap, sr)
    assert not pred.windows and any(w.startswith("the middle 0.74 s it was scored on") and w.endswith("is silent: "
                                    "--window 0.74 scores all of it") for w in pred.warnings), pred.warnings
    assert model.predict(np.concatenate([tone, tone]), sr).warnings == []  # a crop with sound: nothing to say
    # three signal lengths of silence, then the tone: the silent windows are marked and left out
    lead = np.concatenate([np.zeros(3 * n, np.float32), tone])
    pred = pred_lead = model.predict(lead, sr)
    silent = [w for w in pred.windows if w.get("quiet")]
    assert len(silent) == 5 and len(pred.windows) == 7, pred.windows
    assert pred.warnings == ["5 of 7 windows silent or quiet (below -35 dBFS RMS, as under 1 % of the corpora's utterances are): "
                             "left out of the mean"]
    sounding = [i for i, w in enumerate(pred.windows) if not w.get("quiet")]
    starts = window_starts(len(lead), n, n // 2)  # the default hop: half a window
    x = np.stack([waveform_features(lead[starts[i] : starts[i] + n], CFG) for i in sounding])
    np.testing.assert_allclose(list(pred.probs.values()), model.predict_features(x).mean(0), atol=1e-6)
    # silent throughout: said once as such, every window in the mean (there is nothing else)
    pred = model.predict(np.zeros(3 * n, np.float32), sr)
    assert pred.warnings == ["silent audio"] and not any(w.get("quiet") for w in pred.windows)
    # a pause at a room's noise floor (-60 dBFS) votes no more than digital silence
    noisy = np.concatenate([np.random.default_rng(0).normal(0, 1e-3, 3 * n).astype(np.float32), tone])
    assert [w.get("quiet", False) for w in model.predict(noisy, sr).windows] == [w.get("quiet", False) for w in pred_lead.windows]
    floor = np.concatenate([tone[: n // 2], np.random.default_rng(0).normal(0, 1e-3, n + n // 2).astype(np.float32), tone[: n // 2]])
    assert any(w.startswith("the middle 0.74 s it was scored on") and "is quiet (-60 dBFS RMS)" in w
               for w in model.predict(floor, sr).warnings)
    assert "very short windows (0.03 s, each padded to 0.74 s)" in model.predict(np.concatenate([tone, tone]), sr, window=0.03).warnings


def test_a_file_name_that_is_not_utf8_is_printed_not_a_traceback(run_dir, tmp_path):
    """café in Latin-1 reaches Python as a surrogate, which a strict UTF-8 stdout cannot encode."""
    folder = tmp_path / "clips"
    folder.mkdir()
    os.rename(write_tone(folder / "plain.wav", seconds=1.0), bytes(folder) + b"/caf\xe9.wav")  # soundfile takes UTF-8 names only
    for encoding, shown in (("utf-8", b"caf\xe9.wav"), ("ascii", b"caf\\udce9.wav")):
        r = subprocess.run([sys.executable, "-m", "timnet", "predict", str(folder), "--model", str(run_dir)],
                           capture_output=True, env={**os.environ, "PYTHONIOENCODING": encoding})
        assert r.returncode == 0 and shown in r.stdout and not r.stderr, (encoding, r.stdout, r.stderr)


def test_onnx_matches_torch(run_dir, clips, tmp_path):
    pytest.importorskip("onnxruntime")
    from timnet.onnx_export import export_onnx

    model = load_model(run_dir)
    path = export_onnx(model, tmp_path / "m.onnx")
    onnx_model = load_model(path)
    assert onnx_model.labels == LABELS and onnx_model.feature_config == CFG and onnx_model.corpus == "TOY"
    assert onnx_model.networks == model.networks == 2 and "networks=2" in repr(onnx_model)  # TIM-Nets, not checkpoints
    assert load_model(path, corpus="toy").labels == LABELS
    with pytest.raises(TimnetError, match="^corpus emodb: .* is a model of TOY"):
        load_model(path, corpus="emodb")
    x = np.stack([file_features(p, CFG) for p in clips.values()])
    np.testing.assert_allclose(onnx_model.predict_features(x), model.predict_features(x), atol=1e-4, rtol=0)
    with pytest.raises(TimnetError, match="an ONNX model runs on onnxruntime's CPU provider"):
        onnx_model.to("cuda")
    for device in ("bogus", None):  # a one-line error, as the torch model's, not torch's own
        with pytest.raises(TimnetError, match=f"^device '{device}' invalid; expected cpu"):
            onnx_model.to(device)
    for m in (onnx_model, model):  # both take the frames they were trained on, not any
        with pytest.raises(TimnetError, match=f"this model takes exactly {CFG.frames} frames"):
            m.predict_features(np.zeros((1, CFG.frames + 1, 39), np.float32))
    a, b = onnx_model.predict_file(clips["long"]), model.predict_file(clips["long"])
    assert a.label == b.label and len(a.windows) == len(b.windows)


def test_cli_error_row_and_exit_status(run_dir, clips, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    args = [sys.executable, "-m", "timnet", "predict", str(clips["16k"]), str(bad), str(clips["flac"]),
            "--model", str(run_dir), "--json", str(tmp_path / "p.json")]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and "ERROR" in lines[2] and "broken.wav" in lines[2]
    assert lines[1].split()[1] in LABELS and lines[3].split()[1] in LABELS
    errors = [line for line in r.stderr.splitlines() if line.startswith("timnet: error: ")]
    assert len(errors) == 1 and "broken.wav" in errors[0]  # also on stderr, for a pipe that drops stdout's rows
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [("error" in row) for row in rows] == [False, True, False]
    assert [row["file"] for row in rows] == [str(clips["16k"]), str(bad), str(clips["flac"])]
    assert set(rows[0]["probs"]) == set(LABELS)
    assert rows[1]["label"] is None and rows[1]["probs"] is None  # every row has the contract's keys
    # `--json -`: stdout is the JSON alone (for jq); the table and the error line go to stderr
    piped = subprocess.run(args[:-1] + ["-"], capture_output=True, text=True)
    assert piped.returncode == 1 and json.loads(piped.stdout) == rows and not (tmp_path / "-").exists()
    assert [line for line in piped.stderr.splitlines() if not line.startswith("timnet: ")] == lines  # the table, in order
    for option, value, fragment in (("--hop", "0", "invalid; expected at least one sample"),
                                    ("--hop", "1e-6", "invalid; expected at least one sample"),
                                    ("--window", "nan", "invalid; expected 0.024 to 0.743 s"),
                                    ("--window", "0.01", "invalid; expected 0.024 to 0.743 s"),
                                    # longer windows would be centre-cropped to the signal length: audio ignored
                                    ("--window", "5", "invalid; expected 0.024 to 0.743 s (the model's signal length)"),
                                    ("--hop", "1", "expected at most the window, 0.743 s (the model's signal length: no --window given)"),
                                    ("--hop", "0.6", "expected at most the window, 0.500 s")):
        extra = ["--window", "0.5"] if value == "0.6" else []
        r = subprocess.run(args[:5] + [option, value, *extra, "--model", str(run_dir)], capture_output=True, text=True)
        assert r.returncode == 1 and "ERROR" not in r.stdout  # refused once, before any file
        assert r.stderr.startswith(f"timnet: error: {option}") and fragment in r.stderr and r.stderr.count("\n") == 1
    ok = subprocess.run([sys.executable, "-m", "timnet", "predict", str(clips["8k"]), "--model", str(run_dir)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    one = subprocess.run([sys.executable, "-m", "timnet", "predict", str(bad), "--model", str(run_dir)],
                         capture_output=True, text=True)
    assert one.returncode == 1 and one.stderr.count("\n") == 1 and "broken.wav" in one.stderr  # one bad file: one line


def test_cli_export_and_bad_model(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, "-m", "timnet", "export", str(run_dir), "-o", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    gap = float(r.stdout.rsplit("max |onnxruntime - torch| = ", 1)[1].split()[0])
    assert gap < 1e-5
    # the file says what its input must be to a reader without timnet (its doc string), and which timnet wrote it
    import onnx

    from timnet import __version__

    proto = onnx.load(str(tmp_path / "m.onnx"))
    model = load_model(run_dir)
    assert f"Input 'features': float32 (batch, {model.feature_config.frames}, 39) MFCCs" in proto.doc_string
    assert f"(batch, 3) class probabilities in this order: {', '.join(model.labels)}." in proto.doc_string
    assert {p.key: p.value for p in proto.metadata_props}["timnet.version"] == __version__
    # a wrong output name is said before the model is loaded (ten authors' files take seconds)
    r = subprocess.run([sys.executable, "-c", "import sys, timnet.predict as p; p.load_model = None; "
                        "from timnet.cli import main; sys.exit(main(sys.argv[1:]))", "export", str(run_dir), "-o",
                        str(tmp_path / "m.txt")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == f"timnet: error: {tmp_path / 'm.txt'}: expected an output path ending in .onnx\n"
    with pytest.raises(TimnetError, match=re.escape(f"{tmp_path / 'nothing-here'}: no such model file or folder, nor a "
                                                    "bundled model; expected a checkpoint (.pt), a RUN_DIR, an .onnx file,")):
        load_model(tmp_path / "nothing-here")
    # export takes torch's models only, and its messages offer no .onnx file
    for model, said in ((tmp_path / "nothing-here", "no such model file"), (tmp_path / "m.onnx", "already an ONNX model")):
        r = subprocess.run([sys.executable, "-m", "timnet", "export", str(model), "-o", str(tmp_path / "again.onnx")],
                           capture_output=True, text=True)
        assert r.returncode == 1 and said in r.stderr and "onnx file" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


# ---- real-data tier -------------------------------------------------------------------------

@pytest.mark.realdata
def test_authors_fold1_predictions_match_reference(reference, tmp_path):
    folder = need(PRETRAINED / "EMODB_46")
    wav = need(DATA / "EMODB" / "wav")
    assert len(load_model(folder, corpus="emodb").models) == 10  # a folder is the 10-fold ensemble
    idx = np.flatnonzero(reference["test_fold"] == 1)[::-1]  # not in name order: rows must keep the given order
    files = [str(wav / reference["files"][i]) for i in idx]
    r = subprocess.run([sys.executable, "-m", "timnet", "predict", *files, "--model",
                        str(folder / "10-fold_weights_best_1.hdf5"), "--corpus", "emodb", "--json", str(tmp_path / "p.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [row["file"] for row in rows] == files  # each row names its file, in the order given
    labels = reference["class_names"].tolist()
    got = np.array([[row["probs"][l] for l in labels] for row in rows])
    np.testing.assert_allclose(got, reference["probs"][idx], atol=1e-4, rtol=0)  # as the README says


@pytest.mark.realdata
def test_no_corpus_recording_is_called_clipped_and_a_clipped_one_is():
    """The clipping warning's rule against the audio the models learnt: no EMODB or CASIA file has a
    flat top at its peak, and an EMODB file driven six times beyond full scale is said."""
    from timnet.predict import CLIPPED_SHARE, clipped_share

    files = sorted(need(DATA / "EMODB").rglob("*.wav")) + sorted(need(DATA / "CASIA").rglob("*.wav"))
    assert len(files) == 535 + 1200
    assert max(clipped_share(sf.read(f, dtype="float32")[0]) for f in files) == 0
    y, sr = sf.read(DATA / "EMODB" / "wav" / "03a07Wc.wav", dtype="float32")
    assert clipped_share(np.clip(y * 6, -1, 1)) > 10 * CLIPPED_SHARE
    assert any(w.startswith("clipped audio") for w in load_model("emodb").predict(np.clip(y * 6, -1, 1), sr).warnings)


@pytest.mark.realdata
def test_the_longest_emodb_file_gets_its_evaluation_prediction():
    """08b03Tc.wav (8.98 s, 2.06 signal lengths) is centre-cropped as in evaluation, not windowed."""
    model = load_model(need(PRETRAINED / "EMODB_46") / "10-fold_weights_best_1.hdf5", corpus="emodb")
    path = need(DATA / "EMODB" / "wav" / "08b03Tc.wav")
    pred = model.predict_file(path)
    assert pred.windows == []
    expected = model.predict_features(file_features(path, model.feature_config)[None])[0]
    np.testing.assert_allclose([pred.probs[l] for l in model.labels], expected, atol=1e-6)


def test_zero_window_and_onnx_reexport_refused(run_dir, clips, tmp_path):
    with pytest.raises(TimnetError, match="^window 0 invalid; expected 0.024 to 0.743 s"):
        load_model(run_dir).predict_file(clips["long"], window=0)
    pytest.importorskip("onnxruntime")
    from timnet.onnx_export import export_onnx

    path = export_onnx(load_model(run_dir), tmp_path / "m.onnx")
    with pytest.raises(TimnetError, match="already an ONNX model"):
        export_onnx(load_model(path), tmp_path / "again.onnx")


def test_export_that_disagrees_with_torch_writes_nothing(run_dir, tmp_path, monkeypatch):
    """A graph the exporter got wrong (here: parity measured as 0.01) never replaces the file."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from timnet import onnx_export

    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(onnx_export, "onnx_parity", lambda predictor, path: 0.01)
    with pytest.raises(TimnetError, match=r"m.onnx: the exported graph's probabilities differ from torch's by 1.0e-02 "
                                          r"\(expected at most 1e-04\); nothing written"):
        onnx_export.export_onnx(load_model(run_dir), out)
    assert out.read_bytes() == b"an earlier export" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    # while the graph is built and checked nothing is beside the output, so `kill -9` then leaves no stray file
    seen = []
    monkeypatch.setattr(onnx_export, "onnx_parity", lambda predictor, path: seen.append(sorted(tmp_path.iterdir())) or 0.0)
    onnx_export.export_onnx(load_model(run_dir), out)
    assert seen == [[out]] and out.read_bytes()[:2] != b"an" and load_model(out).labels == LABELS


def test_export_without_onnx_is_one_error(run_dir, tmp_path, monkeypatch):
    from timnet.onnx_export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # what a missing package looks like to `import onnx`
    with pytest.raises(TimnetError, match=r"m.onnx: ONNX export needs the onnx package \(pip install onnx onnxruntime, or pip install -e '\.\[onnx\]'"):
        export_onnx(load_model(run_dir), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_directories_are_searched_as_extract_searches_them(tmp_path):
    """Recursively, in natural order, through symlinked folders, skipping hidden and non-audio files."""
    from timnet.predict import find_audio

    real = tmp_path / "real" / "spk1"
    real.mkdir(parents=True)
    for name in ("b10.wav", "b9.WAV", ".hidden.wav", "notes.txt"):
        (real / name).write_bytes(b"")
    top = tmp_path / "top"
    (top / "a").mkdir(parents=True)
    (top / "a" / "x.flac").write_bytes(b"")
    (top / "linked").symlink_to(real, target_is_directory=True)
    assert [p.relative_to(top).as_posix() for p in find_audio([top])] == ["a/x.flac", "linked/b9.WAV", "linked/b10.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TimnetError, match="empty: no audio files"):
        find_audio([tmp_path / "empty"])


def test_fold_copies_are_not_folds_and_a_closed_pipe_ends_quietly(run_dir, tmp_path):
    """A user's copy of a fold folder beside the run's (fold_01_old) is neither a fold of `test`,
    `predict` and `export` nor deleted by --overwrite; `predict ... | head` stops quietly."""
    import shutil

    from timnet.rundir import fold_dirs

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    n = len(fold_dirs(run))
    assert n >= 2 and [d.name for d in fold_dirs(run)] == [f"fold_{k:02d}" for k in range(1, n + 1)]
    shutil.copytree(run / "fold_01", run / "fold_01_old")
    assert len(load_model(run).models) == n and len(fold_dirs(run)) == n

    clip = next(Path(__file__).parents[1].glob("examples/*.wav"))
    r = subprocess.run(f"{sys.executable} -m timnet predict {' '.join([str(clip)] * 400)} --model {run} | head -1",
                       shell=True, capture_output=True, text=True)
    assert r.stdout.startswith("file") and r.stderr == "", r.stderr
    # with --json the reader leaving costs nothing: every file is still predicted and written
    out = tmp_path / "all.json"
    r = subprocess.run(f"{sys.executable} -m timnet predict {' '.join([str(clip)] * 40)} --model {run} --json {out} | head -1",
                       shell=True, capture_output=True, text=True)
    assert r.stdout.startswith("file") and r.stderr == "", r.stderr
    assert len(json.loads(out.read_text())) == 40


def test_odd_names_huge_hops_and_uppercase_onnx(run_dir, clips, tmp_path):
    """A file name that is not UTF-8 is read (soundfile is handed the open file, not the name);
    a hop or window too large for a sample count is one error; `.ONNX` is an ONNX file."""
    import os

    latin1 = Path(os.fsdecode(str(tmp_path).encode() + b"/caf\xe9.wav"))
    shutil.copy(clips["16k"], latin1)
    model = load_model(run_dir)
    assert model.predict_file(latin1).probs == model.predict_file(clips["16k"]).probs
    for option, value in (("hop", 1e308), ("window", 1e306)):
        with pytest.raises(TimnetError, match=f"^{option} 1e\\+30[68] invalid"):
            model.predict_file(clips["long"], **{option: value})
    pytest.importorskip("onnxruntime")
    from timnet.onnx_export import export_onnx

    path = export_onnx(model, tmp_path / "M.ONNX")
    assert type(load_model(path)).__name__ == "OnnxPredictor"
    # ".onnx" alone is a hidden file's name with no suffix: the message says what is missing
    with pytest.raises(TimnetError, match=r"\.onnx: expected a name before \.onnx$"):
        export_onnx(model, tmp_path / ".onnx")
    with pytest.raises(TimnetError, match=r"m\.onx: expected an output path ending in \.onnx$"):
        export_onnx(model, tmp_path / "m.onx")


def test_onnx_whose_metadata_does_not_fit_its_graph_is_one_error(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from timnet.onnx_export import export_onnx

    good = onnx.load(str(export_onnx(load_model(run_dir), tmp_path / "m.onnx")))

    def edited(name, key, value):
        m = onnx.ModelProto()
        m.CopyFrom(good)
        for p in m.metadata_props:
            if p.key == key:
                p.value = value
        onnx.save(m, str(tmp_path / name))
        return tmp_path / name

    cfg = json.loads({p.key: p.value for p in good.metadata_props}["timnet.feature_config"])
    cases = {
        edited("labels.onnx", "timnet.labels", json.dumps(["angry", "sad"])): r"graph maps .* \(batch, 2\)",
        edited("frames.onnx", "timnet.feature_config", json.dumps({**cfg, "signal_length": 2 * cfg["signal_length"]})):
            r"graph maps .* but its metadata says \(batch, 65, 39\)",
        edited("json.onnx", "timnet.labels", "[angry"): "damaged timnet metadata",
        edited("keys.onnx", "timnet.feature_config", json.dumps({"hop": 3})): "damaged timnet metadata",
        edited("short.onnx", "timnet.feature_config", json.dumps({**cfg, "signal_length": 100})):
            r"short.onnx: damaged timnet metadata .*signal length 100 too short",
    }
    for path, message in cases.items():
        with pytest.raises(TimnetError, match=message):
            load_model(path)


@pytest.mark.realdata
def test_authors_folder_short_of_ten_folds_is_said(tmp_path):
    folder = need(PRETRAINED / "EMODB_46")
    nine = tmp_path / "nine"
    nine.mkdir()
    for k in range(1, 10):
        (nine / f"10-fold_weights_best_{k}.hdf5").symlink_to(folder / f"10-fold_weights_best_{k}.hdf5")
    with pytest.warns(UserWarning, match=r"fold weights 1\.\.9 only"):
        assert len(load_model(nine, corpus="emodb").models) == 9
    (nine / "10-fold_weights_best_4.hdf5").unlink()
    with pytest.warns(UserWarning), pytest.raises(TimnetError, match="missing fold weights 10-fold_weights_best_4.hdf5"):
        load_model(nine, corpus="emodb")


@pytest.mark.realdata
def test_authors_weights_read_as_another_corpus_are_said(monkeypatch):
    """EMODB, EMOVO and SAVEE models all have 7 classes and 8 levels: only the folder's name can say
    that --corpus savee gives the authors' EMODB model SAVEE's class names (given as "." too)."""

    folder = need(PRETRAINED / "EMODB_46")
    with pytest.warns(UserWarning, match="EMODB_46: named like the authors' EMODB weights, but read as SAVEE's"):
        load_model(folder, corpus="savee")
    monkeypatch.chdir(folder)
    with pytest.warns(UserWarning, match="named like the authors' EMODB weights, but read as SAVEE's"):
        load_model(".", corpus="savee")
    # `test` on an .npz takes the corpus from the features, not from --corpus: it says which to check
    from timnet.keras_import import warn_if_named_for_another_corpus

    with pytest.warns(UserWarning, match=r"read as SAVEE's classes .*; check the features \(s.npz holds SAVEE's\)$"):
        warn_if_named_for_another_corpus(folder, "SAVEE", given_by="the features (s.npz holds SAVEE's)")
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(folder / "10-fold_weights_best_1.hdf5", corpus="emodb")


def test_python_api_takes_each_layout_and_sample_format(run_dir, tmp_path):
    """torchaudio's (channels, samples), soundfile's (samples, channels) and scipy's integer PCM give
    the float mono prediction; what cannot be audio, a sample rate or a feature batch is one error."""
    model = load_model(run_dir)
    tone = (0.3 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)
    want = model.predict(tone, 16000).probs
    same = {"tensor (1, n)": torch.from_numpy(tone)[None], "(2, n)": np.stack([tone, tone]),
            "(n, 2)": np.stack([tone, tone], 1), "int16": np.round(tone * 32768).astype(np.int16),
            "int32": np.round(tone.astype(np.float64) * 2**31).astype(np.int32)}
    for name, wave in same.items():
        got = model.predict(wave, np.int64(16000) if name == "int16" else 16000.0).probs
        assert max(abs(got[k] - want[k]) for k in want) < 1e-4, name
    # 8-bit WAV is unsigned around 128 (too coarse to compare with the float tone: against its own values)
    u8 = np.round(tone * 127 + 128).astype(np.uint8)
    assert model.predict(u8, 16000).probs == model.predict((u8.astype(np.float32) - 128) / 128, 16000).probs
    bad_waves = {"complex64": tone.astype(np.complex64), "bool": tone > 0, "int64": np.round(tone * 32768).astype(np.int64),
                 r"\(1, 1, 24000\)": tone[None, None], r"\(40, 100\)": np.zeros((40, 100), np.float32)}
    for fragment, wave in bad_waves.items():
        with pytest.raises(TimnetError, match=f"waveform of (dtype|shape) {fragment} invalid"):
            model.predict(wave, 16000)
    for rate in (0, -16000, None, "16000", 16000.7, True, float("nan")):
        with pytest.raises(TimnetError, match="sample_rate .* invalid; expected a positive whole number of Hz"):
            model.predict(tone, rate)
    frames = CFG.frames
    assert model.predict_features(np.zeros((2, frames, 39), np.float64)).shape == (2, 3)
    with pytest.raises(TimnetError, match="features have 1 NaN or infinite values"):
        model.predict_features(np.where(np.arange(frames * 39).reshape(1, frames, 39) == 7, np.nan, 0.0))
    for shape, hint in (((frames, 39), "add a batch axis"), ((1, 39, frames), "expected \\(N, frames, 39\\)")):
        with pytest.raises(TimnetError, match=hint):
            model.predict_features(np.zeros(shape, np.float32))
    from timnet.features import waveform_features

    # features of a waveform at its own rate are those of its file, as training computed them
    import soundfile

    tone44 = (0.3 * np.sin(np.arange(44100) * 0.03)).astype(np.float32)
    soundfile.write(tmp_path / "t44.wav", tone44, 44100, subtype="FLOAT")
    np.testing.assert_array_equal(waveform_features(tone44, CFG, sample_rate=44100), file_features(tmp_path / "t44.wav", CFG))
    with pytest.raises(TimnetError, match="sample_rate 0 invalid"):
        waveform_features(tone44, CFG, sample_rate=0)
    for rate in (16, 44, 10**6):  # kHz for Hz would resample 3 s into 3,000 s; no recording is at 1 MHz
        with pytest.raises(TimnetError, match=rf"sample_rate {rate} invalid; expected 1000 to 384000 Hz \(e.g. 16000; in Hz, not kHz\)"):
            waveform_features(tone44, CFG, sample_rate=rate)
    with pytest.raises(TimnetError, match=r"waveform of shape \(2, 2000\) invalid; expected a mono"):
        waveform_features(np.zeros((2, 2000), np.float32), CFG)  # padded along both axes before: gigabytes
    # loading: what is no model, and a run with no finished fold yet
    for what in (None, 3):
        with pytest.raises(TimnetError, match="invalid; expected a bundled name"):
            load_model(what)
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "run.json").write_text("{}")
    with pytest.raises(TimnetError, match="a RUN_DIR with no finished fold yet"):
        load_model(tmp_path / "fresh")
    (tmp_path / "fresh" / "run.json").write_text(json.dumps({"identity": {"all_data": True}}))
    with pytest.raises(TimnetError, match=r"an --all-data run not finished \(no model.pt yet\)"):
        load_model(tmp_path / "fresh")
    assert {"load_model", "Predictor", "TIMNet"} <= set(dir(timnet)) and timnet.Prediction is type(model.predict(tone, 16000))
    assert "networks=2" in repr(model)
    assert model.to("cpu") is model and model.predict(tone, 16000).probs == want  # .to("cuda") where there is one
    with pytest.raises(TimnetError, match=r"^device 'bogus' unavailable \(.*\); expected one this torch has"):
        model.to("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(TimnetError, match=r"^device 'cuda' unavailable"):
            model.to("cuda")
    assert model.to("cpu").predict(tone, 16000).probs == want  # unchanged by the refusals
    with pytest.raises(TimnetError, match=r"^window '1' invalid; expected a number of seconds"):
        model.predict(tone, 16000, window="1")
    assert any(w.endswith("hop 0.25 s makes no windows") for w in model.predict(tone, 16000, hop=0.25).warnings)
    assert load_model(type("PathLike", (), {"__fspath__": lambda self: str(run_dir)})()).labels == LABELS


def test_a_model_here_named_like_a_bundled_one_is_used_and_said(run_dir, tmp_path, monkeypatch):
    """`--model emodb` with one's own run at ./emodb predicts with that run (the bundled model is
    named in a warning, with its path); a folder of that name holding no model (a corpus) does not
    shadow the bundled name."""
    from timnet.predict import _holds_a_model

    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_dir, tmp_path / "emodb")
    with pytest.warns(UserWarning, match="'emodb': emodb here holds a model, which is used; the bundled emodb model is "):
        mine = load_model("emodb")
    assert mine.source == "emodb" and len(mine.models) == len(load_model(run_dir).models)
    shutil.rmtree(tmp_path / "emodb")
    (tmp_path / "emodb" / "wav").mkdir(parents=True)
    (tmp_path / "emodb" / "wav" / "03a01Fa.wav").write_bytes(b"")
    assert not _holds_a_model(tmp_path / "emodb")  # a corpus folder: `emodb` still names the bundled model
    shutil.rmtree(tmp_path / "emodb")
    (tmp_path / "emodb").write_text("notes on the corpus\n")  # nor a file of that name that is no model
    assert not _holds_a_model(tmp_path / "emodb")
    shutil.copy(run_dir / "fold_01" / "model.pt", tmp_path / "emodb")  # a checkpoint of that name, without .pt, is
    assert _holds_a_model(tmp_path / "emodb")
    with pytest.raises(TimnetError, match="^model '' invalid; expected a bundled name"):  # not the current folder
        load_model("")


def test_python_api_mistakes_are_one_line_errors_naming_the_value(run_dir, clips):
    """A wrong argument to the Python API is a TimnetError that names it, in Python's terms, not a
    TypeError from pathlib, numpy or torch; nothing complex is silently made real."""
    model = load_model(run_dir)
    for path in (None, 3, b"x.wav", ["a.wav"]):
        with pytest.raises(TimnetError, match=r"^audio file .* invalid; expected a path \(str or pathlib.Path\)$"):
            model.predict_file(path)
    with pytest.raises(TimnetError, match=r"^hop 0 invalid; expected at least one sample"):
        model.predict_file(clips["long"], hop=0)
    y = sf.read(clips["16k"], dtype="float32")[0]
    for given, match in (("abc", "^waveform of <U3 samples invalid"), (y.astype(complex), "^waveform of complex128 samples"),
                         (torch.from_numpy(y.astype(np.complex64)), "^waveform of complex64 samples"),
                         ([[1.0], [1.0, 2.0]], "^waveform invalid; expected a mono")):
        with pytest.raises(TimnetError, match=match):
            waveform_features(given, CFG)
    with pytest.raises(TimnetError, match=r"^feature config None invalid; expected a timnet.features.FeatureConfig"):
        waveform_features(y, None)
    x = waveform_features(y, CFG)[None]
    for given, match in ((x.astype(np.complex64), "dtype complex64"), (torch.from_numpy(x.astype(np.complex64)), "dtype complex64"),
                         (x > 0, "dtype bool"), (None, "dtype object"), (np.float64(3), r"shape \(\)")):
        with pytest.raises(TimnetError, match=f"^features of {match} invalid"):
            model.predict_features(given)
    np.testing.assert_array_equal(model.predict_features(x.astype(np.float64)), model.predict_features(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not numpy's overflow warning, and not called infinite
        with pytest.raises(TimnetError, match=r"^waveform of samples up to 1e\+300 invalid; expected floats in \[-1, 1\]$"):
            model.predict(np.full(20000, 1e300), 16000)


@pytest.mark.realdata
def test_authors_weights_with_an_upper_case_suffix(tmp_path):
    """W.HDF5 is the authors' weights as W.hdf5 is (the suffix's case is the file system's, not the format's)."""
    src = need(PRETRAINED / "EMODB_46") / "10-fold_weights_best_1.hdf5"
    shutil.copy(src, tmp_path / "W.HDF5")
    x = np.random.default_rng(0).standard_normal((2, 188, 39)).astype(np.float32)
    np.testing.assert_array_equal(load_model(tmp_path / "W.HDF5", corpus="emodb").predict_features(x),
                                  load_model(src, corpus="emodb").predict_features(x))
