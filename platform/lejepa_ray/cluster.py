"""Does a run fit a cluster? Checked offline against a Ray cluster launcher YAML.

``cluster.yaml`` declares each node type's ``resources`` (CPU, GPU) and ``max_workers``. A run
asks Ray Train for ``scaling.num_workers`` workers of one GPU (when ``use_gpu``) and
``scaling.cpus_per_worker`` CPUs each; a sweep asks for that per trial, ``--concurrent`` trials
at once. This module answers, before anyone pays for nodes, whether the autoscaler can ever
place that: the worker bundles must fit on some node type, and the node types' maximum counts
must hold all of them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import ClusterFitError


@dataclass(frozen=True)
class NodeType:
    """One worker node type of a cluster launcher YAML."""

    name: str
    cpus: float
    """Logical CPUs the node declares (``resources.CPU``)."""
    gpus: int
    """GPUs the node declares (``resources.GPU``)."""
    max_workers: int
    """The most nodes of this type the autoscaler starts."""


@dataclass(frozen=True)
class Fit:
    """Where the training workers of a run (or of a sweep's concurrent trials) go."""

    workers: int
    """Training workers asked for: ``num_workers × concurrent``."""
    per_node: dict[str, int]
    """Workers one node of each eligible type holds."""
    capacity: dict[str, int]
    """Workers all nodes of each eligible type hold (``per_node × max_workers``); which types
    the autoscaler starts is its choice."""

    def describe(self) -> str:
        types = ", ".join(
            f"{name} ({self.per_node[name]} per node, up to {c})"
            for name, c in self.capacity.items()
        )
        return f"fits: {self.workers} training worker(s); node types that can hold them: {types}"


def load_cluster(path: str | Path) -> dict:
    """A cluster launcher YAML as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ClusterFitError(
            f"cluster config {path} does not exist; pass the YAML you give "
            "`ray up` (the repository's is cluster.yaml)."
        )
    return yaml.safe_load(path.read_text())


def worker_types(cluster: dict) -> list[NodeType]:
    """The node types training can use: every type except the head's.

    Raises:
        ClusterFitError: a worker type that does not declare ``resources`` (then nothing can be
            checked offline; the autoscaler would only learn them from the cloud).
    """
    out = []
    for name, node in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        resources = node.get("resources") or {}
        if "CPU" not in resources:
            raise ClusterFitError(
                f"node type {name!r} declares no resources.CPU; declare its "
                "CPU (and GPU) counts so runs can be checked against it."
            )
        out.append(
            NodeType(
                name,
                float(resources["CPU"]),
                int(resources.get("GPU", 0)),
                int(node.get("max_workers", 0)),
            )
        )
    return out


def check_fits(cfg: PretrainConfig, cluster: dict, concurrent: int = 1) -> Fit:
    """Where ``concurrent`` runs of ``cfg`` would place their training workers.

    Raises:
        ClusterFitError: no node type holds one worker, or all of them together hold fewer
            workers than asked for; the message names the numbers and what to change.
    """
    s = cfg.scaling
    gpus = 1 if s.use_gpu else 0
    need = s.num_workers * concurrent
    per_node, capacity = {}, {}
    types = worker_types(cluster)
    for t in types:
        if t.gpus < gpus or t.cpus < s.cpus_per_worker:
            continue
        by_cpu = math.floor(t.cpus / s.cpus_per_worker)
        per_node[t.name] = min(by_cpu, t.gpus // gpus) if gpus else by_cpu
        capacity[t.name] = per_node[t.name] * t.max_workers
    asked = f"{gpus} GPU and {s.cpus_per_worker:g} CPUs" if gpus else f"{s.cpus_per_worker:g} CPUs"
    if not per_node:
        have = "; ".join(f"{t.name}: {t.gpus} GPU, {t.cpus:g} CPU" for t in types)
        raise ClusterFitError(
            f"each training worker asks for {asked} (scaling.use_gpu, "
            f"scaling.cpus_per_worker), but no worker node type has that "
            f"({have}). Lower scaling.cpus_per_worker or add a node type."
        )
    if sum(capacity.values()) < need:
        held = ", ".join(f"{name}: {c}" for name, c in capacity.items())
        raise ClusterFitError(
            f"{need} training workers ({s.num_workers} per run × {concurrent} at once), each "
            f"with {asked}, but the node types' max_workers hold only {sum(capacity.values())} "
            f"({held}). Raise max_workers in the cluster YAML, or lower scaling.num_workers or "
            "--concurrent."
        )
    return Fit(need, per_node, capacity)
