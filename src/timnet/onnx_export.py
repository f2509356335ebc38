"""ONNX export of a model or fold ensemble (features in, probabilities out), and running it back.

The labels and the FeatureConfig travel in the ONNX metadata, so the .onnx file alone is enough
to compute the right features and name the classes; its doc string says the same in words, for a
runtime without timnet.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import TimnetError
from .features import FeatureConfig
from .files import atomic_write
from .predict import Predictor, check_feature_batch, mean_probabilities

OPSET = 17
# largest |onnxruntime - torch| probability accepted at export (float32 graphs agree to ~1e-7)
PARITY_TOLERANCE = 1e-4


class _Probabilities(torch.nn.Module):
    """Mean softmax of an ensemble: the graph that is exported."""

    def __init__(self, models):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return mean_probabilities(self.models, features)


def export_onnx(predictor: Predictor, path: str | Path) -> Path:
    """Write `predictor` as ONNX (input `features` (B, frames, n_mfcc), output `probs` (B, classes))."""
    return export_checked(predictor, path)[0]


def check_onnx_path(path: str | Path) -> Path:
    """The output path, if it names an .onnx file (said before a model is loaded: ten authors' files take seconds)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":  # ".onnx" alone is a hidden file's name, with no suffix
        what = "a name before .onnx" if path.name.lower() == ".onnx" else "an output path ending in .onnx"
        raise TimnetError(f"{path}: expected {what}")
    return path


def describe(predictor: Predictor) -> str:
    """The graph's doc string: what its input must be, for a reader without timnet (Netron, another
    runtime); the metadata says the same as values, for timnet to read."""
    cfg, labels = predictor.feature_config, list(predictor.labels)
    return (f"TIM-Net speech emotion recognition (Ye et al., ICASSP 2023), exported by timnet {__version__}"
            f"{f' from {predictor.corpus} training' if predictor.corpus else ''}; the mean probabilities of "
            f"{predictor.networks} network(s). Input 'features': float32 (batch, {cfg.frames}, {cfg.n_mfcc}) MFCCs, "
            f"time-major, not normalised: mono audio resampled to {cfg.sample_rate} Hz as librosa.load does (soxr_hq), "
            f"centre-cropped or zero-padded (centred) to {cfg.signal_length} samples, then "
            f"librosa.feature.mfcc(sr={cfg.sample_rate}, n_mfcc={cfg.n_mfcc}) with librosa's other defaults "
            f"(n_fft {cfg.n_fft}, hop {cfg.hop_length}, Hann window, centred frames, 128 Slaney mel bands, power in dB, "
            f"orthonormal DCT-II), transposed; timnet.features.waveform_features computes them. Output 'probs': "
            f"(batch, {len(labels)}) class probabilities in this order: {', '.join(labels)}.")


def export_checked(predictor: Predictor, path: str | Path) -> tuple[Path, float | None]:
    """export_onnx, and the largest |onnxruntime - torch| probability gap it measured before the file
    took its name (None without onnxruntime: the file is then written unchecked)."""
    try:
        import onnx
    except ImportError:
        raise TimnetError(f"{path}: ONNX export needs the onnx package (pip install onnx onnxruntime, or pip install -e '.[onnx]' in the timnet checkout)") from None

    path = check_onnx_path(path)
    if not predictor.models:
        raise TimnetError(f"{predictor.source}: already an ONNX model; export needs a checkpoint, RUN_DIR or weights folder")
    module = _Probabilities(predictor.models).eval()
    cfg = predictor.feature_config
    example = torch.zeros(2, cfg.frames, cfg.n_mfcc, device=predictor.device)  # where the models are
    # torch 2.5 added the dynamo exporter (and this switch); the TorchScript one is the default before
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    gap = None
    # built and checked in a private folder, and only then written beside `path` (atomically): a
    # run killed outright (kill -9) leaves nothing next to the user's files
    with tempfile.TemporaryDirectory(prefix="timnet-export-") as scratch, warnings.catch_warnings():
        tmp = Path(scratch) / path.name
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference chatter
        torch.onnx.export(module, (example,), str(tmp), input_names=["features"], output_names=["probs"],
                          dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}}, opset_version=OPSET,
                          **legacy)
        proto = onnx.load(str(tmp))
        proto.doc_string = describe(predictor)
        for key, value in (("timnet.labels", json.dumps(list(predictor.labels))),
                           ("timnet.feature_config", json.dumps(asdict(cfg))),
                           ("timnet.networks", str(predictor.networks)),  # TIM-Nets averaged, for repr
                           ("timnet.ensemble_size", str(len(predictor.models))),  # checkpoints (older readers)
                           ("timnet.corpus", predictor.corpus or ""),
                           ("timnet.version", __version__)):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if importlib.util.find_spec("onnxruntime") is not None:
            # a graph the exporter got wrong must not replace a good file under the name
            try:
                gap = onnx_parity(predictor, tmp)
            except TimnetError as e:  # it would name the private scratch file
                raise TimnetError(f"{path}: the exported graph does not load in onnxruntime "
                                  f"({str(e).split(': ', 1)[-1]}); nothing written") from None
            if not gap <= PARITY_TOLERANCE:
                raise TimnetError(f"{path}: the exported graph's probabilities differ from torch's by {gap:.1e} "
                                  f"(expected at most {PARITY_TOLERANCE:.0e}); nothing written")
        with atomic_write(path) as out:
            shutil.copyfile(tmp, out)
    return path, gap


class OnnxPredictor(Predictor):
    """A Predictor backed by an exported .onnx file and onnxruntime."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise TimnetError(f"{path}: running ONNX models needs onnxruntime (pip install onnxruntime, or pip install -e '.[onnx]' in the timnet checkout)") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise TimnetError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "timnet.labels" not in meta:
            raise TimnetError(f"{path}: no timnet metadata; expected a file written by `timnet export`")
        self.models = []
        self.device = torch.device("cpu")  # onnxruntime's CPU provider
        try:
            self.labels = tuple(json.loads(meta["timnet.labels"]))
            self.feature_config = FeatureConfig(**json.loads(meta["timnet.feature_config"]))
            if not self.labels or not all(isinstance(label, str) for label in self.labels):
                raise ValueError("labels")
        except (KeyError, TypeError, ValueError, TimnetError) as e:  # json's errors are ValueErrors
            raise TimnetError(f"{path}: damaged timnet metadata ({type(e).__name__}: {e}); export the model again") from None
        self._check_graph(path)
        self.source = str(path)
        self.corpus = meta.get("timnet.corpus") or None  # absent from files exported before it was recorded

    def _check_graph(self, path) -> None:
        """The graph must take (batch, frames, n_mfcc) features and give one probability per label,
        as its metadata says: a file edited or assembled by hand is refused here, not mid-prediction."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        cfg = self.feature_config
        want_in, want_out = [cfg.frames, cfg.n_mfcc], len(self.labels)
        shape_in, shape_out = inputs.get("features"), outputs.get("probs")
        if shape_in is None or shape_out is None:
            raise TimnetError(f"{path}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                              "expected features -> probs (a file written by `timnet export`)")
        # the batch dimension is symbolic (a string); the others are numbers in an exported file
        fits_in = len(shape_in) == 3 and list(shape_in[1:]) == want_in
        fits_out = len(shape_out) == 2 and shape_out[1] == want_out
        if not (fits_in and fits_out):
            raise TimnetError(f"{path}: graph maps {shape_in} to {shape_out} but its metadata says "
                              f"(batch, {want_in[0]}, {want_in[1]}) to (batch, {want_out}); export the model again")

    @property
    def networks(self) -> int | None:
        """TIM-Nets the graph averages, as its metadata says (None in files exported before it did)."""
        value = self.session.get_modelmeta().custom_metadata_map.get("timnet.networks", "")
        return int(value) if value.isdigit() else None

    def to(self, device) -> OnnxPredictor:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):  # "bogus", None
            raise TimnetError(f"device {str(device)!r} invalid; expected cpu (an ONNX model runs on onnxruntime's "
                              "CPU provider here)") from None
        if kind != "cpu":
            raise TimnetError(f"{self.source}: an ONNX model runs on onnxruntime's CPU provider here; "
                              f"expected device cpu, not {device} (load the checkpoint or RUN_DIR for torch devices)")
        return self

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of features (N, frames, n_mfcc); the graph's frames are fixed."""
        x = check_feature_batch(x, self.feature_config)
        return self.session.run(["probs"], {"features": x})[0]


def onnx_parity(predictor: Predictor, path: str | Path, *, n: int = 4, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| probability gap on random MFCC-scaled features."""
    cfg = predictor.feature_config
    x = np.random.default_rng(seed).standard_normal((n, cfg.frames, cfg.n_mfcc)) * 30
    return float(np.abs(OnnxPredictor(path).predict_features(x) - predictor.predict_features(x)).max())
