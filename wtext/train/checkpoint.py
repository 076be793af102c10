"""Checkpoints: written atomically (temporary file in the same folder, fsync, then rename) and read without running
code (`torch.load(weights_only=True)`: tensors and plain containers only, so a crafted file cannot execute
anything). A checkpoint holds everything a resumed run needs to continue exactly: model, optimizer, scheduler, RNG
states, epoch and step within the epoch, the running sums of the epoch and the metrics of finished epochs.

Payloads hold only what weights_only admits: tensors, numbers, strings, None, and lists, tuples and dicts of them.
The numpy RNG state is therefore stored as a tensor, not as the array numpy hands out.

A checkpoint is checked when it is read, in load_checkpoint: each entry's structure (ENTRIES) and the finiteness of
its tensors. A damaged or hand-edited file is then one error naming the file and the entry, not a traceback from
deep inside a resumed run, nor a NaN test loss.
"""

import contextlib
import math
import random
from pathlib import Path

import numpy as np
import torch

from wtext.safe_files import RefusedFile, UnreadableFile, listing, load_plain, non_finite_tensors, write_atomic

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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _named(value) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _sequence(value, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length


def _count(value) -> bool:
    return _is_int(value) and value >= 0


# Every entry Trainer.save writes: what it must be (for the error) and the test. Evaluation and --init-from read
# "model" and "config"; a resumed run reads them all (RunState.from_checkpoint, restore_rng_state, the optimizer's and
# the scheduler's load_state_dict, which check their contents themselves).
ENTRIES = {
    "model": ("a dict of named tensors",
              lambda v: _named(v) and all(isinstance(t, torch.Tensor) for t in v.values())),
    "config": ("a dict of the run's options", _named),
    "optimizer": ("an optimizer state: a dict with 'state' (a dict) and 'param_groups' (a list of dicts)",
                  lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list) and all(_named(g) for g in v["param_groups"])),
    "scheduler": ("a scheduler state: a dict with 'last_epoch' (an int) and 'base_lrs' (a list of numbers)",
                  lambda v: _named(v) and _is_int(v.get("last_epoch")) and isinstance(v.get("base_lrs"), list)
                  and all(_is_number(lr) for lr in v["base_lrs"])),
    "epoch": ("an int >= 0", _count),
    "step_in_epoch": ("an int >= 0", _count),
    "steps_done": ("an int >= 0", _count),
    "seconds": ("a finite number >= 0", lambda v: _is_number(v) and math.isfinite(v) and v >= 0),
    "history": ("a list of per-epoch metrics (dicts of numbers and strings)",
                lambda v: isinstance(v, list) and all(_named(record) and all(
                    isinstance(x, (int, float, str, type(None))) for x in record.values()) for record in v)),
    "best": ("[best test accuracy, its epoch]", lambda v: _sequence(v, 2) and _is_number(v[0]) and _is_int(v[1])),
    "rng": ("the RNG states: a dict with 'torch' (a uint8 tensor), 'python' (3 items) and 'numpy' (5 items)",
            lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)
            and v["torch"].dtype == torch.uint8 and _sequence(v.get("python"), 3) and _sequence(v.get("numpy"), 5)
            and isinstance(v["numpy"][1], torch.Tensor)),
    "running": ("the epoch's running sums: a 1-d floating-point tensor",
                lambda v: isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 1),
}


def _shown(value) -> str:
    """A bad value, for an error: short values as they are, others by their type."""
    text = repr(value)
    return f"{text} ({type(value).__name__})" if len(text) <= 40 else f"a {type(value).__name__}"


def check_entries(state: dict, path: Path, resuming: bool) -> None:
    """Each entry of ENTRIES that `state` has is what it must be; resuming: it has every one of them."""
    for name, (expected, test) in ENTRIES.items():
        if name not in state:
            if resuming:
                raise ValueError(f"{path}: damaged checkpoint: it has no {name!r} entry, which a resumed run needs")
            continue
        if not test(state[name]):
            raise ValueError(f"{path}: damaged checkpoint: its {name!r} entry must be {expected}; got "
                             f"{_shown(state[name])}")


def check_finite(state: dict, path: Path, resuming: bool) -> None:
    """The model's weights (and, resuming, the optimizer's state and the running sums) hold no NaN or infinity:
    training only ever checkpoints finite states (Trainer.save), so others mean an altered or damaged file."""
    bad = non_finite_tensors(state["model"])
    if bad:
        raise ValueError(f"{path}: its weights are not finite: NaN or infinite values in {listing(bad)} "
                         f"({len(bad)} of {len(state['model'])} tensors); training only checkpoints finite "
                         f"weights, so this file was altered or damaged")
    if not resuming:
        return
    moments = {f"parameter {index} {key}": value for index, entries in state["optimizer"]["state"].items()
               if isinstance(entries, dict) for key, value in entries.items() if isinstance(value, torch.Tensor)}
    bad = non_finite_tensors(moments) + non_finite_tensors({"running sums": state["running"]})
    if bad:
        raise ValueError(f"{path}: its training state is not finite: NaN or infinite values in the optimizer "
                         f"state or running sums ({listing(bad)}); training only checkpoints finite states, so this "
                         f"file was altered or damaged")


@contextlib.contextmanager
def entry_errors(path: Path, name: str):
    """Turns the errors of reading the entry `name` of the checkpoint at `path` into one ValueError naming both."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:  # the device's trouble, not the file's
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: its {name!r} entry does not fit this run: "
                         f"{type(error).__name__}: {detail}") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", resuming: bool = False) -> dict:
    """A checkpoint written by save_atomic, read with weights_only=True. A missing file is FileNotFoundError; a
    damaged file, one that would need code to be unpickled, one of another format, one whose entries are not what
    Trainer.save writes (check_entries) and one whose weights are not finite (check_finite) are ValueErrors naming
    it. resuming: every entry must be there, and the optimizer state and running sums finite too."""
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
    check_entries(state, path, resuming)
    check_finite(state, path, resuming)
    return state
