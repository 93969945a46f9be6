"""Read back what the trackers wrote: W&B's offline run files and an MLflow server's runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024  # W&B's transaction log is LevelDB's log format: 32 KiB blocks
HEADER = 7  # per record: CRC-32C (4), length (2), type (1); and the file's own 7-byte header
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf ``Record`` messages of one ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        chunks = payload if kind in (FULL, FIRST) else chunks + payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            yield record


def _finished(file: Path, timeout_s: float = 30.0) -> None:
    """Wait until W&B's service process has written the run's exit record: ``finish()`` can
    return before the service has flushed the file."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r.WhichOneof("record_type") == "exit" for r in wandb_records(file)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{file} has no exit record after {timeout_s} s")


def wandb_run(root: Path, finished: bool = True) -> dict:
    """Every offline run under ``root`` (``wandb/offline-run-*``), merged by run id: its
    history rows, config keys and group. ``finished``: wait for each file's exit record (a
    run whose process was killed, as Tune kills a stopped trial's, has none)."""
    runs: dict[str, dict] = {}
    for file in sorted(root.glob("offline-run-*/run-*.wandb")):
        if finished:
            _finished(file)
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(
                    record.run.run_id, {"history": [], "config": {}, "files": set()}
                )
                # a resumed run's record may leave these out: keep the first non-empty ones
                run["group"] = run.get("group") or record.run.run_group
                run["name"] = run.get("name") or record.run.display_name
                run["files"].add(file.parent.name)
                for item in record.run.config.update:
                    run["config"][item.key] = json.loads(item.value_json)
                current = run
            elif kind == "history":
                row = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
                current["history"].append(row)
            elif kind == "config":
                for item in record.config.update:
                    current["config"][item.key] = json.loads(item.value_json)
    return runs


@contextlib.contextmanager
def mlflow_server(work_dir: Path, ready_s: float = 60.0) -> Iterator[str]:
    """A real MLflow tracking server with a SQLite backend on a free loopback port, for the
    duration of the ``with``; yields its URI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = work_dir / "mlflow.log"
    # No job runner (it needs huey, which the server stack we install lacks).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{work_dir}/mlflow.db", "--workers", "1"]
    command += ["--default-artifact-root", str(work_dir / "artifacts")]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()}") from None
                time.sleep(0.3)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
