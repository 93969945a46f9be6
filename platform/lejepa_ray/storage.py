"""Small files in run and sweep directories, at a local path or a URI (``s3://...``).

Ray keeps checkpoints and Tune state under ``storage_path`` itself; these are the platform's own
markers and reports beside them (``config.yaml``, ``stopped.json``, ``sweep.json``,
``results.csv``), written through pyarrow's filesystems so a cluster's S3 storage works the same
as a laptop's folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pyarrow as pa
from pyarrow import fs

from lejepa_ray.errors import ConfigError


def is_local(path: str) -> bool:
    """True for a filesystem path (``file://`` included), False for a URI such as
    ``s3://bucket/runs``."""
    return "://" not in path or path.startswith("file://")


def absolute(path: str) -> str:
    """``path`` made absolute when it is a plain local path; a URI is returned as it is.
    Ray tasks and actors may run in another working directory than the driver."""
    return path if "://" in path else os.path.abspath(path)


def check_output(uri: str, what: str) -> None:
    """Raise a ConfigError, naming the folder as ``what`` ("export folder") and saying why,
    when a local output folder ``uri`` cannot be created or written; leave the disk as it was
    (the folders it had to create to find out are removed). A URI is left to the writer: its
    permissions show only when it writes.
    """
    if not is_local(uri):
        return
    path = Path(uri.removeprefix("file://")).absolute()
    made = []  # the folders this check creates, deepest first
    for parent in (path, *path.parents):
        if parent.exists():
            break
        made.append(parent)
    try:
        path.mkdir(parents=True, exist_ok=True)
        writable = os.access(path, os.W_OK | os.X_OK)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"cannot create the {what} {uri!r} ({reason}): give a folder you can write to."
        ) from None
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
    if not writable:
        raise ConfigError(f"cannot write into the {what} {uri!r}: give a folder you can write to.")


def resolve_filesystem(path: str) -> tuple[fs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` (local, s3://, gs://, ...) and the path within it."""
    if "://" not in str(path):
        return fs.LocalFileSystem(), absolute(str(path))
    try:
        return fs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, ValueError):
        return fs.LocalFileSystem(), str(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to a local path or URI, creating the parent folders."""
    _write(*resolve_filesystem(uri), data)


def _write(filesystem: fs.FileSystem, where: str, data: bytes) -> None:
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
    _delete(*resolve_filesystem(uri))


def _delete(filesystem: fs.FileSystem, where: str) -> None:
    if filesystem.get_file_info(where).type == fs.FileType.File:
        filesystem.delete_file(where)


def uri_of(filesystem: fs.FileSystem, path: str) -> str:
    """The URI of ``path`` on ``filesystem``: ``s3://...``, ``gs://...``, or a local path.

    Ray Train hands out checkpoints as a (filesystem, path) pair whose path has no scheme;
    this is what turns one back into a location that means the same in another process.
    """
    scheme = {"local": "", "s3": "s3://", "gcs": "gs://"}.get(filesystem.type_name)
    if scheme is None:
        scheme = f"{filesystem.type_name}://"
    return f"{scheme}{path}"


class Folder:
    """A directory on a local disk or in object storage, read file by file or by byte range,
    counting the bytes it read (``bytes_read``), so that a caller can say what it downloaded.

    Made from a path or URI (:meth:`at`), or from a filesystem and a path in it, as Ray Train
    gives checkpoints (``Folder(checkpoint.filesystem, checkpoint.path)``).
    """

    def __init__(self, filesystem: fs.FileSystem, path: str):
        self.filesystem, self.path = filesystem, path.rstrip("/") or path
        self.uri = uri_of(filesystem, self.path)
        self.bytes_read = 0

    @classmethod
    def at(cls, location: str) -> Folder:
        """The folder at a local path, ``file://`` path or URI."""
        location = str(location)
        if location.startswith("file://"):
            location = location.removeprefix("file://")
        return cls(*resolve_filesystem(location))

    def __repr__(self) -> str:
        return self.uri

    def name(self) -> str:
        """The last component of the path (``checkpoint_00000008``)."""
        return self.path.rsplit("/", 1)[-1]

    def is_dir(self) -> bool:
        return self.filesystem.get_file_info(self.path).type == fs.FileType.Directory

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(f"{self.path}/{name}").type == fs.FileType.File

    def files(self) -> dict[str, int]:
        """Every file below the folder, by its path relative to it, with its size in bytes
        (one listing request on object storage)."""
        selector = fs.FileSelector(self.path, recursive=True, allow_not_found=True)
        prefix = len(self.path) + 1
        return {
            info.path[prefix:]: info.size
            for info in self.filesystem.get_file_info(selector)
            if info.type == fs.FileType.File
        }

    def read(self, name: str) -> bytes | None:
        """The whole file ``name`` (relative path), or None when there is none."""
        try:
            with self.filesystem.open_input_stream(f"{self.path}/{name}") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        self.bytes_read += len(data)
        return data

    def open(self, name: str) -> pa.NativeFile:
        """A random-access pyarrow file for :meth:`read_at`."""
        return self.filesystem.open_input_file(f"{self.path}/{name}")

    def read_at(self, file: pa.NativeFile, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of an :meth:`open` file (one range request on
        object storage)."""
        data = file.read_at(length, offset)
        self.bytes_read += len(data)
        return data

    def write(self, name: str, data: bytes) -> None:
        _write(self.filesystem, f"{self.path}/{name}", data)

    def delete(self, name: str) -> None:
        """Delete the file ``name`` (relative path), if there is one."""
        _delete(self.filesystem, f"{self.path}/{name}")


def upload(local_dir: str, uri: str) -> None:
    """Copy the local folder ``local_dir`` to ``uri`` (a local path or a URI)."""
    filesystem, where = resolve_filesystem(uri)
    filesystem.create_dir(where, recursive=True)
    fs.copy_files(local_dir, where, destination_filesystem=filesystem)


def download(uri: str, local_dir: str) -> None:
    """Copy the folder at ``uri`` (a local path or a URI) into the local folder ``local_dir``."""
    filesystem, where = resolve_filesystem(uri)
    fs.copy_files(where, local_dir, source_filesystem=filesystem)
