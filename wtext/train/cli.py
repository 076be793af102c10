"""The command line of `python -m wtext.train`, generated from TrainConfig; config files (TOML or YAML)."""

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from .config import TrainConfig


def _base_type(annotation):
    """int for `int | None`, etc."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wtext.train",
        allow_abbrev=False,  # --epoch must not silently mean --epochs
        description="Train and evaluate a weight-tied (multi-mask) model or its DEQ twin. Every option can also be "
                    "set in a TOML or YAML file given with --config; options on the command line win.",
    )
    parser.add_argument("--config", help="TOML (.toml) or YAML (.yaml/.yml) file setting TrainConfig fields")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {f.default})"
        choices = f.metadata.get("choices")
        if choices:
            help_text += f"; one of: {', '.join(choices)}"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=help_text)
    return parser


def read_config_file(path: str | Path) -> dict:
    """The fields a config file sets. Unknown keys are errors naming the key and the file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: a config file must be a file, this is a directory")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text: {error}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror}") from None
    if path.suffix == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML: {error}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
        values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of options at the top level")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad_keys = [key for key in values if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"{path}: option names must be strings; got {bad_keys[0]!r}")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option {unknown[0]!r}")
    return values


def resolve_config(argv=None) -> TrainConfig:
    """Defaults, then the config file, then the command line."""
    return resolve_command_line(argv)[0]


def resolve_command_line(argv=None) -> tuple[TrainConfig, frozenset[str]]:
    """The config (as resolve_config) and the names of the options the config file or the command line set,
    whatever their values: an option given at its default value is still the user's (--eval-only refuses it when
    the checkpoint was trained otherwise). The parser's defaults are SUPPRESS, so `args` holds only those given."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    try:
        values = read_config_file(config_file) if config_file else {}
    except ValueError as error:
        parser.error(str(error))
    values.update(args)
    try:
        return TrainConfig(**values), frozenset(values)
    except (TypeError, ValueError, OverflowError) as error:
        parser.error(str(error))
