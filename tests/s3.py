"""A real S3 endpoint on the loopback interface: moto's standalone server, reached over HTTP by
pyarrow and Ray exactly as they reach AWS, configured through the standard environment
(``AWS_ENDPOINT_URL_S3`` and the credentials variables)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUCKET = "lejepa-test"


@dataclass
class S3Server:
    """A running server and the environment that points AWS clients at it."""

    endpoint: str
    """``http://127.0.0.1:<port>``."""
    env: dict[str, str]
    """``AWS_ENDPOINT_URL_S3``, credentials and region for the server."""
    process: subprocess.Popen

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>`` in the test bucket."""
        return "/".join([f"s3://{BUCKET}", *parts])

    def filesystem(self):
        """A pyarrow filesystem on the server (for tests to look at what was written)."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region=self.env["AWS_DEFAULT_REGION"],
            allow_bucket_creation=True,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(log_dir: Path, attempts: int = 3, ready_s: float = 30.0) -> S3Server:
    """Start moto's server on a free loopback port and create the test bucket.

    Retries on another port up to ``attempts`` times (a port taken between choosing and
    binding it, a slow start), then fails with the server's log.
    """
    moto = Path(sys.executable).with_name("moto_server")
    log = log_dir / "moto.log"
    for _ in range(attempts):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
            )
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            process.kill()
            process.wait()
            continue
        env = {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        server = S3Server(endpoint, env, process)
        server.filesystem().create_dir(BUCKET)
        return server
    raise RuntimeError(f"moto's S3 server did not start in {attempts} attempts:\n{log.read_text()}")


def apply_env(server: S3Server) -> dict[str, str | None]:
    """Point this process (and the Ray processes it starts) at the server; returns what the
    variables were, for :func:`restore_env`."""
    before = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    return before


def restore_env(before: dict[str, str | None]) -> None:
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
