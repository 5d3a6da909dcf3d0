"""focalnet: Focal Modulation Networks (NeurIPS 2022), every released variant, done right.

    import focalnet
    model = focalnet.create_model("focalnet_tiny_srf", pretrained="focalnet_tiny_srf.pth")
    focalnet.list_models("*iso*")
"""
from .checkpoints import CheckpointError, read_checkpoint, save_model, write_checkpoint
from .factory import create_model, load_model, register_with_timm, register_with_timm_on_import, verify
from .hub import download_weights, push_to_hub
from .layers import FocalModulation
from .models import FocalNet, FocalNetBlock, FocalNetIsotropic
from .registry import get_spec, list_models

def _version() -> str:
    # one source: the version pyproject.toml declares, as installed
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("focalnet")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()
register_with_timm_on_import()  # timm builds every FocalNet folder we write ('focalnet_custom')

__all__ = [
    "create_model",
    "load_model",
    "verify",
    "download_weights",
    "push_to_hub",
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
