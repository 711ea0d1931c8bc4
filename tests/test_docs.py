"""Every command line the README and the guides in docs/ show is one its parser accepts.

A command is a `turbo-ray …` or `python experiments/<script>.py …` line in a shell code block
(bash, sh, shell, console) or in inline code, wherever it sits in the line (after `ray job submit
… --`, after `VAR=value` assignments or a `$ ` prompt), with its `\\` continuations joined and its
`# comment` dropped. `turbo-ray` lines go to `turbo_ray.cli.build_parser()`; a script's to its
own `build_parser()`, or, for a script that forwards to a subcommand
(`main(["tune", *sys.argv[1:]])`), to that subcommand's; a script with neither takes no
arguments. Placeholders are fine as values: a whole token in capitals (`N`, `FILE`, `MODEL_DIR`)
or in angle brackets (`<k>`) stands for `1`, `…` for more arguments. Inline code that only names
a subcommand (`turbo-ray predict`) is a mention: the subcommand has to exist. No Ray starts; the
scripts are imported, not run."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import importlib.util
import io
import itertools
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
SCRIPT = re.compile(r"^(?:\./)?experiments/([\w-]+)\.py$")
PYTHON = re.compile(r"^python(?:3(?:\.\d+)?)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|<[^<>]+>)$")
FORWARDS = re.compile(r"""main\(\[\s*["']([\w-]+)["'],\s*\*sys\.argv\[1:\]\s*\]\)""")
# what a command looks like in the raw text, to check that every doc that shows one had it read
MENTIONS = re.compile(r"turbo-ray\s+[a-z]|python\S*\s+(?:\./)?experiments/[\w-]+\.py")
OPERATORS = {"|", "||", "&", "&&", ";", "(", ")"}


@dataclass(frozen=True)
class Command:
    """One command line of a doc: where it is, the program it runs and its arguments."""

    doc: str  # relative to the repository
    line: int
    text: str  # the logical line it came from
    program: str  # "turbo-ray" or "experiments/<script>.py"
    argv: tuple[str, ...]
    mention: bool  # inline code naming turbo-ray or a subcommand: no arguments to check
    error: str | None = None  # the line could not be split into words

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def strip_comment(line: str) -> str:
    """`line` without its shell comment (a `#` at the start or after a space, outside quotes)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def fenced_lines(lines: list[str], start: int, console: bool) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of a shell block whose first line is `start` (1-based):
    continuations joined, comments dropped; in a console block, only the `$ ` lines."""
    pending, first = "", start
    for number, raw in enumerate(lines, start):
        if not pending and console and not raw.lstrip().startswith("$ "):
            continue
        code = strip_comment(raw).rstrip()
        if not pending:
            first = number
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        yield first, pending + code
        pending = ""
    if pending:
        yield first, pending


def snippets(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, shell text, inline) of a Markdown text: each logical line of its shell
    blocks and each inline code span outside blocks."""
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence[1])),
            len(lines),
        )
        if fence[2].lower() in SHELL_FENCES:
            body = lines[i + 1 : end]
            for number, line in fenced_lines(body, i + 2, fence[2].lower() == "console"):
                yield number, line, False
        prose.append((i + 1, ""))  # a block ends a paragraph
        i = end + 1
    yield from inline_spans(prose)


def inline_spans(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str, bool]]:
    """Each inline code span of the prose lines, paragraph by paragraph (a span may run over a
    line break, never over a blank line)."""
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        joined = "\n".join(text for _, text in paragraph)
        ends = list(itertools.accumulate(len(text) + 1 for _, text in paragraph))
        for span in re.finditer(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", joined, re.DOTALL):
            row = bisect.bisect_right(ends, span.start())
            yield paragraph[row][0], " ".join(span[2].split()), True
        paragraph = []


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;()")
    lexer.whitespace_split = True
    return list(lexer)


def segments(words: list[str]) -> Iterator[list[str]]:
    """The simple commands of a line split at `|`, `&&`, `;` and the like."""
    current: list[str] = []
    for word in words:
        if word in OPERATORS:
            yield current
            current = []
        else:
            current.append(word)
    yield current


def program_of(words: list[str]) -> tuple[str, list[str]] | None:
    """The program a simple command runs and its arguments, wherever it starts (after
    assignments, a prompt, `ray job submit … --`); None if it runs neither."""
    for k, word in enumerate(words):
        if Path(word).name == "turbo-ray":
            return "turbo-ray", words[k + 1 :]
        if PYTHON.match(Path(word).name) and k + 1 < len(words) and SCRIPT.match(words[k + 1]):
            return SCRIPT.match(words[k + 1])[0].removeprefix("./"), words[k + 2 :]
    return None


def arguments(words: list[str]) -> tuple[str, ...]:
    """The arguments with placeholders filled in and ellipses and `[optional]` marks dropped."""
    out = []
    for word in words:
        if word in ("…", "..."):
            continue
        word = word.removeprefix("[").removesuffix("]")
        out.append("1" if PLACEHOLDER.match(word) else word)
    return tuple(out)


def commands_in(name: str, text: str) -> list[Command]:
    """Every command line of one doc (`name`, relative to the repository)."""
    found = []
    for number, snippet, inline in snippets(text):
        if not MENTIONS.search(snippet) and "turbo-ray" not in snippet:
            continue
        snippet = re.sub(r"^\s*\$\s+", "", snippet)
        try:
            words = tokens(snippet)
        except ValueError as err:  # an unclosed quote
            found.append(Command(name, number, snippet, "turbo-ray", (), False, str(err)))
            continue
        for simple in segments(words):
            while simple and ENV_ASSIGNMENT.match(simple[0]):
                simple = simple[1:]
            if run := program_of(simple):
                program, argv = run[0], arguments(run[1])
                # inline code naming turbo-ray or one subcommand, without flags: a mention
                mention = program == "turbo-ray" and inline and len(argv) <= 1
                mention = mention and not any(a.startswith("-") for a in argv)
                shown = " ".join(snippet.split())
                found.append(Command(name, number, shown, program, argv, mention))
    return found


COMMANDS = {
    doc.relative_to(REPO).as_posix(): commands_in(doc.relative_to(REPO).as_posix(), doc.read_text())
    for doc in DOCS
}
ALL = [command for found in COMMANDS.values() for command in found]


@functools.cache
def turbo_ray_parser() -> argparse.ArgumentParser:
    from turbo_ray.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of a parser (argparse keeps them in its private `_actions`)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@functools.cache
def script_parser(script: str) -> tuple[argparse.ArgumentParser | None, tuple[str, ...]]:
    """The parser a script's arguments go to and the words it puts before them: its own
    `build_parser()`, the turbo-ray subcommand it forwards to, or (None, ()) for no arguments."""
    path = REPO / script
    source = path.read_text()
    if "def build_parser" in source:
        sys.path.insert(0, str(path.parent))  # the scripts import each other by name
        try:
            name = f"experiments_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = sys.modules[name] = importlib.util.module_from_spec(spec)  # for dataclasses
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        return module.build_parser(), ()
    if forwarded := FORWARDS.search(source):
        return turbo_ray_parser(), (forwarded[1],)
    assert "argparse" not in source and "sys.argv" not in source, (
        f"{script} reads arguments but has no module-level build_parser()"
    )
    return None, ()


def rejection(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """argparse's complaint about `argv` (None: accepted); its output silenced."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code:
            lines = err.getvalue().strip().splitlines()
            return lines[-1] if lines else f"exit status {exit_.code}"
    return None


def problem(command: Command) -> str | None:
    """Why `command` would not run as written (None: it would)."""
    if command.error:
        return command.error
    if not (REPO / command.program).exists() and command.program != "turbo-ray":
        return f"no such script: {command.program}"
    if command.program == "turbo-ray":
        parser, before = turbo_ray_parser(), ()
    else:
        parser, before = script_parser(command.program)
    if command.mention:
        named = [*before, *command.argv]
        if named and parser is not None and named[0] not in subcommands(parser):
            return f"no subcommand {named[0]!r}"
        return None
    if parser is None:
        return f"takes no arguments, given {list(command.argv)}" if command.argv else None
    return rejection(parser, [*before, *command.argv])


@pytest.mark.parametrize("command", ALL, ids=[f"{c.doc}:{c.line}" for c in ALL])
def test_command_line_parses(command):
    assert (why := problem(command)) is None, f"{command}\n  {why}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_every_doc_that_shows_commands_had_them_read(doc):
    if MENTIONS.search(doc.read_text()):
        assert COMMANDS[doc.relative_to(REPO).as_posix()], f"{doc.name} shows commands, none read"


def test_the_docs_show_commands_of_each_kind():
    programs = {c.program for c in ALL if not c.mention}
    assert "turbo-ray" in programs
    assert "experiments/tune_iemocap.py" in programs
    assert len([c for c in ALL if not c.mention]) >= 20


def test_the_reader_joins_continuations_and_drops_comments_prompts_and_assignments():
    text = (
        "```bash\n"
        "$ HF_HUB_OFFLINE=1 .venv/bin/turbo-ray train --folds 1 \\\n"
        "    --seeds 0,1 loss.temperature=0.1   # a comment, with `--bogus`\n"
        "ray job submit -- \\   # submit\n"
        "    python experiments/tune_iemocap.py --num-samples N\n"
        "```\n"
        "\n"
        "Inline: `turbo-ray predict`, `turbo-ray export CHECKPOINT\nmodels/ser`, `--fold K`.\n"
        "```python\n"
        "run('turbo-ray train --bogus')\n"
        "```\n"
    )
    read = [(c.line, c.program, c.argv, c.mention) for c in commands_in("example.md", text)]
    assert read == [
        (
            2,
            "turbo-ray",
            ("train", "--folds", "1", "--seeds", "0,1", "loss.temperature=0.1"),
            False,
        ),
        (4, "experiments/tune_iemocap.py", ("--num-samples", "1"), False),
        (8, "turbo-ray", ("predict",), True),
        (8, "turbo-ray", ("export", "1", "models/ser"), False),
    ]


def test_a_rejected_command_names_its_doc_line_and_reason():
    (command,) = commands_in("docs/example.md", "`turbo-ray train --workers-per-trial 2`\n")
    assert str(command) == "docs/example.md:1: turbo-ray train --workers-per-trial 2"
    assert "unrecognized arguments: --workers-per-trial" in problem(command)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_every_relative_link_and_anchor_resolves(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.MULTILINE | re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # a URL
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}: no such heading in {linked.name}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)
