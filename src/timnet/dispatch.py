"""The same feature bits on every x86-64 machine: pin numpy's and OpenBLAS's CPU dispatch.

numpy picks its AVX-512 loops (log, power, ...) and OpenBLAS its matrix kernels by the CPU it
finds at import, and the paths round differently. Without a pin, the MFCCs of the same EMODB
files differed in the last bits on 52% of the values between an AVX2 machine and an AVX-512 one
(AMD EPYC), so a run's feature fingerprint changed with the machine and a run, or a benchmark
ledger, could not be resumed there. With both pinned to the AVX2 ("Haswell") paths, which every
x86-64 CPU since 2013 has, EMODB and CASIA features were identical bit for bit on both machines.

`timnet` (the command) calls `pin()` before numpy is first imported; a Python user who wants the
same bits sets the two variables of `pins()` before importing numpy. A variable already set is
left alone, and TIMNET_NATIVE_DISPATCH=1 turns the pin off (each machine's fastest paths).
"""
from __future__ import annotations

import os
import platform
import sys

OPT_OUT = "TIMNET_NATIVE_DISPATCH"
VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")
# numpy 2.4 groups its AVX-512 dispatch targets as X86_V4 and above; earlier releases name each one.
# Naming a target a numpy does not dispatch is only an ImportWarning (hidden by default).
_AVX512_NEW = "X86_V4 AVX512_ICL AVX512_SPR"
_AVX512_OLD = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"


def _numpy_at_least_2_4() -> bool:
    import importlib.metadata as md

    try:
        major, minor = (int(p) for p in md.version("numpy").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (2, 4)


def _has_avx2(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU runs the Haswell paths (AVX2 and FMA); False where that cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def pins(*, cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The variables that pin this machine to the common paths; {} where there is nothing to pin
    (not x86-64, no AVX2, or the CPU flags cannot be read: Linux only)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2(cpuinfo):
        return {}
    return {"OPENBLAS_CORETYPE": "Haswell",
            "NPY_DISABLE_CPU_FEATURES": _AVX512_NEW if _numpy_at_least_2_4() else _AVX512_OLD}


def pin(environ=os.environ, *, cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """Set the pins of `pins()` in `environ` (and so in every process started from here) unless
    already set; returns what was set. Too late once numpy is imported, so then nothing is set."""
    if environ.get(OPT_OUT, "") not in ("", "0") or "numpy" in sys.modules:
        return {}
    done = {}
    for name, value in pins(cpuinfo=cpuinfo).items():
        if name not in environ:
            environ[name] = done[name] = value
    return done


def state(environ=os.environ) -> dict[str, str | None]:
    """The dispatch variables in force, recorded with features and runs."""
    return {name: environ.get(name) for name in VARIABLES}
