"""lejepa_ray.cli: the installed `lejepa-ray` console script.

Multi-process, Ray and slow tests: ``tests/integration/test_cli.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lejepa_ray.cli import main
from lejepa_ray.cli.commands import COMMANDS


def test_env_lists_the_stack(capsys):
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    for name in ("torch", "ray", "timm", "cuda devices"):
        assert name in printed


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: lejepa-ray" in out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_refused_with_the_list(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "lejepa-ray: error: unknown command: no-such-command" in err and "pretrain" in err
    assert main(["data", "nope"]) == 2
    assert "unknown data command: nope" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_s_help_is_generated_from_its_options(name, capsys):
    """Each option's flag, docstring and default come from its dataclass: one place."""
    import dataclasses

    assert main([*name.split(), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    cls = COMMANDS[name].options_class()
    fields = dataclasses.fields(cls) if cls else ()
    for f in fields:
        if f.name in COMMANDS[name].skip:
            continue
        assert (f.name if f.name in COMMANDS[name].positional else f"--{f.name}") in out
        if f.default is not dataclasses.MISSING and f.default is not None:
            assert f"default: {f.default}" in out, (f.name, f.default)
    if COMMANDS[name].config:
        assert "--config" in out and "--loss.lam" in out and "--data.views.global_size" in out


def test_flags_may_be_written_with_dashes_and_override_the_config_file(tmp_path):
    from lejepa_ray.cli.parser import parse

    (tmp_path / "c.yaml").write_text("loss: {lam: 0.2}\noptim: {steps: 70, warmup_steps: 5}\n")
    parsed = parse("pretrain", ["--loss.lam", "0.3", "--config", str(tmp_path / "c.yaml")])
    assert parsed.config.loss.lam == 0.3 and parsed.config.optim.steps == 70
    parsed = parse("eval", ["RUN", "--data", "digits", "--max-samples", "99"])
    assert parsed.options.max_samples == 99 and parsed.options.source == "RUN"


def test_show_config_shows_the_resolved_config(capsys):
    assert main(["pretrain", "--optim.steps", "120", "--show_config"]) == 0
    out = capsys.readouterr().out
    assert "steps: 120" in out and "name: resnet10t" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss.lam", "1.5"], "--loss.lam=1.5 is invalid: expected a value in (0, 1)"),
        (["--loss.lam", "much"], "key \"loss.lam\": Expected a <class 'float'>. Got value: much"),
        (["--model.nme", "resnet18"], "Did you mean --model.name"),
        (["loss.lam=0.02"], "config keys are flags, write --loss.lam 0.02"),
        (["--model.name", "convnext_tiny_hnf_x"], "is not a timm architecture"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["--config"], "--config needs a file"),
        (["--conf", "x.yaml"], "unrecognized arguments: --conf x.yaml. Did you mean --config"),
        (
            ["--data.source", "folder", "--data.path", "/nonexistent"],
            "data.path='/nonexistent' does not exist: point it at an image folder",
        ),
        (
            ["--data.source=parquet", "--data.path=/nonexistent/shards"],
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
    one_line_error(capsys, message)


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
    from lejepa_ray.cli import commands

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setitem(commands.COMMANDS, "env", commands.Command("", broken))
    with pytest.raises(ValueError, match="a bug"):
        main(["env"])


ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "jobs" / "configs" / "imagenet1k_vit_large.yaml")
QUICKSTART_YAML = str(ROOT / "platform" / "lejepa_ray" / "configs" / "quickstart.yaml")
QUICK_SPACE = str(ROOT / "tune_spaces" / "quick.yaml")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command asks Ray for anything: bad input is refused before."""
    from lejepa_ray.launch import runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(runtime, "connect", refuse)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lejepa-ray: error: ") and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err
    return err


def test_a_recipe_s_placeholder_bucket_is_named_not_resolved(no_ray, capsys):
    assert main(["pretrain", "--config", RECIPE, "--scaling.use_gpu", "false"]) == 2
    one_line_error(capsys, "data.path='s3://CHANGE-ME/in1k-train' is the recipe's placeholder")


def test_gpu_workers_without_a_gpu_here_are_refused_before_a_local_ray(no_ray, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["pretrain", "--scaling.use_gpu", "true"]) == 2
    one_line_error(capsys, "scaling.use_gpu=true asks for 2 GPU worker(s)", "0 GPU(s)")


def test_an_unreachable_bucket_is_one_line(no_ray, capsys, monkeypatch, tmp_path):
    from lejepa_ray.data import sources

    def unreachable(path):
        raise OSError("When resolving region for bucket 'b': Could not resolve host\nmore")

    monkeypatch.setattr(sources, "resolve_filesystem", unreachable)
    args = ["--data.path=s3://b/in1k", f"--storage_path={tmp_path}", "--scaling.use_gpu=false"]
    assert main(["pretrain", "--config", RECIPE, *args]) == 2
    one_line_error(capsys, "data.path='s3://b/in1k' cannot be read: When resolving", "credentials")


def test_a_folder_without_parquet_is_refused_before_the_run_directory_is_written(
    no_ray, capsys, tmp_path
):
    (tmp_path / "empty").mkdir()
    args = [f"--data.path={tmp_path / 'empty'}", f"--storage_path={tmp_path / 'runs'}"]
    assert main(["pretrain", "--config", RECIPE, *args, "--scaling.use_gpu=false"]) == 2
    one_line_error(capsys, "holds no parquet files")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["data", "convert", "/nonexistent", "OUT"], ["the image folder '/nonexistent' does not"]),
        (["data", "convert", "NOT_YAML", "OUT"], ["is a file, not a folder"]),
        (["data", "convert", "EMPTY", "OUT"], ["holds no images"]),
        (["data", "convert", "IMAGES", "/proc/x"], ["cannot create the output folder '/proc/x'"]),
        (["cluster-check", "--cluster", "NOT_YAML"], ["not.yaml is not valid YAML (line 3)"]),
        (["cluster-check", "--cluster", RECIPE], ["is not a Ray cluster launcher config"]),
        (
            ["sweep", "--space", QUICKSTART_YAML],
            ["looks like a pretrain config, not a search space"],
        ),
        (["pretrain", "--storage_path", "/proc/x"], ["cannot create the storage_path folder"]),
        (
            ["sweep", "--space", QUICK_SPACE, "--storage_path", "/proc/x"],
            ["cannot create the storage_path folder '/proc/x'"],
        ),
    ],
    ids=[
        "convert-missing",
        "convert-file",
        "convert-empty",
        "convert-unwritable",
        "cluster-not-yaml",
        "cluster-not-a-cluster",
        "sweep-space-is-a-config",
        "pretrain-storage-unwritable",
        "sweep-storage-unwritable",
    ],
)
def test_bad_input_to_any_command_is_one_line_before_any_work(
    args, fragments, no_ray, capsys, tmp_path, monkeypatch
):
    from images import make_image_folder

    (tmp_path / "EMPTY").mkdir()
    make_image_folder(tmp_path / "IMAGES", per_class=2, bad=False)
    (tmp_path / "not.yaml").write_text("# a title\nkey: [unclosed\n")
    where = {"OUT": str(tmp_path / "out"), "EMPTY": str(tmp_path / "EMPTY")}
    where.update(IMAGES=str(tmp_path / "IMAGES"), NOT_YAML=str(tmp_path / "not.yaml"))
    assert main([where.get(a, a) for a in args]) == 2
    one_line_error(capsys, *fragments)
    if "OUT" in args:  # refused before the output folder was made
        assert not (tmp_path / "out").exists()
    assert not Path("/proc/x").exists()


def _undocumented(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    from docstring_parser import parse_from_object

    documented = {p.arg_name for p in parse_from_object(cls).params if p.description}
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            missing += _undocumented(hints[f.name], f"{prefix}{f.name}.")
        elif f.name not in documented:
            missing.append(f"{prefix}{f.name}")
    return missing


@pytest.mark.parametrize("name", [n for n in COMMANDS if COMMANDS[n].options or COMMANDS[n].config])
def test_every_option_has_a_docstring_for_its_help(name):
    from lejepa_ray.config import PretrainConfig

    command = COMMANDS[name]
    classes = [c for c in (command.options_class(),) if c]
    classes += [PretrainConfig] if command.config else []
    missing = [m for c in classes for m in _undocumented(c)]
    assert not missing, f"{name}: fields without a docstring: {missing}"


def test_a_missing_option_or_argument_is_named_as_it_is_typed(capsys):
    assert main(["embed", "RUN"]) == 2
    one_line_error(capsys, "missing --data, --out: `lejepa-ray embed --help`")
    assert main(["export"]) == 2
    one_line_error(capsys, "missing SOURCE, OUT_DIR")


def test_a_command_without_options_describes_itself(capsys):
    assert main(["env", "--help"]) == 0
    assert "print package versions" in capsys.readouterr().out
