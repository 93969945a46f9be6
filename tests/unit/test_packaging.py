"""Package data: the configs the command line reads at run time ship inside the wheel and are
found through the installed package, not through a repository checkout.

Multi-process, Ray and slow tests: ``tests/integration/test_packaging.py``."""

from __future__ import annotations

from pathlib import Path

import lejepa_ray
from lejepa_ray.cli import main
from lejepa_ray.config import check_run, default_config, load_config


def test_the_default_config_is_package_data():
    path = default_config()
    assert path == Path(lejepa_ray.__file__).resolve().parent / "configs" / "quickstart.yaml"
    check_run(load_config(path))


def test_a_missing_default_config_says_what_to_pass(tmp_path, capsys, monkeypatch):
    from lejepa_ray import config
    from lejepa_ray.launch import runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked for resources without a config")

    monkeypatch.setattr(runtime, "connect", no_ray)
    monkeypatch.setattr(config, "QUICKSTART", tmp_path / "configs" / "quickstart.yaml")
    assert main(["pretrain"]) == 2
    err = capsys.readouterr().err
    assert "packaged default config" in err and "is missing" in err, err
    assert "pass a config file" in err, err
