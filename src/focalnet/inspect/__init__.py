"""Seeing what a model does: a hook-based recorder of focal modulation and the pictures made from it,
measured complexity (`inspect.complexity`) and classification of images (`inspect.predict`; its
preprocessing is exported here for the other packages).

    from focalnet.inspect import ModulationRecorder, write_pictures
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
from .predict import preprocessing_for, to_tensor
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
    "preprocessing_for",
    "to_tensor",
]
