"""Typed configuration of the data stream: where images come from and how views are made.

The defaults are the LeJEPA recipe (two 224 px global views, eight 96 px local views). Every
field is validated on construction so a bad value fails in the driver, before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from lejepa_ray.data.decode import DEFAULT_MAX_PIXELS
from lejepa_ray.data.keys import SPLITS
from lejepa_ray.errors import check_field

SHUFFLES = ("files", "full", "none")
AUGMENT_ON = ("cpu", "device")
KERNEL_SETS = ("fast", "pil")
"""``data.views.kernels`` choices: the names ``data.kernel_sets.KERNELS`` registers (a test
keeps them equal; the kernel sets import this module, so it cannot ask them)."""
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
"""Ray's own resources, which ``data.node_resource`` cannot name."""
NODE_RESOURCE_SHARE = 0.001
"""What each views task asks of ``data.node_resource``: enough to be placed, too little to cap
how many tasks a node runs (its CPUs do that)."""


@dataclass
class ViewConfig:
    """How one image becomes ``global_views`` large and ``local_views`` small augmented crops."""

    global_views: int = 2
    """Number of global crops per image (V_g)."""
    global_size: int = 224
    """Side of a global crop in pixels."""
    global_scale: tuple[float, float] = (0.3, 1.0)
    """Range of the crop's area as a fraction of the image's area, for global crops."""
    local_views: int = 8
    """Number of local crops per image (V_l); 0 disables them."""
    local_size: int = 96
    """Side of a local crop in pixels."""
    local_scale: tuple[float, float] = (0.05, 0.3)
    """Range of the crop's area as a fraction of the image's area, for local crops."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of a crop's aspect ratio (width / height) before it is resized to a square."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    """Colour jitter strengths: brightness, contrast, saturation, hue."""
    jitter_p: float = 0.8
    """Probability that colour jitter is applied to a view."""
    grayscale_p: float = 0.2
    """Probability that a view is turned to grayscale (kept as three channels)."""
    blur_p: float = 0.5
    """Probability of a Gaussian blur."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Range of the blur's standard deviation, in pixels of the output view."""
    solarize_p: float = 0.2
    """Probability of solarization (pixel values at or above ``solarize_threshold`` inverted)."""
    solarize_threshold: int = 128
    """Solarization threshold on the 0..255 scale."""
    kernels: str = "fast"
    """What computes the pixels: ``fast`` (torch's uint8 resize and OpenCV, 3.3–3.9× cheaper
    per sample than torchvision; a mean 0.65 levels from it, 99th percentile 4; tolerances per
    op in docs/data.md) or
    ``pil`` (PIL's kernels: the same bytes as torchvision's pipeline, for the same seed)."""

    def __post_init__(self) -> None:
        check_field(
            self.global_views >= 1, "data.views.global_views", self.global_views, "an integer >= 1"
        )
        check_field(
            self.local_views >= 0, "data.views.local_views", self.local_views, "an integer >= 0"
        )
        for name in ("global_size", "local_size"):
            check_field(
                getattr(self, name) >= 8, f"data.views.{name}", getattr(self, name), ">= 8 pixels"
            )
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            check_field(0 < lo <= hi <= 1, f"data.views.{name}", (lo, hi), "0 < low <= high <= 1")
        check_field(
            0 < self.ratio[0] <= self.ratio[1], "data.views.ratio", self.ratio, "0 < low <= high"
        )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            check_field(0 <= p <= 1, f"data.views.{name}", p, "a probability in [0, 1]")
        check_field(
            len(self.jitter) == 4 and min(self.jitter) >= 0,
            "data.views.jitter",
            self.jitter,
            "four non-negative strengths (brightness, contrast, saturation, hue)",
        )
        check_field(
            self.jitter[3] <= 0.5, "data.views.jitter", self.jitter, "a hue strength <= 0.5"
        )
        check_field(
            0 < self.blur_sigma[0] <= self.blur_sigma[1],
            "data.views.blur_sigma",
            self.blur_sigma,
            "0 < low <= high",
        )
        check_field(
            0 <= self.solarize_threshold <= 255,
            "data.views.solarize_threshold",
            self.solarize_threshold,
            "a value in 0..255",
        )
        check_field(
            self.kernels in KERNEL_SETS,
            "data.views.kernels",
            self.kernels,
            " or ".join(KERNEL_SETS),
        )


@dataclass
class DataConfig:
    """Where the images come from, how they are shuffled, and how bad ones are handled."""

    source: str = "synthetic"
    """A registered source (``data.source`` module): ``folder`` (recursive image folder),
    ``parquet`` (shards with an ``image`` column), ``synthetic`` (generated shapes), ``digits``
    (scikit-learn's bundled 8×8 digits), or one registered with ``register_source``."""
    path: str | None = None
    """Folder or parquet path/URI (s3://, gs://...) for ``folder`` and ``parquet``; unused else."""
    seed: int = 0
    """Seed of the shuffles, of the synthetic images and of every crop's randomness."""
    split: str = "all"
    """``all``, or one side of a fixed 80/20 partition of the source by a hash of each sample's
    key: ``train`` (80%) or ``val`` (20%). The same for every source, run and machine, so a run
    can pretrain on ``train`` and be probed on ``val`` images it never saw. Sources that come
    as separate train/val folders need no split: point ``path`` at one of them."""
    num_samples: int | None = None
    """Synthetic: how many images to generate (None: 10,000), before the split. Other sources:
    use at most this many of the split (None: all)."""
    image_size: int = 128
    """Side in pixels of the images the ``synthetic`` and ``digits`` sources produce."""
    num_classes: int = 10
    """Number of classes of the ``synthetic`` source (at most 40)."""
    shuffle: str = "files"
    """Per-epoch reorder, seeded by (``seed``, epoch): ``files`` (image files, generated images,
    or parquet row groups, each read whole; converted shards are already mixed), ``full`` (every
    row on its own: for parquet, a row group is read per row) or ``none`` (the listed order)."""
    local_shuffle_buffer: int = 0
    """Rows in each training worker's local shuffle buffer (0: none). Rows hold finished views."""
    workers: int | None = None
    """CPUs that decode and crop. None: as many as Ray Data has CPUs."""
    tasks_per_cpu: int = 1
    """Transform tasks in flight per data CPU (each reserves ``1 / tasks_per_cpu`` CPU). More
    than one fills the short idle gaps between a CPU's tasks at the cost of CPU contention.
    Long tasks (``task_units``) leave gaps of about 1%, so it stays 1 (2 was slower on 2 cores
    with the earlier short tasks, docs/data.md)."""
    node_resource: str | None = None
    """A custom resource that marks the nodes the data tasks (reads, row steps, views) run on
    (``cluster.yaml``'s ``cpu_data`` nodes declare ``data_node``): each task asks for a
    thousandth of it, so none lands on a node without it, such as a GPU node whose CPUs feed
    its trainers. None: any node. A local instance declares it on its one node."""
    transform_batch_size: int = 32
    """Rows per unit of work, and per block of views: a views task hands over blocks of exactly
    this many samples (units short of it, an epoch's last or one with bad images, are pooled
    and joined; a task's last block may be short). A block of exactly the per-worker batch
    reaches the trainer without a copy; set it to ``scaling.batch_size`` where the views task
    stays short enough, else the trainer joins a batch's blocks (one copy, docs/data.md)."""
    task_units: int = 64
    """Units each views task makes. Ray Data leaves a task's CPU idle for 0.1-0.2 s between two
    tasks, so long tasks keep the CPUs busy (``data bench`` on 2 cores, paired runs: 64 units
    1.06x and 1.19x the rate of 32, 32 units 1.02-1.09x that of 16); a pass holds at least 32
    tasks per views slot, so that its last tasks, running while the others are done, cost little
    (docs/data.md)."""
    prefetch_batches: int = 8
    """Batches each training worker pulls ahead of its steps, in a background thread that asks
    for the next pass (one execution of the pipeline, many epochs) as soon as the current one is
    pulled: the next pass starts while the trainer steps on these. Costs this many batches of
    views in host memory (0: no thread; each pass then starts when the trainer asks for it)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are skipped as possible decompression bombs."""
    max_skip_rate: float = 0.05
    """The run stops when more than this fraction of the samples seen so far had to be skipped."""
    min_samples_for_skip_rate: int = 200
    """The skip rate is only judged once this many samples have been seen (or an epoch ends)."""
    augment_on: str = "cpu"
    """Where the photometric ops (colour jitter, grayscale, blur, solarize, flip) run: ``cpu``,
    in the data actors with the crops, or ``device``, on each training worker's own device as
    batched tensor ops, the actors then only decoding and cropping. Their random parameters
    are drawn in the actors either way, from the same seeded generator. ``device`` frees most
    of the data CPUs (docs/data.md, docs/scaling.md); on CPU-only workers it moves the work
    onto the training cores instead."""
    views: ViewConfig = field(default_factory=ViewConfig)
    """How each image becomes its views."""

    def placement(self) -> dict[str, dict[str, float]]:
        """Ray remote arguments that keep a task of the data pipeline on the nodes declaring
        ``node_resource`` (reads and row steps as well as the views, so that Ray Data can still
        fuse them into one task); empty when it is unset."""
        if not self.node_resource:
            return {}
        return {"resources": {self.node_resource: NODE_RESOURCE_SHARE}}

    def __getstate__(self) -> dict[str, Any]:
        """The fields, and the source ``data.source`` names unless it is a built-in: a source
        registered in the driver alone is then known in each process the config is pickled to
        (Ray Train workers, probe and views tasks)."""
        state = dict(self.__dict__)
        carried = _registry().travelling(self.source)
        if carried is not None:
            state[_CARRIED] = carried
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        carried = state.pop(_CARRIED, None)
        if carried is not None:
            _registry().adopt(carried)
        self.__dict__.update(state)

    def __post_init__(self) -> None:
        if isinstance(self.views, dict):
            self.views = ViewConfig(**self.views)
        _registry().get_source(self.source).check_config(self)  # an unknown name lists all
        check_field(self.split in SPLITS, "data.split", self.split, f"one of {', '.join(SPLITS)}")
        check_field(self.shuffle in SHUFFLES, "data.shuffle", self.shuffle, f"one of {SHUFFLES}")
        check_field(
            self.augment_on in AUGMENT_ON,
            "data.augment_on",
            self.augment_on,
            f"one of {', '.join(AUGMENT_ON)}",
        )
        check_field(
            self.num_samples is None or self.num_samples >= 1,
            "data.num_samples",
            self.num_samples,
            "None or an integer >= 1",
        )
        check_field(self.image_size >= 8, "data.image_size", self.image_size, ">= 8 pixels")
        check_field(2 <= self.num_classes <= 40, "data.num_classes", self.num_classes, "2..40")
        check_field(
            self.workers is None or self.workers >= 1,
            "data.workers",
            self.workers,
            "None or an integer >= 1",
        )
        check_field(
            self.node_resource is None
            or (bool(self.node_resource) and self.node_resource not in RESERVED_RESOURCES),
            "data.node_resource",
            self.node_resource,
            f"None or the name of a custom resource (not {', '.join(RESERVED_RESOURCES)})",
        )
        check_field(
            self.tasks_per_cpu >= 1, "data.tasks_per_cpu", self.tasks_per_cpu, "an integer >= 1"
        )
        check_field(self.task_units >= 1, "data.task_units", self.task_units, "an integer >= 1")
        check_field(
            self.transform_batch_size >= 1,
            "data.transform_batch_size",
            self.transform_batch_size,
            ">= 1",
        )
        check_field(
            self.prefetch_batches >= 0, "data.prefetch_batches", self.prefetch_batches, ">= 0"
        )
        check_field(
            self.local_shuffle_buffer >= 0,
            "data.local_shuffle_buffer",
            self.local_shuffle_buffer,
            ">= 0",
        )
        check_field(self.max_pixels >= 1, "data.max_pixels", self.max_pixels, ">= 1")
        check_field(
            0 <= self.max_skip_rate <= 1,
            "data.max_skip_rate",
            self.max_skip_rate,
            "a fraction in [0, 1]",
        )


_CARRIED = "_registered_source"
"""The key of the carried source in a pickled ``DataConfig``'s state."""


def _registry() -> ModuleType:
    """``data.registry``, the sources by name."""
    # lazy: the sources import pyarrow and PIL, which a process that only parses a command line
    # (`lejepa-ray --version`, the command list) must not wait for; nor does it build a config.
    from lejepa_ray.data import registry

    return registry
