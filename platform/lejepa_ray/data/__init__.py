"""Data: image sources, the parquet converter, multi-view crops and their stream into Ray Train.

Read in this order: ``config`` (what is configurable), ``decode`` (bytes to a safe RGB image),
``views`` (one image to its global and local crops), ``sources`` (where images come from),
``stream`` (the Ray Data pipeline and the per-epoch iterator), ``convert`` (folder to parquet).

May import: base, configs.
"""
