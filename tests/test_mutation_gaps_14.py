"""Known answers for behaviour of the distributed helpers (daps/dist.py), the allocator (daps/allocator.py), the
classifier metrics (daps/metrics/classifier.py) and the graphed training step's CPU-checked parts (daps/graphed.py)
that a mutation sweep of those files found no test guarding. Each test names the slip it fails on; the references
are hand-worked cases: process groups stood in for by recording functions, two spawned gloo processes, tiny
tensors."""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------- dist: one process, a stand-in group


class _FakeGroup:
    """torch.distributed as ``dist.setup`` sees it under torchrun, each call recorded: ``init_process_group`` makes
    a default group of ``world`` processes (this one rank 0), ``new_group`` hands out numbered groups."""

    def __init__(self, monkeypatch, world: int, initialized: bool = False):
        import torch.distributed as tdist

        self.initialized, self.new_groups, self.destroyed = initialized, [], []
        monkeypatch.setattr(tdist, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(tdist, "init_process_group", self.init)
        monkeypatch.setattr(tdist, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(tdist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(tdist, "new_group", self.new_group)
        monkeypatch.setattr(tdist, "destroy_process_group", lambda group=None: self.destroyed.append(group))

    def init(self, backend, timeout=None):
        self.initialized = True

    def new_group(self, backend=None, timeout=None):
        self.new_groups.append((backend, timeout))
        return f"wait group {len(self.new_groups)}"


def test_teardown_after_torchrun_setup_destroys_the_default_group(monkeypatch):
    """Under torchrun (WORLD_SIZE=2, no group yet) ``setup`` makes the default group itself, so ``teardown``
    destroys that group (``destroy_process_group()``, which takes the wait group with it) rather than the wait
    group alone. Known answer: one wait group made (gloo, the 7-day timeout), then one destroy call, of the default
    group (``None``). Fails on: setup not recording that the group is its own (teardown destroys only the wait
    group and leaves torchrun's group, with its NCCL communicators, alive), or the wait group made without its
    backend or timeout (NCCL's, or the step's timeout, for waits on rank 0's host-side work)."""
    from daps import dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("DAPS_DIST_TIMEOUT_S", raising=False)
    group = _FakeGroup(monkeypatch, world=2)
    try:
        assert dist.setup(torch.device("cpu")) == (0, 2)
        assert group.new_groups == [("gloo", dist.WAIT_TIMEOUT)]
    finally:
        dist.teardown()
    assert group.destroyed == [None]


def test_setup_makes_one_wait_group_and_none_for_a_single_process(monkeypatch):
    """The wait group is made once: a second ``setup`` in the same (caller's) group of two reuses it, since
    ``new_group`` is a collective every rank must call alike and each call leaves a group behind; a caller's group
    of one process gets none (there is no other rank to wait). Known answers: one ``new_group`` call after two
    setups, none for a world of one. Fails on: the wait group made again at every setup, or made for a world of
    one."""
    from daps import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = _FakeGroup(monkeypatch, world=2, initialized=True)
    try:
        assert dist.setup(torch.device("cpu")) == (0, 2)
        assert dist.setup(torch.device("cpu")) == (0, 2)
        assert group.new_groups == [("gloo", dist.WAIT_TIMEOUT)] and dist._wait_group == "wait group 1"
    finally:
        dist.teardown()
    single = _FakeGroup(monkeypatch, world=1, initialized=True)
    try:
        assert dist.setup(torch.device("cpu")) == (0, 1)
        assert single.new_groups == [] and dist._wait_group is None
    finally:
        dist.teardown()


def test_barrier_waits_in_a_process_group_and_not_in_a_single_process(monkeypatch):
    """``dist.barrier`` is where every rank has inspected the run folder before rank 0 may empty it: in a process
    group it is one ``torch.distributed.barrier`` of the step's (default) group; in a single process it calls
    nothing. Known answers: no call without a group; one call, on the default group, with one. Fails on: the
    barrier dropped (rank 0 empties a folder that rank 1 is still reading, a race no two-process run shows
    reliably)."""
    import torch.distributed as tdist

    from daps import dist

    calls = []
    monkeypatch.setattr(tdist, "barrier", lambda group=None: calls.append(group))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    dist.barrier()
    assert calls == []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    dist.barrier()
    assert calls == [None]


def test_no_device_given_means_cuda_where_there_is_one(monkeypatch):
    """``resolve_device(None)`` is CUDA on a machine with CUDA, else the CPU (its docstring). Known answers, with
    ``torch.cuda.is_available`` stood in: ``cuda`` when it says True, ``cpu`` when False. Fails on: None always
    resolved to the CPU (a GPU machine silently training on its CPU)."""
    from daps.dist import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")


# --------------------------------------------------------------------------- dist: two gloo processes


def _sums_and_sync(rank: int, store: str, results) -> None:
    import torch.distributed as tdist

    from daps import dist

    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        values = torch.tensor([1.0, 10.0]) * (rank + 1)
        mean = dist.mean_over_ranks(values)
        kept = values.tolist()
        caught = []
        # the same weights on both ranks, a NaN among them: in sync (the finiteness check names NaN, not this one)
        same_nan = torch.tensor([1.0, float("nan"), 3.0])
        nan_against_zero = torch.tensor([float("nan") if rank == 0 else 0.0])
        # 1e8 + 1 vs 1e8 + 0: float32 sums round both to 1e8 (its spacing there is 8), float64 sums do not
        tiny_apart = torch.tensor([1e8, 1.0 - rank])
        for name, tensors in (("nan", [same_nan]), ("float32", [tiny_apart]), ("nan-0", [nan_against_zero])):
            try:
                dist.check_in_sync(tensors, name)
                caught.append("")
            except RuntimeError as e:
                caught.append(str(e))
        results.put((rank, mean.tolist(), kept, caught))
    finally:
        tdist.destroy_process_group()


def test_mean_over_ranks_leaves_its_input_and_the_sync_check_sums_in_float64(tmp_path):
    """Two gloo processes. ``mean_over_ranks`` of (1, 10) and (2, 20) is (1.5, 15) on both, and each rank's own
    tensor is still its own afterwards (the all-reduce works on a copy). ``check_in_sync`` passes the same weights
    holding a NaN on both ranks, and refuses weights (1e8, 1) against (1e8, 0), whose float32 sums are both 1e8,
    and a NaN on one rank against 0 on the other. Fails on: the copy dropped (the caller's tensor summed in place:
    (3, 30) on both), the sums left in float32 (the differing weights pass), NaN compared as is (identical weights
    called different), or NaN taken for 0 (a rank whose weights went NaN called in sync)."""
    from test_dist import two_processes

    for rank, mean, kept, (nan, float32, nan_zero) in two_processes(_sums_and_sync, tmp_path / "store"):
        assert mean == [1.5, 15.0], rank
        assert kept == [1.0 * (rank + 1), 10.0 * (rank + 1)], rank
        assert nan == "", (rank, nan)
        assert "float32: the processes hold different weights" in float32, (rank, float32)
        assert "nan-0: the processes hold different weights" in nan_zero, (rank, nan_zero)


# --------------------------------------------------------------------------- allocator: what is asked of malloc


class _Glibc:
    """A C library with glibc's symbol whose ``mallopt`` records its calls and answers 1 (glibc took the setting)
    for every parameter but ``refused`` (0)."""

    def __init__(self, calls: list, refused: int | None):
        self.gnu_get_libc_version = lambda: b"2.39"
        self.mallopt = _Mallopt(calls, refused)


class _Mallopt:
    def __init__(self, calls: list, refused: int | None):
        self.calls, self.refused = calls, refused

    def __call__(self, param, value):
        self.calls.append((param, value))
        return 0 if param == self.refused else 1


def test_keep_freed_memory_asks_glibc_for_exactly_its_two_settings(monkeypatch):
    """On glibc, ``keep_freed_memory`` calls ``mallopt(M_MMAP_MAX, 0)`` (no block is mmap'd) and
    ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` (the top of the heap is kept, up to the largest C int); glibc's
    malloc.h numbers them -4 and -1. It answers True only when glibc took both (mallopt returns 1), False when it
    refused either (returns 0). Known answers: the calls [(-4, 0), (-1, 2147483647)] and True; False when mallopt
    refuses the first or the second. Fails on: another parameter number (-2 is M_TOP_PAD, -3 M_MMAP_THRESHOLD),
    mmap still allowed for one block (M_MMAP_MAX 1), or True whatever mallopt answered."""
    from daps import allocator

    keep = allocator.keep_freed_memory.__wrapped__  # the function, without its once-per-process cache
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libc.so.6")
    for refused, took in ((None, True), (-4, False), (-1, False)):
        calls = []
        monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name, calls=calls, refused=refused: _Glibc(calls, refused))
        assert keep() is took, refused
        if took:
            assert calls == [(-4, 0), (-1, 2**31 - 1)]


def test_a_c_library_without_mallopt_changes_nothing(monkeypatch):
    """A C library that has no ``mallopt`` at all (its attribute lookup raises AttributeError, as ctypes does for a
    missing symbol) is not glibc's: ``keep_freed_memory`` answers False instead of raising. Known answer: False.
    Fails on: only OSError caught around the lookup (training refuses to start on such a system)."""
    from daps import allocator

    class NoMallopt:
        def __init__(self, name):
            pass

        def __getattr__(self, symbol):
            raise AttributeError(f"undefined symbol: {symbol}")

    keep = allocator.keep_freed_memory.__wrapped__
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: "libc.so")
    monkeypatch.setattr(allocator.ctypes, "CDLL", NoMallopt)
    assert keep() is False


# --------------------------------------------------------------------------- metrics/classifier: scores and files


class _ByFirstPixel(torch.nn.Module):
    """Logits whose top class is the image's first pixel (a whole number) in eval mode, and always class 9 in
    training mode (as a classifier with dropout would score differently there)."""

    def forward(self, x):
        classes = torch.full((len(x),), 9) if self.training else x.flatten(1)[:, 0].long()
        return torch.nn.functional.one_hot(classes, 10).float()


def test_accuracy_scores_every_batch_in_eval_mode():
    """``accuracy`` counts right answers over all batches, with the model in eval mode. Known answers: 7 images of
    classes 0..6 against labels 0, 1, 2, 9, 4, 9, 6 (two wrong) in batches of 3 (3 + 3 + 1) -> 5/7; the same model
    left in training mode beforehand still scores 5/7 (accuracy puts it in eval mode), and no labels score 0.0.
    Fails on: a batch other than the first left out, the model's training mode kept, or no labels dividing by
    zero."""
    from daps.metrics.classifier import accuracy

    images = torch.arange(7.0).view(7, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 9, 4, 9, 6])
    model = _ByFirstPixel().train()
    assert accuracy(model, images, labels, batch_size=3) == 5 / 7
    assert not model.training
    assert accuracy(model, images[:0], labels[:0]) == 0.0


def test_train_image_classifier_is_seeded_and_draws_from_every_image():
    """``train_image_classifier`` is determined by its seed (the initial weights as well as the batches), its
    learning rate defaults to 1e-3, and its batches are drawn from all N images. Known answers on two 28x28
    images: the same seed twice -> the same weights; ``lr=1e-3`` given -> the same weights as the default; the
    second image changed (the first kept) -> other weights after one step of 16 draws (both images are drawn with
    probability 1 - 2**-15). Fails on: the global seed not set (the initial weights differ from call to call),
    another default learning rate, or the draws leaving out the last image."""
    from daps.metrics.classifier import train_image_classifier

    images = torch.zeros(2, 1, 28, 28)
    images[0, :, :14] = 1.0
    labels = torch.tensor([0, 1])

    def weights(imgs, **kwargs):
        model = train_image_classifier(imgs, labels, steps=1, batch_size=16, **kwargs)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    reference = weights(images)
    torch.manual_seed(123)  # a different global state before the second call
    assert torch.equal(weights(images), reference)
    assert torch.equal(weights(images, lr=1e-3), reference)
    other = images.clone()
    other[1, :, 14:] = 1.0
    assert not torch.equal(weights(other), reference)


def test_classifier_files_that_are_not_ours_are_told_apart(tmp_path, monkeypatch):
    """What the classifier scripts and loader make of files that are not a classifier's. Known answers: a
    ``.safetensors`` of garbage (a header that is not JSON) is not a classifier's weights, and a JSON list naming
    the three report keys is not a report (both False, no exception); a folder given as the weights is "no mnist
    classifier at ..." with the command that trains one, and a file that cannot be read (an I/O error) is "not a
    readable classifier". Fails on: SafetensorError or a non-dict report escaping the checks, the folder sent to the
    reader, or an OSError while reading escaping as a traceback."""
    import pytest
    import safetensors

    from daps.errors import UserError
    from daps.metrics.classifier import (
        ImageClassifier,
        _is_classifier_report,
        _is_classifier_weights,
        load_image_classifier,
        save_image_classifier,
    )

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert _is_classifier_weights(junk) is False
    listed = tmp_path / "list.json"
    listed.write_text('["commit", "command", "torch"]')
    assert _is_classifier_report(listed) is False
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(UserError, match=r"^no mnist classifier at .*scripts/train_classifier.py --dataset mnist"):
        load_image_classifier("mnist", folder)
    path = save_image_classifier(ImageClassifier((1, 28, 28)), "mnist", {}, tmp_path / "c.safetensors")

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(safetensors, "safe_open", unreadable)
    with pytest.raises(UserError, match="is not a readable classifier"):
        load_image_classifier("mnist", path)


def test_the_motion_dataset_is_judged_by_the_motion_classifier(monkeypatch):
    """``classifier_for("lafan1-h1")`` is the motion classifier (``daps.motion.classifier.load_classifier``); a
    dataset without a classifier gets None. Known answers, the loader stood in: the loader's object, and None for
    ``lafan1``. Fails on: the motion dataset's name mistyped (humanoid motions never scored)."""
    import daps.motion.classifier
    from daps.metrics.classifier import classifier_for

    judge = object()
    monkeypatch.setattr(daps.motion.classifier, "load_classifier", lambda: judge)
    assert classifier_for("lafan1-h1") is judge
    assert classifier_for("lafan1") is None


# --------------------------------------------------------------------------- graphed: the CPU-checked parts


def test_torch_equal_is_traced_as_a_host_read():
    """``torch.equal`` answers a Python bool, so on a GPU it copies its answer to the host (a sync a CUDA graph
    cannot hold): the trace lists it, and the same comparison kept on the device (``(a == b).all()``) lists
    nothing. Known answers: one host read naming ``equal``; none. Fails on: ``equal`` missing from
    ``HOST_READS``."""
    from daps.graphed import StepTrace

    a, b = torch.arange(3.0), torch.arange(3.0)
    with StepTrace([]) as mode:
        (a == b).all()
    assert mode.host_reads == []
    with StepTrace([]) as mode:
        torch.equal(a, b)
    assert len(mode.host_reads) == 1 and "equal" in mode.host_reads[0]


def test_a_graphed_step_needs_capturable_optimizers():
    """A recording keeps the optimizers' learning rate and step counts where they were recorded unless they live on
    the device (``Optimizers(..., capturable=True)``): ``GraphedStep`` refuses other optimizers up front. Known
    answer: ValueError "GraphedStep needs Optimizers(..., capturable=True)" for ``capturable=False``; accepted for
    True. Fails on: the check dropped (replays silently train at the warm-up's learning rate and bias
    corrections)."""
    from types import SimpleNamespace

    import pytest

    from daps.graphed import GraphedStep

    with pytest.raises(ValueError, match=r"needs Optimizers\(\.\.\., capturable=True\)"):
        GraphedStep(None, SimpleNamespace(capturable=False), torch.Generator())  # type: ignore[arg-type]
    assert GraphedStep(None, SimpleNamespace(capturable=True), torch.Generator()).warmup == 3  # type: ignore[arg-type]


class _Scheduled:
    """Stands in for a method in :class:`GraphedStep`: schedule refills are no-ops; ``capturing`` is watched."""

    def __init__(self) -> None:
        self.capturing = False

    def fill_schedules(self, step: int) -> None:
        pass


def test_the_recording_flag_is_down_after_a_recording_and_after_a_failed_one(monkeypatch):
    """``model.capturing`` (the schedule buffers keep what ``fill_schedules`` wrote) is up only while the graph is
    recorded, whether the recording succeeds or raises. Known answers with ``warmup=1``: True inside ``_record``,
    False after the call that recorded; for a recording that raises, the error passes through, the flag is False
    and no graph is kept (the next call records again). Fails on: the flag left up after recording (every later
    ``fill_schedules`` then writes as if recording)."""
    from types import SimpleNamespace

    import pytest

    from daps.graphed import GraphedStep

    seen: list[bool] = []
    outputs = ({}, {})

    def record(self, step):
        seen.append(self.model.capturing)
        if step == 1:
            raise RuntimeError("recording failed")
        self._outputs, self.graph = outputs, object()
        return True  # as the emulated recording: it also ran the step

    monkeypatch.setattr(GraphedStep, "_eager", lambda self, step: outputs)
    monkeypatch.setattr(GraphedStep, "_record", record)
    monkeypatch.setattr(GraphedStep, "_replay", lambda self: None)
    model = _Scheduled()
    graphed = GraphedStep(model, SimpleNamespace(capturable=True, zero_grad=lambda: None),  # type: ignore[arg-type]
                          torch.Generator(), warmup=1)
    graphed(torch.zeros(2), 0)  # eager
    with pytest.raises(RuntimeError, match="recording failed"):
        graphed(torch.zeros(2), 1)
    assert model.capturing is False and graphed.graph is None
    assert graphed(torch.zeros(2), 2) is outputs
    assert seen == [True, True] and model.capturing is False
