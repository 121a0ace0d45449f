"""unetkit: a UNet semantic-segmentation toolkit for PyTorch."""

from .models import UNet, UNetConfig, summary

__version__ = "0.1.0"
__all__ = ["UNet", "UNetConfig", "summary", "__version__"]
