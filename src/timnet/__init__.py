"""timnet: TIM-Net speech emotion recognition (Ye et al., ICASSP 2023) in PyTorch."""
from .errors import TimnetError

__version__ = "0.1.0"
__all__ = ["TimnetError", "__version__"]
