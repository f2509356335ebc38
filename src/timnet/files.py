"""Writing files so that nothing half-written is ever read: atomic replacement, JSON and CSV,
output paths checked before any work, a lock on a folder being written, and a check of a
torch.save file's checksums."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

from .errors import TimnetError


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    A reader never sees a half-written file, and a run killed mid-write leaves only a
    stray hidden temporary file, never a truncated result under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only folder: name the file asked for, not a random temporary name
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    # mkstemp makes the file private (0600); results should get the usual permissions (umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        # on disk before the rename is: after a power cut the real name holds the old file or the
        # new one, never a new name over data not yet written (a resumed run would trust it)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # (a copy into the temporary file names it second: shutil.copyfile's filename is its source)
        if isinstance(e, OSError) and e.errno is not None and (e.filename is None or tmp in (str(e.filename),
                                                                                            str(e.filename2))):
            # the user knows the file they asked for, not its hidden temporary twin (and a failed
            # write, a full disk, names no file at all)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def save_torch(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically. Through a file object: given a path, torch's zip writer
    reports a full disk as a RuntimeError ("unexpected pos ..."), not as the OSError it is."""
    import torch

    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; where a folder cannot be opened so (Windows), skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write dict rows as CSV (columns in order of first appearance), atomically."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())


def check_output(path: str | Path, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that could not be written: a file where a folder is
    wanted or the reverse, a parent that is a file, or a place this user may not write."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise TimnetError(f"{path} is a {'file' if folder else 'folder'}; expected {'a folder' if folder else 'a file path'}")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TimnetError(f"{path}: {parent} is a file, not a folder")
    try:  # a file made and dropped: os.access says yes to root even where nothing can be made (/proc)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError:
        raise TimnetError(f"{path}: {parent} is not writable") from None


@contextlib.contextmanager
def folder_lock(folder: str | Path):
    """Hold `folder` (created if missing) for this process while the block writes in it.

    Two timnet processes writing one RUN_DIR (the same command started twice, or --overwrite of a
    run still training) would interleave snapshots and delete each other's folds; the second is
    refused instead. The lock is the kernel's (flock on the folder), so a killed process never
    leaves it behind. A folder created here and still empty at the end (a failure before anything
    was written) is removed again.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are unguarded there
        fcntl = None
    fd, refused = None, False
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY) if fcntl else None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                refused = True
                raise TimnetError(f"{folder} is being written by another timnet process; wait for it to end "
                                  "(or stop it), or use another folder") from None
            except OSError:  # a file system without locks (some network mounts): the run goes on unguarded
                pass
        yield folder
    finally:
        if created and not refused:  # the folder is another process's once it holds it
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: whatever the run wrote stays
        if fd is not None:
            os.close(fd)


def damaged_record(path: str | Path) -> str | None:
    """The first record of a zip file (torch.save's format) whose bytes fail their CRC-32, or None.
    torch.load does not check these checksums, so a weight with a bit flipped by a disk or a copy
    would load silently and predict with it."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        return None  # not a whole zip: torch.load's own failure says what the file is
