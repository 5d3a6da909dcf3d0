"""Checkpoints: every FocalNet layout in the wild, read, written and loaded strictly.

Read from the bottom up:
- `convert`: pure, table-driven conversion of state dicts between our layout and the authors', timm's and
  Hugging Face's (never touches a model);
- `arch`: the architecture a file holds (from its tensor shapes or a Hugging Face config), and back;
- `io`: reading and writing files and folders, safely (no code from a file runs) and atomically;
- `load`: loading weights into a model, strictly (22K -> 1K heads, grayscale stems, nothing else).
"""
from .arch import arch_from_hf_config, arch_from_state_dict, hf_config
from .convert import FORMATS, ConversionError, detect_layout, from_focalnet, in22k_head_to_in1k, to_focalnet
from .io import Checkpoint, CheckpointError, read_checkpoint, safe_torch_load, save_model, write_checkpoint
from .load import load_into

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "ConversionError",
    "read_checkpoint",
    "write_checkpoint",
    "save_model",
    "safe_torch_load",
    "load_into",
    "arch_from_state_dict",
    "arch_from_hf_config",
    "hf_config",
    "to_focalnet",
    "from_focalnet",
    "detect_layout",
    "in22k_head_to_in1k",
]
