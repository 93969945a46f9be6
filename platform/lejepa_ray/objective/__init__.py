"""The LeJEPA objective: SIGReg (``sigreg``) and the prediction-plus-SIGReg loss (``loss``).

Pure torch. Nothing here knows about Ray, configs or models, so the maths can be read, tested and
benchmarked alone, on any machine that has torch.

May import: base.
"""
