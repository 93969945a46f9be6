"""Search spaces for sweeps: YAML files in ``tune_spaces/`` mapped onto Ray Tune domains.

A space file maps dotted keys of the pretrain config to one sampler each::

    loss.lam:
      loguniform: [0.005, 0.5]      # log-uniform float in [low, high]
    loss.num_slices:
      choice: [64, 256, 1024, 4096] # one of these, at random
    model.name:
      grid: [resnet18, vit_small_patch16_224]  # every value, once per sample
    optim.lr:
      uniform: [1.0e-4, 1.0e-3]     # uniform float in [low, high]
    optim.warmup_steps:
      randint: [0, 100]             # integer in [low, high)

A key may also map to a plain value, which every trial gets (a mapping that is not one sampler,
e.g. ``model.model_args: {drop_path_rate: 0.1}``, is such a value). Keys and values are checked
against the config (unknown keys, values out of range, unknown timm names) before any trial runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lejepa_ray.config import ConfigError, PretrainConfig, check_model_name, with_overrides
from lejepa_ray.errors import option

SAMPLERS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Dimension:
    """One key of a search space and how it is sampled."""

    key: str
    """Dotted pretrain-config key, e.g. ``loss.lam``."""
    sampler: str
    """One of :data:`SAMPLERS`, or ``fixed``."""
    values: tuple
    """The candidates (choice, grid, fixed) or the bounds (uniform, loguniform, randint)."""

    def to_tune(self):
        """This dimension as a Ray Tune domain (or plain value)."""
        # lazy: reading and checking a space (tests/unit/test_backbones.py, the sweep's
        # checks) needs no Ray; only the Tuner's param_space does.
        from ray import tune

        if self.sampler == "fixed":
            return self.values[0]
        if self.sampler == "grid":
            return tune.grid_search(list(self.values))
        if self.sampler == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.sampler)(*self.values)

    def corners(self) -> list:
        """Values that bound what this dimension can produce, to check before running."""
        if self.sampler == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)


def load_space(path: str | Path) -> list[Dimension]:
    """Read and check the search space at ``path``.

    Raises:
        ConfigError: a missing file, a malformed entry, or values the config rejects.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"search space {str(path)!r} does not exist; see tune_spaces/ for examples."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{path} must map dotted config keys to samplers, e.g. "
            "`loss.lam: {loguniform: [0.005, 0.5]}`."
        )
    sections = sorted(
        str(k)
        for k, v in raw.items()
        if "." not in str(k)
        and isinstance(v, dict)
        and not is_sampler(v)  # `seed: {choice: [...]}` is fine
    )
    if sections:
        # A pretrain config given as the space (`loss: {lam: ...}`): every key would become one
        # fixed, nested value, and the error would name a key the user never wrote.
        raise ConfigError(
            f"{path} looks like a pretrain config, not a search space: its top-level keys "
            f"{', '.join(sections)} hold mappings, where a space maps dotted keys to samplers "
            "(`loss.lam: {loguniform: [0.005, 0.5]}`). Pass the pretrain config in "
            f"{option('config')} and a search space from tune_spaces/ in {option('space')}."
        )
    space = [_dimension(path, str(key), spec) for key, spec in raw.items()]
    check_space(space, where=str(path))
    return space


def is_sampler(spec: Any) -> bool:
    """True for a mapping of one sampler to its values (``{loguniform: [0.005, 0.5]}``)."""
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SAMPLERS


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    where = f"{path}: {key}"
    if not is_sampler(spec):
        return Dimension(key, "fixed", (spec,))  # a plain value (a mapping for model_args)
    sampler, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {sampler} takes a non-empty list, got {values!r}.")
    if sampler in ("uniform", "loguniform", "randint"):
        if (
            len(values) != 2
            or not all(isinstance(v, int | float) for v in values)
            or not values[0] < values[1]
        ):
            raise ConfigError(
                f"{where}: {sampler} takes [low, high] numbers with low < high, got {values!r}."
            )
        if sampler == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {values!r}.")
        if sampler == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"{where}: randint takes integers, got {values!r}.")
    return Dimension(key, sampler, tuple(values))


def check_space(
    space: list[Dimension], base: PretrainConfig | None = None, *, where: str = "search space"
) -> None:
    """Every key exists in the pretrain config and each corner value passes the config's
    checks, with the other keys at their first corner, on top of ``base`` (the sweep's own
    config; None: the defaults).

    Raises:
        ConfigError: naming the key and value, and the config's own complaint.
    """
    keys = [d.key for d in space]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where} repeats a key: {keys}.")
    first = {d.key: d.corners()[0] for d in space}
    base = base or PretrainConfig()
    for dim in space:
        for value in dim.corners():
            if dim.key == "model.name":
                check_model_name(str(value))
                continue
            trial = {**first, dim.key: value}
            try:
                with_overrides(base, overrides(trial))
            except ConfigError as e:
                raise ConfigError(
                    f"{where}: {dim.key}={value!r} is not a valid value: {e}"
                ) from None


def to_tune(space: list[Dimension]) -> dict[str, Any]:
    """The param_space for ``ray.tune.Tuner``: dotted key -> Tune domain."""
    return {d.key: d.to_tune() for d in space}


def overrides(trial: dict[str, Any]) -> list[str]:
    """A trial's sampled values as ``key=value`` overrides (:func:`config.with_overrides`)."""
    out = []
    for key, value in trial.items():
        if isinstance(value, float) and math.isfinite(value):
            value = repr(value)  # full precision; YAML reads it back as the same float
        elif not isinstance(value, str):
            value = yaml.safe_dump(value, default_flow_style=True).strip()
            value = value.removesuffix("\n...").strip()
        out.append(f"{key}={value}")
    return out
