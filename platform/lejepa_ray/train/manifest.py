"""A checkpoint's manifest: every file with its size and CRC-32, and a CRC-32 per stored tensor.

Structure and sizes catch an interrupted write or a truncated copy; only checksums catch a
byte that changed inside a tensor's payload (a bad disk, a bad copy). Reading a whole
multi-gigabyte shard file to check one checksum would defeat reading only the byte ranges a rank
needs, so the shard files carry one checksum per DCP storage item, that is per
``(file, offset, length)`` entry of DCP's index, and a rank verifies exactly the bytes it reads.
Small files (``state.json``, ``.metadata``, RNG and config files) carry a whole-file checksum.

``manifest.json``::

    {"format": 1, "algorithm": "crc32",
     "files": {"state.json": {"size": 812, "crc32": 1234}, "__0_0.distcp": {"size": 9000}, ...},
     "chunks": {"__0_0.distcp": [[offset, length, crc32], ...], ...}}

It is the last file of a checkpoint that rank 0 writes, after gathering every rank's entries:
through a collective when the ranks share a directory (``checkpoint.save``), or through each
rank's part file ``manifest.parts/<rank>.json``, stored after that rank's files, when each rank
uploads its own directory (``train.upload``, which computes the checksums off the training
thread).
CRC-32 (zlib) detects every burst error of up to 32 bits and runs at memory speed; this guards
against accidents, not against someone forging a checkpoint.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MANIFEST_FILE = "manifest.json"
PARTS_DIR = "manifest.parts"
"""Each rank's manifest entries, stored by its upload for rank 0 to merge."""
FORMAT = 1
WHOLE_FILE_LIMIT = 16 * 2**20
"""Files up to this size (bytes) get a whole-file checksum; larger ones only per-item ones."""
READ_BYTES = 64 * 2**20
"""Bytes read at a time when checksumming a storage item."""


class ManifestMismatch(Exception):
    """A file does not match the manifest; the message names it and says how."""


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def describe(directory: str | Path, names: list[str], chunks: dict[str, list]) -> dict:
    """This rank's manifest entries for the files ``names`` it wrote under the local
    ``directory``: ``{"files": {...}, "chunks": {...}}``. Streams each storage item (a shard
    file is never held in memory whole; only files up to ``WHOLE_FILE_LIMIT`` are read whole).

    ``chunks``: for a shard file, its DCP storage items as ``(offset, length)`` pairs.
    """
    files, out_chunks = {}, {}
    for name in names:
        path = Path(directory, name)
        size = path.stat().st_size
        entry = {"size": size}
        with path.open("rb") as f:
            if size <= WHOLE_FILE_LIMIT:
                entry["crc32"] = crc32(f.read())
            if name in chunks:
                out_chunks[name] = [
                    [offset, length, _range_crc32(f, offset, length)]
                    for offset, length in sorted(set(map(tuple, chunks[name])))
                ]
        files[name] = entry
    return {"files": files, "chunks": out_chunks}


def _range_crc32(f: BinaryIO, offset: int, length: int) -> int:
    """The CRC-32 of bytes ``[offset, offset + length)`` of the open file ``f`` (of those
    there are, if it ends inside the range: the size check names that), read in blocks."""
    f.seek(offset)
    value, left = 0, length
    while left:
        block = f.read(min(left, READ_BYTES))
        if not block:
            break
        value = zlib.crc32(block, value)
        left -= len(block)
    return value & 0xFFFFFFFF


@dataclass(frozen=True)
class Part:
    """One rank's share of a checkpoint, written to a local ``directory`` of its own.

    ``chunks``: for each of its shard files, its DCP storage items as ``(offset, length)``.
    ``token``: the same on every rank's part of one checkpoint, and new for each; rank 0 merges
    only entries that carry it, so that entries an interrupted earlier upload left in the same
    directory cannot pass for this checkpoint's."""

    directory: str
    rank: int
    world: int
    chunks: dict[str, list[tuple[int, int]]]
    token: str

    def names(self) -> list[str]:
        """Its files, relative to ``directory``, sorted."""
        root = Path(self.directory)
        return sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())

    def describe(self, names: list[str] | None = None) -> dict:
        """Its manifest entries (:func:`describe`) for ``names`` (default: :meth:`names`),
        with its ``token``: reads every byte of those files."""
        entries = describe(self.directory, self.names() if names is None else names, self.chunks)
        return {"token": self.token, **entries}


def part_file(rank: int) -> str:
    """Where rank ``rank``'s entries lie in the checkpoint directory."""
    return f"{PARTS_DIR}/{rank:05d}.json"


def merge(parts: list[dict]) -> dict:
    """One manifest from every rank's :func:`describe` entries."""
    files: dict = {}
    chunks: dict = {}
    for part in parts:
        files.update(part["files"])
        chunks.update(part["chunks"])
    return {"format": FORMAT, "algorithm": "crc32", "files": files, "chunks": chunks}


@dataclass
class Manifest:
    """A parsed manifest, checking sizes, whole files and byte ranges against it."""

    files: dict[str, dict]
    """Relative path -> {"size": bytes, "crc32": checksum (small files only)}."""
    chunks: dict[tuple[str, int, int], int] = field(default_factory=dict)
    """(file, offset, length) -> checksum of that byte range."""

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Raises ManifestMismatch when ``data`` is not a manifest of this format."""
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT or raw.get("algorithm") != "crc32":
                raise ValueError(f"format {raw.get('format')}, algorithm {raw.get('algorithm')}")
            chunks = {
                (name, int(o), int(n)): int(c)
                for name, items in raw["chunks"].items()
                for o, n, c in items
            }
            return cls(dict(raw["files"]), chunks)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestMismatch(f"{MANIFEST_FILE} is unreadable ({e})") from None

    def check_listing(self, sizes: dict[str, int]) -> None:
        """Every file of the manifest is among ``sizes`` (relative path -> bytes) with its
        size."""
        for name, entry in sorted(self.files.items()):
            have = sizes.get(name)
            if have is None:
                raise ManifestMismatch(f"{name} is missing")
            if have != entry["size"]:
                raise ManifestMismatch(
                    f"{name} has {have} bytes, the manifest says {entry['size']} "
                    f"({'truncated' if have < entry['size'] else 'overwritten'})"
                )

    def check_file(self, name: str, data: bytes) -> None:
        """``data`` is the whole file ``name`` as the manifest describes it."""
        entry = self.files.get(name)
        if entry is None:
            raise ManifestMismatch(f"{name} is not in the manifest")
        if len(data) != entry["size"]:
            raise ManifestMismatch(
                f"{name} has {len(data)} bytes, the manifest says {entry['size']}"
            )
        if "crc32" in entry and crc32(data) != entry["crc32"]:
            raise ManifestMismatch(f"{name} does not match its checksum (a changed byte)")

    def check_range(self, name: str, offset: int, length: int, data: bytes) -> None:
        """``data`` is the byte range ``[offset, offset + length)`` of ``name`` as written."""
        want = self.chunks.get((name, offset, length))
        if want is None:
            raise ManifestMismatch(f"{name} bytes {offset}+{length} are not in the manifest")
        if len(data) != length:
            raise ManifestMismatch(f"{name} ends inside bytes {offset}+{length} (truncated)")
        if crc32(data) != want:
            raise ManifestMismatch(
                f"{name} bytes {offset}+{length} do not match their checksum (a changed byte)"
            )
