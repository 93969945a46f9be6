"""The README's code blocks and commands, read the way a test runs them.

Every fenced block of README.md is one of: a ``bash`` block of commands, a ``python`` block, or
the one ``text`` block that shows what the quickstart prints. ``tests/unit/test_readme.py``
checks that each command is of a kind some test runs; ``tests/integration/test_readme.py`` and
``tests/integration/test_jobs.py`` run them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(text: str | None = None) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    text = README.read_text() if text is None else text
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in body.splitlines():
        line = line.split("  #", 1)[0].rstrip() if "  #" in line else line.rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def bash_commands() -> list[str]:
    return [c for lang, body in blocks() if lang == "bash" for c in commands(body)]


def python_blocks() -> list[str]:
    return [body for lang, body in blocks() if lang == "python"]


def console_block() -> str:
    """The quickstart's output as the README shows it."""
    (text,) = [body for lang, body in blocks() if lang == "text"]
    return text


def job_commands() -> list[list[str]]:
    """The ``ray job submit`` commands, as the entry point's argv (after ``--``)."""
    jobs = [c for c in bash_commands() if c.startswith("ray job submit ")]
    return [shlex.split(c.split(" -- ", 1)[1]) for c in jobs]


def shape(output: str) -> list[str]:
    """What kinds of line a console output has, in order: each line's first word, repeated
    kinds collapsed (the step lines of a short and a long run are one kind)."""
    kinds: list[str] = []
    for line in output.splitlines():
        word = re.match(r"\s*([A-Za-z][\w-]*)", line)
        if not word:
            continue
        kind = word.group(1)
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return kinds
