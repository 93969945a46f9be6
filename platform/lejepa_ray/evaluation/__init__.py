"""What a trained backbone is worth, and taking it elsewhere: kNN and linear probes on frozen
features (``probe``), ``lejepa-ray eval`` over a checkpoint or an export (``frozen``), and the
export to timm's hub layout (``export``).

May import: base, objective, data, config, model, train, runs.
"""
