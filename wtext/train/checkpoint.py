"""Checkpoints: written atomically (temporary file in the same folder, fsync, then rename) and read without running
code (`torch.load(weights_only=True)`: tensors and plain containers only, so a crafted file cannot execute
anything). A checkpoint holds everything a resumed run needs to continue exactly: model, optimizer, scheduler, RNG
states, epoch and step within the epoch, the running sums of the epoch and the metrics of finished epochs.

Payloads hold only what weights_only admits: tensors, numbers, strings, None, and lists, tuples and dicts of them.
The numpy RNG state is therefore stored as a tensor, not as the array numpy hands out.
"""

import random
from pathlib import Path

import numpy as np
import torch

from wtext.safe_files import RefusedFile, UnreadableFile, load_plain, write_atomic

# Version 2: weights_only-readable payloads (version 1 pickled numpy arrays and needed weights_only=False).
CHECKPOINT_FORMAT = 2


def rng_state() -> dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(payload: dict, path: str | Path) -> None:
    """torch.save of the payload (stamped with CHECKPOINT_FORMAT), atomically."""
    payload = {**payload, "format": CHECKPOINT_FORMAT}
    write_atomic(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by save_atomic, read with weights_only=True. A missing file is FileNotFoundError; a
    damaged file, one that would need code to be unpickled, or one of another format is ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: a checkpoint must be a file, this is a directory")
    try:
        state = load_plain(path, device)
    except RefusedFile as refused:
        raise ValueError(f"{path}: refused to load: it names the Python object {refused.name} (a wtext "
                         f"checkpoint holds only tensors and plain data; this file is from an older wtext, "
                         f"another program, or crafted to run code)") from None
    except UnreadableFile as unreadable:
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {unreadable.detail}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a wtext checkpoint (expected a dict with a 'model' entry)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format', 1)!r}, this wtext reads format "
                         f"{CHECKPOINT_FORMAT}; retrain, or evaluate it with the wtext version that wrote it")
    return state
