"""Corpus registry and layout walkers: mock corpus trees in a temp dir, plus the real EMODB/CASIA."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import DATA, REFERENCE, need
from timnet.check import read_manifest
from timnet.corpora import (
    AUDIO_EXTENSIONS,
    CORPORA,
    Item,
    Listing,
    get_corpus,
    list_corpus,
    natural_key,
    skip_summary,
)
from timnet.errors import TimnetError


def write_wav(path: Path, *, seconds=0.1, sr=16000, channels=1, subtype="PCM_16", seed=0):
    """A short clip of seeded noise, as real corpora are wav files of varied formats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(seconds * sr), channels))
    sf.write(path, noise.astype(np.float32), sr, subtype=subtype)


def write_tree(root: Path, paths, *, seed=0):
    """Write a wav for each path (a real 48 kHz 24-bit stereo one for every path marked '!')."""
    for i, rel in enumerate(paths):
        if rel.startswith("!"):
            write_wav(root / rel[1:], sr=48000, channels=2, subtype="PCM_24", seed=seed + i)
        else:
            write_wav(root / rel, seed=seed + i)


def touch(path: Path, data: bytes = b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def summary_of(listing: Listing):
    return [(item.path, get_label(listing, item), item.speaker) for item in listing.items]


def get_label(listing: Listing, item: Item) -> str:
    return CORPORA[listing.corpus].labels[item.label]


def assert_sample_order(listing: Listing):
    keys = [(item.label, natural_key(item.path)) for item in listing.items]
    assert keys == sorted(keys)


# --- registry ---------------------------------------------------------------------------------

REGISTRY = {
    "CASIA": (("angry", "fear", "happy", "neutral", "sad", "surprise"), 88000, 32, 8, 4, 1200),
    "EMODB": (("angry", "boredom", "disgust", "fear", "happy", "neutral", "sad"), 96000, 46, 8, 10, 535),
    "EMOVO": (("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"), 96000, 1, 8, 6, 588),
    "IEMOCAP": (("angry", "happy", "neutral", "sad"), 310000, 16, 10, 10, 5531),
    "RAVDESS": (
        ("angry", "calm", "disgust", "fear", "happy", "neutral", "sad", "surprise"), 110000, 46, 8, 24, 1440,
    ),
    "SAVEE": (("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"), 130000, 44, 8, 4, 480),
}


def test_registry_order_and_names():
    assert list(CORPORA) == ["CASIA", "EMODB", "EMOVO", "IEMOCAP", "RAVDESS", "SAVEE"]
    assert all(name == corpus.name for name, corpus in CORPORA.items())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_facts(name):
    corpus = CORPORA[name]
    labels, signal_length, seed, dilations, n_speakers, n_files = REGISTRY[name]
    assert corpus.labels == labels
    assert (corpus.signal_length, corpus.seed, corpus.dilations) == (signal_length, seed, dilations)
    assert (corpus.n_speakers, corpus.n_files) == (n_speakers, n_files)
    assert corpus.layout and "\n" not in corpus.layout
    assert callable(corpus.scan)


def test_audio_extensions():
    """Each extension names a format this libsndfile reads (test_folders reads a file of each)."""
    import soundfile as sf

    container = {".wave": "WAV", ".oga": "OGG", ".opus": "OGG", ".aif": "AIFF", ".aifc": "AIFF", ".snd": "AU"}
    assert {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3"} <= set(AUDIO_EXTENSIONS)
    for ext in AUDIO_EXTENSIONS:
        assert container.get(ext, ext[1:].upper()) in sf.available_formats(), ext


@pytest.mark.parametrize("name", ["emodb", "EMODB", "EmoDB", "Ravdess", "iemocap"])
def test_get_corpus_any_case(name):
    assert get_corpus(name) is CORPORA[name.upper()]


def test_get_corpus_unknown():
    with pytest.raises(TimnetError) as error:
        get_corpus("foo")
    assert str(error.value) == (
        "unknown corpus 'foo'; expected one of casia, emodb, emovo, iemocap, ravdess, savee"
    )


def test_natural_key():
    names = ["wav/a10.wav", "wav/a2.wav", "wav/B1.wav", "wav/a2b.wav", "wav/a1.wav", "1.wav", "wav/a"]
    assert sorted(names, key=natural_key) == [
        "1.wav", "wav/B1.wav", "wav/a", "wav/a1.wav", "wav/a2.wav", "wav/a2b.wav", "wav/a10.wav",
    ]
    assert natural_key("03a01Wa.wav") < natural_key("03a02Wb.wav") < natural_key("10a01Wa.wav")


# --- the six layouts, every emotion code --------------------------------------------------------

# One file per emotion code of each layout: guards the code tables against typos.
EVERY_CODE = {
    "EMODB": [
        ("wav/03a01Wa.wav", "angry"), ("wav/03a01La.wav", "boredom"), ("wav/03a01Ea.wav", "disgust"),
        ("wav/03a01Aa.wav", "fear"), ("wav/03a01Fa.wav", "happy"), ("wav/03a01Na.wav", "neutral"),
        ("wav/03a01Ta.wav", "sad"),
    ],
    "CASIA": [(f"wangzhe/{label}/201.wav", label) for label in REGISTRY["CASIA"][0]],
    "EMOVO": [
        ("f1/rab-f1-b1.wav", "angry"), ("f1/dis-f1-b1.wav", "disgust"), ("f1/pau-f1-b1.wav", "fear"),
        ("f1/gio-f1-b1.wav", "happy"), ("f1/neu-f1-b1.wav", "neutral"), ("f1/tri-f1-b1.wav", "sad"),
        ("f1/sor-f1-b1.wav", "surprise"),
    ],
    "RAVDESS": [
        ("Actor_01/03-01-05-01-01-01-01.wav", "angry"), ("Actor_01/03-01-02-01-01-01-01.wav", "calm"),
        ("Actor_01/03-01-07-01-01-01-01.wav", "disgust"), ("Actor_01/03-01-06-01-01-01-01.wav", "fear"),
        ("Actor_01/03-01-03-01-01-01-01.wav", "happy"), ("Actor_01/03-01-01-01-01-01-01.wav", "neutral"),
        ("Actor_01/03-01-04-01-01-01-01.wav", "sad"), ("Actor_01/03-01-08-01-01-01-01.wav", "surprise"),
    ],
    "SAVEE": [
        ("DC/a01.wav", "angry"), ("DC/d01.wav", "disgust"), ("DC/f01.wav", "fear"), ("DC/h01.wav", "happy"),
        ("DC/n01.wav", "neutral"), ("DC/sa01.wav", "sad"), ("DC/su01.wav", "surprise"),
    ],
}


@pytest.mark.parametrize("name", list(EVERY_CODE))
def test_every_emotion_code(tmp_path, name):
    write_tree(tmp_path, [path for path, _ in EVERY_CODE[name]])
    listing = list_corpus(name, tmp_path)
    assert listing.skipped == ()
    found = {item.path: get_label(listing, item) for item in listing.items}
    assert found == dict(EVERY_CODE[name])
    assert [item.label for item in listing.items] == list(range(len(CORPORA[name].labels)))


# --- EMODB ------------------------------------------------------------------------------------


def test_emodb_tree(tmp_path):
    # the user points at the parent of wav/: an extra top-level folder is tolerated
    wav = tmp_path / "EMODB" / "wav"
    write_tree(tmp_path, [
        "EMODB/wav/10a01Wa.wav", "EMODB/wav/03a02Wb.wav", "!EMODB/wav/03a01Wa.wav", "EMODB/wav/11a01Tc.wav",
        "EMODB/wav/08b01La.wav", "EMODB/wav/16b10Nb.wav", "EMODB/wav/03a01Fa.wav",
        "EMODB/wav/notes.wav",  # audio with a wrong name: reported
        "EMODB/wav/03a01Wa.flac",  # right name, not the layout's format: reported
    ])
    touch(wav / "16b10Wb.wav")  # a 0-byte file: listed; the audio loader refuses it by name
    touch(wav / "._03a02Wb.wav", b"mac")  # macOS resource fork: silent
    touch(tmp_path / "EMODB" / ".cache" / "03a05Wa.wav", b"x")  # hidden folder: silent
    touch(tmp_path / "EMODB" / "README.txt", b"EMODB")  # not audio: silent
    touch(tmp_path / "EMODB" / "silb" / "03a01Wa.sil", b"x")
    listing = list_corpus("emodb", tmp_path)
    assert listing.corpus == "EMODB"
    assert summary_of(listing) == [
        ("EMODB/wav/03a01Wa.wav", "angry", "03"),
        ("EMODB/wav/03a02Wb.wav", "angry", "03"),
        ("EMODB/wav/10a01Wa.wav", "angry", "10"),
        ("EMODB/wav/16b10Wb.wav", "angry", "16"),
        ("EMODB/wav/08b01La.wav", "boredom", "08"),
        ("EMODB/wav/03a01Fa.wav", "happy", "03"),
        ("EMODB/wav/16b10Nb.wav", "neutral", "16"),
        ("EMODB/wav/11a01Tc.wav", "sad", "11"),
    ]
    assert listing.skipped == (
        ("EMODB/wav/03a01Wa.flac", "not .wav"),
        ("EMODB/wav/notes.wav", "name"),
    )


def test_of_two_copies_differing_in_case_the_lower_case_name_is_kept(tmp_path):
    """`x.WAV` sorts first (ASCII puts upper case first), yet the conventional `x.wav` is kept."""
    write_tree(tmp_path, ["wav/03a01Fa.WAV", "wav/03a01Fa.wav"])
    if len(list((tmp_path / "wav").iterdir())) < 2:
        pytest.skip("this file system does not tell names apart by case")
    listing = list_corpus("emodb", tmp_path)
    assert [item.path for item in listing.items] == ["wav/03a01Fa.wav"]
    assert listing.skipped == (("wav/03a01Fa.WAV", "duplicate of wav/03a01Fa.wav"),)


def test_listing_is_frozen_and_typed(tmp_path):
    write_tree(tmp_path, ["wav/03a01Wa.wav"])
    listing = list_corpus(CORPORA["EMODB"], str(tmp_path))  # a Corpus and a str path work too
    assert isinstance(listing.items, tuple) and isinstance(listing.skipped, tuple)
    assert listing.items == (Item(path="wav/03a01Wa.wav", label=0, speaker="03"),)
    with pytest.raises(AttributeError):
        listing.items[0].label = 3


# --- CASIA ------------------------------------------------------------------------------------


def test_casia_tree(tmp_path):
    write_tree(tmp_path, [
        "liuchanhg/sad/10.wav", "liuchanhg/sad/2.wav", "liuchanhg/angry/201.wav",
        "ZhaoZuoxiang/angry/201.wav", "ZhaoZuoxiang/Surprise/250.wav", "!wangzhe/fear/203.wav",
        "wangzhe/bored/201.wav",  # not one of the six emotions
        "wangzhe/fear/take2.wav",  # not <NNN>.wav
        "zhaozuoxiang/surprise/250.wav",  # a second copy, its folders spelled in lower case: not a fifth speaker
        "WANGZHE/sad/204.wav",  # a speaker folder in other case: SPEC's spelling of the speaker
        "readme/angry/201.wav",  # not one of SPEC's four speakers: not a fifth speaker's fold
        "stray.wav",
    ])
    touch(tmp_path / "readme.txt", b"CASIA")
    listing = list_corpus("casia", tmp_path)
    assert summary_of(listing) == [
        ("ZhaoZuoxiang/angry/201.wav", "angry", "ZhaoZuoxiang"),
        ("liuchanhg/angry/201.wav", "angry", "liuchanhg"),
        ("wangzhe/fear/203.wav", "fear", "wangzhe"),
        ("WANGZHE/sad/204.wav", "sad", "wangzhe"),  # the path's natural order is case-sensitive (SPEC §1)
        ("liuchanhg/sad/2.wav", "sad", "liuchanhg"),  # natural order: 2 before 10
        ("liuchanhg/sad/10.wav", "sad", "liuchanhg"),
        ("ZhaoZuoxiang/Surprise/250.wav", "surprise", "ZhaoZuoxiang"),
    ]
    assert listing.skipped == (
        ("readme/angry/201.wav", "speaker folder 'readme' unknown, not liuchanhg/wangzhe/zhaoquanyin/ZhaoZuoxiang"),
        ("stray.wav", "name"),
        ("wangzhe/bored/201.wav", "emotion folder 'bored', not angry/fear/happy/neutral/sad/surprise"),
        ("wangzhe/fear/take2.wav", "name"),
        ("zhaozuoxiang/surprise/250.wav", "duplicate of ZhaoZuoxiang/Surprise/250.wav"),
    )


# --- EMOVO ------------------------------------------------------------------------------------


def test_emovo_tree(tmp_path):
    write_tree(tmp_path, [
        "EMOVO/f1/neu-f1-n10.wav", "EMOVO/f1/neu-f1-n2.wav", "!EMOVO/m3/rab-m3-l2.wav",
        "EMOVO/m2/tri-m2-d1.wav", "EMOVO/m2/xyz-m2-d1.wav", "EMOVO/m2/tri-m2.wav",
    ])
    touch(tmp_path / "EMOVO" / "documents" / "frasi.pdf", b"%PDF")
    listing = list_corpus("EMOVO", tmp_path)
    assert summary_of(listing) == [
        ("EMOVO/m3/rab-m3-l2.wav", "angry", "m3"),
        ("EMOVO/f1/neu-f1-n2.wav", "neutral", "f1"),
        ("EMOVO/f1/neu-f1-n10.wav", "neutral", "f1"),
        ("EMOVO/m2/tri-m2-d1.wav", "sad", "m2"),
    ]
    assert listing.skipped == (("EMOVO/m2/tri-m2.wav", "name"), ("EMOVO/m2/xyz-m2-d1.wav", "emotion 'xyz', not dis/gio/neu/pau/rab/sor/tri"))


# --- RAVDESS ----------------------------------------------------------------------------------


@pytest.fixture
def ravdess(tmp_path):
    write_tree(tmp_path, [
        "Actor_01/03-01-05-01-01-01-01.wav",
        "Actor_01/03-02-05-01-01-01-01.wav",  # song
        "Actor_02/03-01-01-01-01-01-02.wav",
        "Actor_02/03-01-02-02-02-02-02.wav",
        "!Actor_10/03-01-05-02-01-02-10.wav",  # 48 kHz 24-bit stereo, as a few real ones are
        "Actor_02/03-01-05-01-01-02-02.wav",
        "Actor_02/01-01-05-01-01-01-02.wav",  # audio-video modality
        "Actor_02/03-01-09-01-01-01-02.wav",  # no emotion 09
        "README.wav",
        # some re-packaged downloads hold a second copy of the tree: the shallower copy wins
        "audio_speech_actors_01-24/Actor_01/03-01-05-01-01-01-01.wav",
    ])
    touch(tmp_path / "README.txt", b"RAVDESS")
    touch(tmp_path / "Actor_01" / "02-01-05-01-01-01-01.mp4", b"video")
    return tmp_path


def test_ravdess_tree(ravdess):
    listing = list_corpus("ravdess", ravdess)
    assert summary_of(listing) == [
        ("Actor_01/03-01-05-01-01-01-01.wav", "angry", "01"),
        ("Actor_02/03-01-05-01-01-02-02.wav", "angry", "02"),
        ("Actor_10/03-01-05-02-01-02-10.wav", "angry", "10"),
        ("Actor_02/03-01-02-02-02-02-02.wav", "calm", "02"),
        ("Actor_02/03-01-01-01-01-01-02.wav", "neutral", "02"),
    ]
    assert listing.skipped == (
        ("Actor_01/03-02-05-01-01-01-01.wav", "song"),
        ("Actor_02/01-01-05-01-01-01-02.wav", "modality 01, not audio-only"),
        ("Actor_02/03-01-09-01-01-01-02.wav", "emotion 09, not 01-08"),
        ("README.wav", "name"),
        ("audio_speech_actors_01-24/Actor_01/03-01-05-01-01-01-01.wav",
         "duplicate of Actor_01/03-01-05-01-01-01-01.wav"),
    )
    info = sf.info(ravdess / listing.items[2].path)  # the walker left the 24-bit stereo file alone
    assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "PCM_24")


def test_ravdess_names_outside_its_ranges_are_not_new_actors_or_takes(tmp_path):
    write_tree(tmp_path, [
        "Actor_01/03-01-05-01-01-01-01.wav",
        "Actor_25/03-01-05-01-01-01-25.wav",  # RAVDESS has 24 actors
        "Actor_00/03-01-05-01-01-01-00.wav",
        "Actor_01/03-01-01-02-01-01-01.wav",  # neutral has no strong intensity
        "Actor_01/03-01-05-03-01-01-01.wav",
        "Actor_01/03-01-05-01-03-01-01.wav",  # two statements, two repetitions
        "Actor_01/03-01-05-01-01-03-01.wav",
    ])
    listing = list_corpus("ravdess", tmp_path)
    assert summary_of(listing) == [("Actor_01/03-01-05-01-01-01-01.wav", "angry", "01")]
    assert listing.skipped == (
        ("Actor_00/03-01-05-01-01-01-00.wav", "actor 00, not 01-24"),
        ("Actor_01/03-01-01-02-01-01-01.wav", "intensity 02 (neutral has only 01)"),
        ("Actor_01/03-01-05-01-01-03-01.wav", "statement 01, repetition 03: expected 01 or 02"),
        ("Actor_01/03-01-05-01-03-01-01.wav", "statement 03, repetition 01: expected 01 or 02"),
        ("Actor_01/03-01-05-03-01-01-01.wav", "intensity 03"),
        ("Actor_25/03-01-05-01-01-01-25.wav", "actor 25, not 01-24"),
    )


def test_symlinked_alias_keeps_the_real_folder_and_tilde_roots_are_read(ravdess, monkeypatch):
    """A convenience link to a speaker's folder (`zz_latest -> Actor_01`) holds second copies:
    the first of the two names in natural order is kept, whatever order the file system lists
    them in (the kept path decides the sample order). A link back up the tree (a loop) is cut.
    A `~/...` root is listed and read alike."""
    want = summary_of(list_corpus("ravdess", ravdess))
    (ravdess / "zz_latest").symlink_to(ravdess / "Actor_01", target_is_directory=True)
    (ravdess / "Actor_01" / "up").symlink_to(ravdess, target_is_directory=True)
    listing = list_corpus("ravdess", ravdess)
    assert summary_of(listing) == want
    assert ("zz_latest/03-01-05-01-01-01-01.wav", "duplicate of Actor_01/03-01-05-01-01-01-01.wav") in listing.skipped
    assert not any("/up/" in path for path, _ in listing.skipped)
    (ravdess / "Actor_01" / "up").unlink()

    from timnet.features import extract
    monkeypatch.setenv("HOME", str(ravdess.parent))
    fs, _, bad = extract("ravdess", f"~/{ravdess.name}", workers=1, progress=False)
    assert not bad and list(fs.files) == [w[0] for w in want]


def test_skip_summary(ravdess):
    listing = list_corpus("ravdess", ravdess)
    # the song, which every complete copy holds, comes after what may be wrong
    assert skip_summary(listing) == (
        "skipped 5 files not used as RAVDESS utterances (1 modality 01, not audio-only; 1 emotion 09, not 01-08; "
        "1 unexpected name; 1 duplicate; 1 song): "
        "Actor_02/01-01-05-01-01-01-02.wav (modality 01, not audio-only), "
        "Actor_02/03-01-09-01-01-01-02.wav (emotion 09, not 01-08), README.wav (unexpected name), "
        "audio_speech_actors_01-24/Actor_01/03-01-05-01-01-01-01.wav "
        "(duplicate of Actor_01/03-01-05-01-01-01-01.wav), "
        "Actor_01/03-02-05-01-01-01-01.wav (song); RAVDESS names its files Actor_NN/03-01-EE-II-SS-RR-NN.wav (modality 03 audio-only, channel 01 speech, "
        "emotion EE 01=neutral 02=calm 03=happy 04=sad 05=angry 06=fear 07=disgust 08=surprise, intensity 01-02, statement "
        "01-02, repetition 01-02, actor 01-24)"
    )
    assert skip_summary(listing, limit=2) == (
        "skipped 5 files not used as RAVDESS utterances (1 modality 01, not audio-only; 1 emotion 09, not 01-08; "
        "1 unexpected name; 1 duplicate; 1 song): "
        "Actor_02/01-01-05-01-01-01-02.wav (modality 01, not audio-only), "
        "Actor_02/03-01-09-01-01-01-02.wav (emotion 09, not 01-08) (+3 more); RAVDESS names its files Actor_NN/03-01-EE-II-SS-RR-NN.wav (modality 03 audio-only, channel 01 speech, "
        "emotion EE 01=neutral 02=calm 03=happy 04=sad 05=angry 06=fear 07=disgust 08=surprise, intensity 01-02, statement "
        "01-02, repetition 01-02, actor 01-24)"
    )
    # one reason for all, said once in the count rather than after every name
    many = Listing(items=listing.items, skipped=tuple((f"a{i}.wav", "name") for i in range(7)))
    assert skip_summary(many, limit=2) == "skipped 7 files (7 unexpected name): a0.wav, a1.wav (+5 more)"
    assert skip_summary(Listing(items=listing.items, skipped=(("x.wav", "name"),))) == (
        "skipped 1 file: x.wav (unexpected name)"
    )
    assert skip_summary(Listing(items=listing.items, skipped=())) is None


# --- SAVEE ------------------------------------------------------------------------------------


def test_savee_tree(tmp_path):
    write_tree(tmp_path, [
        "AudioData/DC/su02.wav", "AudioData/DC/sa01.wav", "!AudioData/JK/a10.wav", "AudioData/JK/a02.wav",
        "ALL/KL_n05.wav",  # the flattened naming
        "ALL/je_f03.wav",  # flattened, the speaker in lower case (as a folder may be)
        "ALL/DC_sa01.wav",  # the same recording twice: the shallower copy wins
        "AudioData/XX/a01.wav", "AudioData/DC/x01.wav",
        "n02.wav",  # no speaker at all: DIR was one speaker's folder
    ])
    touch(tmp_path / "AudioData" / "Info.txt", b"SAVEE")
    listing = list_corpus("savee", tmp_path)
    assert summary_of(listing) == [
        ("AudioData/JK/a02.wav", "angry", "JK"),
        ("AudioData/JK/a10.wav", "angry", "JK"),
        ("ALL/je_f03.wav", "fear", "JE"),
        ("ALL/KL_n05.wav", "neutral", "KL"),
        ("ALL/DC_sa01.wav", "sad", "DC"),
        ("AudioData/DC/su02.wav", "surprise", "DC"),
    ]
    assert listing.skipped == (
        ("AudioData/DC/sa01.wav", "duplicate of ALL/DC_sa01.wav"),
        ("AudioData/DC/x01.wav", "name"),
        ("AudioData/XX/a01.wav", "speaker XX unknown, not DC/JE/JK/KL"),
        ("n02.wav", "no speaker folder (DC/JE/JK/KL) or DC_ prefix: pass the corpus folder, not one speaker's"),
    )


@pytest.mark.parametrize("corpus, files, kept, skipped", [
    # a copy filed by hand in another actor's folder: the name's actor is the speaker, and the copy in
    # that actor's own folder is the one kept, although the misfiled one sorts first
    ("ravdess", ["Actor_01/03-01-05-01-01-01-02.wav", "Actor_02/03-01-05-01-01-01-02.wav", "Actor_03/03-01-04-01-01-01-01.wav"],
     [("Actor_02/03-01-05-01-01-01-02.wav", "angry", "02"), ("Actor_03/03-01-04-01-01-01-01.wav", "sad", "01")],
     [("Actor_01/03-01-05-01-01-01-02.wav", "duplicate of Actor_02/03-01-05-01-01-01-02.wav")]),
    # alone, a misfiled file is still used, under the speaker its name gives
    ("emovo", ["f2/rab-f1-d1.wav", "F1/rab-f1-d2.wav", "other/rab-m1-d1.wav"],
     [("F1/rab-f1-d2.wav", "angry", "f1"), ("f2/rab-f1-d1.wav", "angry", "f1"), ("other/rab-m1-d1.wav", "angry", "m1")],
     []),
    # SAVEE: a prefix naming another speaker than its folder; upper-case codes are the same recordings
    ("savee", ["DC/JE_a01.wav", "JE/a01.wav", "DC/SA02.wav", "jk/Su03.wav", "ALL/KL_N04.wav"],
     [("JE/a01.wav", "angry", "JE"), ("ALL/KL_N04.wav", "neutral", "KL"), ("DC/SA02.wav", "sad", "DC"),
      ("jk/Su03.wav", "surprise", "JK")],
     [("DC/JE_a01.wav", "duplicate of JE/a01.wav")]),
])
def test_speaker_folder_and_name_disagreeing(tmp_path, corpus, files, kept, skipped):
    write_tree(tmp_path, files)
    listing = list_corpus(corpus, tmp_path)
    assert summary_of(listing) == kept
    assert list(listing.skipped) == skipped


# --- IEMOCAP ----------------------------------------------------------------------------------

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def evaluation(*lines):
    """An EmoEvaluation file: a header, then label lines each followed by annotator lines."""
    body = "".join(
        f"[{i}.1000 - {i}.9000]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]\nC-E1:\tOther;\t()\n\n"
        for i, (utt, code) in enumerate(lines)
    )
    return HEADER + body


@pytest.fixture
def iemocap(tmp_path):
    s1 = tmp_path / "IEMOCAP_full_release" / "Session1"
    s3 = tmp_path / "IEMOCAP_full_release" / "Session3"
    touch(s1 / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt", evaluation(
        ("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "fru"), ("Ses01F_impro01_F001", "exc"),
        ("Ses01F_impro01_M001", "xxx"), ("Ses01F_impro01_F002", "ang"), ("Ses01F_impro01_M002", "neu"),
    ).encode())
    # per-annotator files in EmoEvaluation's subfolders are not the labels
    touch(s1 / "dialog" / "EmoEvaluation" / "Categorical" / "Ses01F_impro01_e1_cat.txt",
          evaluation(("Ses01F_impro01_F003", "ang")).encode())
    # extra whitespace instead of tabs is tolerated
    touch(s3 / "dialog" / "EmoEvaluation" / "Ses03M_script01_2.txt", (
        HEADER + "[ 1.0 - 2.5 ]  Ses03M_script01_2_F012   sad  [2.0, 2.0, 2.0]\n"
        "[3.0 - 4.5]\tSes03M_script01_2_M003\thap\t[4.0, 3.0, 3.0]\n"
        "[5.0 - 6.5]\tSes03M_script01_2_M004\tang\t[2.0, 4.0, 4.0]\n"
    ).encode())
    # IEMOCAP has a few turns named with XX before the number (Ses03F_impro06_FXX0)
    touch(s3 / "dialog" / "EmoEvaluation" / "Ses03F_impro06.txt", evaluation(("Ses03F_impro06_FXX0", "sad")).encode())
    wav1 = "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/"
    wav3 = "IEMOCAP_full_release/Session3/sentences/wav/Ses03M_script01_2/"
    write_tree(tmp_path, [
        wav1 + "Ses01F_impro01_F000.wav", wav1 + "Ses01F_impro01_M000.wav", wav1 + "Ses01F_impro01_F001.wav",
        wav1 + "Ses01F_impro01_M001.wav", wav1 + "Ses01F_impro01_M002.wav",  # no F002: labelled, missing
        wav1 + "Ses01F_impro01_F003.wav",  # only labelled in a subfolder
        wav3 + "Ses03M_script01_2_F012.wav", "!" + wav3 + "Ses03M_script01_2_M003.wav", wav3 + "Ses03M_script01_2_M004.wav",
        "IEMOCAP_full_release/Session1/dialog/wav/Ses01F_impro01.wav",  # the whole dialog: silent
        "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/notes.wav",
        "IEMOCAP_full_release/Session3/sentences/wav/Ses03F_impro06/Ses03F_impro06_FXX0.wav",
        "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000 copy.wav",
        "IEMOCAP_full_release/Session1/dialog/wav/Ses05M_script01_1b.wav",  # another whole dialog
    ])
    touch(tmp_path / "IEMOCAP_full_release" / "Session1" / "sentences" / "wav" / "Ses01F_impro01" /
          "._Ses01F_impro01_F000.wav", b"mac")
    touch(s1 / "dialog" / "transcriptions" / "Ses01F_impro01.txt", b"Ses01F_impro01_F000 [006.2901-008.2357]: x")
    return tmp_path


def test_iemocap_names_the_label_file_a_dialog_lacks(iemocap):
    """An utterance whose dialog has no EmoEvaluation file names that file; one the dialog's file
    leaves out stays "no label" (test_iemocap_tree)."""
    wav = "IEMOCAP_full_release/Session3/sentences/wav/Ses03F_impro02/Ses03F_impro02_M001.wav"
    write_tree(iemocap, [wav])
    listing = list_corpus("iemocap", iemocap)
    reason = "no label file IEMOCAP_full_release/Session3/dialog/EmoEvaluation/Ses03F_impro02.txt"
    assert (wav, reason) in listing.skipped
    assert f"1 {reason}" in skip_summary(listing)
    # a session without any label file is said once for all its dialogs
    session2 = "IEMOCAP_full_release/Session2/sentences/wav/"
    write_tree(iemocap, [session2 + "Ses02F_impro01/Ses02F_impro01_F000.wav", session2 + "Ses02M_script01_1/Ses02M_script01_1_M000.wav"])
    summary = skip_summary(list_corpus("iemocap", iemocap))
    assert "2 no label file in IEMOCAP_full_release/Session2/dialog/EmoEvaluation/;" in summary, summary


def test_iemocap_tree(iemocap):
    listing = list_corpus("iemocap", iemocap)
    wav1 = "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/"
    wav3 = "IEMOCAP_full_release/Session3/sentences/wav/Ses03M_script01_2/"
    assert summary_of(listing) == [
        (wav3 + "Ses03M_script01_2_M004.wav", "angry", "Ses03M"),
        (wav1 + "Ses01F_impro01_F001.wav", "happy", "Ses01F"),  # exc counts as happy
        (wav3 + "Ses03M_script01_2_M003.wav", "happy", "Ses03M"),
        (wav1 + "Ses01F_impro01_F000.wav", "neutral", "Ses01F"),
        (wav1 + "Ses01F_impro01_M002.wav", "neutral", "Ses01M"),  # the speaker, not the dialog's owner
        ("IEMOCAP_full_release/Session3/sentences/wav/Ses03F_impro06/Ses03F_impro06_FXX0.wav", "sad", "Ses03F"),
        (wav3 + "Ses03M_script01_2_F012.wav", "sad", "Ses03F"),
    ]
    # fru and xxx utterances are classes the paper leaves out: not items, and said with their code
    assert listing.skipped == (
        (wav1 + "Ses01F_impro01_F000 copy.wav", "name"),  # not mistaken for a whole-dialog file
        (wav1 + "Ses01F_impro01_F002.wav", "labelled but missing"),
        (wav1 + "Ses01F_impro01_F003.wav", "no label"),
        (wav1 + "Ses01F_impro01_M000.wav", "class not used: fru"),
        (wav1 + "Ses01F_impro01_M001.wav", "class not used: xxx"),
        (wav1 + "notes.wav", "name"),
    )
    assert skip_summary(listing) == (
        "skipped 6 files not used as IEMOCAP utterances (2 unexpected name; 1 labelled but missing; 1 no label; "
        f"1 class not used: fru; 1 class not used: xxx): {wav1}Ses01F_impro01_F000 copy.wav (unexpected name), "
        f"{wav1}Ses01F_impro01_F002.wav (labelled but missing), {wav1}Ses01F_impro01_F003.wav (no label), "
        f"{wav1}notes.wav (unexpected name), {wav1}Ses01F_impro01_M000.wav (class not used: fru) (+1 more); IEMOCAP names "
        "its files SessionN/sentences/wav/<dialog>/<utterance>.wav, labels in SessionN/dialog/EmoEvaluation/<dialog>.txt "
        "(codes ang=angry hap=happy exc=happy neu=neutral sad=sad used)")
    assert_sample_order(listing)
    # a root inside a session, below its labels: said, rather than every utterance "no label"
    with pytest.raises(TimnetError, match=r"sentences/wav: IEMOCAP utterances .* no label file .*Session1 \.\.\. Session5"):
        list_corpus("iemocap", iemocap / "IEMOCAP_full_release" / "Session1" / "sentences" / "wav")
    # a root at a session's dialog folder: its labels are found, the utterances are beside it
    with pytest.raises(TimnetError, match=r"dialog: IEMOCAP label files but none of the utterances they name \(e\.g\. "
                                          r"sentences/wav/Ses01F_impro01/Ses01F_impro01_F000\.wav\) under it; expected "
                                          r"the folder that holds Session1 \.\.\. Session5"):
        list_corpus("iemocap", iemocap / "IEMOCAP_full_release" / "Session1" / "dialog")
    # a copy of a label file that agrees up to the classes used (exc, hap: happy; fru, xxx: left out) changes nothing
    stale = iemocap / "old" / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    touch(stale, evaluation(("Ses01F_impro01_F001", "hap"), ("Ses01F_impro01_M001", "fru")).encode())
    assert list_corpus("iemocap", iemocap).items == listing.items
    # one that gives an utterance another class was read first-come, silently
    touch(stale, evaluation(("Ses01F_impro01_F000", "sad")).encode())
    with pytest.raises(TimnetError, match=r"Ses01F_impro01_F000 is labelled neu in .*IEMOCAP_full_release/Session1/dialog/"
                                          r"EmoEvaluation/Ses01F_impro01.txt and sad in .*old/Session1/.*expected one class"):
        list_corpus("iemocap", iemocap)


def test_iemocap_label_folder_in_another_case_is_read(iemocap):
    """A copy through a case-folding file system or archiver may spell EmoEvaluation in lower case."""
    want = list_corpus("iemocap", iemocap).items
    for folder in iemocap.glob("IEMOCAP_full_release/*/dialog/EmoEvaluation"):
        folder.rename(folder.with_name("emoevaluation"))
    assert list_corpus("iemocap", iemocap).items == want


def test_iemocap_check_counts_a_labelled_utterance_without_audio_as_missing(iemocap):
    """An utterance IEMOCAP's label files name whose wav is not there is missing from the copy,
    not a stray file "not used"."""
    from timnet.check import check_tree, format_check

    wav1 = "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/"
    gone = wav1 + "Ses01F_impro01_F002.wav"
    r = check_tree("iemocap", iemocap)
    assert r.missing == [gone] and gone not in [p for p, _ in r.unexpected + r.ignored] and not r.ok
    text = format_check(r)
    assert f"missing (in the corpus's label files, not found): 1\n  {gone}" in text
    # the utterances of classes the paper leaves out are part of the corpus, not strays
    assert r.ignored == [(wav1 + "Ses01F_impro01_M000.wav", "class not used: fru"),
                         (wav1 + "Ses01F_impro01_M001.wav", "class not used: xxx")]
    assert f"  {wav1}Ses01F_impro01_M001.wav (class not used: xxx)" in text
    # and a stray's reason reads as extract's warning says it, not as its code
    assert f"  {wav1}notes.wav (unexpected name)" in text and "(name)" not in text


def test_iemocap_extract_refuses_a_labelled_utterance_without_audio(iemocap):
    """A partly unpacked copy is an error naming the first missing wav, as an unreadable one is,
    not a warning beside a run whose folds are no longer the corpus's; --skip-bad goes on."""
    from timnet.features import extract

    gone = iemocap / "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F002.wav"
    with pytest.raises(TimnetError, match=f"^{re.escape(str(gone))}: missing, though its IEMOCAP label file names it; "
                                          r"expected the audio of every labelled utterance \(--skip-bad skips it\)$"):
        extract("iemocap", iemocap, workers=1, signal_length=4096, progress=False)
    fs, skipped, bad = extract("iemocap", iemocap, workers=1, signal_length=4096, skip_bad=True, progress=False)
    assert len(fs) == 7 and bad == [] and "1 labelled but missing" in skipped


def test_iemocap_label_files_without_a_label_line_are_named(iemocap):
    """Label files in another format or encoding (UTF-16, say) are not mistaken for a root below
    the labels: the error names a label file; one such file among good ones is named in the reason
    its utterances are skipped."""
    evaluations = sorted(iemocap.glob("IEMOCAP_full_release/*/dialog/EmoEvaluation/*.txt"))
    first = evaluations[0].read_text()
    evaluations[0].write_bytes(first.encode("utf-16"))
    reason = "no label line in IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    skipped = dict(list_corpus("iemocap", iemocap).skipped)
    assert skipped["IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"] == reason
    for path in evaluations:
        path.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n")
    with pytest.raises(TimnetError, match=r"EmoEvaluation/Ses\d\d[FM]_\w+\.txt: no IEMOCAP label line in it or any other "
                                          r"EmoEvaluation file; expected lines '\[start - end\]<TAB>utterance"):
        list_corpus("iemocap", iemocap)


# --- list_corpus errors -------------------------------------------------------------------------


def test_list_corpus_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(TimnetError) as error:
        list_corpus("emodb", missing)
    message = str(error.value)
    assert str(missing) in message and "does not exist" in message and "\n" not in message


def test_list_corpus_file_not_directory(tmp_path):
    """An archive given as the corpus folder says to unpack it; another file only what it is not."""
    from timnet.corpora import folder_corpus

    touch(tmp_path / "EMODB.zip", b"PK")
    with pytest.raises(TimnetError, match=r"is not a directory but an archive \(unpack it and give its folder\)") as error:
        list_corpus("emodb", tmp_path / "EMODB.zip")
    assert str(tmp_path / "EMODB.zip") in str(error.value)
    touch(tmp_path / "IEMOCAP_full_release.tar.gz", b"")
    with pytest.raises(TimnetError, match="an archive"):
        folder_corpus(tmp_path / "IEMOCAP_full_release.tar.gz", signal_length=96000)
    touch(tmp_path / "notes.txt", b"")
    with pytest.raises(TimnetError, match=r"notes\.txt is not a directory; expected"):
        list_corpus("emodb", tmp_path / "notes.txt")


def test_list_corpus_nothing_matches(tmp_path):
    touch(tmp_path / "README.txt", b"nothing here")
    write_tree(tmp_path, ["Actor_01/03-01-05-01-01-01-01.wav"])  # RAVDESS audio, asked for EMODB
    with pytest.raises(TimnetError) as error:
        list_corpus("EMODB", tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"no EMODB audio found under {tmp_path}; expected {CORPORA['EMODB'].layout}"
    )
    assert "Actor_01/03-01-05-01-01-01-01.wav (unexpected name)" in message and "\n" not in message


def test_list_corpus_unknown_name(tmp_path):
    with pytest.raises(TimnetError, match="unknown corpus 'tess'"):
        list_corpus("tess", tmp_path)


# --- real data (../shared) ----------------------------------------------------------------------


@pytest.mark.realdata
def test_real_emodb():
    listing = list_corpus("emodb", need(DATA / "EMODB"))
    assert len(listing.items) == 535 and listing.skipped == ()
    counts = Counter(get_label(listing, item) for item in listing.items)
    assert counts == {
        "angry": 127, "boredom": 81, "disgust": 46, "fear": 69, "happy": 71, "neutral": 79, "sad": 62,
    }
    assert len({item.speaker for item in listing.items}) == 10
    assert [item.path for item in listing.items[:3]] == ["wav/03a01Wa.wav", "wav/03a02Wb.wav", "wav/03a02Wc.wav"]
    # the authors' own sample order, which their fold weights depend on
    reference = np.load(need(REFERENCE))
    assert [Path(item.path).name for item in listing.items] == reference["files"].tolist()
    assert [item.label for item in listing.items] == reference["labels"].tolist()


@pytest.mark.realdata
def test_real_casia():
    listing = list_corpus("casia", need(DATA / "CASIA"))
    assert len(listing.items) == 1200 and listing.skipped == ()
    counts = Counter((item.speaker, get_label(listing, item)) for item in listing.items)
    assert set(counts.values()) == {50} and len(counts) == 24
    assert {item.speaker for item in listing.items} == {"liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang"}
    assert_sample_order(listing)


def test_real_ravdess_names(tmp_path):
    # the published RAVDESS file names (the manifest timnet ships), as placeholder files: the walker reads names only
    for rel in read_manifest("ravdess"):
        touch(tmp_path / rel, b"x")
    touch(tmp_path / "Actor_01" / "03-02-01-01-01-01-01.wav", b"x")  # from the song archive
    listing = list_corpus("ravdess", tmp_path)
    assert len(listing.items) == 1440
    assert listing.skipped == (("Actor_01/03-02-01-01-01-01-01.wav", "song"),)
    assert len({item.speaker for item in listing.items}) == 24
    counts = Counter(get_label(listing, item) for item in listing.items)
    assert counts == {label: 96 if label == "neutral" else 192 for label in CORPORA["RAVDESS"].labels}
