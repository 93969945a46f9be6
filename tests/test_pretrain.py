"""The pretraining job end to end on Ray: 2 CPU workers, digits, DDP and FSDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lejepa_ray import checkpoint
from lejepa_ray.cli import QUICKSTART
from lejepa_ray.config import PretrainConfig, load_config, to_yaml
from lejepa_ray.model import LeJEPAEncoder
from lejepa_ray.pretrain import resolve_backbone, run


def _quickstart(tmp_path: Path, name: str, *overrides: str) -> PretrainConfig:
    """The CPU quickstart, stored under ``tmp_path/name``."""
    return load_config(QUICKSTART, [f"name={name}", f"storage_path={tmp_path}", *overrides])


def _scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(f"{run_dir}/tensorboard")
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalized covariance spectrum: 1 for a collapse, dim for isotropy."""
    eig = torch.linalg.eigvalsh(torch.cov(z.T.double())).clamp_min(0)
    p = eig / eig.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


@pytest.mark.slow
def test_ddp_run_on_digits_learns_without_collapse(ray_cluster, tmp_path):
    cfg = _quickstart(tmp_path, "ddp", "optim.steps=40", "optim.warmup_steps=4",
                      "logging.every_steps=2", "checkpoint.every_steps=20",
                      "probe.max_samples=600")
    result = run(cfg)

    # Outputs where the run says they are: config, TensorBoard events, both ranks' shards.
    run_dir = Path(result.run_dir)
    assert run_dir == tmp_path / "ddp"
    assert (run_dir / "config.yaml").read_text() == to_yaml(cfg)
    files = {p.name for p in Path(result.checkpoint).iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "config.yaml", "state.json"} <= files
    assert Path(result.checkpoint).name == "checkpoint_00000040"
    assert result.metrics["step"] == 40

    scalars = _scalars(result.run_dir)
    for tag in ("loss", "loss/prediction", "loss/sigreg", "selection_score", "lr", "grad_norm",
                "throughput/images_per_s", "throughput/views_per_s",
                "throughput/tflops_per_device", "time/data_wait_fraction", "memory/peak_gib",
                "data/seen", "data/skipped", "data/skip_rate"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["loss"]] == list(range(2, 41, 2))
    loss = [v for _, v in scalars["loss"]]
    sigreg = [v for _, v in scalars["loss/sigreg"]]
    assert sum(loss[-3:]) / 3 < 0.85 * sum(loss[:2]) / 2, loss
    assert sum(sigreg[-3:]) / 3 < 0.7 * sum(sigreg[:2]) / 2, sigreg

    # No collapse: a collapsed encoder maps every image to one point (spread 0, effective rank
    # 1, kNN at chance, 0.1). After 40 CPU steps the spectrum is far from isotropic still
    # (SIGReg keeps falling), but the embeddings are spread and carry the digit classes.
    encoder = LeJEPAEncoder(resolve_backbone(cfg), cfg.model)
    checkpoint.load_model_weights(result.checkpoint, encoder)
    from lejepa_ray.probe import load_labelled

    images = load_labelled(cfg.data, cfg.data.views.global_size, 512).images
    encoder.eval()
    with torch.no_grad():
        z = encoder(images.unsqueeze(1))[0]  # (N, projector_dim)
    rank = _effective_rank(z)
    print(f"spread {z.std(0).mean():.3f}, effective rank {rank:.1f} of {z.shape[1]}, "
          f"kNN {result.knn_accuracy:.3f} (init {result.knn_accuracy_at_init:.3f}), "
          f"losses {[round(x, 3) for x in loss]}")
    assert z.std(0).mean() > 0.2
    assert rank > 1.5
    assert result.knn_accuracy is not None and result.knn_accuracy > 0.3


@pytest.mark.slow
def test_fsdp_run_checkpoints_shards_that_load_in_one_process(ray_cluster, tmp_path):
    cfg = _quickstart(tmp_path, "fsdp", "scaling.strategy=fsdp", "optim.steps=4",
                      "optim.warmup_steps=1", "logging.every_steps=2", "probe.max_samples=200")
    result = run(cfg)
    files = {p.name for p in Path(result.checkpoint).iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= files
    assert result.metrics["step"] == 4
    assert result.knn_accuracy is not None  # the driver loaded the gathered shards
