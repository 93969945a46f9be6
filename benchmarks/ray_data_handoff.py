"""What handing views from a Ray Data task to the trainer costs, per sample, in one process.

A transform task's numpy batch of views becomes an Arrow block (tensor columns), goes into the
object store, and the consumer turns it back into numpy and torch, concatenating blocks when a
batch spans several. Each step is timed alone on a block of default views (2×224 px + 8×96 px,
16 samples), to set beside ``lejepa-ray data bench``'s per-sample overhead.

    .venv/bin/python benchmarks/ray_data_handoff.py [--block 16] [--repeats 50]

Prints one line per step and, last, one JSON line (milliseconds per sample).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data.block import BlockAccessor


def per_sample_ms(fn: Callable[[], object], samples: int, repeats: int) -> float:
    """Mean milliseconds per sample of ``fn``, which handles ``samples`` samples a call."""
    fn()  # warm: first calls allocate
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=16, help="samples per block (default 16)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    b, rng = args.block, np.random.default_rng(0)
    batch = {
        "global": rng.integers(0, 255, (b, 2, 3, 224, 224), dtype=np.uint8),
        "local": rng.integers(0, 255, (b, 8, 3, 96, 96), dtype=np.uint8),
        "label": np.zeros(b, np.int64),
        "sample_id": np.arange(b, dtype=np.int64),
        "epoch": np.zeros(b, np.int64),
    }
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    block = BlockAccessor.batch_to_block(batch)
    ref = ray.put(block)

    def consume() -> dict[str, torch.Tensor]:
        arrays = BlockAccessor.for_block(ray.get(ref)).to_batch_format("numpy")
        return {k: torch.as_tensor(v) for k, v in arrays.items()}

    def concatenate() -> dict:
        joined = pa.concat_tables([block, block])
        return BlockAccessor.for_block(joined).to_batch_format("numpy")

    steps = {
        "numpy batch to Arrow block (worker)": (lambda: BlockAccessor.batch_to_block(batch), b),
        "Arrow block into the object store (worker)": (lambda: ray.put(block), b),
        "object store to numpy to torch (consumer)": (consume, b),
        "two blocks into one batch (consumer)": (concatenate, 2 * b),
    }
    result = {}
    for name, (fn, samples) in steps.items():
        result[name] = round(per_sample_ms(fn, samples, args.repeats), 4)
        print(f"{name:<45} {result[name]:.3f} ms per sample")
    ray.shutdown()
    print(json.dumps({"block": b, "ms_per_sample": result}))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    main()
