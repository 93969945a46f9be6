"""A node's spot-notice watcher: the cloud's interruption notice becomes a Ray preemption drain.

Ray Train checkpoints at a preemption notice only if Ray hears of it: the node must be drained
with the preemption reason and a deadline (``ray drain-node --reason
DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N``). Autoscaler v2 and KubeRay make
that call; Ray's cluster launcher, which ``cluster.yaml`` uses on AWS, does not. AWS posts the
notice on the instance metadata service two minutes ahead: ``/latest/meta-data/spot/
instance-action`` answers 404 until then, and then ``{"action": "terminate", "time":
"2026-12-07T09:22:00Z"}``. Each worker node of ``cluster.yaml`` runs this watcher beside its
raylet::

    python -m lejepa_ray.launch.spot --address HEAD_IP:6379 [--every 5]

It finds its node's id once, polls the metadata service (IMDSv2: a session token, then the
notice) every ``--every`` seconds, and at a notice drains its own node, then exits.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

IMDS = "http://169.254.169.254"
"""AWS's instance metadata service."""
ACTIONS = ("terminate", "stop", "hibernate")
"""What AWS may announce it will do to a spot instance; each takes the node away."""
MARGIN_S = 5.0
"""The drain's deadline is this long before the time AWS gives."""
DRAIN_TRIES = 5
UNANSWERED = (urllib.error.URLError, OSError, http.client.HTTPException)
"""What a request to the metadata service raises when it gets no usable answer."""


def notice(base: str = IMDS, timeout_s: float = 2.0) -> float | None:
    """The Unix time at which AWS takes this instance back, or None: no notice yet, or no
    metadata service (not on EC2), or an answer that is not a notice."""
    token = _token(base, timeout_s)
    if token is None:
        return None
    request = urllib.request.Request(
        f"{base}/latest/meta-data/spot/instance-action",
        headers={"X-aws-ec2-metadata-token": token},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            body = r.read().decode()
    except UNANSWERED:
        return None  # 404 (no notice yet) is an HTTPError, a URLError
    return parse_notice(body)


def _token(base: str = IMDS, timeout_s: float = 2.0) -> str | None:
    """An IMDSv2 session token, or None when the metadata service does not answer."""
    request = urllib.request.Request(
        f"{base}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.read().decode()
    except UNANSWERED:
        return None


def parse_notice(body: str) -> float | None:
    """The time (Unix seconds) of an ``instance-action`` answer, or None if it is not one."""
    try:
        action = json.loads(body)
        if action.get("action") not in ACTIONS:
            return None
        return float(calendar.timegm(time.strptime(action["time"], "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("not a spot interruption notice: %r", body[:200])
        return None


def drain_command(address: str, node_id: str, seconds_left: float) -> list[str]:
    """``ray drain-node`` for this node with the preemption reason and a deadline
    :data:`MARGIN_S` before the cloud's, so that Ray Train restarts the group while the node is
    still there rather than on its workers' deaths."""
    return [
        str(Path(sys.executable).with_name("ray")),
        "drain-node",
        f"--address={address}",
        f"--node-id={node_id}",
        "--reason=DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message=spot interruption notice",
        f"--deadline-remaining-seconds={max(0, int(seconds_left - MARGIN_S))}",
    ]


def watch(
    address: str,
    node_id: str,
    *,
    every_s: float = 5.0,
    fetch: Callable[[], float | None] = notice,
    run: Callable[[list[str]], object] = lambda cmd: subprocess.run(cmd, check=True, timeout=20),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
) -> float:
    """Poll ``fetch`` every ``every_s`` seconds until it gives a notice; then drain the node
    ``node_id`` of the cluster at ``address`` with the deadline left, and return that
    deadline (Unix seconds)."""
    while (deadline := fetch()) is None:
        sleep(every_s)
    left = deadline - clock()
    log.warning("spot interruption notice: node %s goes in %.0f s; draining it", node_id, left)
    for attempt in range(1, DRAIN_TRIES + 1):
        try:
            run(drain_command(address, node_id, deadline - clock()))
            return deadline
        except (subprocess.SubprocessError, OSError) as e:
            if attempt == DRAIN_TRIES:
                raise
            log.warning("draining the node failed (%s); trying again", e)
            sleep(1.0)
    raise AssertionError("unreachable")


def local_node_id(address: str, attempts: int = 30) -> str:
    """The id of this machine's Ray node, once its raylet has joined the cluster at
    ``address``."""
    # lazy: Ray takes seconds to import; the rest of this module runs without it.
    import ray

    for attempt in range(attempts):
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            try:
                return ray.get_runtime_context().get_node_id()
            finally:
                ray.shutdown()
        except ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(2.0)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="auto", help="the cluster's GCS address")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between polls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    node_id = local_node_id(args.address)
    reachable = _token() is not None
    log.info(
        "watching for spot interruption notices for node %s%s",
        node_id,
        "" if reachable else f" (no answer from {IMDS} yet: not on EC2?)",
    )
    watch(args.address, node_id, every_s=args.every)


if __name__ == "__main__":
    main()
