"""Multi-mask LoRA: ΔW = (alpha / r) Σ_{k<d} (B ⊙ M_B,k)(A ⊙ M_A,k), d masked copies of one low-rank pair whose
masks are derived from a seed (never stored). docs/lora.md describes it."""

from .adapter import LoRAAdapter
from .config import DEFAULT_TARGETS, LoRAConfig
from .inject import (adapter_state_dict, adapters, base_state_dict, inject, is_merged, lora_config, merge, plan,
                     unmerge)
from .io import load_adapter, read_adapter, save_adapter

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAAdapter",
    "LoRAConfig",
    "adapter_state_dict",
    "adapters",
    "base_state_dict",
    "inject",
    "is_merged",
    "load_adapter",
    "lora_config",
    "merge",
    "plan",
    "read_adapter",
    "save_adapter",
    "unmerge",
]
