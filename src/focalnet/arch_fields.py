"""What each model argument is to the code around the model: one rule per constructor argument.

The constructors of `focalnet.models` say which arguments exist (a model's `.arch` is read from their
signatures). This table says, once, what every other place needs to know about each:
- `kind`, `lo`, `hi`: what a file may ask for (`focalnet.checkpoints.arch.check_arch_fields`);
- `role`: what the tensors of a checkpoint say of it (`focalnet.checkpoints.arch.arch_from_state_dict`,
  `focalnet.factory.resolve_variant`, `focalnet.checkpoints.verify`), and whether it is part of what an
  architecture is called (`focalnet.registry.describe_arch`);
- `hf`, `timm`: its key in transformers' FocalNetConfig and its argument in timm's FocalNet.

A new constructor argument needs no entry here: without one, its rule comes from its type (a `bool` is a
HIDDEN flag, an `int` a whole number in [0, 1024], a `float` a number in [0, 1000], a `str` a string of
at most 64 characters, which the constructor checks). Give it an entry for a
range of its own, for tensors that show it (then `_arch_from_shapes` reads it too) or for a key in a peer's
config.
"""
from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Optional

from .models import FAMILIES, POOL_TYPES

__all__ = [
    "FieldRule", "FIELD_RULES", "SHAPE", "PRESENCE", "HIDDEN", "INSTANCE", "arch_fields", "fields_with",
    "constructor_defaults",
]

# what a checkpoint's tensors say of an argument
SHAPE = "shape"  # its value: depths, widths, kernel sizes, which parameters exist
PRESENCE = "presence"  # only whether it is set (layer scale: the gammas exist; their initial value is gone)
HIDDEN = "hidden"  # nothing: a switch without parameters, known only from the file's config or the variant
INSTANCE = "instance"  # a head, an input or a regulariser: the same architecture with another value


@dataclass(frozen=True)
class FieldRule:
    """One constructor argument. kind: 'int' (a whole number in [lo, hi]), 'stages' (one whole number in
    [lo, hi] per stage, or one for every stage), 'depths' (a list of 1 to MAX_STAGES of them), 'flag'
    (true or false), 'number' (a finite number in [lo, hi], without lo if open_lo, without hi if open_hi),
    'text' (a string of at most `hi` characters, one of `choices` when given); optional: null is allowed too.
    hf / timm: its key in those libraries' configs (None: they have none)."""

    kind: str
    lo: float = 0
    hi: float = 0
    role: str = HIDDEN
    hf: Optional[str] = None
    timm: Optional[str] = None
    optional: bool = False
    open_lo: bool = False
    open_hi: bool = False
    choices: Optional[tuple[str, ...]] = None


# Bounds on what a file may ask for: wide enough for every published FocalNet (huge: embed_dim 352, 18 blocks
# in a stage, a 21842-class head) and any sensible custom one; a crafted file cannot ask for more.
# Isotropic models write their one depth, level and window as one-stage lists in transformers' config.
FIELD_RULES: dict[str, FieldRule] = {
    "depths": FieldRule("depths", 1, 256, SHAPE, hf="depths", timm="depths"),
    "depth": FieldRule("int", 1, 256, SHAPE, hf="depths"),
    "embed_dim": FieldRule("int", 1, 8192, SHAPE, hf="embed_dim", timm="embed_dim"),
    "focal_levels": FieldRule("stages", 1, 16, SHAPE, hf="focal_levels", timm="focal_levels"),
    "focal_level": FieldRule("int", 1, 16, SHAPE, hf="focal_levels"),
    "focal_windows": FieldRule("stages", 1, 63, SHAPE, hf="focal_windows", timm="focal_windows"),
    "focal_window": FieldRule("int", 1, 63, SHAPE, hf="focal_windows"),
    "focal_factor": FieldRule("int", 0, 16, SHAPE),  # transformers and timm fix it at 2
    "mlp_ratio": FieldRule("number", 0, 64, SHAPE, hf="mlp_ratio", timm="mlp_ratio", open_lo=True),
    "patch_size": FieldRule("int", 1, 64, SHAPE, hf="patch_size"),  # timm's stem is stride 4
    "use_conv_embed": FieldRule("flag", role=SHAPE, hf="use_conv_embed", timm="use_overlap_down"),
    "use_post_norm_in_modulation": FieldRule(
        "flag", role=SHAPE, hf="use_post_layernorm_in_modulation", timm="use_post_norm_in_modulation"),
    # transformers: use_layerscale and layerscale_value (focalnet.checkpoints.arch.hf_config)
    "layerscale_value": FieldRule("number", 0, 1e3, PRESENCE, timm="layerscale_value", optional=True, open_lo=True),
    "use_post_norm": FieldRule("flag", role=HIDDEN, hf="use_post_layernorm", timm="use_post_norm"),
    "normalize_modulator": FieldRule("flag", role=HIDDEN, hf="normalize_modulator", timm="normalize_modulator"),
    "in_chans": FieldRule("int", 1, 64, INSTANCE, hf="num_channels", timm="in_chans"),
    # transformers: the length of id2label (focalnet.checkpoints.arch.arch_from_hf_config)
    "num_classes": FieldRule("int", 0, 1_000_000, INSTANCE, timm="num_classes"),
    "drop_rate": FieldRule("number", 0, 1, INSTANCE, open_hi=True),
    "proj_drop_rate": FieldRule("number", 0, 1, INSTANCE, open_hi=True),
    "drop_path_rate": FieldRule("number", 0, 1, INSTANCE, hf="drop_path_rate", open_hi=True),
    "global_pool": FieldRule("text", 0, 16, INSTANCE, choices=POOL_TYPES),  # transformers: average pooling only
}


def _rule_from_type(name: str, annotation: Any) -> FieldRule:
    """The rule of an argument without an entry in FIELD_RULES, from its type annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if base is bool:
        return FieldRule("flag", optional=optional)
    if base is int:
        return FieldRule("int", 0, 1024, optional=optional)
    if base is float:
        return FieldRule("number", 0, 1e3, optional=optional)
    if base is str:
        return FieldRule("text", 0, 64, optional=optional)
    raise TypeError(
        f"the model argument {name!r} ({annotation}) has no rule its type gives: add one to "
        "focalnet.arch_fields.FIELD_RULES"
    )


@functools.lru_cache(maxsize=None)
def _signature(family: str) -> tuple[tuple[str, FieldRule, Any], ...]:
    cls = FAMILIES[family]
    hints = typing.get_type_hints(cls.__init__)
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    return tuple(
        (p.name, FIELD_RULES.get(p.name) or _rule_from_type(p.name, hints.get(p.name, p.annotation)), p.default)
        for p in params
    )


def arch_fields(family: Optional[str] = None) -> dict[str, FieldRule]:
    """Every constructor argument of `family`'s class (of every family, without one) and its rule, in
    signature order."""
    out: dict[str, FieldRule] = {}
    for fam in [family] if family else list(FAMILIES):
        out.update({name: rule for name, rule, _ in _signature(fam) if name not in out})
    return out


def fields_with(*roles: str, family: Optional[str] = None) -> tuple[str, ...]:
    """The arguments whose role is one of `roles` (of `family`, else of every family)."""
    return tuple(name for name, rule in arch_fields(family).items() if rule.role in roles)


def constructor_defaults(family: str) -> dict[str, Any]:
    """The constructor's default of each argument of `family`'s class (tuples as lists, as `.arch` has them)."""
    return {name: list(d) if isinstance(d, tuple) else d for name, _, d in _signature(family)}
