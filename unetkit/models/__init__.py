"""Models: the UNet, its encoders, decoder and blocks."""

from .config import UNetConfig
from .encoders import encoder_names, get_encoder, register_encoder
from .summary import summary
from .unet import UNet

__all__ = ["UNet", "UNetConfig", "encoder_names", "get_encoder", "register_encoder", "summary"]
