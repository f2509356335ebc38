"""timnet's native CPU kernels (kernels.c): built once per machine with the system C compiler.

The kernels are plain C with vector extensions, so any GCC or Clang builds them, tuned for the
host (-march=native). The shared library is cached under ~/.cache/timnet (or $TIMNET_CACHE_DIR,
$XDG_CACHE_HOME/timnet), keyed by the source, the flags and the CPU, and written atomically so
parallel workers can build it at the same time. Where no compiler works, or TIMNET_NATIVE=0, the
fast path runs the same algorithm with PyTorch operations instead (`TorchOps` in fast.py); fast.py
also checks every kernel against those operations before the first use in a process.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.c")
# Tried in order: tuned for this CPU, then portable (compilers without -march=native, e.g. Apple's).
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
MAX_CHANNELS = 128  # the kernels keep one row of accumulators in registers: MAXV * 8 in kernels.c

_P, _I = ctypes.c_void_p, ctypes.c_int
SIGNATURES = {
    "conv": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P],
    "wgrad": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _P, _P, _P],
    "gate_fwd": [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I],
    "gate_bwd": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I],
    "relu_bwd": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I],
    "bn_bwd": [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I],
}

_state: dict = {}


def cache_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("TIMNET_CACHE_DIR"):
        return Path(os.environ["TIMNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "timnet"


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's feature flags."""
    ident = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return ident + line
    except OSError:
        pass
    return ident + platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(cc: str, flags: list[str]) -> Path:
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *flags]).encode() + _cpu_id().encode()).hexdigest()[:16]
    lib = cache_dir() / f"kernels-{key}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=".kernels-", suffix=".so")
    os.close(fd)
    try:
        cmd = [cc, *flags, "-shared", "-fPIC", "-std=gnu11", "-o", tmp, str(SOURCE), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines() or ["failed"]
            raise RuntimeError(errors[0].strip())
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def load():
    """The kernels as a ctypes library, or None (with `reason()` saying why) where they cannot run."""
    if "lib" in _state:
        return _state["lib"]
    lib, why = None, None
    if os.environ.get("TIMNET_NATIVE", "1") == "0":
        why = "disabled by TIMNET_NATIVE=0"
    elif (cc := _compiler()) is None:
        why = "no C compiler found (set CC, or install gcc or clang)"
    else:
        for flags in FLAG_SETS:
            try:
                lib = ctypes.CDLL(str(_build(cc, flags)))
                for name, argtypes in SIGNATURES.items():
                    getattr(lib, name).argtypes = argtypes
                    getattr(lib, name).restype = None
                break
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                lib, why = None, f"{cc} {' '.join(flags)}: {e}"
        if lib is None:
            warnings.warn(f"timnet: native kernels unavailable ({why}); the fast path uses PyTorch operations",
                          RuntimeWarning, stacklevel=2)
    _state.update(lib=lib, reason=why)
    return lib


def reason() -> str | None:
    """Why the kernels are not in use (None when they are)."""
    load()
    return _state["reason"]
