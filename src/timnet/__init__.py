"""timnet: TIM-Net speech emotion recognition (Ye et al., ICASSP 2023) in PyTorch.

    >>> import timnet
    >>> model = timnet.load_model("emodb")          # or a checkpoint, RUN_DIR, .onnx file
    >>> pred = model.predict(waveform, sample_rate)  # pred.label, pred.probs, pred.warnings
"""
import functools

from .errors import TimnetError

__version__ = "0.1.0"
# Imported on first use so that `timnet corpora` and friends start without loading torch.
_LAZY = {
    "load_model": "predict", "available_models": "predict", "Predictor": "predict", "Prediction": "predict",
    "TIMNet": "model", "TIMNetConfig": "model", "FeatureConfig": "features",
}
__all__ = ["TimnetError", "__version__", *_LAZY]


@functools.cache  # the package's files do not change while it runs: list them once
def _submodules() -> frozenset[str]:
    import pkgutil

    return frozenset(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _submodules():  # `import timnet; timnet.dispatch.pin()`, as `import timnet.dispatch` would
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'timnet' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, *_submodules()})
