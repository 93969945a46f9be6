"""What a trained backbone is worth, and taking it elsewhere: kNN and linear probes on frozen
features (``probe``), ``lejepa-ray eval`` over a checkpoint or an export (``frozen``), the
export to timm's hub layout (``export``), and label-free segmentation maps, ``lejepa-ray
visualize`` (``segmentation``: ViT attention, DINO's masks, PCA, IoU; ``visualize``: the command
and its pictures, drawn by ``pictures``). ``config`` holds the ``probe.*`` keys.

May import: base, configs, objective, data, config, model, train, runs.
"""
