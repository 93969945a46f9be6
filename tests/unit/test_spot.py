"""The spot-notice watcher (``launch/spot.py``) against a fake AWS metadata service on the
loopback: no notice, then a notice, drained with the deadline left."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest

from lejepa_ray.launch import spot


class _Metadata(http.server.BaseHTTPRequestHandler):
    """IMDSv2: a token for a PUT, the notice for a GET that carries it (404 until set)."""

    action: str | None = None
    gets: ClassVar[list[str | None]] = []

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token" or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self.send_error(400)
            return
        self._answer(200, b"TOKEN")

    def do_GET(self) -> None:
        type(self).gets.append(self.headers.get("X-aws-ec2-metadata-token"))
        if self.path != "/latest/meta-data/spot/instance-action" or self.action is None:
            self.send_error(404)
            return
        self._answer(200, self.action.encode())

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _metadata_service() -> Iterator[str]:
    _Metadata.action, _Metadata.gets = None, []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_no_notice_until_aws_posts_one_then_its_time():
    with _metadata_service() as base:
        assert spot.notice(base) is None  # 404: nothing announced
        _Metadata.action = json.dumps({"action": "terminate", "time": "2026-12-07T09:22:00Z"})
        assert spot.notice(base) == 1796635320.0  # that instant, UTC
    assert _Metadata.gets == ["TOKEN", "TOKEN"]  # IMDSv2: every read with the session token


def test_no_metadata_service_is_no_notice():
    assert spot.notice("http://127.0.0.1:9", timeout_s=0.5) is None  # nothing listens there


@pytest.mark.parametrize("action", ["stop", "hibernate"])
def test_every_action_that_takes_the_node_is_a_notice(action):
    assert spot.parse_notice(json.dumps({"action": action, "time": "2026-12-07T09:22:00Z"}))


@pytest.mark.parametrize("body", ["not json", "[]", '{"action": "reboot"}', '{"action": 1}'])
def test_answers_that_are_not_notices_are_none(body):
    assert spot.parse_notice(body) is None


def test_the_watcher_drains_its_own_node_with_the_deadline_left():
    answers = iter([None, None, 1000.0])
    slept, ran = [], []
    deadline = spot.watch(
        "10.0.0.1:6379",
        "abc123",
        every_s=5.0,
        fetch=lambda: next(answers),
        run=ran.append,
        clock=lambda: 880.4,
        sleep=slept.append,
    )
    assert deadline == 1000.0 and slept == [5.0, 5.0]
    (command,) = ran
    assert command[1:] == [
        "drain-node",
        "--address=10.0.0.1:6379",
        "--node-id=abc123",
        "--reason=DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message=spot interruption notice",
        "--deadline-remaining-seconds=114",  # 5 s before AWS's time
    ]
    assert command[0].endswith("/ray")


def test_a_notice_already_past_drains_with_no_time_left():
    assert "--deadline-remaining-seconds=0" in spot.drain_command("a:1", "n", -3.0)


def test_a_failed_drain_is_tried_again():
    calls = []

    def run(command: list[str]) -> None:
        calls.append(command)
        if len(calls) < 3:
            raise OSError("gcs unavailable")

    spot.watch("a:1", "n", fetch=lambda: 100.0, run=run, clock=lambda: 0.0, sleep=lambda s: None)
    assert len(calls) == 3
