"""Seeing what a model does: a hook-based recorder of focal modulation and the pictures made from it
(`recorder`, `pictures`, drawn by `canvas`), measured complexity against the paper's formula (`complexity`;
the counter itself is `focalnet.flops`), activation memory and the guard before a forward (`memory`), the
scaling sweep against Swin and ViT (`sweep`), a run's report (`report`) and classification of images
(`predict`; how a model wants its input is `focalnet.preprocess`).

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
from .report import RunReportError, write_run_report

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
    "write_run_report",
    "RunReportError",
]
