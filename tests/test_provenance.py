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


def test_an_installed_daps_inside_another_repository_is_not_its_commit(tmp_path, monkeypatch):
    import subprocess

    project = tmp_path / "my project"  # a space in the path
    site = project / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (project / "notes.txt").write_text("a user's project")
    git = ["git", "-C", str(project), "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setenv("DAPS_GIT_REVISION", "abc123")
    assert source_revision(site) == "abc123"
    assert re.fullmatch(r"[0-9a-f]{40}", source_revision(project))  # the checkout itself: its commit


def test_machine_and_provenance_name_the_cpu_its_cpus_the_code_and_the_time(monkeypatch):
    """A result records what it ran on: the CPU model from /proc/cpuinfo (not ``x86_64``) with the CPUs it may use, the
    source revision, torch and a UTC timestamp."""
    import datetime
    import os

    import torch

    from daps import provenance as prov

    monkeypatch.setattr(prov, "_cpuinfo", lambda field: {"model name": "Test CPU 9000"}.get(field))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 5}, raising=False)  # 3 usable of the host's
    assert prov.machine_name() == "Test CPU 9000, 3 CPUs"
    record = prov.provenance()
    assert set(record) == {"code", "machine", "torch", "date"}
    assert record["code"] == source_revision() and record["torch"] == torch.__version__
    when = datetime.datetime.fromisoformat(record["date"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60


def test_a_run_records_its_jobs_and_forgets_those_whose_steps_were_lost(tmp_path, caplog):
    import json

    import torch

    from daps.provenance import JOBS_FILE, provenance, read_jobs, record_job

    run = tmp_path / "run"
    run.mkdir()
    assert read_jobs(run) == []  # a run trained before daps kept a record
    record_job(run, 0, torch.device("cpu"), 1)
    record_job(run, 40, torch.device("cpu"), 2)
    jobs = record_job(run, 80, torch.device("cpu"), 1)
    assert [j["from_step"] for j in jobs] == [0, 40, 80] and read_jobs(run) == jobs
    here = provenance()
    assert all(j["machine"] == here["machine"] and j["code"] == here["code"] and j["torch"] == here["torch"]
               and j["device"] == "cpu" for j in jobs)
    assert [j["processes"] for j in jobs] == [1, 2, 1]
    # Resumed from step 40 (the checkpoints after it were damaged): the jobs from 40 and 80 trained lost steps.
    assert [j["from_step"] for j in record_job(run, 40, torch.device("cpu"), 1)] == [0, 40]
    assert [j["processes"] for j in read_jobs(run)] == [1, 1]
    # A damaged record reads as empty and is replaced, with a warning that the earlier steps' origin is lost.
    (run / JOBS_FILE).write_text('{"format": 1, "jobs": [{"from_')
    assert read_jobs(run) == []
    with caplog.at_level("WARNING"):
        assert [j["from_step"] for j in record_job(run, 60, torch.device("cpu"), 1)] == [60]
    assert "first 60 steps" in caplog.text
    assert json.loads((run / JOBS_FILE).read_text())["format"] == 1
    for bad in ('{"jobs": [{"step": 0}]}', '[1, 2]', '{"jobs": {"from_step": 0}}'):
        (run / JOBS_FILE).write_text(bad)
        assert read_jobs(run) == [], bad
