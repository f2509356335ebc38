"""The process pools' failure paths: a worker that dies must end the run with an error, never a hang."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

# A worker that dies halfway through sending its result, as one SIGKILLed (the out-of-memory killer)
# at that moment does: the result pipe holds the start of a message, and the pipe's write lock stays
# held by the dead worker, so the other worker can never send again. The executor's manager thread
# then waits for the rest of the message and never fails the futures (seen with extraction: CPython
# 3.11's ProcessPoolExecutor); `pool_result` and `end_pool` must get out regardless, interpreter exit
# included. Run in a child interpreter so that a regression fails on a timeout instead of hanging.
SCRIPT = textwrap.dedent("""
    import inspect, multiprocessing, os, signal, struct, time
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from timnet.processes import end_pool, pool_result

    def die_while_sending(_):
        frame = inspect.currentframe()
        while "result_queue" not in frame.f_locals:  # the executor's worker loop, which called us
            frame = frame.f_back
        queue = frame.f_locals["result_queue"]
        queue._wlock.acquire()
        os.write(queue._writer.fileno(), struct.pack("!i", 1 << 20) + b"\\x80")  # 1 byte of a 1 MiB message
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        dying = pool.submit(die_while_sending, 0)
        other = pool.submit(time.sleep, 1)  # then blocks for ever on the dead worker's write lock
        start = time.monotonic()
        try:
            pool_result(pool, dying, poll=0.1)
        except BrokenProcessPool:
            print(f"broken after {time.monotonic() - start:.1f} s", flush=True)
        end_pool(pool)
        print("ended", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the scenario forks its workers")
def test_worker_dying_mid_result_ends_the_run(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        out, _ = proc.communicate()
        pytest.fail(f"the parent hung after a worker died mid-result; it printed: {out!r}")
    lines = out.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, (out, err)
    assert lines[0].startswith("broken after") and float(lines[0].split()[2]) < 10 and lines[1] == "ended"
    assert err == "", err  # no stray traceback from the pool's threads


# A training worker that dies as it starts, before reading the data its parent sends it (an import
# that fails in a broken install, the out-of-memory killer): multiprocessing's spawn keeps that pipe's
# read end open in the parent until its write ends, so a parent writing the runs (features included)
# into it would block for ever, with Ctrl-C held. The runs go through a file; the pool must report
# the dead worker. This sitecustomize ends every spawned child but the first (the queue's manager).
DIE_AT_START = textwrap.dedent("""
    import os, sys
    if "--multiprocessing-fork" in sys.argv and os.environ.get("TIMNET_TEST_SPAWNED"):
        spawned = os.environ["TIMNET_TEST_SPAWNED"]
        first = not os.listdir(spawned)
        open(os.path.join(spawned, str(os.getpid())), "w").close()
        if not first:
            os._exit(3)
""")


def test_worker_dying_at_start_ends_the_run(tmp_path):
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(DIE_AT_START)
    (tmp_path / "spawned").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "TIMNET_TEST_SPAWNED": str(tmp_path / "spawned"),
           "TMPDIR": str(tmp_path)}  # to see that the runs' file is removed
    proc = subprocess.Popen([sys.executable, "-m", "timnet", "train", str(features), "-o", str(tmp_path / "r"),
                             "--folds", "3", "--epochs", "2", "--workers", "2", "--threads", "1", "--no-report", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the parent hung after a worker died at its start")
    assert len(os.listdir(tmp_path / "spawned")) >= 2, f"no worker was started: {err}"
    assert proc.returncode == 1 and "a training worker died" in err and "run the same command again" in err, err
    assert not [p for p in os.listdir(tmp_path) if p.startswith("timnet-runs-")], "the runs' file was left behind"


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and parent, from /proc; None once it has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (command)", which may hold spaces
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _state_and_parent(pid)
    return stat is not None and stat[0] != "Z"  # a zombie has ended


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    stats = {int(e): _state_and_parent(e) for e in os.listdir("/proc") if e.isdigit()}
    return {p for p, stat in stats.items() if stat is not None and stat[0] != "Z" and stat[1] == pid}


def _train_command(features, out) -> list[str]:
    return [sys.executable, "-m", "timnet", "train", str(features), "-o", str(out), "--folds", "3",
            "--workers", "2", "--threads", "1", "--no-report", "-q"]


# A parent killed outright (kill -9, the out-of-memory killer) runs no clean-up. A pool's workers
# waiting for work then waited for ever (the pool's queues stay open in the workers themselves), as
# did the training queue's manager process, which kept multiprocessing's resource tracker alive with
# it. All must end with the parent, whether it is killed early or late, and leave no temporary file.
def _kill_parent_and_wait_for_children(argv: list[str], children_expected: int, wait: float, tmp_path) -> None:
    import time

    # the command's temporary folder, to see what it leaves there; short, so that the queue's manager
    # takes a Unix socket there, as on most machines (under a long one it takes a loopback port)
    temp = Path(tempfile.mkdtemp(prefix="tn-"))
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.monotonic() + 120
        while len(children := _children(proc.pid)) < children_expected:
            assert proc.poll() is None and time.monotonic() < deadline, f"the workers never started: {log.read_text()}"
            time.sleep(0.05)
        time.sleep(wait)
        assert proc.poll() is None, f"the command ended before it was killed (make it longer): {log.read_text()}"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while (left := {p for p in children if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes outlived their killed parent: {left}"
        assert not os.listdir(temp), "files were left in the temporary folder"
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left, so that a failure leaks no process
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
@pytest.mark.parametrize("wait", [0, 3])
def test_training_parent_killed_leaves_no_process_behind(tmp_path, wait):
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    # the tracker, the manager and two workers
    _kill_parent_and_wait_for_children(_train_command(features, tmp_path / "r") + ["--epochs", "5000"], 4, wait,
                                       tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
@pytest.mark.parametrize("wait", [0, 0.5])
def test_extraction_parent_killed_leaves_no_process_behind(tmp_path, wait):
    from conftest import write_tone

    names = [f"{s}{t}{e}{v}" for s in ("03", "08", "09", "10") for t in ("a01", "a02", "a04", "a05", "a07")
             for e in "WLEAFTN" for v in "ab"]  # 280 recordings, EMODB's naming
    for i, name in enumerate(names):
        write_tone(tmp_path / "emodb" / "wav" / f"{name}.wav", seconds=0.5, seed=i)
    # each padded to 60 s: many seconds of work for two workers, even on an idle machine
    argv = [sys.executable, "-m", "timnet", "extract", "emodb", str(tmp_path / "emodb"), "-o", str(tmp_path / "f.npz"),
            "--workers", "2", "--signal-length", str(60 * 22050)]
    _kill_parent_and_wait_for_children(argv, 2, wait, tmp_path)


# multiprocessing puts the queue's manager on a Unix socket in the temporary folder, whose path has a
# limit (108 bytes on Linux): under a long TMPDIR the manager died at start with a traceback.
def test_training_pool_under_a_long_temporary_folder(tmp_path):
    from test_train import synthetic
    from timnet.features import save_features

    features = save_features(synthetic(), tmp_path / "f.npz")
    long_tmp = tmp_path / ("t" * max(1, 130 - len(str(tmp_path))))
    long_tmp.mkdir()
    proc = subprocess.run(_train_command(features, tmp_path / "r") + ["--epochs", "2"], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(long_tmp)}, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(list((tmp_path / "r").glob("fold_*/result.json"))) == 3


def test_the_runs_file_of_a_run_killed_outright_is_removed_by_the_next_run(tmp_path, monkeypatch):
    # The whole process group killed (a session's end, `kill -9 -PGID`): neither the parent's
    # `finally` nor its manager can remove the pickled runs, which are the size of the features.
    from timnet.backends import _pickle_to_temp

    killed = subprocess.run([sys.executable, "-c", "import os, signal\nfrom timnet.backends import _pickle_to_temp\n"
                             "_pickle_to_temp(list(range(1000)))\nos.kill(os.getpid(), signal.SIGKILL)"],
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    assert killed.returncode == -signal.SIGKILL
    [left] = tmp_path.iterdir()
    assert left.name.startswith("timnet-runs-")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path, lock = _pickle_to_temp([1, 2])
    os.close(lock)
    assert os.listdir(tmp_path) == [os.path.basename(path)]
