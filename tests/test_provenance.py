"""The source revision recorded with results."""

from __future__ import annotations

import re

from daps.provenance import PACKAGE_ROOT, source_revision


def test_revision_of_a_checkout_and_outside_git(tmp_path, monkeypatch):
    if (PACKAGE_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", source_revision())
    monkeypatch.delenv("DAPS_GIT_REVISION", raising=False)
    assert source_revision(tmp_path) == "unknown"
    monkeypatch.setenv("DAPS_GIT_REVISION", "abc123")
    assert source_revision(tmp_path) == "abc123"
