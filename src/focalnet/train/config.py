"""What a run is asked to do: `TrainConfig` (each field a `focalnet train` flag and a YAML key), reading it
from YAML, filling it in from a named recipe, and checking that a resumed run keeps it.

    cfg = TrainConfig.from_dict(load_yaml_config("configs/fashion-mnist.yaml"))
    recipe = resolve_recipe(cfg)            # the recipe's values, overridden by the fields the user gave
    resolved = resolved_config(cfg, recipe, epochs=12)   # what config.yaml holds: `-c` takes it back
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..datasets import builtin_dataset
from ..errors import FocalNetError
from ..utils import atomic_write
from .data import DEFAULT_CROP_PCT, pad_for
from .recipes import Recipe, get_recipe, list_recipes, recipe_fields

__all__ = [
    "TrainConfig",
    "TrainingError",
    "RUNTIME_FIELDS",
    "config_field_types",
    "load_yaml_config",
    "write_yaml",
    "resolve_recipe",
    "resolved_config",
    "check_resume_config",
    "progress_on",
]


class TrainingError(FocalNetError, ValueError):
    """A configuration or a situation the user can fix; the message says how."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A field with its --help text (and recipe=True for the fields a recipe fills in)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=dict(help=help, **kw))
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class TrainConfig:
    """Everything a run needs; each field is a `focalnet train` flag (underscores become dashes) and a key
    of its YAML config. Recipe fields left at None take the recipe's value."""

    # data
    data: str = _f("fashion-mnist", "'fashion-mnist', 'digits', or a folder with train/CLASS/*.jpg and val/CLASS/*.jpg")
    data_dir: Optional[str] = _f(None, "where Fashion-MNIST's IDX files are (default: the usual places, then download)")
    download: bool = _f(True, "download Fashion-MNIST with torchvision when it is not on disk")
    limit_train: Optional[int] = _f(None, "use only N training images (quick trials)")
    limit_eval: Optional[int] = _f(None, "evaluate on only the first N test images (quick trials)")
    skip_bad_images: bool = _f(False, "skip unreadable images (counted and reported) instead of stopping at the first")
    workers: int = _f(0, "data-loading worker processes per training process (0: load in the training process)")
    # model
    model: Optional[str] = _f(None, "registered variant (default focalnet_tiny_srf; with --pretrained and no --model: the file's architecture)")
    arch: dict = _f({}, "architecture overrides, KEY=VALUE, e.g. embed_dim=32 depths=[2,2,2] patch_size=2")
    pretrained: Optional[str] = _f(None, "start from these weights: a file in any checkpoint layout (ours, the authors', "
                                         "timm, Hugging Face) or a registered model name for its released weights")
    reset_head: bool = _f(False, "with --pretrained: a fresh classifier for the data's classes")
    in_chans: Optional[int] = _f(None, "input channels (default: the data's; 1 for Fashion-MNIST and digits)")
    # recipe
    recipe: str = _f("auto", "named recipe: 'imagenet' (the paper's), 'small' (28 px / 8 px data), 'finetune' "
                             "(from pretrained weights); auto: finetune with --pretrained, else small for "
                             "Fashion-MNIST and digits, imagenet for folders")
    epochs: Optional[int] = _f(None, "epochs (default: the recipe's, or what fits --time-budget)", recipe=True)
    batch_size: Optional[int] = _f(None, "images per process and step", recipe=True)
    opt: Optional[str] = _f(None, "optimizer, any of timm's (adamw)", recipe=True)
    lr: Optional[float] = _f(None, "peak learning rate, absolute (as timm's --lr; default: the recipe's, else "
                                   "--base-lr x global batch / 1024)", recipe=True)
    base_lr: Optional[float] = _f(None, "learning rate per 1024 images, scaled by the global batch / 1024 (the "
                                        "paper's convention; used when --lr is not given)", recipe=True)
    warmup_lr: Optional[float] = _f(None, "warm-up start lr per 1024 images (its ratio to --base-lr is kept)", recipe=True)
    min_lr: Optional[float] = _f(None, "final lr of the cosine per 1024 images (its ratio to --base-lr is kept)", recipe=True)
    layer_decay: Optional[float] = _f(None, "layer-wise lr decay per block from the head down (timm's "
                                            "param_groups_layer_decay; 1: off; finetune: 0.75)", recipe=True)
    weight_decay: Optional[float] = _f(None, "AdamW weight decay (on weights; not on norms, biases, layer scales)", recipe=True)
    warmup_epochs: Optional[float] = _f(None, "linear warm-up epochs (finetune: 5% of the run's steps)", recipe=True)
    clip_grad: Optional[float] = _f(None, "max gradient norm (0: no clipping)", recipe=True)
    smoothing: Optional[float] = _f(None, "label smoothing", recipe=True)
    drop_path: Optional[float] = _f(None, "stochastic depth (default: the recipe's, else the variant's)", recipe=True)
    img_size: Optional[int] = _f(None, "training / evaluation size (default: 224 for folders, native for tensors)", recipe=True)
    train_crop: Optional[str] = _f(None, "'random_resized' or 'pad'", recipe=True)
    pad: Optional[int] = _f(None, "padding of the 'pad' crop (default: img_size // 14; 0: no random shift)", recipe=True)
    hflip: Optional[float] = _f(None, "horizontal flip probability", recipe=True)
    auto_augment: Optional[str] = _f(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)", recipe=True)
    color_jitter: Optional[float] = _f(None, "color jitter", recipe=True)
    reprob: Optional[float] = _f(None, "random erasing probability", recipe=True)
    remode: Optional[str] = _f(None, "random erasing mode", recipe=True)
    mixup: Optional[float] = _f(None, "Mixup alpha (0: off)", recipe=True)
    cutmix: Optional[float] = _f(None, "CutMix alpha (0: off)", recipe=True)
    mixup_prob: Optional[float] = _f(None, "probability of Mixup/CutMix per batch", recipe=True)
    mixup_switch_prob: Optional[float] = _f(None, "probability of CutMix instead of Mixup", recipe=True)
    crop_pct: Optional[float] = _f(None, "evaluation center-crop ratio (0.875: resize to 256/224 of the crop)", recipe=True)
    interpolation: Optional[str] = _f(None, "resize interpolation", recipe=True)
    accum_steps: int = _f(1, "gradient accumulation: batches per optimizer step")
    amp: str = _f("none", "autocast: none, bf16 (CPU and GPU) or fp16 (GPU, with a GradScaler)")
    ema: bool = _f(False, "keep an exponential moving average of the weights (timm's ModelEmaV3) and evaluate it")
    ema_decay: float = _f(0.9998, "EMA decay")
    # run
    output: str = _f("runs/focalnet", "output folder")
    resume: Optional[str] = _f(None, "continue the run in this folder (or from this checkpoints/last.pth); beside it, "
                                     "--lr/--base-lr/--epochs/--time-budget/--eval-every/--skip-bad-images may "
                                     "change (announced) and runtime flags (--workers, --device, ...); any other "
                                     "flag that differs is refused")
    overwrite: bool = _f(False, "start over in an --output folder that already holds a run")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact --resume on the CPU)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    time_budget: Optional[float] = _f(None, "seconds of training: the optimizer steps are chosen to fit (measured on "
                                            "the first steps, re-planned after the first epoch; the last epoch may "
                                            "be partial; re-planned again before an epoch that would overrun)")
    eval_every: Optional[int] = _f(None, "evaluate every N epochs and after the last (default: every epoch, or every "
                                         "few when an epoch is so short that evaluating would cost more than training)")
    tensorboard: bool = _f(False, "write TensorBoard logs to OUTPUT/tensorboard")
    progress: str = _f("auto", "progress bars: auto (when stderr is a terminal), on, off")
    compile: str = _f("auto", "torch.compile the training step (inductor): auto (on for CUDA; off on the CPU, where "
                              "it did not pay: docs/speed.md), on, off")
    threads: Optional[int] = _f(None, "intra-op CPU threads per process (default: PyTorch's)")

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in cls.fields()}
        norm = {k.replace("-", "_"): v for k, v in d.items()}
        if isinstance(norm.get("compile"), bool):  # before --compile took auto/on/off: true/false (old config.yaml)
            norm["compile"] = "on" if norm["compile"] else "off"
        unknown = sorted(set(norm) - names)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, names, 1)) else u for u in unknown]
            raise TrainingError(f"unknown configuration key(s): {', '.join(hints)}; `focalnet train --help` lists them")
        cfg = cls(**norm)
        cfg._given = frozenset(norm)  # the keys the user gave (flags and YAML): what --resume applies or refuses
        return cfg

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in self.fields()}

    def __post_init__(self) -> None:
        validate_config(self)  # one place for every value, whether from flags, YAML or Python


# What --resume does with a flag (or YAML key) given beside it; docs/training.md ("Resuming") says the same:
# - RUNTIME_FIELDS may differ freely: they do not change what is computed;
# - RESUME_CHANGES may differ and are announced: --lr (the schedule is rebuilt from the step reached, e.g.
#   after a non-finite loss), --epochs and --time-budget (the plan is redone), evaluation and bad-image handling;
# - any other field that differs from the run's is refused, naming the flag (--data, --output, --overwrite,
#   the architecture and the rest of the recipe): change those by starting a new run.
RUNTIME_FIELDS = frozenset({"workers", "resume", "device", "tensorboard", "progress", "data_dir", "download", "threads",
                            "compile"})
RESUME_CHANGES = frozenset({"lr", "base_lr", "epochs", "time_budget", "eval_every", "skip_bad_images"})
AMP_MODES = ("none", "bf16", "fp16")


def config_field_types() -> dict[str, Any]:
    """Resolved type hints of TrainConfig's fields (for the CLI)."""
    return typing.get_type_hints(TrainConfig)


def load_yaml_config(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"config file {path} does not exist")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise TrainingError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise TrainingError(f"{path} must hold a mapping of flags to values, got {type(d).__name__}")
    return d


def write_yaml(obj: dict, path: Path) -> None:
    import yaml

    with atomic_write(path, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False)


# --------------------------------------------------------------------------------------------------------
# Filling in the recipe
# --------------------------------------------------------------------------------------------------------


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    """The named recipe (auto: 'small' for the in-memory data sets, 'imagenet' for folders) with every
    recipe field the configuration sets."""
    name = cfg.recipe
    if name == "auto":
        name = "finetune" if cfg.pretrained else "small" if builtin_dataset(cfg.data) else "imagenet"
    overrides = {k: getattr(cfg, k) for k in recipe_fields() if hasattr(cfg, k) and getattr(cfg, k) is not None}
    # --base-lr alone: the rate scales with the batch, also in a recipe with an absolute lr (finetune)
    recipe_lr_reset = "base_lr" in overrides and "lr" not in overrides
    if overrides.get("auto_augment") in ("none", "None", ""):
        overrides["auto_augment"] = None
        recipe = get_recipe(name, **overrides).replace(auto_augment=None)
    else:
        recipe = get_recipe(name, **overrides)
    if recipe_lr_reset:
        recipe = recipe.replace(lr=None)
    if recipe.clip_grad is None:  # the recipe's "no clipping": one spelling, 0, in the run and in config.yaml
        recipe = recipe.replace(clip_grad=0.0)
    return recipe


def resolved_config(cfg: TrainConfig, recipe: Recipe, epochs: int) -> dict:
    """config.yaml: the configuration with every recipe value filled in, ready to start the same run again."""
    d = cfg.to_dict()
    for k in recipe_fields():
        if k in d:
            d[k] = getattr(recipe, k)
    d["epochs"] = epochs
    d["recipe"] = recipe.name
    d["resume"] = None
    d["overwrite"] = False
    # every value spelled out: None would mean "the recipe's default" when the file is read back
    d["auto_augment"] = recipe.auto_augment or "none"
    d["clip_grad"] = float(recipe.clip_grad or 0.0)
    if recipe.img_size is not None:
        d["pad"] = pad_for(recipe, recipe.img_size)
    d["crop_pct"] = DEFAULT_CROP_PCT if recipe.crop_pct is None else recipe.crop_pct
    return d


def given_fields(cfg: TrainConfig) -> frozenset:
    """The fields the user gave: the flags and YAML keys read by from_dict, else (a TrainConfig built in
    Python) those that differ from the defaults."""
    given = getattr(cfg, "_given", None)
    if given is not None:
        return given
    defaults = TrainConfig()
    return frozenset(f.name for f in TrainConfig.fields() if getattr(cfg, f.name) != getattr(defaults, f.name))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_resume_config(cfg: TrainConfig, saved: dict, *, run_dir: str = "") -> tuple[TrainConfig, list[str]]:
    """The saved configuration with the changes --resume allows (see RESUME_CHANGES): (the configuration to
    run, one line per change for the user). A refused flag is a TrainingError naming it."""
    saved, changes = _upgrade_saved(saved)
    given = given_fields(cfg)
    refused, merged = [], dict(saved)
    for name in sorted(given - {"resume"}):
        mine = getattr(cfg, name)
        if name in RUNTIME_FIELDS:
            merged[name] = mine
        elif name == "output":
            if run_dir and Path(mine).resolve() != Path(run_dir).resolve():
                refused.append(f"--output {mine} (a resumed run writes into its own folder {run_dir})")
        elif name == "overwrite":
            if mine:
                refused.append("--overwrite (to start over in the folder, run without --resume)")
        elif mine == saved.get(name, mine):
            continue
        elif name in RESUME_CHANGES:
            merged[name] = mine
            changes.append(f"{_flag(name)} {saved.get(name)!r} -> {mine!r}")
        else:
            refused.append(f"{_flag(name)} {mine!r} (the run has {saved.get(name)!r})")
    if refused:
        raise TrainingError(
            "--resume continues a run as it was configured; only "
            f"{', '.join(_flag(n) for n in sorted(RESUME_CHANGES))} (and the runtime flags "
            f"{', '.join(_flag(n) for n in sorted(RUNTIME_FIELDS - {'resume'}))}) may change. Refused: "
            f"{'; '.join(refused)}. Start a new run (another --output, or --overwrite without --resume) to change them"
        )
    merged["overwrite"] = False
    return TrainConfig.from_dict(merged), changes


def _upgrade_saved(saved: dict) -> tuple[dict, list[str]]:
    """A configuration saved by an earlier version, read as that version meant it: (the configuration, one
    line per reading the user is told about).

    - before the resolved values were written, `clip_grad: null` and `auto_augment: null` already meant
      'off' (the recipe's value had been filled in), not 'the recipe's';
    - before --lr became absolute (timm's meaning), `lr` was per 1024 images and no `base_lr` was saved:
      it is the base rate, so the resumed run keeps the rate it trained at."""
    saved, notes = dict(saved), []
    if "clip_grad" in saved and saved["clip_grad"] is None:
        saved["clip_grad"] = 0.0
    if "auto_augment" in saved and saved["auto_augment"] is None:
        saved["auto_augment"] = "none"
    if "base_lr" not in saved and saved.get("lr") is not None:
        saved["base_lr"], saved["lr"] = saved["lr"], None
        notes.append(f"the run's lr {saved['base_lr']!r} was saved when --lr meant 'per 1024 images': read as "
                     f"--base-lr {saved['base_lr']!r} (the same rate)")
    return saved, notes


def progress_on(setting: str) -> bool:
    """Whether --progress asks for progress bars (auto: when stderr is a terminal)."""
    if setting == "auto":
        return sys.stderr.isatty()
    return setting in ("on", "true", "1", "yes")


# --------------------------------------------------------------------------------------------------------
# Validation: every value, by type and range, in one place (TrainConfig.__post_init__ calls it, so flags,
# YAML files, saved configurations and Python all pass here)
# --------------------------------------------------------------------------------------------------------


def _at_least(lo: float, *, strict: bool = False, hi: Optional[float] = None, hi_strict: bool = False) -> tuple:
    lo_text = f"> {lo}" if strict else f">= {lo}"
    hi_text = "" if hi is None else (f" and < {hi}" if hi_strict else f" and <= {hi}")

    def ok(v: float) -> bool:
        return (v > lo if strict else v >= lo) and (hi is None or (v < hi if hi_strict else v <= hi))

    return ok, lo_text + hi_text


_FRACTION = _at_least(0, hi=1)  # a probability
_RANGES: dict[str, tuple] = dict(
    limit_train=_at_least(1), limit_eval=_at_least(1), workers=_at_least(0), in_chans=_at_least(1),
    epochs=_at_least(1), batch_size=_at_least(1), lr=_at_least(0, strict=True), base_lr=_at_least(0, strict=True),
    layer_decay=_at_least(0, strict=True, hi=1), warmup_lr=_at_least(0),
    min_lr=_at_least(0), weight_decay=_at_least(0), warmup_epochs=_at_least(0), clip_grad=_at_least(0),
    smoothing=_at_least(0, hi=1, hi_strict=True), drop_path=_at_least(0, hi=1, hi_strict=True),
    img_size=_at_least(1), pad=_at_least(0), hflip=_FRACTION, color_jitter=_at_least(0), reprob=_FRACTION,
    mixup=_at_least(0), cutmix=_at_least(0), mixup_prob=_FRACTION, mixup_switch_prob=_FRACTION,
    crop_pct=_at_least(0, strict=True, hi=1), accum_steps=_at_least(1), ema_decay=_at_least(0, hi=1, hi_strict=True),
    seed=_at_least(0), time_budget=_at_least(0, strict=True), eval_every=_at_least(1), threads=_at_least(1),
)
_CHOICES: dict[str, Any] = dict(
    amp=lambda: AMP_MODES, progress=lambda: ("auto", "on", "off"), compile=lambda: ("auto", "on", "off"),
    train_crop=lambda: ("random_resized", "pad"),
    remode=lambda: ("pixel", "rand", "const"), recipe=lambda: ("auto", *list_recipes()),
    interpolation=lambda: __import__("focalnet.images", fromlist=["INTERPOLATIONS"]).INTERPOLATIONS,
)
_NON_EMPTY = ("data", "output", "device", "opt")


def _key(name: str) -> str:
    return f"{_flag(name)} (YAML key {name})"


def _check_type(name: str, value: Any, tp: Any) -> None:
    """Booleans only from booleans (YAML's true/false, yes/no unquoted; the flags --x/--no-x); integers
    from integers; numbers from integers or floats, finite; text from strings."""
    import math

    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = base[0]
    if value is None:
        if tp is base:  # not Optional
            raise TrainingError(f"{_key(name)} needs a value, got nothing (null)")
        return
    wrong = (
        (base is bool and not isinstance(value, bool))
        or (base is int and (isinstance(value, bool) or not isinstance(value, int)))
        or (base is float and (isinstance(value, bool) or not isinstance(value, (int, float))))
        or (base is str and not isinstance(value, str))
        or (base is dict and not isinstance(value, dict))
    )
    if wrong:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
        raise TrainingError(f"{_key(name)} must be {kind.get(base, base)}, got {type(value).__name__} {value!r}")
    if base is float and not math.isfinite(value):
        raise TrainingError(f"{_key(name)} must be a finite number, got {value!r}")


def validate_config(cfg: TrainConfig) -> None:
    """Raise TrainingError naming the first value of `cfg` that has the wrong type or is out of range."""
    types = _field_types()
    for f in TrainConfig.fields():
        value = getattr(cfg, f.name)
        _check_type(f.name, value, types[f.name])
        if value is None:
            continue
        if f.name in _RANGES and not _RANGES[f.name][0](value):
            raise TrainingError(f"{_key(f.name)} must be {_RANGES[f.name][1]}, got {value!r}")
        if f.name in _CHOICES and value not in _CHOICES[f.name]():
            raise TrainingError(f"{_key(f.name)} must be one of {', '.join(_CHOICES[f.name]())}, got {value!r}")
        if f.name in _NON_EMPTY and not value.strip():
            raise TrainingError(f"{_key(f.name)} must not be empty")
    validate_arch(cfg.arch)


_TYPES: dict = {}


def _field_types() -> dict:
    if not _TYPES:
        _TYPES.update(config_field_types())
    return _TYPES


def validate_arch(arch: dict) -> None:
    """--arch KEY=VALUE overrides: known constructor arguments of a FocalNet family, with the types and ranges
    that a file's architecture must have too (one rule: `focalnet.checkpoints.arch.check_arch_fields`)."""
    import inspect

    from ..checkpoints.arch import check_arch_fields
    from ..checkpoints.convert import ConversionError
    from ..models import FAMILIES

    known = set()
    for cls in FAMILIES.values():
        known |= set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key, value in arch.items():
        where = f"--arch {key}={value!r}"
        if key not in known:
            raise TrainingError(f"{where}: unknown architecture argument; known: {', '.join(sorted(known))}")
        if key in ("num_classes", "in_chans"):
            raise TrainingError(f"{where}: set by the data (use --in-chans for the input channels)")
    try:
        check_arch_fields(arch)
    except ConversionError as e:
        raise TrainingError(f"--arch: {e}") from None
