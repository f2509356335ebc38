"""timnet: TIM-Net speech emotion recognition (Ye et al., ICASSP 2023) in PyTorch.

    >>> import timnet
    >>> model = timnet.load_model("emodb")          # or a checkpoint, RUN_DIR, .onnx file
    >>> pred = model.predict(waveform, sample_rate)  # pred.label, pred.probs
"""
from .errors import TimnetError

__version__ = "0.1.0"
__all__ = ["TimnetError", "__version__", "load_model", "available_models"]


def __getattr__(name):
    # Imported on first use so that `timnet corpora` and friends start without loading torch.
    if name in ("load_model", "available_models"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'timnet' has no attribute {name!r}")
