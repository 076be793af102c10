"""Files wtext writes and reads: written atomically (temporary file in the same folder, fsync, then rename), read
with `torch.load(weights_only=True)` so a crafted file cannot run code. Checkpoints and LoRA adapter files use
both; each caller words its own errors."""

import os
import pickle
import re
from pathlib import Path

import torch


def write_atomic(path: str | Path, write) -> None:
    """Calls write(handle) on path.tmp, fsyncs, then renames over path: a crash leaves the old or the new file,
    never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


class RefusedFile(ValueError):
    """The file names a Python object to import (`name`): weights_only refused it, nothing ran."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class UnreadableFile(ValueError):
    """The file is no torch.save output torch can read (truncated, damaged, another format); `detail` says why."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def load_plain(path: str | Path, device: torch.device | str = "cpu"):
    """torch.load(path, weights_only=True): tensors and plain containers only. RefusedFile when the file names a
    Python global, UnreadableFile (with torch's reason, shortened) for any other failure."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch words this in several ways; what matters is whether the file names a Python global to import.
        text = str(error)
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named:
            raise RefusedFile(named.group(1)) from None
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        raise UnreadableFile(" ".join(detail.split("Check the documentation")[0].split())[:200]) from None
    except Exception as error:  # torch raises several types for a file that is no torch.save output
        raise UnreadableFile(str(error)[:200]) from None
