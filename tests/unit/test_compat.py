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
    from lejepa_ray.train.checkpoint import _VerifyingReader

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
