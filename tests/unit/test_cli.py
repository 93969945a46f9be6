"""lejepa_ray.cli: the installed `lejepa-ray` console script.

Multi-process, Ray and slow tests: ``tests/integration/test_cli.py``."""

from __future__ import annotations

import pytest

from lejepa_ray.cli import main


def test_env_lists_the_stack(capsys):
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    for name in ("torch", "ray", "timm", "cuda devices"):
        assert name in printed


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: lejepa-ray" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["loss.lam=1.5"], "loss.lam=1.5 is invalid: expected a value in (0, 1)"),
        (["model.nme=resnet18"], "Did you mean: 'name'"),
        (["model.name=convnext_tiny_hnf_x"], "is not a timm architecture"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (
            ["data.source=folder", "data.path=/nonexistent"],
            "data.path='/nonexistent' does not exist: point it at an image folder",
        ),
        (
            ["data.source=parquet", "data.path=/nonexistent/shards"],
            "does not exist: point it at parquet shards",
        ),
    ],
)
def test_pretrain_config_errors_exit_2_before_ray(args, message, capsys, monkeypatch):
    from lejepa_ray.launch import runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked for resources before the config was checked")

    monkeypatch.setattr(runtime, "connect", no_ray)
    assert main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lejepa-ray: error: ") and message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"root:x:0:0:root:/root:/bin/bash\n",
            "is not a YAML mapping of config keys (it holds a str)",
        ),
        (b"- loss.lam: 0.1\n", "is not a YAML mapping of config keys (it holds a list)"),
        (b"loss: {lam: [0.1\n", "is not valid YAML at line 2"),
        (b"\x7fELF\x02\x01\x01\x00\xd0\xff", "is not a text file"),
    ],
    ids=["passwd", "list", "broken", "binary"],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_refused_by_name(
    content, message, tmp_path, capsys
):
    path = tmp_path / "cfg"
    path.write_bytes(content)
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lejepa-ray: error: config file {str(path)!r} ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only LejepaRayError is turned into a one-line message: a ValueError from a bug is not."""
    from lejepa_ray import cli

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "_env", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["env"])
