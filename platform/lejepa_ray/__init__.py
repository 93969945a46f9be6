"""lejepa-ray: Ray-distributed LeJEPA self-supervised pretraining for timm backbones.

The Python API (:mod:`lejepa_ray.api`) is re-exported here::

    import lejepa_ray

    run = lejepa_ray.pretrain(data="/data/my-images", out="runs/mine")
    lejepa_ray.export(source=run.run_dir, out_dir="exports/mine")

It is imported on first use, so that ``import lejepa_ray`` (and the command line) stays light:
the API brings torch, timm and Ray.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("lejepa-ray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from lejepa_ray.api import embed as embed
    from lejepa_ray.api import evaluate as evaluate
    from lejepa_ray.api import export as export
    from lejepa_ray.api import pretrain as pretrain
    from lejepa_ray.api import sweep as sweep
    from lejepa_ray.api import visualize as visualize
    from lejepa_ray.config import PretrainConfig as PretrainConfig
    from lejepa_ray.config import load_config as load_config

# The option and result classes are in lejepa_ray.api (lejepa_ray.api.EvalOptions): importing
# them here would need the API's imports, and tools that look a class up by its name in the
# package (jsonargparse does, to build the command line) would pay for them.
_API = ("embed", "evaluate", "export", "pretrain", "sweep", "visualize")
_CONFIG = ("PretrainConfig", "load_config")
__all__ = ["__version__", *_CONFIG, *_API]


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`lejepa_ray.api` (or :mod:`lejepa_ray.config`) when
    first asked for: ``import lejepa_ray.objective.sigreg`` loads nothing else."""
    if name in _CONFIG:
        # lazy: as below; the config is light, but the pure-torch layers must not load it.
        from lejepa_ray import config

        return getattr(config, name)
    if name in _API:
        # lazy: the API imports torch, timm and Ray; `import lejepa_ray` must stay fast.
        from lejepa_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'lejepa_ray' has no attribute {name!r}")
