"""The commands of ``lejepa-ray``: what a command is made of, and the table of them that
:func:`lejepa_ray.cli.main` dispatches on.

A :class:`Command` names its options dataclass as ``module:Class`` (imported only when the
command is parsed), the fields given by position, whether it also takes a pretrain config and
which of its keys stay off the command line; :mod:`~lejepa_ray.cli.parser` builds the flags from
these. Its ``run`` is its handler, in :mod:`~lejepa_ray.cli.handlers`. A new command is an
entry of :data:`COMMANDS` and a handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from lejepa_ray.cli import handlers
from lejepa_ray.cli.handlers import Parsed

PROG = "lejepa-ray"


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


COMMANDS: dict[str, Command] = {
    "env": Command("print package versions and visible accelerators", handlers.env),
    "data convert": Command(
        "image folder -> parquet shards (decode-checked, resumable)",
        handlers.data_convert,
        "data.convert:ConvertOptions",
        positional=("src", "dst"),
    ),
    "data bench": Command(
        "views/s of Ray Data against a DataLoader with the same workers",
        handlers.data_bench,
        "data.bench:BenchOptions",
    ),
    "data preview": Command(
        "a PNG of a few samples' global and local views, made as the training pipeline makes them",
        handlers.data_preview,
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
        handlers.pretrain,
        config="quickstart",
    ),
    "export": Command(
        "a checkpoint's backbone as a timm model (model.safetensors + config.json)",
        handlers.export,
        "evaluation.export:ExportOptions",
        positional=("source", "out_dir"),
    ),
    "eval": Command(
        "kNN and linear probes of a checkpoint's or export's frozen features",
        handlers.evaluate,
        "evaluation.frozen:EvalOptions",
        positional=("source",),
    ),
    "embed": Command(
        "a frozen backbone's features of every image, as parquet (Ray Data batch inference)",
        handlers.embed,
        "launch.embed:EmbedOptions",
        positional=("source",),
    ),
    "visualize": Command(
        "label-free segmentation maps of a frozen backbone (ViT attention, PCA), as PNGs",
        handlers.visualize,
        "evaluation.visualize:VisualizeOptions",
        positional=("source",),
    ),
    "sweep": Command(
        "Ray Tune sweep of the pretrain config, ranked by a label-free metric",
        handlers.sweep,
        "tune.options:SweepOptions",
        config="quickstart",
        # The trials' config comes from --config and the flags; each trial is named by Tune.
        skip=frozenset({"config", "overrides"}),
        config_skip=frozenset({"name"}),
    ),
    "cluster-check": Command(
        "check offline that a config's workers fit a cluster.yaml",
        handlers.cluster_check,
        "cluster:ClusterCheckOptions",
        config="defaults",
    ),
}
