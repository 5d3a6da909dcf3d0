"""Loading our-layout weights into a model, strictly.

Only two tensors may be adapted, each for a stated reason: the classifier (the authors' ImageNet-22K head
sliced to ImageNet-1K, or a fresh head when asked) and the stem (RGB weights summed for a grayscale model,
gray weights spread over the channels of an RGB one).
Anything else that does not fit is an error that names the tensors.
"""
from __future__ import annotations

from typing import Mapping, Union

import torch
import torch.nn as nn

from .convert import in22k_head_to_in1k
from .io import Checkpoint, CheckpointError

__all__ = ["load_into"]

_HEAD_KEYS = ("head.fc.weight", "head.fc.bias")


def load_into(
    model: nn.Module,
    ckpt: Union[Checkpoint, Mapping[str, torch.Tensor]],
    reset_head: bool = False,
) -> nn.Module:
    """Load our-layout weights into `model`, strictly. Only the classifier may be treated specially:

    - the model has no classifier (num_classes=0): the checkpoint's head is ignored;
    - `reset_head=True` keeps the model's freshly initialised classifier (and only that), also when the
      class counts agree: a head trained on other classes is no start for new ones;
    - checkpoint and model have the same number of classes: loaded as is;
    - the checkpoint has the authors' 21842-class ImageNet-22K head and the model 1000 classes: the head
      is sliced to ImageNet-1K (`focalnet.checkpoints.convert.in22k_head_to_in1k` says how class 850 is filled);
    - otherwise a different class count is an error that says so.
    The stem follows the model's channels both ways: a 3-channel stem is summed into a 1-channel one
    (grayscale fine-tuning from RGB weights), a 1-channel stem is spread over the model's channels, each
    taking 1/C of it (RGB fine-tuning from gray weights). Any other missing, unexpected or mis-shaped tensor is an error that names them.
    """
    sd = dict(ckpt.state_dict if isinstance(ckpt, Checkpoint) else ckpt)
    where = f" from {ckpt.path}" if isinstance(ckpt, Checkpoint) and ckpt.path else ""
    own = model.state_dict()
    _fit_head(sd, own, reset_head, where)
    _fit_stem(sd, own, where)
    _check_names_and_shapes(sd, own, model, where)
    model.load_state_dict(sd, strict=True)
    return model


def _fit_head(sd: dict, own: Mapping[str, torch.Tensor], reset_head: bool, where: str) -> None:
    """Make the checkpoint's classifier fit the model's (in place), or say why it cannot."""
    n_model = int(own["head.fc.weight"].shape[0]) if "head.fc.weight" in own else 0
    n_ckpt = int(sd["head.fc.weight"].shape[0]) if "head.fc.weight" in sd else 0
    if n_model == 0:
        for k in _HEAD_KEYS:
            sd.pop(k, None)
    elif reset_head:  # a fresh head also when the class counts agree (5 other classes are not these 5)
        for k in _HEAD_KEYS:
            if k in own:
                sd[k] = own[k]
    elif n_ckpt != n_model:
        if n_ckpt == 21842 and n_model == 1000:
            sd["head.fc.weight"], sd["head.fc.bias"] = in22k_head_to_in1k(sd["head.fc.weight"], sd["head.fc.bias"])
        else:
            what = f"has a {n_ckpt}-class head" if n_ckpt else "has no classifier (a feature extractor)"
            raise CheckpointError(
                f"the checkpoint{where} {what} but the model has {n_model} classes: pass "
                f"num_classes={n_ckpt} to use its head, or reset_head=True (CLI: --reset-head) to train a fresh "
                f"{n_model}-class head on top of its features"
            )


def _fit_stem(sd: dict, own: Mapping[str, torch.Tensor], where: str) -> None:
    """Adapt the stem to the model's input channels (in place): RGB -> gray or gray -> C channels; any other
    channel mismatch is an error."""
    stem_w = sd.get("stem.proj.weight")
    if stem_w is None or "stem.proj.weight" not in own or stem_w.shape[1] == own["stem.proj.weight"].shape[1]:
        return
    c_model, c_ckpt = own["stem.proj.weight"].shape[1], stem_w.shape[1]
    if c_model == 1 and c_ckpt == 3:
        # a gray image fed to an RGB stem as (g, g, g): the response is the sum over the input channels
        sd["stem.proj.weight"] = stem_w.sum(dim=1, keepdim=True)
    elif c_ckpt == 1:
        # the reverse: a colour image whose channels are equal answers as the gray one did
        sd["stem.proj.weight"] = stem_w.expand(-1, c_model, -1, -1) / c_model
    else:
        raise CheckpointError(
            f"the checkpoint{where} has a {c_ckpt}-channel stem but the model takes {c_model} channels: only "
            f"gray <-> RGB stems are adapted; build the model with in_chans={c_ckpt}, 1 or 3"
        )


def _check_names_and_shapes(sd: Mapping, own: Mapping[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """An error naming every missing, unexpected and mis-shaped tensor (the first few of each)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if items:
            shown = "; ".join(items[:6]) + (f"; and {len(items) - 6} more" if len(items) > 6 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    variant = getattr(model, "variant", None) or type(model).__name__
    raise CheckpointError(
        f"the checkpoint{where} does not fit {variant}: " + " | ".join(parts)
        + ". Check that the model name matches the checkpoint (`focalnet info CHECKPOINT` tells which it is)"
    )
