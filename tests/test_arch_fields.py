"""focalnet.arch_fields: one rule per model argument, read by every place that needs one, and agreeing with
what the tensors show. Adding a model argument is one edit (the constructor), which the last test plays out."""
from __future__ import annotations

import inspect

import pytest
import torch

from focalnet.arch_fields import FIELD_RULES, HIDDEN, INSTANCE, PRESENCE, SHAPE, arch_fields, constructor_defaults, fields_with
from focalnet.checkpoints.arch import arch_from_state_dict, check_arch_fields, hf_config, validate_arch
from focalnet.checkpoints.convert import ConversionError
from focalnet.models import FAMILIES, FocalNet, FocalNetIsotropic
from focalnet.registry import _arch_differences, get_spec, list_models

SMALL = {
    "hierarchical": dict(depths=[1, 1], embed_dim=8, focal_levels=[2, 2], focal_windows=[3, 3], num_classes=3),
    "isotropic": dict(depth=2, embed_dim=8, focal_level=2, focal_window=3, patch_size=4, num_classes=3),
}


def _shapes(family: str, **arch) -> dict:
    with torch.device("meta"):
        model = FAMILIES[family](**{**SMALL[family], **arch})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _other(name: str, value: object) -> object:
    """A different valid value for a field (to see whether the tensors show the change)."""
    if isinstance(value, bool):
        return not value
    if value is None:
        return 1e-4
    # + 2: kernel sizes stay odd
    if isinstance(value, list):
        return [value[0] + 2, *value[1:]]
    return value + 2


def test_every_argument_has_a_rule_and_every_rule_an_argument():
    names = set(arch_fields())  # raises for an argument whose type gives no rule
    for cls in FAMILIES.values():
        assert set(inspect.signature(cls.__init__).parameters) - {"self"} <= names
    assert set(FIELD_RULES) <= names, "rules for arguments no model has: " + ", ".join(sorted(set(FIELD_RULES) - names))
    for rule in FIELD_RULES.values():
        assert rule.role in (SHAPE, PRESENCE, HIDDEN, INSTANCE)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_roles_agree_with_the_tensors(family):
    # SHAPE and PRESENCE fields change the tensors' names or shapes; HIDDEN ones never do
    base = _shapes(family)
    defaults = {**constructor_defaults(family), **SMALL[family]}
    for name in fields_with(SHAPE, PRESENCE, HIDDEN, family=family):
        value = defaults[name]
        if name == "use_conv_embed":  # the 7x7 stem needs the stride-4 patch
            changed = _shapes(family, use_conv_embed=True, patch_size=4)
            base_here = _shapes(family, patch_size=4)
        else:
            changed, base_here = _shapes(family, **{name: _other(name, value)}), base
        shows = changed != base_here
        assert shows == (FIELD_RULES[name].role != HIDDEN), f"{name}: role {FIELD_RULES[name].role}, tensors change: {shows}"


@pytest.mark.parametrize("name", list_models())
def test_the_tensor_reader_gives_every_shape_field(name):
    spec = get_spec(name)
    with torch.device("meta"):
        sd = spec.builder().state_dict()
    read = arch_from_state_dict(sd)
    family = spec.arch["family"]
    assert read["family"] == family and set(read) - {"family"} <= set(arch_fields(family))
    for field in fields_with(SHAPE, family=family):
        assert read[field] == spec.arch[field], field
    for field in fields_with(PRESENCE, family=family):
        assert (read[field] is None) == (spec.arch[field] is None), field
    for field in fields_with(HIDDEN, family=family):  # no tensor says: the constructor's default
        assert read[field] == constructor_defaults(family)[field], field


def test_ranges_come_from_the_table(monkeypatch):
    check_arch_fields({"embed_dim": 8192, "focal_levels": 3, "layerscale_value": None})
    with pytest.raises(ConversionError, match=r"'embed_dim' must be a whole number in \[1, 8192\]"):
        check_arch_fields({"embed_dim": 8193})
    with pytest.raises(ConversionError, match="one value per stage"):
        check_arch_fields({"depths": [1, 1], "focal_windows": [3, 3, 3]})
    with pytest.raises(ConversionError, match=r"'drop_rate' must be a number in \[0, 1\)"):
        check_arch_fields({"drop_rate": 1.0})
    with pytest.raises(ConversionError, match="'global_pool' must be one of"):
        check_arch_fields({"global_pool": "mean"})
    # one edit of the table moves the bound everywhere it is checked
    monkeypatch.setitem(FIELD_RULES, "embed_dim", FIELD_RULES["embed_dim"].__class__("int", 1, 16, SHAPE, hf="embed_dim"))
    from focalnet import arch_fields as module

    module._signature.cache_clear()
    try:
        with pytest.raises(ConversionError, match=r"\[1, 16\]"):
            check_arch_fields({"embed_dim": 32})
    finally:
        monkeypatch.undo()
        module._signature.cache_clear()


def _family_with_one_more_argument() -> type:
    """FocalNet with the argument `use_extra_gate`, as if it had been added to FocalNet.__init__ and nowhere
    else: its signature has it, and `.arch` records it (as FocalNet's own `_arch_from_args` would)."""
    base = inspect.signature(FocalNet.__init__)
    extra = inspect.Parameter("use_extra_gate", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)

    class GatedFocalNet(FocalNet):
        family = "gated_test"

        def __init__(self, *, use_extra_gate: bool = False, **kwargs) -> None:
            self.__dict__["_gate"] = use_extra_gate  # read while FocalNet.__init__ records the arch
            super().__init__(**kwargs)

        def _arch_from_args(self, args):
            return super()._arch_from_args({**args, "use_extra_gate": self.__dict__["_gate"]})

    GatedFocalNet.__init__.__signature__ = base.replace(parameters=[*base.parameters.values(), extra])
    return GatedFocalNet


def test_a_new_model_argument_is_one_edit(monkeypatch):
    cls = _family_with_one_more_argument()
    monkeypatch.setitem(FAMILIES, cls.family, cls)
    arch = {**cls(**SMALL["hierarchical"], use_extra_gate=True).arch}
    assert arch["use_extra_gate"] is True and arch["family"] == "gated_test"
    # its rule comes from its type: a flag that no tensor shows
    assert arch_fields("gated_test")["use_extra_gate"].role == HIDDEN
    assert "use_extra_gate" in fields_with(HIDDEN) and "use_extra_gate" not in fields_with(SHAPE)
    # a file may state it (checked as a flag), and the model it describes is built with it
    assert validate_arch(arch, "m.safetensors").arch["use_extra_gate"] is True
    with pytest.raises(ConversionError, match="'use_extra_gate' must be true or false"):
        validate_arch({**arch, "use_extra_gate": "yes"}, "m.safetensors")
    # the tensors cannot say it: the reader gives the constructor's default, for the variant's to replace
    with torch.device("meta"):
        sd = cls(**SMALL["hierarchical"], use_extra_gate=True).state_dict()
    assert arch_from_state_dict(sd, "gated_test")["use_extra_gate"] is False
    # it names a different architecture; transformers' config has no key for it and is written all the same
    assert "use_extra_gate True" in _arch_differences(arch, {**arch, "use_extra_gate": False})
    assert "use_extra_gate" not in hf_config({**arch, "family": "hierarchical"})
