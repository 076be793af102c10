"""inject() adapters into a model, merge() / unmerge() them, and the adapter-only state dict.

The base model is adapted in place without renaming anything: each target module keeps its type, its place and
its own parameters (state_dict keys unchanged), and gains a child `lora` (keys `<module>.lora.A`, `<module>.lora.B`).
Code reaches an adapter through a TiedMaskedWeight's weight-update slot or by its type (kinds.adapter_of), never
by that child's name.
"""

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from .adapter import LoRAAdapter, check_rank
from .config import LoRAConfig
from .kinds import ATTRIBUTE, SUPPORTED, adapter_of, attach, kind_of, weight_shape

LISTED = 12  # module names an error message lists


@dataclass(frozen=True)
class Target:
    """A module inject() will adapt: its qualified name, the module, its kind, and its weight's [out, *in_shape]."""

    name: str
    module: nn.Module
    kind: str
    out_features: int
    in_shape: tuple[int, ...]

    def factor_shapes(self, rank: int) -> dict[str, tuple[int, ...]]:
        """state_dict key -> shape of the adapter's factors."""
        return {f"{self.name}.{ATTRIBUTE}.A": (rank, *self.in_shape),
                f"{self.name}.{ATTRIBUTE}.B": (self.out_features, rank)}


def _matches(name: str, patterns) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _names(model: nn.Module, pick=lambda module: True) -> str:
    names = [name for name, module in model.named_modules() if name and pick(module)]
    shown = ", ".join(names[:LISTED])
    return shown + (f", ... ({len(names) - LISTED} more)" if len(names) > LISTED else "") if names else "(none)"


def plan(model: nn.Module, config: LoRAConfig) -> tuple[list[Target], list[tuple[str, nn.Module]]]:
    """The targets and the train modules (name, module) that inject(model, config) would use, every check made
    and nothing changed: errors for targets or train_modules patterns that match nothing, a target of a type LoRA
    cannot adapt, a rank above a target's min(out, in*kh*kw), an N:M pattern that does not fit a factor, a module
    both adapted and trained, a model that already has adapters."""
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig; got {type(config).__name__}")
    if adapters(model):
        raise ValueError(f"the model already has LoRA adapters ({', '.join(list(adapters(model))[:LISTED])}); "
                         f"inject into a fresh model, or load_adapter into this one")
    named = [(name, module) for name, module in model.named_modules() if name]  # "" is the model itself
    matched = [(name, module) for name, module in named if _matches(name, config.targets)]
    if not matched:
        adaptable = _names(model, lambda m: _supported(m))
        raise ValueError(f"LoRA targets {list(config.targets)} match no module of the {type(model).__name__}; "
                         f"modules it could adapt: {adaptable}")
    targets = []
    for name, module in matched:
        kind = kind_of(module, name)
        out, in_shape = weight_shape(module)
        check_rank(config.rank, out, in_shape, name)
        _check_nm(config, name, out, in_shape)
        targets.append(Target(name, module, kind, out, in_shape))
    train = [(name, module) for name, module in named if _matches(name, config.train_modules)]
    for pattern in config.train_modules:
        if not any(fnmatchcase(name, pattern) for name, _ in named):
            raise ValueError(f"train_modules pattern {pattern!r} matches no module of the {type(model).__name__}; "
                             f"its modules: {_names(model)}")
    for target in targets:
        for name, _ in train:
            if target.name == name or target.name.startswith(name + ".") or name.startswith(target.name + "."):
                raise ValueError(f"module {target.name!r} is both a LoRA target and (in) train module {name!r}; "
                                 f"adapt it or train it, not both")
    return targets, train


def _supported(module: nn.Module) -> bool:
    try:
        kind_of(module, "")
    except ValueError:
        return False
    return True


def _check_nm(config: LoRAConfig, name: str, out: int, in_shape: tuple[int, ...]) -> None:
    """The N:M pattern groups M consecutive elements along each factor's reduction dim: A's is in*kh*kw, B's rank."""
    if config.pattern != "nm":
        return
    m = config.nm[1]
    for factor, width in (("A", int(torch.Size(in_shape).numel())), ("B", config.rank)):
        if width % m:
            raise ValueError(f"pattern 'nm' with M={m} needs M to divide the reduction dim of every factor; "
                             f"module {name!r}: {factor}'s is {width}")


def inject(model: nn.Module, config: LoRAConfig) -> list[nn.Parameter]:
    """Adapts the modules of `model` matching config.targets in place (see the module docstring), freezes every
    other parameter except those of config.train_modules, and returns the trainable parameters (the factors A, B
    of every adapter, then the train modules' parameters, in model.parameters() order).

    Initially B = 0, so the adapted model computes exactly what the base model did.
    """
    targets, train = plan(model, config)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for t in targets:
        weight = t.module.weight
        attach(t.module, LoRAAdapter(t.kind, t.out_features, t.in_shape, config, t.name, weight.dtype, weight.device))
    for _, module in train:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def adapters(model: nn.Module) -> dict[str, tuple[nn.Module, LoRAAdapter]]:
    """Adapted module name -> (the module, its adapter)."""
    found = {}
    for name, module in model.named_modules():
        adapter = adapter_of(module)
        if adapter is not None:
            found[name] = (module, adapter)
    return found


def lora_config(model: nn.Module) -> LoRAConfig | None:
    """The config the model's adapters were injected with, or None when it has none."""
    found = adapters(model)
    return next(iter(found.values()))[1].config if found else None


def _require_adapters(model: nn.Module, action: str) -> dict[str, tuple[nn.Module, LoRAAdapter]]:
    found = adapters(model)
    if not found:
        raise ValueError(f"cannot {action}: the {type(model).__name__} has no LoRA adapters (call inject first); "
                         f"supported targets: {SUPPORTED}")
    return found


def merge(model: nn.Module) -> None:
    """Folds ΔW into each adapted weight (W <- W + ΔW): the forward then runs no adapter op at all. Each base
    weight is kept as it was, on its device, until unmerge (memory: one copy of every adapted weight). A merged
    adapter's factors get no gradient, and changes to them reach the forward only after unmerge and merge again.
    Merging a merged model does nothing."""
    for module, adapter in _require_adapters(model, "merge").values():
        adapter.merge_into(module.weight)


def unmerge(model: nn.Module) -> None:
    """Restores every adapted weight as it was before merge(), bit for bit. Nothing for an unmerged adapter."""
    for module, adapter in _require_adapters(model, "unmerge").values():
        adapter.unmerge_from(module.weight)


def is_merged(model: nn.Module) -> bool:
    return any(adapter.merged for _, adapter in adapters(model).values())


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter file holds: the factors (`<module>.lora.A`, `<module>.lora.B`) and the state_dict entries of
    the train modules (their parameters and persistent buffers), under the model's own state_dict keys; detached
    tensors sharing storage with the model."""
    found = _require_adapters(model, "take the adapter state")
    state = {}
    for name, (_, adapter) in found.items():
        state[f"{name}.{ATTRIBUTE}.A"] = adapter.A.detach()
        state[f"{name}.{ATTRIBUTE}.B"] = adapter.B.detach()
    patterns = next(iter(found.values()))[1].config.train_modules
    for name, module in model.named_modules():
        if name and _matches(name, patterns):
            state.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    return state


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state_dict: the adapted model's without the `.lora.` entries, and with each merged weight
    as it was before merge(), so it loads into a model that was never adapted."""
    found = adapters(model)
    prefixes = tuple(f"{name}.{ATTRIBUTE}." for name in found)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(prefixes)}
    for name, (_, adapter) in found.items():
        if adapter.merged:
            state[f"{name}.weight"] = adapter.original
    return state
