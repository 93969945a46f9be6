"""compat: the private Ray and torch internals we lean on are where we expect, and the console
filter keeps our lines and drops Ray's bookkeeping."""

from __future__ import annotations

import copy
import types

from lejepa_ray.compat import noise_filter, quiet_worker_logs

# Lines a default run printed before the filter (Ray 2.60, 2 CPUs), shortened.
RAY_NOISE = [
    (
        "PlacementGroupCleaner",
        "Failed to query Ray Train Controller actor state. State API may "
        "be temporarily unavailable. Continuing to monitor.",
    ),
    (
        "TrainController",
        "[2026-12-02 07:39:47,122 E 3015 3046] core_worker.cc:2465: Actor with "
        "class name: 'PreemptionWatcher' and ID: 'ef69' has constructor arguments in the object "
        "store and max_restarts > 0.",
    ),
    ("SplitCoordinator", "Starting execution of Dataset train_0357_0. Full logs are in /tmp"),
    (
        "DatasetManager",
        "/x/ray/data/_internal/execution/interfaces/execution_options.py:436: "
        "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated",
    ),
]


def test_ray_noise_is_dropped_and_our_lines_are_kept():
    for actor, line in RAY_NOISE:
        assert noise_filter([line], actor=actor) == [], line
    ours = [
        "step 10/150 | loss 0.8207 (pred 0.4389, sigreg 8.074) | 117 img/s",
        "resumed from /tmp/run/checkpoint_00000100: step 100",
    ]
    assert noise_filter(ours, actor="RayTrainWorker") == ours
    # A warning raised inside Ray takes the source line it quotes with it; ours stay.
    lines = ["/v/ray/train/v2/x.py:12: RayDeprecationWarning: old", "  self.x = x", ours[0]]
    assert noise_filter(lines, actor="RayTrainWorker") == [ours[0]]
    raylet = "WARNING: 8 PYTHON worker processes have been started on node: ac8c with address"
    assert noise_filter([raylet], pid="raylet") == []
    assert noise_filter(["Traceback (most recent call last):"], actor="TrainController")


def test_the_filter_replaces_rays_print_handler(capsys):
    from ray._private import ray_logging, worker

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    before, printer = list(dispatcher.handlers), worker.print_to_stdstream
    dispatcher.add_handler("ray_print_logs", lambda data: None)  # as ray.init installs it
    try:
        assert quiet_worker_logs() is True
        assert [name for name, _ in dispatcher.handlers].count("ray_print_logs") == 1
        base = {
            "ip": "127.0.0.1",
            "pid": 7,
            "job": "01",
            "is_err": False,
            "actor_name": "RayTrainWorker",
            "task_name": "",
            "localhost": "127.0.0.1",
        }
        dispatcher.emit({**base, "lines": ["step 2/8 | loss 0.9"]})
        dispatcher.emit({**base, "actor_name": "PlacementGroupCleaner", "lines": [RAY_NOISE[0][1]]})
        lines = capsys.readouterr().out.strip().splitlines()
        # A live Ray instance of this session may print its own lines meanwhile: ours is first.
        assert lines[0] == "step 2/8 | loss 0.9"  # no "(RayTrainWorker pid=7)" prefix
        assert not any("pid=7" in line or RAY_NOISE[0][1] in line for line in lines)
        # The raylet's messages go through the module's print function, also filtered.
        worker.print_to_stdstream(
            {
                "lines": ["WARNING: 8 PYTHON worker processes have been started on node: x"],
                "pid": "raylet",
                "is_err": False,
            },
            ignore_prefix=False,
        )
        oom = "Task was killed due to the node running low on memory."
        worker.print_to_stdstream(
            {"lines": [oom], "pid": "raylet", "is_err": False}, ignore_prefix=False
        )
        assert capsys.readouterr().out.strip().endswith(oom)
    finally:
        dispatcher.handlers, worker.print_to_stdstream = before, printer


def test_dcp_reads_every_storage_item_through_the_slice_hook():
    import inspect

    from torch.distributed.checkpoint import FileSystemReader

    from lejepa_ray.compat import DCP_SLICE_HOOK
    from lejepa_ray.train.checkpoint_shards import _VerifyingReader

    assert f"self.{DCP_SLICE_HOOK}(" in inspect.getsource(FileSystemReader.read_data)
    assert DCP_SLICE_HOOK in vars(_VerifyingReader)


def test_the_recompile_limit_is_dynamos_and_is_raised_not_lowered():
    import torch._dynamo.config as dynamo_config

    from lejepa_ray.compat import raise_recompile_limit

    before = dynamo_config.recompile_limit
    try:
        assert raise_recompile_limit(before + 10) == before + 10 == dynamo_config.recompile_limit
        assert raise_recompile_limit(2) == before + 10  # never lowered
    finally:
        dynamo_config.recompile_limit = before


def test_compiled_graphs_counts_what_dynamo_compiles():
    import torch

    from lejepa_ray.compat import compiled_graphs

    before = compiled_graphs()
    double = torch.compile(lambda x: x * 2, backend="eager")
    double(torch.ones(3))
    double(torch.ones(3))  # the same graph again: not counted twice
    assert compiled_graphs() == before + 1


def test_ray_is_the_version_compat_was_checked_against():
    import ray

    from lejepa_ray.compat import VERIFIED_RAY

    assert ray.__version__ == VERIFIED_RAY, (
        f"lejepa_ray/compat.py was checked against Ray {VERIFIED_RAY}, and Ray "
        f"{ray.__version__} is installed: check every private API it names (its module "
        "docstring lists them, tests/unit/test_compat.py tries each), then set VERIFIED_RAY."
    )


def test_the_execution_index_is_read_and_set_where_ray_data_keeps_it():
    import ray.data
    from ray.data import DataContext

    from lejepa_ray.compat import execution_index, set_execution_index

    ctx = DataContext.get_current()
    before = ctx._execution_idx
    try:
        ctx._execution_idx = 5
        assert execution_index() == 5
    finally:
        ctx._execution_idx = before
    # A Dataset cannot be made without starting Ray (unit tests start none); one stands in
    # for it: the `context` a Dataset has, with a DataContext of its own.
    assert isinstance(ray.data.Dataset.context, property)
    ds = types.SimpleNamespace(context=copy.copy(ctx))
    set_execution_index(ds, 3)
    assert ds.context._execution_idx == 3 and ctx._execution_idx == before


def test_ray_trains_loggers_are_named_after_modules_that_exist():
    import importlib
    import logging

    from lejepa_ray.compat import (
        RAY_CHECKPOINT_MANAGER_LOGGER,
        quiet_logger,
        ray_train_report_logger,
    )

    # Each module logs through a module-level `logger` of exactly the name we quiet.
    manager = importlib.import_module(RAY_CHECKPOINT_MANAGER_LOGGER)
    assert manager.logger.name == RAY_CHECKPOINT_MANAGER_LOGGER
    context = importlib.import_module("ray.train.v2._internal.execution.context")
    assert context.logger.name == ray_train_report_logger()
    logger = logging.getLogger(RAY_CHECKPOINT_MANAGER_LOGGER)
    before = logger.level
    with quiet_logger(RAY_CHECKPOINT_MANAGER_LOGGER, logging.ERROR):
        assert logger.level == logging.ERROR
    assert logger.level == before


def test_ray_timeline_warns_on_the_logger_task_timeline_quiets():
    import importlib
    import inspect

    from lejepa_ray.compat import RAY_STATE_LOGGER

    state = importlib.import_module(RAY_STATE_LOGGER)
    assert state.logger.name == RAY_STATE_LOGGER
    # The advice is a logger.warning inside ray.timeline itself, not a warnings.warn or print.
    source = inspect.getsource(state.timeline)
    assert "logger.warning(" in source and "In the near future" in source


def test_upload_mode_is_ray_trains_enum():
    from ray.train import CheckpointUploadMode

    from lejepa_ray.compat import upload_mode

    assert upload_mode(True) is CheckpointUploadMode.ASYNC
    assert upload_mode(False) is CheckpointUploadMode.SYNC


def test_preemption_error_is_what_ray_train_raises_when_preemptions_run_out():
    from ray.train.v2._internal.execution.failure_handling import default

    from lejepa_ray.compat import preemption_error

    error = preemption_error()
    assert isinstance(error, type) and issubclass(error, Exception)
    assert error.__name__ == "PreemptionError"
    assert error is default.PreemptionError  # the class Ray's failure policy raises


def test_is_preempted_tells_a_reclaimed_nodes_worker_death_from_other_errors():
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
    from ray.exceptions import ActorDiedError, RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2._internal.execution.worker_group.poll import _is_preempted_actor

    from lejepa_ray.compat import is_preempted

    def died(reason) -> ActorDiedError:
        info = NodeDeathInfo(reason=reason)
        return ActorDiedError(ActorDiedErrorContext(actor_id=b"\x02" * 16, node_death_info=info))

    def health(e: Exception) -> WorkerHealthCheckFailedError:
        return WorkerHealthCheckFailedError("Worker health check failed.", e)

    preempted = [
        RayActorError(preempted=True),
        health(RayActorError(preempted=True)),
        died(NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED),
        health(died(NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED)),
    ]
    others = [
        RayActorError(),
        health(RayActorError()),
        died(NodeDeathInfo.UNEXPECTED_TERMINATION),
        health(died(NodeDeathInfo.AUTOSCALER_DRAIN_IDLE)),
        health(RuntimeError("preempted")),  # says so, but is not an actor's death
        RuntimeError("node preempted"),
        types.SimpleNamespace(health_check_failure=None),
    ]
    for e in preempted:
        assert is_preempted(e), e
        assert _is_preempted_actor(e)  # what Ray Train counts against max_preemption_failures
    for e in others:
        assert not is_preempted(e), e
    for e in others[:-1]:
        assert not _is_preempted_actor(e)


def test_ray_train_has_the_preemption_apis_the_worker_and_driver_use():
    import dataclasses
    import inspect

    import ray.train
    from ray.train.v2.api.config import FailureConfig

    assert callable(ray.train.get_preemption_info)
    assert not inspect.signature(ray.train.get_preemption_info).parameters
    assert ray.train.FailureConfig is FailureConfig
    config = FailureConfig(
        max_failures=2,
        max_preemption_failures=3,
        relax_collectives_on_preemption=True,
        preemption_grace_s=30.0,
    )
    assert (
        config.max_preemption_failures,
        config.relax_collectives_on_preemption,
        config.preemption_grace_s,
    ) == (3, True, 30.0)
    defaults = {f.name: f.default for f in dataclasses.fields(FailureConfig)}
    assert defaults["max_preemption_failures"] == -1  # our fault.max_preemptions default
    assert defaults["relax_collectives_on_preemption"] is False
    assert defaults["preemption_grace_s"] == 0.0
    # A PreemptionInfo: what compat.preemption_notice returns once a node is being drained.
    fields = {f.name for f in dataclasses.fields(ray.train.PreemptionInfo)}
    assert {"deadline_ms", "preempted_node_to_ranks"} <= fields
    # Where the workers that checkpointed at a notice without a deadline stop waiting from.
    from lejepa_ray import compat

    assert 0 < compat.preemption_default_deadline_s() < 3600


def test_train_storage_is_the_filesystem_and_run_directory_of_ray_trains_storage(
    tmp_path, monkeypatch
):
    import ray.train
    from pyarrow import fs as pafs
    from ray.train.v2._internal.execution.context import TrainContext
    from ray.train.v2._internal.execution.storage import StorageContext

    from lejepa_ray import compat

    assert callable(TrainContext.get_storage)
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="run")
    context = types.SimpleNamespace(get_storage=lambda: storage)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    filesystem, run_dir = compat.train_storage()
    assert filesystem is storage.storage_filesystem
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert run_dir == f"{tmp_path}/run"


def test_preemption_notice_asks_ray_train(monkeypatch):
    import ray.train

    from lejepa_ray.compat import preemption_notice

    info = ray.train.PreemptionInfo(deadline_ms=1_700_000_000_000, preempted_node_to_ranks={})
    notices = iter([None, info])
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: next(notices))
    assert preemption_notice() is None
    assert preemption_notice() is info


def test_preempting_is_the_preemption_info_of_ray_trains_preempting_state():
    import ray.train
    from ray.train.v2._internal.execution import preemption
    from ray.train.v2._internal.execution.controller import state
    from ray.train.v2.api.exceptions import TrainingFailedError

    from lejepa_ray.compat import preempting

    # The info the controller's preempting state holds is the PreemptionInfo workers get.
    assert preemption.PreemptionInfo is ray.train.PreemptionInfo
    info = ray.train.PreemptionInfo(deadline_ms=1_700_000_000_000, preempted_node_to_ranks={})
    assert preempting(state.PreemptingState(preemption_info=info, detected_at_s=1.0)) is info
    error = TrainingFailedError("failed")
    others = [
        state.InitializingState(),
        state.RunningState(),
        state.RestartingState(training_failed_error=error),
        state.ShuttingDownState(next_state=state.FinishedState()),
        state.FinishedState(),
        # Not Ray's state, though it has the attribute.
        types.SimpleNamespace(preemption_info=info),
    ]
    for other in others:
        assert preempting(other) is None, other


def test_run_config_callbacks_of_the_controller_bases_see_state_updates_and_reports(
    tmp_path, monkeypatch
):
    """Ray's trainer hands a run-config callback that is no UserCallback to its controller as
    it is, which calls it on each state update and with each consolidated report. The
    controller is built, not started: its `_start` schedules a worker group."""
    import inspect

    from ray.train import RunConfig, UserCallback
    from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback
    from ray.train.v2._internal.execution.checkpoint import report_handler
    from ray.train.v2._internal.execution.controller import state
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2._internal.execution.failure_handling import create_failure_policy
    from ray.train.v2._internal.execution.scaling_policy import create_scaling_policy
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from lejepa_ray.compat import controller_callback_bases

    assert controller_callback_bases() == (ControllerCallback, ReportCallback)

    class Seen(*controller_callback_bases()):
        def __init__(self):
            self.updates = []

        def after_controller_state_update(self, previous_state, current_state):
            self.updates.append((previous_state, current_state))

    seen = Seen()
    assert not isinstance(seen, UserCallback)  # not wrapped in Ray's UserCallbackHandler

    # The hooks launch.events.PreemptionRecorder overrides, with the arguments Ray passes.
    def arguments(hook) -> list[str]:
        return list(inspect.signature(hook).parameters)[1:]

    assert arguments(ControllerCallback.after_controller_state_update) == [
        "previous_state",
        "current_state",
    ]
    assert arguments(ReportCallback.after_report) == ["training_report", "metrics"]
    # The report handler calls after_report with these keywords.
    source = inspect.getsource(report_handler.ReportCallbackHandler.after_worker_group_poll_status)
    assert "callback.after_report(" in source and "training_report=" in source

    # Ray's own callbacks that would need a started controller (metrics, logging) stay out.
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "0")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING", "0")
    monkeypatch.setattr(TrainController, "_start", lambda self: None)
    trainer = DataParallelTrainer(
        lambda: None, run_config=RunConfig(name="run", storage_path=str(tmp_path), callbacks=[seen])
    )
    callbacks = trainer._create_default_callbacks()
    assert seen in callbacks
    controller = TrainController(
        train_fn_ref=None,
        train_run_context=trainer.train_run_context,
        scaling_policy=create_scaling_policy(trainer.scaling_config),
        failure_policy=create_failure_policy(trainer.run_config.failure_config),
        callbacks=callbacks,
    )
    assert seen in controller._report_handler._report_callbacks
    initial = controller.get_state()
    running = state.RunningState()
    controller._set_state(running)
    assert seen.updates == [(initial, running)]
