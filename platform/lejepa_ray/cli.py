"""`lejepa-ray` command line, generated from the options dataclasses of the Python API.

Every command is one entry of :data:`COMMANDS`: its options dataclass, whose fields and their
docstrings become the flags, help and defaults, and the function that runs it (the API's, in
:mod:`lejepa_ray.api`) and prints its result. Commands that run pretraining also take a
pretrain config: ``--config FILE`` (default: the packaged quickstart), then every config key as
a dotted flag (``--loss.lam 0.02 --scaling.num_workers 8``), generated from
:class:`~lejepa_ray.config.PretrainConfig`. One syntax serves every command: ``--name value``,
where the name is the field's (``--max_samples``; ``--max-samples`` is read the same).

Why jsonargparse: it builds argparse parsers from dataclasses, types and attribute docstrings,
nested dataclasses become the dotted flags a config's keys already are (LightningCLI's
convention, which many of our users know), and its errors are argparse's. tyro does the same
for flags but is built around its own annotations; click and typer would need every option
written again as a decorator.

Input errors (:class:`~lejepa_ray.errors.LejepaRayError`, and the parser's) are one line and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from lejepa_ray import __version__
from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import ConfigError, LejepaRayError, TrainingStopped

PROG = "lejepa-ray"


@dataclass
class Parsed:
    """What a command's handler gets: its options, and the pretrain config if it takes one."""

    options: Any
    config: PretrainConfig | None
    show_config: bool = False
    config_file: str | None = None
    """The ``--config`` file the config started from (None: the defaults or the quickstart)."""


@dataclass(frozen=True)
class Command:
    """One command: everything the parser and ``main`` need to know about it."""

    help: str
    """One line for the command list."""
    run: Callable[[Parsed], int]
    """Runs the command and prints; returns the exit code."""
    options: str | None = None
    """The options dataclass, as ``module:Class``: flags, help and defaults come from its
    fields. It is imported when the command is parsed, so the command list and ``--version``
    stay fast; a command's ``--help`` imports its module (torch, and Ray for some: seconds)."""
    positional: tuple[str, ...] = ()
    """Fields given by position (``export RUN OUT``), not as flags."""
    config: str | None = None
    """Also take a pretrain config: ``quickstart`` (the default without ``--config``) or
    ``defaults`` (the dataclasses' defaults)."""
    skip: frozenset[str] = frozenset()
    """Fields of ``options`` that are not on the command line."""
    config_skip: frozenset[str] = frozenset()
    """Keys of the pretrain config that are not on the command line."""

    def options_class(self) -> type | None:
        if self.options is None:
            return None
        module, _, name = self.options.partition(":")
        return getattr(import_module(f"lejepa_ray.{module}"), name)


# Distributions whose versions matter when reporting a problem.
_REPORTED = (
    "lejepa-ray",
    "torch",
    "torchvision",
    "ray",
    "timm",
    "accelerate",
    "pyarrow",
    "tensorboard",
    "numpy",
    "jsonargparse",
)


def _env(_: Parsed) -> int:
    """Print the versions of the stack and the accelerators torch can see."""
    for name in _REPORTED:
        try:
            print(f"{name:12s} {version(name)}")
        except PackageNotFoundError:
            print(f"{name:12s} not installed")
    # lazy: torch takes seconds to import; only `env` needs it.
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(cuda)) or "none"
    print(f"{'cuda devices':12s} {cuda} ({names})")
    print(f"{'cpu threads':12s} {torch.get_num_threads()}")
    return 0


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, opened at its first
    call: input refused before any work says so without an empty bar."""
    # lazy: tqdm is only for the commands that draw a bar.
    from tqdm import tqdm

    bars: list[tqdm] = []

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", desc=desc, file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        yield advance
    finally:
        for bar in bars:
            bar.close()


def _data_convert(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data.convert import convert_image_folder, format_summary

    o = parsed.options
    with _progress("convert") as advance:
        summary = convert_image_folder(
            o.src,
            o.dst,
            shard_size_mb=o.shard_size_mb,
            workers=o.workers,
            max_pixels=o.max_pixels,
            progress=advance,
        )
    print(format_summary(summary, o.dst))
    return 0


def _data_bench(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data import bench

    o = parsed.options
    bench.run(o.data_config(), seconds=o.seconds, workers=o.workers, batch_size=o.batch_size)
    return 0


def _data_preview(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data.preview import preview

    assert parsed.config is not None
    print(preview(parsed.options, parsed.config.data).describe())
    return 0


def _pretrain(parsed: Parsed) -> int:
    """Pretrain on Ray, probe, and say where everything is."""
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    cfg = parsed.config
    assert cfg is not None
    result = api.pretrain(cfg)
    minutes, seconds = divmod(round(result.train_seconds), 60)
    since = "" if result.resumed_from is None else f" (resumed at step {result.resumed_from})"
    print(f"\ntrained to step {cfg.optim.steps}{since} in {minutes} min {seconds} s")
    if result.probes_during:
        print(during_table(result.probes_during))
    if result.probe is not None:
        print(result.probe.table())
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}/tensorboard")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"config:      {result.run_dir}/config.yaml")
    return 0


def during_table(records: dict[int, dict]) -> str:
    """The probes during training, a line per probed step."""
    lines = ["probes during training (trained backbone, kNN / linear top-1)"]
    for step, r in sorted(records.items()):
        if "error" in r:
            lines.append(f"  step {step:>6}  failed: {r['error']}")
            continue
        linear = r.get("probe/linear_top1")
        cells = f"{r['probe/knn_top1']:.3f} / " + ("-" if linear is None else f"{linear:.3f}")
        lines.append(f"  step {step:>6}  {cells}")
    return "\n".join(lines)


def _export(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    # lazy: as above.
    from lejepa_ray.evaluation.export import ONNX_FILE, PROJECTOR_FILE, WEIGHTS_FILE

    result = api.export(parsed.options)
    out = result.out_dir
    print(
        f"exported {result.architecture} ({result.parameters / 1e6:.1f}M parameters) from "
        f"{result.checkpoint} (step {result.step}) to {out}/{WEIGHTS_FILE} + config.json; "
        f"projector: {out}/{PROJECTOR_FILE}"
    )
    print(f"load it: {result.load_line()}")
    if result.onnx_max_abs_diff is not None:
        print(
            f"ONNX: {out}/{ONNX_FILE} (uint8 images (N, 3, S, S) -> features (N, D)); "
            f"onnxruntime matches PyTorch within {result.onnx_max_abs_diff:.1e}"
        )
    return 0


def _eval(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    result = api.evaluate(parsed.options)
    parts = [
        f"{name} top-1 {value:.3f}"
        for name, value in (
            ("kNN", result.knn_top1),
            ("linear", result.linear_top1),
            ("raw-pixel kNN", result.raw_knn_top1),
            ("raw-pixel linear", result.raw_linear_top1),
        )
        if value is not None
    ]
    scored = (
        f"{result.val_data} ({result.queries} images)"
        if result.val_data
        else (f"{result.queries} hash-split queries")
    )
    of = "" if result.features == "backbone" else " (projector outputs)"
    print(
        f"{', '.join(parts)}{of} at {result.image_size} px: fitted on {result.data} "
        f"({result.bank} images), scored on {scored}, {result.classes} classes"
    )
    print(result.to_json())
    return 0


def _embed(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    with _progress("embed") as advance:
        result = api.embed(parsed.options, progress=advance)
    skipped = f" ({result.skipped} did not decode)" if result.skipped else ""
    steady = result.steady_images_per_s
    after = f"; {steady:.1f} images/s once the first batch was out" if steady else ""
    print(
        f"embedded {result.images} images{skipped} at {result.image_size} px into "
        f"{result.dim}-d vectors in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s "
        f"with the actors' start{after}): {result.out}"
    )
    return 0


def _visualize(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    result = api.visualize(parsed.options)
    h, w = result.grid
    print(
        f"{result.architecture} ({result.weights}), {result.images} images of {result.data} at "
        f"{result.image_size} px, {h}x{w} patch grid"
    )
    if result.attention_png is None:
        print("no CLS attention (not a ViT with a class token): PCA map only")
    if result.iou is not None:
        print("\n".join(result.iou.lines()))
    for path in result.files:
        print(path)
    return 0


def _sweep(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    opts = dataclasses.replace(parsed.options, config=parsed.config)
    result = api.sweep(opts)
    if result.interrupted:
        return 130
    minutes, seconds = divmod(round(result.seconds), 60)
    print(
        f"\nsweep {'resumed and ' if result.resumed else ''}finished in {minutes} min "
        f"{seconds} s: {len(result.rows)} trials"
    )
    print(f"results: {result.sweep_dir}/results.csv, plot: {result.sweep_dir}/plot.png")
    if result.validation and "rho" in result.validation and result.validation["rho"]:
        print(
            f"validation: {result.sweep_dir}/validation.json, scatter plots: "
            f"{result.sweep_dir}/validation_<metric>.png"
        )
    print(f"TensorBoard of every trial: tensorboard --logdir {result.sweep_dir}/runs")
    return 0


def _cluster_check(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.cluster import check_fits, load_cluster

    o = parsed.options
    assert parsed.config is not None
    fit = check_fits(parsed.config, load_cluster(o.cluster), o.concurrent)
    print(f"{parsed.config_file or 'the default config'} on {o.cluster}: {fit.describe()}")
    return 0


COMMANDS: dict[str, Command] = {
    "env": Command("print package versions and visible accelerators", _env),
    "data convert": Command(
        "image folder -> parquet shards (decode-checked, resumable)",
        _data_convert,
        "data.convert:ConvertOptions",
        positional=("src", "dst"),
    ),
    "data bench": Command(
        "views/s of Ray Data against a DataLoader with the same workers",
        _data_bench,
        "data.bench:BenchOptions",
    ),
    "data preview": Command(
        "a PNG of a few samples' global and local views, made as the training pipeline makes them",
        _data_preview,
        "data.preview:PreviewOptions",
        positional=("src",),
        # The data section of a pretrain config (the quickstart's, a --config file's, the
        # --data.* flags) makes the views; the run's name, seed and storage mean nothing here,
        # and the preview's own --seed is the crops'.
        config="quickstart",
        config_skip=frozenset({"name", "seed", "storage_path"}),
    ),
    "pretrain": Command(
        "LeJEPA pretraining of a timm backbone on Ray Train (default: the CPU quickstart)",
        _pretrain,
        config="quickstart",
    ),
    "export": Command(
        "a checkpoint's backbone as a timm model (model.safetensors + config.json)",
        _export,
        "evaluation.export:ExportOptions",
        positional=("source", "out_dir"),
    ),
    "eval": Command(
        "kNN and linear probes of a checkpoint's or export's frozen features",
        _eval,
        "evaluation.frozen:EvalOptions",
        positional=("source",),
    ),
    "embed": Command(
        "a frozen backbone's features of every image, as parquet (Ray Data batch inference)",
        _embed,
        "launch.embed:EmbedOptions",
        positional=("source",),
    ),
    "visualize": Command(
        "label-free segmentation maps of a frozen backbone (ViT attention, PCA), as PNGs",
        _visualize,
        "evaluation.visualize:VisualizeOptions",
        positional=("source",),
    ),
    "sweep": Command(
        "Ray Tune sweep of the pretrain config, ranked by a label-free metric",
        _sweep,
        "tune.options:SweepOptions",
        config="quickstart",
        # The trials' config comes from --config and the flags; each trial is named by Tune.
        skip=frozenset({"config", "overrides"}),
        config_skip=frozenset({"name"}),
    ),
    "cluster-check": Command(
        "check offline that a config's workers fit a cluster.yaml",
        _cluster_check,
        "cluster:ClusterCheckOptions",
        config="defaults",
    ),
}

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
            # lazy: see parse.
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


if __name__ == "__main__":
    sys.exit(main())
