"""Sweeps on Ray Tune: the search space YAML (``space``), the sweep's options and their checks
(``options``), its label-free metrics and the order of its trials (``ranking``), the table, CSV
and plot of that order (``report``), the check of the ranking against probes (``validation``),
and the driver that runs the trials on Tune and writes all of it (``sweep``). No other module of
tune/ imports ``sweep``, and only it and ``space`` import Ray (tests/test_sweep.py).

May import: base, objective, data, config, model, train, runs, evaluate, launch.
"""
