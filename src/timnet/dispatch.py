"""The same feature bits on every x86-64 machine: pin numpy's and OpenBLAS's CPU dispatch.

numpy picks its AVX-512 loops (log, power, ...) and OpenBLAS its matrix kernels by the CPU it
finds at import, and the paths round differently. Without a pin, the MFCCs of the same EMODB
files differed in the last bits on 52% of the values between an AVX2 machine and an AVX-512 one
(AMD EPYC), so a run's feature fingerprint changed with the machine and a run, or a benchmark
ledger, could not be resumed there. Pinned to the AVX2 ("Haswell") paths, which every x86-64 CPU
since 2013 has, the AVX-512 machine gave the AVX2 machine's EMODB and CASIA features bit for bit.

torch's MKL, which does the training's matrix products, chooses its kernels by CPU as well: on an
Intel Xeon with AVX-512 it ran other ones than on the AVX2 machine and the AMD EPYC (which agreed
bit for bit), and a 500-epoch training there took another path (a CASIA
validation fold's first model: UAR 0.8944 against 0.8789). MKL_CBWR=AVX2, MKL's own switch for
reproducible results, holds it to its AVX2 kernels; it is set on Intel CPUs only (on others MKL
would run a reproducible mode of its own choice, not necessarily what it ran unpinned there).

`timnet` (the command) calls `pin()` first, before anything imports numpy or torch; a Python user
who wants the same bits calls it before importing them. A variable already set is left alone, and
TIMNET_NATIVE_DISPATCH=1 turns the pin off (each machine's fastest paths). `state()` records what
numpy and OpenBLAS actually do, which is what decides the bits (an MKL numpy ignores the pin), and
the branch MKL reports it runs (`mkl_branch`; the variable alone says only what was asked for).
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

OPT_OUT = "TIMNET_NATIVE_DISPATCH"
VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "MKL_CBWR")
FEATURE_KEYS = ("numpy_avx512", "openblas")  # of state(): what decides the features' bits (torch's MKL does not)
# numpy 2.4 groups its AVX-512 dispatch targets as X86_V4 and above; earlier releases name each one.
# A target this numpy does not dispatch is only an ImportWarning (hidden by default); one in its
# compiled-in baseline is a RuntimeError at import, which cli.main turns into one line.
_AVX512_NEW = "X86_V4 AVX512_ICL AVX512_SPR"
_AVX512_OLD = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
# MKL's codes for its branches (mkl_service.h: MKL_CBWR_*); 1 is "none set": MKL picks by the CPU
_MKL_BRANCHES = {2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}


def _numpy_at_least_2_4() -> bool:
    import importlib.metadata as md

    try:
        major, minor = (int(p) for p in md.version("numpy").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (2, 4)


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where that cannot be read (not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pins(*, cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The variables that pin this machine to the AVX2 paths; {} where there is nothing to pin:
    not x86-64, no AVX2 and FMA (the Haswell kernels would fault), or flags unreadable."""
    flags = _cpu_flags(cpuinfo)
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= flags:
        return {}
    out = {"OPENBLAS_CORETYPE": "Haswell"}
    if _cpuinfo_field("vendor_id", cpuinfo) == "GenuineIntel":
        # MKL's reproducible AVX2 branch; on other vendors' CPUs MKL_CBWR=AVX2 runs a reproducible
        # mode of MKL's own choice instead, which need not be the unpinned bits an AMD EPYC trained
        out["MKL_CBWR"] = "AVX2"
    if "avx512f" in flags:  # only then has numpy AVX-512 loops to leave out
        out["NPY_DISABLE_CPU_FEATURES"] = _AVX512_NEW if _numpy_at_least_2_4() else _AVX512_OLD
    return out


def pin(environ=os.environ, *, cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """Set the pins of `pins()` in `environ` (and so in every process started from here) unless
    already set; returns what was set. Too late once numpy (which torch imports) is imported, so then
    nothing is set."""
    if environ.get(OPT_OUT, "") == "1" or "numpy" in sys.modules:
        return {}
    done = {}
    for name, value in pins(cpuinfo=cpuinfo).items():
        if name not in environ:
            environ[name] = done[name] = value
    return done


def _cpuinfo_field(name: str, cpuinfo: str) -> str | None:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name ("Intel(R) Xeon(R) Processor", "AMD EPYC 9B14"), or the platform's guess."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """GenuineIntel, AuthenticAMD, ... (MKL chooses its kernels by it); None where unknown."""
    return _cpuinfo_field("vendor_id", cpuinfo)


def mkl_branch() -> str | None:
    """The kernels torch's MKL runs in this process, as MKL reports them: "AVX2" where a branch is
    set (MKL_CBWR), "auto AVX512_E1" where MKL picks by the CPU; None where torch is not imported
    here or was built without MKL (ARM, macOS). MKL_CBWR can name a branch MKL does not take (one
    the CPU lacks, a misspelling): this is what it took."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.backends.mkl.is_available():
        return None
    # torch links MKL into libtorch_cpu and exports its service functions, but not to the process's
    # global symbols: open the library itself (already loaded: this only finds it)
    libs = sorted(Path(torch.__file__).parent.glob("lib/*torch_cpu.*"))
    try:
        mkl = ctypes.CDLL(str(libs[0]))
        code = mkl.mkl_serv_cbwr_get(1)  # MKL_CBWR_BRANCH: the branch set, 1 where none is
        auto = code == 1
        if auto:
            code = mkl.mkl_serv_cbwr_get_auto_branch()
    except (IndexError, OSError, AttributeError):  # no such library or symbol in this build
        return None
    return ("auto " if auto else "") + _MKL_BRANCHES.get(code, f"code {code}")  # a newer MKL's branch: its code


def mkl_change(was: dict, now: dict) -> str | None:
    """How torch's MKL ran differently in `now` than in `was` (two state() records), or None: the
    CPU's vendor and MKL's branch where both record it, else MKL_CBWR (records before the branch
    was); nothing where `was` records neither (older runs)."""
    if "cpu_vendor" not in was or not ({"mkl_branch", "mkl_cbwr"} & was.keys()):
        return None
    key = "mkl_branch" if was.get("mkl_branch") and now.get("mkl_branch") else "mkl_cbwr"
    if (was["cpu_vendor"], was.get(key)) == (now.get("cpu_vendor"), now.get(key)):
        return None

    def said(r):
        mkl = (f"MKL branch {r[key]}" if key == "mkl_branch" else
               f"MKL_CBWR={r[key]}" if r.get(key) else "MKL_CBWR unset")
        return f"a {r.get('cpu_vendor') or 'unknown'} CPU with {mkl}"

    return f"{said(was)} (here: {said(now)})"


def state() -> dict:
    """What decides the bits in this process (imports numpy): whether numpy runs AVX-512 loops, the
    OpenBLAS kernels chosen, MKL_CBWR as set for torch's MKL and the branch MKL runs (where torch is
    imported), and the CPU's vendor (by which MKL chooses). Recorded with features and runs; the
    features depend on FEATURE_KEYS alone."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    from threadpoolctl import threadpool_info

    # X86_V4 (numpy >= 2.4) or AVX512_SKX (earlier) is what the pin turns off; the kernels of every
    # OpenBLAS loaded (numpy's, scipy's: the same choice), not MKL's, which the pin does not reach
    kernels = {i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"}
    return {"numpy_avx512": bool(features.get("X86_V4") or features.get("AVX512_SKX")),
            "openblas": sorted(k for k in kernels if k), "mkl_cbwr": os.environ.get("MKL_CBWR"),
            "mkl_branch": mkl_branch(), "cpu_vendor": cpu_vendor()}
