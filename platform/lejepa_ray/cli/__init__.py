"""`lejepa-ray` command line, generated from the options dataclasses of the Python API.

Every command is one entry of :data:`~lejepa_ray.cli.commands.COMMANDS`: its options
dataclass, whose fields and their docstrings become the flags, help and defaults, and the
function that runs it (the API's, in :mod:`lejepa_ray.api`) and prints its result. Commands
that run pretraining also take a pretrain config: ``--config FILE`` (default: the packaged
quickstart), then every config key as a dotted flag (``--loss.lam 0.02 --scaling.num_workers
8``), generated from :class:`~lejepa_ray.config.PretrainConfig`. One syntax serves every
command: ``--name value``, where the name is the field's (``--max_samples``; ``--max-samples``
is read the same).

Why jsonargparse: it builds argparse parsers from dataclasses, types and attribute docstrings,
nested dataclasses become the dotted flags a config's keys already are (LightningCLI's
convention, which many of our users know), and its errors are argparse's. tyro does the same
for flags but is built around its own annotations; click and typer would need every option
written again as a decorator.

Input errors (:class:`~lejepa_ray.errors.LejepaRayError`, and the parser's) are one line and
exit code 2; anything else is a bug and keeps its traceback.

Read in this order: ``commands`` (what a command is, and the table of them), ``handlers``
(what each command does once parsed: the API call and the lines it prints), ``parser`` (a
command's arguments to its options and config), and here :func:`main`, the console script's
entry point, which picks the command, parses, runs it and words its errors. Nothing heavy is
imported until a command runs or its parser is built: the command list and ``--version`` stay
fast. ``python -m lejepa_ray.cli`` is the same command (``__main__``).

May import: base, configs, objective, data, config, model, train, runs, evaluation, launch, tune,
api.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from lejepa_ray import __version__
from lejepa_ray.cli.commands import COMMANDS, PROG, Command
from lejepa_ray.cli.parser import parse
from lejepa_ray.errors import LejepaRayError, TrainingStopped


def _top_help(prefix: str = "") -> str:
    names = [n for n in COMMANDS if n.startswith(prefix)]
    width = max(len(n) for n in names)
    lines = [
        f"usage: {PROG} {prefix or ''}COMMAND [ARGS ...]",
        "",
        "Ray-distributed LeJEPA self-supervised pretraining for timm backbones.",
        f"`{PROG} COMMAND --help` describes a command; the Python API is the same: "
        "lejepa_ray.pretrain, evaluate, export, embed, sweep.",
        "",
        "commands:",
        *(f"  {n:<{width}}  {COMMANDS[n].help}" for n in names),
    ]
    return "\n".join(lines)


def _command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The command ``argv`` names (the longest registered prefix) and its arguments."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, list(argv[words:])
    return None, list(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in ([], ["-h"], ["--help"]):
        print(_top_help())
        return 2 if not argv else 0
    if argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    name, rest = _command(argv)
    if name is None:
        group = f"{argv[0]} " if any(n.startswith(f"{argv[0]} ") for n in COMMANDS) else ""
        print(_top_help(group), file=sys.stderr)
        what = f"{group}command" if group else "command"
        got = argv[1] if group and len(argv) > 1 else (argv[0] if not group else "none")
        print(f"{PROG}: error: unknown {what}: {got}", file=sys.stderr)
        return 2
    try:
        parsed = parse(name, rest)
        if parsed.show_config:
            # lazy: see parser.parse.
            from lejepa_ray.config import to_yaml

            assert parsed.config is not None
            print(to_yaml(parsed.config), end="")
            return 0
        return COMMANDS[name].run(parsed)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except TrainingStopped as e:
        print(f"{PROG}: training stopped: {e.worded(_as_flag(COMMANDS[name]))}", file=sys.stderr)
        return 1
    except LejepaRayError as e:
        # Configuration and input problems: the message says what to do, a traceback would
        # not. Anything else is a bug and keeps its traceback.
        print(f"{PROG}: error: {e.worded(_as_flag(COMMANDS[name]))}", file=sys.stderr)
        return 2


def _as_flag(command: Command) -> Callable[[str], str]:
    """How this command's line names a setting an error mentions: its positional argument
    (``SRC``) or its flag (``--shard_size_mb``, ``--loss.lam``)."""
    return lambda name: name.upper() if name in command.positional else f"--{name}"
