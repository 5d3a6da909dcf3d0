"""Training and evaluating FocalNets: `train(TrainConfig(...))`, `evaluate_checkpoint`, `write_run_report`.

    from focalnet.train import TrainConfig, train
    summary = train(TrainConfig(data="digits", arch=dict(embed_dim=32, depths=[1, 1], patch_size=1), epochs=10))

Read from the bottom up, one idea per file:
- `config`: TrainConfig (every `focalnet train` flag), YAML, the recipe filled in, resume checks;
- `recipes`, `data`: named hyper-parameter sets; data sets, transforms and loaders;
- `distributed`: one process or many under torchrun; `state`: training checkpoints and random state;
- `build`: the model, optimizer, schedule, loss and Mixup of a configuration;
- `loop`: `train_one_epoch` and `evaluate`; `budget`: fitting a run into --time-budget seconds;
- `run`: `train()`, as named phases (configure -> load_data -> build_parts -> plan_run -> begin ->
  run_epochs -> finish); `evaluation`: `evaluate_checkpoint`, behind `focalnet eval`;
- `artifacts`: what a run writes as it goes (metrics, summary, plots); `report`: report.md of a finished run.
"""
from .artifacts import per_class_table
from .config import RUNTIME_FIELDS, TrainConfig, TrainingError, config_field_types, load_yaml_config
from .evaluation import evaluate_checkpoint
from .loop import NonFiniteLossError, evaluate, train_one_epoch
from .report import RunReportError, write_run_report
from .run import train
from .state import CheckpointSaveError

__all__ = [
    "TrainConfig",
    "TrainingError",
    "RUNTIME_FIELDS",
    "config_field_types",
    "load_yaml_config",
    "train",
    "evaluate_checkpoint",
    "train_one_epoch",
    "evaluate",
    "NonFiniteLossError",
    "CheckpointSaveError",
    "write_run_report",
    "RunReportError",
    "per_class_table",
]
