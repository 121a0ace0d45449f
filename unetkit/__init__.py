"""unetkit: a UNet semantic-segmentation toolkit for PyTorch."""

from .models import UNet, summary

__version__ = "0.1.0"
__all__ = ["UNet", "summary", "__version__"]
