"""A user's own corpus: DIR/<label>/*.wav with custom labels, extracted and trained."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_tone
from timnet.corpora import folder_corpus, list_corpus
from timnet.errors import TimnetError
from timnet.features import extract


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    for c, label in enumerate(("calm", "excited", "tired")):
        for i in range(12):
            spk = ("ann", "bob", "cid")[i % 3]
            write_tone(root / label / f"{spk}_{i:02d}.wav", sr=16000, seed=10 * c + i, seconds=0.2 + 0.3 * c)
    write_tone(root / "stray.wav")  # not in a label folder
    write_tone(root / "calm" / "nospeaker.wav", seed=99)
    return root


def test_listing_labels_and_speakers(tree):
    corpus = folder_corpus(tree, signal_length=8192, speaker_pattern=r"^([a-z]+)_\d")
    listing = list_corpus(corpus, tree)
    assert corpus.labels == ("calm", "excited", "tired")
    assert len(listing.items) == 36 and {it.speaker for it in listing.items} == {"ann", "bob", "cid"}
    assert dict(listing.skipped) == {"calm/nospeaker.wav": "speaker pattern", "stray.wav": "not in a label folder"}
    with pytest.raises(TimnetError, match="needs a group"):
        folder_corpus(tree, signal_length=8192, speaker_pattern=r"[a-z]+_")
    with pytest.raises(TimnetError, match="not a valid regex"):
        folder_corpus(tree, signal_length=8192, speaker_pattern=r"(")


def test_one_speaker_spelled_two_ways_is_one_speaker_and_an_unnamed_one_is_skipped(tmp_path):
    """F01 and f01, or "Zoë" composed and decomposed (a copy from macOS), are one speaker, said in a
    warning: two would put her on both sides of a speaker split. A pattern whose group matches
    nothing or "" names no speaker: the file is skipped, not pooled under "None" or ""."""
    import unicodedata

    root = tmp_path / "mine"
    zoe_nfc, zoe_nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    names = {"calm": [f"F01-{i}.wav" for i in range(2)] + [f"{zoe_nfc}-0.wav", "x-0.wav", "-0.wav"],
             "tired": ["f01-0.wav", f"{zoe_nfd}-1.wav", "M02-0.wav"]}
    for label, files in names.items():
        for i, name in enumerate(files):
            write_tone(root / label / name, seed=i)
    corpus = folder_corpus(root, signal_length=8192, speaker_pattern=r"^(?:x|([^-]*))-")  # x: no group; "": empty
    with pytest.warns(UserWarning, match=r"differ only in letter case or Unicode form taken as one speaker \("
                                         r"'f01' as 'F01'; '.*' as 'Zoë'\)"):
        listing = list_corpus(corpus, root)
    assert sorted({it.speaker for it in listing.items}) == ["F01", "M02", zoe_nfc]
    assert dict(listing.skipped) == {"calm/x-0.wav": "speaker pattern", "calm/-0.wav": "speaker pattern"}
    with pytest.raises(TimnetError, match=r"--speaker-pattern '': empty; expected a regex"):
        folder_corpus(root, signal_length=8192, speaker_pattern="")
    (root / unicodedata.normalize("NFD", "ärger")).mkdir()
    (root / unicodedata.normalize("NFC", "ärger")).mkdir()
    with pytest.raises(TimnetError, match=r"label folders '.*' and '.*' are one name in two Unicode forms"):
        folder_corpus(root, signal_length=8192)


def test_one_class_in_two_letter_cases_or_linked_twice_is_refused(tree, tmp_path):
    """Angry/ and angry/ (one folder on a case-insensitive file system), a label folder linked under
    another name, or one recording linked into two label folders: each would make one class two, or
    one recording two examples of different classes; refused, naming both. A link within its own
    label folder is a second copy, listed as a duplicate."""
    import shutil

    root = tmp_path / "mine"
    shutil.copytree(tree, root)
    (root / "Calm").mkdir()
    write_tone(root / "Calm" / "ann_99.wav")
    with pytest.raises(TimnetError, match=r"label folders 'Calm' and 'calm' are one name in two spellings \(letter case\)"):
        folder_corpus(root, signal_length=8192)
    shutil.rmtree(root / "Calm")
    (root / "zen").symlink_to(root / "calm", target_is_directory=True)
    with pytest.raises(TimnetError, match=r"mine/zen and .*mine/calm are one folder \(a link\), two labels; expected one folder"):
        list_corpus(folder_corpus(root, signal_length=8192), root)
    (root / "zen").unlink()
    (root / "tired" / "ann_50.wav").symlink_to(root / "calm" / "ann_00.wav")
    with pytest.raises(TimnetError, match=r"tired/ann_50.wav and .*mine/calm/ann_00.wav are one file \(a link\) under two "
                                          r"labels, 'tired' and 'calm'; expected one label per recording"):
        list_corpus(folder_corpus(root, signal_length=8192), root)
    (root / "tired" / "ann_50.wav").unlink()
    # a link inside one label folder to a sub-folder of another: its files are the other's, not
    # silently relabelled (the walk once kept the link's path first and never visited the real one)
    (root / "tired" / "session2").mkdir()
    write_tone(root / "tired" / "session2" / "ann_98.wav")
    (root / "calm" / "extra").symlink_to(root / "tired" / "session2", target_is_directory=True)
    with pytest.raises(TimnetError, match=r"tired/session2/ann_98.wav and .*calm/extra/ann_98.wav are one file \(a link\) "
                                          r"under two labels, 'tired' and 'calm'"):
        list_corpus(folder_corpus(root, signal_length=8192), root)
    (root / "calm" / "extra").unlink()
    shutil.rmtree(root / "tired" / "session2")
    (root / "calm" / "ann_99.wav").symlink_to(root / "calm" / "ann_00.wav")
    listing = list_corpus(folder_corpus(root, signal_length=8192), root)
    assert ("calm/ann_99.wav", "duplicate of calm/ann_00.wav") in listing.skipped and len(listing.items) == 37


def test_a_label_folder_without_audio_is_refused(tree, tmp_path):
    """An empty label folder would become a class no example teaches (the model then gives it
    probabilities); so would one whose every file the speaker pattern skips."""
    import shutil

    root = tmp_path / "mine"
    shutil.copytree(tree, root)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(TimnetError, match=r"mine/empty: a label folder with no audio file; expected at least one per label"):
        list_corpus(folder_corpus(root, signal_length=8192), root)
    shutil.rmtree(root / "empty")
    write_tone(root / "quiet" / "unnamed.wav")
    with pytest.raises(TimnetError, match=r"mine/quiet: a label folder with no audio file the --speaker-pattern matches"):
        list_corpus(folder_corpus(root, signal_length=8192, speaker_pattern=r"^([a-z]+)_\d"), root)
    # one label folder alone: every prediction would be right by construction
    one = tmp_path / "one"
    write_tone(one / "happy" / "a.wav")
    with pytest.raises(TimnetError, match=r"one: one label folder \(happy\); expected two or more"):
        list_corpus(folder_corpus(one, signal_length=8192), one)


def test_signal_length_required(tree):
    with pytest.raises(TimnetError, match="needs --signal-length"):
        extract("folders", tree, progress=False)


def test_extract_and_train_two_epochs(tree, tmp_path):
    feats = tmp_path / "mine.npz"
    r = subprocess.run([sys.executable, "-m", "timnet", "extract", "folders", str(tree), "-o", str(feats), "-q",
                        "--signal-length", "8192", "--speaker-pattern", r"^([a-z]+)_\d", "--workers", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "FOLDERS: 36 utterances (calm 12, excited 12, tired 12), 3 speakers" in r.stdout
    r = subprocess.run([sys.executable, "-m", "timnet", "train", str(feats), "-o", str(tmp_path / "run"), "--folds", "3",
                        "--split", "speaker", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--workers", "1",
                        "--no-report", "-q", "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["corpus"] == "FOLDERS" and res["labels"] == ["calm", "excited", "tired"] and res["seed"] == 0
    assert sorted(s for f in res["folds"] for s in f["test_speakers"]) == ["ann", "bob", "cid"]
    # `timnet test` of the run takes its split and folds from run.json: the same speakers, the same scores
    r = subprocess.run([sys.executable, "-m", "timnet", "test", str(feats), "--weights", str(tmp_path / "run"),
                        "--json", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["split"] == "speaker" and t["folds_n"] == 3
    assert [(f["test_speakers"], f["war"], f["uar"]) for f in t["folds"]] == \
        [(f["test_speakers"], f["war"], f["uar"]) for f in res["folds"]]


def test_every_extension_libsndfile_reads_is_audio(tmp_path):
    """.au, .caf, .w64, .opus ...: a file of every extension the listing takes is read and extracted,
    not silently passed over as if it were notes."""
    import soundfile as sf

    from timnet.corpora import AUDIO_EXTENSIONS

    written = {".wav": ("WAV", "PCM_16"), ".wave": ("WAV", "PCM_24"), ".flac": ("FLAC", "PCM_16"),
               ".ogg": ("OGG", "VORBIS"), ".oga": ("OGG", "VORBIS"), ".opus": ("OGG", "OPUS"),
               ".aiff": ("AIFF", "PCM_16"), ".aif": ("AIFF", "PCM_16"), ".aifc": ("AIFF", "PCM_16"),
               ".mp3": ("MP3", "MPEG_LAYER_III"), ".au": ("AU", "PCM_16"), ".snd": ("AU", "PCM_16"),
               ".caf": ("CAF", "PCM_16"), ".w64": ("W64", "PCM_16"), ".rf64": ("RF64", "PCM_16")}
    assert set(written) == set(AUDIO_EXTENSIONS)  # a new extension needs a file here
    root = tmp_path / "mine"
    names = sorted(f"{k:02d}{ext}" for k, ext in enumerate(AUDIO_EXTENSIONS))
    for label in ("calm", "tired"):
        for name in names:
            fmt, subtype = written[name[2:]]
            write_tone(root / label / name, sr=48000, fmt=fmt, subtype=subtype)
        (root / label / "notes.txt").write_text("not audio")
    listing = list_corpus(folder_corpus(root, signal_length=8192), root)
    assert sorted(it.path for it in listing.items if it.label == 0) == [f"calm/{n}" for n in names]
    fs, _, bad = extract("folders", root, signal_length=8192, workers=1, progress=False)
    assert len(fs) == 2 * len(names) and not bad and np.isfinite(fs.x).all()
    assert {sf.info(root / "calm" / n).format for n in names} == {f for f, _ in written.values()}


def test_test_says_when_the_features_name_other_speakers_than_the_run(tmp_path):
    """The same audio extracted with another --speaker-pattern has the run's fingerprint (features and
    labels) but other speaker ids: `test` scores the run's folds and says that the speakers it names
    are not those the run recorded."""
    import warnings

    from test_train import synthetic
    from timnet.evaluate import fold_models
    from timnet.run import Run
    from timnet.train import TrainConfig

    fs = synthetic()
    run = Run(fs, tmp_path / "run", config=TrainConfig(epochs=1, batch_size=16), folds=3, seed=1, split="speaker")
    run.prepare()
    run.execute(progress=False, log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the features it was trained on: nothing to say
        fold_models(tmp_path / "run", fs, folds=3, seed=1, split="speaker")
    renamed = synthetic()
    renamed.speakers = renamed.speakers[::-1].copy()  # another pattern's grouping of the same files
    with pytest.warns(UserWarning, match=r"run: these features name other speakers for the test utterances of fold "
                                         r"1, 2, 3 than the run recorded \(extracted with another --speaker-pattern"):
        models = fold_models(tmp_path / "run", renamed, folds=3, seed=1, split="speaker")
    assert [fm.fold for fm in models] == [1, 2, 3]


def test_features_that_name_no_speakers_report_none_per_fold():
    """A folders tree extracted without --speaker-pattern records "" for every speaker: a fold's
    test_speakers is then [], as for the authors' .npy files, not [""]."""
    from timnet.evaluate import fold_result
    from timnet.features import FeatureConfig, FeatureSet

    fs = FeatureSet(x=np.zeros((4, 9, 39), np.float32), y=np.array([0, 1, 0, 1]), labels=("calm", "tired"),
                    corpus="FOLDERS", config=FeatureConfig(signal_length=4096), speakers=np.array([""] * 4))
    assert fold_result(1, fs, np.array([0, 1]), np.array([0, 0]))["test_speakers"] == []
    named = FeatureSet(**{**vars(fs), "speakers": np.array(["b", "a", "b", "a"])})
    assert fold_result(1, named, np.array([0, 1]), np.array([0, 0]))["test_speakers"] == ["a", "b"]
