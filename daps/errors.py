"""The one exception type for problems with what the user gave: a setting, a path, a file, a command line.

``daps`` commands print a :class:`UserError` as one line and exit with code 2; any other exception is a bug and
keeps its traceback. It is a ``ValueError``, so library callers can catch either.
"""


class UserError(ValueError):
    """A bad setting, path, file or argument; the message names it."""


def check_at_least(*bounds: tuple[str, float, float]) -> None:
    """A :class:`UserError` for the first ``(flag, value, minimum)`` whose value is below its minimum (or NaN),
    naming the flag and the value given: ``--windows must be at least 2, got 1``."""
    for flag, value, minimum in bounds:
        if not value >= minimum:
            raise UserError(f"{flag} must be at least {minimum:g}, got {value:g}")


__all__ = ["UserError", "check_at_least"]
