"""lejepa-ray: Ray-distributed LeJEPA self-supervised pretraining for timm backbones.

Import the pieces from their modules (``from lejepa_ray.objective.sigreg import sigreg``,
``from lejepa_ray.objective.loss import lejepa_loss``); the package itself stays light so that the
command line starts quickly.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lejepa-ray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
