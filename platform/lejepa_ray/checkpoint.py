"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP).

Every rank writes its own shard files (DCP names them ``__<rank>_0.distcp``, unique per rank,
so Ray can merge all ranks' directories into one checkpoint); rank 0 adds DCP's ``.metadata``
and the run's ``config.yaml``. The same code saves DDP replicas and FSDP2 shards: DCP's state
dict helpers give plain parameter names under either wrapper. Loading needs no process group:
the kNN probe and exports read a checkpoint in one process, whatever the world size that wrote
it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from lejepa_ray.train import Trainer

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"


def save(path: str | Path, trainer: Trainer, config_yaml: str) -> None:
    """Write the model and optimizer shards of this rank, plus (rank 0) step and config."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(path, STATE_FILE).write_text(json.dumps({"step": trainer.step}))
        Path(path, CONFIG_FILE).write_text(config_yaml)


def load_model_weights(path: str | Path, model: nn.Module) -> int:
    """Load the encoder weights of the checkpoint at ``path`` into the unsharded ``model``
    (in this process, no process group); returns the checkpoint's step."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it loads in one process: we mean to
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(state["model"])
    return int(json.loads(Path(path, STATE_FILE).read_text())["step"])
