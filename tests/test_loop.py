"""The loops of focalnet.train.loop and the checkpoints of focalnet.train.state: NaN stops, full disks, exact metrics, weight decay, schedule."""
from __future__ import annotations

import errno
import os

import pytest
import torch
import torch.nn as nn

import focalnet
from focalnet.train import loop as engine
from focalnet.train import state as training_state
from focalnet.train.optim import build_optimizer, build_scheduler
from focalnet.train.recipes import get_recipe


def tiny_model(num_classes: int = 3) -> nn.Module:
    return focalnet.create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), focal_levels=(2, 2),
                                 focal_windows=(3, 3), patch_size=2, in_chans=1, num_classes=num_classes,
                                 drop_path_rate=0.0)  # no random draws: runs compared step by step


def batches(n: int, nan_at: int = -1, size: int = 4):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(size, 1, 8, 8, generator=g)
        if i == nan_at:
            x[0, 0, 0, 0] = float("nan")
        out.append((x, torch.randint(0, 3, (size,), generator=g), []))
    return out


def test_nan_loss_stops_before_the_update_and_names_the_step():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = batches(5, nan_at=2)
    # what the weights are after the two good steps
    ref = tiny_model()
    ref.load_state_dict(model.state_dict())
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    engine.train_one_epoch(ref, data[:2], ref_opt, nn.CrossEntropyLoss(), device=torch.device("cpu"))
    with pytest.raises(engine.NonFiniteLossError) as e:
        engine.train_one_epoch(model, data, opt, nn.CrossEntropyLoss(), device=torch.device("cpu"), epoch=4,
                               global_step=100, last_good_checkpoint="run/checkpoints/last.pth")
    msg = str(e.value)
    assert "nan" in msg and "step 103" in msg and "epoch 5, batch 3 of 5" in msg and "run/checkpoints/last.pth" in msg
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_gradient_accumulation_equals_the_big_batch():
    torch.manual_seed(0)
    a, b = tiny_model(), tiny_model()
    b.load_state_dict(a.state_dict())
    data = batches(4, size=4)
    big = [(torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data]), [])]
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    sa = engine.train_one_epoch(a, data, opt_a, nn.CrossEntropyLoss(), device=torch.device("cpu"), accum_steps=4)
    engine.train_one_epoch(b, big, opt_b, nn.CrossEntropyLoss(), device=torch.device("cpu"))
    assert sa["steps"] == 1
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


class FixedPredictions(nn.Module):
    """Logits that rank classes in a given order per image."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.i = [0]

    def forward(self, x):
        out = self.logits[self.i[0] : self.i[0] + len(x)]
        self.i[0] += len(x)
        return out


def test_evaluate_counts_exactly():
    logits = torch.tensor([[3.0, 2, 1, 0], [0, 3, 2, 1], [0, 1, 2, 3], [3, 0, 1, 2], [0, 0, 3, 1]])
    labels = torch.tensor([0, 2, 3, 1, 2])  # top-1 hits: 0, 3 (and 2 is the 2nd choice of image 1)
    loader = [(torch.zeros(3, 1, 2, 2), labels[:3], []), (torch.zeros(2, 1, 2, 2), labels[3:], [])]
    r = engine.evaluate(FixedPredictions(logits), loader, device=torch.device("cpu"), num_classes=4)
    assert r["images"] == 5
    assert r["top1"] == pytest.approx(100 * 3 / 5)  # images 0, 2, 4
    assert r["confusion"][2] == [0, 1, 1, 0] and r["confusion"][3] == [0, 0, 0, 1]
    assert r["per_class"] == [100.0, 0.0, 50.0, 100.0]
    assert r["top5"] == 100.0  # 4 classes: every label is in the top 4
    assert r["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_unreadable_image_stops_with_its_path_or_is_counted():
    loader = [(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), ["/data/x/broken.jpg (OSError: truncated)"])]
    model = tiny_model()
    with pytest.raises(focalnet.train.data.BadImageError, match="broken.jpg.*--skip-bad-images"):
        engine.evaluate(model, loader, device=torch.device("cpu"), num_classes=3)
    r = engine.evaluate(model, loader, device=torch.device("cpu"), num_classes=3, skip_bad_images=True)
    assert r["bad_images"] == 1 and r["images"] == 2


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pth"
    training_state.save_training_checkpoint({"format": training_state.TRAIN_CHECKPOINT_FORMAT, "epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial bytes of a checkpoint")  # the disk fills up halfway through
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(training_state.CheckpointSaveError) as e:
        training_state.save_training_checkpoint({"format": training_state.TRAIN_CHECKPOINT_FORMAT, "epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert "No space left on device" in str(e.value) and "previous last.pth is intact" in str(e.value)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temporary file left behind


def test_rng_state_round_trip_is_weights_only(tmp_path):
    training_state.seed_everything(5)
    state = training_state.get_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    state = torch.load(tmp_path / "rng.pth", weights_only=True)
    import random

    import numpy as np

    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    training_state.seed_everything(99)
    training_state.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_weight_decay_on_weights_only():
    model = focalnet.create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), focal_levels=(2, 2),
                                  focal_windows=(3, 3), layerscale_value=1e-4, num_classes=3)
    opt = build_optimizer(model, get_recipe("imagenet"), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay | no_decay == set(names.values()) and decay and no_decay
    assert all(model.get_parameter(n).ndim > 1 for n in decay)
    assert any("gamma" in n or "ls" in n for n in no_decay)  # layer scales
    assert any(n.endswith("norm.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert "head.fc.weight" in decay and "stem.proj.weight" in decay
    assert all(g["weight_decay"] in (0.0, 0.05) for g in opt.param_groups)


def test_adamw_is_torchs_fused_kernel_and_updates_like_the_loop():
    """AdamW runs fused on the CPU (one kernel for all tensors, not one update per tensor): the same update as
    torch's per-tensor loop, to float rounding."""
    model, twin = tiny_model(), tiny_model()
    twin.load_state_dict(model.state_dict())
    opt = build_optimizer(model, get_recipe("small"), lr=1e-2)
    assert opt.defaults["fused"] is True
    loop = torch.optim.AdamW([{**g, "fused": None, "foreach": False,
                               "params": [dict(twin.named_parameters())[n] for n in _names(model, g)]}
                              for g in opt.param_groups], lr=1e-2)
    assert not any(g["fused"] for g in loop.param_groups)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    for net, o in ((model, opt), (twin, loop)):
        for _ in range(3):
            nn.functional.cross_entropy(net(x), y).backward()
            o.step()
            o.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _names(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in group["params"]]


def test_schedule_warms_up_then_follows_the_cosine_to_the_minimum():
    model = tiny_model()
    recipe = get_recipe("imagenet", warmup_epochs=2, base_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6)
    opt = build_optimizer(model, recipe, lr=1e-3 * 256 / 1024)
    sched = build_scheduler(opt, recipe, epochs=10, updates_per_epoch=5, lr=1e-3 * 256 / 1024)
    lrs = []
    for step in range(1, 51):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[9] == pytest.approx(2.5e-4)  # warm-up of 10 steps ends at the scaled peak
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-5 * 256 / 1024, rel=1e-3)
