"""Where a result came from: the source revision of the code that produced it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding the ``daps`` package: the repository root of a source checkout."""


def source_revision(root: str | Path = PACKAGE_ROOT) -> str:
    """``<commit>`` of the git checkout whose top folder is ``root``, with ``+dirty`` when tracked files have
    uncommitted changes; otherwise (an installed wheel, also one inside another repository, a copied tree)
    ``$DAPS_GIT_REVISION``, else ``unknown``."""
    try:
        top, commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.splitlines()  # lines: a checkout's path may hold spaces
        if Path(top).resolve() != Path(root).resolve():  # an installed daps inside some other repository
            return os.environ.get("DAPS_GIT_REVISION", "unknown")
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):  # no git here: what the caller says, if any
        return os.environ.get("DAPS_GIT_REVISION", "unknown")
    return commit + ("+dirty" if dirty else "")
