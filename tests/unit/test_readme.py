"""The README cannot drift: every command and code block in it is of a kind a test runs.

``tests/integration/test_readme.py`` runs the ``lejepa-ray`` commands and the Python blocks (at
a smaller step count), ``tests/integration/test_jobs.py`` submits the ``ray job submit``
commands to a real head, and CI runs ``make test``. Here: nothing is left out, and the lines
that only CI or the Makefile run say what those run."""

from __future__ import annotations

import re

from readme_helpers import README, ROOT, bash_commands, blocks, console_block, shape

KINDS = (
    re.compile(r"^make test$"),  # .ci/run runs it (checked below)
    re.compile(r"^pip install -c constraints\.txt -e \.$"),  # the Makefile's install (below)
    re.compile(r"^lejepa-ray "),  # tests/integration/test_readme.py
    re.compile(r"^ray job submit --working-dir \. -- python jobs/pretrain\.py "),  # test_jobs.py
)


def test_every_readme_command_is_one_a_test_runs():
    unknown = [c for c in bash_commands() if not any(k.search(c) for k in KINDS)]
    assert not unknown, f"README commands no test runs: {unknown}; run them in a test"
    languages = {lang for lang, _ in blocks()}
    assert languages <= {"bash", "python", "text"}, languages


def test_the_lines_ci_and_make_run_are_the_readme_s():
    assert "make test" in bash_commands()
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
    install = next(c for c in bash_commands() if c.startswith("pip install"))
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e" in makefile and install.startswith("pip install -c constraints")


def test_the_readme_is_short_and_in_the_promised_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == [
        "Set up and test",
        "Quickstart",
        "Pretrain on your own images",
        "Use what it learned",
        "Python API",
        "On a cluster",
        "Documentation",
    ]
    for link in re.findall(r"\]\((docs/[\w./-]+?)(?:#[\w-]+)?\)", text):
        assert (ROOT / link).is_file(), link


def test_the_console_block_is_a_whole_quickstart_run():
    kinds = shape(console_block())
    assert kinds[0] == "run" and "step" in kinds and kinds[-1] == "config", kinds
