"""The encoder and how it is laid out on devices.

``encoder`` wraps any timm backbone with the projector and decides how it takes both view sizes;
``parallelize`` applies activation checkpointing, then ``torch.compile``, then DDP or FSDP2;
``flops`` counts training FLOPs per image on the meta device for MFU; ``config`` holds the
``model.*`` and ``scaling.*`` keys they follow. Ray-free.

May import: base, configs, objective, data, config.
"""
