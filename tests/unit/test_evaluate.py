"""lejepa-ray eval: the same probes from a checkpoint and from its export, as JSON."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import _trained_checkpoint

from lejepa_ray.cli import main
from lejepa_ray.evaluation.export import export
from lejepa_ray.evaluation.frozen import evaluate


def test_checkpoint_and_its_export_give_the_same_probes(tmp_path):
    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    export(path, tmp_path / "out")
    a = evaluate(path, "digits", "both", max_samples=300)
    b = evaluate(tmp_path / "out", "digits", "both", max_samples=300)
    assert a.image_size == b.image_size == 32  # the size it was trained at, from either
    assert (a.knn_top1, a.linear_top1) == (b.knn_top1, b.linear_top1)
    assert a.bank + a.queries <= 300 and a.classes == 10
    assert 0 <= a.knn_top1 <= 1 and 0 <= a.linear_top1 <= 1
    only_knn = evaluate(path, "digits", "knn", max_samples=300)
    assert only_knn.linear_top1 is None and only_knn.knn_top1 == a.knn_top1
    assert a.features == b.features == "backbone"


def test_projector_outputs_are_probed_from_a_checkpoint_not_from_an_export(tmp_path):
    from lejepa_ray.evaluation.export import load_encoder
    from lejepa_ray.evaluation.frozen import load_frozen

    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    model, size = load_frozen(path, "projector")
    loaded = load_encoder(path)
    trained = loaded.encoder.eval()
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        out = model.features(images)
        assert out.shape == (4, loaded.cfg.model.projector_dim)
        torch.testing.assert_close(out, trained.projector(trained.features(images)))
    result = evaluate(path, "digits", "knn", features="projector", max_samples=300)
    assert result.features == "projector" and 0 <= result.knn_top1 <= 1
    export(path, tmp_path / "out")
    with pytest.raises(ValueError, match="give the run or checkpoint directory"):
        evaluate(tmp_path / "out", "digits", features="projector")
    with pytest.raises(ValueError, match="features='neck' is invalid: expected one of backbone"):
        load_frozen(path, "neck")


def test_eval_command_prints_a_summary_then_json(tmp_path, capsys):
    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    assert (
        main(["eval", str(path), "--data", "digits", "--probe", "linear", "--max-samples", "200"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["knn_top1"] is None and 0 <= result["linear_top1"] <= 1
    assert lines[0].startswith("linear top-1 ") and "at 32 px: fitted on digits" in lines[0]
    assert result["protocol"] == "hash 80/20" and result["val_data"] is None
    assert main(["eval", str(path), "--data", str(tmp_path / "nothing")]) == 2
    assert "neither a source (synthetic, digits) nor an existing path" in capsys.readouterr().err


def test_val_data_is_scored_on_images_the_probes_were_not_fitted_on(tmp_path, capsys):
    from lejepa_ray.data.config import DataConfig
    from lejepa_ray.data.sources import LocalSource

    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    assert (
        main(
            ["eval", str(path), "--data", "digits:train", "--val-data", "digits:val", "--baseline"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    train, val = (len(LocalSource(DataConfig(source="digits", split=s))) for s in ("train", "val"))
    assert result["protocol"] == "train/val" and result["val_data"] == "digits:val"
    assert (result["bank"], result["queries"]) == (train, val) and train + val == 1797
    # The raw-pixel baseline on the same split: digits are easy for it.
    assert result["raw_knn_top1"] > 0.9 and result["raw_linear_top1"] > 0.9
    assert "raw-pixel linear top-1" in lines[0] and f"digits:val ({val} images)" in lines[0]


def test_eval_of_unlabelled_data_says_so(tmp_path):
    from images import photo

    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    folder = tmp_path / "flat"  # images without class subfolders: no labels
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_bytes(photo(seed=i))
    with pytest.raises(ValueError, match=r"labelled images of at least 2 classes"):
        evaluate(path, str(folder), "both")


def test_linear_probe_separates_separable_features():
    from lejepa_ray.evaluation.probe import linear_accuracy

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centers = torch.randn(4, 16, generator=gen) * 5
    feats = centers[labels] + torch.randn(200, 16, generator=gen) * 0.1
    query = torch.arange(200) % 5 == 0
    assert linear_accuracy(feats, labels, query) == 1.0
    noise = torch.randn(200, 16, generator=gen)
    assert linear_accuracy(noise, labels, query) < 0.6
