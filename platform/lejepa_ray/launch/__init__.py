"""Running on Ray: connecting to a cluster or starting one (``runtime``), the watchdog that
cleans up after a killed driver (``reaper``), the pretraining driver (``driver``; its checks
before Ray, ``preflight``; its ``TorchTrainer``, ``torch_trainer``) with its Ray Train worker
loop (``worker``) and what each worker reports, checkpoints included (``reporter``), the worker
group's failure, preemption and resize records (``events``), the probes of checkpoints during
training (``probes``) and a node's spot-notice watcher (``spot``).

May import: base, configs, objective, data, config, model, train, runs, evaluation.
"""
