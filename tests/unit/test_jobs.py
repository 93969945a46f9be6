"""jobs/: what `ray job submit` uploads of the working directory (Ray's own zip filter).

Multi-process, Ray and slow tests: ``tests/integration/test_jobs.py``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_working_dir_upload_leaves_out_envs_outputs_and_data(tmp_path):
    """The repository's .gitignore and .rayignore, applied by Ray's own packaging code (what
    `ray job submit --working-dir .` zips), to a tree with everything a checkout may hold."""
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import _zip_files

    tree = tmp_path / "checkout"
    for name in (".gitignore", ".rayignore"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text((ROOT / name).read_text())
    kept = [
        "jobs/pretrain.py",
        "platform/lejepa_ray/configs/quickstart.yaml",
        "tune_spaces/quick.yaml",
        "platform/lejepa_ray/cli/__init__.py",
        "platform/lejepa_ray/data/stream.py",
        "constraints.txt",
    ]
    left_out = [
        ".venv/lib/torch.so",
        "runs/r/checkpoint_00000008/state.json",
        "data/train/000.jpg",
        "shards/part-0.parquet",
        ".git/HEAD",
        "benchmarks/results/x.json",
        "platform/lejepa_ray/__pycache__/cli.pyc",
        "tests/unit/test_jobs.py",
    ]
    for rel in kept + left_out:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    _zip_files(str(tree), [], str(tmp_path / "pkg.zip"), include_gitignore=True)
    uploaded = set(ZipFile(tmp_path / "pkg.zip").namelist())
    assert set(kept) <= uploaded, set(kept) - uploaded
    assert not uploaded & set(left_out), uploaded & set(left_out)
