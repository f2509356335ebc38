"""Arrange a corpus as OUT/<emotion>/<speaker>_<file>: the layout many tools (and `folders`) expect.

Sources are never moved or deleted. Running it twice changes nothing; a non-empty OUT that this
command did not make is refused, so nobody's folder is mixed into.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .corpora import Corpus, get_corpus, list_corpus
from .errors import TimnetError
from .files import folder_lock, write_json

MARKER = ".timnet-organize.json"
SPEAKER_PATTERN = r"^([^_]+)_"  # recovers the speaker from an organised file name


@dataclass
class OrganizeResult:
    """Counts of an organize run: files written now, files already in place, per class and speaker."""

    written: int
    unchanged: int
    per_class: dict[str, int]
    per_speaker: dict[str, int]
    skipped: tuple[tuple[str, str], ...]
    removed: tuple[str, ...] = ()  # dead links into SRC, of files it no longer holds (removed)
    stale: tuple[str, ...] = ()  # live links into SRC and copies of files SRC no longer lists (kept, listed)


def organize(corpus: Corpus | str, src: str | Path, out: str | Path, *, mode: str = "link") -> OrganizeResult:
    """Write OUT/<emotion>/<speaker>_<name> for every utterance of the corpus under SRC (symlinks or copies)."""
    if mode not in ("link", "copy"):
        raise TimnetError(f"mode {mode!r} unknown; expected link or copy")
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    src, out = Path(src).resolve(), Path(out)
    if out.resolve().is_relative_to(src):
        # extract, organize and --check read SRC's whole tree: they would meet every file twice
        raise TimnetError(f"{out} is inside {src}; expected an OUT outside the corpus folder")
    listing = list_corpus(corpus, src)
    marker = out / MARKER
    identity = {"corpus": corpus.name, "source": str(src), "mode": mode}
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict) or not all(isinstance(previous.get(key), str) for key in identity):
            raise TimnetError(f"{marker} is not the record `timnet organize` writes (a JSON object of "
                              f"{', '.join(identity)}); "
                              f"remove it only if {out} holds nothing else")
        if previous != identity:
            raise TimnetError(f"{out} was organised from {previous.get('source')} ({previous.get('corpus')}, "
                              f"{previous.get('mode')}); expected an empty or new folder for {corpus.name} from {src} ({mode})")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TimnetError(f"{out} is not empty and was not made by `timnet organize`; expected an empty or new folder")
    with folder_lock(out):  # two organize runs into one OUT would interleave their copies
        write_json(marker, identity)
        return _write(corpus, listing, src, out, mode)


def _write(corpus: Corpus, listing, src: Path, out: Path, mode: str) -> OrganizeResult:
    written = unchanged = 0
    per_class, per_speaker = Counter(), Counter()
    targets = set()
    for it in listing.items:
        label = corpus.labels[it.label]
        source = src / it.path
        name = Path(it.path).name
        # The speaker prefix makes names unique (CASIA repeats 201.wav in every speaker folder)
        # and lets `timnet extract folders --speaker-pattern` find the speaker again.
        target = out / label / f"{it.speaker}_{name}"
        targets.add(target)
        if _in_place(target, source, mode):
            unchanged += 1
        else:
            # a copy of an earlier run whose source has changed since is made again; anything else
            # in the way is not this command's to replace
            renewed = mode == "copy" and target.is_file() and not target.is_symlink()
            if (target.exists() or target.is_symlink()) and not renewed:
                raise TimnetError(f"{target} exists and is not {source}; remove it or choose another OUT")
            target.parent.mkdir(exist_ok=True)
            if mode == "link":
                os.symlink(source, target)
            else:
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
                os.close(fd)
                try:
                    shutil.copy2(source, tmp)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            written += 1
        per_class[label] += 1
        per_speaker[it.speaker] += 1
    removed, stale = _left_over(out, src, targets, mode)
    return OrganizeResult(written, unchanged, {c: per_class.get(c, 0) for c in corpus.labels},
                          dict(sorted(per_speaker.items())), listing.skipped, removed, stale)


def _left_over(out: Path, src: Path, targets: set[Path], mode: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What an earlier run left for files SRC no longer lists: dead links into SRC (their file was
    deleted or renamed) are removed, as is a copy interrupted mid-write; a live link or a copy is
    the user's to judge, so kept and named."""
    removed, stale = [], []
    for path in sorted(out.rglob("*")):
        if path in targets or path.name == MARKER or path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(out).as_posix()
        if path.is_symlink() and Path(os.readlink(path)).is_relative_to(src) and not path.exists():
            path.unlink()
            removed.append(rel)
        elif mode == "copy" and path.name.startswith(".") and path.name.endswith(".tmp") and \
                {path.with_name(path.name[1:-4]), path.with_name(path.name[1:-4].rsplit(".", 1)[0])} & targets:
            path.unlink()  # what a copy killed mid-write left (.<name>.<random>.tmp, see `_write`; earlier .<name>.tmp)
        elif path.is_symlink() and Path(os.readlink(path)).is_relative_to(src) or mode == "copy":
            stale.append(rel)
    return tuple(removed), tuple(stale)


def _in_place(target: Path, source: Path, mode: str) -> bool:
    if mode == "link":
        return target.is_symlink() and Path(os.readlink(target)) == source
    # copy2 keeps the source's modification time: a source rewritten since (its size often the same,
    # a WAV's being its length's) is told by it
    if not target.is_file() or target.is_symlink():
        return False
    have, want = target.stat(), source.stat()
    return (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns)
