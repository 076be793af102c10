"""Adapter files: the config and adapter_state_dict() of a model, written atomically and read without running code.

A file is torch.save of a plain dict {"format", "version", "config": LoRAConfig.to_dict(), "tensors": {key:
tensor}}, read back with torch.load(weights_only=True): tensors and plain containers only, so a crafted file
cannot execute anything.
"""

from pathlib import Path

import torch
from torch import nn

from wtext.safe_files import RefusedFile, UnreadableFile, listing, load_plain, non_finite_tensors, write_atomic

from .config import LoRAConfig
from .inject import Target, adapter_state_dict, inject, is_merged, lora_config, plan

FORMAT = "wtext-lora-adapter"
VERSION = 1


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Writes the model's adapter config and adapter_state_dict() (on the CPU) to `path`: to a temporary file in
    the same folder first, then renamed over `path`, so a crash leaves the old file or the new one, never half.
    Adapters holding NaN or infinite values are refused (ValueError) and nothing is written: read_adapter would
    refuse the file, and an older good file at `path` is kept."""
    config = lora_config(model)
    tensors = {key: value.cpu().clone() for key, value in adapter_state_dict(model).items()}  # own, minimal storage
    bad = non_finite_tensors(tensors)
    if bad:
        raise ValueError(f"cannot save the adapter to {path}: NaN or infinite values in {listing(bad)} ({len(bad)} "
                         f"of {len(tensors)} tensors; training diverged: a lower learning rate may help); nothing "
                         f"was written")
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "tensors": tensors}
    write_atomic(path, lambda handle: torch.save(payload, handle))


def read_adapter(path: str | Path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter file, tensors on the CPU. FileNotFoundError for a missing file; ValueError
    naming the file for anything that is not a readable adapter file of this format, and for tensors holding NaN or
    infinite values (naming them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        payload = load_plain(path)
    except RefusedFile as refused:
        raise ValueError(f"{path}: refused to load: it names the Python object {refused.name} (an adapter file "
                         f"holds only tensors and plain data; this one may be crafted to run code)") from None
    except UnreadableFile as unreadable:
        raise ValueError(f"{path}: not a wtext LoRA adapter file (unreadable: {unreadable.detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a wtext LoRA adapter file (no format marker {FORMAT!r}; a model checkpoint "
                         f"is loaded with load_state_dict, not load_adapter)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: adapter file version {payload.get('version')!r}; this wtext reads version {VERSION}")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise ValueError(f"{path}: damaged adapter file: 'tensors' is not a dict of named tensors")
    try:
        config = LoRAConfig.from_dict(payload.get("config"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: damaged adapter file: bad config: {error}") from None
    bad = non_finite_tensors(tensors)
    if bad:  # loaded, they would make every output of the model NaN
        raise ValueError(f"{path}: its adapter tensors are not finite: NaN or infinite values in {listing(bad)} "
                         f"({len(bad)} of {len(tensors)} tensors); save_adapter writes what training made, so this "
                         f"file was altered or damaged, or saved from a run that diverged")
    return config, tensors


def load_adapter(model: nn.Module, path: str | Path) -> list[nn.Parameter]:
    """Loads an adapter file into `model` and returns its trainable parameters (as inject does).

    A model without adapters is first injected with the file's config (so: the base model, built as for
    training); a model with adapters must have been injected with the same config and be unmerged. Every check is
    made before anything changes: config mismatch, a module of the file missing in the model (or one of the
    model's adapted modules missing in the file), tensor shapes.
    """
    config, tensors = read_adapter(path)
    existing = lora_config(model)
    if existing is None:
        targets, train = plan(model, config)
        expected = _expected_shapes(targets, train, config.rank)
    else:
        differences = config.differences(existing)
        if differences:
            raise ValueError(f"{path}: LoRA config mismatch, file vs model: {'; '.join(differences)}")
        if is_merged(model):
            raise ValueError(f"{path}: the model's adapters are merged; unmerge(model) before loading new factors")
        expected = {key: tuple(value.shape) for key, value in adapter_state_dict(model).items()}
    _check_tensors(path, tensors, expected)
    if existing is None:
        inject(model, config)
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _expected_shapes(targets: list[Target], train, rank: int) -> dict[str, tuple[int, ...]]:
    expected = {}
    for target in targets:
        expected.update(target.factor_shapes(rank))
    for name, module in train:
        expected.update({f"{name}.{key}": tuple(value.shape) for key, value in module.state_dict().items()})
    return expected


def _module(key: str) -> str:
    """The module a state_dict key belongs to: `m.lora.A` -> m, `head.weight` -> head."""
    return key.rsplit(".lora.", 1)[0] if ".lora." in key else key.rpartition(".")[0]


def _check_tensors(path, tensors: dict, expected: dict) -> None:
    for key in tensors:
        if key not in expected:
            adapted = sorted({_module(k) for k in expected})
            raise ValueError(f"{path}: the file has {key!r}, but module {_module(key)!r} is missing in the model or "
                             f"not adapted/trained by it (model's: {', '.join(adapted[:12])})")
    for key, shape in expected.items():
        if key not in tensors:
            raise ValueError(f"{path}: the file has no {key!r} for module {_module(key)!r} of the model (an adapter "
                             f"for another model?)")
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{path}: module {_module(key)!r}: {key!r} has shape {tuple(tensors[key].shape)} in "
                             f"the file but {shape} in the model")
