"""cluster.yaml against the Ray cluster launcher's own schema, and every job config against its
node types (lejepa_ray.cluster); no cloud calls."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from lejepa_ray.cli import main
from lejepa_ray.cluster import ClusterFitError, check_fits, worker_types
from lejepa_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_schema(config):
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_check_is_not_vacuous(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["no_such_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_head_does_no_training_and_workers_scale_from_zero_on_spot(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is on-demand
    for name, node in nodes.items():
        if name != config["head_node_type"]:
            assert node["min_workers"] == 0 and node["max_workers"] >= 1, name
            assert node["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}, name
    assert config["idle_timeout_minutes"] > 0
    gpus = {t.name: t.gpus for t in worker_types(config)}
    assert gpus["gpu_8x_h100"] == 8 and 1 <= gpus["gpu_sweep"] < 8


def test_nodes_run_the_pinned_stack_with_token_auth_and_s3_storage(config):
    docker = config["docker"]
    tag = f"rayproject/ray:{ray.__version__}-py311-"
    assert docker["head_image"].startswith(tag) and docker["worker_image"].startswith(tag)
    assert any("-c /home/ray/lejepa-ray/constraints.txt" in c for c in config["setup_commands"])
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start and "LEJEPA_STORAGE_PATH=s3://" in start, key
    # Nothing opens the dashboard or job API beyond the cluster's own security group.
    assert "security_group" not in config["provider"]


def test_every_worker_node_turns_spot_notices_into_preemption_drains(config):
    # After its raylet starts, in the background, with the token the cluster uses, pointed at
    # the head; the module it runs exists and has the entry point.
    start = config["worker_start_ray_commands"]
    watcher = [c for c in start if "lejepa_ray.launch.spot" in c]
    assert len(watcher) == 1 and start.index(watcher[0]) > 1, start
    assert "RAY_AUTH_MODE=token" in watcher[0] and "--address=$RAY_HEAD_IP:6379" in watcher[0]
    assert watcher[0].rstrip().endswith("&"), "the watcher must not block the node's start"
    from lejepa_ray.launch import spot

    assert callable(spot.main)


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.stem)
def test_every_job_config_fits_the_cluster(config, path):
    cfg = load_config(path)
    fit = check_fits(cfg, config)
    assert fit.workers == cfg.scaling.max_workers and sum(fit.capacity.values()) >= fit.workers
    if cfg.scaling.use_gpu:
        assert "gpu_8x_h100" in fit.per_node


def test_the_sweep_config_runs_8_trials_at_once_on_the_sweep_nodes(config):
    cfg = load_config(ROOT / "jobs" / "configs" / "imagenet1k_vit_small_sweep.yaml")
    assert cfg.scaling.num_workers == 1 and cfg.scaling.use_gpu
    assert check_fits(cfg, config, concurrent=8).per_node["gpu_sweep"] == 1


def test_gigantic_fills_four_h100_nodes(config):
    cfg = load_config(ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml")
    fit = check_fits(cfg, config)
    assert fit.per_node["gpu_8x_h100"] == 8 and fit.capacity["gpu_8x_h100"] >= 32


@pytest.mark.parametrize(
    ("overrides", "concurrent", "message"),
    [
        (["scaling.num_workers=64"], 1, "hold only 40"),
        (["scaling.cpus_per_worker=200"], 1, "no worker node type has that"),
        ([], 6, r"48 training workers \(at least 8 per run × 6"),
    ],
)
def test_runs_that_cannot_fit_are_refused(config, overrides, concurrent, message):
    cfg = load_config(ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml", overrides)
    with pytest.raises(ClusterFitError, match=message):
        check_fits(cfg, config, concurrent)


def test_an_elastic_run_needs_room_for_its_minimum_and_says_how_far_it_can_grow(config):
    gigantic = ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml"
    grows = load_config(gigantic, ["scaling.num_workers=[40,41]"])
    fit = check_fits(grows, config)
    assert fit.workers == 41 and sum(fit.capacity.values()) == 40
    assert fit.describe().startswith("fits, smaller: room for 40 of the 41")
    with pytest.raises(ClusterFitError, match=r"80 training workers \(at least 40 per run × 2"):
        check_fits(grows, config, concurrent=2)
    too_big = load_config(gigantic, ["scaling.num_workers=[41,42]"])
    with pytest.raises(ClusterFitError, match=r"41 training workers \(at least 41 per run"):
        check_fits(too_big, config)


def test_custom_worker_resources_must_be_offered_by_a_node_type(config):
    gigantic = ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml"
    cfg = load_config(gigantic, ["scaling.resources={spot_slot: 1}"])
    with pytest.raises(ClusterFitError, match=r"1 GPU, 8 CPUs, 1 spot_slot.*no worker node type"):
        check_fits(cfg, config)
    offered = copy.deepcopy(config)
    offered["available_node_types"]["gpu_8x_h100"]["resources"]["spot_slot"] = 8
    assert check_fits(cfg, offered).per_node == {"gpu_8x_h100": 8}


def test_node_types_must_declare_resources(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_sweep"]["resources"] = {}
    with pytest.raises(ClusterFitError, match=r"declares no resources\.CPU"):
        worker_types(broken)


def test_cluster_check_command(capsys):
    gigantic = str(ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml")
    assert main(["cluster-check", "--cluster", str(CLUSTER_YAML), "--config", gigantic]) == 0
    assert "fits: 32 training worker(s)" in capsys.readouterr().out
    check = ["cluster-check", "--cluster", str(CLUSTER_YAML), "--config", gigantic]
    # The recipe is elastic ([8, 32]): two at once start but cannot both grow; six do not fit.
    assert main([*check, "--concurrent", "2"]) == 0
    assert "fits, smaller: room for 40 of the 64" in capsys.readouterr().out
    assert main([*check, "--concurrent", "6"]) == 2
    assert "Raise max_workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["imagenet1k_vit_large.yaml", "imagenet1k_vit_gigantic.yaml"], ids=lambda n: n[:-5]
)
def test_the_large_recipes_make_their_views_on_the_data_nodes(config, name):
    cfg = load_config(ROOT / "jobs" / "configs" / name)
    assert cfg.data.node_resource == "data_node"
    fit = check_fits(cfg, config)
    assert fit.data_types == ("cpu_data",)
    assert fit.describe().endswith("; views on cpu_data")


def test_a_data_node_resource_no_node_type_declares_is_refused(config):
    gigantic = ROOT / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml"
    cfg = load_config(gigantic, ["data.node_resource=decoder"])
    with pytest.raises(ClusterFitError, match=r"data.node_resource=decoder.*no worker node type"):
        check_fits(cfg, config)
    unset = load_config(gigantic, ["data.node_resource=null"])
    assert check_fits(unset, config).data_types == ()
