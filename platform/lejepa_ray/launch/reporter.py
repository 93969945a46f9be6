"""What a worker reports, at every log step and with every checkpoint: the :class:`Reporter`.

:func:`~lejepa_ray.train.trainer.fit` calls the :class:`Reporter` that
:func:`~lejepa_ray.launch.worker.train_worker` built, on every rank, at each log and checkpoint
step. It completes the loop's metrics (the data position, RankMe, skip counts; TensorBoard and
tracking on rank 0), reports them to Ray Train and, at save steps, writes this rank's part of
the checkpoint (:func:`~lejepa_ray.train.checkpoint.write`) for Ray Train to upload through
:func:`_upload_to_run`. It also asks Ray Train for preemption notices and, after the
checkpoint taken at one, waits for the restart.

Ray is imported at the top: like :mod:`lejepa_ray.launch.worker`, this module only ever runs
inside a Ray Train worker.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import ray.train

from lejepa_ray import compat
from lejepa_ray.config import to_yaml
from lejepa_ray.data.feed import EpochCursor
from lejepa_ray.data.stream import skip_metrics
from lejepa_ray.launch import probes
from lejepa_ray.storage import Folder
from lejepa_ray.train import checkpoint, upload
from lejepa_ray.train.checkpoint import TrainState
from lejepa_ray.train.diagnostics import diagnostics_images
from lejepa_ray.train.manifest import Part
from lejepa_ray.train.metrics import MetricsWriter
from lejepa_ray.train.rankme import heldout_batch, heldout_embeddings, rankme_of
from lejepa_ray.train.trainer import Trainer

if TYPE_CHECKING:  # worker imports this module to build its Reporter: types only, no cycle
    from lejepa_ray.launch.worker import Resumed, WorkerConfig

log = logging.getLogger(__name__)

RESTART_SLACK_S = 300.0
"""How long past the preemption deadline (and grace) workers that checkpointed at a notice
wait for Ray Train to restart them before failing."""
UPLOAD_NICENESS = 19
"""The niceness of the thread that uploads checkpoints in the background: it gets the CPU time
training leaves (on this CPU-bound test machine, training's steps would otherwise slow down
while an upload runs)."""
QUEUED_REPORTS = 4
"""Reports that may queue behind a checkpoint upload in Ray's report thread (see
``Reporter.__call__``); the next one waits for them."""
RESUMED_FROM = "resumed_from"
"""Reported by workers that resumed: the step of the checkpoint their attempt loaded."""


def _upload_to_run(
    synced: threading.Thread | None,
    background: bool,
    part: Part,
    ckpt: ray.train.Checkpoint,
    dir_name: str,
) -> ray.train.Checkpoint:
    """Ray Train's ``checkpoint_upload_fn``: this rank's ``part`` of the checkpoint, from the
    local directory ``ckpt.path`` into the run's ``dir_name``, manifest last (``train.upload``).
    Rank 0 first lets the metrics' copy started with this checkpoint (``synced``) land, so that a
    registered checkpoint always has the metrics up to its step beside it. ``background``: the
    upload runs in Ray's upload thread, at a low CPU priority."""
    if synced is not None:
        synced.join()
    if background:  # use the CPU time training leaves (Linux: a thread has a niceness of its own)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)
    filesystem, run_path = compat.train_storage()
    dest = f"{run_path}/{dir_name}"
    upload.upload(part, filesystem, dest)
    return ray.train.Checkpoint(path=dest, filesystem=filesystem)


class Reporter:
    """What :func:`~lejepa_ray.train.trainer.fit` calls at each log and checkpoint step, on
    every rank: adds the data position, RankMe and skip counts to the metrics, writes them to
    TensorBoard (rank 0), and reports them to Ray Train, with a checkpoint at save steps.

    Checkpoints upload through :mod:`lejepa_ray.train.upload`: in the background with
    ``checkpoint.upload=async`` (a report made meanwhile is queued behind the upload rather
    than waiting for it), at most one at a time. :meth:`preempted` asks Ray Train
    for a preemption notice; after the checkpoint taken at a notice, the workers wait for Ray
    Train to restart the group without the preempted node instead of training steps that the
    restart would throw away."""

    def __init__(
        self,
        job: WorkerConfig,
        trainer: Trainer,
        cursor: EpochCursor,
        writer: MetricsWriter | None,
        resumed: Resumed | None,
        taken: set[str],
        world_size: int,
    ):
        self.job, self.trainer, self.cursor, self.writer = job, trainer, cursor, writer
        self.resumed_step = resumed.state.step if resumed else None
        self.taken = taken
        """Checkpoint names Ray Train already registered for the run (see :meth:`_name`)."""
        self.world_size = world_size
        self.config_yaml = to_yaml(job.cfg)
        samples = job.cfg.logging.rankme_samples
        self.rankme_images = (
            heldout_batch(job.cfg.data, job.spec.global_size, samples) if samples else None
        )
        self.upload_mode = compat.upload_mode(job.cfg.checkpoint.upload == "async")
        self.uploads = upload.OneInFlight()
        self.checkpoint_s: float | None = None
        """Seconds the training thread spent at the last checkpoint (waiting for the upload
        before it, saving and, with ``checkpoint.upload=sync``, uploading); logged next."""
        self.queued = 0  # reports queued behind the upload in flight (see __call__)
        self.notice: Any = None  # Ray's PreemptionInfo, once one came
        self.noticed_at = 0.0

    def __call__(self, step: int, metrics: dict[str, float], save: bool) -> None:
        metrics = self._complete(step, metrics, save)
        if not save:
            # Ray's controller takes one report per worker each health-check poll, in order. A
            # report made while an upload is in flight is queued behind it (asynchronous)
            # instead of waiting for it, up to QUEUED_REPORTS of them; otherwise a report is
            # synchronous: it waits for those before it to be taken, so that few ever queue up
            # (a checkpoint at a preemption notice uploads only after them).
            queue = self.uploads.busy and self.queued < QUEUED_REPORTS
            self.queued += queue
            ray.train.report(metrics, checkpoint_upload_mode=compat.upload_mode(queue))
            return
        started = time.perf_counter()
        asynchronous = self.job.cfg.checkpoint.upload == "async"
        synced = None  # rank 0: the metrics' copy, stored before the manifest
        if self.writer is not None:
            synced = self.writer.sync(wait=not asynchronous)
        metrics["data/samples"] = self.cursor.samples
        self.trainer.sync_buffers()  # every rank, before the save reads rank 0's buffers
        self.uploads.start()  # at most one upload in flight: wait for the previous one
        self.queued = 0
        local = tempfile.mkdtemp(prefix="lejepa-ckpt-")  # removed once uploaded
        try:
            part = checkpoint.write(
                local, self.trainer.tensors, self._state(step), self.config_yaml
            )
            to_run = functools.partial(_upload_to_run, synced, asynchronous, part)
            upload_fn = self.uploads.wrap(to_run, local)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(local),
                checkpoint_dir_name=self._name(step),
                checkpoint_upload_mode=self.upload_mode,
                checkpoint_upload_fn=upload_fn,
                delete_local_checkpoint_after_upload=False,  # the wrapper removes it
                **probes.report_kwargs(self.job.cfg, step),
            )
        except BaseException:
            self.uploads.release(local)  # the upload never started; the attempt is ending
            raise
        self.checkpoint_s = time.perf_counter() - started
        if self.notice is not None and step < self.job.cfg.optim.steps:
            self._await_restart(step)

    def preempted(self, step: int) -> bool:
        """Whether Ray Train has a preemption notice for a node of this group, asked every
        ``fault.preemption_check_steps`` steps (a barrier: the same steps on every rank);
        True once, at the step that must checkpoint."""
        every = self.job.cfg.fault.preemption_check_steps
        if not every or step % every or self.notice is not None:
            return False
        info = compat.preemption_notice()
        if info is None:
            return False
        self.notice, self.noticed_at = info, time.time()
        if self.writer is not None:
            left = ""
            if info.deadline_ms is not None:
                left = f" in {info.deadline_ms / 1000 - time.time():.0f} s"
            log.warning(
                "preemption notice at step %d: node(s) %s (rank(s) %s) will be reclaimed%s; "
                "checkpointing now",
                step,
                ", ".join(n[:12] for n in info.preempted_node_ids),
                info.preempted_ranks,
                left,
            )
        return True

    def _await_restart(self, step: int) -> None:
        """After the checkpoint at a preemption notice: wait until it is stored, then idle until
        Ray Train stops this group at the deadline and restarts the run on the capacity left (a
        step trained now would be lost with the group). Raises if Ray Train never comes, so
        that the run cannot hang."""
        self.uploads.wait()  # rank 0's upload waited for the metrics' copy too
        info, fault = self.notice, self.job.cfg.fault
        deadline = info.deadline_ms / 1000 if info.deadline_ms else None
        if self.writer is not None and self.uploads.error is None:
            log.warning(
                "checkpoint of step %d stored %.1f s after the preemption notice; waiting for Ray "
                "Train to restart the group without the preempted node(s)",
                step,
                time.time() - self.noticed_at,
            )
        until = (
            deadline or self.noticed_at + compat.preemption_default_deadline_s()
        ) + fault.preemption_grace_s
        while time.time() < until + RESTART_SLACK_S:
            time.sleep(1.0)
        raise RuntimeError(
            f"Ray Train did not restart the worker group within {RESTART_SLACK_S:.0f} s of the "
            "preemption deadline"
        )

    def _complete(self, step: int, metrics: dict[str, float], save: bool) -> dict[str, float]:
        """``metrics`` plus the data epoch, epoch-boundary waits, the last checkpoint's time in
        the training thread, RankMe (at save steps, or at every report with
        ``logging.rankme_every_report``) and, on rank 0, skip counts; logged to TensorBoard
        there."""
        metrics = {**metrics, "data/epoch": self.cursor.epoch, "world_size": self.world_size}
        if self.checkpoint_s is not None:
            metrics["time/checkpoint_s"] = self.checkpoint_s
            self.checkpoint_s = None
        waits = self.cursor.boundary_waits  # epochs entered since the last report
        if waits:
            metrics["time/epoch_start_wait_s"] = max(w for _, w in waits)
            waits.clear()
        rankme = save or self.job.cfg.logging.rankme_every_report
        if rankme and self.rankme_images is not None:  # every rank: FSDP2 gathers for it
            encoder, bf16 = self.trainer.encoder, self.trainer.autocast
            started = time.perf_counter()
            feats, projs = heldout_embeddings(encoder, self.rankme_images, bf16=bf16)
            metrics.update(rankme_of(feats, projs))
            metrics["time/rankme_s"] = time.perf_counter() - started
            if save and self.writer is not None:  # the pictures of SIGReg's target, rank 0
                started = time.perf_counter()
                try:
                    self.writer.images(step, diagnostics_images(feats, projs, seed=step))
                except Exception as e:  # optional pictures never fail a report
                    log.warning("the SIGReg pictures of step %d failed: %s", step, e)
                metrics["time/diagnostics_s"] = time.perf_counter() - started
        if self.writer is not None:
            metrics.update(skip_metrics(self.job.counter))
            self.writer.log(step, metrics)
        metrics["step"] = step
        if self.resumed_step is not None:
            metrics[RESUMED_FROM] = self.resumed_step
        return metrics

    def _state(self, step: int) -> TrainState:
        return TrainState(
            step=step,
            world_size=self.world_size,
            skipped_steps=self.trainer.skipped_steps,
            data_epoch=self.cursor.epoch,
            data_samples=self.cursor.samples,
            scheduler=self.trainer.scheduler.state_dict(),
            model=self.job.cfg.model.name,
            # state.json is rank 0's, the one rank with a writer
            tracking=self.writer.tracking.ids if self.writer and self.writer.tracking else {},
        )

    def _stored(self, name: str) -> bool:
        """Whether files lie in the run directory's ``name`` already (False when the listing
        fails: Ray's registration still guards resumes)."""
        try:
            return bool(Folder.at(f"{self.job.run_dir}/{name}").files())
        except OSError as e:
            log.warning("could not list %s/%s: %s", self.job.run_dir, name, e)
            return False

    def _name(self, step: int) -> str:
        """``checkpoint_<step>``, or with a suffix when that name is registered already (a run
        that fell back past a refused checkpoint saves that step again, and Ray, retiring the
        refused entry, would delete the new directory with it) or lies in storage already."""
        name = f"checkpoint_{step:08d}"
        for n in itertools.count(1):
            # Rank 0's name is the one Ray uses (it broadcasts it). A directory of that name
            # left by an upload a restart cut short is not reused either: its files could pass
            # for the new ones while rank 0 waits for every rank's files.
            if name not in self.taken and (self.writer is None or not self._stored(name)):
                return name
            name = f"checkpoint_{step:08d}_{n}"
        raise AssertionError("unreachable")
