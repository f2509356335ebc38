"""Processes, threads and signals: starting workers so that Ctrl-C and SIGTERM reach them sanely,
ending a pool's workers at once, noticing a dead one, a child's watch on its parent, a SIGTERM
handler for a block, and the threads torch computes with for a block."""
from __future__ import annotations

import contextlib


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
