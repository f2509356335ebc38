"""CPU dispatch pins (timnet/dispatch.py): the same feature bits on AVX2 and AVX-512 machines."""
import os
import subprocess
import sys

import pytest

from timnet import dispatch


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(dispatch.platform, "machine", lambda: "x86_64")


def cpuinfo(tmp_path, flags, vendor="GenuineIntel"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 {flags}\n\n"
                    f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 {flags}\n")
    return str(path)


@pytest.mark.parametrize("new_numpy", [True, False])
def test_pins_only_where_the_common_paths_run(tmp_path, x86, monkeypatch, new_numpy):
    monkeypatch.setattr(dispatch, "_numpy_at_least_2_4", lambda: new_numpy)
    both = dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx avx2 fma avx512f"))
    assert both["OPENBLAS_CORETYPE"] == "Haswell" and both["MKL_CBWR"] == "AVX2"
    assert both["NPY_DISABLE_CPU_FEATURES"].split()[0] == ("X86_V4" if new_numpy else "AVX512F")
    # AVX2 only: numpy has no AVX-512 loops to leave out (and a name in its baseline would be an error)
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx avx2 fma")) == {"OPENBLAS_CORETYPE": "Haswell", "MKL_CBWR": "AVX2"}
    # MKL's AVX2 branch on Intel CPUs only: elsewhere MKL_CBWR=AVX2 would move MKL off its own choice
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx avx2 fma", "AuthenticAMD")) == {"OPENBLAS_CORETYPE": "Haswell"}
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx fma avx512f")) == {}  # no AVX2: Haswell kernels would fault
    assert dispatch.pins(cpuinfo=str(tmp_path / "missing")) == {}
    monkeypatch.setattr(dispatch.platform, "machine", lambda: "aarch64")
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx2 fma")) == {}


def test_pin_keeps_what_the_user_set_and_can_be_turned_off(tmp_path, x86, monkeypatch):
    info = cpuinfo(tmp_path, "avx2 fma avx512f")
    monkeypatch.delitem(sys.modules, "numpy")  # as if numpy were not imported yet (it is, by pytest)
    env = {"OPENBLAS_CORETYPE": "Zen"}
    assert dispatch.pin(env, cpuinfo=info) == {"NPY_DISABLE_CPU_FEATURES": env["NPY_DISABLE_CPU_FEATURES"], "MKL_CBWR": "AVX2"}
    assert env["OPENBLAS_CORETYPE"] == "Zen"
    assert dispatch.pin({dispatch.OPT_OUT: "1"}, cpuinfo=info) == {}


def test_pin_is_a_no_op_once_numpy_is_imported(tmp_path, x86):
    import numpy  # noqa: F401

    env = {}
    assert dispatch.pin(env, cpuinfo=cpuinfo(tmp_path, "avx2 fma")) == {} and env == {}


def test_the_command_pins_before_numpy_loads():
    # in a fresh interpreter the command's main() sets the pins first, and numpy and OpenBLAS follow them
    code = ("import json, timnet.cli; timnet.cli.main(['corpora']); import torch; from timnet import dispatch; "
            "torch.mm(torch.ones(64, 64), torch.ones(64, 64)); print(json.dumps([dispatch.pins(), dispatch.state()]))")
    env = {k: v for k, v in os.environ.items() if k not in (*dispatch.VARIABLES, dispatch.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    import json

    pins, state = json.loads(out.splitlines()[-1])
    if not pins:
        pytest.skip("not an x86-64 Linux machine with AVX2: nothing to pin")
    assert state["numpy_avx512"] is False, "numpy still runs AVX-512 loops with the pin set"
    assert state["mkl_cbwr"] == pins.get("MKL_CBWR")  # torch's MKL, which it reaches through the environment
    if state["mkl_branch"]:  # and which took it (None: a torch without MKL)
        assert state["mkl_branch"] == pins["MKL_CBWR"] if "MKL_CBWR" in pins else state["mkl_branch"].startswith("auto ")
    if state["openblas"]:  # an MKL numpy has none
        assert state["openblas"] == ["Haswell"]


def test_pin_as_the_readme_writes_it():
    """README: `timnet.dispatch.pin()` after a plain `import timnet`, before anything imports numpy
    (the package's submodules are reached as attributes, and `import timnet` loads no numpy)."""
    import subprocess
    import sys

    code = ("import sys, timnet; timnet.dispatch.pin(); assert 'numpy' not in sys.modules, 'numpy came first'; "
            "print(timnet.features.extract.__name__, timnet.evaluate.__name__, timnet.run.Run.__name__); "
            "timnet.no_such_name")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["extract", "timnet.evaluate", "Run"], r.stderr
    assert r.stderr.strip().endswith("AttributeError: module 'timnet' has no attribute 'no_such_name'"), r.stderr


def test_the_command_line_imports_no_numpy_before_it_pins():
    """The console script (timnet.cli:main) pins the CPU dispatch first thing, and pin() does nothing
    once numpy is imported: a module the CLI imports at its top that imported numpy would silently
    unpin every command (other bits on another machine). torch neither: --help stays quick."""
    import subprocess
    import sys

    code = ("import sys, timnet.cli; print(sorted(m for m in ('numpy', 'torch', 'scipy', 'librosa', 'soundfile') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]"], f"imported by `import timnet.cli`: {r.stdout.strip()}"


def test_mkl_branch_is_what_mkl_reports():
    """state() records the branch torch's MKL runs, read from MKL itself, not the variable: the
    branch MKL_CBWR sets, "auto ..." with none set, None where torch is not imported."""
    torch = pytest.importorskip("torch")
    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL (not x86-64): no branch to read")
    code = ("import sys, torch; from timnet import dispatch; torch.mm(torch.ones(8, 8), torch.ones(8, 8)); "
            "print(dispatch.mkl_branch())")
    env = {k: v for k, v in os.environ.items() if k not in dispatch.VARIABLES}
    got = {cbwr: subprocess.run([sys.executable, "-c", code], env={**env, **({"MKL_CBWR": cbwr} if cbwr else {})},
                                capture_output=True, text=True, check=True).stdout.strip()
           for cbwr in ("COMPATIBLE", "SSE4_2", None)}
    assert got["COMPATIBLE"] == "COMPATIBLE", got
    # an Intel CPU's MKL takes the branch asked for; on another vendor's (AMD EPYC here) MKL keeps its
    # own choice, reported as AUTO: what it runs, not what the variable says
    assert got["SSE4_2"] == ("SSE4_2" if dispatch.cpu_vendor() == "GenuineIntel" else "AUTO"), got
    assert got[None].startswith("auto "), got
    none = subprocess.run([sys.executable, "-c", "from timnet import dispatch; print(dispatch.mkl_branch())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert none == "None"  # torch not imported: nothing asked of it
