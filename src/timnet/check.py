"""Validate a user's copy of a corpus: counts, readability, formats, and the publishers' checksums."""
from __future__ import annotations

import filecmp
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .audio import audio_info, read_audio, sndfile_message
from .corpora import NO_AUDIO, SAID, Corpus, by_design, get_corpus, list_corpus
from .errors import TimnetError

MANIFESTS = Path(__file__).parent / "manifests"


def read_manifest(corpus: str) -> dict[str, str] | None:
    """{relative path: sha256} of a corpus's public download, or None when none is shipped."""
    path = MANIFESTS / f"{corpus.upper()}.sha256"
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class CheckReport:
    """What `timnet corpora --check` found; `ok` when nothing is missing, extra, bad or altered."""

    corpus: str
    root: str
    counts: dict[str, int]
    expected_counts: dict[str, int] | None
    speakers: dict[str, int]
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    unexpected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # Files a corpus is distributed with but does not train on (RAVDESS's song recordings, IEMOCAP's
    # utterances of other classes, a second copy of the same tree, as some mirrors ship): counted, not a problem.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # manifest paths (IEMOCAP: labelled utterances) not found
    altered: list[str] = field(default_factory=list)  # sha256 differs from the manifest
    manifest_files: int | None = None  # files in the publisher's manifest; None: no manifest shipped
    expected_speakers: int | None = None  # the corpus's; a folder renamed would be a speaker of its own
    matched: int = 0  # of those, files read whose sha256 is the publisher's

    @property
    def ok(self) -> bool:
        short = self.expected_counts is not None and self.counts != self.expected_counts
        return not (short or self.speakers_differ or self.unexpected or self.unreadable or self.missing or self.altered)

    def problems(self) -> str:
        """What is wrong, in a few words ('' when ok): for the one line on stderr beside the report."""
        parts = [f"{len(files)} {kind}" for kind, files in (("missing", self.missing), ("altered", self.altered),
                                                             ("unreadable", self.unreadable), ("unexpected", self.unexpected))
                 if files]
        if self.expected_counts is not None and self.counts != self.expected_counts:
            parts.append(f"{sum(self.counts.values())} utterances where {sum(self.expected_counts.values())} are expected"
                         if sum(self.counts.values()) != sum(self.expected_counts.values()) else "class counts not the corpus's")
        if self.speakers_differ:
            parts.append(f"{len(self.speakers)} speakers where {self.expected_speakers} are expected")
        return ", ".join(parts)

    @property
    def speakers_differ(self) -> bool:
        """Speakers not the corpus's number: leave-one-speaker-out folds would not be the corpus's."""
        return bool(self.expected_speakers) and len(self.speakers) != self.expected_speakers


def _manifest_place(found: list[str], used: set[str], manifest: dict[str, str]) -> dict[str, str]:
    """Where each of the publisher's files is in the user's tree. The shipped manifests (EMODB,
    RAVDESS) name every file uniquely, and both corpora are read by file name, so a file is found by
    its name (case aside: `extract` reads 03a01Nc.WAV) wherever `extract` would find it: one level
    up, in EMODB's wav/ folder given itself, in one flat folder of RAVDESS's actors. Of several
    copies, the one `extract` reads (in `used`) is the one checked."""
    by_name: dict[str, list[str]] = {}
    for rel in found:
        by_name.setdefault(PurePosixPath(rel).name.casefold(), []).append(rel)
    place, moves = {}, Counter()
    for known in manifest:
        candidates = by_name.get(PurePosixPath(known).name.casefold(), [])
        if candidates:
            # the copy extract reads (the other is a skipped duplicate), at the publisher's path if several
            place[known] = min(candidates, key=lambda rel: (rel not in used, not (rel == known or rel.endswith("/" + known))))
            moves[_move(known, place[known])] += 1
    # a file not found is listed where the others were found (EMODB/wav/x.wav given the folder above)
    (add, lead), _ = moves.most_common(1)[0] if moves else (("", ""), 0)
    for known in manifest:
        if known not in place:
            place[known] = add + known[len(lead):] if known.startswith(lead) else known
    return place


def _move(known: str, rel: str) -> tuple[str, str]:
    """(folders the user's path adds, folders of the publisher's it drops) around their common tail."""
    a, b = known.split("/"), rel.split("/")
    common = 0
    while common < min(len(a), len(b)) and a[-1 - common].casefold() == b[-1 - common].casefold():
        common += 1
    return "".join(p + "/" for p in b[: len(b) - common]), "".join(p + "/" for p in a[: len(a) - common])


def _harmless(root: Path, path: str, reason: str) -> bool:
    """RAVDESS's songs, IEMOCAP's classes the paper leaves out, and a second copy with the very
    bytes of the file kept, are not damage."""
    if by_design(reason):
        return True
    kept = reason.removeprefix("duplicate of ")
    try:
        return kept != reason and filecmp.cmp(root / path, root / kept, shallow=False)
    except OSError:  # a copy that cannot be read (a broken link) is reported, not the end of the check
        return False


def check_tree(corpus: Corpus | str, root: str | Path, *, manifest: dict[str, str] | None = None) -> CheckReport:
    """Validate a corpus tree against the corpus's expected counts and checksums: `manifest`
    (relative path -> sha256), by default the publisher's shipped with timnet, where there is one."""
    corpus = get_corpus(corpus) if isinstance(corpus, str) else corpus
    root = Path(root).expanduser()  # as list_corpus reads it: a quoted ~ is the home folder
    listing = list_corpus(corpus, root)
    counts = Counter(corpus.labels[it.label] for it in listing.items)
    # IEMOCAP: utterances its label files name, with no audio file, are missing, not strays
    absent = listing.missing
    harmless = {(p, why): _harmless(root, p, why) for p, why in listing.skipped if why != NO_AUDIO}  # each copy compared once
    report = CheckReport(
        corpus=corpus.name, root=str(root),
        counts={name: counts.get(name, 0) for name in corpus.labels},
        expected_counts=dict(zip(corpus.labels, corpus.class_counts)) if corpus.class_counts else None,
        speakers=dict(sorted(Counter(it.speaker for it in listing.items).items())),
        unexpected=[(p, why) for (p, why), ok in harmless.items() if not ok],
        ignored=[(p, why) for (p, why), ok in harmless.items() if ok],
        missing=absent, expected_speakers=corpus.n_speakers or None,
    )
    rates, channels = Counter(), Counter()
    for it in listing.items:
        path = root / it.path
        try:
            # decoded, as `extract` reads it: a header alone passes a cut MP3 or NaN samples
            read_audio(path)
            info = audio_info(path)
            rates[info.samplerate] += 1
            channels[info.channels] += 1
        except (TimnetError, RuntimeError, OSError) as e:
            message = sndfile_message(e).splitlines()[0].removeprefix(f"{path}: ")
            report.unreadable.append(f"{it.path} ({message})")
    report.sample_rates, report.channels = dict(rates), dict(channels)
    manifest = manifest if manifest is not None else read_manifest(corpus.name)
    if manifest is not None:
        report.manifest_files = len(manifest)
        found = [it.path for it in listing.items] + [p for p, why in listing.skipped if why != NO_AUDIO]
        place = _manifest_place(found, {it.path for it in listing.items}, manifest)  # a file not found keeps the publisher's path
        present = set(found)
        for known, digest in manifest.items():
            rel = place[known]
            if rel not in present:
                report.missing.append(rel)
                continue
            try:
                if sha256(root / rel) != digest:
                    report.altered.append(rel)
                else:
                    report.matched += 1
            except OSError as e:  # a dangling link, no read permission: a finding, not the end of the check
                if not any(u.startswith(f"{rel} (") for u in report.unreadable):
                    report.unreadable.append(f"{rel} ({e.strerror or e})")
        report.unexpected += [(p, "not in the publisher's manifest") for p in sorted(present - set(place.values()))
                              if p not in {s for s, _ in listing.skipped}]
    return report


def format_check(r: CheckReport, *, limit: int | None = 20) -> str:
    """A readable account of a check: counts against the expected, then the problems by name, the
    first `limit` of each kind (None: every one; a partial copy of RAVDESS misses a thousand)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    lines = [f"{r.corpus} at {r.root}: {'complete' if r.ok else 'PROBLEMS FOUND'}", "",
             f"{'class':<10} {'found':>6} {'expected':>8}"]
    for name, n in r.counts.items():
        exp = r.expected_counts.get(name) if r.expected_counts else None
        mark = "" if exp is None or exp == n else "  <-"
        lines.append(f"{name:<10} {n:>6} {exp if exp is not None else '?':>8}{mark}")
    lines.append(f"{'total':<10} {sum(r.counts.values()):>6} {sum(r.expected_counts.values()) if r.expected_counts else '?':>8}")
    expected = f", expected {r.expected_speakers}" if r.speakers_differ else ""
    lines.append(f"speakers ({len(r.speakers)}{expected}): " + ", ".join(f"{s} {n}" for s, n in r.speakers.items())
                 + ("  <-" if expected else ""))
    lines.append("sample rates: " + ", ".join(f"{sr} Hz x{n}" for sr, n in sorted(r.sample_rates.items())))
    lines.append("channels: " + ", ".join(f"{c} x{n}" for c, n in sorted(r.channels.items())))
    if r.manifest_files is None:
        lines.append(f"checksums: none shipped for {r.corpus} (counts and readability checked)")
    else:
        lines.append(f"checksums: {r.matched} of the publisher's {r.manifest_files} files match their sha256")
    named = "the publisher's manifest" if r.manifest_files is not None else "the corpus's label files"
    for title, entries in ((f"missing (in {named}, not found)", r.missing),
                           ("altered (sha256 differs from the manifest)", r.altered),
                           ("unreadable", r.unreadable),
                           ("unexpected (not used)", [f"{p} ({SAID.get(why, why)})" for p, why in r.unexpected]),
                           ("ignored (part of the corpus's distribution, not used; not a problem)",
                            [f"{p} ({why})" for p, why in r.ignored])):
        if entries:
            shown = entries if limit is None else entries[:limit]
            lines += ["", f"{title}: {len(entries)}"] + [f"  {e}" for e in shown]
            if len(shown) < len(entries):
                lines.append(f"  ... and {len(entries) - len(shown)} more (--all lists every one)")
    return "\n".join(lines)
