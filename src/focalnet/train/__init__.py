"""Training and evaluating FocalNets: `train(TrainConfig(...))`, `evaluate_checkpoint` (a run's report.md is
`focalnet.inspect.write_run_report`'s).

    from focalnet.train import TrainConfig, train
    summary = train(TrainConfig(data="digits", arch=dict(embed_dim=32, depths=[1, 1], patch_size=1), epochs=10))

Read from the bottom up, one idea per file:
- `recipes`: Recipe, the one table of hyper-parameters (each field also a flag and a YAML key), named sets;
- `config`: TrainConfig (every `focalnet train` flag, the recipe's derived), YAML, resume checks;
- `data`: data sets, transforms and loaders;
- `distributed`: one process or many under torchrun; `state`: TrainingCheckpoint (last.pth) and random state;
- `build`: the input, model, loss and Mixup of a configuration; `optim`: its optimizer and schedule;
- `loop`: `train_one_epoch` and `evaluate`; `budget`: the Plan (epochs, steps), fitted to --time-budget;
- `run`: `train()`, as named phases (configure -> load_data -> build_parts -> plan_run -> begin ->
  run_epochs -> finish), handing on the values of `phases`; `epoch`: run_epochs and one epoch;
  `evaluation`: `evaluate_checkpoint`, behind `focalnet eval`;
- `artifacts`: what a run writes as it goes (metrics, summary, plots).
"""
from .artifacts import per_class_table
from .config import RUNTIME_FIELDS, TrainConfig, TrainingError, config_field_types, load_yaml_config
from .evaluation import evaluate_checkpoint
from .loop import NonFiniteLossError, evaluate, train_one_epoch
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
    "per_class_table",
]
