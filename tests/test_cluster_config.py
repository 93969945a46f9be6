"""cluster.yaml against the Ray cluster launcher's own schema (no cloud calls)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


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


def test_head_does_no_training_and_gpu_workers_scale_from_zero(config):
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    for name, node in nodes.items():
        if name != config["head_node_type"]:
            assert node["min_workers"] == 0, name
