"""Dense prediction with FocalNet: a backbone built on the registered models, torchvision detectors
(Faster R-CNN, Mask R-CNN, RetinaNet) and UperNet segmentation on it, the authors' detection weights,
and a detection / segmentation set made from real images (Fashion-MNIST items on canvases).

    from focalnet.dense import maskrcnn_focalnet
    model = maskrcnn_focalnet("focalnet_tiny_srf", num_classes=91, pretrained_backbone="focalnet_tiny_srf.pth")

Needs torchvision (and segmentation_models_pytorch for UperNet, torchmetrics + pycocotools for mAP):
pip install 'focalnet[dense]'.
"""
from .backbone import FocalNetBackbone, load_backbone_weights
from .checkpoint import load_dense_model, read_dense_checkpoint, save_dense_checkpoint
from .detection import FocalNetFPN, fasterrcnn_focalnet, maskrcnn_focalnet, retinanet_focalnet
from .loading import (
    adapt_focal_weights,
    grow_gate_rows,
    read_backbone_weights,
    resize_focal_kernel,
)
from .segmentation import FocalNetUperNet, upernet_focalnet

__all__ = [
    "FocalNetBackbone",
    "FocalNetFPN",
    "FocalNetUperNet",
    "fasterrcnn_focalnet",
    "maskrcnn_focalnet",
    "retinanet_focalnet",
    "upernet_focalnet",
    "resize_focal_kernel",
    "grow_gate_rows",
    "adapt_focal_weights",
    "read_backbone_weights",
    "load_backbone_weights",
    "save_dense_checkpoint",
    "read_dense_checkpoint",
    "load_dense_model",
]
