"""Feature sets: extraction of a whole corpus, and saving/loading them (.npz, authors' .npy)."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import sys
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import audio, dispatch
from .corpora import CORPORA, FOLDERS, Corpus, folder_corpus, get_corpus, list_corpus, natural_key, skip_summary
from .errors import TimnetError
from .files import atomic_write
from .processes import end_pool, pool_result, signals_held, when_parent_ends
from .progress import progress_bar


MAX_SIGNAL_LENGTH = 10 * 60 * audio.SAMPLE_RATE  # the corpora's are 4-14 s; far beyond, an array too big to hold


@dataclass(frozen=True)
class FeatureConfig:
    """How a waveform becomes the network's input; saved with features and inside checkpoints."""

    signal_length: int = 96000  # samples at `sample_rate` after centre pad/crop
    sample_rate: int = audio.SAMPLE_RATE
    n_mfcc: int = audio.N_MFCC
    n_fft: int = audio.N_FFT
    hop_length: int = audio.HOP_LENGTH

    @property
    def frames(self) -> int:
        """Frames per utterance: librosa's centred STFT gives 1 + L // hop."""
        return 1 + self.signal_length // self.hop_length

    def __post_init__(self):
        for name, value in vars(self).items():  # a hand-edited file's "96000" would fail in a comparison below
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TimnetError(f"feature setting {name} {value!r} invalid; expected a whole number")
        fixed = (audio.N_FFT, audio.HOP_LENGTH)
        if (self.n_fft, self.hop_length) != fixed:
            raise TimnetError(f"n_fft/hop_length {self.n_fft}/{self.hop_length} unsupported; expected {fixed}")
        if self.signal_length < self.n_fft:  # as extract refuses it: librosa would pad each window and warn
            raise TimnetError(f"signal length {self.signal_length} too short; expected at least {self.n_fft} samples "
                              "(one FFT window)")
        if self.sample_rate < 1 or self.n_mfcc < 1:
            raise TimnetError(f"sample rate {self.sample_rate} / n_mfcc {self.n_mfcc} invalid; expected positive numbers")


def waveform_features(y: np.ndarray, config: FeatureConfig, *, sample_rate: int | None = None) -> np.ndarray:
    """(frames, n_mfcc) features of a mono float waveform, exactly as for training: resampled from
    `sample_rate` (default: already at `config.sample_rate`) as librosa.load does, centre-cropped or
    padded to the signal length. A Predictor's `predict` also takes channels and integer PCM."""
    if not isinstance(config, FeatureConfig):
        raise TimnetError(f"feature config {config!r} invalid; expected a timnet.features.FeatureConfig "
                          "(a model's .feature_config)")
    try:
        given = np.asarray(y)
    except ValueError:  # a ragged list
        raise TimnetError("waveform invalid; expected a mono (samples,) array of floats") from None
    if given.dtype.kind in "iub":  # int16 PCM cast as is would be 32768 times too loud: other features
        raise TimnetError(f"waveform of {given.dtype} samples invalid; expected floats in [-1, 1] (integer PCM "
                          "divided by its full scale, as Predictor.predict does)")
    if given.dtype.kind != "f":  # complex would lose its imaginary part; strings are no samples
        raise TimnetError(f"waveform of {given.dtype} samples invalid; expected floats in [-1, 1]")
    y = given.astype(np.float32, copy=False)
    if y.ndim != 1:  # a 2-D array would be padded along both axes: gigabytes, then the wrong features
        raise TimnetError(f"waveform of shape {y.shape} invalid; expected a mono (samples,) array")
    if not len(y) or not np.isfinite(y).all():
        what = "no samples" if not len(y) else f"{int((~np.isfinite(y)).sum())} NaN or infinite samples"
        raise TimnetError(f"waveform with {what}; expected finite samples")
    if sample_rate is not None and audio.check_sample_rate(sample_rate) != config.sample_rate:
        y = audio.resample(y, orig_sr=int(sample_rate), target_sr=config.sample_rate)
    y = audio.fit_length(y, config.signal_length)
    return audio.mfcc(y, sr=config.sample_rate, n_mfcc=config.n_mfcc)


def file_features(path: str | Path, config: FeatureConfig) -> np.ndarray:
    """(frames, n_mfcc) features of one audio file, computed exactly as for training."""
    return waveform_features(audio.load_audio(path, sr=config.sample_rate), config)


@dataclass
class FeatureSet:
    """The features of a corpus, one row per utterance in the sample order of SPEC.md §1."""

    x: np.ndarray  # (N, frames, n_mfcc) float32
    y: np.ndarray  # (N,) int64 class indices
    labels: tuple[str, ...]
    corpus: str
    config: FeatureConfig
    speakers: np.ndarray | None = None  # (N,) str, None for the authors' .npy files
    files: np.ndarray | None = None  # (N,) str, paths relative to the corpus root
    meta: dict = field(default_factory=dict)
    from_cache: bool = False  # set by `extract` when an up-to-date feature file was reused
    path: str | None = None  # the file it was read from, named in errors

    def __len__(self) -> int:
        return len(self.y)


def _extract_jobs(jobs: list[tuple[str, FeatureConfig]], config: FeatureConfig, *, workers: int, bar) -> list:
    """Each job's features (or its error message), in order: in this process, or in a pool of
    `workers` processes; `bar` counts the files done."""
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_worker_features(job))
            bar.update()
        return results
    _warm_up(config)
    context = _pool_context()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    results = []
    try:
        with signals_held(context):  # the pool starts its workers as work is submitted
            chunks = [pool.submit(_worker_chunk, jobs[i:i + _CHUNK]) for i in range(0, len(jobs), _CHUNK)]
        for chunk in chunks:
            done = pool_result(pool, chunk)
            results.extend(done)
            bar.update(len(done))
    except BrokenProcessPool:
        end_pool(pool)
        raise TimnetError(f"an extraction worker died (killed, or out of memory?) after {len(results)} of "
                          f"{len(jobs)} files; run the same command again") from None
    except BaseException:  # Ctrl-C, SIGTERM: the queued files are not extracted
        end_pool(pool)
        raise
    pool.shutdown()
    return results


def _worker_features(job: tuple[str, FeatureConfig]) -> np.ndarray | str:
    path, config = job
    try:
        return file_features(path, config)
    except TimnetError as e:
        return str(e)  # reported by the parent, which decides between failing and skipping


_CHUNK = 8  # files per task: fewer round trips to the workers, still a steady progress bar


def _worker_chunk(jobs: list[tuple[str, FeatureConfig]]) -> list[np.ndarray | str]:
    return [_worker_features(job) for job in jobs]


def _pool_context():
    # fork shares the already imported and warmed-up librosa with the workers (seconds saved per
    # worker); elsewhere fall back to the platform default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _init_worker() -> None:
    import signal

    from threadpoolctl import threadpool_limits

    # Forked workers inherit the CLI's SIGTERM handler, which raises: a worker would report the
    # signal as one file's failure and go on, blocked at last on a result pipe nobody reads. Stopping
    # is the parent's decision (it ends the workers): Ctrl-C is ignored here, SIGTERM kills quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    when_parent_ends(lambda: os._exit(1))  # a parent killed outright: no worker left waiting for work
    # One BLAS/OpenMP thread per worker: the processes already fill the cores, and nested thread
    # pools only fight over them.
    threadpool_limits(1)


def _warm_up(config: FeatureConfig) -> None:
    """Import librosa's lazy submodules and build the mel bank once, before workers fork."""
    audio.mfcc(np.zeros(config.signal_length, dtype=np.float32), sr=config.sample_rate, n_mfcc=config.n_mfcc)


def extract(
    corpus: Corpus | str,
    root: str | Path,
    *,
    signal_length: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    speaker_pattern: str | None = None,
    cache: str | Path | None = None,
) -> tuple[FeatureSet, str | None, list[str]]:
    """Features of every utterance of a corpus tree; returns (features, skipped, bad).

    `skipped` is a one-line summary of the audio files that do not fit the corpus naming
    (None if none); `bad` holds the errors of unreadable files (one line each, naming the file),
    which raise unless `skip_bad`, as labelled utterances without audio (IEMOCAP) do. When `cache`
    names a feature file made from the very same files (paths, sizes, times) and settings, it is
    returned instead of recomputing.
    """
    if signal_length is not None and not 0 < signal_length <= MAX_SIGNAL_LENGTH:
        raise TimnetError(f"--signal-length {signal_length} invalid; expected a positive number of samples at 22050 Hz, "
                          f"at most {MAX_SIGNAL_LENGTH} (10 minutes)")
    if signal_length is not None and signal_length < audio.N_FFT:  # librosa would pad each file and warn
        raise TimnetError(f"--signal-length {signal_length} too short; expected at least {audio.N_FFT} samples "
                          f"(one FFT window, {audio.N_FFT / audio.SAMPLE_RATE * 1000:.0f} ms)")
    if cache is not None:
        check_features_path(cache)  # before hours of extraction, not after
    if isinstance(corpus, str) and corpus.upper() == FOLDERS:
        if signal_length is None:
            raise TimnetError("a folders corpus needs --signal-length (samples at 22050 Hz, e.g. 96000 for 4.35 s)")
        corpus = folder_corpus(root, signal_length=signal_length, speaker_pattern=speaker_pattern)
    elif speaker_pattern is not None:
        raise TimnetError(f"--speaker-pattern is for folders corpora; {corpus} speakers come from its layout")
    corpus = get_corpus(corpus, also="folders") if isinstance(corpus, str) else corpus
    root = Path(root).expanduser()  # as list_corpus does: the files are read from the root it listed
    listing = list_corpus(corpus, root)
    absent = listing.missing
    if absent and not skip_bad:  # a partly unpacked copy: its folds would not be the corpus's
        more = f" (and {len(absent) - 1} more; --skip-bad skips them)" if len(absent) > 1 else " (--skip-bad skips it)"
        raise TimnetError(f"{root / absent[0]}: missing, though its {corpus.name} label file names it; expected "
                          f"the audio of every labelled utterance{more}")
    config = FeatureConfig(signal_length=signal_length or corpus.signal_length)
    source = _source_fingerprint(root, listing.items, config, corpus=corpus.name, skip_bad=skip_bad)
    if cache is not None and Path(cache).is_file():
        try:
            with warnings.catch_warnings():  # the file about to be reused or replaced: its warnings are not news
                warnings.simplefilter("ignore")
                cached = load_features(cache)
        except TimnetError:
            cached = None  # unreadable: simply recompute and overwrite
        if cached is not None and cached.meta.get("source_fingerprint") == source:
            cached.from_cache = True
            return cached, skip_summary(listing), list(cached.meta.get("bad", []))
    jobs = [(str(root / item.path), config) for item in listing.items]
    # closed before an error or Ctrl-C leaves: its last redraw would otherwise follow `timnet: interrupted`
    with progress_bar(total=len(jobs), desc=f"extract {corpus.name}", unit="file", enabled=progress) as bar:
        results = _extract_jobs(jobs, config, workers=max(1, min(workers or os.cpu_count() or 1, len(jobs))), bar=bar)

    bad = [r for r in results if isinstance(r, str)]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more bad files; --skip-bad skips them)" if len(bad) > 1 else " (--skip-bad skips it)"
        raise TimnetError(bad[0] + more)
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    if not keep:
        raise TimnetError(f"no readable audio under {root}")
    items = [listing.items[i] for i in keep]
    fs = FeatureSet(
        x=np.stack([results[i] for i in keep]).astype(np.float32, copy=False),
        y=np.array([it.label for it in items], dtype=np.int64),
        labels=tuple(corpus.labels),
        corpus=corpus.name,
        config=config,
        speakers=np.array([it.speaker for it in items]),
        files=np.array([it.path for it in items]),
        meta={"source_fingerprint": source, "bad": bad, "cpu_dispatch": dispatch.state()},
    )
    return fs, skip_summary(listing), bad


def _source_fingerprint(root: Path, items, config: FeatureConfig, *, corpus: str, skip_bad: bool) -> str:
    """A hash of what decides the features: every file's path, size, mtime and label, and the settings."""
    import hashlib

    from . import __version__

    state = dispatch.state()
    h = hashlib.sha256(json.dumps([__version__, corpus, asdict(config), skip_bad,
                                   {k: state[k] for k in dispatch.FEATURE_KEYS}]).encode())
    for it in items:
        try:
            st = (root / it.path).stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a dangling link: the loader reports it (or --skip-bad skips it)
            stamp = "unreadable"
        # surrogateescape: a name that is not UTF-8 (an old Latin-1 or GBK zip) is bytes Python kept as-is
        h.update(f"{it.path}\0{stamp}\0{it.label}\0{it.speaker}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def check_features_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise TimnetError(f"{path}: features are saved as .npz; expected a path ending in .npz")
    return path


def replaced_corpus(path: str | Path) -> str | None:
    """The corpus of the timnet feature file at `path` that an extraction would replace (None if
    there is none). Any other file there is someone's data, not a cache to overwrite: refused."""
    path = Path(path)
    if not path.is_file():
        return None
    meta = None
    if zipfile.is_zipfile(path):  # np.load reads an .npy (or a pickle) under any name: not ours either
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if {"x", "y", "meta"} <= set(z.files) else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged, or meta not JSON
            pass
    if not (isinstance(meta, dict) and isinstance(meta.get("corpus"), str)):
        raise TimnetError(f"{path} exists and is not a readable timnet feature file (another program's, or damaged); "
                          "expected a new path or one `timnet extract` wrote (delete it to use its name)")
    return meta["corpus"]


def save_features(fs: FeatureSet, path: str | Path) -> Path:
    """Write a FeatureSet as .npz atomically (a killed run leaves no partial file)."""
    path = check_features_path(path)
    meta = {"corpus": fs.corpus, "labels": list(fs.labels), "config": asdict(fs.config), **fs.meta}
    arrays = dict(x=fs.x, y=fs.y, meta=np.array(json.dumps(meta)))
    if fs.speakers is not None:
        arrays["speakers"] = fs.speakers.astype(str)
    if fs.files is not None:
        arrays["files"] = fs.files.astype(str)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def _load_npz(path: Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as z:
        if not {"x", "y", "meta"} <= set(z.files):
            raise TimnetError(f"{path}: not a timnet feature file; expected arrays x, y, meta (from `timnet extract`)")
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or not {"labels", "config", "corpus"} <= set(meta):
            raise TimnetError(f"{path}: not a timnet feature file; its meta is not timnet's "
                              "(a JSON object with labels, config and corpus, from `timnet extract`)")
        x, y = z["x"].astype(np.float32, copy=False), _class_indices(path, z["y"])
        labels, corpus = meta.pop("labels"), meta.pop("corpus")
        if not (isinstance(labels, list) and labels and all(isinstance(n, str) and n for n in labels)
                and len(set(labels)) == len(labels)):
            raise TimnetError(f"{path}: its labels are {labels!r}; expected a list of distinct class names")
        if not (isinstance(corpus, str) and corpus):
            raise TimnetError(f"{path}: its corpus is {corpus!r}; expected a corpus name")
        labels = tuple(labels)
        try:
            config = FeatureConfig(**meta.pop("config"))
        except (TypeError, TimnetError) as e:  # unknown keys, or values timnet refuses
            raise TimnetError(f"{path}: its feature settings are not timnet's ({e})") from None
        speakers = z["speakers"] if "speakers" in z.files else None
        files = z["files"] if "files" in z.files else None
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise TimnetError(f"{path}: expected x (N, frames, n_mfcc) and y (N,); got {x.shape} and {y.shape}")
    if not len(y):  # said here, not as a fold count "expected 2..0"
        raise TimnetError(f"{path}: holds no utterances; expected features of at least one")
    if x.shape[1:] != (config.frames, config.n_mfcc):  # a model trained on them would predict from other features
        raise TimnetError(f"{path}: features of {x.shape[1]} frames x {x.shape[2]} coefficients, but its settings "
                          f"give {config.frames} x {config.n_mfcc}")
    if y.min() < 0 or y.max() >= len(labels):
        raise TimnetError(f"{path}: class indices {y.min()}..{y.max()} outside the {len(labels)} labels {', '.join(labels)}")
    speakers, files = (_name_column(path, name, column, len(y)) for name, column in (("speakers", speakers), ("files", files)))
    return FeatureSet(x=x, y=y, labels=labels, corpus=corpus, config=config,
                      speakers=speakers, files=files, meta=meta)


def _name_column(path: Path, name: str, column: np.ndarray | None, n: int) -> np.ndarray | None:
    """A file's speakers or files column, checked: one string (or, for speakers, a whole-number id:
    kept as such, as their order makes the speaker folds) per utterance; anything else refused
    here, not as a traceback after training."""
    if column is None:
        return None
    if column.ndim != 1 or len(column) != n:
        raise TimnetError(f"{path}: {name} of shape {column.shape} for {n} utterances; expected ({n},), one name each")
    if column.dtype.kind in "iu" and name == "speakers":
        return column
    if column.dtype.kind == "U" or (column.dtype.kind == "O" and all(isinstance(v, str) for v in column)):
        return column
    odd = next((v for v in column if not isinstance(v, str)), column[0]) if len(column) else None
    odd = odd.item() if isinstance(odd, np.generic) else odd  # b'03', not np.bytes_(b'03')
    raise TimnetError(f"{path}: {name} holds {column.dtype} values such as {odd!r}; expected strings")


def _class_indices(path: Path, y: np.ndarray) -> np.ndarray:
    """y as int64 class indices; whole-number floats pass (numpy made them), 0.5 is not a class."""
    if y.dtype.kind in "iu":
        return y.astype(np.int64, copy=False)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    odd = (y.flat[np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0]].item() if y.dtype.kind == "f"
           else y.flat[0] if y.size else "none")
    raise TimnetError(f"{path}: y holds {y.dtype} values such as {odd!r}; expected whole-number class indices")


def _check_class_counts(path: Path, c: Corpus, counts: np.ndarray) -> None:
    """EMODB, EMOVO and SAVEE share 7 classes and EMODB and EMOVO their frame count, so only the
    per-class counts tell a whole corpus's file given under another corpus's name (its labels would be wrong)."""
    counts = tuple(int(n) for n in counts)
    if counts == c.class_counts:
        return
    for other in CORPORA.values():
        if other.name != c.name and counts == other.class_counts:
            raise TimnetError(f"{path}: {sum(counts)} utterances with per-class counts {counts}, which are "
                              f"{other.name}'s, not {c.name}'s {c.class_counts}; expected --corpus {other.name.lower()}")


# What a pickled dict of numpy arrays needs, and all an authors' feature file may name: unpickling
# anything else (`os.system`, say) would run code from the file, which may come from anywhere.
# (`_codecs.encode` is how protocol 2, Python 2's, writes an array's bytes: it only encodes a string.)
_ARRAY_PARTS = {*((f"{numpy_core}.multiarray", name) for numpy_core in ("numpy.core", "numpy._core")
                   for name in ("_reconstruct", "scalar")),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _NotArrays(pickle.UnpicklingError):
    pass


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays in dicts, lists and plain values, and nothing that runs code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_PARTS:
            raise _NotArrays(f"it names {module}.{name}, which is no part of a numpy array (refused unread: "
                             "unpickling it could run code)")
        if module == "numpy.core.multiarray":  # numpy 1's name (the authors' files), numpy 2's shim warns on it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_pickled_npy(path: Path) -> dict:
    """The dict an authors' feature file pickles (`np.save(path, {"x": ..., "y": ...})`), read with
    `np.load(allow_pickle=True)`'s format but without letting the pickle run code."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(f)
        if dtype != object or shape != ():
            raise ValueError(f"a {dtype} array of shape {shape}, not a pickled dict")
        d = _ArraysOnly(f).load()
    d = d.item() if isinstance(d, np.ndarray) and d.shape == () else d
    if not isinstance(d, dict):
        raise ValueError(f"it pickles a {type(d).__name__}, not a dict")
    return d


def _load_authors_npy(path: Path, corpus: str | None) -> FeatureSet:
    if corpus is None:
        raise TimnetError(f"{path}: an authors' .npy feature file needs --corpus (one of {', '.join(n.lower() for n in CORPORA)})")
    c = get_corpus(corpus)
    try:
        d = _read_pickled_npy(path)
        x, onehot = np.asarray(d["x"], dtype=np.float32), np.asarray(d["y"])
    except OSError as e:
        raise TimnetError(f"{path}: could not be read ({e.strerror or e})") from None
    except _NotArrays as e:
        raise TimnetError(f"{path}: not an authors' feature file: {e}; expected the pickled dict of arrays "
                          "'x' and 'y' their code saves") from None
    except Exception:  # a pickle can fail in many ways; all mean "not that format"
        raise TimnetError(f"{path}: not an authors' feature file; expected the pickled dict with 'x' and 'y' their code saves") from None
    if x.ndim != 3 or onehot.ndim != 2 or len(x) != len(onehot):
        raise TimnetError(f"{path}: expected x (N, frames, n_mfcc) and one-hot y (N, classes); got {x.shape} and {onehot.shape}")
    if onehot.shape[1] != len(c.labels):
        raise TimnetError(f"{path}: y has {onehot.shape[1]} classes; {c.name} has {len(c.labels)} ({', '.join(c.labels)})")
    if not len(x):
        raise TimnetError(f"{path}: holds no utterances; expected features of at least one")
    if onehot.dtype.kind == "O":  # numbers as Python objects (Python 2's pickles) read as the numbers they are
        with contextlib.suppress(TypeError, ValueError):
            onehot = onehot.astype(np.float64)
    if onehot.dtype.kind not in "biuf":  # strings, None: no sum, no argmax to speak of
        raise TimnetError(f"{path}: y holds {onehot.dtype} values such as {np.asarray(onehot.flat[0]).item()!r}; "
                          "expected one-hot numbers")
    if not (np.isin(onehot, (0, 1)).all() and (onehot.sum(1) == 1).all()):  # argmax would make anything a class
        row = int(np.flatnonzero(~(np.isin(onehot, (0, 1)).all(1) & (onehot.sum(1) == 1)))[0])
        raise TimnetError(f"{path}: y's row {row} is {onehot[row].tolist()}; expected one-hot rows (a single 1)")
    _check_class_counts(path, c, np.bincount(onehot.argmax(1), minlength=onehot.shape[1]))
    # The file does not say its signal length: the corpus's when the frame count fits it, else the
    # shortest length that gives these frames.
    expected = FeatureConfig(signal_length=c.signal_length).frames
    fits = expected == x.shape[1]
    signal_length = c.signal_length if fits else (x.shape[1] - 1) * audio.HOP_LENGTH
    if not fits:  # most likely another corpus's file under this --corpus
        warnings.warn(f"{path}: {x.shape[1]} frames per utterance; {c.name}'s features have {expected} "
                      f"(signal length {c.signal_length}): check --corpus {corpus}")
    config = FeatureConfig(signal_length=signal_length, n_mfcc=x.shape[2])
    return FeatureSet(x=x, y=onehot.argmax(1).astype(np.int64), labels=tuple(c.labels), corpus=c.name, config=config, meta={"source": "authors-npy"})


ORDERS = ("spec", "authors")


def in_order(fs: FeatureSet, order: str) -> FeatureSet:
    """The samples in `order`, which decides the folds: "spec", as extracted (SPEC.md §1: classes,
    then the natural order of each file's path), or "authors", the order of the authors' own
    feature files, on whose folds their released weights were trained and tested.

    Their extract_feature.py copies each class into one folder and natsorts the file names, so
    within a class the files go by the natural order of their name; files of one name (CASIA's
    201.wav of each speaker) go by their path, ignoring case. On EMODB the two orders are one. On
    CASIA the authors' fold models score 0.934 on the test folds of this order, as on utterances
    they never saw, and 0.958-0.993 on those of every other order tried, SPEC.md's included
    (benchmarks/authors_casia_order.py): only in this order have they not seen their test folds.
    SAVEE's two layouts give two orders by this rule (DC/a01.wav, JE/a01.wav, ... of one name
    interleaved; DC_a01.wav, DC_a02.wav, ... speaker by speaker): which one the authors' copy had
    is not known, so the order is what their code gives on the copy at hand.
    """
    if order not in ORDERS:
        raise TimnetError(f"--order {order!r} unknown; expected one of {', '.join(ORDERS)}")
    if order == "spec":
        return fs
    if fs.files is None:
        raise TimnetError("--order authors needs a timnet .npz (it sorts by file name); "
                          "an authors' .npy feature file is in their order already")
    files = [str(f) for f in fs.files]
    idx = np.array(sorted(range(len(fs)), key=lambda i: (
        int(fs.y[i]), natural_key(files[i].rsplit("/", 1)[-1]), natural_key(files[i].casefold()), files[i])))
    return replace(fs, x=fs.x[idx], y=fs.y[idx], files=fs.files[idx],
                   speakers=None if fs.speakers is None else fs.speakers[idx], meta={**fs.meta, "order": order})


def load_features(path: str | Path, *, corpus: str | None = None, corpus_of: str | None = None) -> FeatureSet:
    """Load a timnet .npz, or one of the authors' .npy files (which needs `corpus`). `corpus_of` names
    what expects `corpus` (a run, in a report) when it is not the user's --corpus."""
    path = Path(path)
    if path.is_dir():
        raise TimnetError(f"{path}: a folder; expected a feature file (the .npz `timnet extract` writes)")
    if not path.is_file():
        raise TimnetError(f"{path}: no such feature file")
    try:
        open(path, "rb").close()
    except OSError as e:  # not to be taken for a truncated file below
        raise TimnetError(f"{path}: cannot be read ({e.strerror or e})") from None
    if path.suffix.lower() == ".npy":
        fs = _load_authors_npy(path, corpus)
    else:
        if not zipfile.is_zipfile(path):
            raise TimnetError(f"{path}: not a readable .npz feature file (not a whole zip archive: truncated, or "
                              "another format); expected features from `timnet extract`")
        try:
            fs = _load_npz(path)
        except (ValueError, TypeError, OSError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise TimnetError(f"{path}: not a readable .npz feature file ({type(e).__name__}: {e})") from None
        if corpus is not None and corpus.upper() != fs.corpus.upper():  # a hand-made file's name may be "mine"
            expected = f"{corpus_of} is of {corpus}" if corpus_of else f"--corpus {corpus} was given"
            raise TimnetError(f"{path}: holds {fs.corpus} features, but {expected}")
    # one NaN in one utterance would make every model trained on it NaN, silently
    bad = np.flatnonzero(~np.isfinite(fs.x).all(axis=(1, 2)))
    if len(bad):
        where = f" ({fs.files[bad[0]]})" if fs.files is not None else ""
        raise TimnetError(f"{path}: {len(bad)} utterance(s) have non-finite features, the first at index {bad[0]}{where}; "
                          "expected finite MFCCs (extract them again)")
    if (gap := missing_classes(fs)) is not None:
        warnings.warn(f"{path}: {gap}")
    return replace(fs, path=str(path))


def missing_classes(fs: FeatureSet) -> str | None:
    """Say which of the corpus's classes have no utterance, or None: a model trained on them never
    learns those outputs, and UAR averages over the classes present only (not the paper's figure)."""
    empty = [name for name, n in zip(fs.labels, np.bincount(fs.y, minlength=len(fs.labels))) if n == 0]
    if not empty:
        return None
    return (f"no utterance of {', '.join(empty)} ({len(empty)} of the {len(fs.labels)} classes); a model trained on "
            "these features never learns those outputs, and UAR averages over the classes present only")
