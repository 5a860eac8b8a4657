"""Progress bars on a terminal: shown only when standard error is one (output redirected to a file, or parsed as
``--json``, stays clean), with daps's log lines printed above the bar instead of glued to it or printed twice."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any


def redirect_logging() -> AbstractContextManager:
    """While entered, console log lines go through ``tqdm.write`` (above the bar): those of the loggers among the
    root (where the CLI's ``logging.basicConfig`` puts its handler) and ``daps`` (where a library user may put one)
    that have a handler writing to the console. tqdm gives every logger it is handed a handler, so handing it
    ``daps`` without one of its own printed each line twice: once there, once where it propagated."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    loggers = [logger for logger in (logging.root, logging.getLogger("daps")) if any(
        isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers)]
    return logging_redirect_tqdm(loggers=loggers) if loggers else nullcontext()


@contextmanager
def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0,
                 leave: bool = False) -> Iterator[Any]:
    """A ``tqdm`` bar over ``total`` items (``bar.update(n)``), disabled (the same methods, drawing nothing) unless
    ``enabled`` and standard error is a terminal; closed (and, without ``leave``, erased) however the block ends,
    so an error line is not printed after a half-drawn bar."""
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not shown, dynamic_ncols=True,
               mininterval=1.0, leave=leave)
    try:
        if shown:
            with redirect_logging():
                yield bar
        else:
            yield bar
    finally:
        bar.close()
