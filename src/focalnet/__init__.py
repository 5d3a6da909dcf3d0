"""focalnet: Focal Modulation Networks (NeurIPS 2022), every released variant, done right.

    import focalnet
    model = focalnet.create_model("focalnet_tiny_srf", pretrained="focalnet_tiny_srf.pth")
    focalnet.list_models("*iso*")
"""
from .checkpoints import CheckpointError, read_checkpoint, save_model, write_checkpoint
from .factory import create_model, load_model
from .layers import FocalModulation
from .models import FocalNet, FocalNetBlock, FocalNetIsotropic
from .registry import get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "load_model",
    "list_models",
    "get_spec",
    "read_checkpoint",
    "save_model",
    "write_checkpoint",
    "CheckpointError",
    "FocalNet",
    "FocalNetIsotropic",
    "FocalNetBlock",
    "FocalModulation",
]
