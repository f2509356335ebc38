"""Fetch the corpora whose publishers offer a public download: resumable, safely unpacked, verified."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .check import CheckReport, check_tree
from .corpora import get_corpus
from .errors import TimnetError
from .progress import progress_bar

URLS = {
    "EMODB": "http://emodb.bilderbar.info/download/download.zip",
    "RAVDESS": "https://zenodo.org/record/1188976/files/Audio_Speech_Actors_01-24.zip",
}
WHERE = {
    "CASIA": "CASIA is distributed by the Chinese Academy of Sciences' Institute of Automation (CASIA); "
             "the public 1200-utterance subset circulates among researchers",
    "EMOVO": "EMOVO is distributed by Fondazione Ugo Bordoni (Costantini et al., LREC 2014) on request",
    "IEMOCAP": "IEMOCAP is released by USC SAIL (sail.usc.edu/iemocap) after signing its licence agreement",
    "SAVEE": "SAVEE is distributed by the University of Surrey (kahlan.eps.surrey.ac.uk/savee) after registration",
}
CHUNK = 1 << 16
RETRY_SECONDS = 1.0  # the first wait before a retry; doubled each time
RETRY_HTTP = {408, 429, 500, 502, 503, 504}  # the server's passing trouble: worth another try, unlike 404


def _range_total(content_range: str | None) -> int | None:
    """The file's full length from a Content-Range header ("bytes 0-99/1234" or "bytes */1234")."""
    try:
        return int(content_range.rsplit("/", 1)[1])
    except (AttributeError, IndexError, ValueError):  # absent, or "/*": length unknown
        return None


def _name_version(version: Path, headers) -> None:
    """Keep the validator of the file being downloaded from the start (a weak ETag cannot serve
    If-Range; Last-Modified then does), or none."""
    tag = headers.get("ETag")
    tag = tag if tag and not tag.startswith("W/") else headers.get("Last-Modified")
    with _local(version):
        version.write_text(tag) if tag else version.unlink(missing_ok=True)


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks to wait (its date form is not read), at most a minute."""
    try:
        return min(float(value), 60.0)
    except (TypeError, ValueError):
        return 0.0


def _body_span(response) -> tuple[int | None, int | None]:
    """(the byte of the file this body starts at, the file's full length or None). A 200 is the whole
    file; a 206 says where its part starts in Content-Range, and one that does not is unplaceable (None)."""
    length = response.headers.get("Content-Length")
    if response.status != 206:
        return 0, int(length) if length is not None else None
    content_range = response.headers.get("Content-Range") or ""
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None, None
    total = _range_total(content_range)
    return start, total if total is not None else (start + int(length) if length is not None else None)


def fetch(url: str, dest: Path, *, retries: int = 3, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming a previous partial `dest.part` with an HTTP Range request."""
    import http.client
    import urllib.error
    import urllib.request

    try:  # before any folder is made: urllib's ValueError is its word for "not a URL"
        urllib.request.Request(url)
    except ValueError as e:
        raise TimnetError(f"--url {url}: not a URL ({e}); expected e.g. https://host/corpus.zip") from None
    if dest.is_file() and zipfile.is_zipfile(dest):
        return dest  # downloaded whole before (a re-run after a failed unpack or check): not again
    part = dest.with_name(dest.name + ".part")
    # The part's version as the server named it (ETag, else Last-Modified): sent back as If-Range,
    # so a file replaced on the server since comes whole (200) instead of its tail spliced on.
    version = dest.with_name(dest.name + ".part.version")
    wait = 0.0
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have and version.is_file():
            headers["If-Range"] = version.read_text()
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                start, total = _body_span(response)
                if start not in (0, have):  # bytes from elsewhere in the file (or unsaid): they cannot be placed
                    part.unlink(missing_ok=True)
                    raise ConnectionError(f"the server's part starts at byte {start}, not {have}; starting over")
                have = start  # 0 when the server ignored the range, or the file changed: start over
                # the folders once the server answers: an address that fails at once leaves none behind
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not have:
                    _name_version(version, response.headers)
                with _local(part):  # only the file's own calls: a reset connection is an OSError too
                    f = open(part, "ab" if have else "wb")
                with f, progress_bar(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                                     enabled=progress) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        with _local(part):
                            f.write(block)
                        bar.update(len(block))
                    with _local(part):  # the buffered tail: a full disk may only show here
                        f.flush()
                if total is not None and part.stat().st_size != total:
                    raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
            os.replace(part, dest)
            version.unlink(missing_ok=True)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # range beyond the end: whole only if the server says the file is `have` long
                if _range_total(e.headers.get("Content-Range")) == have:
                    os.replace(part, dest)
                    version.unlink(missing_ok=True)
                    return dest
                part.unlink(missing_ok=True)  # longer than the file now served: start over
                error = "HTTP 416: the partial download does not fit the file served; starting over"
            elif e.code in RETRY_HTTP:
                error = f"HTTP {e.code} {e.reason}"
                wait = _retry_after(e.headers.get("Retry-After"))
            else:
                raise TimnetError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None)
            dns_busy = isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_AGAIN  # worth a retry
            # (a file:// address naming a folder, or nothing: a local mistake, not a blip)
            local = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
            unknown = isinstance(reason, (socket.gaierror, ConnectionRefusedError, *local)) and not dns_busy
            if unknown or (isinstance(e, urllib.error.URLError) and isinstance(reason, str)):  # "no host given"
                # nothing to resume: retrying or "run it again" would not help
                raise TimnetError(f"{url}: cannot be downloaded ({reason}); check the address") from None
            error = str(e)
        if attempt == retries:
            raise TimnetError(f"{url}: download interrupted ({error}); run the same command again to resume "
                              f"from {part.stat().st_size if part.exists() else 0} bytes") from None
        # 1 s, 2 s, ...: long enough for a blip to pass; longer if a busy server asks for it
        time.sleep(max(RETRY_SECONDS * 2 ** (attempt - 1), wait))
        wait = 0.0
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _local(part: Path):
    """A write to this machine's disk that fails (full, no permission) is said as such: no retry and
    no "interrupted" would help."""
    try:
        yield
    except OSError as e:
        raise TimnetError(f"{part}: cannot be written ({e.strerror or e}); free space or choose another DIR") from None


def _safe_members(archive: zipfile.ZipFile, root: Path) -> list[zipfile.ZipInfo]:
    """Every member, after refusing absolute paths, `..`, and symlinks (checked before anything is written)."""
    root = root.resolve()
    for info in archive.infolist():
        name = PurePosixPath(info.filename.replace("\\", "/"))
        mode = info.external_attr >> 16
        if name.is_absolute() or ".." in name.parts or (info.filename[1:3] == ":/"):
            raise TimnetError(f"archive member {info.filename!r} would be written outside {root}; refusing the archive")
        if stat.S_ISLNK(mode):
            raise TimnetError(f"archive member {info.filename!r} is a symbolic link; refusing the archive")
        if not (root / name).resolve().is_relative_to(root):
            raise TimnetError(f"archive member {info.filename!r} resolves outside {root}; refusing the archive")
    return archive.infolist()


def unpack(zip_path: Path, root: Path) -> int:
    """Extract a zip into `root` safely; returns the number of files written."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        if tarfile.is_tarfile(zip_path):  # a copy of one's own in another format: downloading again cannot help
            raise TimnetError(f"{zip_path}: a tar archive, not a zip; expected a .zip (or unpack it yourself and "
                              "give its folder to `timnet corpora --check` and `timnet extract`)") from None
        raise TimnetError(f"{zip_path}: not a zip archive (a failed download?); delete it and try again") from None
    with archive:
        members = _safe_members(archive, root)
        n = 0
        for info in members:
            if info.is_dir():
                continue
            target = root / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            # To a fresh temporary name (never another member's): a damaged member, or an interrupt,
            # leaves no half-written audio in the corpus tree.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with archive.open(info) as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, target)
            except BaseException as e:
                Path(tmp).unlink(missing_ok=True)
                if isinstance(e, (zipfile.BadZipFile, zlib.error, EOFError)):
                    raise TimnetError(f"{zip_path}: damaged archive ({info.filename}: {e}); "
                                      "delete it and download again") from None
                if isinstance(e, (RuntimeError, NotImplementedError)):  # zipfile: encrypted, or a compression it lacks
                    raise TimnetError(f"{zip_path}: cannot unpack {info.filename} ({e}); "
                                      "unpack the archive with another tool into the corpus folder") from None
                raise
            n += 1
        return n


def download(corpus: str, root: str | Path, *, url: str | None = None, manifest: dict[str, str] | None = None,
             progress: bool = True) -> tuple[int, CheckReport]:
    """Download and unpack a corpus into `root`, then check the tree as `timnet corpora --check`
    does (files found by name wherever `extract` finds them, counts, readability, and checksums
    against `manifest`, by default the publisher's where timnet ships one); returns (files
    unpacked, the check's report)."""
    c = get_corpus(corpus)
    url = url or URLS.get(c.name)
    if url is None:
        raise TimnetError(f"{c.name} has no public download: {WHERE[c.name]}; then point timnet at your copy "
                          f"(expected layout {c.layout})")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise TimnetError(f"{root} is a file; expected a folder to unpack {c.name} into")
    # One cache folder per address: another --url with the same file name is another archive.
    cache = root / ".download" / hashlib.sha256(url.encode()).hexdigest()[:16]
    archive = fetch(url, cache / (Path(url.split("?")[0]).name or "corpus.zip"), progress=progress)
    n = unpack(archive, root)
    return n, check_tree(c, root, manifest=manifest)
