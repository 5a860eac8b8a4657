"""A progress bar for the commands that pass over a whole dataset (``eval``, ``fid-stats``, ``export-codes``): shown
on a terminal only, so that output redirected to a file or parsed as ``--json`` stays clean."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> Any:
    """A ``tqdm`` bar over ``total`` items, disabled (a no-op with the same methods) unless ``enabled`` and standard
    error is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True,
                mininterval=1.0, leave=False)
