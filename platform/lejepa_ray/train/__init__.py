"""One rank's training: the step and loop (``trainer``), AdamW and its schedule (``optim``),
sharded checkpoints (``checkpoint``: the layout, save and load; ``checkpoint_read``: a
checkpoint opened and its files verified; ``checkpoint_shards``: its tensors read; ``rng``: the
RNG states it keeps; ``manifest``: their checksums) and their uploads (``upload``), TensorBoard
and the progress line (``metrics``), ``metrics.jsonl`` and the runs in MLflow and W&B
(``tracking``; the trackers themselves, ``trackers``), RankMe (``rankme``), and the ``optim.*``,
``checkpoint.*``, ``fault.*`` and ``logging.*`` keys they follow (``config``).

Ray-free, so that the same code runs under Ray Train, under torchrun and in the GPU check.

May import: base, configs, objective, data, config, model.
"""
