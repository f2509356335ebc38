"""Small helpers shared by several modules."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path


RUN_FILE = "run.json"  # a run's identity (timnet.run): what marks a folder as a RUN_DIR
# What timnet writes in a RUN_DIR besides run.json and fold_NN/, for any kind of run (folds,
# --all-data, --seeds, plot): --overwrite deletes all of them, so that nothing of the old run is
# left to be read as the new one's (an old all-data model.pt beside new folds would be predicted with).
RUN_OUTPUTS = ("results.json", "results.csv", "validation.json", "report.html", "plots", "model.pt",
               "state*.pt", "member_*.pt", "history*.csv", "seeds.json", "seeds.csv")
DIVERGED_FILE = "diverged.json"  # a sweep trial's fold member whose loss became NaN, until its fold records it
# Every name timnet gives a file in a run, fold or sweep folder: never a user's --json, and the only
# hidden temporary files (utils.atomic_write) a resume clears.
RUN_FILES = (*RUN_OUTPUTS, RUN_FILE, "result.json", "sweep.json", "trials.csv", DIVERGED_FILE)


def history_name(m: int) -> str:
    """Member m's training history in its fold folder: the first member's (the single model's) is
    history.csv, so a one-model fold and an ensemble's member 0 read alike."""
    return "history.csv" if m == 0 else f"history_member{m}.csv"


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


def printable(text) -> str:
    """`text` with the bytes of a name that was not UTF-8 (an old Latin-1 zip's "Jos\\xe9", kept by
    Python as surrogates) shown as \\xe9: matplotlib and a UTF-8 page cannot take them as they are."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` for the block; the caller's count is restored after (a
    notebook that trains a run keeps its own)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    from .errors import TimnetError

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
    from .errors import TimnetError

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


@contextlib.contextmanager
def signals_held(context):
    """Start child processes (of multiprocessing `context`) inside: Ctrl-C and SIGTERM wait for the
    end of the block, and the children begin with Ctrl-C blocked. A spawned worker otherwise hears a
    Ctrl-C while it still imports torch, before it can ignore it, and prints its own traceback; a
    manager process interrupted while starting is left serving, and the parent waits for it at exit
    forever. Only in the main thread, where handlers live; a signal ignored stays ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocking = hasattr(signal, "pthread_sigmask")  # not on Windows
    if blocking and context.get_start_method() != "fork":
        from multiprocessing import resource_tracker

        # started with the first spawned process, the tracker unblocks SIGINT after its own start,
        # and the process spawned next would start open: it is started before the block (forked
        # processes need no tracker)
        resource_tracker.ensure_running()
    held = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    held = {sig: previous for sig, previous in held.items() if previous not in (signal.SIG_IGN, None)}
    arrived, mask = [], None
    try:
        for sig in held:
            signal.signal(sig, lambda signum, frame: arrived.append(signum))
        if blocking and signal.SIGINT in held:
            # the signal mask, unlike a handler, survives exec: the children start with Ctrl-C blocked
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C held by the mask arrives here
        for sig, previous in held.items():
            signal.signal(sig, previous)
        for sig in dict.fromkeys(arrived):  # in the order they came, to their own handlers now (also when the block failed)
            signal.raise_signal(sig)


@contextlib.contextmanager
def sigterm_handler(handler=None):
    """Within the block SIGTERM goes to `handler` (None: keep the current one, even if a library such
    as Ray installs its own meanwhile); the previous handler is restored after. Only in the main
    thread, where handlers live, and never over an inherited SIG_IGN (a launcher's choice)."""
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def when_parent_ends(then) -> None:
    """Call `then()` in a thread of this child process (of multiprocessing) once its parent has ended,
    however it ended. A parent killed outright (kill -9, the out-of-memory killer) ends nothing, and
    a pool's worker waiting for work, or a manager serving, would otherwise wait for ever."""
    import threading
    from multiprocessing import parent_process

    parent = parent_process()
    if parent is None:  # not a child of multiprocessing: nothing to watch
        return

    def watch() -> None:
        # returns when the parent's end of a pipe closes: at its exit, or with a forked sibling's
        # copy, at that sibling's exit, which it makes for the same reason
        parent.join()
        then()

    threading.Thread(target=watch, name="timnet-parent-watch", daemon=True).start()


def end_pool(pool) -> None:
    """End a ProcessPoolExecutor's workers now (interrupted, terminated or failed), instead of letting
    them work through the queued tasks, which `shutdown` alone would wait for. Python has no public
    way before 3.14's terminate_workers."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # None once the pool shut down
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    # A worker killed halfway through sending a result leaves the pool's manager thread waiting for
    # the rest of that message (and `shutdown`, and the interpreter's exit, waiting on the thread).
    # With every worker gone, closing the parent's own copy of the write end turns the wait into an
    # end of file, which the manager handles as a broken pool.
    result_queue = getattr(pool, "_result_queue", None)
    if result_queue is not None:
        result_queue._writer.close()
    pool.shutdown(wait=True, cancel_futures=True)


def pool_result(pool, future, poll: float = 0.5):
    """`future.result()`, raising BrokenProcessPool once a worker has died (see `check_pool`)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    while True:
        try:
            return future.result(timeout=poll)
        except FutureTimeout:
            check_pool(pool)


def check_pool(pool) -> None:
    """Raise BrokenProcessPool if a worker of a running ProcessPoolExecutor has exited (they only exit
    at shutdown). The executor notices a dead worker itself, except one killed while sending a result:
    its manager thread then waits for the rest of the message and never fails the futures (CPython
    3.11-3.13), so a parent waiting on them checks between waits."""
    from concurrent.futures.process import BrokenProcessPool

    if any(p.exitcode is not None for p in list((getattr(pool, "_processes", None) or {}).values())):
        raise BrokenProcessPool("a worker process ended while the pool was running")


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


def fold_number(name: str) -> int | None:
    """k of a fold folder's name fold_<k> as timnet writes it (fold_01), None for any other name."""
    m = re.fullmatch(r"fold_(\d+)", name)
    return int(m[1]) if m else None


def fold_dirs(run_dir: str | Path) -> list[Path]:
    """A run's fold folders, fold_01, fold_02, ... in order: only names timnet writes, so that a
    user's copy beside them (fold_01_old) is neither counted as a fold nor deleted with the run."""
    return sorted((p for p in Path(run_dir).glob("fold_*") if fold_number(p.name) is not None and p.is_dir()),
                  key=lambda p: fold_number(p.name))


def fold_files(run_dir: str | Path, name: str) -> list[Path]:
    """The file `name` (model.pt, result.json) of each fold folder that has it, in fold order; a
    fold folder past the run's own folds (a copy from another run) is refused, not ensembled or tested."""
    dirs = fold_dirs(run_dir)
    _refuse_stray_folds(Path(run_dir), dirs)
    return [d / name for d in dirs if (d / name).is_file()]


def _refuse_stray_folds(run_dir: Path, dirs: list[Path]) -> None:
    from .errors import TimnetError
    from .rundir import read_identity  # here only: rundir imports this module

    if not dirs or not (run_dir / RUN_FILE).is_file():
        return  # a folder of fold checkpoints without a run file: every fold in it is the user's choice
    try:
        folds = read_identity(run_dir).get("folds")
    except TimnetError:
        return  # the caller reads run.json itself where it needs it, and says what is wrong with it
    if isinstance(folds, int) and (stray := [d.name for d in dirs if not 1 <= fold_number(d.name) <= folds]):
        raise TimnetError(f"{run_dir}: {', '.join(stray)} {'is not a fold' if len(stray) == 1 else 'are not folds'} "
                          f"of this {folds}-fold run (its {RUN_FILE}); expected fold_01 to fold_{folds:02d} only: move "
                          f"{'it' if len(stray) == 1 else 'them'} out of the run folder")


def read_fold_result(path: str | Path) -> dict:
    """A fold's result.json, checked to hold what is read from it: a fold number and, for a tested
    fold, its WAR, UAR and confusion; for a validation-only fold, its validation WAR and UAR, or why it diverged."""
    from .errors import TimnetError

    path = Path(path)
    remedy = "delete it to train that fold again"
    try:
        r = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TimnetError(f"{path}: not a readable fold result ({e}); {remedy}") from None
    number = (int, float)
    ok = isinstance(r, dict) and isinstance(r.get("fold"), int) and (
        isinstance(r.get("war"), number) and isinstance(r.get("uar"), number) and _is_confusion(r.get("confusion"), r.get("n_test"))
        if "war" in r else isinstance(r.get("diverged"), str)  # a sweep trial's fold whose loss became NaN
        or isinstance(r.get("val_war"), number) and isinstance(r.get("val_uar"), number))
    if not ok:
        raise TimnetError(f"{path}: not a timnet fold result (a JSON object with fold, war, uar, n_test and a square "
                          f"confusion of n_test utterances, or a validation-only fold's val_war, val_uar); {remedy}")
    if (k := fold_number(path.parent.name)) is not None and r["fold"] != k:
        raise TimnetError(f"{path}: the result of fold {r['fold']}, in {path.parent.name}; expected each fold's result "
                          f"in its own folder (a copy from another fold?); {remedy}")
    return r


def _is_confusion(confusion, n_test) -> bool:
    """Whether `confusion` is a square matrix of counts of `n_test` utterances, as evaluate writes it."""
    return (isinstance(n_test, int) and isinstance(confusion, list) and len(confusion) > 0
            and all(isinstance(row, list) and len(row) == len(confusion) for row in confusion)
            and all(isinstance(c, int) and c >= 0 for row in confusion for c in row)
            and sum(map(sum, confusion)) == n_test)


def diverged_folds(run_dir: str | Path) -> list[int]:
    """The folds of a run (a sweep trial) recorded as diverged: their loss became NaN or infinite, so they
    are finished with no model (timnet.sweep)."""
    return sorted(r["fold"] for r in map(read_fold_result, fold_files(run_dir, "result.json")) if r.get("diverged"))


def diverged_words(folds: list[int]) -> str:
    """How every command names a sweep trial's diverged folds."""
    return f"fold {', '.join(map(str, folds))} diverged (the loss became NaN or infinite)"


def unfinished_words(run_dir: str | Path, n_finished: int, folds: int) -> str:
    """How a command says that only `n_finished` of a run's `folds` have a model: the folds a sweep
    trial lost to divergence named, as they will never have one."""
    results = {path.parent: read_fold_result(path) for path in fold_files(run_dir, "result.json")}
    lost = sorted(r["fold"] for r in results.values() if r.get("diverged"))
    text = f"only {n_finished} of {folds} folds " + (f"have a model ({diverged_words(lost)})" if lost else "are finished")
    # figures kept without weights (the benchmarks' ledger restores figures only; a model.pt deleted):
    # `train` counts such a fold done, so it says how to have it trained again
    bare = [d.name for d, r in results.items() if not r.get("diverged") and not (d / "model.pt").exists()]
    if bare:
        text += "; " + weightless_words(bare)
    return text


def weightless_words(folds: list[str], said: str = "") -> str:
    """How every command names finished folds kept without their model.pt (`said`: what it adds),
    with the way to have them trained again."""
    one = len(folds) == 1
    return (f"{', '.join(folds)} {'has' if one else 'have'} figures but no model.pt{said} (delete "
            f"{'its' if one else 'their'} result.json and run the same `timnet train` to train {'it' if one else 'them'} again)")
