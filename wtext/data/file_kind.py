"""What a path that should be a data file really is: a regular file, or a directory, a device, a pipe, a socket.

A batch file is opened and read whole, so anything but a regular file must be refused before it is opened: a
named pipe blocks the open forever, and /dev/zero behind a symlink never ends.
"""

import os
import stat
from pathlib import Path

from .errors import DatasetError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def describe_kind(path: Path) -> str:
    """'a directory', 'a character device', ... for what `path` leads to, naming a symlink's target."""
    mode = path.stat().st_mode
    kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
    if path.is_symlink():
        kind += f", via a symlink to {os.readlink(path)}"
    return kind


def require_regular_file(path: Path) -> None:
    """Raises DatasetError naming `path` unless it is a regular file (or a symlink to one)."""
    if path.is_file():
        return
    if not path.exists():  # missing, or a symlink to nothing
        raise DatasetError(path, "file not found")
    kind = describe_kind(path)
    if kind.startswith("a directory"):
        raise DatasetError(path, f"is {kind}, not a batch file")
    raise DatasetError(path, f"is not a regular file ({kind}); a batch file must be one")
