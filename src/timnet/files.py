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

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    A reader never sees a half-written file, and a run killed mid-write leaves only a
    stray hidden temporary file, never a truncated result under the real name. A stream is not
    replaced by a file: this process's own stdout or stderr (/dev/stdout, or a link to it) gets
    the bytes appended where it stands, another device or a pipe (/dev/null) is written through.
    """
    path = Path(path)
    kind = _stream(path)
    if kind is not None:
        with _written_to_stream(path, kind) as target:
            yield target
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = owned_temporary(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only folder: name the file asked for, not a random temporary name
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
    if fcntl is None:  # no lock to hold (Windows, where an open file cannot be renamed either)
        os.close(fd)
        fd = None
    # else fd stays open, holding the temporary's lock, until it is renamed or deleted (owned_temporary)
    try:
        # mkstemp makes the file private (0600); results should get the usual permissions (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        # on disk before the rename is: after a power cut the real name holds the old file or the
        # new one, never a new name over data not yet written (a resumed run would trust it)
        sync = os.open(tmp, os.O_RDONLY) if fd is None else fd
        try:
            os.fsync(sync)
        finally:
            if fd is None:
                os.close(sync)
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
    finally:
        if fd is not None:
            os.close(fd)


def _stream(path: Path) -> int | str | None:
    """1 or 2 when `path` is this process's stdout or stderr (/dev/stdout, /proc/self/fd/2, a link
    to one: the same file, whatever its name), "device" for another device, pipe or socket, None
    for a file (or a path not there yet)."""
    try:
        st = os.stat(path)  # through every link
    except (OSError, ValueError):
        return None
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            own = os.fstat(fd)
            if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
                return fd
    return None if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else "device"


@contextlib.contextmanager
def _written_to_stream(path: Path, kind: int | str):
    """A device or pipe is written through by its name (a temporary renamed over it would put a
    regular file in its place: as root, over /dev/null). This process's own stdout or stderr is
    not reopened, which would truncate a file the shell redirects it into and write from its start
    over what was printed: the bytes go to a temporary file first, then are appended through the
    stream's descriptor, after what the process printed."""
    if kind == "device":
        try:
            yield path
        except OSError as e:  # a write to /dev/full names no file
            if e.errno is None or e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(path)) from e
        return
    fd, tmp = tempfile.mkstemp(prefix="timnet-out-")
    os.close(fd)
    try:
        yield Path(tmp)
        view = memoryview(Path(tmp).read_bytes())
        for stream in (sys.stdout, sys.stderr):  # what was printed first, then the file's bytes
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            while view:
                view = view[os.write(kind, view):]
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        Path(tmp).unlink(missing_ok=True)


# A temporary file's name carries its writer, PID@HOST, and the writer holds a lock on it (flock)
# while it writes: one left by a process killed outright (SIGKILL, the out-of-memory killer, a
# session's end), which could not remove it, is removed by the next write of the same file on the
# same host, once that process is gone and the lock with it. The lock also covers what the pid
# cannot tell: processes of one host name in other pid namespaces (containers), a pid reused.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"


def owned_temporary(folder: str | Path, *, prefix: str, suffix: str) -> tuple[int, str]:
    """tempfile.mkstemp's (fd, path) in `folder`, named prefix + random + .PID@HOST + suffix and
    locked while fd is open (where the system has flock), after deleting the files of that pattern
    whose process on this host has ended and whose lock is free."""
    mine = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.(\d{1,9})@" + re.escape(_HOST) + re.escape(suffix))
    for stale in Path(folder).glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        m = mine.fullmatch(stale.name)
        if m and _ended(int(m[1])) and _unlocked(stale):
            with contextlib.suppress(OSError):
                stale.unlink()
    fd, path = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=f".{os.getpid()}@{_HOST}{suffix}")
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: never deleted by another process then
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, path


def _ended(pid: int) -> bool:
    """Whether process `pid` of this host has ended; False where that cannot be asked (on Windows
    os.kill would end it, not ask)."""
    if sys.platform == "win32" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's process (alive), or no such pid at all
        return False
    return False


def _unlocked(path: Path) -> bool:
    """Whether no process holds `path`'s lock (taken and released at once); False where locks are
    unknown, so that nothing is deleted on a guess."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # the lock goes with it


def in_use(path: str | Path) -> bool:
    """Whether a live process holds `path`'s lock: an owned_temporary still being written. False
    where locks are unknown (Windows), so that callers fall back to what they did before locks."""
    return fcntl is not None and Path(path).exists() and not _unlocked(Path(path))


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
