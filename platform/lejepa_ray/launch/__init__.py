"""Running on Ray: connecting to a cluster or starting one (``runtime``), the watchdog that
cleans up after a killed driver (``reaper``) and the pretraining driver with its Ray Train
worker loop (``driver``).

May import: base, objective, data, config, model, train, runs, evaluate.
"""
