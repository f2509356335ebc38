"""Where folds are trained: worker processes on this machine, or Ray tasks on a cluster.

A task is one fold of one run, (run index, fold). Local worker processes split an ensemble's
fold (`--members K`) further, into one unit per member (`Run.train_member`, which keeps the member
in the fold's folder) and then the fold, so that its members train at once. Both backends end a
fold with the very same `Run.train_and_test_fold`, which resumes from the fold's snapshot and writes its results
atomically into the run's folder, so results, checkpoints and resume semantics do not depend
on the backend. A backend yields (task, result) as tasks finish and reports epochs through
`on_epoch(task, row)`.
"""
from __future__ import annotations

import math
import os
import re
import socket
from typing import Callable, Iterator

from .errors import TimnetError
from .files import owned_temporary
from .processes import check_pool, end_pool, signals_held, sigterm_handler, when_parent_ends

Task = tuple[int, int]  # (index of the run, fold number)
OnEpoch = Callable[[Task, dict], None]


class LocalBackend:
    """Folds in worker processes, `workers` at a time (in this process when workers is 1).

    `waits` ({(task, member): task}) holds an ensemble's member back until another task's fold has
    finished: the benchmarks give a run the members another run trains alike (benchmarks/_common.py)
    as that run's fold ends, which must come before a worker starts training them. In one process
    the tasks' order does the same (a task waited for comes first)."""

    name = "local"

    def __init__(self, workers: int = 1, *, waits: dict | None = None):
        if workers < 1:
            raise TimnetError(f"--workers {workers} invalid; expected a positive number")
        self.workers = workers
        self.waits = dict(waits or {})

    def start(self) -> None:
        """Nothing to start: workers are made per run."""

    def map(self, runs: list, tasks: list[Task], on_epoch: OnEpoch) -> Iterator[tuple[Task, dict]]:
        if self.workers <= 1 or len(_units(runs, tasks, self.workers)) <= 1:
            for task in tasks:
                ri, k = task
                yield task, runs[ri].train_and_test_fold(k, on_epoch=lambda row, task=task: on_epoch(task, row),
                                                         worker=_worker_info())
            return
        yield from _local_pool(runs, tasks, on_epoch, workers=self.workers, waits=self.waits)


# -- worker processes ---------------------------------------------------------------------------------
# Folds are independent, so they run in worker processes with one or a few threads each: on small
# CPUs that beats one process with all threads (the network's ops are too small to scale well).

_WORKER: dict = {}


def _worker_init(runs_file: str, queue) -> None:
    import pickle
    import signal

    # Ctrl-C reaches the whole process group; the parent alone decides to stop (and ends the
    # workers), otherwise each worker would treat it as one failed fold and start the next.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (kill -9, the out-of-memory killer) ends nothing; a worker then stops
    # at once, whether training (not to train on as an orphan) or waiting for work that never comes.
    when_parent_ends(lambda: os._exit(1))
    with open(runs_file, "rb") as f:
        runs = pickle.load(f)
    _WORKER.update(runs=runs, queue=queue)


def _worker_unit(unit: tuple) -> tuple[tuple, dict | None]:
    """One unit of a pool's work: ("member", (run, fold), m) trains one member of an ensemble's fold;
    ("fold", (run, fold)) trains what is left of the fold and tests it (its result)."""
    runs, queue = _WORKER["runs"], _WORKER["queue"]
    kind, task = unit[0], unit[1]

    def on_epoch(row: dict) -> None:
        queue.put((task, row))

    ri, k = task
    if kind == "member":
        runs[ri].train_member(k, unit[2], on_epoch=on_epoch)
        return unit, None
    return unit, runs[ri].train_and_test_fold(k, on_epoch=on_epoch, worker=_worker_info())


def _units(runs: list, tasks: list[Task], workers: int) -> list[tuple]:
    """The pool's work in order. With more than one worker, an ensemble's fold is split into its
    unfinished members, each a unit any worker may take, then the fold itself (which finds them
    trained): two workers finish one fold of two members in half the time, a lone last fold does
    not leave workers idle, and a run stopped part way has lost at most one member per worker."""
    units = []
    for task in tasks:
        run = runs[task[0]]
        if workers > 1 and run.config.members > 1:
            done = run.members_done(task[1])
            units += [("member", task, m) for m in range(run.config.members) if m not in done]
        units.append(("fold", task))
    return units


def _ready(unit: tuple, unfinished: list, *, finished: set, planned: set, waits: dict) -> bool:
    """Whether a queued unit may start: a member unless it waits for a planned task's fold that has
    not finished (LocalBackend's `waits`); a fold once none of its members is queued or training."""
    if unit[0] == "member":
        return (source := waits.get((unit[1], unit[2]))) not in planned or source in finished
    return not any(u[0] == "member" and u[1] == unit[1] for u in unfinished)


def _worker_info(**more) -> dict:
    """Where a fold ran, recorded in its result: the machine and what decides the bits of its
    arithmetic there (the CPU, numpy's loops, MKL's branch: timnet.dispatch)."""
    from . import dispatch

    return {"host": socket.gethostname(), "pid": os.getpid(), "cpu": dispatch.cpu_model(), **dispatch.state(), **more}


def _local_pool(runs: list, tasks: list[Task], on_epoch: OnEpoch, *, workers: int, waits: dict | None = None):
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # fork after torch has run threads is not safe
    # The runs (features included) reach the workers through a file, not their start-up pipe: a
    # worker that dies before reading that pipe (a broken install, the out-of-memory killer) would
    # leave the parent blocked for ever writing megabytes into it (multiprocessing's spawn keeps
    # the pipe's read end open until the write ends), where now the pool reports it broken.
    runs_file, runs_lock = _pickle_to_temp(runs)
    manager = None
    try:
        with signals_held(ctx):
            # a server process of its own: shut down below, else it outlives the run
            manager = _start_manager(ctx, runs_file)
        q = manager.Queue()
        queued = _units(runs, tasks, workers)
        pool = ProcessPoolExecutor(min(workers, len(queued)), mp_context=ctx, initializer=_worker_init,
                                   initargs=(runs_file, q))
        finished: set = set()
        pending: dict = {}  # future: unit

        planned = set(tasks)

        def ready(unit) -> bool:
            return _ready(unit, queued + list(pending.values()), finished=finished, planned=planned, waits=waits or {})

        try:
            while queued or pending:
                while len(pending) < workers and (unit := next((u for u in queued if ready(u)), None)) is not None:
                    queued.remove(unit)
                    with signals_held(ctx):  # the pool starts its workers as work is submitted
                        pending[pool.submit(_worker_unit, unit)] = unit
                if not pending:  # every unit left waits for one that cannot come (a cycle in `waits`)
                    raise TimnetError(f"units wait for each other and none can start: {queued[:3]}")
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if not done:
                    check_pool(pool)
                while True:
                    try:
                        task, row = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    on_epoch(task, row)
                for future in done:
                    unit = pending.pop(future)
                    _, result = future.result()
                    if unit[0] == "fold":
                        finished.add(unit[1])
                        yield unit[1], result
            pool.shutdown(wait=True)
        except BrokenProcessPool:
            # A worker died (killed, out of memory). The pool can surface it from any call on it, not only
            # from the dead worker's future, so it is caught around the whole loop.
            end_pool(pool)
            unfinished = ", ".join(_describe(runs, t) for t in sorted(set(tasks) - finished))
            raise TimnetError(f"a training worker died (unfinished folds: {unfinished}); "
                              "run the same command again to resume") from None
        except BaseException:
            end_pool(pool)
            raise
    finally:
        if manager is not None:
            manager.shutdown()
        os.unlink(runs_file)
        os.close(runs_lock)


def _start_manager(ctx, runs_file: str):
    """The manager process that carries the workers' progress queue, started."""
    from multiprocessing.managers import SyncManager

    manager = SyncManager(address=_manager_address(), ctx=ctx)
    manager.start(_manager_init, (runs_file,))
    return manager


def _manager_address():
    """None (a Unix socket in a new folder in the temporary folder) unless that path would be longer
    than sockets allow (104 bytes on macOS, 108 on Linux), as under a long TMPDIR, where the manager
    died at start with a traceback: then a loopback TCP port, which the manager's authentication key
    guards as it guards the socket."""
    import sys
    import tempfile

    if sys.platform == "win32":  # named pipes: no such limit
        return None
    longest = os.path.join(tempfile.gettempdir(), "pymp-xxxxxxxx", "listener-xxxxxxxx")  # multiprocessing's names
    return ("127.0.0.1", 0) if len(os.fsencode(longest)) > 100 else None


def _manager_init(runs_file: str) -> None:
    """In the manager process: end with the parent, which, killed outright, never shuts it down: it
    would serve for ever and keep multiprocessing's resource tracker alive with it. It also removes
    the runs' file, which such a parent leaves behind."""
    import _thread
    import contextlib
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean exit: its socket's folder is removed

    def parent_ended() -> None:
        with contextlib.suppress(OSError):
            os.unlink(runs_file)
        _thread.interrupt_main(signal.SIGTERM)

    when_parent_ends(parent_ended)


def _pickle_to_temp(obj) -> tuple[str, int]:
    """Pickle `obj` into a new private temporary file; its path and the descriptor that holds its
    lock, to be closed once the file is deleted."""
    import pickle
    import tempfile

    # owned: a run whose whole process group was killed (its manager too) leaves the file, which
    # the next run on this host removes
    fd, path = owned_temporary(tempfile.gettempdir(), prefix="timnet-runs-", suffix=".pkl")
    try:
        with os.fdopen(os.dup(fd), "wb") as f:  # a duplicate: closing it keeps fd's lock
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        os.unlink(path)
        os.close(fd)
        raise
    return path, fd


def _describe(runs: list, task: Task) -> str:
    ri, k = task
    return str(k) if len(runs) == 1 else f"{runs[ri].dir.name}/{k}"


# -- Ray ------------------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError:
        raise TimnetError("--backend ray needs Ray: pip install 'ray>=2.9', or pip install -e '.[ray]' in the timnet checkout") from None
    return ray


def _ray_task(runs, task: Task, queue) -> tuple[Task, dict]:
    """One fold in a Ray worker; a retried task (worker lost) resumes from the fold's snapshot."""
    import ray

    ri, k = task
    worker = _worker_info(node_id=ray.get_runtime_context().get_node_id())

    def on_epoch(row: dict) -> None:
        # Fire and forget: Queue.put_nowait would block in ray.get, and a task blocked in ray.get
        # lends its CPU to the scheduler, which then starts another fold on the same core.
        queue.actor.put_nowait.remote((task, row))

    return task, runs[ri].train_and_test_fold(k, on_epoch=on_epoch, worker=worker)


class RayBackend:
    """Every fold a Ray task: `address` joins a running cluster, None starts a local instance.

    The run folder must be on storage every node sees (a shared or network file system): workers
    read snapshots from it and write checkpoints and results into it, exactly as local workers do.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, cpus_per_fold: float = 1, gpus_per_fold: float = 0,
                 max_retries: int = 3):
        # nan and inf would pass Ray's own comparisons and then never be scheduled
        if not (math.isfinite(cpus_per_fold) and cpus_per_fold > 0):
            raise TimnetError(f"--cpus-per-fold {cpus_per_fold} invalid; expected a finite positive number")
        if not (math.isfinite(gpus_per_fold) and gpus_per_fold >= 0):
            raise TimnetError(f"--gpus-per-fold {gpus_per_fold} invalid; expected a finite number, 0 or more")
        self.address, self.cpus, self.gpus, self.max_retries = address, cpus_per_fold, gpus_per_fold, max_retries

    def start(self) -> None:
        """Connect now, so a bad address fails before any run folder is touched."""
        self.connect()

    def connect(self):
        """Join the cluster at `address`, or start a private local instance; returns the ray module."""
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        if self.address is not None:
            _check_reachable(self.address)
        try:
            with sigterm_handler():  # ray.init installs its own (sys.exit), which would skip our cleanup message
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, AuthenticationError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = ""
            if self.address is not None and os.environ.get("RAY_AUTH_MODE") != "token":
                hint = ("; if the cluster uses token authentication (the default of `ray start --head` since "
                        "Ray 2.59), set RAY_AUTH_MODE=token and give its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            raise TimnetError(f"--address {self.address}: cannot join the Ray cluster ({first}){hint}") from None
        return ray

    def map(self, runs: list, tasks: list[Task], on_epoch: OnEpoch) -> Iterator[tuple[Task, dict]]:
        ray = self.connect()
        from ray.util.queue import Empty, Queue

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The progress queue lives on the driver's node: a lost worker node must not take it along.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        remote = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries)
        runs_ref = ray.put(runs)  # one copy of the features in the object store, not one per task
        pending = {remote.remote(runs_ref, task, queue): task for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                while True:
                    try:
                        task, row = queue.get_nowait()
                    except (Empty, ray.exceptions.RayError):
                        break  # no news; a lost queue costs the progress display, not the run
                    on_epoch(task, row)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        _, result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise _ray_failure(e, _describe(runs, task)) from None
                    yield task, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            try:
                ray.kill(queue.actor)
            except ray.exceptions.RayError:
                pass


def _ray_failure(e: Exception, fold: str) -> TimnetError:
    """A fold's failure on Ray said as the local backend says it: the task's own error where it
    raised one (a NaN loss, a full disk: running again would not help), else Ray's (a lost node)."""
    cause = getattr(e, "cause", None)  # a RayTaskError carries the task's exception
    if isinstance(cause, TimnetError):
        return TimnetError(str(cause))
    if isinstance(cause, OSError):
        return TimnetError(f"fold {fold}: {cause}")
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0])  # Ray colours its lines
    return TimnetError(f"fold {fold} failed on Ray ({type(e).__name__}: {first}); run the same command again to resume")


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes (Ray's own retries), when nothing listens at host:port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", ray:// client addresses and the like: let Ray resolve them
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise TimnetError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def make_backend(name: str, *, workers: int = 1, address: str | None = None, cpus_per_fold: float = 1,
                 gpus_per_fold: float = 0):
    """The backend called `name` (local or ray)."""
    if name == "local":
        if address is not None:
            raise TimnetError("--address needs --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(address=address, cpus_per_fold=cpus_per_fold, gpus_per_fold=gpus_per_fold)
    raise TimnetError(f"--backend {name!r} unknown; expected local or ray")
