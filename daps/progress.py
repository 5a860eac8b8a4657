"""Progress bars on a terminal: shown only when standard error is one (output redirected to a file, or parsed as
``--json``, stays clean), with log lines printed above the bar, once, instead of glued to it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _AboveTheBar(logging.StreamHandler):
    """Writes a record through ``tqdm.write``: the bars are cleared, the line printed, the bars drawn again."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # as logging.StreamHandler.emit: a broken stream does not stop the program
            self.handleError(record)


def _on_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


@contextmanager
def redirect_logging() -> Iterator[None]:
    """While entered, every console handler (writing to standard output or error) of the root logger, where the
    CLI's ``logging.basicConfig`` puts its handler, and of the ``daps`` loggers, where a library user may put one,
    is swapped in place for one that writes above the bar, with the same stream, level, formatter and filters; the
    originals are put back on exit. Handlers writing to files are left alone. Where no handler is set up at all
    (Python's last-resort handler would print warnings), ``daps`` gets one for the time of the bar, as that handler.
    """
    loggers = [logging.root, *(logging.getLogger(name) for name in sorted(logging.Logger.manager.loggerDict)
                               if name == "daps" or name.startswith("daps."))]
    swapped: list[tuple[logging.Logger, logging.Handler, _AboveTheBar]] = []
    for logger in loggers:
        for i, handler in enumerate(logger.handlers):
            if _on_console(handler):
                above = _AboveTheBar(handler.stream)  # type: ignore[attr-defined]
                above.setLevel(handler.level)
                above.setFormatter(handler.formatter)
                above.filters = list(handler.filters)
                logger.handlers[i] = above
                swapped.append((logger, handler, above))
    added = None
    if not any(logger.handlers for logger in loggers):  # as logging.lastResort: warnings and above, to stderr
        added = _AboveTheBar(sys.stderr)
        added.setLevel(logging.WARNING)
        logging.getLogger("daps").addHandler(added)
    try:
        yield
    finally:
        for logger, original, above in swapped:
            logger.handlers = [original if h is above else h for h in logger.handlers]
        if added is not None:
            logging.getLogger("daps").removeHandler(added)


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
