"""The `timnet` command as users drive it: one-line errors, exit codes, nothing half-written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, PRETRAINED, REFERENCE, REPO, ctrl_c_open, need, write_tone
from timnet.errors import TimnetError


def timnet(*args, cwd=None):
    """Run the CLI in a fresh interpreter, as a user's shell would."""
    return subprocess.run([sys.executable, "-m", "timnet", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("timnet: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_corpora_lists_all_six():
    result = timnet("corpora")
    assert result.returncode == 0
    # SPEC.md's table, column by column: signal length, seed, dilation levels, files, speakers, labels
    spec = {"CASIA": (88000, 32, 8, 1200, 4, "angry fear happy neutral sad surprise"),
            "EMODB": (96000, 46, 8, 535, 10, "angry boredom disgust fear happy neutral sad"),
            "EMOVO": (96000, 1, 8, 588, 6, "angry disgust fear happy neutral sad surprise"),
            "IEMOCAP": (310000, 16, 10, 5531, 10, "angry happy neutral sad"),
            "RAVDESS": (110000, 46, 8, 1440, 24, "angry calm disgust fear happy neutral sad surprise"),
            "SAVEE": (130000, 44, 8, 480, 4, "angry disgust fear happy neutral sad surprise")}
    for name, (*numbers, labels) in spec.items():
        line = next(l for l in result.stdout.splitlines() if l.startswith(name)).split()
        assert line[1:6] == [str(n) for n in numbers] and line[6:] == labels.split(), line
    assert "Actor_NN/03-01-EE-II-SS-RR-NN.wav" in result.stdout


def test_speaker_split_needs_speaker_ids_and_seed_lists_integers(tmp_path):
    """The authors' .npy features carry no speakers: a leave-one-speaker-out run on them is refused
    in one line, before a RUN_DIR is made; so is a --seeds list with a non-integer."""
    npy, run = tmp_path / "EMODB.npy", tmp_path / "run"
    rng = np.random.default_rng(0)
    np.save(npy, {"x": rng.standard_normal((14, 188, 39)).astype(np.float32), "y": np.eye(7)[np.arange(14) % 7]},
            allow_pickle=True)
    assert_one_line_error(timnet("train", npy, "--corpus", "emodb", "--split", "speaker", "-o", run),
                          f"{npy}: no speaker ids, which --split speaker needs", "timnet extract")
    assert_one_line_error(timnet("train", npy, "--corpus", "emodb", "--seeds", "46,x", "-o", run),
                          "--seeds '46,x': expected comma-separated integers")
    assert not run.exists()


def untouched(out: Path) -> bool:
    """Whether the `out` fixture's feature file holds what it held before."""
    return out.read_bytes() == (out.parent.parent / "kept.npz").read_bytes()


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out" / "f.npz"
    path.parent.mkdir()
    from test_train import synthetic
    from timnet.features import save_features

    save_features(synthetic(), path)  # a previous result that a failed run must not destroy
    (tmp_path / "kept.npz").write_bytes(path.read_bytes())
    return path


def test_missing_path(tmp_path, out):
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out, "-q"), "nope", "does not exist", "wav/03a01Fa.wav")
    assert untouched(out)


def test_unknown_corpus(tmp_path, out):
    assert_one_line_error(timnet("extract", "emodbx", tmp_path, "-o", out, "-q"), "'emodbx'", "casia, emodb, emovo, iemocap, ravdess, savee, folders")
    assert untouched(out)


def test_bad_output_and_signal_length_refused_before_extracting(tmp_path, out):
    # the folder does not exist, yet the output is refused first: nothing would be extracted for nothing
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out.with_suffix(".npy"), "-q"),
                          "f.npy", "expected a path ending in .npz")
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out.with_suffix(".npy"), "--force", "-q"),
                          "f.npy", "expected a path ending in .npz")
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out, "--signal-length", "0", "-q"),
                          "--signal-length 0", "positive")
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out, "--signal-length", "100000000000", "-q"),
                          "--signal-length 100000000000", "at most 13230000 (10 minutes)")
    assert_one_line_error(timnet("extract", "emodb", tmp_path / "nope", "-o", out, "--signal-length", "2047", "-q"),
                          "--signal-length 2047 too short", "expected at least 2048 samples (one FFT window, 93 ms)")
    assert untouched(out)


def test_outputs_checked_before_the_work(tmp_path, out):
    """A file where a folder is wanted (or the reverse) is refused before any training or extraction."""
    (tmp_path / "folder.npz").mkdir()
    assert_one_line_error(timnet("extract", "emodb", tmp_path, "-o", tmp_path / "folder.npz", "-q"),
                          "folder.npz is a folder", "expected a file path")
    assert_one_line_error(timnet("train", out, "-o", out, "-q"), "f.npz is a file", "expected a folder")
    assert_one_line_error(timnet("train", out, "-o", out / "run", "-q"), f"{out} is a file, not a folder")
    assert_one_line_error(timnet("test", out, "--weights", tmp_path, "--json", tmp_path), "is a folder")
    # a trailing slash names a folder: refused, where it once wrote a file called `new.npz`
    assert_one_line_error(timnet("extract", "emodb", tmp_path, "-o", f"{tmp_path / 'new.npz'}/", "-q"),
                          "--output", "new.npz/ ends in a slash, a folder; expected a file path")
    assert_one_line_error(timnet("test", out, "--weights", tmp_path, "--json", f"{tmp_path / 'new'}/"), "--json", "ends in a slash")
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "new").exists()
    # an empty path (`--json "$UNSET"`) is an error, not silently no file
    assert_one_line_error(timnet("test", out, "--weights", tmp_path, "--json", ""), "--json '': empty path")
    assert_one_line_error(timnet("extract", "emodb", tmp_path, "-o", "", "-q"), "--output '': empty path")
    # one path for two outputs: the JSON would be written, then the plots fail on it
    assert_one_line_error(timnet("test", out, "--weights", tmp_path, "--json", tmp_path / "same", "--plots", tmp_path / "./same"),
                          f"--json and --plots are both {tmp_path / './same'}", "expected a different path for each output")
    assert untouched(out) and not (tmp_path / "same").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no one can make a file")
def test_unwritable_output_refused_even_for_root(out):
    # os.access tells root that /proc is writable; only making a file there shows it is not
    assert_one_line_error(timnet("test", out, "--weights", out, "--json", "/proc/x.json"), "/proc/x.json: /proc is not writable")
    assert_one_line_error(timnet("extract", "emodb", out.parent, "-o", "/proc/timnet/f.npz", "-q"), "/proc is not writable")


def test_damaged_feature_files(tmp_path):
    """Feature files that are not what `timnet extract` writes are refused on loading, naming the flaw."""
    from test_train import synthetic
    from timnet.features import save_features

    fs = synthetic()
    z = dict(np.load(save_features(fs, tmp_path / "good.npz")))
    n = len(fs.labels)
    cases = {"short": dict(y=z["y"][:5]), "classes": dict(y=z["y"] + n), "flat": dict(x=z["x"][:, :, 0]),
             "metalist": dict(meta=np.array("[]")), "metaconfig": dict(meta=np.array(
                 '{"labels": ["a"], "config": "mfcc", "corpus": "EMODB"}')), "frames": dict(x=z["x"][:, :20])}
    meta = json.loads(str(z["meta"]))
    cases["length"] = dict(meta=np.array(json.dumps({**meta, "config": {**meta["config"], "signal_length": 100}})))
    cases["text_length"] = dict(meta=np.array(json.dumps({**meta, "config": {**meta["config"], "signal_length": "96000"}})))
    for name, change in cases.items():
        np.savez(tmp_path / f"{name}.npz", **{**z, **change})
    (tmp_path / "text.npz").write_text("not a zip")
    for name, fragment in (("short", "and (5,)"), ("classes", f"outside the {n} labels"),
                           ("flat", "expected x (N, frames, n_mfcc)"), ("text", "not a whole zip archive"),
                           ("metalist", "its meta is not timnet's"), ("metaconfig", "its feature settings are not"),
                           ("frames", "features of 20 frames x 39 coefficients, but its settings give 24 x 39"),
                           ("length", "its feature settings are not timnet's (signal length 100 too short"),
                           ("text_length", "(feature setting signal_length '96000' invalid; expected a whole number)")):
        assert_one_line_error(timnet("train", tmp_path / f"{name}.npz", "-o", tmp_path / f"run_{name}", "-q"),
                              f"{name}.npz", fragment)
        assert not (tmp_path / f"run_{name}").exists()  # refused before a run folder was made


def test_directory_without_audio(tmp_path, out):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "README.txt").write_text("hi")
    assert_one_line_error(timnet("extract", "ravdess", tmp_path / "c", "-o", out, "-q"), "no RAVDESS audio", "Actor_NN")
    assert untouched(out)


def test_truncated_and_non_audio_wav(tmp_path, out):
    root = tmp_path / "c"
    write_tone(root / "wav" / "03a01Wa.wav")
    trunc = write_tone(root / "wav" / "03a01Fa.wav", seconds=1.0)
    trunc.write_bytes(trunc.read_bytes()[:3000])
    assert_one_line_error(timnet("extract", "emodb", root, "-o", out, "-q"), "03a01Fa.wav", "truncated WAV", "--skip-bad")
    assert untouched(out)
    trunc.write_text("<html>not audio</html>")
    assert_one_line_error(timnet("extract", "emodb", root, "-o", out, "-q"), "03a01Fa.wav", "not readable audio")
    assert untouched(out)
    ok = timnet("extract", "emodb", root, "-o", out, "-q", "--skip-bad", "--workers", "1")
    assert ok.returncode == 0, ok.stderr
    assert "03a01Fa.wav" in ok.stderr and "1 utterance (" in ok.stdout
    assert "1 EMODB utterance, where the paper's corpus has 535" in ok.stderr  # a part of a corpus is said


def test_extract_replaces_only_a_feature_file(tmp_path, out):
    """-o over someone's other file is refused before any work; over timnet features of another
    corpus it is said (runs trained on them will not resume on the new ones)."""
    root = tmp_path / "c"
    write_tone(root / "wav" / "03a01Wa.wav")
    mine = tmp_path / "mine.npz"
    np.savez(mine, weights=np.ones(3))
    np.save(tmp_path / "array.npy", np.ones(3))
    for data in (mine.read_bytes(), b"not a zip", (tmp_path / "array.npy").read_bytes(), out.read_bytes()[:2000]):
        mine.write_bytes(data)  # another program's .npz, a text, an .npy under an .npz name, a cut timnet file
        assert_one_line_error(timnet("extract", "emodb", root, "-o", mine, "-q", "--force"),
                              f"{mine} exists and is not a readable timnet feature file", "delete it to use its name")
        assert mine.read_bytes() == data
    casia = tmp_path / "casia_tree"
    write_tone(casia / "wangzhe" / "angry" / "201.wav")
    done = timnet("extract", "casia", casia, "-o", out, "-q", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert f"timnet: warning: {out}: its EMODB features are replaced by CASIA's" in done.stderr.splitlines()


def test_outputs_never_overwrite_inputs(tmp_path):
    clip = write_tone(tmp_path / "clip.wav")
    before = clip.read_bytes()
    assert_one_line_error(timnet("predict", clip, "--json", clip), "--json", "is the input", "clip.wav")
    assert clip.read_bytes() == before


@pytest.mark.parametrize("verb, option, json_in_run", [
    ("train", "-o", "run.json"), ("train", "-o", "fold_01/result.json"), ("sweep", "-o", "sweep.json"),
    ("test", "--weights", "results.json"), ("predict", "--model", "fold_01/model.pt")])
def test_json_is_never_a_file_of_the_run_folder(tmp_path, capsys, verb, option, json_in_run):
    """`--json RUN_DIR/run.json` would overwrite what resumes, tests and predicts the run; a name of
    one's own beside them stays allowed (the benchmarks' `--json runs/x/strong.json` is outside the run)."""
    from timnet.cli import main

    run = tmp_path / "run"
    (run / "fold_01").mkdir(parents=True)
    kept = {name: (run / name) for name in ("run.json", "results.json", "fold_01/result.json", "fold_01/model.pt")}
    for path in kept.values():
        path.write_text("the run's")
    features, clip = tmp_path / "f.npz", write_tone(tmp_path / "clip.wav")
    features.write_bytes(b"")
    given = {"train": [features], "sweep": [features, "--space", clip], "test": [features], "predict": [clip]}[verb]
    assert main([verb, *map(str, given), option, str(run), "--json", str(run / json_in_run)]) == 1
    err = capsys.readouterr().err
    assert f"--json {run / json_in_run} is a file timnet keeps in the run folder {run}" in err, err
    assert all(path.read_text() == "the run's" for path in kept.values())
    assert not (run / "sweep.json").exists()
    from timnet.cli import build_parser
    from timnet.outputs import check_outputs

    mine = build_parser().parse_args([verb, *map(str, given), option, str(run), "--json", str(run / "mine.json")])
    check_outputs(mine)  # a name of one's own: no error


def test_json_is_not_the_run_folder_to_be_made(tmp_path, capsys):
    """`train -o RUN --json RUN`: refused before the training (it failed after all of it)."""
    from timnet.cli import main

    features = tmp_path / "f.npz"
    features.write_bytes(b"")
    run = tmp_path / "run"
    assert main(["train", str(features), "-o", str(run), "--json", str(run) + "/"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"timnet: error: --json {run}/ is the run folder itself; expected a file path (e.g. {run}.json)"
    assert not run.exists()


def test_json_beside_a_fold_or_in_a_folder_that_is_no_run(tmp_path):
    """A fold folder given as the model keeps its result.json; the authors' weights folder is not
    a run, so a results.json of one's own may go there."""
    from timnet.cli import build_parser
    from timnet.outputs import check_outputs

    fold, authors = tmp_path / "run" / "fold_01", tmp_path / "authors"
    fold.mkdir(parents=True)
    authors.mkdir()
    (fold / "model.pt").write_text("weights")
    (authors / "10-fold_weights_best_1.hdf5").write_text("weights")
    clip = write_tone(tmp_path / "clip.wav")
    with pytest.raises(TimnetError, match="is a file timnet keeps in the run folder"):
        check_outputs(build_parser().parse_args(["predict", str(clip), "--model", str(fold), "--json", str(fold / "result.json")]))
    check_outputs(build_parser().parse_args(["test", str(clip), "--weights", str(authors), "--json", str(authors / "results.json")]))


@pytest.mark.parametrize("json_in_run", ["fold_01/result.json", "results.json", "seed_2/run.json"])
def test_json_is_never_a_file_of_another_run_folder(tmp_path, capsys, json_in_run):
    """A run folder the command does not name is guarded as well: `predict --json OTHER/fold_01/result.json`
    left a run that neither resumes nor plots."""
    from timnet.cli import main

    run = tmp_path / "other"
    (run / "fold_01").mkdir(parents=True)
    (run / "seed_2").mkdir()
    kept = [run / "run.json", run / "fold_01" / "model.pt", run / json_in_run]
    for path in kept:
        path.write_text("the run's")
    clip = write_tone(tmp_path / "clip.wav")
    assert main(["predict", str(clip), "--json", str(run / json_in_run)]) == 1
    assert f"is a file timnet keeps in the run folder {run}" in capsys.readouterr().err
    assert all(path.read_text() == "the run's" for path in kept)
    assert main(["predict", str(clip), "--json", str(run / "mine.json")]) == 0  # a name of one's own beside them
    assert json.loads((run / "mine.json").read_text())[0]["file"].endswith("clip.wav")
    link = tmp_path / "shortcut"
    link.symlink_to(run / "fold_01")
    assert main(["predict", str(clip), "--json", str(link / "result.json")]) == 1  # through a link too
    assert (run / json_in_run).read_text() == "the run's"


def test_figures_never_go_into_another_run_folder(tmp_path):
    """`test --plots RUN/plots` replaced some of a run's figures with another model's and kept the
    others; a run's own `plot --out` and folders beside runs stay allowed."""
    from timnet.cli import build_parser
    from timnet.outputs import check_outputs

    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "seed_46" / "plots").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "seed_46" / "run.json").write_text("{}")
    features = tmp_path / "f.npz"
    for given in (["test", str(features), "--weights", str(tmp_path), "--plots", str(run / "plots")],
                  ["test", str(features), "--weights", str(tmp_path), "--plots", str(run)],
                  ["test", str(features), "--weights", str(tmp_path), "--plots", str(run / "seed_46" / "plots")],
                  ["plot", str(tmp_path / "other"), "--out", str(run / "plots")]):
        with pytest.raises(TimnetError, match=r"--(plots|out) .* is (the run folder|inside the run folder) .*whose figures "
                                            "it would mix with others; expected a folder outside it"):
            check_outputs(build_parser().parse_args(given))
    for given in (["plot", str(run), "--out", str(run / "plots")], ["plot", str(run / "seed_46"), "--out", str(run / "seed_46" / "plots")],
                  ["test", str(features), "--weights", str(tmp_path), "--plots", str(run / "mine")],
                  ["test", str(features), "--weights", str(tmp_path), "--plots", str(tmp_path / "figures")]):
        check_outputs(build_parser().parse_args(given))


def test_json_beside_a_model_or_files_named_fold_that_are_no_run(tmp_path, monkeypatch):
    """A user's folder holding a copied model.pt or a fold_plan.txt is not a run folder: results.json
    may go there."""
    from timnet.cli import build_parser
    from timnet.outputs import check_outputs

    (tmp_path / "model.pt").write_text("weights")
    (tmp_path / "fold_plan.txt").write_text("plan")
    monkeypatch.chdir(tmp_path)
    clip = write_tone(tmp_path / "clip.wav")
    check_outputs(build_parser().parse_args(["predict", str(clip), "--json", "results.json"]))
    check_outputs(build_parser().parse_args(["predict", str(clip), "--model", "model.pt", "--json", "results.json"]))
    seeds = tmp_path / "seeds"
    (seeds / "seed_1").mkdir(parents=True)
    (seeds / "seed_1" / "run.json").write_text("{}")
    with pytest.raises(TimnetError, match="is a file timnet keeps in the run folder"):  # the seeds' own summary
        check_outputs(build_parser().parse_args(["predict", str(clip), "--json", str(seeds / "seeds.json")]))


def test_test_on_a_run_with_no_finished_fold(tmp_path):
    from test_train import synthetic
    from timnet.errors import TimnetError
    from timnet.evaluate import fold_models

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(TimnetError, match="run: a RUN_DIR with no finished fold"):
        fold_models(tmp_path / "run", synthetic(), folds=10, seed=46)
    with pytest.raises(TimnetError, match="run.json: a file, not a folder"):
        fold_models(tmp_path / "run" / "run.json", synthetic(), folds=10, seed=46)


def test_test_verb_errors(tmp_path):
    assert_one_line_error(timnet("test", tmp_path / "none.npz", "--weights", tmp_path), "none.npz", "no such feature file")
    bad = tmp_path / "f.npz"
    bad.write_text("garbage")
    assert_one_line_error(timnet("test", bad, "--weights", tmp_path), "f.npz", "not a whole zip archive")
    assert_one_line_error(timnet("test", tmp_path, "--weights", tmp_path), str(tmp_path), "a folder; expected a feature file")
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "g.npz")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(timnet("test", features, "--weights", tmp_path / "empty"),
                          "empty: no fold_*/model.pt and no .hdf5 files; expected a RUN_DIR")


# ---- real-data tier -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emodb_features(tmp_path_factory):
    need(DATA / "EMODB")
    path = tmp_path_factory.mktemp("emodb") / "emodb.npz"
    result = timnet("extract", "emodb", DATA / "EMODB", "-o", path, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "535 utterances (angry 127, boredom 81, disgust 46, fear 69, happy 71, neutral 79, sad 62), 10 speakers" in result.stdout
    assert "paper's corpus has" not in result.stderr  # the whole corpus: no warning
    return path


@pytest.mark.realdata
def test_extract_emodb_matches_reference(emodb_features, reference):
    with np.load(emodb_features) as z:
        names = [f.split("/")[-1] for f in z["files"]]
        assert names == reference["files"].tolist()
        assert z["y"].tolist() == reference["labels"].tolist()
        np.testing.assert_allclose(z["x"], reference["mfcc"], atol=1e-3, rtol=0)


@pytest.mark.realdata
def test_extract_emodb_is_the_same_bits_on_every_x86_machine(emodb_features):
    import importlib.metadata as md
    import os

    from timnet import dispatch
    from timnet.features import load_features
    from timnet.rundir import features_fingerprint

    if not dispatch.pins() or any(v in os.environ for v in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")):
        pytest.skip("not an x86-64 Linux machine with AVX2, or the CPU dispatch set by hand: no pinned paths to check")
    # the bits also depend on these (constraints.txt pins them for `make setup`)
    lines = (line.split("#")[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines())
    pins = dict(line.split("==") for line in lines if "==" in line)
    pinned = {name: pins[name] for name in ("numpy", "scipy", "librosa", "soxr")}
    drift = {name: md.version(name) for name, version in pinned.items() if md.version(name) != version}
    if drift:
        venv = REPO / ".venv"
        if (venv / ".installed").exists() and Path(sys.prefix).resolve() == venv.resolve():
            # `make test` and CI run here, where constraints.txt holds: this check must not go quiet there
            pytest.fail(f"`make setup`'s .venv has {drift}, constraints.txt pins {pinned}: run `make setup` again")
        pytest.skip(f"the fingerprint below was measured with {pinned}; this environment has {drift}")
    fs = load_features(emodb_features)
    assert fs.meta["cpu_dispatch"]["numpy_avx512"] is False
    # the hash of x and y on an AVX2 machine and, pinned, on an AVX-512 AMD EPYC (it is the
    # fingerprint in benchmarks/ledger/tenfold_emodb); the latter's unpinned bits differed
    assert features_fingerprint(fs) == "4308453d353fb775"


@pytest.mark.realdata
def test_test_reproduces_reference_means(emodb_features, tmp_path):
    weights = need(PRETRAINED / "EMODB_46")
    ref = json.loads(need(REFERENCE.with_suffix(".json")).read_text())
    result = timnet("test", emodb_features, "--weights", weights, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["corpus"] == "EMODB" and r["seed"] == 46 and r["folds_n"] == 10 and r["split"] == "random"
    assert abs(r["mean_war"] - ref["mean_war"]) <= 0.002 and abs(r["mean_uar"] - ref["mean_uar"]) <= 0.002
    assert sum(f["n_test"] for f in r["folds"]) == 535
    assert len(r["folds"][0]["confusion"]) == 7 and len(r["folds"][0]["test_speakers"]) >= 1
    assert "0.9382" in result.stdout


@pytest.mark.realdata
def test_test_on_authors_npy_is_exact(reference, tmp_path):
    weights = need(PRETRAINED / "EMODB_46")
    ref = json.loads(REFERENCE.with_suffix(".json").read_text())
    npy = tmp_path / "EMODB.npy"
    np.save(npy, {"x": reference["mfcc"], "y": np.eye(7)[reference["labels"]]}, allow_pickle=True)
    result = timnet("test", npy, "--corpus", "emodb", "--weights", weights, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["mean_war"] == pytest.approx(ref["mean_war"], abs=1e-12)
    assert r["mean_uar"] == pytest.approx(ref["mean_uar"], abs=1e-12)
    assert r["order"] == "authors"  # their .npy is in their order (it has no file names to sort by)
    for mine, theirs in zip(r["folds"], ref["per_fold"]):
        assert mine["war"] == pytest.approx(theirs["war"], abs=1e-12) and mine["uar"] == pytest.approx(theirs["uar"], abs=1e-12)
    for m in ("war", "uar"):  # the spread over the ten folds (population std, as evaluate.summarize documents)
        assert r[f"std_{m}"] == pytest.approx(np.std([f[m] for f in ref["per_fold"]]), abs=1e-12)


@pytest.mark.realdata
def test_test_refuses_casia_weights_on_emodb(reference, tmp_path):
    weights = need(PRETRAINED / "CASIA_32")
    npy = tmp_path / "EMODB.npy"
    np.save(npy, {"x": reference["mfcc"][::13], "y": np.eye(7)[reference["labels"][::13]]}, allow_pickle=True)  # every class
    assert_one_line_error(timnet("test", npy, "--corpus", "emodb", "--weights", weights), "6 classes", "EMODB features have 7")


@pytest.mark.realdata
def test_authors_weights_need_ten_folds(reference, tmp_path):
    weights = need(PRETRAINED / "EMODB_46")
    npy = tmp_path / "EMODB.npy"
    np.save(npy, {"x": reference["mfcc"], "y": np.eye(7)[reference["labels"]]}, allow_pickle=True)
    assert_one_line_error(timnet("test", npy, "--corpus", "emodb", "--weights", weights, "--folds", "5"),
                          "--folds 5", "expected --folds 10")


@pytest.mark.realdata
def test_authors_weights_refuse_splits_that_would_leak(reference, tmp_path):
    """Their folds are re-derived (no test indices are stored): a subset of the corpus or another seed
    re-derives "test" folds full of training utterances; scoring them would report ~1.0."""
    weights = need(PRETRAINED / "EMODB_46")
    subset = tmp_path / "EMODB_subset.npy"
    np.save(subset, {"x": reference["mfcc"][::9], "y": np.eye(7)[reference["labels"][::9]]}, allow_pickle=True)  # every class
    assert_one_line_error(timnet("test", subset, "--corpus", "emodb", "--weights", weights),
                          f"{subset}: 60 EMODB utterances", "535 utterances")
    full = tmp_path / "EMODB.npy"
    np.save(full, {"x": reference["mfcc"], "y": np.eye(7)[reference["labels"]]}, allow_pickle=True)
    assert_one_line_error(timnet("test", full, "--corpus", "emodb", "--weights", weights, "--seed", "47"),
                          "--seed 47", "seed 46")


@pytest.mark.realdata
def test_authors_weights_on_features_of_another_length(reference, tmp_path):
    """The network takes any length, so features cut short (`--signal-length 50000`) score, but the
    figures are not the authors': said in a warning that names the file."""
    from timnet.corpora import CORPORA
    from timnet.features import FeatureConfig, FeatureSet, save_features

    weights = need(PRETRAINED / "EMODB_46")
    emodb = CORPORA["EMODB"]
    short = save_features(FeatureSet(x=reference["mfcc"][:, :98], y=reference["labels"].astype(np.int64),
                                     labels=emodb.labels, corpus="EMODB", config=FeatureConfig(signal_length=50000)),
                          tmp_path / "short.npz")
    result = timnet("test", short, "--weights", weights)
    assert result.returncode == 0, result.stderr
    assert f"{short}: 98 frames per utterance; the authors' EMODB weights were trained on 188" in result.stderr


def test_cli_mirrors_of_library_constants():
    """cli keeps copies so that --help needs no torch import; they must not drift."""
    from timnet import cli, features, folds, recipe, train

    assert cli.ORDERS == features.ORDERS
    assert cli.SPLITS == folds.SPLITS and cli.SELECTIONS == train.SELECTIONS and cli.PATHS == train.PATHS
    assert cli.ADAM_EPS_RULES == train.ADAM_EPS_RULES
    assert cli.RECIPE_NAMES == tuple(recipe.RECIPES) and cli.SCHEDULES == recipe.SCHEDULES
    assert set(cli.RECIPE_OPTIONS) <= set(train.TrainConfig.__dataclass_fields__)


def test_write_failure_names_the_file_asked_for(tmp_path):
    """A disk that fills while a result is written: the error names the result, not its hidden
    temporary twin, and neither is left behind; the previous result is kept."""
    import errno

    from timnet.files import atomic_write

    target = tmp_path / "results.json"
    target.write_text("previous")
    with pytest.raises(OSError) as caught:
        with atomic_write(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", tmp)
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    # a copy into the temporary file (export's) names its source first and the temporary file second
    with pytest.raises(OSError) as caught:
        with atomic_write(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/timnet-export-x/e.onnx", None, str(tmp))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC


def test_a_full_disk_while_a_model_is_saved_is_an_oserror_naming_it(tmp_path, monkeypatch):
    """torch.save given a path reports a full disk as a RuntimeError from its zip writer, which the
    command line can only show as a traceback; written through a file, it is the OSError it is."""
    import errno

    from timnet import files
    from timnet.checkpoint import save_checkpoint
    from timnet.features import FeatureConfig
    from timnet.model import TIMNet, TIMNetConfig

    target = tmp_path / "model.pt"
    monkeypatch.setattr(files, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    with pytest.raises(OSError) as caught:
        save_checkpoint(target, TIMNet(TIMNetConfig(n_classes=2)), feature_config=FeatureConfig(), labels=("a", "b"),
                        corpus="X")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not list(tmp_path.iterdir())


def test_a_temporary_file_that_cannot_be_made_names_the_file_asked_for(tmp_path, monkeypatch):
    import errno
    import tempfile

    from timnet.files import write_json

    def refuse(**kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".r.json.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError) as caught:
        write_json(tmp_path / "r.json", {})
    assert caught.value.filename == str(tmp_path / "r.json") and caught.value.errno == errno.EACCES


def test_a_pipe_or_the_own_stdout_given_as_an_output_is_written_through(tmp_path):
    # A temporary file renamed over the output would put a regular file in place of a pipe or, as
    # root, of /dev/null itself; reopening the process's own stdout by name would truncate the file
    # the shell redirects it into.
    import os
    import stat
    import threading

    from timnet.files import write_json

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    write_json(fifo, {"war": 0.9})
    reader.join(timeout=10)
    assert read == ['{\n "war": 0.9\n}\n'] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    # a link is replaced, never written through into what it names (another run's file, say)
    target, link = tmp_path / "kept.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    write_json(link, {"war": 0.8})
    assert not link.is_symlink() and json.loads(link.read_text()) == {"war": 0.8} and target.read_text() == "old"
    # the process's own stdout, by a link to /proc/self/fd/1 (what /dev/stdout is): a pipe, then a
    # log file appended to, whose lines before and the table printed stay, the JSON after them
    wav, out = write_tone(tmp_path / "a.wav", seconds=1.0), tmp_path / "out.json"
    out.symlink_to("/proc/self/fd/1")
    result = timnet("predict", wav, "--json", out, "-q")
    assert result.returncode == 0 and '"label":' in result.stdout and out.is_symlink(), result.stderr
    log = tmp_path / "log.txt"
    log.write_text("a line logged before\n")
    with open(log, "a") as stdout:
        done = subprocess.run([sys.executable, "-m", "timnet", "predict", str(wav), "--json", str(out), "-q"],
                              stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, done.stderr
    logged = log.read_text()
    assert logged.startswith("a line logged before\n") and "a.wav  " in logged[:logged.index("\n[")], logged  # the table
    assert json.loads(logged[logged.index("\n["):])[0]["file"] == str(wav)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_device_given_as_an_output_is_one_error_naming_it(tmp_path):
    import os
    import stat

    result = timnet("predict", write_tone(tmp_path / "a.wav", seconds=1.0), "--json", "/dev/full")
    assert_one_line_error(result, "/dev/full: No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_broken_link_is_named_as_one(tmp_path):
    link = tmp_path / "a.wav"
    link.symlink_to(tmp_path / "gone.wav")
    assert_one_line_error(timnet("predict", link), f"{link}: a broken symbolic link (to {tmp_path / 'gone.wav'})")


def test_version():
    import timnet as package

    result = timnet("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"timnet {package.__version__}"


def test_predict_never_writes_over_its_input_nor_takes_audio_for_a_model(tmp_path):
    """`predict DIR --json DIR/a.wav` would replace a recording with the results: refused before any
    work, the recording intact; and audio given as --model (the two swapped) is named as such."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        write_tone(folder / name, seconds=1.0)
    before = (folder / "a.wav").read_bytes()
    assert_one_line_error(timnet("predict", folder, "--json", folder / "a.wav"),
                          f"--json {folder / 'a.wav'} is the input {folder / 'a.wav'}")
    assert (folder / "a.wav").read_bytes() == before
    assert_one_line_error(timnet("predict", folder / "b.wav", "--model", folder / "a.wav"),
                          f"{folder / 'a.wav'}: an audio file, not a model")
    # an existing --json beside a missing input: the missing one is an error row, the rest predicted
    out = tmp_path / "out.json"
    out.write_text("[]")
    result = timnet("predict", folder / "b.wav", tmp_path / "missing.wav", "--json", out)
    rows = json.loads(out.read_text())
    assert result.returncode == 1 and rows[0]["label"] and rows[1]["error"].endswith("no such audio file")
    # a short file asked for windows it does not get is told so, and still predicted
    result = timnet("predict", folder / "a.wav", "--hop", "0.5")
    assert result.returncode == 0 and "a.wav" in result.stdout
    assert "scored in one piece (up to" in result.stderr and "hop 0.5 s makes no windows" in result.stderr
    result = timnet("predict", folder / "a.wav", "--show-windows")
    assert result.returncode == 0 and "no windows for --show-windows" in result.stderr


def test_argparse_errors_are_one_line_and_main_restores_sigterm(capsys):
    """Usage mistakes get the one-line error of every other bad input; an in-process main() (a
    notebook, a test) leaves the caller's SIGTERM handler as it found it."""
    import signal

    from timnet import cli

    before = signal.getsignal(signal.SIGTERM)
    for argv, fragment in ((["train"], "the following arguments are required"),
                           (["train", "f.npz", "-o", "r", "--epochs", "abc"], "--epochs: invalid int value"),
                           # an option the verb does not have: its own --help lists the ones it has
                           (["predict", "a.wav", "--bogus"], "unrecognized arguments: --bogus (see `timnet predict --help`)")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("timnet: error: ") and fragment in err
    assert cli.main(["corpora"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_warning_no_verb_gathers_is_a_timnet_line(monkeypatch, capsys):
    """A library warning given where no verb collects its warnings (train's seed_runs warned of a
    class with no training utterance as `.../run.py:305: UserWarning: ...`) is still the one
    `timnet: warning:` line every other warning is."""
    import warnings

    from timnet import cli

    def verb(args):
        warnings.warn("run_x: a class with no utterance to train on (fold 1: happy)", stacklevel=2)
        return 0

    monkeypatch.setattr(cli, "cmd_corpora", verb)
    assert cli.main(["corpora"]) == 0
    assert capsys.readouterr().err == "timnet: warning: run_x: a class with no utterance to train on (fold 1: happy)\n"
    with pytest.warns(UserWarning, match="after main"):  # the caller's warnings are its own again
        warnings.warn("after main", stacklevel=1)


def test_corpora_all_needs_check():
    assert_one_line_error(timnet("corpora", "--all"), "--all names the files a check found", "--check CORPUS DIR")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_signal_ends_extraction_workers(tmp_path, signame):
    """SIGTERM (`timeout`, job schedulers) or Ctrl-C to the whole process group during a parallel
    extraction: one line, the signal's status, no forked worker left behind or printing a traceback
    (nor blocked for ever on a result pipe nobody reads). SIGKILL of one worker alone (the
    out-of-memory killer): one line saying so, and the other worker ended too."""
    import os
    import signal
    import time

    sig = getattr(signal, signame)

    for k in range(600):  # about 6 s of extraction on two quiet cores: the signal lands mid-way even under load
        write_tone(tmp_path / "audio" / ("calm" if k % 2 else "angry") / f"u{k:03d}.wav", seconds=3.0, seed=k)
    out = tmp_path / "f.npz"
    proc = subprocess.Popen([sys.executable, "-m", "timnet", "extract", "folders", str(tmp_path / "audio"), "-o", str(out),
                             "--signal-length", "66150", "--workers", "2", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_open)
    deadline, children = time.time() + 60, []
    while len(children) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                    text=True).stdout.split()]
    assert proc.poll() is None, "extraction finished before it could be interrupted; make the tree larger"
    assert len(children) == 2, f"--workers 2 started {len(children)} worker processes within 60 s"

    def masks(pid):
        try:
            return {k: int(v, 16) for k, v in (line.split(":") for line in open(f"/proc/{pid}/status"))
                    if k in ("SigCgt", "SigIgn")}
        except FileNotFoundError:
            pytest.fail(f"worker {pid} ended before the signal; make the tree larger")

    # the workers' initializer has run once Ctrl-C is ignored there (a fixed sleep raced the end of
    # the extraction on a loaded machine); forked from the CLI, whose SIGTERM handler raises, a
    # worker must not keep that handler
    while time.time() < deadline and not all(masks(c)["SigIgn"] >> (signal.SIGINT - 1) & 1 for c in children):
        time.sleep(0.05)
    for c in children:
        assert not masks(c)["SigCgt"] >> (signal.SIGTERM - 1) & 1 and masks(c)["SigIgn"] >> (signal.SIGINT - 1) & 1
    assert proc.poll() is None, "extraction finished before it could be interrupted; make the tree larger"
    if sig == signal.SIGKILL:
        os.kill(children[0], sig)
    else:
        os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if sig == signal.SIGKILL:
        assert proc.returncode == 1 and err.count("\n") == 1, err
        assert err.startswith("timnet: error: an extraction worker died") and "run the same command again" in err
    else:
        assert proc.returncode == 128 + sig, err
        assert err.strip() == ("timnet: terminated" if signame == "SIGTERM" else "timnet: interrupted"), err
    time.sleep(1)
    for c in children:
        stat = f"/proc/{c}/stat"
        assert not os.path.exists(stat) or open(stat).read().split(") ")[-1].startswith("Z"), f"worker {c} outlived the run"
    assert not out.exists()


@pytest.mark.realdata
def test_authors_casia_weights_on_their_own_folds(tmp_path):
    """The authors' CASIA models score like models on unseen utterances only on the folds of their
    sample order (--order authors, the default for their weights): on SPEC.md's order they have
    trained on most of each test fold, and `test` says so."""
    weights = need(PRETRAINED / "CASIA_32")
    features = tmp_path / "casia.npz"
    assert timnet("extract", "casia", need(DATA / "CASIA"), "-o", features, "-q").returncode == 0
    spec = timnet("test", features, "--weights", weights, "--order", "spec", "--json", tmp_path / "spec.json")
    assert spec.returncode == 0 and "have seen much of these test folds" in spec.stderr
    theirs = timnet("test", features, "--weights", weights, "--json", tmp_path / "authors.json")  # their order: the default
    assert theirs.returncode == 0 and "warning" not in theirs.stderr, theirs.stderr
    spec, theirs = (json.loads((tmp_path / f).read_text()) for f in ("spec.json", "authors.json"))
    assert spec["mean_war"] > 0.98  # seen: their training utterances
    assert 0.92 < theirs["mean_war"] < 0.95  # unseen, about their own leaky 0.9467
    assert (spec["order"], theirs["order"]) == ("spec", "authors")  # the two files tell which folds they are


def test_a_run_trained_in_the_authors_order_is_tested_in_it(tmp_path):
    """`train --order authors` makes its folds on the authors' order; `test` finds that order from the
    RUN_DIR (its features' fingerprint) and scores what training scored; another order is refused."""
    from test_train import synthetic, train_cli
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    trained = train_cli(features, tmp_path / "run", "--order", "authors", "--epochs", "1", "--json", tmp_path / "train.json")
    assert trained.returncode == 0, trained.stderr
    plotted = timnet("plot", tmp_path / "run")  # its t-SNE reads the features in that order too
    assert "t-SNE skipped" not in plotted.stderr and (tmp_path / "run" / "plots" / "tsne.png").is_file(), plotted.stderr
    tested = timnet("test", features, "--weights", tmp_path / "run", "--json", tmp_path / "test.json")
    assert tested.returncode == 0, tested.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("train.json", "test.json"))
    assert [f["confusion"] for f in a["folds"]] == [f["confusion"] for f in b["folds"]]
    assert b["order"] == "authors" and "order=authors" in tested.stdout
    assert_one_line_error(timnet("test", features, "--weights", tmp_path / "run", "--order", "spec"), "--order spec: ", "trained on these features in the authors order", "leave --order out")


def _with_stdout_closed(*args) -> subprocess.CompletedProcess:
    """The CLI with a stdout whose reader has left (`timnet ... | head` once head has its lines): the
    first write fails, deterministically."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "timnet", *map(str, args)], stdout=write, stderr=subprocess.PIPE,
                              text=True)
    finally:
        os.close(write)
    return proc


def test_a_reader_leaving_stdout_costs_no_file(tmp_path):
    """`train/test ... --json J | head`: the table's reader leaving must not lose the JSON (it was
    written after the table, and the broken pipe ended the command first)."""
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    run = tmp_path / "run"
    r = _with_stdout_closed("train", features, "-o", run, "--folds", "2", "--epochs", "2", "--json", tmp_path / "train.json",
                            "-q")
    # the files written, then a shell's status for a reader that left (as `predict` and every other verb)
    assert r.returncode == 141 and "Traceback" not in r.stderr and "error" not in r.stderr, r.stderr
    assert json.loads((tmp_path / "train.json").read_text())["folds_n"] == 2 and (run / "report.html").is_file()
    r = _with_stdout_closed("test", features, "--weights", run, "--json", tmp_path / "test.json", "--plots", tmp_path / "p")
    assert r.returncode == 141 and r.stderr == "", r.stderr
    assert len(json.loads((tmp_path / "test.json").read_text())["folds"]) == 2 and (tmp_path / "p").is_dir()
    # `--json -`: the JSON is what meets the closed pipe; the plots after it are still written
    r = _with_stdout_closed("test", features, "--weights", run, "--json", "-", "--plots", tmp_path / "p2")
    assert r.returncode == 141 and "Traceback" not in r.stderr and "WAR" in r.stderr, r.stderr
    assert (tmp_path / "p2").is_dir() and not Path("-").exists()
    # with nothing left to write, the command stops at once, without a traceback
    r = _with_stdout_closed("test", features, "--weights", run)
    assert r.returncode == 141 and "Traceback" not in r.stderr, r.stderr


def test_a_progress_bar_in_a_log_file_is_whole_lines(tmp_path):
    """stderr sent to a file (not a terminal) gets the progress bar as plain lines (at its start, once a
    minute, at its end), not a terminal's carriage-return redraws, which would make an hour of training
    one line; each fold's result is a line of its own; -q leaves only those."""
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    train = ("train", features, "--folds", "2", "--epochs", "1", "--workers", "1", "--no-report")
    done = timnet(*train, "-o", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr, repr(done.stderr)
    assert len(done.stderr.splitlines()) == 4 and done.stderr.splitlines()[0] == "2 folds:   0% 0/2 ep [00:00<?]"
    assert [line.split(":")[0] for line in done.stderr.splitlines()[1:3]] == ["fold 1/2", "fold 2/2"]
    assert done.stderr.splitlines()[3].startswith("2 folds: 100% 2/2 ep [")
    quiet = timnet(*train, "-o", tmp_path / "quiet", "-q")
    assert [line.split(":")[0] for line in quiet.stderr.splitlines()] == ["fold 1/2", "fold 2/2"], quiet.stderr
    tree = tmp_path / "EMODB" / "wav"
    tree.mkdir(parents=True)
    write_tone(tree / "03a01Fa.wav", seconds=0.3)
    extracted = timnet("extract", "emodb", tmp_path / "EMODB", "-o", tmp_path / "e.npz", "--workers", "1")
    assert extracted.returncode == 0, extracted.stderr
    assert extracted.stderr.splitlines()[:2] == ["extract EMODB:   0% 0/1 file [00:00<?]",
                                                  extracted.stderr.splitlines()[1]], repr(extracted.stderr)
    assert extracted.stderr.splitlines()[1].startswith("extract EMODB: 100% 1/1 file [")
    assert "\r" not in extracted.stderr


def test_ctrl_c_while_the_command_line_is_parsed_is_one_line(monkeypatch, capsys):
    # Ctrl-C a moment after starting lands before the command runs: the same line and status as later on
    from timnet import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["corpora"]) == 130
    assert capsys.readouterr().err == "timnet: interrupted\n"
