"""Data: image sources, the parquet converter, multi-view crops and their stream into Ray Train.

Read in this order: ``config`` (what is configurable), ``decode`` (bytes to a safe RGB image),
``views`` (one image to its global and local crops), ``sources`` (where images come from),
``stream`` (the Ray Data pipeline), ``feed`` (a training worker's batches from it, pass after
pass; ``rebatch`` cuts them), ``batch_split`` (a global batch over any number of ranks),
``convert`` (folder to parquet).

May import: base, configs.
"""
