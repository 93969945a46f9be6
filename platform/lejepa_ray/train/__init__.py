"""One rank's training: the step and loop (``trainer``), AdamW and its schedule (``optim``),
sharded checkpoints (``checkpoint``, ``manifest``) and their uploads (``upload``), TensorBoard
and the progress line (``metrics``) and RankMe (``rankme``).

Ray-free, so that the same code runs under Ray Train, under torchrun and in the GPU check.

May import: base, objective, data, config, model.
"""
