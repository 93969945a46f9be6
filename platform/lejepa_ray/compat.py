"""The private Ray and torch internals we depend on, in one place, each with a test
(tests/unit/test_compat.py).

When an upgrade moves one of them, this is the file to change.

Console: a Ray driver prints what every worker and actor writes (``log_to_driver``) through one
handler, ``ray_print_logs``, of ``ray._private.ray_logging.global_worker_stdstream_dispatcher``,
and the raylet's warnings through ``ray._private.worker.print_to_stdstream`` directly.
On a normal run most of it is Ray talking to itself: the placement-group cleaner polling a state
API, C++ ``core_worker.cc`` notices, ``RayDeprecationWarning``s raised inside Ray's own calls,
Ray Data's execution plans. :func:`quiet_worker_logs` swaps that handler for one that drops
those lines and prints the rest (our progress lines, warnings and errors) without the
``(RayTrainWorker pid=…)`` prefix.

Compile: blocks compile with static shapes, one graph per (block shape, view size), and all
blocks of a class share one code object, whose number of graphs dynamo caps at
``torch._dynamo.config.recompile_limit`` (8) before it quietly runs the rest eagerly;
:func:`raise_recompile_limit` lifts that cap. Blocks that differ in a constant (timm's
per-block drop-path rate) get a graph each; :func:`compiled_graphs` counts them.

Ray Data's passes: a pipeline's execution index, ``DataContext._execution_idx``, counts its
complete executions and is shipped with the context to every task; we read it as the pass the
views tasks work for (:func:`execution_index`; a pass streams several epochs) and set it to
resume a run in a later pass (:func:`set_execution_index`).

Loggers: Ray Train logs every report with all its metrics at INFO, and its checkpoint manager
warns about each checkpoint it does not keep, on loggers named after private modules
(:func:`ray_train_report_logger`, :data:`RAY_CHECKPOINT_MANAGER_LOGGER`); :func:`quiet_logger`
raises such a logger's level for a block.

Run snapshots: Ray Train rewrites a run's ``checkpoint_manager_snapshot.json`` in place (not
written aside and renamed), so a reader beside a live run can catch it half-written; Ray then
raises its private ``CheckpointManagerInitializationError`` (:func:`snapshot_read_error`).

Spot preemptions and checkpoint uploads (Ray Train's alpha and developer APIs):
:func:`preemption_notice` asks Ray Train whether a node of the group is being reclaimed;
:func:`is_preempted` tells a worker death caused by a reclaimed node (a health-check failure
wrapping a ``RayActorError`` whose ``preempted`` flag is set) from other failures;
:func:`upload_mode` picks ``CheckpointUploadMode``; :func:`train_storage` is the run's storage
filesystem and directory, which an uploaded checkpoint must lie in for Ray to manage it;
:func:`preemption_error` is what ``fit`` raises once the preemption restarts run out.
:func:`controller_callback_bases` and :func:`preempting` let a callback in the controller see a
preemption start, notice or not, and the checkpoint that follows it (``launch.events``).

Checkpoints: ``checkpoint_shards._VerifyingReader`` overrides
``FileSystemReader._slice_file(file, storage_info)`` of ``torch.distributed.checkpoint``, the
one place where DCP's ``read_data`` turns a storage item into bytes, to fetch each item as one
verified byte range.
:data:`DCP_SLICE_HOOK` names it; the test checks that ``read_data`` still goes through it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

VERIFIED_RAY = "2.60.0"
"""The Ray version every item here was checked against (tests/unit/test_compat.py)."""

_HANDLER = "ray_print_logs"
DCP_SLICE_HOOK = "_slice_file"
"""The ``FileSystemReader`` method that cuts one storage item out of a shard file."""

NOISY_ACTORS = (
    "PlacementGroupCleaner",
    "SplitCoordinator",
    "DatasetManager",
    "MapWorker",
    "StatsActor",
    "AutoscalingRequester",
)
"""Ray's own actors, whose output is about Ray's bookkeeping: dropped whole."""

_CPP_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] \S+\.(cc|h):\d+")
_RAY_WARNING = re.compile(r"(RayDeprecationWarning|ray/.*\.py:\d+: \w*Warning)")
_RAYLET_NOISE = re.compile(r"worker processes have been started on node")


def noise_filter(
    lines: Iterable[str], *, actor: str | None = None, pid: object = None
) -> list[str]:
    """The lines of one batch of worker output that are worth showing. A Python warning raised
    inside Ray takes its next line (the source line the warning quotes) with it."""
    if actor and actor.startswith(NOISY_ACTORS):
        return []
    kept, skip_next = [], False
    for line in lines:
        if skip_next and line.startswith(" "):
            skip_next = False
            continue
        skip_next = False
        if _CPP_LOG.match(line) or (pid == "raylet" and _RAYLET_NOISE.search(line)):
            continue
        if _RAY_WARNING.search(line):
            skip_next = True
            continue
        kept.append(line)
    return kept


def _actor_name(data: dict) -> str | None:
    return data.get("actor_name") or data.get("task_name") or None


def quiet_worker_logs(prefixes: bool = False, raylet_only: bool = False) -> bool:
    """Filter what the connected driver prints of its workers' output through
    :func:`noise_filter`, with Ray's ``(Actor pid=…)`` prefixes only if ``prefixes`` (a sweep
    needs them to tell trials apart). Returns False when Ray's handler is not where we expect
    (then nothing changes). ``raylet_only``: the workers' output is not forwarded
    (``log_to_driver=False``); filter the raylet's warnings, which still are."""
    # lazy: Ray's private logging API; compat imports no Ray at module level.
    from ray._private import ray_logging, worker

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    forwarded = any(name == _HANDLER for name, _ in dispatcher.handlers)
    if not forwarded and not raylet_only:
        return False
    original = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)
    if forwarded:
        dispatcher.remove_handler(_HANDLER)
        dispatcher.add_handler(_HANDLER, functools.partial(_print_kept, original, not prefixes))
    # The raylet's warnings: printed by a thread that looks the function up at every call.
    raylet = functools.partial(_print_kept, original, None)
    raylet.__wrapped__ = original  # type: ignore[attr-defined]  # a partial takes attributes
    worker.print_to_stdstream = raylet
    return True


def _print_kept(
    print_to_stdstream: Callable[..., None],
    strip: bool | None,
    data: dict,
    ignore_prefix: bool = False,
) -> None:
    """Print the lines of ``data`` that :func:`noise_filter` keeps; without Ray's prefix if
    ``strip``, else as the caller asked (``ignore_prefix``)."""
    lines = noise_filter(data.get("lines", []), actor=_actor_name(data), pid=data.get("pid"))
    if lines:
        print_to_stdstream(
            {**data, "lines": lines}, ignore_prefix=ignore_prefix if strip is None else strip
        )


def raise_recompile_limit(at_least: int) -> int:
    """Let dynamo keep at least ``at_least`` graphs per code object; returns the limit now."""
    # lazy: torch._dynamo takes about a second to import; compat imports no torch at module level.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, at_least)
    return dynamo_config.recompile_limit


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (its ``unique_graphs`` counter)."""
    # lazy: as in raise_recompile_limit.
    import torch._dynamo.utils as dynamo_utils

    return int(dynamo_utils.counters["stats"]["unique_graphs"])


def execution_index() -> int:
    """The execution index of the Ray Data pipeline this process is working for (the pass)."""
    # lazy: Ray takes seconds to import; compat sits under the Ray-free core and data.sources.
    from ray.data import DataContext

    return int(DataContext.get_current()._execution_idx)


def set_execution_index(dataset: Any, index: int) -> None:
    """Make the next execution of ``dataset`` (a ``ray.data.Dataset``) execution ``index``."""
    dataset.context._execution_idx = index


RAY_CHECKPOINT_MANAGER_LOGGER = "ray.train.v2._internal.execution.checkpoint.checkpoint_manager"
"""Ray Train's checkpoint manager's logger (it warns about every checkpoint it does not keep)."""


def snapshot_read_error() -> type[Exception]:
    """What ``ray.train.Result.from_path`` raises on a run snapshot it cannot parse."""
    # lazy: Ray Train's private module; compat imports no Ray at module level.
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    return CheckpointManagerInitializationError


def ray_train_report_logger() -> str:
    """The name of the logger Ray Train logs every report on: its source file's path."""
    # lazy: Ray Train's private module; compat imports no Ray at module level.
    from ray.train.v2._internal.execution import context

    return context.__file__


@contextlib.contextmanager
def quiet_logger(name: str, level: int) -> Iterator[None]:
    """Raise the logger ``name`` to ``level`` for the block: for Ray's advice and warnings that
    do not apply to how we call it."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


RAY_STATE_LOGGER = "ray._private.state"
"""The logger on which ``ray.timeline()`` warns at every call that it will read from the
dashboard in a later Ray."""


def task_timeline() -> list[dict]:
    """``ray.timeline()``'s chrome-trace events (``ts`` and ``dur`` in microseconds, ``ts`` on
    the ``time.time()`` clock), without its per-call advice on the console."""
    # lazy: Ray takes seconds to import; most users of compat never read a timeline.
    import ray

    with quiet_logger(RAY_STATE_LOGGER, logging.ERROR):
        return ray.timeline()


def preemption_notice() -> Any:
    """``ray.train.get_preemption_info()``: a ``PreemptionInfo`` (``deadline_ms``, Unix ms or
    None; ``preempted_node_to_ranks``) once a node of the group is being drained for
    preemption, else None. A barrier: every rank calls it at the same steps."""
    # lazy: Ray Train's alpha API; compat imports no Ray at module level.
    import ray.train

    return ray.train.get_preemption_info()


def preemption_default_deadline_s() -> float:
    """How long after a notice without a deadline Ray Train stops the group (seconds)."""
    # lazy: as in preemption_notice.
    from ray.train.v2._internal.constants import DEFAULT_PREEMPTION_DEADLINE_S

    return float(DEFAULT_PREEMPTION_DEADLINE_S)


def is_preempted(error: BaseException) -> bool:
    """Whether a worker error reported to a Ray Train callback is the death of a worker whose
    node was preempted (drained for preemption, then gone)."""
    # lazy: as in preemption_notice.
    from ray.exceptions import RayActorError

    inner = getattr(error, "health_check_failure", error)  # WorkerHealthCheckFailedError
    return isinstance(inner, RayActorError) and bool(getattr(inner, "preempted", False))


def upload_mode(asynchronous: bool) -> Any:
    """``ray.train.CheckpointUploadMode.ASYNC`` or ``SYNC``."""
    # lazy: as in preemption_notice.
    from ray.train import CheckpointUploadMode

    return CheckpointUploadMode.ASYNC if asynchronous else CheckpointUploadMode.SYNC


def train_storage() -> tuple[Any, str]:
    """The run's storage as Ray Train holds it in a worker: ``(pyarrow filesystem, run
    directory path on it)``. A checkpoint Ray is to manage must lie under that directory, on
    that very filesystem object's equal."""
    # lazy: as in preemption_notice.
    import ray.train

    storage = ray.train.get_context().get_storage()
    return storage.storage_filesystem, storage.experiment_fs_path


def preemption_error() -> type[Exception]:
    """What ``TorchTrainer.fit`` raises when preemptions exhaust ``max_preemption_failures``."""
    # lazy: as in preemption_notice.
    from ray.train import PreemptionError

    return PreemptionError


def controller_callback_bases() -> tuple[type, ...]:
    """Ray Train's internal ``ControllerCallback`` and ``ReportCallback``: a callback of both,
    passed in ``RunConfig.callbacks``, sees the controller's state changes (a preemption
    starts) and every report with its checkpoint, in the controller."""
    # lazy: Ray Train's private module; compat imports no Ray at module level.
    from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback

    return ControllerCallback, ReportCallback


def preempting(state: Any) -> Any:
    """The ``PreemptionInfo`` of a Ray Train controller state that waits out a preemption (its
    ``PreemptingState``), else None."""
    # lazy: as in controller_callback_bases.
    from ray.train.v2._internal.execution.controller.state import PreemptingState

    return state.preemption_info if isinstance(state, PreemptingState) else None
