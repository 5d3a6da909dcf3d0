"""The dense-prediction backbone, the torchvision detectors, UperNet, the canvas data set and their checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalnet.checkpoints.io import CheckpointError
from focalnet.dense import (
    FocalNetBackbone,
    fasterrcnn_focalnet,
    load_dense_model,
    maskrcnn_focalnet,
    retinanet_focalnet,
    save_dense_checkpoint,
    upernet_focalnet,
)
from focalnet.dense.data import (
    CANVAS_CLASSES,
    CanvasDataset,
    canvas_detector_args,
    check_target,
    load_fashion_mnist,
    sanitize_target,
)
from focalnet.dense.engine import evaluate_detector, evaluate_segmenter, train_detector, train_segmenter

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1))
K = len(CANVAS_CLASSES)


def _det_args(canvas: int = 64) -> dict:
    return dict(backbone_args=TINY, fpn_channels=16, **canvas_detector_args(canvas))


# --------------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------------


def test_backbone_outputs_any_size():
    bb = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, **TINY).eval()
    assert bb.out_channels == [16, 32, 64, 128] and bb.strides == [4, 8, 16, 32]
    for H, W in ((64, 64), (70, 45), (33, 97), (1, 1)):
        feats = bb(torch.randn(1, 3, H, W))
        assert [tuple(f.shape[-2:]) for f in feats] == [(math.ceil(H / s), math.ceil(W / s)) for s in bb.strides]
    # the outputs are the stage outputs of the registered model (before the next downsampling), normalised
    x = torch.randn(2, 3, 64, 48)
    ref = bb.model.forward_intermediates(x, intermediates_only=True)
    with torch.no_grad():
        bb.out_norms["1"].weight.normal_()
    for i, (f, r) in enumerate(zip(bb(x), ref)):
        n = bb.out_norms[str(i)]
        torch.testing.assert_close(f, F.layer_norm(r.permute(0, 2, 3, 1), (r.shape[1],), n.weight, n.bias).permute(0, 3, 1, 2))


def test_backbone_out_indices_drop_later_stages_and_norms():
    bb = FocalNetBackbone("focalnet_tiny_lrf", out_indices=(1, 2), out_norms=False, **TINY)
    assert len(bb.model.stages) == 3 and bb.out_norms is None and isinstance(bb.model.norm, torch.nn.Identity)
    assert bb.out_channels == [32, 64] and bb.strides == [8, 16]
    assert bb.model.stages[0].blocks[0].modulation.focal_level == 3  # the variant's levels (LRF)
    feats = bb(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64]
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in bb.parameters())  # nothing unused is left
    with pytest.raises(ValueError, match="out_indices"):
        FocalNetBackbone("focalnet_tiny_srf", out_indices=(2, 1), **TINY)
    with pytest.raises(ValueError, match="isotropic"):
        FocalNetBackbone("focalnet_tiny_iso")


@pytest.mark.parametrize("frozen", [-1, 0, 2, 4])
def test_backbone_frozen_stages(frozen):
    bb = FocalNetBackbone("focalnet_tiny_srf", frozen_stages=frozen, drop_path_rate=0.5, **TINY)
    frozen_mods = ([bb.model.stem] if frozen >= 0 else []) + list(bb.model.stages[: max(frozen, 0)])
    frozen_ids = {id(p) for m in frozen_mods for p in m.parameters()}
    for p in bb.parameters():
        assert p.requires_grad == (id(p) not in frozen_ids)
    bb.train()
    for m in frozen_mods:
        assert not any(sub.training for sub in m.modules())  # no stochastic depth where nothing learns
    trainable = [m for m in bb.model.stages[max(frozen, 0) :]]
    assert all(m.training for m in trainable)
    with pytest.raises(ValueError, match="frozen_stages"):
        FocalNetBackbone("focalnet_tiny_srf", frozen_stages=5, **TINY)


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


def test_canvases_are_deterministic_and_consistent():
    ds = CanvasDataset("train", 6, canvas_size=96, seed=3)
    img, t = ds[2]
    img2, t2 = CanvasDataset("train", 6, canvas_size=96, seed=3)[2]
    assert torch.equal(img, img2) and all(torch.equal(t[k], t2[k]) for k in t)
    assert not torch.equal(img, CanvasDataset("train", 6, canvas_size=96, seed=4)[2][0])
    assert img.shape == (3, 96, 96) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, 96, 96) and t["semantic"].shape == (96, 96)
        assert ((t["labels"] >= 1) & (t["labels"] <= 10)).all()
        for box, mask, label in zip(t["boxes"], t["masks"], t["labels"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight around the pixels
            assert (t["semantic"][mask.bool()] == label).all()
        assert (t["masks"].sum(0) <= 1).all()  # items never overlap
        assert int((t["semantic"] > 0).sum()) == int(t["masks"].sum())


def test_train_and_test_canvases_use_their_own_split():
    train_imgs, train_labels = load_fashion_mnist("train")
    test_imgs, _ = load_fashion_mnist("test")
    assert train_imgs.shape == (60000, 28, 28) and test_imgs.shape == (10000, 28, 28)
    _, t = CanvasDataset("test", 3, seed=0)[0]
    _, u = CanvasDataset("train", 3, seed=0)[0]
    assert t["item_ids"].max() < 10000
    assert (u["labels"] == torch.from_numpy(train_labels[u["item_ids"].numpy()]) + 1).all()
    empty = CanvasDataset("train", 2, canvas_size=64, items=(0, 0))
    _, t = empty[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and not t["semantic"].any()
    with pytest.raises(ValueError, match="item_size"):
        CanvasDataset("train", 2, canvas_size=32, item_size=(20, 56))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test", root="/nonexistent")


def test_degenerate_boxes_are_dropped_with_a_count():
    target = dict(
        boxes=torch.tensor([[1.0, 1, 5, 5], [3, 3, 3, 8], [2, 7, 9, 7], [0, 0, float("nan"), 4], [-5, 2, 4, 6], [70, 1, 80, 5]]),
        labels=torch.tensor([1, 2, 3, 4, 5, 6]),
        masks=torch.zeros(6, 10, 64, dtype=torch.uint8),
    )
    clean, dropped = sanitize_target(target, image_size=(10, 64))
    # zero width, zero height, NaN, and entirely right of the image (zero width once clipped)
    assert dropped == 4
    assert clean["labels"].tolist() == [1, 5] and clean["masks"].shape == (2, 10, 64)
    assert clean["boxes"][1].tolist() == [0, 2, 4, 6]  # partly outside: clipped, kept
    with pytest.raises(ValueError, match="0 is the background"):
        check_target(dict(boxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.int64)), K, (8, 8))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        check_target(dict(boxes=torch.zeros(4), labels=torch.zeros(1, dtype=torch.int64)), K, (8, 8))


# --------------------------------------------------------------------------------------------------------
# Detection and segmentation: build, train a few steps, evaluate, save, load
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [fasterrcnn_focalnet, maskrcnn_focalnet, retinanet_focalnet])
def test_detectors_train_and_round_trip(builder, tmp_path):
    extra = {} if builder is retinanet_focalnet else dict(representation_size=64)
    if builder is maskrcnn_focalnet:
        extra["mask_head_channels"] = 16
    args = _det_args()
    if builder is retinanet_focalnet:
        args = {k: v for k, v in args.items() if not k.startswith(("rpn_", "box_batch"))}
    model = builder("focalnet_tiny_srf", K, **args, **extra)
    # one canvas of the batch has no object: trained as background
    ds = CanvasDataset("train", 16, canvas_size=64, items=(0, 3), item_size=(16, 40))
    assert any(len(ds[i][1]["labels"]) == 0 for i in range(16))
    fit = train_detector(model, ds, steps=3, batch_size=4, lr=5e-4, log_every=1)
    assert fit.steps == 3 and len(fit.history) == 3 and all(math.isfinite(h["loss"]) for h in fit.history)
    metrics = evaluate_detector(model, CanvasDataset("test", 4, canvas_size=64, item_size=(16, 40)), batch_size=4)
    assert 0 <= metrics["map"] <= 1 and 0 <= metrics["map_50"] <= 1
    assert ("segm_map" in metrics) == (builder is maskrcnn_focalnet)

    path = save_dense_checkpoint(model, tmp_path / "det.pth", class_names=CANVAS_CLASSES, extra=dict(metrics))
    loaded, info = load_dense_model(path)
    assert info.task == "detection" and info.class_names == list(CANVAS_CLASSES) and "model" not in info
    x = [torch.rand(3, 64, 64), torch.rand(3, 50, 77)]
    model.eval()
    for a, b in zip(model(x), loaded(x)):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    obj = torch.load(path, weights_only=True)  # plain data, no code
    assert obj["builder"] == builder.__name__ and obj["format"] == "focalnet-dense"


def test_detector_learns_on_canvases():
    """A few steps at a high learning rate: the loss falls (the RPN's objectness first)."""
    torch.manual_seed(0)
    model = fasterrcnn_focalnet("focalnet_tiny_srf", K, representation_size=64, **_det_args())
    ds = CanvasDataset("train", 64, canvas_size=64, item_size=(16, 40))
    fit = train_detector(model, ds, steps=16, batch_size=4, lr=2e-3, grad_clip=5.0, log_every=4, warmup=0.0)
    assert fit.last_loss < 0.8 * fit.first_loss, fit.history


def test_saving_needs_a_recordable_model(tmp_path):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((1.0,),) * 5)
    model = fasterrcnn_focalnet("focalnet_tiny_srf", 3, backbone_args=TINY, fpn_channels=16, rpn_anchor_generator=anchors, min_size=64, max_size=64)
    with pytest.raises(CheckpointError, match="rpn_anchor_generator"):
        save_dense_checkpoint(model, tmp_path / "x.pth", class_names=["bg", "a", "b"])
    model = fasterrcnn_focalnet("focalnet_tiny_srf", 3, backbone_args=TINY, fpn_channels=16)
    with pytest.raises(CheckpointError, match="class names"):
        save_dense_checkpoint(model, tmp_path / "x.pth", class_names=["a", "b"])
    assert not (tmp_path / "x.pth").exists()
    torch.save({"model": {"stem.proj.weight": torch.zeros(1)}}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="pretrained_backbone"):
        load_dense_model(tmp_path / "cls.pth")


def test_upernet_any_size_training_and_round_trip(tmp_path):
    model = upernet_focalnet("focalnet_tiny_srf", K, backbone_args=TINY, decoder_channels=16, aux_channels=8)
    assert all(isinstance(n, torch.nn.Identity) for n in model.decoder.feature_norms)  # ours are in the backbone
    model.eval()
    for H, W in ((64, 64), (70, 45), (33, 97)):
        out = model(torch.rand(2, 3, H, W))
        assert out["out"].shape == (2, K, H, W) and out["aux"].shape == (2, K, H, W)
    ds = CanvasDataset("train", 32, canvas_size=64, item_size=(16, 40))
    fit = train_segmenter(model, ds, steps=12, batch_size=4, lr=3e-3, log_every=4, warmup=0.0)
    assert fit.last_loss < fit.first_loss, fit.history
    metrics = evaluate_segmenter(model, CanvasDataset("test", 4, canvas_size=64, item_size=(16, 40)), class_names=CANVAS_CLASSES)
    assert 0 <= metrics["miou"] <= 1 and "background" in metrics["iou"] and 0 <= metrics["pixel_accuracy"] <= 1
    path = save_dense_checkpoint(model, tmp_path / "seg.pth", class_names=CANVAS_CLASSES)
    loaded, info = load_dense_model(path)
    x = torch.rand(1, 3, 40, 56)
    torch.testing.assert_close(loaded(x)["out"], model.eval()(x)["out"])
    assert info.task == "segmentation"
    with pytest.raises(ValueError, match="batch_size >= 2"):
        train_segmenter(model, ds, steps=1, batch_size=1)
