"""Corpus extraction end to end on a synthetic EMODB tree; saving and loading feature files."""
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tone
from timnet.errors import TimnetError
from timnet.features import FeatureConfig, FeatureSet, extract, file_features, load_features, save_features

EMODB_NAMES = ["03a01Wa", "03a02Wb", "08b10Ld", "08a02Ld", "11a05Ea", "03a10Fa", "12a01Fa", "16b01Tb", "09a01Na", "10a01Ab"]


def emodb_tree(root, *, extra=()):
    for i, name in enumerate(EMODB_NAMES):
        sr, ch, sub = (48000, 2, "PCM_24") if i == 0 else (16000, 1, "PCM_16")
        write_tone(root / "wav" / f"{name}.wav", sr=sr, channels=ch, subtype=sub, seed=i, seconds=0.2 + 0.05 * i)
    (root / "README.txt").write_text("stray")
    write_tone(root / "wav" / "stray.wav", seed=99)
    for name in extra:
        (root / "wav" / name).write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return emodb_tree(tmp_path_factory.mktemp("emodb"))


def test_extract_order_labels_and_parallel_equals_serial(tree):
    fs, skipped, bad = extract("emodb", tree, workers=2, signal_length=8192, progress=False)
    assert bad == [] and skipped is not None and "stray.wav" in skipped and "README" not in skipped
    # class order angry(W) boredom(L) disgust(E) fear(A) happy(F) neutral(N) sad(T), then natural order
    assert [f.split("/")[-1][:-4] for f in fs.files] == [
        "03a01Wa", "03a02Wb", "08a02Ld", "08b10Ld", "11a05Ea", "10a01Ab", "03a10Fa", "12a01Fa", "09a01Na", "16b01Tb"]
    assert fs.y.tolist() == [0, 0, 1, 1, 2, 3, 4, 4, 5, 6]
    assert fs.speakers.tolist()[:3] == ["03", "03", "08"]
    assert fs.x.shape == (10, 17, 39) and fs.x.dtype == np.float32
    serial, _, _ = extract("emodb", tree, workers=1, signal_length=8192, progress=False)
    np.testing.assert_array_equal(serial.x, fs.x)
    np.testing.assert_array_equal(fs.x[0], file_features(tree / fs.files[0], FeatureConfig(signal_length=8192)))


def test_save_load_round_trip(tree, tmp_path):
    fs, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False)
    path = save_features(fs, tmp_path / "f.npz")
    back = load_features(path)
    np.testing.assert_array_equal(back.x, fs.x)
    assert back.y.tolist() == fs.y.tolist() and back.labels == fs.labels and back.corpus == "EMODB"
    assert back.config == fs.config and back.files.tolist() == fs.files.tolist()
    assert back.speakers.tolist() == fs.speakers.tolist()
    with pytest.raises(TimnetError, match="holds EMODB features, but --corpus casia"):
        load_features(path, corpus="casia")


def test_save_is_atomic(tmp_path, monkeypatch):
    fs = FeatureSet(x=np.zeros((2, 3, 39), np.float32), y=np.zeros(2, np.int64), labels=("a", "b"),
                    corpus="EMODB", config=FeatureConfig())
    path = tmp_path / "f.npz"
    path.write_bytes(b"previous")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        save_features(fs, path)
    assert path.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [path]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, monkeypatch):
    from timnet import files

    # SIGKILL mid-write (the out-of-memory killer, a session's end) leaves the hidden temporary
    # beside the file; the next write of that file removes it, and nothing that is not such a leftover.
    path = tmp_path / "f.npz"
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from timnet.files import atomic_write
        with atomic_write({str(path)!r}) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """)])
    assert killed.wait() == -signal.SIGKILL
    [left] = tmp_path.iterdir()
    assert left.name.startswith(".f.npz.") and f".{killed.pid}@" in left.name and left.read_bytes() == b"half"
    host = left.name.split("@")[1].removesuffix(".tmp")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [tmp_path / f".f.npz.abcd1234.{alive.pid}@{host}.tmp",  # a writer still at work
                tmp_path / f".f.npz.abcd1234.{killed.pid}@another-host.tmp",  # one on another machine
                tmp_path / ".f.npz.tmp", tmp_path / ".f.npz.x.tmp"]  # the user's, or an older timnet's
        for p in kept:
            p.write_bytes(b"keep")
        fs = FeatureSet(x=np.zeros((2, 3, 39), np.float32), y=np.zeros(2, np.int64), labels=("a", "b"),
                        corpus="EMODB", config=FeatureConfig())
        save_features(fs, path)
        assert sorted(tmp_path.iterdir()) == sorted([path, *kept]) and path.stat().st_size > 100
    finally:
        alive.kill()
        alive.wait()
    # a writer at work whose pid looks ended (another pid namespace of the same host name, a
    # container): its lock on the temporary keeps it
    for p in kept:
        p.unlink()
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from timnet.files import atomic_write
        with atomic_write({str(path)!r}) as tmp:
            tmp.write_bytes(b"later")
            print("writing", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        monkeypatch.setattr(files, "_ended", lambda pid: True)
        save_features(fs, path)
        assert len([p for p in tmp_path.iterdir() if f".{writer.pid}@" in p.name]) == 1
    finally:
        writer.kill()
        writer.wait()


def test_bad_file_fails_or_is_skipped(tmp_path):
    root = emodb_tree(tmp_path / "c", extra=["03a05Wa.wav"])
    with pytest.raises(TimnetError, match=r"03a05Wa\.wav: empty file.*--skip-bad"):
        extract("emodb", root, workers=1, signal_length=4096, progress=False)
    fs, _, bad = extract("emodb", root, workers=2, signal_length=4096, skip_bad=True, progress=False)
    assert len(fs) == 10 and len(bad) == 1 and "03a05Wa.wav" in bad[0]


def test_dangling_link_fails_or_is_skipped(tmp_path):
    root = emodb_tree(tmp_path / "c")
    (root / "wav" / "03a05Wa.wav").symlink_to(tmp_path / "gone.wav")  # listed, but nothing to read
    with pytest.raises(TimnetError, match=r"03a05Wa\.wav: a broken symbolic link \(to .*gone\.wav\).*--skip-bad"):
        extract("emodb", root, workers=1, signal_length=4096, progress=False)
    fs, _, bad = extract("emodb", root, workers=1, signal_length=4096, skip_bad=True, progress=False)
    assert len(fs) == 10 and len(bad) == 1 and "03a05Wa.wav" in bad[0]


def test_file_the_system_refuses_fails_or_is_skipped(tmp_path, monkeypatch):
    """An OSError on one file (no permission, an I/O error on a flaky disk) is that file's error,
    which --skip-bad skips, not the end of the whole extraction."""
    from timnet import audio

    root = emodb_tree(tmp_path / "c")
    check = audio.check_container

    def refuse(path):  # as root, chmod cannot make a file unreadable: the refusal is injected
        if Path(path).name == "03a10Fa.wav":
            raise PermissionError(13, "Permission denied", str(path))
        return check(path)

    monkeypatch.setattr(audio, "check_container", refuse)
    with pytest.raises(TimnetError, match=r"03a10Fa\.wav: cannot be read \(Permission denied\).*--skip-bad"):
        extract("emodb", root, workers=1, signal_length=4096, progress=False)
    fs, _, bad = extract("emodb", root, workers=1, signal_length=4096, skip_bad=True, progress=False)
    assert len(fs) == 9 and len(bad) == 1 and "03a10Fa.wav" in bad[0]


def test_authors_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((12, 188, 39)).astype(np.float32)
    y = np.eye(7)[np.arange(12) % 7]
    np.save(tmp_path / "EMODB.npy", {"x": x, "y": y}, allow_pickle=True)
    fs = load_features(tmp_path / "EMODB.npy", corpus="EMODB")
    assert fs.y.tolist() == (np.arange(12) % 7).tolist() and fs.config.signal_length == 96000 and fs.speakers is None
    with pytest.raises(TimnetError, match="needs --corpus"):
        load_features(tmp_path / "EMODB.npy")
    with pytest.raises(TimnetError, match="y has 7 classes; CASIA has 6"):
        load_features(tmp_path / "EMODB.npy", corpus="casia")
    # SAVEE's 7 classes and 254 frames (130000 samples) given as EMODB: loads, with a warning
    np.save(tmp_path / "SAVEE.npy", {"x": np.zeros((7, 254, 39), np.float32), "y": np.eye(7)}, allow_pickle=True)
    with pytest.warns(UserWarning, match="254 frames per utterance; EMODB's features have 188 .* check --corpus emodb"):
        fs = load_features(tmp_path / "SAVEE.npy", corpus="emodb")
    assert fs.config.signal_length == 253 * 512
    # EMOVO's whole corpus (84 per class, 188 frames like EMODB) given as EMODB: only the counts tell
    np.save(tmp_path / "EMOVO.npy", {"x": np.zeros((588, 188, 39), np.float32), "y": np.eye(7)[np.arange(588) % 7]},
            allow_pickle=True)
    with pytest.raises(TimnetError, match=r"588 utterances .* EMOVO's, not EMODB's .* expected --corpus emovo"):
        load_features(tmp_path / "EMOVO.npy", corpus="emodb")
    assert len(load_features(tmp_path / "EMOVO.npy", corpus="emovo")) == 588
    # soft labels or none: argmax would make every row some class
    np.save(tmp_path / "soft.npy", {"x": x, "y": np.full((12, 7), 1 / 7)}, allow_pickle=True)
    with pytest.raises(TimnetError, match=r"soft.npy: y's row 0 is \[0.142.*expected one-hot rows"):
        load_features(tmp_path / "soft.npy", corpus="emodb")
    words = y.astype(object)
    words[0, 0] = "one"
    np.save(tmp_path / "word.npy", {"x": x, "y": words}, allow_pickle=True)
    with pytest.raises(TimnetError, match=r"word.npy: y holds object values such as 'one'; expected one-hot numbers"):
        load_features(tmp_path / "word.npy", corpus="emodb")
    np.save(tmp_path / "words.npy", {"x": x, "y": y.astype(str)}, allow_pickle=True)
    with pytest.raises(TimnetError, match=r"words.npy: y holds <U32 values such as '1.0'; expected one-hot numbers"):
        load_features(tmp_path / "words.npy", corpus="emodb")
    np.save(tmp_path / "objects.npy", {"x": x, "y": y.astype(object)}, allow_pickle=True)  # numbers as objects: read
    assert load_features(tmp_path / "objects.npy", corpus="emodb").y.tolist() == (np.arange(12) % 7).tolist()
    nones = y.astype(object)
    nones[0, 0] = None
    np.save(tmp_path / "nones.npy", {"x": x, "y": nones}, allow_pickle=True)
    with pytest.raises(TimnetError, match=r"nones.npy: y's row 0 is \[nan, 0.0, .*expected one-hot rows"):
        load_features(tmp_path / "nones.npy", corpus="emodb")
    np.save(tmp_path / "none.npy", {"x": x[:0], "y": np.eye(7)[:0]}, allow_pickle=True)
    with pytest.raises(TimnetError, match="none.npy: holds no utterances"):
        load_features(tmp_path / "none.npy", corpus="emodb")


def test_authors_npy_is_read_without_running_its_pickle(tmp_path):
    """The authors' feature files are pickles, which np.load(allow_pickle=True) would let run code:
    only numpy arrays in a dict are unpickled, numpy 1's module names (their files) included."""
    import os
    import pickle
    import warnings

    def npy(path, payload: bytes):
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            f.write(payload)
        return path

    x = np.random.default_rng(0).standard_normal((14, 188, 39)).astype(np.float32)
    d = np.empty((), dtype=object)
    d[()] = {"x": x, "y": np.eye(7)[np.arange(14) % 7]}
    # protocol 2 names its globals as text lines: numpy 1 named the module numpy.core.multiarray
    old = pickle.dumps(d, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in old
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2's shim for numpy.core would warn
        fs = load_features(npy(tmp_path / "numpy1.npy", old), corpus="emodb")
    assert np.array_equal(fs.x, x) and fs.y.tolist() == (np.arange(14) % 7).tolist()

    class Payload:  # what a file from anywhere could hold: code run by unpickling it
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "ran"),)

    bad = np.empty((), dtype=object)
    bad[()] = {"x": x, "y": Payload()}
    path = npy(tmp_path / "EMODB.npy", pickle.dumps(bad, protocol=3))
    with pytest.raises(TimnetError, match=r"EMODB.npy: not an authors' feature file: it names posix\.mkdir, which is no "
                                          r"part of a numpy array \(refused unread: unpickling it could run code\)"):
        load_features(path, corpus="emodb")
    assert not (tmp_path / "ran").exists()
    np.load(path, allow_pickle=True)  # what the check keeps from happening
    assert (tmp_path / "ran").is_dir()


def test_a_hand_made_npz_is_checked_not_misread(tree, tmp_path):
    """A feature file made by hand: labels as one string (five "classes" a, n, g, r, y), fractional
    class indices, no corpus name or no utterances are refused naming the file; whole-number float
    indices, as numpy makes them, are classes."""
    import json

    fs, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False)
    path = save_features(fs, tmp_path / "f.npz")

    def edited(name, **change):
        with np.load(path) as z:
            arrays = dict(z)
        meta = json.loads(str(arrays["meta"]))
        meta.update(change.pop("meta", {}))
        arrays.update(meta=np.array(json.dumps(meta)), **change)
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(TimnetError, match=r"labels.npz: its labels are 'angry'; expected a list of distinct class names"):
        load_features(edited("labels.npz", meta={"labels": "angry"}))
    with pytest.raises(TimnetError, match=r"corpus.npz: its corpus is None; expected a corpus name"):
        load_features(edited("corpus.npz", meta={"corpus": None}))
    with pytest.raises(TimnetError, match=r"half.npz: y holds float64 values such as 0.5; expected whole-number class indices"):
        load_features(edited("half.npz", y=fs.y + 0.5))
    assert load_features(edited("whole.npz", y=fs.y.astype(float))).y.tolist() == fs.y.tolist()
    with pytest.raises(TimnetError, match=r"empty.npz: holds no utterances"):
        load_features(edited("empty.npz", x=fs.x[:0], y=fs.y[:0], speakers=fs.speakers[:0], files=fs.files[:0]))
    # speaker and file names: one string each, else refused at once, not as a traceback after training
    n = len(fs)
    with pytest.raises(TimnetError, match=r"bytes.npz: speakers holds \|S2 values such as b'03'; expected strings"):
        load_features(edited("bytes.npz", speakers=fs.speakers.astype(bytes)))
    with pytest.raises(TimnetError, match=rf"wide.npz: speakers of shape \({n}, 2\) for {n} utterances; expected \({n},\), one name each"):
        load_features(edited("wide.npz", speakers=np.stack([fs.speakers, fs.speakers], 1)))
    with pytest.raises(TimnetError, match=rf"short.npz: files of shape \({n - 1},\) for {n} utterances"):
        load_features(edited("short.npz", files=fs.files[1:]))
    assert load_features(edited("mine.npz", meta={"corpus": "mine"}), corpus="mine").corpus == "mine"  # its own case
    numbered = load_features(edited("ids.npz", speakers=fs.speakers.astype(int)))  # whole-number ids: kept, in their order
    assert numbered.speakers.tolist() == fs.speakers.astype(int).tolist()
    with pytest.raises(TimnetError, match=r"ids.npz: files holds int64 values such as 3; expected strings"):
        load_features(edited("ids.npz", files=np.arange(n) + 3))


def test_truncated_npz_is_a_one_line_error(tree, tmp_path):
    fs, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False)
    path = save_features(fs, tmp_path / "f.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TimnetError, match="not a readable .npz"):
        load_features(path)


def test_non_finite_features_are_refused(tree, tmp_path):
    """One NaN would make every model trained on the file NaN: refused on loading, naming the utterance."""
    fs, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False)
    fs.x[2, 3, 4] = np.nan
    path = save_features(fs, tmp_path / "f.npz")
    with pytest.raises(TimnetError, match=f"1 utterance\\(s\\) have non-finite features, the first at index 2 \\({fs.files[2]}\\)"):
        load_features(path)
    with open(tmp_path / "A.NPY", "wb") as f:  # an upper-case suffix is still an authors' file
        np.save(f, {"x": np.full((7, 188, 39), np.inf, np.float32), "y": np.eye(7)}, allow_pickle=True)
    with pytest.raises(TimnetError, match="A.NPY: 7 utterance\\(s\\) have non-finite features, the first at index 0;"):
        load_features(tmp_path / "A.NPY", corpus="emodb")


def test_extract_command_reuses_and_force_recomputes(tree, tmp_path, capsys):
    from timnet import cli

    out = tmp_path / "f.npz"
    argv = ["extract", "emodb", str(tree), "-o", str(out), "--signal-length", "4096", "--workers", "1", "-q"]
    assert cli.main(argv) == 0
    first = out.stat().st_ino  # a rewrite renames a new file over it (mtimes can be too coarse to tell)
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "is up to date (same files and settings); --force recomputes it" in capsys.readouterr().err
    assert out.stat().st_ino == first  # not rewritten
    assert cli.main(argv + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().err and out.stat().st_ino != first


def test_up_to_date_features_are_reused(tree, tmp_path):
    import os

    path = tmp_path / "f.npz"
    fs, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False, cache=path)
    assert not fs.from_cache
    save_features(fs, path)
    again, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False, cache=path)
    assert again.from_cache and np.array_equal(again.x, fs.x)
    other, _, _ = extract("emodb", tree, workers=1, signal_length=8192, progress=False, cache=path)
    assert not other.from_cache  # other settings
    touched = tree / fs.files[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed, _, _ = extract("emodb", tree, workers=1, signal_length=4096, progress=False, cache=path)
    assert not changed.from_cache and np.array_equal(changed.x, fs.x)  # recomputed: same audio, same bits


def test_authors_order_sorts_by_file_name_then_path_ignoring_case():
    """--order authors: within a class by the file's name (their extraction copies each class into
    one folder), same names by path ignoring case; classes stay in label order. SPEC.md's order is
    the features' own."""
    from timnet.features import FeatureConfig, FeatureSet, in_order

    files = np.array(["b/angry/10.wav", "B2/angry/2.wav", "a/angry/2.wav", "a/sad/1.wav", "Z/angry/2.wav"])
    y = np.array([0, 0, 0, 1, 0])
    fs = FeatureSet(x=np.arange(5, dtype=np.float32)[:, None, None], y=y, labels=("angry", "sad"), corpus="CASIA",
                    config=FeatureConfig(signal_length=4096), speakers=np.array(["b", "B2", "a", "a", "Z"]), files=files)
    assert in_order(fs, "spec") is fs
    a = in_order(fs, "authors")
    assert a.files.tolist() == ["a/angry/2.wav", "B2/angry/2.wav", "Z/angry/2.wav", "b/angry/10.wav", "a/sad/1.wav"]
    assert a.x[:, 0, 0].tolist() == [2, 1, 4, 0, 3] and a.y.tolist() == [0, 0, 0, 0, 1]
    assert a.speakers.tolist() == ["a", "B2", "Z", "b", "a"] and a.meta["order"] == "authors"
    with pytest.raises(TimnetError, match="--order authors needs a timnet .npz"):
        in_order(FeatureSet(x=fs.x, y=y, labels=fs.labels, corpus="CASIA", config=fs.config), "authors")


def test_a_folder_name_that_is_not_utf8_extracts(tmp_path):
    """Old Latin-1 or GBK zips leave names that are not UTF-8 (Python keeps them as surrogates):
    extraction and its cache fingerprint take them."""
    import os

    root = tmp_path / "emovo"
    write_tone(root / "f1" / "neu-f1-b1.wav", seed=1)
    write_tone(root / "m1" / "neu-m1-b1.wav", seed=2)  # libsndfile cannot write to such a name: renamed after
    os.rename(os.fsencode(root / "m1"), os.fsencode(root) + b"/m1 copi\xe9")
    fs, _, _ = extract("emovo", root, workers=1, progress=False, cache=tmp_path / "f.npz")
    assert len(fs) == 2 and sorted(fs.speakers.tolist()) == ["f1", "m1"]
    save_features(fs, tmp_path / "f.npz")
    again, _, _ = extract("emovo", root, workers=1, progress=False, cache=tmp_path / "f.npz")
    assert again.from_cache


def test_a_class_with_no_utterance_is_warned_of(tree, tmp_path, capsys):
    """A corpus copy missing a class (EMOVO without its sor-* files) extracted and trained silently, with
    an output nothing teaches and a UAR over fewer classes than the paper's."""
    import warnings

    from timnet import cli

    part = tmp_path / "part"
    (part / "wav").mkdir(parents=True)
    for name in EMODB_NAMES:
        if name[5] not in "EA":  # no disgust, no fear
            (part / "wav" / f"{name}.wav").write_bytes((tree / "wav" / f"{name}.wav").read_bytes())
    out = tmp_path / "f.npz"
    argv = ["extract", "emodb", str(part), "-o", str(out), "--signal-length", "4096", "--workers", "1", "-q"]
    assert cli.main(argv) == 0
    gap = "no utterance of disgust, fear (2 of the 7 classes); a model trained on these features never learns those outputs"
    assert f"timnet: warning: {part}: {gap}" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:  # reused from the cache: said once, as a message
        warnings.simplefilter("always")
        assert cli.main(argv) == 0
    assert not caught and capsys.readouterr().err.count(gap) == 1
    with pytest.warns(UserWarning, match=re.escape(f"{out}: {gap}")):
        load_features(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class present: nothing said
        load_features(save_features(extract("emodb", tree, workers=1, signal_length=4096, progress=False)[0],
                                    tmp_path / "whole.npz"))


def test_a_feature_config_shorter_than_one_fft_window_is_refused():
    """As `extract --signal-length` refuses it: librosa would pad every window of so short a signal
    (and warn), so no corpus's features are made that way."""
    from timnet.features import FeatureConfig

    for length in (512, 1000, 2047):
        with pytest.raises(TimnetError, match=f"signal length {length} too short; expected at least 2048 samples"):
            FeatureConfig(signal_length=length)
    assert FeatureConfig(signal_length=2048).frames == 5
