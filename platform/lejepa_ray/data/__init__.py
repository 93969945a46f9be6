"""Data: image sources, the parquet converter, multi-view crops and their stream into Ray Train.

Read in this order: ``config`` (what is configurable), ``decode`` (bytes to a safe RGB image),
``views`` (one image to its global and local crops), ``source`` (the protocol every source
follows, and the registry of sources by name), ``sources`` (where images come from, whatever
the source: the built-ins are ``source_folder``, ``source_parquet``, ``source_generated``),
``stream`` (the Ray Data pipeline), ``feed`` (a training worker's batches from it, pass after
pass; ``rebatch`` cuts them), ``batch_split`` (a global batch over any number of ranks),
``convert`` (folder to parquet).
``lejepa-ray data bench`` is ``bench`` (the command and its report), ``bench_pipelines`` (the
timed runs of both pipelines) and ``bench_cpu`` (CPU time by process role), with Ray Data's
own stage account in ``account``.

May import: base, configs.
"""
