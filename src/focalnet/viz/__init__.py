"""Seeing focal modulation: a hook-based recorder and the pictures made from it.

    from focalnet.viz import ModulationRecorder, write_pictures
    with ModulationRecorder(model, blocks="last") as rec:
        model(x)
    rec.records[0].gates            # (B, L + 1, h, w)
    write_pictures(model, ["cat.jpg"], "out/")   # <name>_modulation.png, kernels.png, pictures.json
"""
from .pictures import (
    GridLayout,
    Panel,
    Picture,
    compose_kernels,
    depthwise_kernels,
    kernel_picture,
    modulation_picture,
    write_pictures,
)
from .recorder import BlockRef, ModulationRecord, ModulationRecorder, RecorderError, record_modulation, resolve_blocks

__all__ = [
    "ModulationRecorder",
    "ModulationRecord",
    "RecorderError",
    "BlockRef",
    "resolve_blocks",
    "record_modulation",
    "write_pictures",
    "modulation_picture",
    "kernel_picture",
    "depthwise_kernels",
    "compose_kernels",
    "GridLayout",
    "Panel",
    "Picture",
]
