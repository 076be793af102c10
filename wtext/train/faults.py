"""Deliberate crashes at named points of a run, for the tests that prove a killed run loses nothing.

Set WTEXT_CRASH_AT="EVENT:N" (e.g. "step:5", "checkpoint:2", "metrics:1") and the process kills itself with
SIGKILL, the signal no handler can intercept, right after the N-th occurrence of EVENT. Unset, this costs one
environment lookup per event.
"""

import os
import signal

EVENTS = ("step", "checkpoint", "metrics")
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("WTEXT_CRASH_AT")
    if not spec:
        return None
    event, _, count = spec.partition(":")
    if event not in EVENTS or not count.isdigit():
        raise ValueError(f"WTEXT_CRASH_AT must be EVENT:N with EVENT one of {', '.join(EVENTS)}; got {spec!r}")
    return event, int(count)


def crash_point(event: str) -> None:
    """Marks one occurrence of `event`; kills the process if WTEXT_CRASH_AT names this occurrence."""
    target = _target()
    if target is None or target[0] != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
