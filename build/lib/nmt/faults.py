"""Fault injection for the crash tests: ``NMT_FAULT=NAME:N[:SIG]`` sends this process SIGKILL
(or SIGTERM / SIGINT with ``:TERM`` / ``:INT``) the N-th time it reaches ``fault_point(NAME)``
(N defaults to 1).

The points sit where a crash is most likely to lose or corrupt something: inside a checkpoint
write (temporary file written, not yet renamed; renamed, directory not yet synced), right after
an optimizer update, and inside data preparation. Without the variable ``fault_point`` is one
dictionary lookup. ``tests/test_faults.py`` drives it.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int, int] | None:
    spec = os.environ.get("NMT_FAULT", "")
    if not spec:
        return None
    name, count, sig = (spec.split(":") + ["", ""])[:3]
    return name, int(count or 1), int(getattr(signal, f"SIG{sig or 'KILL'}"))


_TARGET = _target()


def fault_point(name: str) -> None:
    """Signal this process when ``NMT_FAULT`` names this point and its count is reached."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _TARGET[1]:
        os.kill(os.getpid(), _TARGET[2])
