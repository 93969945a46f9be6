"""Every ``lejepa-ray`` command and every Python block of the README, run as written, in order,
at a smaller step count: the README cannot drift from the code.

The only changes made to them: ``/data/`` is a folder of generated images under the test's
temporary directory, ``s3://my-bucket/`` a prefix on the test's S3 server, and pretraining runs
8 steps (``procs.TINY``), without probes but for the quickstart, whose console is compared with
the README's. ``ray job submit`` is run by ``test_jobs.py``; ``tests/unit/test_readme.py``
checks that nothing else is left out."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from images import make_image_folder
from procs import TINY, clean_env, console_script, flags
from readme_helpers import ROOT, bash_commands, console_block, python_blocks, shape

from lejepa_ray.cli import main

pytestmark = pytest.mark.slow

# Runs other than the quickstart take 4 steps on one worker and skip the probes (kNN and
# RankMe): what is checked is that each command runs as written, and every second counts in CI.
QUIET = [
    *TINY,
    "optim.steps=4",
    "optim.warmup_steps=1",
    "scaling.num_workers=1",
    "loss.score_smoothing_steps=2",
    "probe.knn=false",
    "logging.rankme_samples=0",
]


def _here(text: str, tmp_path, s3_server) -> str:
    return text.replace("/data/", f"{tmp_path}/data/").replace(
        "s3://my-bucket/", s3_server.uri("readme") + "/"
    )


def test_the_readme_runs(ray_cluster, s3_server, tmp_path, monkeypatch, capsys):
    make_image_folder(tmp_path / "data" / "my-images", per_class=40, bad=False)
    for shared in ("jobs", "cluster.yaml"):  # what cluster-check reads, as from a checkout
        os.symlink(ROOT / shared, tmp_path / shared)
    monkeypatch.chdir(tmp_path)

    ran = []
    for command in bash_commands():
        if not command.startswith("lejepa-ray "):
            continue
        argv = shlex.split(_here(command, tmp_path, s3_server))[1:]
        if argv == ["pretrain"]:
            # As a user runs it, in a process of its own (its workers' lines reach the console
            # only there): the same kinds of line, in the same order, as the README shows.
            out = subprocess.run(
                [console_script(), *argv, *flags(TINY)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one console, in the order it was written
                text=True,
                env=clean_env(),
                timeout=600,
            )
            console = out.stdout
            assert out.returncode == 0, console[-3000:]
            assert shape(console) == shape(console_block()), console
            ran.append(argv[0])
            continue
        if argv[0] == "pretrain":
            argv += flags(QUIET)
        assert main(argv) == 0, f"{command}\n{capsys.readouterr().err[-3000:]}"
        ran.append(argv[0])
    assert {"pretrain", "data", "export", "eval", "embed", "cluster-check"} <= set(ran)

    for body in python_blocks():
        code = _here(body, tmp_path, s3_server)
        code = code.replace('overrides={"optim.steps": 300}', f"overrides={QUIET!r}")
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "embeddings" / "api" / "_SUCCESS").exists()
