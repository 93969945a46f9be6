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
from lejepa_ray.evaluation.export import export


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

    # The documented one line, with nothing but the files (pretrained=True reads them).
    model = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    assert result.load_line() == (
        f"timm.create_model('local-dir:{out.resolve()}', pretrained=True, num_classes=0)"
    )
    # The export describes the run: timm resolves its preprocessing, nothing of the
    # architecture's published ImageNet weights remains.
    size = trainer.spec.global_size
    assert timm.data.resolve_data_config({}, model=model) == {
        "input_size": (3, size, size),
        "interpolation": "bilinear",
        "mean": [round(float(m) / 255, 6) for m in trainer.encoder.mean.flatten()],
        "std": [round(float(s) / 255, 6) for s in trainer.encoder.std.flatten()],
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    assert not {"tag", "license", "test_input_size", "hf_hub_id"} & hub["pretrained_cfg"].keys()
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
    assert (
        "timm.create_model('local-dir:" in printed and "pretrained=True, num_classes=0)" in printed
    )

    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "does not exist; pass a run directory" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()  # nothing written for a checkpoint that is not there

    # An output folder that cannot be made is refused before the model is loaded.
    from lejepa_ray.evaluation import export as export_module

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_module, "load_encoder", never)
        assert main(["export", str(path), "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "lejepa-ray: error: cannot create the export folder '/proc/x' (No such file or "
        "directory): give a folder you can write to."
    )
    (path / "__0_0.distcp").write_bytes(b"")
    assert main(["export", str(path), str(tmp_path / "o3")]) == 2
    assert "is corrupt: __0_0.distcp has 0 bytes" in capsys.readouterr().err


def test_an_onnx_export_matches_pytorch_with_onnxruntime(tmp_path, capsys):
    import onnxruntime

    from lejepa_ray.evaluation.export import ONNX_TOLERANCE, FrozenBackbone

    path, trainer = _trained_checkpoint(tmp_path, "resnet18")
    out = tmp_path / "out"
    assert main(["export", str(path), str(out), "--format", "onnx"]) == 0
    assert "onnxruntime matches PyTorch within" in capsys.readouterr().out
    hub = json.loads((out / "config.json").read_text())
    assert 0 <= hub["lejepa"]["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE  # features are ~0.4

    # Another batch size than the exporter saw, through onnxruntime alone.
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = FrozenBackbone(trainer.encoder.backbone.eval())(images).numpy()
    assert got.shape == (5, 512)
    assert abs(got - expected).max() <= ONNX_TOLERANCE * max(1.0, abs(expected).max())
    # The timm layout is still there: the ONNX format adds a file, it replaces none.
    assert (out / "model.safetensors").exists() and (out / "projector.safetensors").exists()
