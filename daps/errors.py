"""The one exception type for problems with what the user gave: a setting, a path, a file, a command line.

``daps`` commands print a :class:`UserError` as one line and exit with code 2; any other exception is a bug and
keeps its traceback. It is a ``ValueError``, so library callers can catch either.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A bad setting, path, file or argument; the message names it."""


def _number(value: float) -> str:
    """A bound or a value as a person reads it: whole numbers with thousands separators, others as ``%g``."""
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def check_at_least(*bounds: tuple[str, float, float]) -> None:
    """A :class:`UserError` for the first ``(flag, value, minimum)`` whose value is below its minimum (or NaN),
    naming the flag and the value given: ``--windows must be at least 2, got 1``."""
    for flag, value, minimum in bounds:
        if not value >= minimum:
            raise UserError(f"{flag} must be at least {_number(minimum)}, got {_number(value)}")


def check_at_most(*bounds: tuple[str, float, float]) -> None:
    """A :class:`UserError` for the first ``(flag, value, maximum)`` whose value is above its maximum: a count
    that would exhaust memory or run for days is refused in one line, not by an allocation error."""
    for flag, value, maximum in bounds:
        if value > maximum:
            raise UserError(f"{flag} must be at most {_number(maximum)}, got {_number(value)}")


def first_few(names: Iterable[str], shown: int = 3) -> str:
    """The first ``shown`` names, comma-separated, and ``...`` if there are more: a message's list of files or
    folders that may run to thousands."""
    names = list(names)
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean train.steps?)`` for the known names closest to a misspelled ``name`` (up to two), else
    ``""``: a hint put before the full list of names, which runs to dozens of keys. A dotted name whose section
    exists is matched by its last part among that section's keys (``train.stepz``: ``train.steps``, not every
    ``train.s...``), then by the same last part in another section (``optim.steps``: ``train.steps``); otherwise
    whole names are compared (``trian.steps``: ``train.steps``)."""
    known = list(known)
    parent, dot, leaf = name.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if dot and k.rpartition(".")[0] == parent}
    close = [siblings[k] for k in difflib.get_close_matches(leaf, list(siblings), n=2, cutoff=0.7)]
    if not close and dot:  # the right name in the wrong section: optim.steps -> train.steps
        close = [k for k in known if k.rpartition(".")[2] == leaf][:2]
    if not close and not siblings:  # no such section: a typo in it (trian.steps)
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


__all__ = ["UserError", "check_at_least", "check_at_most", "did_you_mean", "first_few"]
