"""The docs cannot drift: every fenced example in README.md and docs/*.md is checked.

- JSON blocks parse; YAML blocks parse.
- Every ``stepchain ...`` command in a shell block (and every ``$ stepchain ...`` line of an
  output block) is parsed by the real ``stepchain`` argparse tree; ``stepchain bench NAME ...``
  and ``python -m MODULE ...`` by that module's own parser. Parsing only: nothing runs.
- Every ``locust -f loadtest/locustfile.py ...`` command is parsed by Locust's own parser with
  the locustfile's options registered, in a child process (importing Locust patches the
  interpreter with gevent).

Synopsis notation is read as a reader would: ``[--flag X]`` is the flag given, ``a|b`` (no
spaces) is the first alternative, ``<NAME>`` is the word NAME.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepsvc.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: The reference topics the README links to (others add their own files beside these).
REFERENCE = ("kernels.md", "step-server.md", "pipeline-json.md", "topology-api.md",
             "tracing-metrics.md", "load-testing.md", "kubernetes.md", "benchmarks.md",
             "development.md")
README_LIMIT_BYTES = 12 * 1024
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
#: Modules whose ``python -m`` command lines are checked (they parse argv in ``main``).
PYTHON_MODULE_PREFIXES = ("bench.", "loadtest.", "stepsvc.", "topology.", "native.")
LOCUSTFILE = "loadtest/locustfile.py"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and first line."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*(```+)\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening.group(1), opening.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append(Block(path, start + 1, lang, "\n".join(body)))
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in fenced_blocks(path)]


def logical_lines(block: Block) -> Iterator[str]:
    """Shell lines of a block: continuations joined, comments dropped. In an untagged or
    console block only ``$ ``-prompted lines are commands (the rest is output)."""
    prompted_only = block.lang in ("", "console", "text")
    pending = ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if not pending:
            stripped = line.lstrip()
            if prompted_only:
                if not stripped.startswith("$ "):
                    continue
                line = stripped[2:]
            elif stripped.startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _reader_notation(line: str) -> str:
    """Synopsis notation made into plain words (see the module docstring)."""
    line = re.sub(r"\$\([^()]*\)", "SUBST", line)  # $(...) substitutions are not ours to check
    line = re.sub(r"\s\d*>&\d+", " ", line)  # 2>&1
    line = re.sub(r"\s\d+>", " >", line)  # 2> file
    line = re.sub(r"<([A-Za-z][\w.-]*)>", r"\1", line)  # <TRACE_ID> -> TRACE_ID
    line = re.sub(r"(\S+?)(?:\|[^\s|\]]+)+", r"\1", line)  # a|b|c -> a
    line = line.replace("[", " ").replace("]", " ").replace(" ... ", " ")
    return line


def commands_in(line: str, where: str) -> Iterator[Command]:
    """The simple commands of one shell line: split on pipes, ``&&``, ``;``, ``&``;
    redirections, trailing comments and leading ``VAR=value`` assignments removed."""
    lexer = shlex.shlex(_reader_notation(line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    current: list[str] = []
    skip_next = False
    for token in [*tokens, ";"]:
        if skip_next:
            skip_next = False
            continue
        if token in ("|", "||", "&&", ";", "&", ";;"):
            words = [w for w in current if w != "..."]
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            if words:
                yield Command(where, tuple(words))
            current = []
        elif token in ("<", ">", ">>", "&>", "<<<"):
            skip_next = True
        else:
            current.append(token)


def shell_commands() -> list[Command]:
    found: list[Command] = []
    for block in all_blocks():
        if block.lang not in SHELL_LANGS | {"", "text"}:
            continue
        for line in logical_lines(block):
            found.extend(commands_in(line, block.where))
    return found


def stepchain_commands() -> list[Command]:
    return [c for c in shell_commands() if c.argv[0] == "stepchain"]


def python_module_commands() -> list[Command]:
    return [c for c in shell_commands()
            if c.argv[0] in ("python", "python3") and len(c.argv) > 2 and c.argv[1] == "-m"
            and c.argv[2].startswith(PYTHON_MODULE_PREFIXES)]


def locust_commands() -> list[Command]:
    return [c for c in shell_commands()
            if c.argv[0] == "locust" and LOCUSTFILE in c.argv]


class _Parsed(Exception):
    """Raised instead of running a program once its parser accepted the arguments."""


@contextlib.contextmanager
def parse_only() -> Iterator[None]:
    """Every ArgumentParser.parse_args raises _Parsed after a successful parse."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, args: Any = None,
                        namespace: Any = None) -> Any:
        real(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]


def _argparse_error(call: Any) -> str | None:
    """None when `call` got past argument parsing; else what argparse said."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            with parse_only():
                call()
        except _Parsed:
            return None
        except SystemExit as exc:
            if exc.code in (0, None):  # --help
                return None
            return err.getvalue().strip() or f"exit {exc.code}"
    return "the program returned without parsing its arguments"


def stepchain_error(argv: Sequence[str]) -> str | None:
    """What the real `stepchain` parser says about `argv` (None: accepted)."""
    if len(argv) >= 2 and argv[0] == "bench":
        error = _argparse_error(lambda: build_parser().parse_args(list(argv[:2])))
        if error is not None:
            return error
        module = importlib.import_module(f"bench.{argv[1]}")
        return _argparse_error(lambda: module.main(list(argv[2:])))
    return _argparse_error(lambda: build_parser().parse_args(list(argv)))


def module_error(argv: Sequence[str]) -> str | None:
    """What `python -m MODULE ARGS`'s parser says (None: accepted)."""
    name, args = argv[0], list(argv[1:])
    if name in ("stepsvc.cli",):
        return stepchain_error(args)
    module = importlib.import_module(name)
    main = getattr(module, "main", None)
    if main is None:
        return f"{name} has no main(argv) to check its arguments with"
    return _argparse_error(lambda: main(args))


# -- the tests ----------------------------------------------------------------------------------


def test_the_readme_is_a_front_page_of_at_most_12_kb() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move reference to docs/"


def test_every_reference_topic_is_a_docs_file_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in REFERENCE:
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"
        assert f"](docs/{name}" in readme, f"README.md does not link docs/{name}"
    for path in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{path.name}" in readme, f"README.md does not link docs/{path.name}"


def test_every_relative_link_in_the_docs_points_to_a_file_that_exists() -> None:
    broken = []
    for path in [*DOCS, ROOT / "helm" / "stepchain" / "README.md"]:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_json_and_yaml_example_parses() -> None:
    bad = []
    for block in all_blocks():
        try:
            if block.lang == "json":
                json.loads(block.text)
            elif block.lang in ("yaml", "yml"):
                list(yaml.safe_load_all(block.text))
        except (ValueError, yaml.YAMLError) as exc:
            bad.append(f"{block.where}: {exc}")
    assert bad == []
    assert sum(b.lang == "json" for b in all_blocks()) >= 3  # the checker found the examples


def test_every_stepchain_command_shown_is_accepted_by_the_real_parser() -> None:
    commands = stepchain_commands()
    assert len(commands) >= 20, "the extractor lost the docs' stepchain commands"
    refused = [f"{c}\n    {error}" for c in commands
               if (error := stepchain_error(c.argv[1:])) is not None]
    assert refused == [], "\n".join(refused)


def test_every_python_module_command_shown_is_accepted_by_its_parser() -> None:
    refused = [f"{c}\n    {error}" for c in python_module_commands()
               if (error := module_error(c.argv[2:])) is not None]
    assert refused == [], "\n".join(refused)


LOCUST_CHECK = r"""
import json, sys
import locust.argument_parser as argument_parser
import loadtest.locustfile  # registers --curve, --duration, --image, ... like `locust -f` does
results = []
for argv in json.loads(sys.argv[1]):
    try:
        argument_parser.parse_options(args=argv)
        results.append(None)
    except SystemExit as exc:
        results.append(f"exit {exc.code}")
print(json.dumps(results))
"""


@pytest.mark.slow  # a child interpreter imports Locust (gevent): ~3 s idle, 12 s loaded
def test_every_locust_command_shown_is_accepted_by_locusts_parser() -> None:
    commands = locust_commands()
    assert commands, "the extractor found no `locust -f loadtest/locustfile.py` command"
    argvs = [list(c.argv[1:]) for c in commands]
    # A made-up option last: the check must refuse it (it cannot pass vacuously).
    argvs.append(["-f", LOCUSTFILE, "--curve", "ramp", "--no-such-option", "1"])
    done = subprocess.run([sys.executable, "-c", LOCUST_CHECK, json.dumps(argvs)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    *results, made_up = json.loads(done.stdout.strip().splitlines()[-1])
    assert made_up is not None, "Locust's parser accepted a made-up option"
    refused = [f"{c}\n    {r}" for c, r in zip(commands, results, strict=True) if r is not None]
    assert refused == [], "\n".join(refused) + "\n" + done.stderr[-2000:]


def test_the_checker_refuses_a_flag_the_cli_does_not_have() -> None:
    # The checks above cannot pass vacuously: a made-up flag is reported.
    (command,) = list(commands_in(
        "stepchain submit photo.png --target $ENTRY --out out.png --no-such-flag", "example"))
    assert "unrecognized arguments: --no-such-flag" in str(stepchain_error(command.argv[1:]))
    (bench,) = list(commands_in("stepchain bench kernels --no-such-flag", "example"))
    assert "--no-such-flag" in str(stepchain_error(bench.argv[1:]))


@pytest.mark.parametrize(("line", "expected"), [
    ("A=1 stepchain submit x.png --target $ENTRY --out out.png > log 2>&1 &",
     [("stepchain", "submit", "x.png", "--target", "$ENTRY", "--out", "out.png")]),
    ("stepchain request p.png > request.json && grpcurl -d @ h:1 s/M < request.json",
     [("stepchain", "request", "p.png"), ("grpcurl", "-d", "@", "h:1", "s/M")]),
    ("stepchain topology serve [--backend local|kubernetes] [--port 8080]",
     [("stepchain", "topology", "serve", "--backend", "local", "--port", "8080")]),
    ("stepchain trace show <TRACE_ID> --jaeger http://x:16686  # a comment",
     [("stepchain", "trace", "show", "TRACE_ID", "--jaeger", "http://x:16686")]),
])
def test_shell_lines_are_read_as_a_reader_would(line: str,
                                                expected: list[tuple[str, ...]]) -> None:
    assert [c.argv for c in commands_in(line, "example")] == expected


def test_the_helm_readme_documents_every_value() -> None:
    values = yaml.safe_load((ROOT / "helm" / "stepchain" / "values.yaml").read_text())
    table = (ROOT / "helm" / "stepchain" / "README.md").read_text(encoding="utf-8")

    def keys(node: Any, prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in ("resources",
                                                                  "jaeger.resources"):
                yield from keys(value, path + ".")
            else:
                yield path

    missing = [k for k in keys(values) if f"| `{k}` |" not in table]
    assert missing == [], f"helm/stepchain/README.md lacks rows for {missing}"
