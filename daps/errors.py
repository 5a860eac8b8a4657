"""The one exception type for problems with what the user gave: a setting, a path, a file, a command line.

``daps`` commands print a :class:`UserError` as one line and exit with code 2; any other exception is a bug and
keeps its traceback. It is a ``ValueError``, so library callers can catch either.
"""


class UserError(ValueError):
    """A bad setting, path, file or argument; the message names it."""


__all__ = ["UserError"]
