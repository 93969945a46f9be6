"""Export: a checkpoint's backbone comes out as an ordinary timm model, loaded by timm."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from export_helpers import _trained_checkpoint
from safetensors.torch import load_file

from lejepa_ray.cli import main
from lejepa_ray.config import to_yaml
from lejepa_ray.evaluate.export import export


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_exported_backbone_loads_in_timm_with_the_trained_features(tmp_path, name):
    path, trainer = _trained_checkpoint(tmp_path, name)
    result = export(path, tmp_path / "out")
    out = tmp_path / "out"
    hub = json.loads((out / "config.json").read_text())
    assert hub["architecture"] == name and hub["num_classes"] == 0
    assert result.step == 2 and hub["lejepa"]["step"] == 2
    # The arguments the backbone was built with for the run's view sizes travel with it.
    assert trainer.spec.kwargs.items() <= hub["model_args"].items()
    if name.startswith("vit"):
        assert hub["model_args"]["dynamic_img_size"] is True

    # The documented call, with nothing but the files (pretrained=True reads the local file).
    model = timm.create_model(
        hub["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        **hub["model_args"],
    ).eval()
    trained = trainer.encoder.backbone.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)

    projector = load_file(out / "projector.safetensors")
    assert projector.keys() == trainer.encoder.projector.state_dict().keys()
    for k, v in trainer.encoder.projector.state_dict().items():
        assert torch.equal(projector[k], v), k
    assert not any(k.startswith("projector") for k in load_file(out / "model.safetensors"))
    assert (out / "lejepa.yaml").read_text() == to_yaml(trainer.cfg)


def test_export_command_says_how_to_load_and_fails_clearly(tmp_path, capsys):
    path, _ = _trained_checkpoint(tmp_path, "resnet18")
    assert main(["export", str(path), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "exported resnet18 (11.2M parameters)" in printed and "step 2" in printed
    assert "timm.create_model('resnet18', pretrained=True, num_classes=0" in printed

    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "does not exist; pass a run directory" in capsys.readouterr().err
    (path / "__0_0.distcp").write_bytes(b"")
    assert main(["export", str(path), str(tmp_path / "o3")]) == 2
    assert "is corrupt: __0_0.distcp has 0 bytes" in capsys.readouterr().err
