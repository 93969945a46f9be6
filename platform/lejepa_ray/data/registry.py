"""Sources by name: the lookup of ``data.source``, with the built-in sources registered.

Importing this module imports the built-in source modules, each of which registers itself in
``data.source.SOURCES``. Every lookup goes through here, so the built-ins are always there, and
the source modules need not be imported by the code that only names them; no module imports
one that imports it back. :func:`source_names` lists the built-ins in :data:`BUILT_IN` order,
whatever order they registered in (:func:`~lejepa_ray.data.sources.source_from_arg` offers a
path to them in reverse: parquet before the folder catch-all).
"""

from __future__ import annotations

# The built-ins, imported to register them.
from lejepa_ray.data import source_folder, source_generated, source_parquet  # noqa: F401
from lejepa_ray.data.source import BUILT_IN, SOURCES, Source
from lejepa_ray.errors import check_field


def get_source(name: str) -> Source:
    """The source registered as ``name``.

    Raises:
        ConfigError: no source of that name; the message lists the registered ones.
    """
    source = SOURCES.get(name)
    if source is None:
        check_field(False, "data.source", name, f"one of {', '.join(source_names())}")
    assert source is not None
    return source


def source_names() -> list[str]:
    """The registered names: the built-ins (:data:`BUILT_IN` order), then the others in the
    order they were registered."""
    return [n for n in BUILT_IN if n in SOURCES] + [n for n in SOURCES if n not in BUILT_IN]


def travelling(name: str) -> Source | None:
    """The source to pickle with a config that names ``name``: the registered one, or None
    for a built-in (every process registers those) or an unknown name."""
    return None if name in BUILT_IN else SOURCES.get(name)


def adopt(source: Source) -> None:
    """Register ``source``, which came with a pickled config, unless this process has a source
    of its name already."""
    SOURCES.setdefault(source.name, source)
