"""Training and evaluation: `python -m wtext.train`."""

from .cli import build_parser, read_config_file, resolve_config
from .config import TrainConfig
from .loop import Interrupted, NonFiniteLoss, Trainer, run

__all__ = ["Interrupted", "NonFiniteLoss", "TrainConfig", "Trainer", "build_parser", "read_config_file",
           "resolve_config", "run"]
