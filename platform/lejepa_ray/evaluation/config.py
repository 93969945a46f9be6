"""The probes' configuration (``probe.*``): what is probed after and during training, and how.

``evaluation.probe`` fits the kNN and linear probes with it; ``launch.probes`` schedules the
ones during training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lejepa_ray.errors import check_field


@dataclass
class ProbeConfig:
    """The probes run after training, on labelled data of the training source, and, with
    ``every_steps``, on checkpoints during training (``lejepa_ray.launch.probes``).

    Protocol: with ``data.split=train`` the probes are fitted on that split and scored on
    ``data.split=val`` of the same source, images the run never trained on. Otherwise they are
    fitted and scored on a hash 80/20 split of the training data
    (``lejepa_ray.evaluation.probe``)."""

    knn: bool = True
    """Probe the final backbone after training (needs a labelled source); false: no probes
    after training (``every_steps`` still probes during it)."""
    linear: bool = True
    """Also fit the linear probe (logistic regression) beside the kNN one."""
    baseline: bool = True
    """Also probe raw pixels on the same split: the figure to beat."""
    k: int = 20
    """Neighbours voting."""
    temperature: float = 0.07
    """Votes are weighted by exp(cosine similarity / temperature)."""
    max_samples: int = 5000
    """Use at most this many labelled images from each of the bank's and the queries' data."""
    every_steps: int = 0
    """Also probe during training: the checkpoint of every N-th step (a multiple of
    ``checkpoint.every_steps``), in a Ray task of its own while the workers train on; results
    go to TensorBoard at the checkpoint's step and to its metrics. 0: only after training."""
    data: str | None = None
    """Labelled data the probes during training fit on, as ``lejepa-ray eval --data`` takes it
    (``digits:train``, an image folder, parquet shards). None: the protocol above, on the
    training source."""
    val_data: str | None = None
    """Labelled data they are scored on (``digits:val``); None: a hash split of ``data``."""
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    """What each probe task reserves: ``CPU``, ``GPU`` (the probe then runs on it) and any
    custom Ray resource."""
    timeout_s: float = 0.0
    """A probe during training still running after this many seconds is cancelled (recorded
    by Ray as timed out); 0: no limit. Ray runs one probe at a time and, when training ends,
    waits for the ones queued: bound them here when probes are slower than ``every_steps``."""

    def __post_init__(self) -> None:
        check_field(self.every_steps >= 0, "probe.every_steps", self.every_steps, ">= 0")
        check_field(self.timeout_s >= 0, "probe.timeout_s", self.timeout_s, ">= 0 (0: no limit)")
        check_field(
            bool(self.resources) and all(v >= 0 for v in self.resources.values()),
            "probe.resources",
            self.resources,
            "amounts >= 0 of CPU, GPU or custom resources, e.g. {CPU: 1}",
        )
        check_field(
            self.val_data is None or self.data is not None,
            "probe.val_data",
            self.val_data,
            "unset unless probe.data is set (the bank it is scored against)",
        )
        check_field(self.k >= 1, "probe.k", self.k, ">= 1")
        check_field(self.temperature > 0, "probe.temperature", self.temperature, "> 0")
        check_field(self.max_samples >= 10, "probe.max_samples", self.max_samples, ">= 10")
