"""The LeJEPA objective: SIGReg (``sigreg``), the prediction-plus-SIGReg loss (``loss``) and
the ``loss.*`` keys that configure it (``config``).

Pure torch. Nothing here knows about Ray or models, and only ``loss.build_loss`` reads the
config, so the maths can be read, tested and benchmarked alone, on any machine that has torch.

May import: base, configs.
"""
