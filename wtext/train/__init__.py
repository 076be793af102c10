"""Training and evaluation: `python -m wtext.train`."""

from .cli import build_parser, read_config_file, resolve_command_line, resolve_config
from .config import Role, TrainConfig, options_with
from .evaluate import evaluate_checkpoint
from .loop import Interrupted, fit, run
from .run_state import NonFiniteLoss
from .trainer import Trainer

__all__ = ["Interrupted", "NonFiniteLoss", "Role", "TrainConfig", "Trainer", "build_parser", "evaluate_checkpoint",
           "fit", "options_with", "read_config_file", "resolve_command_line", "resolve_config", "run"]
