"""CPU dispatch pins (timnet/dispatch.py): the same feature bits on AVX2 and AVX-512 machines."""
import os
import subprocess
import sys

import pytest

from timnet import dispatch


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(dispatch.platform, "machine", lambda: "x86_64")


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 {flags}\n")
    return str(path)


def test_pins_only_where_the_common_paths_run(tmp_path, x86, monkeypatch):
    both = dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx avx2 fma avx512f"))
    assert both["OPENBLAS_CORETYPE"] == "Haswell" and "X86_V4" in both["NPY_DISABLE_CPU_FEATURES"]
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx fma")) == {}  # no AVX2: Haswell kernels would fault
    assert dispatch.pins(cpuinfo=str(tmp_path / "missing")) == {}
    monkeypatch.setattr(dispatch.platform, "machine", lambda: "aarch64")
    assert dispatch.pins(cpuinfo=cpuinfo(tmp_path, "avx2 fma")) == {}


def test_pin_keeps_what_the_user_set_and_can_be_turned_off(tmp_path, x86, monkeypatch):
    info = cpuinfo(tmp_path, "avx2 fma")
    monkeypatch.delitem(sys.modules, "numpy")  # as if numpy were not imported yet (it is, by pytest)
    env = {"OPENBLAS_CORETYPE": "Zen"}
    assert dispatch.pin(env, cpuinfo=info) == {"NPY_DISABLE_CPU_FEATURES": env["NPY_DISABLE_CPU_FEATURES"]}
    assert env["OPENBLAS_CORETYPE"] == "Zen"
    assert dispatch.pin({dispatch.OPT_OUT: "1"}, cpuinfo=info) == {}


def test_pin_is_a_no_op_once_numpy_is_imported(tmp_path, x86):
    import numpy  # noqa: F401

    env = {}
    assert dispatch.pin(env, cpuinfo=cpuinfo(tmp_path, "avx2 fma")) == {} and env == {}


def test_the_command_pins_before_numpy_loads():
    # in a fresh interpreter, importing the CLI module sets the pins and numpy then honours them
    code = ("import os, timnet.cli, numpy._core._multiarray_umath as m; from timnet import dispatch; "
            "print(dispatch.state() == dispatch.pins(), bool(dispatch.pins()), "
            "any(m.__cpu_features__.get(f) for f in ('X86_V4', 'AVX512_SKX')))")
    env = {k: v for k, v in os.environ.items() if k not in (*dispatch.VARIABLES, dispatch.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True", out
    if out[1] == "True":
        assert out[2] == "False", "numpy still reports AVX-512 loops with the pin set"
