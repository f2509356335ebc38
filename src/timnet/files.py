"""Writing files so that nothing half-written is ever read: atomic replacement, JSON and CSV,
output paths checked before any work, a lock on a folder being written, and a check of a
torch.save file's checksums."""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import socket
import stat
import sys
import tempfile
from pathlib import Path

from .errors import TimnetError


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    A reader never sees a half-written file, and a run killed mid-write leaves only a
    stray hidden temporary file, never a truncated result under the real name. A stream (a device,
    a pipe, /dev/stdout) is yielded itself, to be written through; a link to a file is followed,
    and the file it names replaced, not the link.
    """
    path = Path(path)
    if _streamed(path):
        try:
            yield path
        except OSError as e:  # a write to /dev/full names no file
            if e.errno is None or e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(path)) from e
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = owned_temporary(path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def _streamed(path: Path) -> bool:
    """An output to write straight through, not by a temporary file renamed over it, which would
    put a regular file in place of a device or a pipe (as root, in place of /dev/null): anything
    but a regular file or a folder, and a process's own streams (/dev/stdout, /proc/self/fd/1,
    or a link to one), which are regular files when the shell redirects them into one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there yet (or a dangling link): a new file
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    names = [os.path.abspath(path)] + ([os.path.join(path.parent, os.readlink(path))] if path.is_symlink() else [])
    return any(name.startswith(("/dev/std", "/dev/fd/", "/proc/")) for name in names)  # not /dev/shm's files


# A temporary file's name carries its writer, PID@HOST: one left by a process killed outright
# (SIGKILL, the out-of-memory killer, a session's end), which could not remove it, is removed by
# the next write of the same file on the same host once that process is gone.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def owned_temporary(folder: str | Path, *, prefix: str, suffix: str) -> tuple[int, str]:
    """tempfile.mkstemp's (fd, path) in `folder`, named prefix + random + .PID@HOST + suffix, after
    deleting the files of that pattern whose process on this host has ended."""
    mine = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.(\d+)@" + re.escape(_HOST) + re.escape(suffix))
    for stale in Path(folder).glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        m = mine.fullmatch(stale.name)
        if m and _ended(int(m[1])):
            with contextlib.suppress(OSError):
                stale.unlink()
    return tempfile.mkstemp(dir=folder, prefix=prefix, suffix=f".{os.getpid()}@{_HOST}{suffix}")


def _ended(pid: int) -> bool:
    """Whether process `pid` of this host has ended; False where that cannot be asked (on Windows
    os.kill would end it, not ask)."""
    if sys.platform == "win32" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def temporary_target(name: str) -> str | None:
    """The file name that atomic_write's hidden temporary `name` (.NAME.RANDOM[.PID@HOST].tmp) stands for, or None."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, dot, _ = re.sub(r"\.\d+@[A-Za-z0-9-]+$", "", name[1:-4]).rpartition(".")
    return target if dot else None


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
