"""Does a run fit a cluster? Checked offline against a Ray cluster launcher YAML.

``cluster.yaml`` declares each node type's ``resources`` (CPU, GPU, custom) and
``max_workers``. A run asks Ray Train for ``scaling.num_workers`` workers of one GPU (when
``use_gpu``), ``scaling.cpus_per_worker`` CPUs and ``scaling.resources`` each; a sweep asks for
that per trial, ``--concurrent`` trials at once. This module answers, before anyone pays for
nodes, whether the autoscaler can ever place that: the worker bundles must fit on some node
type, and the node types' maximum counts must hold all of them at once. An elastic run
(``num_workers: [min, max]``) needs room for ``min`` to start; room for fewer than ``max`` is
reported as the size it can grow to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lejepa_ray.config import PretrainConfig
from lejepa_ray.errors import ClusterFitError, option


@dataclass
class ClusterCheckOptions:
    """Check, without any cloud call, that the training workers a pretrain config asks for
    (``scaling.num_workers``, one GPU each with ``scaling.use_gpu``,
    ``scaling.cpus_per_worker`` CPUs and ``scaling.resources``), times ``concurrent`` sweep
    trials, fit the node types a Ray cluster launcher YAML declares. An elastic range
    ``[min, max]`` needs room for min and is told how far it can grow."""

    cluster: str = "cluster.yaml"
    """Cluster launcher YAML."""
    concurrent: int = 1
    """Runs at once (a sweep's ``concurrent``)."""


@dataclass(frozen=True)
class NodeType:
    """One worker node type of a cluster launcher YAML."""

    name: str
    cpus: float
    """Logical CPUs the node declares (``resources.CPU``)."""
    gpus: int
    """GPUs the node declares (``resources.GPU``)."""
    custom: dict[str, float]
    """The node's other resources (``resources`` less CPU and GPU)."""
    max_workers: int
    """The most nodes of this type the autoscaler starts."""


@dataclass(frozen=True)
class Fit:
    """Where the training workers of a run (or of a sweep's concurrent trials) go."""

    workers: int
    """Training workers asked for at most: ``max_workers × concurrent``."""
    per_node: dict[str, int]
    """Workers one node of each eligible type holds."""
    capacity: dict[str, int]
    """Workers all nodes of each eligible type hold (``per_node × max_workers``); which types
    the autoscaler starts is its choice."""
    data_types: tuple[str, ...] = ()
    """Node types that declare ``data.node_resource``, where the views tasks run (empty when
    it is unset: anywhere)."""

    def describe(self) -> str:
        types = ", ".join(
            f"{name} ({self.per_node[name]} per node, up to {c})"
            for name, c in self.capacity.items()
        )
        held = sum(self.capacity.values())
        views = f"; views on {', '.join(self.data_types)}" if self.data_types else ""
        if held < self.workers:  # an elastic run that starts, but cannot reach its maximum
            return (
                f"fits, smaller: room for {held} of the {self.workers} training workers asked "
                f"for at most (elastic runs start at their minimum); node types: {types}{views}"
            )
        return (
            f"fits: {self.workers} training worker(s); node types that can hold them: "
            f"{types}{views}"
        )


def load_cluster(path: str | Path) -> dict:
    """A cluster launcher YAML as a dict.

    Raises:
        ClusterFitError: no such file, not YAML, or YAML without the launcher's node types.
    """
    path = Path(path)
    hint = "pass the YAML you give `ray up` (the repository's is cluster.yaml)"
    if not path.is_file():
        raise ClusterFitError(f"cluster config {path} does not exist; {hint}.")
    try:
        cluster = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ClusterFitError(f"cluster config {path} is not valid YAML{at}; {hint}.") from None
    missing = [
        key
        for key in ("available_node_types", "head_node_type")
        if not isinstance(cluster, dict) or key not in cluster
    ]
    if missing:
        raise ClusterFitError(
            f"{path} is not a Ray cluster launcher config: it has no {' or '.join(missing)}; "
            f"{hint}."
        )
    return cluster


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
                {k: float(v) for k, v in resources.items() if k not in ("CPU", "GPU")},
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
    need, least = s.max_workers * concurrent, s.min_workers * concurrent
    per_node, capacity = {}, {}
    types = worker_types(cluster)
    for t in types:
        count = _workers_per_node(t, gpus, s.cpus_per_worker, s.resources)
        if count:
            per_node[t.name] = count
            capacity[t.name] = count * t.max_workers
    asked = ", ".join(
        [*([f"{gpus} GPU"] if gpus else []), f"{s.cpus_per_worker:g} CPUs"]
        + [f"{amount:g} {name}" for name, amount in s.resources.items()]
    )
    if not per_node:
        have = "; ".join(
            f"{t.name}: " + ", ".join(f"{v:g} {k}" for k, v in _offer(t).items()) for t in types
        )
        raise ClusterFitError(
            f"each training worker asks for {asked} (scaling.use_gpu, scaling.cpus_per_worker, "
            f"scaling.resources), but no worker node type has that ({have}). Lower what a "
            "worker asks for, or add a node type that offers it."
        )
    if sum(capacity.values()) < least:
        held = ", ".join(f"{name}: {c}" for name, c in capacity.items())
        per_run = f"at least {s.min_workers}" if s.elastic else str(s.max_workers)
        raise ClusterFitError(
            f"{least} training workers ({per_run} per run × {concurrent} at once), each "
            f"with {asked}, but the node types' max_workers hold only {sum(capacity.values())} "
            f"({held}). Raise max_workers in the cluster YAML, or lower scaling.num_workers or "
            f"{option('concurrent')}."
        )
    return Fit(need, per_node, capacity, _data_types(cfg.data.node_resource, types))


def _data_types(resource: str | None, types: list[NodeType]) -> tuple[str, ...]:
    """The node types declaring ``resource`` (``data.node_resource``); () when it is unset.

    Raises:
        ClusterFitError: it is set, and no node type declares it: the views would never run.
    """
    if not resource:
        return ()
    found = tuple(t.name for t in types if t.custom.get(resource, 0) > 0 and t.max_workers > 0)
    if not found:
        raise ClusterFitError(
            f"data.node_resource={resource}: the views tasks run only on nodes that declare "
            f"the resource {resource!r}, and no worker node type that can start does. Add it to "
            "the "
            f"resources of the CPU node type meant for data (cluster.yaml's cpu_data declares "
            f"data_node: 1), or unset data.node_resource."
        )
    return found


def _offer(t: NodeType) -> dict[str, float]:
    return {"GPU": t.gpus, "CPU": t.cpus, **t.custom}


def _workers_per_node(t: NodeType, gpus: int, cpus: float, custom: dict[str, float]) -> int:
    """How many workers asking for ``gpus``, ``cpus`` and ``custom`` one node of ``t`` holds."""
    offer, ask = _offer(t), {"GPU": gpus, "CPU": cpus, **custom}
    return min(math.floor(offer.get(k, 0) / v) for k, v in ask.items() if v > 0)
