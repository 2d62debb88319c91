"""Notes a run collects for its user (a query outside a calibrated table, an idealisation in
force): gathered per run in a context variable, never through the process-wide warnings filter."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_NOTES: ContextVar[list[str] | None] = ContextVar("moesim_notes", default=None)


def note(message: str) -> None:
    """Record a note for the run in progress (dropped when no run collects)."""
    notes = _NOTES.get()
    if notes is not None and message not in notes:
        notes.append(message)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect the notes of the code inside; nested collectors each see their own."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)
        outer = _NOTES.get()
        if outer is not None:
            for n in notes:
                if n not in outer:
                    outer.append(n)
