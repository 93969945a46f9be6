"""lejepa_ray.cli: the installed `lejepa-ray` console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from procs import TINY, clean_env, console_script

import lejepa_ray
from lejepa_ray.cli import main


def test_console_script_reports_version():
    out = subprocess.run([console_script(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lejepa-ray {lejepa_ray.__version__}"
    assert lejepa_ray.__version__ != "0+unknown"


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
    ],
)
def test_pretrain_config_errors_exit_2_before_ray(args, message, capsys, monkeypatch):
    from lejepa_ray import runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked for resources before the config was checked")

    monkeypatch.setattr(runtime, "connect", no_ray)
    assert main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lejepa-ray: error: ") and message in err


def test_pretrain_job_entry_point_reports_errors_like_the_cli():
    job = Path(__file__).parents[1] / "jobs" / "pretrain.py"
    out = subprocess.run([sys.executable, str(job), "loss.lam=2"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "loss.lam=2" in out.stderr


# What Ray prints on its own: driver log records, worker prefixes, C++ notices, warnings.
RAY_LINE = re.compile(
    r"\(\w+ pid=\d+|\(raylet\)|\b(INFO|WARNING)\b|\w+\.cc:\d+|Warning:|"
    r"PlacementGroupCleaner|SplitCoordinator|Dataset \w+ execution"
)


@pytest.mark.slow
def test_default_run_prints_our_lines_and_none_of_rays(tmp_path):
    out = subprocess.run(
        [console_script(), "pretrain", *TINY, f"storage_path={tmp_path}", "name=console"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0, "\n".join(lines[-40:])
    assert [line for line in lines if RAY_LINE.search(line)] == [], "\n".join(lines)
    assert lines[0].startswith("run console: ")
    assert any(line.startswith("step 8/8 | loss ") for line in lines)
    assert any(line.strip().startswith("raw pixels ") for line in lines)
    assert len(lines) < 25, "\n".join(lines)
