"""Sweeps on Ray Tune, read in this order: the search space YAML (``space``), what a sweep
takes and checks before Ray starts (``options``), the sweep driver and its trial function
(``sweep``), the Tune experiment it runs, with its scheduler, search and quiet console
(``tuner``, ``console``), the label-free ranking (``ranking``) and its CSV, table and plot
(``report``), and the validation of that ranking against probes (``validation``).

May import: base, configs, objective, data, config, model, train, runs, evaluation, launch.
"""
