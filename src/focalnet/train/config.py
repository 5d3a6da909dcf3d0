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
from .recipes import Recipe, get_recipe, recipe_fields

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
    pretrained: Optional[str] = _f(None, "start from these weights (any checkpoint layout: ours, the authors', timm, Hugging Face)")
    reset_head: bool = _f(False, "with --pretrained: a fresh classifier for the data's classes")
    in_chans: Optional[int] = _f(None, "input channels (default: the data's; 1 for Fashion-MNIST and digits)")
    # recipe
    recipe: str = _f("auto", "named recipe: 'imagenet' (the paper's), 'small' (28 px / 8 px data); auto: small for "
                             "Fashion-MNIST and digits, imagenet for folders")
    epochs: Optional[int] = _f(None, "epochs (default: the recipe's, or what fits --time-budget)", recipe=True)
    batch_size: Optional[int] = _f(None, "images per process and step", recipe=True)
    opt: Optional[str] = _f(None, "optimizer, any of timm's (adamw)", recipe=True)
    lr: Optional[float] = _f(None, "learning rate per 1024 images (scaled by the global batch / 1024)", recipe=True)
    warmup_lr: Optional[float] = _f(None, "warm-up start lr per 1024 images", recipe=True)
    min_lr: Optional[float] = _f(None, "final lr of the cosine per 1024 images", recipe=True)
    weight_decay: Optional[float] = _f(None, "AdamW weight decay (on weights; not on norms, biases, layer scales)", recipe=True)
    warmup_epochs: Optional[float] = _f(None, "linear warm-up epochs", recipe=True)
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
    resume: Optional[str] = _f(None, "continue the run in this folder (or from this checkpoints/last.pth)")
    overwrite: bool = _f(False, "start over in an --output folder that already holds a run")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact --resume on the CPU)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    time_budget: Optional[float] = _f(None, "seconds of training: the optimizer steps are chosen to fit (measured on "
                                            "the first steps, re-planned after the first epoch; the last epoch may "
                                            "be partial) and the run stops early if it would overrun")
    eval_every: int = _f(1, "evaluate every N epochs (and after the last)")
    tensorboard: bool = _f(False, "write TensorBoard logs to OUTPUT/tensorboard")
    progress: str = _f("auto", "progress bars: auto (when stderr is a terminal), on, off")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "intra-op CPU threads per process (default: PyTorch's)")

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in cls.fields()}
        norm = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, names, 1)) else u for u in unknown]
            raise TrainingError(f"unknown configuration key(s): {', '.join(hints)}; `focalnet train --help` lists them")
        return cls(**norm)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in self.fields()}


# fields that may differ when a run is resumed: they do not change what is computed
RUNTIME_FIELDS = frozenset({
    "workers", "output", "resume", "overwrite", "device", "tensorboard", "progress", "data_dir", "download", "threads",
})


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
        name = "small" if builtin_dataset(cfg.data) else "imagenet"
    overrides = {k: getattr(cfg, k) for k in recipe_fields() if hasattr(cfg, k) and getattr(cfg, k) is not None}
    if overrides.get("auto_augment") in ("none", "None", ""):
        overrides["auto_augment"] = None
        recipe = get_recipe(name, **overrides).replace(auto_augment=None)
    else:
        recipe = get_recipe(name, **overrides)
    if recipe.clip_grad == 0:
        recipe = recipe.replace(clip_grad=None)
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
    return d


def check_resume_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """The saved configuration, with the runtime fields the user gave; any other change is an error."""
    defaults = TrainConfig()
    conflicts = []
    for f in TrainConfig.fields():
        if f.name in RUNTIME_FIELDS or f.name not in saved:
            continue
        mine = getattr(cfg, f.name)
        if mine != getattr(defaults, f.name) and mine != saved[f.name]:
            conflicts.append(f"--{f.name.replace('_', '-')} {mine!r} (the run has {saved[f.name]!r})")
    if conflicts:
        raise TrainingError(
            "a resumed run keeps its configuration, so that it computes what the uninterrupted run would have; "
            f"these flags differ: {'; '.join(conflicts)}. Start a new run (another --output) to change them"
        )
    merged = dict(saved)
    for name in RUNTIME_FIELDS:
        mine = getattr(cfg, name)
        if mine != getattr(defaults, name):
            merged[name] = mine
    return TrainConfig.from_dict(merged)


def progress_on(setting: str) -> bool:
    """Whether --progress asks for progress bars (auto: when stderr is a terminal)."""
    if setting == "auto":
        return sys.stderr.isatty()
    return setting in ("on", "true", "1", "yes")
