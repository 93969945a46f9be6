"""Sweeps on Ray Tune: the search space YAML (``space``) and the sweep driver, its label-free
ranking and the validation of that ranking against probes (``sweep``).

May import: base, objective, data, config, model, train, runs, evaluate, launch.
"""
