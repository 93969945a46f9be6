"""The pretraining job: validate, connect to Ray, stream views into Ray Train workers, probe.

``run(cfg)`` is what ``lejepa-ray pretrain`` and ``jobs/pretrain.py`` call. The driver checks
the whole config (including that the backbone takes the view sizes) before asking Ray for
anything, builds the Ray Data stream, runs a ``TorchTrainer`` whose workers execute
:func:`train_worker`, then loads the final checkpoint in the driver for the kNN probe.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from lejepa_ray import checkpoint
from lejepa_ray.config import PretrainConfig, check_run, to_yaml
from lejepa_ray.metrics import MetricsWriter, is_local
from lejepa_ray.model import BackboneSpec, LeJEPAEncoder, resolve


@dataclass
class PretrainResult:
    """Where a finished run put its outputs, and how it did."""

    run_dir: str
    """The run directory (storage_path/name): config.yaml, tensorboard/, checkpoints."""
    checkpoint: str | None
    """The final checkpoint's directory."""
    metrics: dict[str, float]
    """The last metrics reported (with the final checkpoint)."""
    knn_accuracy: float | None
    """kNN top-1 accuracy of the final backbone (None when the probe was off)."""
    knn_accuracy_at_init: float | None
    """The same probe on the backbone at initialization, for reference."""
    train_seconds: float
    """Wall time of ``TorchTrainer.fit``."""


def run_name(cfg: PretrainConfig) -> str:
    """``cfg.name``, or ``lejepa-<model>-<YYYYmmdd-HHMMSS>``."""
    return cfg.name or f"lejepa-{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(cfg: PretrainConfig) -> str:
    """``cfg.storage_path`` made absolute when it is a local path."""
    return cfg.storage_path if not is_local(cfg.storage_path) else str(
        Path(cfg.storage_path.removeprefix("file://")).expanduser().resolve())


def resolve_backbone(cfg: PretrainConfig) -> BackboneSpec:
    """How the backbone is built so it takes the run's global and local views."""
    v = cfg.data.views
    return resolve(cfg.model, v.global_size, v.local_size if v.local_views else None)


def run(cfg: PretrainConfig, *, print_fn=print) -> PretrainResult:
    """Pretrain with ``cfg`` on the connected (or a new local) Ray cluster; then probe.

    Raises:
        ConfigError: before any Ray resource is requested, for a config that cannot run.
    """
    check_run(cfg)
    spec = resolve_backbone(cfg)
    if spec.local_resized:
        print_fn(f"{cfg.model.name} takes no {cfg.data.views.local_size}px input; local views "
                 f"are resized to {spec.local_size}px.")

    from ray.data import DataContext
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

    from lejepa_ray.data.stream import build_view_stream
    from lejepa_ray.flops import train_flops_per_image
    from lejepa_ray.runtime import connect

    name, root = run_name(cfg), storage_root(cfg)
    run_dir = f"{root.rstrip('/')}/{name}"
    _write_text(f"{run_dir}/{checkpoint.CONFIG_FILE}", to_yaml(cfg))
    connect(train_cpus=cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    # Per-operator progress bars from every epoch would bury the training's own progress line,
    # which already reports throughput and the time spent waiting for data.
    DataContext.get_current().enable_progress_bars = False
    stream = build_view_stream(cfg.data)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": cfg, "spec": spec, "counter": stream.counter, "run_dir": run_dir,
            "flops_per_image": train_flops_per_image(spec, cfg.model, cfg.data.views),
        },
        scaling_config=RayScaling(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                  **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=root,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            # Ray Train's per-report INFO lines would interleave with our progress line.
            logging_config=LoggingConfig(log_level="WARNING")),
        datasets={"train": stream.dataset},
    )
    print_fn(f"run {name}: {cfg.model.name} on {cfg.scaling.num_workers} "
             f"{'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s), {cfg.scaling.strategy}, "
             f"{cfg.optim.steps} steps; outputs in {run_dir}")
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    ckpt = result.checkpoint
    accuracy = accuracy_init = None
    if cfg.probe.knn and stream.classes is None:
        print_fn(f"kNN probe skipped: data.source={cfg.data.source} has no labels.")
    elif cfg.probe.knn and ckpt is not None:
        accuracy, accuracy_init = probe_checkpoint(cfg, spec, ckpt)
    return PretrainResult(run_dir, ckpt.path if ckpt else None, dict(result.metrics or {}),
                          accuracy, accuracy_init, seconds)


def probe_checkpoint(cfg: PretrainConfig, spec: BackboneSpec, ckpt) -> tuple[float, float]:
    """kNN accuracy of the checkpoint's backbone and of the same backbone at initialization."""
    from lejepa_ray.probe import knn_probe, load_labelled

    data = load_labelled(cfg.data, cfg.data.views.global_size, cfg.probe.max_samples)
    torch.manual_seed(cfg.seed)
    encoder = LeJEPAEncoder(spec, cfg.model)
    at_init = knn_probe(encoder, data, cfg.probe)
    with ckpt.as_directory() as path:
        checkpoint.load_model_weights(path, encoder)
    return knn_probe(encoder, data, cfg.probe), at_init


def _write_text(uri: str, text: str) -> None:
    """Write ``text`` to a local path or a URI (s3://...), creating the parent folders."""
    from lejepa_ray.data.sources import resolve_filesystem

    filesystem, where = resolve_filesystem(uri)
    filesystem.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(where) as f:
        f.write(text.encode())


def _batches(counter, cfg: PretrainConfig):
    """Batches of this worker's shard, epoch after epoch, forever."""
    from lejepa_ray.data.stream import iter_epoch

    while True:
        yield from iter_epoch(counter, cfg.data, cfg.scaling.batch_size)


def train_worker(config: dict) -> None:
    """Ray Train worker loop: one data-parallel rank of the run."""
    import ray.train
    import ray.train.torch

    from lejepa_ray.data.stream import skip_metrics
    from lejepa_ray.flops import peak_tflops
    from lejepa_ray.train import Trainer, fit

    cfg: PretrainConfig = config["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    trainer = Trainer(cfg, config["spec"], device)
    writer = MetricsWriter(config["run_dir"], cfg.optim.steps) if rank == 0 else None
    config_yaml = to_yaml(cfg)

    def report(step: int, metrics: dict[str, float] | None, save: bool) -> None:
        metrics = dict(metrics or {})
        if writer is not None and metrics:
            metrics.update(skip_metrics(config["counter"]))
            writer.log(step, metrics)
        metrics["step"] = step
        if not save:
            ray.train.report(metrics)
            return
        if writer is not None:
            writer.sync()
        with tempfile.TemporaryDirectory(prefix="lejepa-ckpt-") as tmp:
            checkpoint.save(tmp, trainer, config_yaml)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{step:08d}")

    fit(trainer, _batches(config["counter"], cfg), report=report,
        flops_per_image=config["flops_per_image"],
        peak_tflops=peak_tflops(device, cfg.logging.peak_tflops), world_size=world)
    if writer is not None:
        writer.close()
