"""`timnet organize`: OUT/<emotion>/<speaker>_<file> for all six layouts, idempotent, never destructive."""
import os

import pytest

from conftest import DATA, need, write_tone
from timnet.errors import TimnetError
from timnet.features import extract, load_features
from timnet.organize import MARKER, SPEAKER_PATTERN, organize

TREES = {
    "casia": (["liuchanhg/angry/201.wav", "wangzhe/sad/201.wav"], {"angry/liuchanhg_201.wav", "sad/wangzhe_201.wav"}),
    "emodb": (["wav/03a01Wa.wav", "wav/08a02Tb.wav"], {"angry/03_03a01Wa.wav", "sad/08_08a02Tb.wav"}),
    "emovo": (["f1/dis-f1-b1.wav", "m2/gio-m2-l3.wav"], {"disgust/f1_dis-f1-b1.wav", "happy/m2_gio-m2-l3.wav"}),
    "ravdess": (["Actor_01/03-01-05-01-01-01-01.wav", "Actor_02/03-01-01-01-01-01-02.wav", "Actor_01/03-02-05-01-01-01-01.wav"],
                {"angry/01_03-01-05-01-01-01-01.wav", "neutral/02_03-01-01-01-01-01-02.wav"}),
    "savee": (["DC/a01.wav", "JE_sa02.wav"], {"angry/DC_a01.wav", "sad/JE_JE_sa02.wav"}),
    "iemocap": (["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
                 "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav"],
                {"neutral/Ses01F_Ses01F_impro01_F000.wav", "happy/Ses01M_Ses01F_impro01_M001.wav"}),
}


def build(root, corpus):
    files, _ = TREES[corpus]
    for i, rel in enumerate(files):
        write_tone(root / rel, seed=i, seconds=0.1)
    if corpus == "iemocap":
        emo = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
        emo.parent.mkdir(parents=True)
        emo.write_text("[1.0 - 2.0]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n"
                       "[2.0 - 3.0]\tSes01F_impro01_M001\texc\t[3.5, 3.5, 2.5]\n")
    return root


@pytest.mark.parametrize("corpus", sorted(TREES))
@pytest.mark.parametrize("mode", ["link", "copy"])
def test_all_layouts(tmp_path, corpus, mode):
    src = build(tmp_path / "src", corpus)
    before = sorted((p.relative_to(src), p.stat().st_size) for p in src.rglob("*") if p.is_file())
    out = tmp_path / "out"
    r = organize(corpus, src, out, mode=mode)
    got = {p.relative_to(out).as_posix() for p in out.rglob("*.wav")}
    assert got == TREES[corpus][1] and r.written == len(got) and r.unchanged == 0
    for p in out.rglob("*.wav"):
        assert p.is_symlink() == (mode == "link") and p.stat().st_size > 0
    again = organize(corpus, src, out, mode=mode)  # idempotent
    assert again.written == 0 and again.unchanged == len(got)
    assert sorted((p.relative_to(src), p.stat().st_size) for p in src.rglob("*") if p.is_file()) == before
    if corpus == "ravdess":
        assert [reason for _, reason in r.skipped] == ["song"]


def test_refusals(tmp_path):
    src = build(tmp_path / "src", "emodb")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TimnetError, match="not empty and was not made by `timnet organize`"):
        organize("emodb", src, mine)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    out = tmp_path / "out"
    organize("emodb", src, out)
    with pytest.raises(TimnetError, match="was organised from"):
        organize("emodb", src, out, mode="copy")
    with pytest.raises(TimnetError, match="is inside .*; expected an OUT outside the corpus folder"):
        organize("emodb", src, src / "organised")
    assert not (src / "organised").exists()
    for damaged in ("{not json", "[1, 2]", "{}", '{"corpus": "EMODB"}'):  # {}: once "organised from None"
        (out / MARKER).write_text(damaged)
        with pytest.raises(TimnetError, match="is not the record `timnet organize` writes"):
            organize("emodb", src, out)


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_a_file_gone_from_src_leaves_no_dead_link(tmp_path, mode):
    """Run again after a source file went: its link is removed (no dead link for extract to trip
    on); its copy is data, so kept and named."""
    src = build(tmp_path / "src", "emodb")
    out = tmp_path / "out"
    first = organize("emodb", src, out, mode=mode)
    gone = sorted(src.rglob("*.wav"))[0]
    gone.unlink()
    again = organize("emodb", src, out, mode=mode)
    assert again.written == 0 and again.unchanged == first.written - 1
    if mode == "link":
        assert len(again.removed) == 1 and again.stale == ()
        assert not [p for p in out.rglob("*") if p.is_symlink() and not p.exists()]
        mine = out / "angry" / "mine.wav"  # a live link of the user's own into SRC: kept, named
        mine.symlink_to(sorted(src.rglob("*.wav"))[0])
        assert organize("emodb", src, out, mode=mode).stale == ("angry/mine.wav",) and mine.exists()
    else:
        assert again.removed == () and len(again.stale) == 1 and (out / again.stale[0]).is_file()
        target = next(p for p in out.rglob("*.wav"))
        halves = [target.with_name(f".{target.name}{r}.tmp") for r in (".k2_x9q", "")]  # a killed copy's leftovers
        for half in halves:
            half.write_bytes(b"RIFF")
        assert organize("emodb", src, out, mode=mode).stale == again.stale and not any(h.exists() for h in halves)


def test_a_copy_of_a_source_rewritten_since_is_made_again(tmp_path):
    """A WAV's size is its length's: a source rewritten in place keeps it, and its copy is not left
    stale for being the same size; a file not made by organize is still not overwritten."""
    src = build(tmp_path / "src", "emodb")
    out = tmp_path / "out"
    organize("emodb", src, out, mode="copy")
    source = src / "wav" / "03a01Wa.wav"
    data = bytearray(source.read_bytes())
    data[-100:] = bytes(100)
    source.write_bytes(bytes(data))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    again = organize("emodb", src, out, mode="copy")
    assert again.written == 1 and again.unchanged == 1
    assert (out / "angry" / "03_03a01Wa.wav").read_bytes() == bytes(data)
    (out / "angry" / "03_03a01Wa.wav").unlink()
    (out / "angry" / "03_03a01Wa.wav").symlink_to(tmp_path / "elsewhere.wav")
    with pytest.raises(TimnetError, match="exists and is not"):
        organize("emodb", src, out, mode="copy")


def test_organised_tree_extracts_as_folders(tmp_path):
    src = build(tmp_path / "src", "casia")
    organize("casia", src, tmp_path / "out")
    fs, _, _ = extract("folders", tmp_path / "out", signal_length=4096, speaker_pattern=SPEAKER_PATTERN,
                       workers=1, progress=False)
    assert fs.labels == ("angry", "sad") and sorted(fs.speakers.tolist()) == ["liuchanhg", "wangzhe"]


@pytest.mark.realdata
@pytest.mark.parametrize("corpus,n", [("EMODB", 535), ("CASIA", 1200)])
def test_real_corpora(tmp_path, corpus, n):
    r = organize(corpus, need(DATA / corpus), tmp_path / "out")
    assert r.written == n and sum(r.per_class.values()) == n and not r.skipped
    assert len(list((tmp_path / "out").rglob("*.wav"))) == n
    assert all(os.path.islink(p) for p in (tmp_path / "out").rglob("*.wav"))


def test_organize_command_prints_a_next_step_that_runs(tmp_path, capsys, monkeypatch):
    """The `next:` line is a working command: with its --signal-length (CASIA's 88000) and speaker pattern."""
    import shlex

    from timnet import cli

    src = build(tmp_path / "src", "casia")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")  # a training run's folder: refused in organize's words, not a figures folder's
    assert cli.main(["organize", "casia", str(src), "run"]) == 1
    assert capsys.readouterr().err == "timnet: error: run is not empty and was not made by `timnet organize`; expected an empty or new folder\n"
    assert cli.main(["organize", "casia", str(src), "out"]) == 0
    out = capsys.readouterr().out
    assert "out: 2 written, 0 already in place" in out and "per class:   angry 1, fear 0, happy 0, neutral 0, sad 1, surprise 0" in out
    step = next(line for line in out.splitlines() if line.startswith("next: "))
    argv = shlex.split(step.removeprefix("next: "))
    assert argv[:3] == ["timnet", "extract", "folders"] and argv[argv.index("--signal-length") + 1] == "88000"
    assert cli.main(argv[1:] + ["--workers", "1", "-q"]) == 0
    fs = load_features(tmp_path / "casia_folders.npz")
    assert fs.labels == ("angry", "sad") and sorted(set(fs.speakers.tolist())) == ["liuchanhg", "wangzhe"]
