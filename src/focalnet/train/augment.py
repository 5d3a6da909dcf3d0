"""Guards around the data transforms: a valid image never stops a run, and a failing transform says which.

    tf = guarded_transform(create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1"))
    img = tf(pil_image)        # a failure raises TransformError naming the step ("RandAugment ...")

- timm 1.0.31's posterize ops ask Pillow for `bits_to_keep = 0` at the ends of their magnitude range
  (RandAugment's 'PosterizeIncreasing' at magnitude 10, 'Posterize' at magnitude 0). Pillow up to 11
  returned a black image; Pillow 12+ raises "bits must be between or equal to 1 and 8", which stopped the
  paper's recipe about once in 750 images. `guard_posterize` clamps the bits to Pillow's range 1..8 in
  the ops of the transform it is given (its own AugmentOp instances: timm's tables are not touched);
  the rest of timm's policy is unchanged.
- `guarded_transform` runs the steps of a (possibly nested) Compose one by one, so that an exception
  names the step that raised; the datasets add the image (`focalnet.train.data`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

__all__ = ["TransformError", "guard_posterize", "guarded_transform", "GuardedTransform"]


class TransformError(RuntimeError):
    """A data transform raised on an image. Not a FocalNetError: a transform failing on a readable image
    is a bug (ours or a dependency's), so it keeps its traceback; the message names the image and the step."""


def _posterize_in_range(img: Any, bits_to_keep: int, **kwargs: Any) -> Any:
    """timm's posterize with the bits clamped to 1..8 (Pillow 12+ refuses 0; 8 or more is a no-op)."""
    from timm.data.auto_augment import posterize

    return posterize(img, max(1, int(bits_to_keep)), **kwargs)


def _augment_ops(tf: Any) -> Iterator[Any]:
    """Every timm AugmentOp inside `tf` (RandAugment.ops, AutoAugment.policy, AugMix ops, Compose steps)."""
    from timm.data.auto_augment import AugmentOp

    if isinstance(tf, AugmentOp):
        yield tf
        return
    for attr in ("transforms", "ops", "policy"):
        children = getattr(tf, attr, None)
        if isinstance(children, (list, tuple)):
            for child in children:
                yield from _augment_ops(child)


def guard_posterize(tf: Any) -> Any:
    """Clamp the bits of every timm posterize op inside `tf` to 1..8 (in place); returns `tf`."""
    from timm.data.auto_augment import posterize

    for op in _augment_ops(tf):
        if op.aug_fn is posterize:
            op.aug_fn = _posterize_in_range
    return tf


def _step_name(step: Any) -> str:
    text = repr(step).replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


class GuardedTransform:
    """The steps of a transform run one by one; an exception becomes TransformError naming the step.

    The steps are `transforms`, as in torchvision's Compose, so code that inspects a transform still can."""

    def __init__(self, transforms: list[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        for step in self.transforms:
            try:
                img = step(img)
            except Exception as e:
                raise TransformError(f"the transform step {_step_name(step)} raised {type(e).__name__}: {e}") from e
        return img

    def __repr__(self) -> str:
        return "GuardedTransform(" + ", ".join(_step_name(s) for s in self.transforms) + ")"


def _flatten(tf: Any) -> list[Callable]:
    steps = getattr(tf, "transforms", None)
    if isinstance(steps, (list, tuple)) and type(tf).__name__ == "Compose":
        return [s for child in steps for s in _flatten(child)]
    return [tf]


def guarded_transform(tf: Callable) -> GuardedTransform:
    """`tf` with its posterize ops clamped and its steps named on failure (see the module docstring)."""
    return GuardedTransform(_flatten(guard_posterize(tf)))
