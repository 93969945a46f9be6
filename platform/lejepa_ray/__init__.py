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

from lejepa_ray.config import PretrainConfig, load_config

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

# The option and result classes are in lejepa_ray.api (lejepa_ray.api.EvalOptions): importing
# them here would need the API's imports, and tools that look a class up by its name in the
# package (jsonargparse does, to build the command line) would pay for them.
_API = ("embed", "evaluate", "export", "pretrain", "sweep")
__all__ = ["PretrainConfig", "__version__", "load_config", *_API]


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`lejepa_ray.api` when first asked for."""
    if name in _API:
        # lazy: the API imports torch, timm and Ray; `import lejepa_ray` must stay fast.
        from lejepa_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'lejepa_ray' has no attribute {name!r}")
