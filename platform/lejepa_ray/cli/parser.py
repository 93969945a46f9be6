"""A command's arguments to its options and pretrain config, with jsonargparse.

:func:`build_parser` generates one command's parser from its
:class:`~lejepa_ray.cli.commands.Command`: the options dataclass's fields (their types,
defaults and attribute docstrings; the positional ones by position) and, for the commands that
take one, every key of :class:`~lejepa_ray.config.PretrainConfig` as a dotted flag.
:func:`parse` reads ``--config`` first, so that the file's values become the flags' defaults and
a flag wins wherever it stands; it reads a bool flag given alone as true and ``--max-samples``
as ``--max_samples``, refuses the old ``key=value`` overrides with the flag to write instead,
and words the parser's complaints on one line. What it returns is the
:class:`~lejepa_ray.cli.handlers.Parsed` a handler gets.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from typing import Any

from lejepa_ray.cli.commands import COMMANDS, PROG, Command
from lejepa_ray.cli.handlers import Parsed
from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import ConfigError

_PRETRAIN_DESCRIPTION = (
    "Pretrain with LeJEPA. With no arguments: the CPU quickstart (digits, a small backbone, a "
    "few minutes, then probes on held-out images beside random init and raw pixels) on a local "
    "Ray instance; inside `ray job submit` or with RAY_ADDRESS set, on that cluster."
)


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), for positional arguments' help;
    jsonargparse reads the same docstrings for the flags."""
    # lazy: docstring_parser comes with jsonargparse and only a parser being built needs it.
    from docstring_parser import parse_from_object

    return {p.arg_name: p.description or "" for p in parse_from_object(cls).params}


def build_parser(name: str) -> Any:
    """The jsonargparse parser of one command, generated from its options and config."""
    # lazy: jsonargparse is for parsing; `import lejepa_ray.cli` stays light.
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    command = COMMANDS[name]
    options = command.options_class()
    if options is not None:
        doc = options.__doc__ or ""
    else:
        doc = _PRETRAIN_DESCRIPTION if name == "pretrain" else command.help
    usage = None
    if command.config:
        positional = " ".join(p.upper() for p in command.positional)
        usage = f"{PROG} {name} {positional} [--config FILE] [--KEY VALUE ...]".replace("  ", " ")
    parser = ArgumentParser(
        prog=f"{PROG} {name}",
        description=" ".join(doc.split()),
        usage=usage,
        exit_on_error=False,
        allow_abbrev=False,  # `--conf` is not `--config`: a flag is its field's whole name
    )
    if options is not None:
        docs = _field_docs(options)
        for field in command.positional:
            parser.add_argument(field, help=" ".join(docs.get(field, "").split()))
        skip = set(command.skip) | set(command.positional)
        parser.add_class_arguments(options, None, as_group=False, skip=skip, instantiate=False)
    if command.config:
        default = "the packaged CPU quickstart" if command.config == "quickstart" else "none"
        parser.add_argument(
            "--config",
            type=str,
            default=None,
            help=f"pretrain config YAML; the flags below override it (default: {default})",
        )
        parser.add_argument(
            "--show_config",
            type=bool,
            default=False,
            help="print the resolved pretrain config as YAML and exit",
        )
        parser.add_class_arguments(
            PretrainConfig, None, skip=set(command.config_skip), instantiate=False
        )
    return parser


_BOOL_VALUES = ("true", "false", "yes", "no", "1", "0")


def _leaves(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted name -> type hint of every leaf field of dataclass ``cls``, nested dataclasses'
    fields included (``scaling.use_gpu``); a dict-valued field such as ``model.model_args`` is
    a leaf."""
    # lazy: typing's resolution is only for building a parser.
    import typing

    out: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out.update(_leaves(hint, f"{prefix}{name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{name}"] = hint
    return out


def _bool_flags(cls: type) -> set[str]:
    """The flags of ``cls``'s bool fields (``--baseline``, ``--scaling.use_gpu``)."""
    return {f"--{name}" for name, hint in _leaves(cls).items() if hint is bool}


def _bare_bools(argv: list[str], flags: set[str]) -> list[str]:
    """``--baseline`` -> ``--baseline true``: a bool flag given alone turns its option on (the
    parser itself wants a value)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg in flags and following not in _BOOL_VALUES:
            out.append("true")
    return out


def _config_file(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv``, read before the full parse so that the file's
    values become the flags' defaults (the last one given counts, as for any flag).

    Raises:
        ConfigError: ``--config`` without a file.
    """
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            found = arg.partition("=")[2]
        elif arg == "--config":
            if i + 1 == len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config needs a file: --config FILE.yaml.")
            found = argv[i + 1]
    if found == "":
        raise ConfigError("--config needs a file: --config FILE.yaml.")
    return found


def _flatten(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """``{"loss": {"lam": 0.1}}`` -> ``{"loss.lam": 0.1}``, for every leaf of ``cls``."""

    def at(dotted: str) -> Any:
        value: Any = values
        for part in dotted.split("."):
            value = value[part]
        return value

    return {name: at(name) for name in _leaves(cls)}


def parse(name: str, argv: Sequence[str]) -> Parsed:
    """Parse one command's arguments into its options and config.

    Raises:
        ConfigError: an unknown flag, a missing or wrongly typed value, an invalid config.
    """
    # lazy: see build_parser.
    from jsonargparse import ArgumentError

    # lazy: OmegaConf reads config files; only commands that take one need it.
    from lejepa_ray.config import config_from_mapping, config_values, default_config

    command = COMMANDS[name]
    argv = [_underscored(a) for a in argv]
    _refuse_bare_overrides(argv, command)
    parser = build_parser(name)
    cls = command.options_class()
    bools = {"--show_config"} | (_bool_flags(cls) if cls else set())
    argv = _bare_bools(argv, bools | (_bool_flags(PretrainConfig) if command.config else set()))
    values: dict[str, Any] = {}
    given = _config_file(argv) if command.config else None
    if command.config:
        # The file's values become the flags' defaults, so that a flag wins wherever it is.
        path = given
        if path is None and command.config == "quickstart":
            path = str(default_config())
        values = config_values(path)
        parser.set_defaults(
            {
                k: v
                for k, v in _flatten(values, PretrainConfig).items()
                if k not in command.config_skip
            }
        )
    try:
        ns = parser.parse_args(list(argv)).as_dict()
    except ArgumentError as e:
        raise ConfigError(_parse_error(e, parser)) from None
    options = None
    if cls is not None:
        fields = {f.name for f in dataclasses.fields(cls)}
        options = cls(**{k: v for k, v in ns.items() if k in fields})
    cfg = None
    if command.config:
        keys = set(values) - command.config_skip  # a skipped key keeps the file's value
        cfg = config_from_mapping({**values, **{k: v for k, v in ns.items() if k in keys}})
    return Parsed(options, cfg, bool(ns.get("show_config")), given)


def _underscored(arg: str) -> str:
    """``--max-samples=5`` -> ``--max_samples=5``: a flag is its field's name, and dashes are
    read as the underscores they stand for."""
    if not arg.startswith("--"):
        return arg
    flag, eq, value = arg.partition("=")
    return "--" + flag[2:].replace("-", "_") + eq + value


_BARE_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def _refuse_bare_overrides(argv: Sequence[str], command: Command) -> None:
    """``loss.lam=0.02`` was the override syntax before the flags; say what it is now."""
    if not command.config:
        return
    for i, arg in enumerate(argv):
        after_flag = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        if _BARE_OVERRIDE.match(arg) and not after_flag:
            key, _, value = arg.partition("=")
            raise ConfigError(
                f"{arg!r}: config keys are flags, write --{key} {value} (or --{key}={value})."
            )


def _parse_error(error: Exception, parser: Any) -> str:
    """The parser's complaint on one line, with the closest flag for an unknown one."""
    message = " ".join(str(error).split())
    flags = [s for s in parser._option_string_actions if s.startswith("--")]
    required = re.match(r"the following arguments are required: (.+)$", message)
    if required:  # name the flags as they are typed: --data, not data
        names = [n.strip() for n in required.group(1).split(",")]
        given = [f"--{n}" if f"--{n}" in flags else n.upper() for n in names]
        return f"missing {', '.join(given)}: `{parser.prog} --help` describes them."
    unknown = re.search(r"unrecognized arguments: (--[\w.]+)", message)
    if unknown:
        close = difflib.get_close_matches(unknown.group(1), flags, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return f"{message}.{hint} `{PROG} {parser.prog.split(' ', 1)[1]} --help` lists them."
    return message
