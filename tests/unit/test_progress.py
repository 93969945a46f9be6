"""The console's progress: the live bar a terminal gets (``launch/progress.py``), and the
progress line of rank 0's metrics writer, at INFO or, under a bar, at DEBUG."""

from __future__ import annotations

import io
import json
import logging

from lejepa_ray.config import LoggingConfig
from lejepa_ray.launch import progress
from lejepa_ray.train.metrics import MetricsWriter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _line(step: int, **extra) -> str:
    return json.dumps({"step": step, "loss": 1.0 / step, **extra}) + "\n"


def test_the_bar_follows_metrics_jsonl_and_a_resumed_attempt_rewriting_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    out = _Terminal()
    bar = progress.LiveBar(str(tmp_path), total=100, stream=out)
    bar.poll()  # no file yet: nothing to show
    assert bar.bar.n == 0
    path.write_text(_line(10) + _line(20, **{"throughput/images_per_s": 215.4}) + '{"step": 3')
    bar.poll()
    assert bar.bar.n == 20  # the half-written line waits
    assert "loss 0.0500, 215 img/s" in out.getvalue()
    with path.open("a") as f:
        f.write('0, "loss": 0.03}\n' + json.dumps({"step": 30, "resume/load_s": 1.0}) + "\n")
    bar.poll()
    assert bar.bar.n == 30
    path.write_text(_line(10))  # a restart from the checkpoint of step 10 rewrote the file
    bar.poll()
    assert bar.bar.n == 10
    bar.bar.close()


def test_the_bar_runs_in_a_thread_between_with_and_its_end(tmp_path):
    import time

    out = _Terminal()
    with progress.LiveBar(str(tmp_path), total=5, stream=out, interval_s=0.01) as bar:
        (tmp_path / "metrics.jsonl").write_text(_line(3))
        deadline = time.monotonic() + 10
        while bar.bar.n != 3 and time.monotonic() < deadline:  # the thread, not __exit__
            time.sleep(0.01)
        assert bar.bar.n == 3
        with (tmp_path / "metrics.jsonl").open("a") as f:
            f.write(_line(5))
    assert bar.bar.n == 5 and "5/5" in out.getvalue()


def test_a_resumed_run_s_bar_starts_at_its_checkpoint_and_skips_the_earlier_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(_line(10) + _line(20))
    bar = progress.LiveBar(str(tmp_path), total=100, start=20, stream=_Terminal())
    bar.poll()
    assert bar.bar.n == 20
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(_line(30))
    bar.poll()
    assert bar.bar.n == 30
    bar.bar.close()


def test_a_bar_only_on_a_terminal_with_a_local_run_directory(tmp_path):
    on = LoggingConfig()
    assert progress.wanted(on, str(tmp_path), _Terminal())
    assert not progress.wanted(on, str(tmp_path), io.StringIO())  # a file or a pipe
    assert not progress.wanted(on, "s3://bucket/run", _Terminal())
    assert not progress.wanted(LoggingConfig(verbose=True), str(tmp_path), _Terminal())
    assert not progress.wanted(LoggingConfig(progress_bar=False), str(tmp_path), _Terminal())


METRICS = {
    "loss": 0.5,
    "loss/prediction": 0.4,
    "loss/sigreg": 0.1,
    "selection_score": 0.3,
    "lr": 1e-3,
    "grad_norm": 1.0,
    "throughput/images_per_s": 100.0,
    "throughput/views_per_s": 1000.0,
    "time/data_wait_fraction": 0.0,
    "memory/peak_gib": 1.0,
    "time/step_s": 0.5,
}


def test_the_writer_logs_the_progress_line_at_its_level(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="lejepa_ray.train.metrics")
    writer = MetricsWriter(str(tmp_path), 100, line_level=logging.DEBUG)
    writer.log(10, METRICS)
    writer.close()
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("step 10/100 (2.00 steps/s, ETA 45s) | loss 0.5000")
    writer = MetricsWriter(str(tmp_path), 100)
    writer.log(20, METRICS)
    writer.close()
    assert caplog.records[-1].levelno == logging.INFO
