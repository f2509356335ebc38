"""`timnet corpora --check`: a copy of a corpus validated against counts and the publishers' checksums."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, need, write_tone
from timnet.check import check_tree, format_check


def casia_tree(root, *, per_class=2):
    for spk in ("liuchanhg", "wangzhe"):
        for emo in ("angry", "fear", "happy", "neutral", "sad", "surprise"):
            for i in range(per_class):
                write_tone(root / spk / emo / f"{201 + i}.wav", seed=i)
    return root


def test_synthetic_tree_reports_shortfall_and_strays(tmp_path):
    root = casia_tree(tmp_path / "casia")
    write_tone(root / "wangzhe" / "bored" / "201.wav")
    (root / "liuchanhg" / "sad" / "202.wav").write_bytes(b"RIFF\x00\x00")
    r = check_tree("casia", root)
    assert not r.ok
    assert r.counts["angry"] == 4 and r.expected_counts["angry"] == 200
    assert r.speakers == {"liuchanhg": 12, "wangzhe": 12}
    assert r.sample_rates == {16000: 23} and r.channels == {1: 23}
    assert [p for p, _ in r.unexpected] == ["wangzhe/bored/201.wav"]
    assert len(r.unreadable) == 1 and r.unreadable[0].startswith("liuchanhg/sad/202.wav")
    text = format_check(r)
    assert "PROBLEMS FOUND" in text and "wangzhe/bored/201.wav" in text and "<-" in text
    assert "checksums: none shipped for CASIA" in text


def test_a_long_list_is_cut_and_all_gives_it_whole(tmp_path):
    """A partial copy of RAVDESS misses a thousand files: the account names the first 20 of each
    kind and says how many more there are; `limit=None` (`--all`) names every one."""
    from timnet.check import CheckReport

    r = CheckReport(corpus="RAVDESS", root=str(tmp_path), counts={}, expected_counts=None, speakers={},
                    missing=[f"Actor_01/03-01-01-01-01-01-{i:02d}.wav" for i in range(25)],
                    unexpected=[("a.wav", "name")])
    text = format_check(r)
    assert "missing (in the publisher's manifest, not found): 25" not in text  # no manifest in this report
    assert "missing (in the corpus's label files, not found): 25" in text
    assert "Actor_01/03-01-01-01-01-01-19.wav" in text and "-20.wav" not in text
    assert "  ... and 5 more (--all lists every one)" in text
    assert "  a.wav (unexpected name)" in text and "more (--all" not in text.split("unexpected")[1]
    whole = format_check(r, limit=None)
    assert all(f"-{i:02d}.wav" in whole for i in range(25)) and "more (--all" not in whole
    with pytest.raises(ValueError, match="limit must be >= 0 or None, got -1"):
        format_check(r, limit=-1)


def test_check_decodes_what_extract_would_refuse(tmp_path):
    """A float WAV holding NaN and one whose header says 2 Hz have readable headers; the check
    decodes each file as `extract` reads it, so both are found, not called a complete copy."""
    import numpy as np
    import soundfile as sf

    root = casia_tree(tmp_path / "casia", per_class=1)
    nan = write_tone(root / "wangzhe" / "sad" / "202.wav", subtype="FLOAT")
    data = sf.read(nan)[0]
    data[100] = np.nan
    sf.write(nan, data, 16000, subtype="FLOAT")
    slow = write_tone(root / "wangzhe" / "angry" / "202.wav")
    raw = bytearray(slow.read_bytes())
    raw[24:28] = (2).to_bytes(4, "little")  # the fmt chunk's sample rate
    slow.write_bytes(bytes(raw))
    r = check_tree("casia", root)
    assert sorted(u.split(" (")[0] for u in r.unreadable) == ["wangzhe/angry/202.wav", "wangzhe/sad/202.wav"]
    assert any("NaN" in u for u in r.unreadable) and any("2 Hz" in u for u in r.unreadable)
    assert not any(str(root) in u for u in r.unreadable)  # the report names files from its root, once
    assert not r.ok


@pytest.mark.realdata
def test_real_corpora_complete():
    for corpus in ("EMODB", "CASIA"):
        r = check_tree(corpus, need(DATA / corpus))
        assert r.ok, format_check(r)
    assert len(check_tree("emodb", DATA / "EMODB").speakers) == 10



@pytest.mark.realdata
def test_a_copy_with_the_counts_but_another_speaker_is_not_complete(tmp_path):
    """CASIA with one speaker's angry folder filed under a fifth name has every class's files, but
    leave-one-speaker-out folds would not be the corpus's: that folder is not one of SPEC's four
    speakers, so its files are not used and the check names them."""
    src = need(DATA / "CASIA")
    copy = tmp_path / "CASIA"
    for speaker in src.iterdir():
        for emotion in speaker.iterdir():
            owner = "liuchanhg_2" if (speaker.name, emotion.name) == ("liuchanhg", "angry") else speaker.name
            (copy / owner).mkdir(parents=True, exist_ok=True)
            (copy / owner / emotion.name).symlink_to(emotion)
    r = check_tree("casia", copy)
    assert r.counts == {**r.expected_counts, "angry": 150} and not r.unreadable and not r.ok
    assert sorted(r.speakers) == ["ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin"]
    assert len(r.unexpected) == 50 and r.unexpected[0] == ("liuchanhg_2/angry/201.wav",
                                                            "speaker folder 'liuchanhg_2' unknown, not liuchanhg/wangzhe/zhaoquanyin/ZhaoZuoxiang")
    assert "unexpected (not used): 50\n  liuchanhg_2/angry/201.wav (speaker folder 'liuchanhg_2' unknown, not " in format_check(r)


@pytest.mark.realdata
def test_emodb_copy_missing_extra_and_altered_by_name(tmp_path):
    src = need(DATA / "EMODB")
    copy = tmp_path / "download" / "EMODB"  # one level below the user's root, as unpacked archives often are
    shutil.copytree(src, copy)
    (copy / "wav" / "03a01Fa.wav").unlink()
    shutil.copy(copy / "wav" / "03a01Wa.wav", copy / "wav" / "16b99Wa.wav")  # right name, not published
    data = bytearray((copy / "wav" / "08a01Lc.wav").read_bytes())
    data[-1] ^= 1
    (copy / "wav" / "08a01Lc.wav").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "timnet", "corpora", "--check", "emodb", str(tmp_path / "download")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == (f"timnet: error: {tmp_path / 'download'}: 1 missing, 1 altered, 1 unexpected, "
                                              "class counts not the corpus's (the EMODB check's report on stdout names them)\n")
    assert "missing (in the publisher's manifest, not found): 1\n  EMODB/wav/03a01Fa.wav" in r.stdout
    assert "EMODB/wav/16b99Wa.wav (not in the publisher's manifest)" in r.stdout
    assert "altered (sha256 differs from the manifest): 1\n  EMODB/wav/08a01Lc.wav" in r.stdout
    assert "checksums: 533 of the publisher's 535 files match their sha256" in r.stdout  # one missing, one altered


@pytest.mark.realdata
def test_emodb_checked_from_its_wav_folder_and_with_an_uppercase_extension(tmp_path):
    """`extract` takes EMODB's wav/ folder itself and reads 03a01Nc.WAV as 03a01Nc.wav: the check
    does too, instead of calling every file missing and unexpected."""
    wav = tmp_path / "wav"
    wav.mkdir()
    for f in sorted((need(DATA / "EMODB") / "wav").glob("*.wav")):
        (wav / (f.name if f.name != "03a01Nc.wav" else "03a01Nc.WAV")).symlink_to(f)
    for root in (tmp_path, wav):
        r = check_tree("emodb", root)
        assert r.ok and not r.missing and not r.unexpected, format_check(r)
    (wav / "03a01Fa.wav").unlink()
    assert check_tree("emodb", wav).missing == ["03a01Fa.wav"]
    (wav / "03a01Fa.wav").symlink_to(need(DATA / "EMODB") / "wav" / "03a01Fa.wav")
    (tmp_path / "16b10Wb.wav").symlink_to(wav / "16b10Wb.wav")  # a second copy beside the folder: not damage
    r = check_tree("emodb", tmp_path)
    assert r.ok and not r.missing and not r.unexpected, format_check(r)


def test_ravdess_checked_from_one_actor_or_a_flat_folder(tmp_path):
    """The publisher's files are found by name where extract reads them: one actor's folder given
    itself, or several actors' files in one folder; the rest are missing under the same place."""
    from timnet.check import read_manifest

    names = [k for k in read_manifest("RAVDESS") if k.startswith(("Actor_05/", "Actor_06/"))]
    for rel in names:
        write_tone(tmp_path / "flat" / rel.split("/")[1], seconds=0.05)
        if rel.startswith("Actor_05/"):
            write_tone(tmp_path / "one" / rel.split("/")[1], seconds=0.05)
    for folder, n in (("one", 60), ("flat", 120)):
        r = check_tree("ravdess", tmp_path / folder)
        assert len(r.altered) == n and not r.unexpected, format_check(r)  # synthetic audio: right names, other bytes
        assert len(r.missing) == 1440 - n and "Actor_01/03-01-01-01-01-01-01.wav" in r.missing


def test_song_files_and_second_copies_are_listed_not_problems(tmp_path):
    """A RAVDESS folder holding the song recordings too, or a mirror's second copy of the tree,
    is not damaged: those files are listed as ignored and do not fail the check."""
    root = tmp_path / "ravdess"
    write_tone(root / "Actor_01" / "03-01-05-01-01-01-01.wav")
    write_tone(root / "Actor_01" / "03-02-05-01-01-01-01.wav")  # vocal channel 02: song
    write_tone(root / "copy" / "Actor_01" / "03-01-05-01-01-01-01.wav")  # the same utterance again
    write_tone(root / "other" / "Actor_01" / "03-01-05-01-01-01-01.wav", seed=7)  # the same name, other sound
    write_tone(root / "Actor_01" / "notes.wav")
    r = check_tree("ravdess", root)
    assert sorted(r.ignored) == [("Actor_01/03-02-05-01-01-01-01.wav", "song"),
                                 ("copy/Actor_01/03-01-05-01-01-01-01.wav", "duplicate of Actor_01/03-01-05-01-01-01-01.wav")]
    assert [p for p, why in r.unexpected if "manifest" not in why] == ["Actor_01/notes.wav",
                                                                      "other/Actor_01/03-01-05-01-01-01-01.wav"]
    assert "ignored (part of the corpus's distribution" in format_check(r)
    # a second copy that cannot be read (a broken link) is a finding of the check, not its end
    (root / "copy" / "Actor_01" / "03-01-05-01-01-01-01.wav").unlink()
    (root / "copy" / "Actor_01" / "03-01-05-01-01-01-01.wav").symlink_to(tmp_path / "gone.wav")
    r = check_tree("ravdess", root)
    assert ("copy/Actor_01/03-01-05-01-01-01-01.wav", "duplicate of Actor_01/03-01-05-01-01-01-01.wav") in r.unexpected


@pytest.mark.realdata
def test_odd_names_and_dangling_links_are_findings_not_crashes(tmp_path):
    copy = tmp_path / "EMODB"
    shutil.copytree(need(DATA / "EMODB"), copy)
    (copy / "wav" / "03a01Fa.wav").rename(os.fsdecode(str(copy / "wav").encode() + b"/caf\xe9.wav"))
    (copy / "wav" / "03a01Wa.wav").unlink()
    (copy / "wav" / "03a01Wa.wav").symlink_to(tmp_path / "gone.wav")
    r = subprocess.run([sys.executable, "-m", "timnet", "corpora", "--check", "emodb", str(copy)],
                       capture_output=True, text=True, errors="replace")  # the Latin-1 name is printed as its bytes
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "unreadable: 1\n  wav/03a01Wa.wav (" in r.stdout and "missing (in the publisher's manifest, not found): 1" in r.stdout


@pytest.mark.realdata
def test_a_file_that_cannot_be_hashed_is_not_counted_a_match_and_a_quoted_home_is_expanded(tmp_path, monkeypatch):
    """A dangling link is unreadable, not one of the files whose sha256 matches; and '~/E' (quoted,
    so the shell left it) is the home folder's E, as `extract` reads it."""
    wav = tmp_path / "E" / "wav"
    wav.mkdir(parents=True)
    for f in sorted((need(DATA / "EMODB") / "wav").glob("*.wav")):
        (wav / f.name).symlink_to(f)
    (wav / "03a01Fa.wav").unlink()
    (wav / "03a01Fa.wav").symlink_to(tmp_path / "gone.wav")
    monkeypatch.setenv("HOME", str(tmp_path))
    r = check_tree("emodb", "~/E")
    assert r.root == str(tmp_path / "E") and r.matched == 534 and not r.ok
    assert [u.split(" ")[0] for u in r.unreadable] == ["wav/03a01Fa.wav"]
    assert "checksums: 534 of the publisher's 535 files match" in format_check(r)
