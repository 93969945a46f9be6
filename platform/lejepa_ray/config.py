"""A whole run's configuration: the components' configs composed, YAML files, overrides.

Each component's config lives beside its code (``model.config``, ``objective.config``,
``data.config``, ``train.config``, ``evaluation.config``) and checks its own ranges on
construction. This module composes them into :class:`PretrainConfig`, merges the layers of a run
and runs the checks that span components.

A run's config is the defaults, then a YAML file (``--config``), then dotted overrides (the
command line's flags ``--model.name vit_small_patch16_224 --loss.lam 0.02``; the API's
``{"loss.lam": 0.02}`` or ``["loss.lam=0.02"]``), merged by OmegaConf against the dataclasses:
unknown keys and wrongly typed values fail with the key's full name. :func:`check_run` then
checks what spans components (sizes the model accepts, batch against workers, the timm name),
all in the driver before any Ray resource is requested.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lejepa_ray.data.batch_split import drawn_per_worker
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.errors import ConfigError, check_field, option
from lejepa_ray.evaluation.config import ProbeConfig
from lejepa_ray.model.config import ModelConfig, ScalingConfig
from lejepa_ray.objective.config import LossConfig
from lejepa_ray.train.config import (
    CheckpointConfig,
    FaultConfig,
    LoggingConfig,
    OptimConfig,
    WandbConfig,
)

if TYPE_CHECKING:
    from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "PLACEHOLDER",
    "QUICKSTART",
    "STORAGE_ENV",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "FaultConfig",
    "LoggingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Overrides",
    "PretrainConfig",
    "ProbeConfig",
    "ScalingConfig",
    "ViewConfig",
    "WandbConfig",
    "check_model_name",
    "check_run",
    "config_from_mapping",
    "config_values",
    "default_config",
    "dotlist",
    "load_config",
    "read_yaml_mapping",
    "resolve_config",
    "scaled_lr",
    "to_yaml",
    "with_overrides",
]

STORAGE_ENV = "LEJEPA_STORAGE_PATH"
"""Environment variable with the default ``storage_path`` (set by ``cluster.yaml``)."""


@dataclass
class PretrainConfig:
    """A whole LeJEPA pretraining run."""

    name: str | None = None
    """Run name: the directory under ``storage_path``. None: ``lejepa-<model>-<timestamp>``."""
    storage_path: str = field(default_factory=lambda: os.environ.get(STORAGE_ENV) or "runs")
    """Where run directories go: a local path (made absolute) or a URI (s3://...). Default:
    ``$LEJEPA_STORAGE_PATH`` (which ``cluster.yaml`` sets on every node, so jobs write to the
    cluster's bucket), else ``runs``."""
    seed: int = 0
    """Seed of model initialization (the data has its own ``data.seed``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.name is not None:
            check_field(
                bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                "name",
                self.name,
                "a directory name without '/'",
            )


def _omegaconf():
    """OmegaConf, imported where a config is read or written and nowhere else: the schema above
    is what the trainer, the model and the GPU check import, and they must run without it."""
    # lazy: keeps OmegaConf off the Ray-free core (see the docstring).
    from omegaconf import OmegaConf

    return OmegaConf


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides, validated.

    Raises:
        ConfigError: a missing file, a file that is not a YAML mapping, an unknown key, a
            wrongly typed or out-of-range value.
    """
    path = None if path is None else Path(path)
    return _merge(_layers(path), overrides, path)


def _layers(path: Path | None) -> list:
    """The defaults, then the YAML file at ``path`` when there is one, as OmegaConf layers."""
    omegaconf = _omegaconf()
    layers = [omegaconf.structured(PretrainConfig)]
    if path is not None:
        layers.append(omegaconf.create(read_yaml_mapping(path)))
    return layers


# The default of `pretrain` and `sweep` (CLI and API): the CPU quickstart, package data
# (lejepa_ray/configs/, pyproject.toml's package-data), so an installed wheel has it as well as
# a checkout. A regular package's resources are files on disk, so this is a plain path.
QUICKSTART = Path(str(resources.files("lejepa_ray") / "configs" / "quickstart.yaml"))


def default_config() -> Path:
    """The packaged quickstart config, or a ConfigError saying what to pass instead."""
    if not QUICKSTART.is_file():
        raise ConfigError(
            f"no config given and the packaged default config {QUICKSTART} is missing "
            "(an incomplete install of lejepa-ray: reinstall it); pass a config file, "
            "e.g. one of the repository's jobs/configs/*.yaml."
        )
    return QUICKSTART


Overrides = Sequence[str] | Mapping[str, Any]
"""Dotted overrides: ``["loss.lam=0.02"]`` or ``{"loss.lam": 0.02}``."""


def resolve_config(
    config: PretrainConfig | str | Path | None = None, overrides: Overrides = ()
) -> PretrainConfig:
    """A run's config from a config object, a YAML file (None: the packaged quickstart) and
    overrides, validated as :func:`load_config` does.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    dotted = dotlist(overrides)
    if isinstance(config, PretrainConfig):
        return with_overrides(config, dotted)
    return load_config(default_config() if config is None else config, dotted)


def dotlist(overrides: Overrides) -> list[str]:
    """``key=value`` strings from either form of :data:`Overrides`; a mapping's values are
    written as YAML flow values, so lists and mappings keep their types."""
    if not isinstance(overrides, Mapping):
        return list(overrides)
    # lazy: PyYAML comes with OmegaConf, which the core does not need.
    import yaml

    def flow(value: Any) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalars
            value = value.item()
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
        return text.removesuffix("\n...").strip()

    return [f"{key}={'null' if value is None else flow(value)}" for key, value in overrides.items()]


def config_values(path: str | Path | None) -> dict[str, Any]:
    """Every key of a config as a nested dict: the defaults, then the YAML file at ``path``,
    checked for unknown keys and types but not for ranges, which :func:`config_from_mapping`
    checks once the command line's flags are on top.

    Raises:
        ConfigError: as :func:`load_config`, less the range checks.
    """
    # lazy: see _omegaconf.
    from omegaconf.errors import OmegaConfBaseException

    omegaconf = _omegaconf()
    path = None if path is None else Path(path)
    layers = _layers(path)
    try:
        values = omegaconf.to_container(omegaconf.merge(*layers), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, path)) from None
    assert isinstance(values, dict)
    return values


def config_from_mapping(values: Mapping[str, Any]) -> PretrainConfig:
    """A config from a nested mapping of every key (what the command line parses), validated
    as :func:`load_config` does.

    Raises:
        ConfigError: an unknown key, a wrongly typed or out-of-range value.
    """
    return _merge([*_layers(None), _omegaconf().create(dict(values))], (), None)


def read_yaml_mapping(path: Path) -> dict:
    """The YAML mapping in the file at ``path`` ({} for an empty file).

    Raises:
        ConfigError: the file is missing, is not text, is not YAML, or holds something other
            than a mapping of keys (a list, a line of text).
    """
    # lazy: PyYAML comes with OmegaConf, which the core does not need.
    import yaml

    hint = "pass a YAML file of config keys such as the repository's jobs/configs/*.yaml."
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; {hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a text file; {hint}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {str(path)!r} is not a YAML mapping of config keys (it holds a "
            f"{type(raw).__name__}); {hint}"
        )
    return raw


def with_overrides(cfg: PretrainConfig, overrides: list[str] | tuple[str, ...]) -> PretrainConfig:
    """``cfg`` with ``key=value`` overrides applied, validated as :func:`load_config` does.

    Raises:
        ConfigError: an unknown key, a wrongly typed or out-of-range value.
    """
    return _merge([_omegaconf().structured(cfg)], overrides, None)


def _merge(
    layers: list, overrides: list[str] | tuple[str, ...], path: Path | None
) -> PretrainConfig:
    # lazy: see _omegaconf.
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value; write e.g. loss.lam=0.02.")
    omegaconf = _omegaconf()
    layers.append(omegaconf.from_dotlist(list(overrides)))
    try:
        merged = omegaconf.merge(*layers)
        cfg = omegaconf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, path)) from None
    except ConfigError as e:  # a component's own range check, as it is
        raise e.with_traceback(None) from None
    except ValueError as e:  # a dataclass's own check that is not a ConfigError
        raise ConfigError(str(e)) from None
    assert isinstance(cfg, PretrainConfig)
    return cfg


def _describe(error: OmegaConfBaseException, path: Path | None) -> str:
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    where = f" (in {path} or the overrides)" if path else ""
    if key:
        return f"config key {key!r}: {message}{where}"
    return f"invalid config{where}: {message}"


def to_yaml(cfg: PretrainConfig) -> str:
    """The full merged config as YAML (what a run directory's ``config.yaml`` holds)."""
    omegaconf = _omegaconf()
    return omegaconf.to_yaml(omegaconf.structured(cfg))


PLACEHOLDER = "CHANGE-ME"
"""What the shipped recipes and cluster.yaml write where a user's bucket goes."""


def check_run(cfg: PretrainConfig) -> None:
    """Checks that span components; cheap (seconds) and run before Ray starts.

    Raises:
        ConfigError: a recipe's placeholder left in a path, an unknown timm name (with close
            matches), a batch SIGReg cannot test, or view sizes the model cannot take.
    """
    for key, value in (("data.path", cfg.data.path), ("storage_path", cfg.storage_path)):
        if value and PLACEHOLDER in value:
            raise ConfigError(
                f"{option(key)}={value!r} is the recipe's placeholder: set {key} to your own "
                f"location (e.g. {option(key)}=s3://my-bucket/"
                f"{value.split(PLACEHOLDER, 1)[1].strip('/') or '...'})."
            )
    check_model_name(cfg.model.name)
    if cfg.scaling.global_batch < 2:
        raise ConfigError(
            f"scaling.batch_size={cfg.scaling.batch_size} × {cfg.scaling.max_workers} "
            f"worker(s) gives {cfg.scaling.global_batch} image per step; "
            "SIGReg tests the distribution of the batch and needs at least 2 (use >= 64)."
        )
    every, saves = cfg.probe.every_steps, cfg.checkpoint.every_steps
    if every and every % saves:
        raise ConfigError(
            f"probe.every_steps={every} is not a multiple of checkpoint.every_steps={saves}; "
            f"the probes during training run on checkpoints. Use probe.every_steps="
            f"{(every // saves + 1) * saves}."
        )
    views: ViewConfig = cfg.data.views
    if views.local_views and views.local_size > views.global_size:
        raise ConfigError(
            f"data.views.local_size={views.local_size} is larger than data.views.global_size="
            f"{views.global_size}; local views are the small crops."
        )
    # lazy: see data.config._registry (the command line imports this module to parse).
    from lejepa_ray.data.registry import get_source

    if get_source(cfg.data.source).generated and cfg.data.num_samples is not None:
        for workers in range(cfg.scaling.min_workers, cfg.scaling.max_workers + 1):
            per_worker = cfg.data.num_samples // workers
            batch = drawn_per_worker(cfg.scaling.global_batch, workers)
            if per_worker < batch:
                raise ConfigError(
                    f"data.num_samples={cfg.data.num_samples} split over {workers} workers "
                    f"gives {per_worker} images each, fewer than their batch of {batch}: no "
                    "full batch. Lower scaling.batch_size or add samples."
                )


def check_model_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, suggesting close matches."""
    # lazy: timm takes about a second to import; only checking a model name needs it.
    import timm

    if timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"model.name={name!r} is not a timm architecture.{hint} "
        "`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists the names."
    )


def scaled_lr(cfg: PretrainConfig) -> float:
    """Peak learning rate for the run's global batch (linear scaling from the reference)."""
    batch = cfg.scaling.global_batch * cfg.optim.accum_steps
    return cfg.optim.lr * batch / cfg.optim.lr_reference_batch
