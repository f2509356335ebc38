"""Use a trained model: load it from any source, and predict the emotion of waveforms and files.

A `Predictor` holds one or more models (an ensemble averages their probabilities), the class
labels and the FeatureConfig they were trained with, so features are always computed exactly
as in training.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import audio
from .checkpoint import load_checkpoint
from .corpora import AUDIO_EXTENSIONS, CORPORA, get_corpus
from .errors import TimnetError
from .features import FeatureConfig, waveform_features
from .keras_import import (check_corpus_levels, highest_keras_fold, keras_fold_files, load_keras_weights,
                           warn_if_named_for_another_corpus)
from .model import TIMNet, has_nonfinite_weights
from .rundir import (RUN_FILE, check_not_multi_seed, diverged_folds, diverged_words, fold_files, read_identity,
                     unfinished_words)

BUNDLED = {"emodb": "emodb.pt"}  # name -> file in timnet/pretrained/
QUIET_RMS = 1e-4  # below this the recording is treated as silence
# The paper's MFCCs are of the absolute level (no normalisation), so a model knows the levels of its
# corpus: EMODB's files are −26 to −12 dBFS RMS, CASIA's −38 to −12 (1% below −34). The bundled EMODB
# model keeps all five examples/ right 10 dB quieter (−24 to −29 dBFS); 20 dB quieter (−34 to −39)
# neutral and fear become "angry", and 30 dB quieter all five are "angry".
QUIET_DBFS = -35.0
LOUD_DBFS = -8.0  # 4 dB above the loudest file of either corpus: a level no training utterance had
# Hz: the lowest rate of the six corpora (EMODB, CASIA, IEMOCAP). Below it the top of the MFCCs' mel
# range, where every training recording had sound, is empty: 8 kHz telephone audio (nothing above
# 4 kHz) changed the bundled model's label for 12 of 20 EMODB files, with no other warning.
LOW_RATE = 16000
# the largest mean (DC offset) of an EMODB or CASIA file is 0.006 of full scale; an offset shifts
# the lowest MFCCs (one of 0.01 moved some class's probability by up to 0.47 on EMODB files), and
# it is no sound, so the level checks measure around it
DC_OFFSET = 0.01
SHORT_SECONDS = 0.5
# lossy codecs (Ogg, MP3) decode a full-scale recording a few percent beyond it (an EMODB file's Ogg:
# peak 1.008), which the user cannot mend and which changes nothing; floats never scaled to [-1, 1]
# (integer PCM as floats) are far beyond
FULL_SCALE_SLACK = 1.1
# Hard clipping flattens the waveform's tops: runs of three or more samples at the peak. No EMODB or
# CASIA file has one such sample. 20 EMODB files driven to 6 times their level and clipped (2-22 % of
# samples so) changed the bundled model's label for 7 of them; to twice (up to 1.8 %), a class's
# probability by up to 0.15. Below CLIP_LEVEL a flat top is quantisation of quiet audio (8-bit), not
# an overloaded recorder.
CLIPPED_SHARE = 1e-3
CLIP_LEVEL = 0.1
# Up to this many signal lengths a recording is centre-cropped exactly as in training (so a corpus
# file gets the very prediction the evaluation made: EMODB's longest, 08b03Tc.wav, is 8.98 s, 2.06
# times its 4.35 s); longer ones are scored in windows.
WINDOW_AFTER = 2.5
WINDOW_BATCH = 64  # windows featurised and scored at once


@dataclass
class Prediction:
    """The result for one waveform or file: label, probabilities, per-window rows, warnings."""

    label: str
    probs: dict[str, float]
    windows: list[dict] = field(default_factory=list)  # {"start_s", "end_s", "label", "probs"} when windowed
    warnings: list[str] = field(default_factory=list)
    file: str | None = None

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels with their probabilities."""
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]

    def to_json(self) -> dict:
        """INTERFACE.md's predict JSON entry (with windows and warnings when there are any)."""
        out = {"file": self.file, "label": self.label, "probs": self.probs}
        if self.windows:
            out["windows"] = self.windows
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def one_piece_reason(window: float | None, config: FeatureConfig) -> str:
    """Why a recording was scored whole rather than in windows."""
    if window is not None:
        return "not longer than the window"
    return (f"up to {WINDOW_AFTER * config.signal_length / config.sample_rate:.2f} s is scored whole, as in training; "
            "a window (--window) splits it")


def _round_up(x: float, digits: int = 2) -> float:
    """x rounded up to `digits` significant digits: a lower bound that, printed so, is still allowed."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / step) * step


def check_windowing(window: float | None, hop: float | None, config: FeatureConfig, *,
                    names: tuple[str, str] = ("--window", "--hop")) -> None:
    """A window holds one STFT hop of samples and at most the model's signal length (the features of
    a longer one would be centre-cropped to it, silently ignoring the rest); a hop moves by at least one
    sample and at most a window (a longer one would skip audio between windows). `names`: the two
    as the caller named them (the command's options, or the Python arguments)."""
    window_name, hop_name = names
    for name, value in ((window_name, window), (hop_name, hop)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))):
            raise TimnetError(f"{name} {value!r} invalid; expected a number of seconds")
    sr, longest = config.sample_rate, config.signal_length / config.sample_rate
    span = longest if window is None else window  # what one window covers
    # the products too: 1e308 s is finite, but not in samples
    # (the bound as printed, to the millisecond, passes: the window is then the signal length)
    if window is not None and not (math.isfinite(window * sr) and audio.HOP_LENGTH <= window * sr <= config.signal_length + sr / 1000):
        # the lower bounds printed rounded up, so that the value the message gives is taken
        raise TimnetError(f"{window_name} {window} invalid; expected {math.ceil(audio.HOP_LENGTH / sr * 1000) / 1000:.3f} "
                          f"to {longest:.3f} s (the model's signal length)")
    if hop is not None and not (math.isfinite(hop * sr) and hop * sr >= 1):
        raise TimnetError(f"{hop_name} {hop} invalid; expected at least one sample ({_round_up(1 / sr):.1e} s)")
    if hop is not None and hop > span:
        whose = "" if window is not None else f" (the model's signal length: no {window_name} given)"
        raise TimnetError(f"{hop_name} {hop} invalid; expected at most the window, {span:.3f} s{whose}; "
                          "a longer hop leaves audio between windows unscored")


MAX_CHANNELS = 32  # the smaller axis of a 2-D waveform is its channels, up to this many


def as_float_audio(waveform) -> np.ndarray:
    """A waveform (numpy array, tensor or sequence) as float32 full scale ±1, of shape (samples,)
    or (samples, channels); integer PCM is scaled as librosa and soundfile scale it."""
    if isinstance(waveform, torch.Tensor):
        t = waveform.detach().cpu()
        y = (t.float() if t.is_floating_point() else t).numpy()  # numpy has no bfloat16
    else:
        try:
            y = np.asarray(waveform)
        except ValueError:  # a ragged list
            raise TimnetError("waveform invalid; expected an array of samples (samples,) or 2-D with channels") from None
    kind = y.dtype.kind
    if kind == "i" and y.dtype.itemsize > 4:  # numpy's and torch's default integers, no PCM format's
        raise TimnetError(f"waveform of dtype {y.dtype} invalid; expected floats in [-1, 1] or integer PCM "
                          "(int8, int16, int32, uint8): cast it to the file's own sample type")
    if kind == "i":  # int16 / 32768, int32 / 2**31 ...
        y = y.astype(np.float32) / np.float32(2 ** (8 * y.dtype.itemsize - 1))
    elif kind == "u" and y.dtype.itemsize == 1:  # 8-bit WAV is unsigned, centred on 128
        y = (y.astype(np.float32) - 128) / 128
    elif kind != "f":
        raise TimnetError(f"waveform of dtype {y.dtype} invalid; expected floats in [-1, 1] or integer PCM (int8, int16, int32, uint8)")
    given = y
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: said below, not warned
        y = y.astype(np.float32, copy=False)
    if y.ndim == 2 and y.shape[0] < y.shape[1]:  # (channels, samples): the smaller axis is the channels
        y = y.T
    if y.ndim not in (1, 2) or y.size == 0 or (y.ndim == 2 and y.shape[1] > MAX_CHANNELS):
        raise TimnetError(f"waveform of shape {tuple(np.shape(waveform))} invalid; expected (samples,), (samples, channels) "
                          f"or (channels, samples) with at most {MAX_CHANNELS} channels")
    if not np.isfinite(y).all():
        if np.isfinite(given).all():  # finite as given: too large for float32
            raise TimnetError(f"waveform of samples up to {float(np.max(np.abs(given))):.3g} invalid; expected floats in [-1, 1]")
        raise TimnetError(f"waveform has {int((~np.isfinite(given)).sum())} NaN or infinite samples; expected finite floats in [-1, 1]")
    return y


def check_feature_batch(x, config: FeatureConfig) -> np.ndarray:
    """Features as a contiguous float32 (N, frames, n_mfcc) batch, or a one-line error naming the layout."""
    expected = f"expected a float array (N, frames, {config.n_mfcc})"
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # numpy has no bfloat16
    try:
        x = np.asarray(x)
    except ValueError:  # a ragged list
        raise TimnetError(f"features invalid; {expected}") from None
    if x.dtype.kind not in "fiu":  # complex would lose its imaginary part, bools and strings are no MFCCs
        raise TimnetError(f"features of dtype {x.dtype} invalid; {expected}")
    x = np.asarray(x, dtype=np.float32, order="C")  # (ascontiguousarray would make a scalar 1-D)
    if x.ndim != 3 or x.shape[2] != config.n_mfcc or x.shape[0] == 0 or x.shape[1] == 0:
        hint = " (one utterance? add a batch axis: x[None])" if x.ndim == 2 else ""
        raise TimnetError(f"features of shape {x.shape} invalid; expected (N, frames, {config.n_mfcc}): "
                          f"N utterances of {config.frames} frames of {config.n_mfcc} MFCCs{hint}")
    if x.shape[1] != config.frames:  # the network would score them, but not as it learnt: other padding, other length
        raise TimnetError(f"features of shape {x.shape} invalid; this model takes exactly {config.frames} frames, "
                          f"(N, {config.frames}, {config.n_mfcc}), as its features' signal length gives "
                          "(timnet.features.waveform_features pads or crops a waveform so)")
    if not np.isfinite(x).all():  # one NaN makes every probability NaN, and argmax then says class 0
        raise TimnetError(f"features have {int((~np.isfinite(x)).sum())} NaN or infinite values; expected finite MFCCs")
    return x


def mean_probabilities(models, features: torch.Tensor) -> torch.Tensor:
    """The mean of the models' softmax probabilities: how a Predictor scores, and the graph
    `timnet export` writes (one expression for both, so the two cannot drift apart)."""
    return torch.stack([m(features).softmax(-1) for m in models]).mean(0)


def clipped_share(y: np.ndarray) -> float:
    """The share of samples (of (samples,) or (samples, channels)) inside flat runs of three or more
    at their channel's peak, where that peak is at least CLIP_LEVEL: how hard clipping looks."""
    a = np.abs(y.reshape(len(y), -1))
    peak = a.max(axis=0)
    at = (a >= peak * (1 - 1e-4)) & (peak >= CLIP_LEVEL)
    return float((at[:-2] & at[1:-1] & at[2:]).sum() / a.size) if len(a) > 2 else 0.0


def audio_warnings(y: np.ndarray, *, peak: float, clipped: float, sample_rate: int, cfg: FeatureConfig) -> list[str]:
    """What makes a prediction of this recording unreliable: `y` resampled to the features' rate,
    `peak`, `clipped` (its clipped_share) and `sample_rate` those of the recording as given (before
    averaging channels and resampling, whose ringing may overshoot a full-scale file and smooth a
    clipped one)."""
    warnings = []
    if peak > FULL_SCALE_SLACK:
        warnings.append(f"samples beyond full scale (peak {peak:.2f}): expected floats in [-1, 1]")
    if clipped >= CLIPPED_SHARE:
        warnings.append(f"clipped audio ({100 * clipped:.1f} % of samples flat at the peak, {peak:.2f}): speech distorted "
                        "as no training recording was; record at a lower gain for a reliable prediction")
    if sample_rate < LOW_RATE:
        warnings.append(f"sample rate {sample_rate} Hz, below {LOW_RATE} Hz: nothing above {sample_rate / 2000:g} kHz, "
                        "where every corpus's recordings have sound, so the features' upper bands are empty")
    seconds = len(y) / cfg.sample_rate
    if seconds < SHORT_SECONDS:
        warnings.append(f"very short audio ({seconds:.2g} s)")  # .2g: 50 samples read 0.0031 s, not 0.00 s
    if abs(offset := float(np.mean(y, dtype=np.float64))) > DC_OFFSET:
        warnings.append(f"a DC offset of {offset:+.3f} (no training recording's exceeds {DC_OFFSET:g}): it shifts the "
                        "features; subtract the mean (or high-pass the audio) for a reliable prediction")
    rms = _rms(y)
    dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
    if rms < QUIET_RMS:
        warnings.append("silent audio")
    elif dbfs < QUIET_DBFS:
        warnings.append(f"quiet audio ({dbfs:.0f} dBFS RMS, below {QUIET_DBFS:.0f}): the features are "
                        "of the absolute level, as in the paper, so raise the level for a reliable prediction")
    elif dbfs > LOUD_DBFS:
        warnings.append(f"loud audio ({dbfs:.0f} dBFS RMS, above {LOUD_DBFS:.0f}): the features are "
                        "of the absolute level, as in the paper, so lower the level for a reliable prediction")
    return warnings


def _rms(y: np.ndarray) -> float:
    """The level of the sound in `y`: its RMS around its mean (a DC offset is no sound, and would
    make silence read as speech)."""
    y = y.astype(np.float64)
    return float(np.sqrt(np.mean((y - y.mean()) ** 2)))


def _too_quiet(y: np.ndarray) -> bool:
    """Silent, or quieter than QUIET_DBFS (which no EMODB file and 6 of CASIA's 1200 are)."""
    rms = _rms(y)
    return rms < QUIET_RMS or 20 * math.log10(rms) < QUIET_DBFS


def scored_part_warnings(y: np.ndarray, chunks: list[np.ndarray], *, window: float | None,
                         cfg: FeatureConfig) -> tuple[list[str], np.ndarray]:
    """What the whole-recording checks miss in the audio actually scored, and which windows count.

    The model's answer for silence or a pause is no emotion but a confident class (the bundled EMODB
    model's is "angry" at 1.000), so a centre crop that is silent or far quieter than speech is
    said, and such windows of a recording that has louder ones are left out of the mean. Returns
    (warnings, the windows that count)."""
    warnings = []
    signal = cfg.signal_length / cfg.sample_rate
    if len(chunks) == 1:
        if len(y) > cfg.signal_length and not _too_quiet(y) and _too_quiet(crop := audio.fit_length(y, cfg.signal_length)):
            rms = _rms(crop)
            level = "silent" if rms < QUIET_RMS else f"quiet ({20 * math.log10(rms):.0f} dBFS RMS)"
            warnings.append(f"the middle {signal:.2f} s it was scored on (a recording up to {WINDOW_AFTER:g} times the "
                            f"signal length is centre-cropped, as in training) is {level}: --window {signal:.2f} scores all of it")
        return warnings, np.ones(1, dtype=bool)
    if window is not None and window < SHORT_SECONDS:
        warnings.append(f"very short windows ({window:g} s, each padded to {signal:.2f} s)")
    counts = np.array([not _too_quiet(c) for c in chunks])
    if not counts.any():  # quiet throughout: the whole-recording checks say so; nothing to leave out
        return warnings, np.ones(len(chunks), dtype=bool)
    if not counts.all():
        warnings.append(f"{int((~counts).sum())} of {len(chunks)} windows silent or quiet (below {QUIET_DBFS:.0f} dBFS "
                        "RMS, as under 1 % of the corpora's utterances are): left out of the mean")
    return warnings, counts


def window_starts(n: int, win: int, step: int) -> list[int]:
    """Starts of the windows of `win` samples over `n > win` samples: the first at the first sample,
    the last ending at the last, as few as keep them at most `step` apart, spread evenly. (A window
    added for the tail alone could lie a sample from the one before and count that audio twice in
    the mean.)"""
    gaps = -(-(n - win) // step)  # ceil: windows - 1
    return [round(i * (n - win) / gaps) for i in range(gaps + 1)]


class Predictor:
    """An ensemble of TIMNets with their labels and feature config; `predict` takes raw audio."""

    def __init__(self, models: list[TIMNet], *, labels: tuple[str, ...], feature_config: FeatureConfig, source: str = "",
                 corpus: str | None = None):
        if not models:
            raise TimnetError(f"{source}: no model to predict with")
        for m in models:
            if m.config.n_classes != len(labels):
                raise TimnetError(f"{source}: a model has {m.config.n_classes} classes but {len(labels)} labels were given")
            if m.config.n_features != feature_config.n_mfcc:  # an authors' file of another front end, say
                raise TimnetError(f"{source}: a model takes {m.config.n_features} features per frame, but its "
                                  f"feature config gives {feature_config.n_mfcc} MFCCs; expected a model of these features")
        if any(map(has_nonfinite_weights, models)):
            raise TimnetError(f"{source}: a model has non-finite (NaN or inf) weights; expected a trained model")
        self.models = [m.eval() for m in models]
        self.labels, self.feature_config, self.source = tuple(labels), feature_config, source
        self.corpus = corpus  # the corpus it was trained on, when known
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Predictor:
        """Move the networks to `device` (e.g. "cuda"); features are computed on the CPU, scored there."""
        given = device
        try:
            device = torch.device(device)
            # first: a device this torch lacks raises, nothing changed
            self.models = [m.to(device) for m in self.models]
        except (RuntimeError, AssertionError, TypeError) as e:  # "Torch not compiled with CUDA enabled", ...
            raise TimnetError(f"device {str(given)!r} unavailable ({str(e).splitlines()[0][:120]}); expected one this "
                              "torch has: cpu, or cuda/mps where built and present") from None
        self.device = device
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, corpus={self.corpus!r}, labels={self.labels}, "
                f"networks={self.networks})")

    @property
    def networks(self) -> int:
        """TIM-Nets behind the predictions: a checkpoint of an ensemble recipe holds several."""
        return sum(len(getattr(m, "members", ())) or 1 for m in self.models)

    @torch.inference_mode()
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of features (N, frames, n_mfcc): the ensemble mean."""
        x = check_feature_batch(x, self.feature_config)
        return mean_probabilities(self.models, torch.from_numpy(x).to(self.device)).cpu().numpy()

    def predict(self, waveform: np.ndarray, sample_rate: int, *, window: float | None = None, hop: float | None = None,
                progress: bool = False) -> Prediction:
        """Emotion of a waveform at `sample_rate` Hz: mono (samples,), or (samples, channels) as
        soundfile reads it, or (channels, samples) as torchaudio does (channels are averaged). Floats
        are full scale at ±1; integer PCM (scipy.io.wavfile's int16, int32, uint8) is scaled so.

        A recording up to 2.5 times the model's signal length is centre-cropped or padded as in
        training. A longer one, or any one longer than `window` when it is given, is scored in
        windows of `window` seconds (default: the signal length) at most `hop` seconds apart
        (default: half a window), spread evenly from its first sample to its last; the result is
        the mean of the windows' probabilities, less the silent or quiet ones (marked "quiet" and
        said in the warnings) unless every window is. `progress`: a bar
        on stderr over the windows when there are more than one batch of them (a long file, a short hop).
        """
        y = as_float_audio(waveform)
        sample_rate = audio.check_sample_rate(sample_rate)
        # before the channels are averaged (one clipping channel of two) and before resampling
        # (whose ringing may overshoot a full-scale file)
        peak, clipped = float(np.max(np.abs(y))), clipped_share(y)
        if y.ndim == 2:
            y = y.mean(axis=1, dtype=np.float32)
        cfg = self.feature_config
        y = audio.resample(y, orig_sr=int(sample_rate), target_sr=cfg.sample_rate)
        warnings = audio_warnings(y, peak=peak, clipped=clipped, sample_rate=sample_rate, cfg=cfg)
        check_windowing(window, hop, cfg, names=("window", "hop"))
        win = cfg.signal_length if window is None else min(int(round(window * cfg.sample_rate)), cfg.signal_length)
        step = max(1, int(round((win / cfg.sample_rate / 2 if hop is None else hop) * cfg.sample_rate)))
        if len(y) <= win or (window is None and len(y) <= WINDOW_AFTER * cfg.signal_length):
            starts = [0]
            chunks = [y]
            if hop is not None:  # windows were asked for and none are made: said, not silently ignored
                warnings.append(f"scored in one piece ({one_piece_reason(window, cfg)}): hop {hop} s makes no windows")
        else:
            starts = window_starts(len(y), win, step)
            chunks = [y[s : s + win] for s in starts]
        # windows in batches: memory stays that of one batch however long the file or short the hop
        from tqdm.auto import tqdm

        probs = []
        with tqdm(total=len(chunks), unit="window", leave=False, disable=not progress or len(chunks) <= WINDOW_BATCH) as bar:
            for i in range(0, len(chunks), WINDOW_BATCH):
                batch = chunks[i : i + WINDOW_BATCH]
                probs.append(self.predict_features(np.stack([waveform_features(c, cfg) for c in batch])))
                bar.update(len(batch))
        probs = np.concatenate(probs)
        said, counted = scored_part_warnings(y, chunks, window=window, cfg=cfg)
        warnings += said
        mean = probs[counted].mean(0)
        rows = []
        if len(chunks) > 1:
            for s, c, p, counts in zip(starts, chunks, probs, counted):
                rows.append({"start_s": round(s / cfg.sample_rate, 3), "end_s": round((s + len(c)) / cfg.sample_rate, 3),
                             "label": self.labels[int(p.argmax())], "probs": self._probs(p),
                             **({} if counts else {"quiet": True})})
        return Prediction(label=self.labels[int(mean.argmax())], probs=self._probs(mean), windows=rows, warnings=warnings)

    def predict_file(self, path: str | Path, *, window: float | None = None, hop: float | None = None,
                     progress: bool = False) -> Prediction:
        """Emotion of an audio file (any format and rate libsndfile reads)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TimnetError(f"audio file {path!r} invalid; expected a path (str or pathlib.Path)")
        y, sr = audio.read_audio(path)
        pred = self.predict(y, sr, window=window, hop=hop, progress=progress)
        pred.file = str(path)
        return pred

    def _probs(self, p: np.ndarray) -> dict[str, float]:
        return {name: round(float(v), 6) for name, v in zip(self.labels, p)}


def _bundled_path(name: str) -> Path:
    return Path(__file__).parent / "pretrained" / BUNDLED[name]


def available_models() -> list[str]:
    """Names of the models shipped in the package."""
    return [name for name in BUNDLED if _bundled_path(name).is_file()]


def load_model(name_or_path: str | Path = "emodb", *, corpus: str | None = None, allow_onnx: bool = True) -> Predictor:
    """A Predictor from a bundled name, a checkpoint, a RUN_DIR (fold ensemble), an .onnx file (unless
    not `allow_onnx`: export needs torch's models) or the authors' .hdf5 files. `corpus` names the labels of
    the authors' files, which have none; any other model has its own, and a `corpus` that contradicts
    them is refused."""
    predictor = _load(name_or_path, corpus, allow_onnx)
    if corpus is not None and str(corpus).strip().upper() != str(predictor.corpus or "").upper():
        get_corpus(corpus)  # a name that is no corpus at all is said so first
        what = f"a model of {predictor.corpus}" if predictor.corpus else "a model (of a corpus it does not record)"
        raise TimnetError(f"corpus {corpus}: {predictor.source} is {what} with its own labels; "
                          "a corpus is named only for the authors' weight files, which have none")
    return predictor


def _load(name_or_path: str | Path, corpus: str | None, allow_onnx: bool) -> Predictor:
    installed = ", ".join(available_models()) or "none installed"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TimnetError(f"model {name_or_path!r} invalid; expected a bundled name ({installed}) or a path")
    key = os.fspath(name_or_path)
    if not key.strip():  # Path("") is the current folder: a run there would load unasked
        raise TimnetError(f"model {key!r} invalid; expected a bundled name ({installed}) or a path")
    kinds = (f"a checkpoint (.pt), a RUN_DIR{', an .onnx file' if allow_onnx else ''}, the authors' .hdf5 weights or a "
             f"bundled name ({installed})")
    if key.lower() in BUNDLED and _holds_a_model(Path(key)):
        import warnings

        # a run of one's own named after a corpus is what its owner means; the bundled one has a path too
        warnings.warn(f"model {key!r}: {key} here holds a model, which is used; the bundled {key.lower()} model is "
                      f"{_bundled_path(key.lower())}")
    elif key.lower() in BUNDLED:
        path = _bundled_path(key.lower())
        if not path.is_file():
            raise TimnetError(f"model {key!r} is not installed; available models = {available_models()}")
        return _from_checkpoints([path], source=key)
    path = Path(name_or_path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        if not allow_onnx:
            raise TimnetError(f"{path}: already an ONNX model; expected {kinds}")
        from .onnx_export import OnnxPredictor

        return OnnxPredictor(path)
    if path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
        return _from_keras([path], corpus=corpus, source=str(path))
    if path.is_file() and path.name.lower().endswith(AUDIO_EXTENSIONS):  # `--model` and the audio swapped
        raise TimnetError(f"{path}: an audio file, not a model; expected {kinds}")
    if path.is_file():
        return _from_checkpoints([path], source=str(path))
    if path.is_dir():
        check_not_multi_seed(path)
        ckpts = fold_files(path, "model.pt")
        if ckpts:
            _warn_if_unfinished(path, len(ckpts))
            return _from_checkpoints(ckpts, source=str(path))
        if (path / "model.pt").is_file():  # a `train --all-data` folder: its one model
            return _from_checkpoints([path / "model.pt"], source=str(path))
        if list(path.glob("*.hdf5")):
            return _from_keras(keras_fold_files(path, _keras_folds(path)), corpus=corpus, source=str(path))
        if (path / RUN_FILE).is_file():
            if _is_all_data(path):
                raise TimnetError(f"{path}: an --all-data run not finished (no model.pt yet); expected its model: wait "
                                  "for it, or resume it with the same `timnet train --all-data` command")
            if lost := diverged_folds(path):
                raise TimnetError(f"{path}: a sweep trial whose folds hold no model ({diverged_words(lost)}); expected "
                                  "a run with trained folds")
            raise TimnetError(f"{path}: a RUN_DIR with no finished fold yet (no fold_*/model.pt); "
                              "expected one to predict with: wait for its first fold, or resume it with `timnet train`")
        raise TimnetError(f"{path}: no fold_*/model.pt, model.pt or .hdf5 files; expected a RUN_DIR, an --all-data "
                          "folder or a folder of the authors' weights")
    raise TimnetError(f"{key}: no such model file or folder, nor a bundled model; expected {kinds}")


def _holds_a_model(path: Path) -> bool:
    """Whether `path` is a model file or a folder `_load` predicts with (not, say, a corpus folder
    that happens to share a bundled model's name)."""
    if path.is_file():  # the name has no suffix: a model so named is a checkpoint, which torch.save writes as a zip
        return _starts_with(path, b"PK\x03\x04")
    return path.is_dir() and any(next(path.glob(pattern), None) for pattern in
                                 ("fold_*/model.pt", "model.pt", "*.hdf5", RUN_FILE))


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _from_keras(paths: list[Path], *, corpus: str | None, source: str) -> Predictor:
    if corpus is None:
        raise TimnetError(f"{source}: the authors' weight files need --corpus (one of {', '.join(n.lower() for n in CORPORA)})")
    c = get_corpus(corpus)
    warn_if_named_for_another_corpus(source, c.name)
    models = []
    for f in paths:  # each checked as it loads: a wrong --corpus is said after one file, not ten
        models.append(load_keras_weights(f))
        n = models[-1].config.n_classes
        if n != len(c.labels):
            raise TimnetError(f"{f}: {n} classes, but --corpus {corpus} has {len(c.labels)} "
                              f"({', '.join(c.labels)}); another corpus's weights? check --corpus")
        try:
            check_corpus_levels(models[-1], c.name, f)
        except TimnetError as e:
            raise TimnetError(f"{e}; check --corpus") from None
    return Predictor(models, labels=c.labels, feature_config=FeatureConfig(signal_length=c.signal_length), source=source,
                     corpus=c.name)


def _keras_folds(folder: Path) -> int:
    """How many fold files the authors' folder should hold: their code writes 10 (a gap below the
    highest, or a fold beyond 10, is refused by keras_fold_files); fewer is predicted with, but said."""
    import warnings

    # none that count: keras_fold_files names the ten it expected; one beyond ten it refuses
    n = min(highest_keras_fold(folder) or 10, 10)
    if n < 10:
        warnings.warn(f"{folder}: fold weights 1..{n} only (the authors' code writes 10); the ensemble is of those")
    return n


def _warn_if_unfinished(run_dir: Path, n_finished: int) -> None:
    """A run still training (or interrupted) predicts with the folds it has; say so, as `test` does."""
    import warnings

    if (run_dir / RUN_FILE).is_file():
        try:
            folds = read_identity(run_dir).get("folds")
        except TimnetError:  # a damaged run.json: each checkpoint still loads on its own
            return
        if folds and n_finished < folds:
            warnings.warn(f"{run_dir}: {unfinished_words(run_dir, n_finished, folds)}; the ensemble is of those")


def _from_checkpoints(paths: list[Path], *, source: str) -> Predictor:
    models, labels, config = [], None, None
    for p in paths:
        model, ckpt = load_checkpoint(p)
        if labels is not None and (tuple(ckpt["labels"]) != labels or ckpt["feature_config"] != config):
            raise TimnetError(f"{p}: labels or features differ from the other folds of {source}")
        labels, config = tuple(ckpt["labels"]), ckpt["feature_config"]
        models.append(model)
    return Predictor(models, labels=labels, feature_config=config, source=source, corpus=ckpt.get("corpus"))


def find_audio(paths: list[str | Path]) -> list[Path]:
    """Files given, and audio files under directories given (recursively, in natural order)."""
    from .corpora import visible_files

    out = []
    for p in map(Path, paths):
        if p.is_dir():  # searched as `timnet extract` searches a corpus: symlinks followed, hidden files not
            found = [p / f for f in visible_files(p) if f.lower().endswith(AUDIO_EXTENSIONS)]
            if not found:
                raise TimnetError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory")
            out += found
        else:
            out.append(p)  # a missing file becomes an error row, like an unreadable one
    return out


def _is_all_data(run_dir: Path) -> bool:
    """A `train --all-data` folder (its run.json says so); False for one that cannot be read."""
    try:
        return bool(read_identity(run_dir).get("all_data"))
    except TimnetError:
        return False
