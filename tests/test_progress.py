"""Progress bars (daps.progress) on a terminal: log lines printed once, above the bar; nothing drawn elsewhere."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from daps.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _console(monkeypatch) -> _Terminal:
    """Standard error as a fake terminal, with a console handler on the root logger as ``daps``'s CLI sets up
    (``logging.basicConfig``), and no other handler in the way. Called in the test itself: pytest sets its own
    capture back on ``sys.stderr`` after the fixtures have run."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(terminal)])
    monkeypatch.setattr(logging.getLogger("daps"), "handlers", [])
    logging.getLogger("daps").setLevel(logging.INFO)  # setLevel, not the attribute: it clears the cached levels
    return terminal


@pytest.fixture(autouse=True)
def _daps_level():
    """The ``daps`` logger's level as it was before each test (set back through setLevel, for the same reason)."""
    level = logging.getLogger("daps").level
    yield
    logging.getLogger("daps").setLevel(level)


def test_a_log_line_inside_a_bar_is_printed_once_on_its_own_line(monkeypatch):
    """Fails on: the bar without the logging redirect (the line glued to the bar, "image/s]skipping"), or tqdm's
    redirect handed the ``daps`` logger, which has no handler of its own (every line printed twice)."""
    console = _console(monkeypatch)
    with progress_bar(3, "evaluating", "image") as bar:
        bar.update(1)
        bar.refresh()
        logging.getLogger("daps.data").warning("skipping unreadable image file bad.jpg")
        bar.update(2)
    text = console.getvalue()
    assert text.count("skipping unreadable image file bad.jpg") == 1
    assert "\nskipping" in text.replace("\r", "\n")  # at the start of a line, not after the bar
    assert "image/s]skipping" not in text


def test_the_bar_is_erased_when_the_block_fails(monkeypatch):
    """An error inside the block closes the bar first, so the error line that follows starts a clean line.
    Fails on: a bar closed only at the end of a loop that completes."""
    console = _console(monkeypatch)
    with pytest.raises(RuntimeError), progress_bar(10, "evaluating", "image") as bar:
        bar.update(3)
        bar.refresh()
        raise RuntimeError("bad file")
    assert "3/10" in console.getvalue()  # the bar was drawn
    console.write("daps eval: error: bad file\n")
    assert console.getvalue().replace("\r", "\n").splitlines()[-1] == "daps eval: error: bad file"


def test_the_redirect_keeps_levels_streams_and_file_handlers_and_puts_them_back(monkeypatch):
    """A user's own set-up: a console handler on ``daps`` at WARNING (the logger at INFO), one on ``daps.train``, a
    file handler. Inside the bar the WARNING handler still drops INFO lines (tqdm's own redirect dropped levels),
    the child logger's line is printed above the bar, the file gets its lines once; afterwards every handler is the
    original object again."""
    console = _console(monkeypatch)
    log_file = io.StringIO()  # stands for a FileHandler's stream: not a console, never redirected
    daps_log, child = logging.getLogger("daps"), logging.getLogger("daps.train")
    warn_only = logging.StreamHandler(console)
    warn_only.setLevel(logging.WARNING)
    to_file = logging.StreamHandler(log_file)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(daps_log, "handlers", [warn_only, to_file])
    monkeypatch.setattr(child, "handlers", [logging.StreamHandler(console)])
    monkeypatch.setattr(child, "propagate", False)
    before = (list(daps_log.handlers), list(child.handlers))
    with progress_bar(4, "evaluating", "image") as bar:
        bar.update(1)
        bar.refresh()
        daps_log.info("an info line")
        daps_log.warning("a warning line")
        child.info("a child line")
        bar.update(3)
    text = console.getvalue()
    assert "an info line" not in text  # below the console handler's level
    assert text.count("a warning line") == 1 and "image/s]a warning" not in text
    assert text.count("a child line") == 1 and "image/s]a child" not in text
    assert log_file.getvalue() == "an info line\na warning line\n"
    assert (daps_log.handlers, child.handlers) == before and all(
        a is b for a, b in zip(daps_log.handlers + child.handlers, before[0] + before[1]))


def test_without_any_logging_set_up_a_warning_is_printed_above_the_bar(monkeypatch):
    """No handler anywhere (a library user who never configured logging): Python's last-resort handler would glue
    the warning to the bar; inside the bar ``daps`` has one of its own that prints it above, and none afterwards."""
    console = _console(monkeypatch)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging, "lastResort", logging.StreamHandler(console))
    with progress_bar(2, "evaluating", "image") as bar:
        bar.update(1)
        bar.refresh()
        logging.getLogger("daps.data").warning("skipping bad.jpg")
    text = console.getvalue()
    assert text.count("skipping bad.jpg") == 1 and "image/s]skipping" not in text
    assert logging.getLogger("daps").handlers == []


def test_a_failing_train_run_closes_its_bar_before_the_error_line(monkeypatch, tiny_overrides, tmp_path):
    """``daps train`` on a terminal, diverging at its first validation: the bar is closed (ended by its newline)
    before the error line, not left open with the error glued after it. Fails on: the bar closed only when the loop
    completes."""
    import daps.train
    from daps.cli import main

    def diverge(*args, **kwargs):
        raise daps.train.TrainingDiverged("forced divergence")

    console = _console(monkeypatch)
    monkeypatch.setattr(daps.train, "_evaluate", diverge)
    assert main(["train", *tiny_overrides, "train.progress=true", f"train.out_dir={tmp_path / 'run'}"]) == 3
    text = console.getvalue()
    error = text.index("daps train: error: forced divergence")
    assert "/6 [" in text[:error] and "/6 [" not in text[error:]  # the bar was drawn, and not again after
    assert text[:error].endswith("\n")  # the error line starts a line of its own


def test_nothing_is_drawn_off_a_terminal(monkeypatch):
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    with progress_bar(5, "evaluating", "image") as bar:
        bar.update(5)
    assert plain.getvalue() == ""


def test_train_on_a_terminal_prints_each_validation_line_once(tiny_overrides, tmp_path):
    """``daps train`` in a real pseudo-terminal: each "step N: val ..." line once (they were printed twice, the
    redirect being handed the ``daps`` logger while the CLI's handler sits on the root)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns for the bar
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daps", "train", *tiny_overrides, "train.progress=true", "train.eval_every=2",
         "train.log_every=2", f"train.out_dir={tmp_path / 'run'}"],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "/6 [" in text  # a bar over the 6 steps was drawn
    for step in (2, 4):
        assert text.count(f"step {step}: val") == 1, text  # once, not again glued after the bar ("eta=100]step 2")
