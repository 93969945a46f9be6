"""Small files in run and sweep directories, at a local path or a URI (``s3://...``).

Ray keeps checkpoints and Tune state under ``storage_path`` itself; these are the platform's own
markers and reports beside them (``config.yaml``, ``stopped.json``, ``sweep.json``,
``results.csv``), written through pyarrow's filesystems so a cluster's S3 storage works the same
as a laptop's folder.
"""

from __future__ import annotations

from pyarrow import fs

from lejepa_ray.data.sources import resolve_filesystem


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to a local path or URI, creating the parent folders."""
    filesystem, where = resolve_filesystem(uri)
    filesystem.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(where) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    """Write ``text`` (UTF-8) to a local path or URI, creating the parent folders."""
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str | None:
    """The text at a local path or URI, or None when there is no such file."""
    filesystem, where = resolve_filesystem(uri)
    if filesystem.get_file_info(where).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(where) as f:
        return f.read().decode()


def remove(uri: str) -> None:
    """Delete the file at a local path or URI, if there is one."""
    filesystem, where = resolve_filesystem(uri)
    if filesystem.get_file_info(where).type == fs.FileType.File:
        filesystem.delete_file(where)
