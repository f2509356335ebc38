"""Speed figures of this machine: training epochs, inference, feature extraction, memory.

Training is timed on EMODB-shaped random features (535 x 188 x 39, 7 classes, 10-fold training
splits of 481-482 utterances, batch 64); the figures do not depend on the values.
"""
from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .audio import audio_info, sndfile_message
from .corpora import CORPORA, list_corpus
from .errors import TimnetError
from .features import FeatureConfig, FeatureSet, extract
from .folds import make_folds
from .model import TIMNet, TIMNetConfig
from .processes import torch_threads
from .run import Run
from .train import TrainConfig, train_fold

def synthetic_emodb(seed: int = 0) -> FeatureSet:
    """Random features with EMODB's shape (535 x 188 x 39), classes, speakers and MFCC-like scale."""
    emodb = CORPORA["EMODB"]
    config = FeatureConfig(signal_length=emodb.signal_length)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((emodb.n_files, config.frames, config.n_mfcc)) * 30).astype(np.float32)
    y = rng.integers(0, len(emodb.labels), emodb.n_files).astype(np.int64)
    return FeatureSet(x=x, y=y, labels=emodb.labels, corpus=emodb.name, config=config,
                      speakers=np.array([f"{i % emodb.n_speakers:02d}" for i in range(len(y))]))


def fold_epoch_seconds(fs: FeatureSet, *, path: str, threads: int, epochs: int = 4) -> float:
    """Median seconds of one fold-epoch of one fold trained in this process with `threads` threads."""
    train_idx, _ = make_folds(len(fs), folds=10, seed=46)[0]
    stamps = [time.perf_counter()]
    with torch_threads(threads):  # the caller's count restored after, as everywhere below
        train_fold(torch.from_numpy(fs.x), torch.from_numpy(fs.y), train_idx, np.empty(0, np.int64),
                   model_config=TIMNetConfig(), config=TrainConfig(epochs=epochs, save_every=10**6), seed=0,
                   on_epoch=lambda row: stamps.append(time.perf_counter()), path=path)
    return statistics.median(np.diff(stamps)[1:])  # the first epoch pays one-off allocations


def all_folds_epoch_seconds(fs: FeatureSet, *, workers: int, threads: int, folds: int = 10, path: str = "fast") -> float:
    """Wall seconds of one epoch of all folds as `timnet train` schedules them (worker processes).

    Two short runs (1 and 4 epochs) are timed and differenced, which removes the fixed costs
    (process start, test evaluation, checkpoint writing) and leaves the per-epoch wall time.
    """
    walls = {}
    for epochs in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(fs, Path(tmp) / "run", config=TrainConfig(epochs=epochs, save_every=10**6), folds=folds,
                      seed=46, threads=threads, path=path)
            run.prepare()
            t0 = time.perf_counter()
            run.execute(workers=workers, progress=False, log=lambda m: None)
            walls[epochs] = time.perf_counter() - t0
    return (walls[4] - walls[1]) / 3


def inference_utterances_per_second(fs: FeatureSet, *, threads: int, batch_size: int = 256, repeats: int = 3) -> float:
    """Utterances per second through an eval-mode model (features in, probabilities out)."""
    model = TIMNet(TIMNetConfig()).eval()
    x = torch.from_numpy(fs.x)
    best = float("inf")
    with torch.inference_mode(), torch_threads(threads):
        model(x[:batch_size]).softmax(-1)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size]).softmax(-1)
            best = min(best, time.perf_counter() - t0)
    return len(x) / best


def emodb_audio_seconds(data_dir: str | Path) -> float:
    """Seconds of audio in an EMODB tree; a file libsndfile cannot open is one error naming it."""
    total = 0.0
    for it in list_corpus("emodb", data_dir).items:
        path = Path(data_dir) / it.path
        try:
            total += audio_info(path).duration
        except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors
            raise TimnetError(f"{path}: not readable audio ({sndfile_message(e)}); "
                              "--data expects the EMODB tree") from None
    return total


def extraction_seconds(data_dir: str | Path, *, workers: int) -> dict:
    """Wall time of extracting the real EMODB tree with `workers` processes, and its speed."""
    audio_seconds = emodb_audio_seconds(data_dir)
    t0 = time.perf_counter()
    # bad files are gathered, not raised: extract's own message offers a --skip-bad that bench has not
    fs, _, bad = extract("emodb", data_dir, workers=workers, progress=False, skip_bad=True)
    wall = time.perf_counter() - t0
    if bad:
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise TimnetError(f"{bad[0]}{more}; --data expects the EMODB tree, every file readable")
    return {"extract_s": wall, "extract_files_per_s": len(fs) / wall, "extract_x_realtime": audio_seconds / wall,
            "extract_files": len(fs)}


def matmul_gflops(*, threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n float32 matrix product: how fast this machine is today. Shared
    machines vary from day to day; this figure puts a run's timings on a common scale."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    with torch_threads(threads):
        a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of the largest of this process and its finished children, in MB (not
    their sum: the kernel keeps each child's peak, not a peak of all of them at once)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports kB


def busy_cores() -> float | None:
    """Cores other processes kept busy over the last minute (the 1-minute load average), None
    where the system does not say (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_bench(*, data_dir: str | Path | None = None, workers: int | None = None, log=print) -> dict:
    """All figures of INTERFACE.md's `timnet bench`, measured in one run on this machine."""
    cores = os.cpu_count() or 1
    if workers is not None and workers < 1:
        raise TimnetError(f"--workers {workers} invalid; expected a positive number")
    workers = workers or min(cores, 10)
    threads = max(1, cores // workers)
    if data_dir is not None:
        emodb_audio_seconds(data_dir)  # a wrong --data fails now, not after minutes of timings
    load = busy_cores()
    if load is not None and load > 0.5:
        warnings.warn(f"other processes keep {load:.1f} of {cores} cores busy (load average over the last "
                      "minute): these timings will be slower than this machine's, and their ratios skewed")
    extraction = {}
    if data_dir is not None:  # first: a file that only a full decode finds bad fails in seconds, not after the timings
        log(f"timing extraction of {data_dir} with {min(cores, 2)} workers ...")
        extraction = extraction_seconds(data_dir, workers=min(cores, 2))
    fs = synthetic_emodb()
    log(f"timing the reference path (the nn.Module): one fold, one process, {cores} threads ...")
    reference = fold_epoch_seconds(fs, path="reference", threads=cores)
    log(f"timing the fast path: one fold, one process, {cores} threads ...")
    fast_one = fold_epoch_seconds(fs, path="fast", threads=cores)
    log(f"timing all 10 folds on the fast path as `timnet train` runs them: {workers} workers x {threads} threads ...")
    all_folds = all_folds_epoch_seconds(fs, workers=workers, threads=threads, path="fast")
    log("timing inference ...")
    infer = inference_utterances_per_second(fs, threads=cores)
    gflops = matmul_gflops(threads=cores)
    from . import native

    out = {
        # `fast` is the fast path's cost per fold-epoch as `timnet train` schedules the folds
        "epoch_s": {"reference": reference, "fast": all_folds / 10, "fast_all_folds": all_folds,
                    "fast_one_fold": fast_one},
        "kernels": "native" if native.load() is not None else f"torch ({native.reason()})",
        "infer_utt_per_s": infer,
        "extract_s": None,
        "peak_rss_mb": 0.0,
        "machine": {"cores": cores, "workers": workers, "threads_per_worker": threads, "torch": torch.__version__,
                    "matmul_gflops": gflops, "busy_cores_before": load},
    }
    out.update(extraction)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def format_bench(r: dict) -> str:
    """The bench figures as a small table."""
    e = r["epoch_s"]
    lines = [
        f"{'figure':<44} {'value':>10}",
        f"{'reference: s per fold-epoch (1 fold alone)':<44} {e['reference']:>10.3f}",
        f"{'fast: s per fold-epoch (1 fold alone)':<44} {e['fast_one_fold']:>10.3f}",
        f"{'fast: s per epoch of all 10 folds':<44} {e['fast_all_folds']:>10.3f}",
        f"{'fast: s per fold-epoch (all folds / 10)':<44} {e['fast']:>10.3f}",
        f"{'speed-up, fast vs reference (per fold-epoch)':<44} {e['reference'] / e['fast']:>9.2f}x",
        f"{'inference: utterances per s':<44} {r['infer_utt_per_s']:>10.0f}",
    ]
    if r.get("kernels"):
        lines.insert(1, f"{'fast path arithmetic':<44} {r['kernels']:>10}")
    if r.get("extract_s") is not None:
        files = f" ({r['extract_files']} files)" if r.get("extract_files") else ""  # a part of the corpus is said
        lines += [f"{'extraction of EMODB' + files + ': s':<44} {r['extract_s']:>10.2f}",
                  f"{'extraction: files per s':<44} {r['extract_files_per_s']:>10.1f}",
                  f"{'extraction: x real time':<44} {r['extract_x_realtime']:>10.1f}"]
    lines.append(f"{'peak memory of the largest process: MB':<44} {r['peak_rss_mb']:>10.0f}")
    if r.get("machine", {}).get("matmul_gflops"):
        lines.append(f"{'machine: 2048² float32 product, GFLOP/s':<44} {r['machine']['matmul_gflops']:>10.0f}")
    return "\n".join(lines)
