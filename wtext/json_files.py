"""Reading JSON files that outlive the process that wrote them (a run's config.json and summary.json, an experiment's
records): a run killed mid-write, a full disk, a hand edit or a sync tool can leave one empty, cut short or holding
something else. Every such read is an error naming the file, the problem and what to do, never a bare JSON error or
a traceback; each caller says what to do (the remedy)."""

import json
from pathlib import Path


class DamagedFile(ValueError):
    """A results file that cannot be used as it is; the message names it, the problem and the remedy."""

    def __init__(self, path: Path, problem: str, remedy: str):
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path, self.problem, self.remedy = Path(path), problem, remedy


def _json_kind(value) -> str:
    kinds = {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean", int: "a JSON number",
             float: "a JSON number", type(None): "JSON null"}
    return kinds.get(type(value), type(value).__name__)


def _read_text(path: Path, remedy: str) -> str | None:
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise DamagedFile(path, "is not a regular file", remedy)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFile(path, f"cannot be read ({error})", remedy) from None


def _parse_object(path: Path, text: str, remedy: str, where: str = ""):
    """The JSON object in `text` (one file, or one line of a .jsonl file: `where` says which)."""
    if not text.strip():
        raise DamagedFile(path, f"{where}is empty", remedy)
    try:
        value = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError
        raise DamagedFile(path, f"{where}is not valid JSON ({error})", remedy) from None
    except RecursionError:  # thousands of nested brackets
        raise DamagedFile(path, f"{where}is not valid JSON (nested too deeply)", remedy) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"{where}holds {_json_kind(value)}, not a JSON object", remedy)
    return value


def read_json_object(path: Path, remedy: str) -> dict | None:
    """The JSON object in the file at `path`, or None when there is no file there. remedy: what the error tells the
    user to do about a damaged file."""
    text = _read_text(path, remedy)
    return None if text is None else _parse_object(path, text, remedy)


def read_json_lines(path: Path, remedy: str) -> list[dict] | None:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped), or None when there is no file there."""
    text = _read_text(path, remedy)
    if text is None:
        return None
    return [_parse_object(path, line, remedy, where=f"line {number} ")
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
