"""Running on Ray: connecting to a cluster or starting one (``runtime``), the watchdog that
cleans up after a killed driver (``reaper``), the pretraining driver with its Ray Train
worker loop (``driver``, ``worker``), the worker group's failure and resize records
(``events``) and the probes of checkpoints during training (``probes``).

May import: base, objective, data, config, model, train, runs, evaluation.
"""
