"""benchmarks/gpu_check.py --dry-run: every check of the GPU script, at toy sizes on the CPU,
so that the script works the day a GPU is lent (docs/scaling.md, "The GPU check")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import clean_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _dry_run(*args: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=900,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return proc.returncode, json.loads(lines[-1]), proc.stdout


@pytest.mark.slow
def test_the_dry_run_runs_every_check():
    code, out, printed = _dry_run()
    assert code == 0 and out["failed"] == [], printed
    checks = out["checks"]
    assert all(c["status"] == "ok" for c in checks.values()), printed  # Ray is installed here
    assert len(printed.splitlines()) == len(checks) + 2  # a header, a line each, the JSON
    assert checks["environment"]["device"] == "cpu"
    assert checks["sigreg"]["worst_rel_diff"] < 1e-4
    for name in ("vit_l", "vit_l_compiled", "imagenette_vits", "gigantic_fsdp"):
        assert checks[name]["images_per_s"] > 0 and checks[name]["tflop_per_image"] > 0, name
    assert checks["vit_l_compiled"]["compile"] and not checks["vit_l"]["compile"]
    giant = checks["gigantic_fsdp"]
    assert giant["strategy"] == "fsdp" and giant["activation_checkpointing"]
    assert giant["estimated_gb"] > 0
    assert 0 < giant["sigreg_share"] < 1 and 0 < giant["loss_share"] < 1
    assert checks["device_views"]["views_per_s"] > 0
    assert 0 <= checks["data_stream"]["data_wait_fraction"] <= 1
    assert checks["nccl_pair"]["sigreg_rel_diff"] < 1e-6  # float64 over gloo


@pytest.mark.slow
def test_a_failing_check_is_reported_and_the_others_still_run():
    code, out, printed = _dry_run(
        "--only", "environment,device_views", "--fail-check", "environment"
    )
    assert code == 1 and out["failed"] == ["environment"], printed
    failed = out["checks"]["environment"]
    assert failed["summary"] == "RuntimeError: environment was told to fail (--fail-check)"
    assert any("told to fail" in line for line in failed["traceback"])
    assert out["checks"]["device_views"]["status"] == "ok"
    # The budget: a check that would start after it is skipped, and said to be.
    _, out, _ = _dry_run("--only", "environment", "--budget-s", "1")
    assert out["checks"]["environment"] == {
        "status": "skipped",
        "summary": "the time budget ran out",
    }
