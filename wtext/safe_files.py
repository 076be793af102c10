"""Files wtext writes and reads: written atomically (temporary file in the same folder, fsync, then rename), read
with `torch.load(weights_only=True)` so a crafted file cannot run code, and their tensors checked for NaN and
infinities. Checkpoints and LoRA adapter files use all three; each caller words its own errors."""

import os
import pickle
import re
import secrets
from pathlib import Path

import torch


def write_atomic(path: str | Path, write) -> None:
    """Calls write(handle) on a temporary file beside path, fsyncs, then renames it over path: a crash leaves the
    old or the new file, never half of one. The temporary file's name is unique, so processes writing the same path
    at once (the workers of a sweep) never write into, or remove, one another's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: a name taken is an error, not a shared file; mode 0o666 under the umask, as open() would create it
    # (tempfile.mkstemp would make every checkpoint and result readable by its owner alone).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
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


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors of `tensors` that hold a NaN or an infinity, in their order (one host
    read for all of them). wtext writes only finite weights, so a file with others was altered or damaged: loaded,
    it would evaluate to a NaN loss or train into a run that stops at once, blaming its learning rate."""
    floating = [(name, tensor) for name, tensor in tensors.items() if tensor.is_floating_point() or tensor.is_complex()]
    if not floating:
        return []
    finite = torch.stack([tensor.isfinite().all() for _, tensor in floating]).tolist()  # one device (map_location)
    return [name for (name, _), ok in zip(floating, finite) if not ok]


def listing(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 4 more': the first names of a list, for a one-line error."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")
