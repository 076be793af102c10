"""Which experiment a results folder (--out) belongs to, recorded in OUT/experiment.json.

An experiment writes results.md, results.json and its plot at the top of its folder, so a second experiment sent to
the same folder would replace the first one's results without a word. The first experiment to run in a folder
records its name there; any other is refused. The same experiment again is welcome: it resumes its sweep.
"""

import json
import re
from pathlib import Path

from wtext.json_files import DamagedFile, read_json_object
from wtext.safe_files import write_text_atomic

MARKER = "experiment.json"
# The first line of results.md, as __main__ writes it: how folders from before experiment.json name their owner.
_REPORT_HEADING = re.compile(r"# (\S+) \(\w+ scale\)$")


def _marker_remedy(out_dir: Path) -> str:
    return (f"it records which experiment's results {out_dir} holds; write {{\"experiment\": \"NAME\"}} into it, "
            f"NAME being that experiment, or delete the folder to start over")


def owner_of(out_dir: Path) -> str | None:
    """The experiment whose results out_dir holds: the one in its experiment.json, or, in a folder from before that
    record, the one in the heading of its results.md. None for a new or empty folder (or one that does not say)."""
    marker = out_dir / MARKER
    recorded = read_json_object(marker, _marker_remedy(out_dir))
    if recorded is not None:
        name = recorded.get("experiment")
        if not isinstance(name, str) or not name:
            raise DamagedFile(marker, "names no experiment", _marker_remedy(out_dir))
        return name
    report = out_dir / "results.md"
    if report.is_file():
        with report.open(encoding="utf-8", errors="replace") as handle:
            heading = _REPORT_HEADING.match(handle.readline(256).rstrip("\n"))
        if heading:
            return heading.group(1)
    return None


def check_owner(out_dir: Path, name: str, flag: str = "--out", advice: str | None = None) -> None:
    """Raises ValueError when out_dir holds another experiment's results. flag: the option that named the folder;
    advice: what to do instead (by default, for --out: another folder)."""
    owner = owner_of(out_dir)
    if owner is not None and owner != name:
        advice = advice or (f"running {name} there would replace them: give --out a new or empty folder, or one of "
                            f"{name}'s")
        raise ValueError(f"{flag} {out_dir} holds the results of the experiment {owner!r}, not of {name!r}; "
                         f"{advice}")


def claim(out_dir: Path, name: str) -> None:
    """Records that out_dir holds the results of experiment `name`, after check_owner's refusal of another's."""
    check_owner(out_dir, name)
    marker = out_dir / MARKER
    if marker.is_file():
        return
    # Workers of one sweep start together: each writes its own temporary file and renames it into place.
    write_text_atomic(marker, json.dumps({"experiment": name}) + "\n")
