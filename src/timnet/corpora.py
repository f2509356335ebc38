"""The corpus registry: each supported corpus's facts, and the walker that lists and labels its files.

Listing looks only at names (and, for IEMOCAP, at its label text files); it never decodes audio,
so it is fast and leaves unreadable files to the audio loader. The order of the listing decides
the cross-validation folds (SPEC §1): class index first, then the natural order of the path.
"""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

from timnet.errors import TimnetError

# Files with these extensions are worth reporting when they do not fit a layout; anything else
# (README.txt, .mp4, .lab, ...) is ignored silently. Compared case-insensitively.
# what libsndfile reads, by the names its formats go by (a named corpus still takes only its .wav)
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".mp3",
                    ".au", ".snd", ".caf", ".w64", ".rf64")


@dataclass(frozen=True)
class Item:
    """One labelled utterance."""

    path: str  # POSIX path relative to the corpus root
    label: int  # class index into Corpus.labels
    speaker: str


@dataclass(frozen=True)
class Listing:
    """What a corpus walker found: the usable utterances, and the audio files it set aside."""

    items: tuple[Item, ...]  # in sample order
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason) of audio files not used
    corpus: str = ""  # canonical corpus name, for messages

    @property
    def missing(self) -> list[str]:
        """Utterances a label file names whose audio is not there (IEMOCAP): missing from the copy."""
        return [path for path, why in self.skipped if why == NO_AUDIO]


@dataclass(frozen=True)
class Corpus:
    """The facts of one corpus (SPEC §2) and the function that lists its files."""

    name: str
    labels: tuple[str, ...]
    signal_length: int  # samples at 22050 Hz
    seed: int  # the paper's KFold seed
    dilations: int  # number of Temporal-Aware Blocks per stream
    n_speakers: int
    n_files: int | None  # utterances used from the full public corpus
    layout: str  # one line, for `timnet corpora` and error messages
    scan: Callable[[Path], Listing]
    class_counts: tuple[int, ...] | None = None  # utterances per class in the full public corpus


# --- ordering and reporting ----------------------------------------------------------------

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Natural sort key: digit runs compare as integers ("a2" < "a10"), the rest case-sensitively."""
    # natsort normalises to NFD by default; doing the same keeps composed and decomposed names equal.
    parts = _DIGITS.split(unicodedata.normalize("NFD", text))
    # re.split alternates text (even positions) and digit runs (odd), so str never meets int.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


SAID = {"name": "unexpected name"}  # a skip reason's code (Listing.skipped) as a message says it
NO_AUDIO = "labelled but missing"  # a skip reason: an utterance its label file names, without its audio file
LEFT_OUT = "class not used: "  # a skip reason's start: IEMOCAP's fru, sur, xxx, ... (the paper's four classes only)


def by_design(reason: str) -> bool:
    """A skip reason a complete, intact copy of the corpus has: a RAVDESS song, an IEMOCAP class
    the paper leaves out."""
    return reason == "song" or reason.startswith(LEFT_OUT)


def skip_summary(listing: Listing, *, limit: int = 5) -> str | None:
    """One line naming the skipped files and why, for a warning; None when nothing was skipped."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    skipped = listing.skipped
    if not skipped:
        return None
    noun = "file" if len(skipped) == 1 else "files"
    # a second copy of the corpus, or its song files, are not a layout problem: the count says which
    kinds: dict[str, int] = {}
    # what a complete copy holds by design (RAVDESS's songs, IEMOCAP's other classes) after the
    # rest, so that one missing or misnamed file is not lost behind thousands of those
    skipped = sorted(((path, SAID.get(reason, reason)) for path, reason in skipped), key=lambda s: by_design(s[1]))
    for _, reason in skipped:
        kind = "duplicate" if reason.startswith("duplicate of ") else reason
        kinds[kind] = kinds.get(kind, 0) + 1
    where = f" not used as {listing.corpus} utterances" if listing.corpus else ""
    text = f"skipped {len(skipped)} {noun}{where}"
    counted = len(kinds) > 1 or len(skipped) > limit
    if counted:
        text += " (" + "; ".join(f"{count} {kind}" for kind, count in kinds.items()) + ")"
    # one reason for every file, already in the count, is not repeated after each name;
    # with several, each name keeps its own
    same = counted and len(kinds) == 1
    shown = ", ".join(path if same and reason in kinds else f"{path} ({reason})" for path, reason in skipped[:limit])
    if shown:
        text += f": {shown}"
    if len(skipped) > limit:
        text += f" (+{len(skipped) - limit} more)"
    if SAID["name"] in kinds and listing.corpus in CORPORA:
        text += f"; {listing.corpus} names its files {CORPORA[listing.corpus].layout}"
    return text


# --- walking --------------------------------------------------------------------------------


def _hidden(name: str) -> bool:
    # dot files include macOS "._x.wav" resource forks; __MACOSX holds them in zip extractions
    return name.startswith(".") or name == "__MACOSX"


def visible_files(root: Path) -> list[str]:
    """Relative POSIX paths of every visible file under root, in natural order."""

    def fail(error: OSError) -> None:
        raise TimnetError(f"cannot read directory {error.filename}: {error.strerror}")

    # Following links lets speakers be symlinked in. Only a link back into its own ancestry (a
    # loop) is cut: an alias of a folder met elsewhere is listed under both paths, so a file is
    # labelled by every path that reaches it and the scanners see both (a second copy of one
    # recording is set aside; one recording under two labels is an error), whichever comes first.
    ancestry: dict[str, frozenset[str]] = {}  # folder -> real paths of it and its ancestors
    found = []
    for folder, dirs, files in os.walk(root, onerror=fail, followlinks=True):
        real, above = os.path.realpath(folder), ancestry.get(os.path.dirname(folder), frozenset())
        if real in above:
            dirs[:] = []
            continue
        ancestry[folder] = above | {real}
        dirs[:] = sorted((d for d in dirs if not _hidden(d)), key=natural_key)
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if not _hidden(f)]
    return sorted(found, key=natural_key)


def _is_audio(path: str) -> bool:
    return path.lower().endswith(AUDIO_EXTENSIONS)


class _Match(NamedTuple):
    label: str  # class name
    speaker: str
    utterance: str  # identity of the recording, to drop a second copy of it
    misfiled: bool = False  # in another speaker's folder than its name says: loses to a copy in its own


def _copy_order(path: str) -> tuple:
    """Which of several copies of one recording is kept: the first in this order."""
    pure = PurePosixPath(path)
    conventional = pure.with_suffix(pure.suffix.lower()).as_posix()
    # shallowest copy first, so a nested duplicate tree (as in some re-packaged downloads) loses;
    # of `x.wav` and `x.WAV` side by side the conventional lower-case name is kept
    return path.count("/"), natural_key(conventional), path != conventional, path


def _listing(
    corpus: str, found: list[tuple[str, _Match]], skipped: list[tuple[str, str]],
    *, labels: tuple[str, ...] | None = None,
) -> Listing:
    """Sort matched files into sample order, setting aside second copies of a recording."""
    labels = labels if labels is not None else CORPORA[corpus].labels
    kept: dict[str, str] = {}
    items = []
    for path, match in sorted(found, key=lambda f: (f[1].misfiled, *_copy_order(f[0]))):
        # An empty or broken file stays listed: the audio loader names it as an error (or skips it
        # under --skip-bad), since a silently missing utterance would change the folds.
        if match.utterance in kept:
            skipped.append((path, f"duplicate of {kept[match.utterance]}"))
        else:
            kept[match.utterance] = path
            items.append(Item(path=path, label=labels.index(match.label), speaker=match.speaker))
    # the raw path breaks ties that natural_key leaves (e.g. "a01" vs "a1") so the order is stable
    items.sort(key=lambda item: (item.label, natural_key(item.path), item.path))
    skipped.sort(key=lambda s: (natural_key(s[0]), s[0]))
    return Listing(items=tuple(items), skipped=tuple(skipped), corpus=corpus)


def _scan_names(root: Path, corpus: str, parse: Callable[[PurePosixPath], _Match | str]) -> Listing:
    """List a corpus whose labels are in its paths: parse gives a match or the reason to skip."""
    found, skipped = [], []
    for path in filter(_is_audio, visible_files(root)):
        pure = PurePosixPath(path)
        result = parse(pure) if pure.suffix.lower() == ".wav" else "not .wav"
        if isinstance(result, str):
            skipped.append((path, result))
        else:
            found.append((path, result))
    return _listing(corpus, found, skipped)


def _misfiled(path: PurePosixPath, speaker: str, folder: re.Pattern) -> bool:
    """Whether a file sits in one speaker's folder but is named for another. The name is the
    publisher's record of the speaker, so it decides; the folder only ranks copies: a copy filed by
    hand in the wrong place loses to one in its own speaker's folder (and alone is still used)."""
    match = folder.fullmatch(path.parts[-2]) if len(path.parts) > 1 else None
    return bool(match) and match[1].lower() != speaker.lower()


# --- the six layouts ------------------------------------------------------------------------

_CASIA_LABELS = ("angry", "fear", "happy", "neutral", "sad", "surprise")
_CASIA_NAME = re.compile(r"\d+")
# SPEC §2's spelling of the four speakers' folders, whatever case a copy gives them
_CASIA_SPEAKERS = {name.casefold(): name for name in ("liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang")}


def scan_casia(root: Path) -> Listing:
    """List CASIA's <speaker>/<emotion>/<NNN>.wav files."""

    def parse(path: PurePosixPath) -> _Match | str:
        if len(path.parts) < 3 or not _CASIA_NAME.fullmatch(path.stem):
            return "name"
        speaker, emotion = path.parts[-3], path.parts[-2].lower()
        if speaker.casefold() not in _CASIA_SPEAKERS:  # a stray folder would be a fifth speaker's fold
            return f"speaker folder {speaker!r} unknown, not {'/'.join(_CASIA_SPEAKERS.values())}"
        speaker = _CASIA_SPEAKERS[speaker.casefold()]
        if emotion not in _CASIA_LABELS:
            return f"emotion folder {path.parts[-2]!r}, not {'/'.join(_CASIA_LABELS)}"
        # a second copy whose speaker folder differs in case only is the same recording, as EMOVO's
        # and SAVEE's are: not a fifth speaker with a leave-one-speaker-out fold of its own
        return _Match(emotion, speaker, f"{speaker.casefold()}/{emotion}/{path.stem}")

    return _scan_names(root, "CASIA", parse)


_EMODB_EMOTIONS = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral",
}
_EMODB_NAME = re.compile(r"(\d\d)([a-z]\d\d)([WLEAFTN])([a-z])")


def scan_emodb(root: Path) -> Listing:
    """List EMODB's wav/<speaker><text><emotion><version>.wav files."""

    def parse(path: PurePosixPath) -> _Match | str:
        match = _EMODB_NAME.fullmatch(path.stem)
        if not match:
            return "name"
        return _Match(_EMODB_EMOTIONS[match[3]], match[1], path.stem)

    return _scan_names(root, "EMODB", parse)


_EMOVO_EMOTIONS = {
    "dis": "disgust", "gio": "happy", "neu": "neutral", "pau": "fear",
    "rab": "angry", "sor": "surprise", "tri": "sad",
}
_EMOVO_NAME = re.compile(r"([a-z]{3})-([fm][123])-([a-z]+\d+)", re.IGNORECASE)
_EMOVO_FOLDER = re.compile(r"([fm][123])", re.IGNORECASE)


def scan_emovo(root: Path) -> Listing:
    """List EMOVO's <speaker>/<emotion>-<speaker>-<sentence>.wav files."""

    def parse(path: PurePosixPath) -> _Match | str:
        match = _EMOVO_NAME.fullmatch(path.stem)
        if not match:
            return "name"
        if match[1].lower() not in _EMOVO_EMOTIONS:
            return f"emotion {match[1]!r}, not {'/'.join(_EMOVO_EMOTIONS)}"
        speaker = match[2].lower()
        return _Match(_EMOVO_EMOTIONS[match[1].lower()], speaker, path.stem.lower(),
                      _misfiled(path, speaker, _EMOVO_FOLDER))

    return _scan_names(root, "EMOVO", parse)


_RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}
_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_RAVDESS_FOLDER = re.compile(r"Actor_(\d\d)", re.IGNORECASE)


def scan_ravdess(root: Path) -> Listing:
    """List RAVDESS's Actor_NN/03-01-EE-II-SS-RR-NN.wav audio-only speech files."""

    def parse(path: PurePosixPath) -> _Match | str:
        match = _RAVDESS_NAME.fullmatch(path.stem)
        if not match:
            return "name"
        if match[3] not in _RAVDESS_EMOTIONS:
            return f"emotion {match[3]}, not 01-08"
        if match[1] != "03":
            return f"modality {match[1]}, not audio-only"
        if match[2] != "01":
            return "song" if match[2] == "02" else f"channel {match[2]}"
        # fields outside RAVDESS's ranges: a renamed or foreign file, not a 25th actor or a new take
        if not 1 <= int(match[7]) <= 24:
            return f"actor {match[7]}, not 01-24"
        if match[4] not in ("01", "02") or (match[3] == "01" and match[4] != "01"):
            return f"intensity {match[4]}" + (" (neutral has only 01)" if match[3] == "01" else "")
        if match[5] not in ("01", "02") or match[6] not in ("01", "02"):
            return f"statement {match[5]}, repetition {match[6]}: expected 01 or 02"
        return _Match(_RAVDESS_EMOTIONS[match[3]], match[7], path.stem, _misfiled(path, match[7], _RAVDESS_FOLDER))

    return _scan_names(root, "RAVDESS", parse)


_SAVEE_EMOTIONS = {
    "a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprise",
}
_SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
# speaker prefix present in the flattened <SPK>_<code><NN>.wav, absent in <SPK>/<code><NN>.wav
_SAVEE_NAME = re.compile(r"(?:([a-z]{2})_)?(a|d|f|h|n|sa|su)(\d\d)", re.IGNORECASE)
_SAVEE_FOLDER = re.compile(f"({'|'.join(_SAVEE_SPEAKERS)})", re.IGNORECASE)


def scan_savee(root: Path) -> Listing:
    """List SAVEE's <SPK>/<code><NN>.wav (or flattened <SPK>_<code><NN>.wav) files."""

    def parse(path: PurePosixPath) -> _Match | str:
        match = _SAVEE_NAME.fullmatch(path.stem)
        if not match:
            return "name"
        speaker = (match[1] or (path.parts[-2] if len(path.parts) > 1 else "")).upper()
        if not speaker:  # often DIR is one speaker's folder: its parent holds the corpus
            return f"no speaker folder ({'/'.join(_SAVEE_SPEAKERS)}) or DC_ prefix: pass the corpus folder, not one speaker's"
        if speaker not in _SAVEE_SPEAKERS:
            return f"speaker {speaker} unknown, not {'/'.join(_SAVEE_SPEAKERS)}"
        code = match[2].lower()  # the publisher's names are lower case; SA02.wav is the same recording
        return _Match(_SAVEE_EMOTIONS[code], speaker, f"{speaker}_{code}{match[3]}",
                      _misfiled(path, speaker, _SAVEE_FOLDER))

    return _scan_names(root, "SAVEE", parse)


_IEMOCAP_EMOTIONS = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
_IEMOCAP_LINE = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)\s+\[")
# the last name part starts with the speaker's gender: Ses03M_script01_2_F012 is spoken by Ses03F;
# a few turns carry XX before their number (Ses03F_impro06_FXX0) and are labelled like any other
_IEMOCAP_UTTERANCE = re.compile(r"Ses(\d\d)[FM]_.+_([FM])(?:XX)?\d+")
# dialogs: Ses01F_impro01, Ses01F_impro05a, Ses05M_script01_1b (never an utterance-shaped name)
_IEMOCAP_DIALOG = re.compile(r"Ses\d\d[FM]_[a-z]+\d+[a-z]?(?:_\d+[a-z]?)?")


def _iemocap_labels(root: Path, files: list[str]) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str], int]]:
    """Map each utterance named in an EmoEvaluation/<dialog>.txt to (emotion code, expected wav path),
    and count the label lines of every label file by (session folder, dialog). Two label files (a
    stale copy in the tree) that give one utterance different classes are refused, and so are label
    files none of which holds a label line."""
    labels: dict[str, tuple[str, str]] = {}
    source: dict[str, str] = {}
    dialogs: dict[tuple[str, str], int] = {}  # (session, dialog) -> how many label lines its file holds
    first = ""  # the first label file read, to name when none holds a label line
    for path in files:
        pure = PurePosixPath(path)
        # only the files directly in EmoEvaluation: its subfolders hold per-annotator ratings
        if pure.suffix.lower() != ".txt" or len(pure.parts) < 2 or pure.parts[-2].casefold() != "emoevaluation":
            continue
        session = pure.parents[2] if len(pure.parts) >= 3 else PurePosixPath()
        try:
            text = (root / path).read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise TimnetError(f"cannot read IEMOCAP label file {root / path}: {error.strerror}") from None
        lines = _IEMOCAP_LINE.findall(text)
        dialogs[session.as_posix(), pure.stem] = len(lines)
        for utterance, code in lines:
            dialog = utterance.rsplit("_", 1)[0]
            expected = (session / "sentences" / "wav" / dialog / f"{utterance}.wav").as_posix()
            code = code.lower()
            if utterance not in labels:
                labels[utterance], source[utterance] = (code, expected), path
            elif _IEMOCAP_EMOTIONS.get(code) != _IEMOCAP_EMOTIONS.get(labels[utterance][0]):
                raise TimnetError(f"{utterance} is labelled {labels[utterance][0]} in {root / source[utterance]} and "
                                  f"{code} in {root / path}; expected one class per utterance (remove the stale copy)")
        first = first or path
    if first and not labels:  # label files where SPEC's layout puts them, all in another format or encoding
        raise TimnetError(f"{root / first}: no IEMOCAP label line in it or any other EmoEvaluation file; expected "
                          "lines '[start - end]<TAB>utterance<TAB>code<TAB>[v, a, d]' as IEMOCAP ships them")
    return labels, dialogs


def _iemocap_unlabelled(wav: PurePosixPath, dialogs: dict[tuple[str, str], int]) -> str:
    """Why an utterance has no label: its dialog's label file does not name it ("no label"), has
    no label line at all (another format or encoding: the file is named), or there is no such
    file, named where SPEC's layout puts it (one reason for a whole session without label files,
    rather than one per dialog)."""
    parts = [p.casefold() for p in wav.parts]
    if len(parts) < 5 or parts[-3] != "wav" or parts[-4] != "sentences":  # not SessionN/sentences/wav/<dialog>/
        return "no label"
    session, dialog = wav.parents[3].as_posix(), wav.stem.rsplit("_", 1)[0]
    if dialogs.get((session, dialog)) == 0:
        return f"no label line in {session}/dialog/EmoEvaluation/{dialog}.txt"
    if (session, dialog) in dialogs:
        return "no label"
    if not any(known == session for known, _ in dialogs):
        return f"no label file in {session}/dialog/EmoEvaluation/"
    return f"no label file {session}/dialog/EmoEvaluation/{dialog}.txt"


def scan_iemocap(root: Path) -> Listing:
    """List IEMOCAP's SessionN/sentences/wav/<dialog>/<utt>.wav files labelled ang, hap, exc, neu, sad."""
    files = visible_files(root)
    labels, dialogs = _iemocap_labels(root, files)
    found, skipped, present = [], [], set()
    for path in filter(_is_audio, files):
        pure = PurePosixPath(path)
        utterance = _IEMOCAP_UTTERANCE.fullmatch(pure.stem)
        if pure.suffix.lower() != ".wav":
            skipped.append((path, "not .wav"))
        elif utterance is None:
            # whole-dialog recordings (SessionN/dialog/wav/Ses01F_impro01.wav) belong to the corpus
            if not _IEMOCAP_DIALOG.fullmatch(pure.stem):
                skipped.append((path, "name"))
        elif not labels:  # utterances but no label file at all: a root inside SessionN/sentences
            raise TimnetError(f"{root}: IEMOCAP utterances ({path}) but no label file SessionN/dialog/EmoEvaluation/"
                              "<dialog>.txt under it; expected the folder that holds Session1 ... Session5")
        elif pure.stem not in labels:
            skipped.append((path, _iemocap_unlabelled(pure, dialogs)))
        else:
            present.add(pure.stem)
            code = labels[pure.stem][0]
            emotion = _IEMOCAP_EMOTIONS.get(code)
            if emotion is None:  # other codes (fru, sur, xxx, ...) are classes the paper leaves out: said, not used
                skipped.append((path, LEFT_OUT + code))
            else:
                speaker = f"Ses{utterance[1]}{utterance[2]}"
                found.append((path, _Match(emotion, speaker, pure.stem)))
    if labels and not present:  # label files without one of their utterances: a root at SessionN/dialog
        example = next(iter(labels.values()))[1]
        raise TimnetError(f"{root}: IEMOCAP label files but none of the utterances they name (e.g. {example}) under "
                          "it; expected the folder that holds Session1 ... Session5, each with sentences/wav/")
    for utterance, (code, expected) in labels.items():
        if code in _IEMOCAP_EMOTIONS and utterance not in present:
            skipped.append((expected, NO_AUDIO))
    return _listing("IEMOCAP", found, skipped)


# --- the registry ---------------------------------------------------------------------------


def _codes(mapping: dict[str, str]) -> str:
    """'W=angry L=boredom ...': each code with its class, so a listing can be checked by hand."""
    return " ".join(f"{code}={label}" for code, label in mapping.items())


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus(
            name="CASIA", labels=_CASIA_LABELS, signal_length=88000, seed=32, dilations=8,
            n_speakers=4, n_files=1200, scan=scan_casia, class_counts=(200,) * 6,
            layout="<speaker>/<emotion>/<NNN>.wav, e.g. liuchanhg/angry/201.wav "
            f"(speaker {'/'.join(_CASIA_SPEAKERS.values())}, emotion folder {'/'.join(_CASIA_LABELS)})",
        ),
        Corpus(
            name="EMODB", labels=("angry", "boredom", "disgust", "fear", "happy", "neutral", "sad"),
            signal_length=96000, seed=46, dilations=8, n_speakers=10, n_files=535, scan=scan_emodb, class_counts=(127, 81, 46, 69, 71, 79, 62),
            layout="wav/03a01Fa.wav "
            f"(speaker 03, text a01, emotion letter {_codes(_EMODB_EMOTIONS)}, version a)",
        ),
        Corpus(
            name="EMOVO", labels=("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
            signal_length=96000, seed=1, dilations=8, n_speakers=6, n_files=588, scan=scan_emovo, class_counts=(84,) * 7,
            layout=f"<speaker>/<emotion>-<speaker>-<sentence>.wav, e.g. f1/dis-f1-b1.wav "
            f"(speaker f1-f3/m1-m3, emotion {_codes(_EMOVO_EMOTIONS)})",
        ),
        Corpus(
            name="IEMOCAP", labels=("angry", "happy", "neutral", "sad"),
            signal_length=310000, seed=16, dilations=10, n_speakers=10, n_files=5531, scan=scan_iemocap, class_counts=(1103, 1636, 1708, 1084),
            layout="SessionN/sentences/wav/<dialog>/<utterance>.wav, labels in "
            f"SessionN/dialog/EmoEvaluation/<dialog>.txt (codes {_codes(_IEMOCAP_EMOTIONS)} used)",
        ),
        Corpus(
            name="RAVDESS",
            labels=("angry", "calm", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
            signal_length=110000, seed=46, dilations=8, n_speakers=24, n_files=1440, scan=scan_ravdess, class_counts=(192, 192, 192, 192, 192, 96, 192, 192),
            layout="Actor_NN/03-01-EE-II-SS-RR-NN.wav (modality 03 audio-only, channel 01 speech, "
            f"emotion EE {_codes(_RAVDESS_EMOTIONS)}, intensity 01-02, statement 01-02, repetition 01-02, actor 01-24)",
        ),
        Corpus(
            name="SAVEE", labels=("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
            signal_length=130000, seed=44, dilations=8, n_speakers=4, n_files=480, scan=scan_savee, class_counts=(60, 60, 60, 60, 120, 60, 60),
            layout=f"<SPK>/<code><NN>.wav or <SPK>_<code><NN>.wav, e.g. DC/sa01.wav "
            f"(speaker {'/'.join(_SAVEE_SPEAKERS)}, code {_codes(_SAVEE_EMOTIONS)})",
        ),
    )
}


# -- user folders: DIR/<label>/*.wav ---------------------------------------------------------------
FOLDERS = "FOLDERS"
FOLDERS_SEED = 0  # user data has no paper seed
FOLDERS_DILATIONS = 8  # the paper's network for every corpus but IEMOCAP


def folder_corpus(root: str | Path, *, signal_length: int, speaker_pattern: str | None = None) -> Corpus:
    """A corpus of the user's own labels: every DIR/<label>/... audio file, labels in sorted order.

    `speaker_pattern` is a regex searched in the file name whose first group (or group
    `speaker`) is the speaker; files it does not match are skipped and reported.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TimnetError(f"folders corpus {root} is not a directory{_unpack_hint(root)}; expected DIR/<label>/<file>.wav")
    if speaker_pattern is not None and not speaker_pattern:
        raise TimnetError("--speaker-pattern '': empty; expected a regex whose first group is the speaker, e.g. '^(\\w+?)_'")
    try:
        pattern = re.compile(speaker_pattern) if speaker_pattern else None
    except re.error as e:
        raise TimnetError(f"--speaker-pattern '{speaker_pattern}' is not a valid regex ({e})") from None
    if pattern is not None and pattern.groups == 0:
        raise TimnetError(f"--speaker-pattern '{speaker_pattern}' needs a group; expected a regex whose first group is the speaker, e.g. '^(\\w+?)_'")
    labels = tuple(sorted((d.name for d in root.iterdir() if d.is_dir() and not _hidden(d.name)), key=natural_key))
    # one name in two Unicode forms (a copy from macOS decomposes "ä") or two letter cases (Angry,
    # angry): two classes that are one, as case-insensitive file systems would have them
    forms: dict[str, str] = {}
    for label in labels:
        if (other := forms.setdefault(_name_key(label), label)) != label:
            how = "Unicode forms" if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", label) \
                else "spellings (letter case)"
            raise TimnetError(f"{root}: label folders {other!r} and {label!r} are one name in two {how}; "
                              "expected one folder per class (move the files of one into the other)")

    def scan(top: Path) -> Listing:
        # a label folder linked to another (zen -> calm): said of the folders, before their files
        real: dict[Path, str] = {}
        for label in labels:
            if (twin := real.setdefault((top / label).resolve(), label)) != label:
                raise TimnetError(f"{top / label} and {top / twin} are one folder (a link), two labels; "
                                  "expected one folder per class")
        found, skipped = [], []
        # F01 and f01, or "Zoë" composed and decomposed: one speaker, or a speaker split would put
        # her on both sides. The first spelling met names her; the merge is said (below).
        spelled: dict[str, str] = {}
        merged: dict[str, set[str]] = {}
        files: dict[str, str] = {}  # real path -> the first path met to it: a link is not a second recording
        for path in filter(_is_audio, visible_files(top)):
            pure = PurePosixPath(path)
            if len(pure.parts) < 2 or pure.parts[0] not in labels:
                skipped.append((path, "not in a label folder"))
                continue
            if (first_path := files.setdefault(os.path.realpath(top / path), path)) != path:
                if PurePosixPath(first_path).parts[0] != pure.parts[0]:
                    raise TimnetError(f"{top / path} and {top / first_path} are one file (a link) under two labels, "
                                      f"{pure.parts[0]!r} and {PurePosixPath(first_path).parts[0]!r}; expected one "
                                      "label per recording")
                skipped.append((path, f"duplicate of {first_path}"))
                continue
            speaker = ""
            if pattern is not None:
                m = pattern.search(pure.name)
                speaker = (m.group("speaker") if "speaker" in pattern.groupindex else m.group(1)) if m else None
                if not speaker:  # no match, or a group that took part in none or matched "": no speaker named
                    skipped.append((path, "speaker pattern"))
                    continue
                if (first := spelled.setdefault(_name_key(speaker), speaker)) != speaker:
                    merged.setdefault(first, set()).add(speaker)
                    speaker = first
            found.append((path, _Match(pure.parts[0], speaker, path)))
        used = {m.label for _, m in found}
        empty = [label for label in labels if label not in used]
        if empty and used:  # a class with no example would be trained as an output nothing teaches
            why = " the --speaker-pattern matches" if pattern is not None else ""
            raise TimnetError(f"{top / empty[0]}: a label folder with no audio file{why}; expected at least one per "
                              f"label (move the folder out of {top})")
        if len(labels) == 1 and used:  # every prediction right by construction: no classifier to train
            raise TimnetError(f"{top}: one label folder ({labels[0]}); expected two or more, DIR/<label>/<file>.wav")
        if merged:
            said = "; ".join(f"{', '.join(sorted(map(repr, raws)))} as {kept!r}" for kept, raws in sorted(merged.items()))
            warnings.warn(f"{top}: speaker names that differ only in letter case or Unicode form taken as one "
                          f"speaker ({said}), so that a speaker split keeps each on one side", stacklevel=2)
        return _listing(FOLDERS, found, skipped, labels=labels)

    return Corpus(name=FOLDERS, labels=labels, signal_length=signal_length, seed=FOLDERS_SEED,
                  dilations=FOLDERS_DILATIONS, n_speakers=0, n_files=None,
                  layout="DIR/<label>/<file>.wav (one folder per class)", scan=scan)


def _name_key(name: str) -> str:
    """What makes two speaker (or label folder) names one: the same letters, whatever their case or Unicode form."""
    return unicodedata.normalize("NFC", name).casefold()


def paper_seed(name: str, seed: int | None = None) -> int:
    """`seed`, or when it is None the corpus's seed in the paper (the folders default for user corpora)."""
    if seed is not None:
        return seed
    corpus = CORPORA.get(str(name).upper())
    return corpus.seed if corpus else FOLDERS_SEED


def paper_dilations(name: str) -> int:
    """The corpus's dilation levels in the paper (the folders default for user corpora)."""
    corpus = CORPORA.get(str(name).upper())
    return corpus.dilations if corpus else FOLDERS_DILATIONS


def get_corpus(name: str, *, also: str | None = None) -> Corpus:
    """The registry entry for a corpus name, in any case; `also` names another choice the caller
    accepts (`extract` takes "folders"), for the error message."""
    corpus = CORPORA.get(str(name).strip().upper())
    if corpus is None:
        choices = ", ".join([n.lower() for n in CORPORA] + ([also] if also else []))
        raise TimnetError(f"unknown corpus {name!r}; expected one of {choices}")
    return corpus


_ARCHIVES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".rar", ".7z")  # .gz also ends .tar.gz


def _unpack_hint(path: Path) -> str:
    """A corpus as it was downloaded (RAVDESS's zip, IEMOCAP's tarball) given where its folder goes."""
    name = path.name.lower()
    return " but an archive (unpack it and give its folder)" if name.endswith(_ARCHIVES) else ""


def list_corpus(corpus: Corpus | str, root: str | Path) -> Listing:
    """Find and label a corpus's audio files under root, in sample order."""
    if not isinstance(corpus, Corpus):
        corpus = get_corpus(corpus)
    root = Path(root).expanduser()
    if not root.exists():
        raise TimnetError(f"{corpus.name} folder {root} does not exist; expected {corpus.layout}")
    if not root.is_dir():
        raise TimnetError(f"{corpus.name} folder {root} is not a directory{_unpack_hint(root)}; expected {corpus.layout}")
    listing = corpus.scan(root)
    if not listing.items:
        summary = skip_summary(listing)
        extra = f" ({summary})" if summary else ""
        raise TimnetError(f"no {corpus.name} audio found under {root}; expected {corpus.layout}{extra}")
    return listing
