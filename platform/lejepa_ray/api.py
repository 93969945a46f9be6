"""The Python API: ``lejepa_ray.pretrain``, ``evaluate``, ``export``, ``embed`` and ``sweep``
(and ``lejepa_ray.api.visualize``).

Each ``lejepa-ray`` command is one of these functions (``cli`` calls them), and each
returns a result dataclass. Their options are dataclasses with a docstring per field, beside
the code that uses them (:class:`~lejepa_ray.config.PretrainConfig`, :class:`EvalOptions`,
:class:`ExportOptions`, :class:`EmbedOptions`, :class:`SweepOptions`,
:class:`VisualizeOptions`); the command line's flags, help and defaults are generated from the
same classes. Each function takes its options in any of three forms::

    lejepa_ray.evaluate(source="runs/r", data="digits:train", val_data="digits:val")
    lejepa_ray.evaluate("eval.yaml", k=10)            # a YAML file of options, then keywords
    lejepa_ray.evaluate(EvalOptions(source="runs/r", data="digits"), k=10)  # an object

``pretrain`` takes a config the same way (a :class:`PretrainConfig`, a YAML file, or nothing:
the packaged CPU quickstart), dotted ``overrides``, and keywords for the common cases::

    lejepa_ray.pretrain(data="/data/my-images", model="resnet18", out="runs/mine",
                        overrides={"optim.steps": 2000})

Every function checks its input before Ray starts and raises a
:class:`~lejepa_ray.errors.LejepaRayError` subclass that says what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lejepa_ray.config import (
    Overrides,
    PretrainConfig,
    dotlist,
    load_config,
    read_yaml_mapping,
    resolve_config,
)
from lejepa_ray.data.sources import source_from_arg, split_suffix
from lejepa_ray.errors import ConfigError
from lejepa_ray.evaluation import export as _export
from lejepa_ray.evaluation import frozen
from lejepa_ray.evaluation import visualize as _visualize
from lejepa_ray.evaluation.export import ExportOptions, ExportResult
from lejepa_ray.evaluation.frozen import EvalOptions, EvalResult
from lejepa_ray.evaluation.visualize import VisualizeOptions, VisualizeResult
from lejepa_ray.launch import driver
from lejepa_ray.launch import embed as _embed
from lejepa_ray.launch.driver import PretrainResult
from lejepa_ray.launch.embed import EmbedOptions, EmbedResult
from lejepa_ray.tune.options import SweepOptions
from lejepa_ray.tune.sweep import SweepResult, run_sweep

__all__ = [
    "EmbedOptions",
    "EmbedResult",
    "EvalOptions",
    "EvalResult",
    "ExportOptions",
    "ExportResult",
    "PretrainConfig",
    "PretrainResult",
    "SweepOptions",
    "SweepResult",
    "VisualizeOptions",
    "VisualizeResult",
    "embed",
    "evaluate",
    "export",
    "load_config",
    "pretrain",
    "sweep",
    "visualize",
]

T = TypeVar("T")


def pretrain(
    config: PretrainConfig | str | Path | None = None,
    /,
    *,
    data: str | None = None,
    model: str | None = None,
    out: str | None = None,
    overrides: Overrides = (),
) -> PretrainResult:
    """Pretrain with LeJEPA on the connected Ray cluster (or a new local one), then probe.

    Args:
        config: a config object, a YAML file, or None: the packaged CPU quickstart.
        data: the images: ``digits``, ``synthetic``, an image folder or parquet shards, local
            or a URI (sets ``data.source`` and ``data.path``).
        model: a timm architecture name (``model.name``).
        out: the run directory, local or a URI (sets ``storage_path`` and ``name``).
        overrides: dotted overrides, applied last: ``{"loss.lam": 0.02}`` or
            ``["loss.lam=0.02"]``.

    Raises:
        ConfigError, SourceError: invalid options, before Ray starts.
        TrainingStopped: training gave up (non-finite loss, failures past the budget).
    """
    common: dict[str, Any] = {}
    if data is not None:
        where, split = split_suffix(data)
        common["data.source"], common["data.path"] = source_from_arg(where)
        if split is not None:  # without a suffix, the config's split stays
            common["data.split"] = split
    if model is not None:
        common["model.name"] = model
    if out is not None:
        common["storage_path"], common["name"] = run_location(out)
    cfg = resolve_config(config, [*dotlist(common), *dotlist(overrides)])
    return driver.run(cfg)


def run_location(out: str) -> tuple[str, str]:
    """``(storage_path, name)`` of a run directory, local (``runs/mine``, ``/abs/mine``) or a
    URI (``s3://bucket/runs/mine``).

    Raises:
        ConfigError: ``out`` names no folder (``/``, ``s3://bucket``).
    """
    if "://" in out:
        scheme, rest = out.split("://", 1)
        parent, _, name = rest.strip("/").rpartition("/")
        if not parent or not name:
            raise ConfigError(
                f"out={out!r} is a bucket, not a run folder: give one inside it, e.g. "
                f"{scheme}://{rest.strip('/') or 'bucket'}/runs/mine."
            )
        return f"{scheme}://{parent}", name
    path = Path(out)
    if not path.name:
        raise ConfigError(f"out={out!r} names no run folder: give one, e.g. runs/mine.")
    return str(path.parent), path.name


def evaluate(options: EvalOptions | str | Path | None = None, /, **kwargs: Any) -> EvalResult:
    """kNN and linear probes of a run's, checkpoint's or export's frozen features.

    ``kwargs`` are :class:`EvalOptions` fields (``source`` and ``data`` are required).

    Raises:
        ConfigError, SourceError, CheckpointError: invalid options or an unusable source.
    """
    o = options_of(EvalOptions, options, kwargs)
    return frozen.evaluate(
        o.source,
        o.data,
        o.probe,
        features=o.features,
        val_data=o.val_data,
        baseline=o.baseline,
        size=o.size,
        max_samples=o.max_samples,
        k=o.k,
        temperature=o.temperature,
    )


def export(options: ExportOptions | str | Path | None = None, /, **kwargs: Any) -> ExportResult:
    """A checkpoint's backbone in timm's hub layout (and, with ``format="onnx"``, as ONNX).

    ``kwargs`` are :class:`ExportOptions` fields (``source`` and ``out_dir`` are required).

    Raises:
        ConfigError, CheckpointError, ExportError: invalid options or an unusable checkpoint.
    """
    o = options_of(ExportOptions, options, kwargs)
    return _export.export(o.source, o.out_dir, format=o.format)


def embed(
    options: EmbedOptions | str | Path | None = None,
    /,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> EmbedResult:
    """Every image of a source through a frozen backbone, written as parquet.

    ``kwargs`` are :class:`EmbedOptions` fields (``source``, ``data`` and ``out`` are
    required); ``progress(done, total)`` is called as images are written.

    Raises:
        ConfigError, SourceError, CheckpointError: invalid options, before Ray starts.
    """
    return _embed.embed(options_of(EmbedOptions, options, kwargs), progress=progress)


def visualize(
    options: VisualizeOptions | str | Path | None = None, /, **kwargs: Any
) -> VisualizeResult:
    """Label-free segmentation maps of a frozen backbone, drawn as PNGs into ``out``: a ViT's
    last-block CLS attention and DINO's mask of it, and a PCA of its patch features (any
    backbone with a spatial map); with ``iou=True`` on the synthetic source, the masks' mean
    IoU against the true shapes.

    ``kwargs`` are :class:`VisualizeOptions` fields (``source``, ``data`` and ``out`` are
    required).

    Raises:
        ConfigError, SourceError, CheckpointError: invalid options, data or source.
    """
    return _visualize.visualize(options_of(VisualizeOptions, options, kwargs))


def sweep(options: SweepOptions | str | Path | None = None, /, **kwargs: Any) -> SweepResult:
    """A Ray Tune sweep of pretraining runs, ranked without labels; the winner exported.

    ``kwargs`` are :class:`SweepOptions` fields (``space`` is required; ``config`` is the
    trials' pretrain config, an object or a YAML file).

    Raises:
        ConfigError: invalid options, config or space, before Ray starts.
    """
    return run_sweep(options_of(SweepOptions, options, kwargs))


def options_of(cls: type[T], given: T | str | Path | None, kwargs: dict[str, Any]) -> T:
    """An options object of dataclass ``cls`` from ``given`` (an object, a YAML file of its
    fields, or None) with ``kwargs`` applied on top.

    Raises:
        ConfigError: an unknown or missing option, or a file that is not a YAML mapping.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    what = cls.__name__
    _known(kwargs, fields, what)
    if isinstance(given, cls):
        return dataclasses.replace(given, **kwargs)  # type: ignore[type-var]
    values: dict[str, Any] = {}
    if given is not None:
        path = Path(given)  # type: ignore[arg-type]
        if path.is_dir():
            raise ConfigError(
                f"{str(given)!r} is a folder, but the first argument is a {what} or a YAML file "
                f"of its fields; pass the folder by name, e.g. source={str(given)!r}."
            )
        values = read_yaml_mapping(path)
        _known(values, fields, f"{what} (in {given})")
    values.update(kwargs)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}: pass {missing[0]}=... .")
    return cls(**values)


def _known(given: dict[str, Any], fields: dict[str, Any], what: str) -> None:
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"{what} has no option {unknown[0]!r}; its options are {', '.join(fields)}."
        )
