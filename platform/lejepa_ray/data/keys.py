"""Sample keys to numbers: the hash that seeds each sample's crops and fixes the train/val split.

Both must be the same in every process, on every machine and on every rerun, which rules out
Python's salted ``hash``; a keyed BLAKE2 digest of the key's text is cheap and stable.
"""

from __future__ import annotations

import hashlib

SPLITS = ("all", "train", "val")
VAL_ONE_IN = 5
"""``val`` holds the samples whose key hashes to 0 modulo this: 20%."""


def stable_hash(*parts: object) -> int:
    """A 63-bit integer hash of ``parts`` that is the same in every process (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def in_split(key: str, split: str) -> bool:
    """Whether the sample named ``key`` belongs to ``split`` (``all``, ``train`` or ``val``):
    a fixed 80/20 partition by a hash of the key, so it never depends on order, sharding or
    how many samples are read."""
    return split == "all" or (stable_hash("split", key) % VAL_ONE_IN == 0) == (split == "val")
