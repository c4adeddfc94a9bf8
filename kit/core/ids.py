"""Short ids: one helper (`short_id`) and the lengths of the ids that published outputs carry.

`ID_LEN` (12 hex digits) is the short form: box ids and every hash shown in a message. Two older ids
keep their lengths because they are part of published files and cell file names, and changing them
would change every corpus and verdict: environment fingerprint ids (16) and cell ids / cache keys (24).
"""

from __future__ import annotations

import hashlib
from typing import Any

from kit.core.fsio import canonical_json

ID_LEN = 12  # box ids; hashes abbreviated in messages
FINGERPRINT_ID_LEN = 16  # env fingerprint ids (corpus rows, verdicts, sidecars, bundles)
KEY_LEN = 24  # cell ids, legacy cell ids, probe/source cache keys


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def short_id(data: str | bytes, length: int = ID_LEN) -> str:
    """The first `length` hex digits of the sha256 of `data` (str is UTF-8 encoded)."""
    return sha256_hex(data)[:length]


def digest(obj: Any) -> str:
    """Full sha256 of an object's canonical JSON: equal objects, equal digests (step keys)."""
    return sha256_hex(canonical_json(obj, indent=None))


def object_id(obj: Any, length: int = ID_LEN) -> str:
    """short_id of an object's canonical JSON (cell ids, fingerprint ids)."""
    return short_id(canonical_json(obj, indent=None), length)


def shorten(hexdigest: str | None, length: int = ID_LEN) -> str:
    """An existing hash abbreviated for a message."""
    return str(hexdigest or "")[:length]


def int_key(text: str, bits: int = 64) -> int:
    """`bits` bits of the sha256 of `text` as an integer (generator keys)."""
    return int(short_id(text, bits // 4), 16)
