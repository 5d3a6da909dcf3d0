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
from typing import Any, Callable, Optional

from ..datasets import builtin_dataset
from ..errors import FocalNetError
from ..precision import AUTO, PRECISIONS, PrecisionError, precision_name
from ..utils import atomic_write
from .data import DEFAULT_CROP_PCT, pad_for
from .recipes import Recipe, at_least, get_recipe, list_recipes, recipe_fields, setting

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


def with_recipe_fields(after: str, recipe: type = Recipe) -> Callable[[type], type]:
    """Insert a field for every field of `recipe` (focalnet.train.recipes.Recipe, the one table: default None,
    i.e. 'the recipe's'; the help, range and choices are the Recipe's) into a class about to become a
    dataclass, after its field `after`: a recipe field added there is a flag, a YAML key and a TrainConfig
    field at once."""

    def insert(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        hints = typing.get_type_hints(recipe)
        added = {}
        names = recipe_fields(recipe)
        for f in dataclasses.fields(recipe):
            if f.name not in names:
                continue
            base = _base_type(hints[f.name])
            added[f.name] = Optional[list if base is tuple else base]  # YAML and the flags give a list
            setattr(cls, f.name, field(default=None, metadata={**f.metadata, "recipe": True}))
        order = list(own)
        at = order.index(after) + 1
        cls.__annotations__ = {**{n: own[n] for n in order[:at]}, **added, **{n: own[n] for n in order[at:]}}
        return cls

    return insert


def _base_type(tp: Any) -> Any:
    """`float` for Optional[float]; the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


_f = setting  # a field with its --help text, range and choices: the same maker as the Recipe's


@dataclass
@with_recipe_fields(after="recipe")
class TrainConfig:
    """Everything a run needs; each field is a `focalnet train` flag (underscores become dashes) and a key
    of its YAML config. The recipe fields (lr, epochs, mixup, ...) are not written here: every field of
    `Recipe` is inserted after `recipe`, left at None (the recipe's value) unless given."""

    # data
    data: str = _f("fashion-mnist", "'fashion-mnist', 'digits', or a folder with train/CLASS/*.jpg and val/CLASS/*.jpg",
                   nonempty=True)
    data_dir: Optional[str] = _f(None, "where Fashion-MNIST's IDX files are (default: the usual places, then download)")
    download: bool = _f(True, "download Fashion-MNIST with torchvision when it is not on disk")
    limit_train: Optional[int] = _f(None, "use only N training images (quick trials)", check=at_least(1))
    limit_eval: Optional[int] = _f(None, "evaluate on only the first N test images (quick trials)", check=at_least(1))
    skip_bad_images: bool = _f(False, "skip unreadable images (counted and reported) instead of stopping at the first")
    workers: int = _f(0, "data-loading worker processes per training process (0: load in the training process)",
                      check=at_least(0))
    # model
    model: Optional[str] = _f(None, "registered variant (default focalnet_tiny_srf; with --pretrained and no --model: the file's architecture)")
    arch: dict = _f({}, "architecture overrides, KEY=VALUE, e.g. embed_dim=32 depths=[2,2,2] patch_size=2")
    pretrained: Optional[str] = _f(None, "start from these weights: a file in any checkpoint layout (ours, the authors', "
                                         "timm, Hugging Face) or a registered model name for its released weights")
    reset_head: bool = _f(False, "with --pretrained: a fresh classifier for the data's classes")
    in_chans: Optional[int] = _f(None, "input channels (default: the data's; 1 for Fashion-MNIST and digits)",
                                 check=at_least(1))
    # recipe (then every Recipe field: see with_recipe_fields)
    recipe: str = _f("auto", "named recipe: 'imagenet' (the paper's), 'small' (28 px / 8 px data), 'finetune' "
                             "(from pretrained weights); auto: finetune with --pretrained, else small for "
                             "Fashion-MNIST and digits, imagenet for folders",
                     choices=lambda: ("auto", *list_recipes()))
    accum_steps: int = _f(1, "gradient accumulation: batches per optimizer step", check=at_least(1))
    precision: str = _f("fp32", "fp32, bf16 (autocast; CPU and GPU), fp16 (autocast with a GradScaler; GPU) or auto "
                                "(bf16 where the GPU or CPU computes it natively and, on a CPU, a short probe finds "
                                "it faster than float32, else fp32; chosen when the run starts, and again on "
                                "--resume on the machine at hand); the old --amp none|bf16|fp16 is still read",
                        choices=lambda: (*PRECISIONS, AUTO))
    ema: bool = _f(False, "keep an exponential moving average of the weights (timm's ModelEmaV3) and evaluate it")
    ema_decay: float = _f(0.9998, "EMA decay", check=at_least(0, hi=1, hi_strict=True))
    # run
    output: str = _f("runs/focalnet", "output folder", nonempty=True)
    resume: Optional[str] = _f(None, "continue the run in this folder (or from this checkpoints/last.pth); beside it, "
                                     "--lr/--base-lr/--epochs/--time-budget/--eval-every/--skip-bad-images may "
                                     "change (announced) and runtime flags (--workers, --device, ...); any other "
                                     "flag that differs is refused")
    overwrite: bool = _f(False, "start over in an --output folder that already holds a run")
    seed: int = _f(0, "random seed", check=at_least(0))
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact --resume on the CPU)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N", nonempty=True)
    time_budget: Optional[float] = _f(None, "seconds of training: the optimizer steps are chosen to fit (measured on "
                                            "the first steps, re-planned after the first epoch; the last epoch may "
                                            "be partial; re-planned again before an epoch that would overrun)",
                                      check=at_least(0, strict=True))
    eval_every: Optional[int] = _f(None, "evaluate every N epochs and after the last (default: every epoch, or every "
                                         "few when an epoch is so short that evaluating would cost more than training)",
                                   check=at_least(1))
    tensorboard: bool = _f(False, "write TensorBoard logs to OUTPUT/tensorboard")
    progress: str = _f("auto", "progress bars: auto (when stderr is a terminal), on, off",
                       choices=lambda: ("auto", "on", "off"))
    compile: str = _f("auto", "torch.compile the training step (inductor): auto (on for CUDA; off on the CPU, where "
                              "it did not pay: docs/speed.md), on, off", choices=lambda: ("auto", "on", "off"))
    threads: Optional[int] = _f(None, "intra-op CPU threads per process (default: PyTorch's)", check=at_least(1))

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in cls.fields()}
        norm = renamed_keys({k.replace("-", "_"): v for k, v in d.items()})
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
# keys an earlier version took (and wrote into config.yaml), read as the key that replaced them
OLD_KEYS = {"amp": "precision"}  # --amp none|bf16|fp16 -> --precision fp32|bf16|fp16


def renamed_keys(values: dict) -> dict:
    """`values` with every old key (OLD_KEYS) under its new name, and a precision in the project's spelling
    (`bfloat16`, `none` -> bf16, fp32; `auto` stays auto). Both the old and the new key, saying different
    things, are refused."""
    out = dict(values)
    for old, new in OLD_KEYS.items():
        if old in out:
            value = _precision(old, out.pop(old))
            if new in out and _precision(new, out[new]) != value:
                raise TrainingError(f"{_flag(old)} {value!r} and {_flag(new)} {out[new]!r} disagree: give only "
                                    f"{_flag(new)}")
            out[new] = value
    if "precision" in out:
        out["precision"] = _precision("precision", out["precision"])
    return out


def _precision(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value  # validate_config names the wrong type
    if value.strip().lower() == AUTO:  # a setting the run resolves (focalnet.precision.choose_precision)
        return AUTO
    try:
        return precision_name(value)
    except PrecisionError as e:
        raise TrainingError(f"{_key(key)}: {e}, or {AUTO}") from None


def config_field_types() -> dict[str, Any]:
    """Resolved type hints of TrainConfig's fields (for the CLI)."""
    return typing.get_type_hints(TrainConfig)


def load_yaml_config(path: str) -> dict:
    import yaml

    from ..safeio import read_yaml

    # regular file, bounded size, depth and alias expansion; the message never shows the expanded value
    d = read_yaml(path, "config file", TrainingError) or {}
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
    overrides = {k: getattr(cfg, k) for k in recipe_fields() if getattr(cfg, k) is not None}
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
        value = getattr(recipe, k)
        d[k] = list(value) if isinstance(value, tuple) else value  # YAML writes lists, not tuples
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
    saved, notes = renamed_keys(saved), []
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


def _key(name: str) -> str:
    return f"{_flag(name)} (YAML key {name})"


def _check_type(name: str, value: Any, tp: Any) -> None:
    """Booleans only from booleans (YAML's true/false, yes/no unquoted; the flags --x/--no-x); integers
    from integers; numbers from integers or floats, finite; text from strings; a list: of numbers."""
    import math

    base = _base_type(tp)
    if value is None:
        if tp is base:  # not Optional
            raise TrainingError(f"{_key(name)} needs a value, got nothing (null)")
        return
    if base is list:
        if not isinstance(value, (list, tuple)):
            raise TrainingError(f"{_key(name)} must be a list of numbers, got {type(value).__name__} {value!r}")
        for item in value:
            _check_type(name, item, float)
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
    """Raise TrainingError naming the first value of `cfg` that has the wrong type or is out of range: the
    range, choices and length of each field are in its metadata (`setting`), a recipe field's in the Recipe."""
    types = _field_types()
    for f in TrainConfig.fields():
        value = getattr(cfg, f.name)
        _check_type(f.name, value, types[f.name])
        if value is None:
            continue
        meta = f.metadata
        length = meta.get("length")
        if length is not None and len(value) != length:
            raise TrainingError(f"{_key(f.name)} takes {length} values, got {list(value)!r}")
        check = meta.get("check")
        if check is not None and not all(check[0](v) for v in (value if isinstance(value, (list, tuple)) else [value])):
            raise TrainingError(f"{_key(f.name)} must be {check[1]}, got {value!r}")
        choices = meta.get("choices")
        if choices is not None and value not in choices():
            raise TrainingError(f"{_key(f.name)} must be one of {', '.join(choices())}, got {value!r}")
        if meta.get("nonempty") and not value.strip():
            raise TrainingError(f"{_key(f.name)} must not be empty")
    validate_arch(cfg.arch)
    validate_recipe(resolve_recipe(cfg))  # values given together with the recipe's own


def validate_recipe(recipe: Recipe) -> None:
    """Raise TrainingError where two recipe values, each in its range, make no sense together. Checked on the
    recipe a configuration resolves to (`validate_config`) and again once the data has filled in what a
    recipe leaves to it (`fit_to_data`: the batch, Mixup/CutMix)."""
    if recipe.min_lr > recipe.base_lr:
        raise TrainingError(
            f"--min-lr {recipe.min_lr:g} is above --base-lr {recipe.base_lr:g}: both are per 1024 images and the "
            f"cosine ends at min_lr / base_lr of the peak rate, so the rate would rise over the run; pass a "
            f"--min-lr of at most {recipe.base_lr:g}"
        )
    mixing = bool(recipe.mixup) or bool(recipe.cutmix)  # None: left to the data, checked once it is filled in
    if mixing and recipe.batch_size is not None and recipe.batch_size % 2:
        raise TrainingError(
            f"--batch-size {recipe.batch_size} with Mixup/CutMix (--mixup {recipe.mixup or 0:g}, --cutmix "
            f"{recipe.cutmix or 0:g}): they mix pairs of images within a batch, which needs an even batch size; "
            f"pass --batch-size {recipe.batch_size + 1}, or --mixup 0 --cutmix 0"
        )


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


# what makes a run this run: a checkpoint that disagrees with its folder's config.yaml on one of these is
# another run's (copied in), or config.yaml was edited by hand; either way resuming would mix two runs
RUN_IDENTITY = ("data", "model", "arch", "in_chans", "pretrained", "seed", "limit_train", "batch_size", "accum_steps")


def check_resume_folder(saved: dict, run_dir: Path) -> None:
    """Refuse to resume from a checkpoint whose saved configuration disagrees with the folder's config.yaml on
    RUN_IDENTITY (each value compared where both state it): a TrainingError naming the keys and both values."""
    import json

    from ..safeio import describe, present, read_yaml

    path = Path(run_dir) / "config.yaml"
    if not present(path):
        return
    folder = read_yaml(path, "the run's configuration", TrainingError)
    if not isinstance(folder, dict):
        raise TrainingError(f"{path} must hold a mapping of settings, got {type(folder).__name__}; restore it")
    folder, saved = renamed_keys(folder), renamed_keys(saved)

    def plain(v: Any) -> Any:  # tuples and lists, as YAML and the checkpoint write them
        return json.loads(json.dumps(v, default=str))

    wrong = [f"{k}: config.yaml {describe(folder[k])}, the checkpoint {describe(saved[k])}" for k in RUN_IDENTITY
             if folder.get(k) is not None and saved.get(k) is not None and plain(folder[k]) != plain(saved[k])]
    if wrong:
        raise TrainingError(
            f"the checkpoint is not the run of {run_dir}: {'; '.join(wrong)}. It was copied in from another run, or "
            "config.yaml was edited; resume the run the checkpoint belongs to, or start a new run"
        )
