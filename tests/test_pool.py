"""The process pools' failure paths: a worker that dies must end the run with an error, never a hang."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

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
    from timnet.utils import end_pool, pool_result

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
           # a short temporary folder of its own (the queue's manager puts a socket there, whose path is limited)
           "TMPDIR": tempfile.mkdtemp(prefix="tn-", dir="/tmp")}
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
    assert not [p for p in os.listdir(env["TMPDIR"]) if p.startswith("timnet-runs-")], "the runs' file was left behind"
    shutil.rmtree(env["TMPDIR"])
