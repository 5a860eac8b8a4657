"""The command lines the documents show still run: no renamed flag, removed command, preset, method or script, and
no config key that no longer exists (doc rot).

Documents: README.md, BENCHMARKS.md, docs/*.md and docs/**/README.md (the result folders' reports under docs/ record
the commands that made them, at their revision: they are history, not instructions). Commands are read from
```bash (or unlabelled) blocks, one per line after joining ``\\`` continuations (and the README's synopsis lines that
continue with ``[``), and from inline ``code`` spans. Kinds:

- ``daps ...``, ``python -m daps ...``, ``python -m daps.cli ...`` and ``torchrun ... -m daps ...``: the
  (sub)command must exist in ``daps.cli._parser()`` and every ``--flag`` shown must be one of its options, spelled
  out (argparse would take an abbreviation, which a later flag can make ambiguous); ``key=value`` overrides must be
  settings of the config the command builds (``daps train``: the preset with its method; ``compare``: each method;
  ``prior train``, ``robot train``, ``robot track-train``: their settings dataclasses), applied as the CLI applies
  them. A command without synopsis notation is also parsed whole by ``parse_args`` (an inline span may leave out
  what the command requires: it names part of one), and ``daps compare`` plans its runs
  (:func:`daps.compare.plan_runs`: every arm's config built, nothing trained).
- ``python benchmarks/X.py``, ``python scripts/X.py``, ``bash scripts/X.sh`` (and a bare ``scripts/X.py`` span):
  the file must exist; a Python script's flags must be options of its parser, which is taken from the script's
  ``main()`` as it calls ``parse_args`` (the module is imported, nothing of the script runs); a command without
  synopsis notation is parsed whole, and the ``key=value`` overrides of scripts that take them must be settings
  of some method (the shared sections, or the method section they name).
- A prose span that is one setting, `train.tf32=true`: its key must exist (prose values are often symbols).

Placeholders: a synopsis (``[--seed 0]``, ``(--motion walk | --prompt TEXT)``, ``test|train``, ``...``, ``<run>``)
is checked as a fragment: its flags and concrete overrides. An override whose value is a placeholder (``$ref``,
``N``) is checked for its key alone; the literal ``key=value`` is skipped, and so are the few lines of :data:`SKIP`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import io
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from daps.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def documents() -> list[Path]:
    """The documents whose command lines are checked."""
    docs = REPO / "docs"
    return [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted(docs.glob("*.md")), *sorted(docs.glob("**/README.md"))]


SKIP = {
    # README, "Add a method": these run only after the reader has registered the example method `mymethod`.
    "daps train --method mymethod": "an example method the reader registers first",
    "daps compare --methods daps,mymethod": "an example method the reader registers first",
}
"""Command lines that are right but cannot be checked here, each with the reason."""


@dataclasses.dataclass
class Command:
    """One command line of a document: ``words`` as the shell splits them (environment assignments and the
    launcher, ``python -m``, ``torchrun ...``, removed), ``complete`` when it is a whole command to parse as is."""

    doc: Path
    line: int
    text: str
    kind: str  # "daps" or "script"
    words: list[str]
    complete: bool
    block: bool  # from a fenced block (a whole command), not an inline span (which may name part of one)
    unreadable: bool = False  # the shell could not split it (an unclosed quote)

    def where(self) -> str:
        return f"{self.doc.relative_to(REPO) if self.doc.is_relative_to(REPO) else self.doc}:{self.line}"


SYNOPSIS = re.compile(r"[\[\]()<>|]|\.\.\.|…")
"""A word with synopsis notation: optional parts, alternatives (``test|train``; in a shell command ``|`` would be a
pipe), placeholders of any length."""


def _launcher(words: list[str]) -> tuple[str, list[str]] | None:
    """(kind, words from the command or script path on) of a command line we check, or None for other commands."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # DAPS_DATA_DIR=... python ...
        words = words[1:]
    if not words:
        return None
    head = words[0]
    if head == "daps":
        return "daps", words
    if head == "torchrun" and "-m" in words:
        at = words.index("-m")
        return ("daps", ["daps", *words[at + 2:]]) if words[at + 1:at + 2] == ["daps"] else None
    if re.fullmatch(r"python3?", head):
        rest = words[1:]
        if rest[:2] in (["-m", "daps"], ["-m", "daps.cli"]):
            return "daps", ["daps", *rest[2:]]
        if rest and rest[0].endswith(".py"):
            return "script", rest
        return None  # python -m pytest ..., python -c ...
    if head == "bash" and len(words) > 1:
        return "script", words[1:]
    if re.fullmatch(r"(benchmarks|scripts)/[\w./-]+\.(py|sh)", head):
        return "script", words
    return None


def _command(doc: Path, line: int, text: str, block: bool) -> Command | None:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # an unclosed quote: a command of ours is reported, other text (prose in a block) is not
        words = None
    unreadable = words is None
    found = _launcher(text.split() if words is None else words)
    if found is None:
        return None
    kind, words = found
    if kind == "daps" and (len(words) == 1 or not re.fullmatch(r"[a-z][a-z-]*", words[1])):
        return None  # the package's name, or prose such as `daps (ess_target=0.25, ...)` (an arm's label)
    complete = not any(SYNOPSIS.search(w) for w in words)
    return Command(doc, line, text, kind, words, complete, block, unreadable=unreadable)


def commands_in(doc: Path) -> list[Command]:
    """Every command line of ``doc`` we check, in order (block lines joined, inline spans as written)."""
    text = doc.read_text()
    lines = text.splitlines()
    found: list[Command] = []
    prose = list(lines)  # the text outside fenced blocks, for the inline spans
    fence: str | None = None
    pending: tuple[int, str] | None = None  # a block command continued on the next line
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            prose[i - 1] = ""
            continue
        if fence is None:
            continue
        prose[i - 1] = ""
        if fence not in ("bash", "sh", "shell", "console", ""):
            continue
        if pending and stripped.startswith("[") and not pending[1].endswith("\\"):
            pending = (pending[0], pending[1] + " " + stripped)  # a synopsis continued on an indented line
            continue
        if pending and pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1] + " " + stripped)
            if not stripped.endswith("\\"):
                found += filter(None, [_command(doc, *pending, block=True)])
                pending = None
            continue
        if pending:
            found += filter(None, [_command(doc, *pending, block=True)])
        pending = (i, stripped)
        if not stripped.endswith("\\") and not stripped.startswith("daps "):
            found += filter(None, [_command(doc, *pending, block=True)])
            pending = None
    if pending:
        found += filter(None, [_command(doc, *pending, block=True)])
    outside = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", outside):
        span = " ".join(match.group(1).split())
        if span in SKIP:
            continue
        command = _command(doc, outside.count("\n", 0, match.start()) + 1, span, block=False)
        if command is not None:
            found.append(command)
    found.sort(key=lambda c: c.line)
    return found


# -- daps commands ------------------------------------------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name ({} for a parser without)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def command_parser(words: list[str]) -> tuple[str, argparse.ArgumentParser, list[str]]:
    """(the command's name, its parser, the words after it) of ``daps ...`` words (``daps prior train X`` ->
    ``("prior train", <parser>, ["X"])``); a ``LookupError`` names an unknown (sub)command."""
    from daps.cli import _parser

    parser, names, rest = _parser(), list[str](), words[1:]
    while subparsers(parser):
        choices = subparsers(parser)
        if not rest and names:  # `daps robot`: the group named in prose
            break
        if not rest or rest[0] not in choices:
            got = f"{rest[0]!r}" if rest else "nothing"
            raise LookupError(f"'{' '.join(['daps', *names])}' takes one of {', '.join(choices)}, got {got}")
        parser, names, rest = choices[rest[0]], [*names, rest[0]], rest[1:]
    return " ".join(names), parser, rest


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def _is_placeholder(value: str) -> bool:
    """A value standing for one the reader chooses: ``$ref``, ``N``, ``RUN_DIR``, ``M1,M2,...``, ``<run>``."""
    return bool(re.search(r"\$|\.\.\.|[<>]", value)) or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*(,[A-Z0-9_]+)*", value))


def _fragment(words: list[str], parser: argparse.ArgumentParser) -> tuple[dict[str, str], list[str], list[str]]:
    """(flag -> value, key=value words, problems) of a command's words after its (sub)command, read without
    ``parse_args``: synopsis brackets and alternatives dropped, each flag taking the value its action takes."""
    options, flags, overrides, problems = _options(parser), {}, [], []
    plain = [w.strip("[]()") for w in words]
    plain = [w for w in plain if w and w not in ("|", "...", "…")]
    i = 0
    while i < len(plain):
        word = plain[i]
        i += 1
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            name, eq, value = word.partition("=")
            action = options.get(name)
            if action is None:
                problems.append(f"no option {name}; it has {', '.join(sorted(o for o in options if o != '-h'))}")
                continue
            if action.nargs != 0 and not eq and i < len(plain) and not plain[i].startswith("--"):
                value, i = plain[i], i + 1
            if not _is_placeholder(value):
                flags[name] = value
        elif re.fullmatch(r"[a-z_][a-z0-9_.]*=.*", word) and not word.startswith("key="):
            overrides.append(word)
    return flags, overrides, problems


def _concrete(overrides: list[str], settings: dict[str, object]) -> list[str]:
    """``overrides`` with each placeholder value of a known setting replaced by its default (its key checked alone)."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if _is_placeholder(value) and key in settings:
            default = settings[key]
            value = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        out.append(f"{key}={value}")
    return out


def _flat(section: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _check_train(flags: dict[str, str], overrides: list[str]) -> None:
    from daps.config_io import config_to_dict, parse_overrides, refuse_ignored
    from daps.presets import get_preset

    cfg = get_preset(flags.get("--preset") or "mnist", flags.get("--method") or "daps")
    overrides = _concrete(overrides, _flat(config_to_dict(cfg)))
    refuse_ignored(parse_overrides(cfg, overrides), overrides)  # as `daps train` does before it trains


def _check_for_some_method(overrides: list[str], values: bool = True) -> None:
    """Settings for several methods at once (``compare``, the benchmarks): each must be a setting of the shared
    sections, or of the method section it names (:func:`daps.config_io.check_overrides_used`, which leaves the shared
    keys to the config each method builds: here the mnist preset's, as every preset has the same shared keys).
    Placeholder values, and all values unless ``values``, are left unchecked."""
    from daps.config_io import SHARED_SECTIONS, check_overrides_used, config_to_dict, parse_setting
    from daps.presets import get_preset

    cfg = get_preset("mnist")
    shared = _flat(config_to_dict(cfg))
    for item in overrides:
        key, _, value = item.partition("=")
        if not values or _is_placeholder(value):
            value = ""
        check_overrides_used([f"{key}={value}"])
        if key.split(".")[0] in SHARED_SECTIONS:
            parse_setting(cfg, key, value or _concrete([f"{key}=..."], shared)[0].partition("=")[2])


def _check_compare(flags: dict[str, str], overrides: list[str], args: argparse.Namespace | None) -> None:
    from daps.compare import plan_runs

    if args is None:  # a fragment: its preset and methods, and its settings against every method's
        from daps.presets import get_preset

        for method in filter(None, flags.get("--methods", "").split(",")):
            get_preset(flags.get("--preset") or "mnist", method)
        _check_for_some_method(overrides)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out or f"runs/compare-{args.preset}")
    plan_runs(args.preset, methods, args.steps, list(range(args.seeds)), out, args.overrides, args.vary)


def _check_settings(make: Callable[[], object]) -> Callable[[dict[str, str], list[str]], None]:
    """The check of a command whose ``key=value`` words set a flat settings dataclass (priors, robot policies)."""

    def check(flags: dict[str, str], overrides: list[str]) -> None:
        from daps.prior.run import apply_overrides

        cfg = make()
        apply_overrides(cfg, _concrete(overrides, dataclasses.asdict(cfg)))  # type: ignore[call-overload]

    return check


def _settings_checks() -> dict[str, Callable[[dict[str, str], list[str]], None]]:
    from daps.prior.run import PriorConfig
    from daps.robot.run import RobotConfig
    from daps.robot.tracker import TrackerConfig

    return {
        "train": _check_train,
        "prior train": _check_settings(PriorConfig),
        "robot train": _check_settings(RobotConfig),
        "robot track-train": _check_settings(TrackerConfig),
    }


PART_OF_A_COMMAND = re.compile(r"(are|is) required|expected (one|at least one) argument")
"""What argparse says of an inline span that names part of a command (`daps eval --json`, `daps compare --vary`):
what it leaves out, not what it gets wrong."""


def _parse(parser: argparse.ArgumentParser, command: Command, argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """``parse_known_args`` of ``argv``: (namespace, "") or (None, what argparse said); (None, "") for an inline
    span that leaves out what the command requires."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            args, extra = parser.parse_known_args(argv)
    except SystemExit:
        message = said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else "argparse exited"
        return None, "" if not command.block and PART_OF_A_COMMAND.search(message) else message
    args.extra = extra
    return args, ""


def daps_problems(command: Command) -> list[str]:
    """What is wrong with a ``daps ...`` command line (nothing: [])."""
    try:
        name, parser, rest = command_parser(command.words)
    except LookupError as err:
        return [str(err)]
    flags, overrides, problems = _fragment(rest, parser)
    if problems:
        return [f"daps {name}: {p}" for p in problems]
    takes_overrides = any(a.dest == "overrides" for a in parser._actions)
    args = None
    if command.complete:
        from daps.cli import _parser

        args, said = _parse(_parser(), command, command.words[1:])  # as daps.cli.main reads it
        if said:
            return [f"daps {name}: {said}"]
    if args is not None:
        unknown = [e for e in args.extra if e.startswith("-") or not takes_overrides]
        if unknown:
            return [f"daps {name}: unrecognized arguments {' '.join(unknown)}"]
        if takes_overrides:
            overrides = [*args.overrides, *args.extra]
        flags = {o: str(getattr(args, a.dest)) for o, a in _options(parser).items() if getattr(args, a.dest, None)}
    overrides = [o for o in overrides if not o.startswith("key=")] if takes_overrides else []
    try:
        if name == "compare":
            _check_compare(flags, overrides, args)
        elif name in _settings_checks():
            _settings_checks()[name](flags, overrides)
    except UserError as err:
        return [f"daps {name}: {err}"]
    return []


# -- scripts ------------------------------------------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


_SCRIPT_PARSERS: dict[Path, argparse.ArgumentParser] = {}


def script_parser(path: Path) -> argparse.ArgumentParser:
    """The argparse parser a script's ``main()`` builds, captured as it calls ``parse_args`` (the script is imported
    as a module, not run: its work starts after that call)."""
    if path not in _SCRIPT_PARSERS:
        spec = importlib.util.spec_from_file_location(f"doc_commands_{path.parent.name}_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # for the benchmarks' `from run import ...`, as when a script runs
        original = argparse.ArgumentParser.parse_args

        def capture(self, *args, **kwargs):
            raise _Captured(self)

        argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
        try:
            spec.loader.exec_module(module)
            main = module.main
            main(*([[]] if inspect.signature(main).parameters else []))
            raise AssertionError(f"{path.name}: main() returned without calling parse_args")
        except _Captured as captured:
            _SCRIPT_PARSERS[path] = captured.parser
        finally:
            argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
            sys.path.remove(str(path.parent))
    return _SCRIPT_PARSERS[path]


def script_problems(command: Command) -> list[str]:
    """What is wrong with a ``python benchmarks/X.py ...`` or ``bash scripts/X.sh ...`` line (nothing: [])."""
    relative, *rest = command.words
    path = REPO / relative
    if not path.is_file():
        return [f"{relative}: no such file"]
    if path.suffix != ".py":
        return []  # shell scripts: no parser to read (scripts/demo.sh passes its arguments on to `daps train`)
    parser = script_parser(path)
    flags, overrides, problems = _fragment(rest, parser)
    if problems:
        return [f"{relative}: {p}" for p in problems]
    takes_overrides = any(a.dest == "overrides" for a in parser._actions)
    args, said = _parse(parser, command, rest) if command.complete else (None, "")
    if said:
        return [f"{relative}: {said}"]
    if args is not None:
        if args.extra:
            return [f"{relative}: unrecognized arguments {' '.join(args.extra)}"]
        overrides = list(args.overrides) if takes_overrides else []
    if takes_overrides:
        try:
            _check_for_some_method([o for o in overrides if not o.startswith("key=")])
        except UserError as err:
            return [f"{relative}: {err}"]
    return []


SETTING = re.compile(r"(?<!`)`([a-z_]+(?:\.[a-z_0-9]+)+)=[^`\s]*`(?!`)")
"""An inline span that is one ``section.key=value`` setting, e.g. `train.tf32=true`."""


def setting_problems(doc: Path) -> tuple[int, list[str]]:
    """(how many ``section.key=value`` spans ``doc`` has, ``"doc:line: problem"`` for each whose key is no
    setting). Keys only: prose gives symbolic values (`daps.resample=m`, `data.image_shape=3,H,W`)."""
    text, problems, count = doc.read_text(), [], 0
    for match in SETTING.finditer(text):
        key = match.group(1)
        if key.startswith("mymethod."):  # README, "Add a method": the example method's own setting
            continue
        count += 1
        try:
            _check_for_some_method([f"{key}="], values=False)
        except UserError as err:
            line = text.count("\n", 0, match.start()) + 1
            where = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
            problems.append(f"{where}:{line}: {err}  (in: {match.group(0)})")
    return count, problems


def problems_of(command: Command) -> list[str]:
    """``"doc:line: problem (in: command)"`` for each problem of ``command``."""
    if command.unreadable:
        found = ["the shell cannot split it (an unclosed quote)"]
    else:
        found = daps_problems(command) if command.kind == "daps" else script_problems(command)
    return [f"{command.where()}: {p}  (in: {command.text})" for p in found]


# -- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_line_of_the_document_is_valid(doc):
    commands = commands_in(doc)
    assert commands, f"{doc.relative_to(REPO)}: no command line found (has the way they are written changed?)"
    problems = [p for c in commands for p in problems_of(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_setting_the_document_names_in_prose_exists(doc):
    """Inline `section.key=value` spans outside commands (`train.tf32=true`): the key is a setting."""
    _, problems = setting_problems(doc)
    assert not problems, "\n".join(problems)


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def _problems(doc: Path) -> list[str]:
    return [p for c in commands_in(doc) for p in problems_of(c)]


def test_a_renamed_flag_in_a_copy_of_the_readme_is_reported_with_its_line(tmp_path):
    text = (REPO / "README.md").read_text()
    assert "--preset mnist5k-demo`" in text
    broken = _doc(tmp_path, text.replace("`daps train --preset mnist5k-demo`", "`daps train --stepz 5`", 1))
    problems = _problems(broken)
    line = text[: text.index("`daps train --preset mnist5k-demo`")].count("\n") + 1
    assert len(problems) == 1 and problems[0].startswith(f"{broken}:{line}: daps train: no option --stepz"), problems


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ("daps train --preset mnist train.stepz=5", "unknown config key 'train.stepz'"),
        ("daps train --preset mnist --method fsq daps.num_samples=4", "unknown config key 'daps.num_samples'"),
        ("daps train --preset mnistt", "unknown preset 'mnistt'"),
        ("daps train --method dapz", "dapz"),
        ("daps train --preset mnist encoder.vocab_size=16 train.steps=five", "train.steps: expected an integer"),
        ("daps trian --preset mnist", "'daps' takes one of"),
        ("daps prior sample runs/p --out x.png --lable 3", "no option --lable"),
        ("daps train --step 5", "no option --step"),  # an abbreviation argparse would take
        ("daps eval RUN --split validation", "invalid choice: 'validation'"),
        ("daps compare --preset mnist --methods daps --steps 5 \\\n    --vary daps.num_samplez=2,4", "num_samplez"),
        ("daps compare --preset mnist --methods daps,vqvae --steps N optim.lrr=1e-3", "optim.lrr"),
        ("daps prior train codes.safetensors --out p \\\n    [widht=128 ...]", "unknown setting 'widht'"),
        ("for ref in false true; do\n  daps robot track-train RUN --out t frames=1 actor_sees_referenc=$ref\ndone",
         "unknown setting 'actor_sees_referenc'"),
        ("python benchmarks/no_such_script.py --rounds 3", "no such file"),
        ("bash scripts/no_such.sh", "no such file"),
        ("python benchmarks/attention.py --roundz 5", "no option --roundz"),
        ("python benchmarks/learning_curve.py --steps 5 --run-dir r optim.lrr=1e-3", "optim.lrr"),
        ("python benchmarks/against_revision.py --rounds 3", "required: --revision"),
    ],
)
def test_a_wrong_command_line_in_a_block_is_reported(tmp_path, block, said):
    doc = _doc(tmp_path, f"Intro.\n\n```bash\n{block}\n```\n")
    problems = _problems(doc)
    line = 5 if block.startswith("for ") else 4  # the loop's command is on its second line
    assert len(problems) == 1 and problems[0].startswith(f"{doc}:{line}: ") and said in problems[0], problems


@pytest.mark.parametrize(
    "block",
    [
        "daps train --preset mnist train.steps=5 --threads 1",
        "DAPS_DATA_DIR=../data python -m daps train --preset cifar10 data.name=cifar10-jpeg daps.resample=2",
        "torchrun --nproc_per_node=2 -m daps train --preset mnist --method vqvae vq.commitment=0.5",
        "daps compare --preset mnist --methods daps,vqvae --steps 10 --vary daps.num_samples=2,4 optim.lr=1e-3",
        "daps robot plan runs/p (--motion walk | --prompt TEXT) [--seconds 10] --out walk.mp4",
        "daps robot track-train RUN --out t frames=1000 actor_sees_reference=$ref",
        "python benchmarks/learning_curve.py --steps N --run-dir DIR [key=value ...]",
        "python benchmarks/learning_curve.py --steps 5 --run-dir r daps.init_eta=1.0 optim.lr=1e-3",
        "pip install -e .   # not a command of ours",
    ],
)
def test_a_valid_command_line_passes(tmp_path, block):
    assert _problems(_doc(tmp_path, f"```bash\n{block}\n```\n")) == []


def test_a_setting_named_in_prose_that_does_not_exist_is_reported(tmp_path):
    doc = _doc(tmp_path, "Set `train.tf32=true`,\n`daps.resample=m` or `train.tf33=true`; `vq.commitmnt=1`.\n")
    count, problems = setting_problems(doc)
    assert count == 4 and len(problems) == 2, problems
    assert "README.md:2: unknown config key 'train.tf33'" in problems[0], problems
    assert "README.md:2: unknown config key 'vq.commitmnt'" in problems[1], problems


def test_inline_spans_are_checked_as_fragments_and_continuations_are_joined(tmp_path):
    doc = _doc(tmp_path, "Run `daps eval RUN --jsn` or `daps robot`.\nThen\n```bash\ndaps train --preset mnist \\\n"
                         "    --threads 1 \\\n    train.stepz=3   # a comment\n```\n")
    assert [c.line for c in commands_in(doc)] == [1, 1, 4]
    problems = _problems(doc)
    assert len(problems) == 2 and "1: daps eval: no option --jsn" in problems[0], problems
    assert "4: daps train: unknown config key 'train.stepz'" in problems[1], problems
