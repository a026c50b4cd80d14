"""Fingerprints: a digest of every setting that a cache's teacher targets depend on.

The caller chooses the fields (annotation hashes, frame settings, teachers, ...);
this module canonicalises them, hashes them and explains differences.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache.errors import CacheError

logger = logging.getLogger(__name__)

# Files are hashed in pieces of this size so that multi-gigabyte checkpoints and
# annotation files never have to fit in memory.
HASH_CHUNK_BYTES = 1 << 20

# Values longer than this are cut in error messages so that a differing teacher
# config does not bury the other differences.
MAX_VALUE_CHARS = 200


class _Missing:
    """Marker for a field that one of the two fingerprints does not have."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _to_json_value(value: Any) -> Any:
    """Convert numpy scalars and arrays, which json cannot encode, to Python values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(value: Any) -> str:
    """Encode a value as JSON with sorted keys and no whitespace, so equal values give equal text."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_to_json_value,
    )


def sha256_json(value: Any) -> str:
    """Return the hex sha256 of a value's canonical JSON, for example of a video id list."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Return the hex sha256 of a file's bytes, read in chunks of `chunk_bytes`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class Fingerprint:
    """Settings that a cache's targets depend on, as a flat dict of name -> JSON value.

    Values are normalised through JSON (tuples become lists, numpy scalars become
    Python numbers), so a fingerprint read back from a store equals the one written.
    """

    def __init__(self, fields: Mapping[str, Any]):
        for name, value in fields.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"fingerprint field name {name!r} is invalid: names must be non-empty strings")
            try:
                canonical_json(value)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"fingerprint field {name!r} has a value that JSON cannot encode ({error}); "
                    "pass strings, numbers, booleans, None, lists or dicts of them"
                ) from error

        text = canonical_json(dict(fields))
        self._fields: dict[str, Any] = json.loads(text)
        self.digest: str = hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def fields(self) -> dict[str, Any]:
        """A copy of the normalised fields."""
        return json.loads(canonical_json(self._fields))

    def to_dict(self) -> dict[str, Any]:
        """Return the digest and fields in the form stored in a cache manifest."""
        return {"digest": self.digest, "fields": self.fields}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Fingerprint:
        """Rebuild a fingerprint from a manifest entry, checking that its digest still matches."""
        fingerprint = cls(stored["fields"])
        if fingerprint.digest != stored["digest"]:
            raise CacheError(
                f"stored fingerprint digest {stored['digest']} does not match its fields "
                f"(they hash to {fingerprint.digest}); the manifest was edited or damaged"
            )
        return fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Fingerprint(digest={self.digest[:12]}..., {len(self._fields)} fields)"


@dataclass(frozen=True)
class FieldDifference:
    """One field whose value differs between an expected and a stored fingerprint.

    Nested dict values are compared key by key, so `name` may be a dotted path
    such as `teacher.xclip.config.num_frames`. A side that lacks the field has the value
    `MISSING`.
    """

    name: str
    expected: Any
    stored: Any

    def describe(self) -> str:
        """Return one line naming the field and both values."""
        return f"{self.name}: expected {_format_value(self.expected)}, stored {_format_value(self.stored)}"


def _format_value(value: Any) -> str:
    if value is MISSING:
        return "<missing>"
    text = canonical_json(value)
    if len(text) > MAX_VALUE_CHARS:
        return text[: MAX_VALUE_CHARS - 3] + "..."
    return text


def _compare_values(name: str, expected: Any, stored: Any) -> list[FieldDifference]:
    if isinstance(expected, dict) and isinstance(stored, dict):
        differences = []
        for key in sorted(set(expected) | set(stored)):
            differences += _compare_values(
                f"{name}.{key}", expected.get(key, MISSING), stored.get(key, MISSING)
            )
        return differences

    if expected is MISSING or stored is MISSING or canonical_json(expected) != canonical_json(stored):
        return [FieldDifference(name, expected, stored)]
    return []


def compare_fields(expected: Mapping[str, Any], stored: Mapping[str, Any], prefix: str = "") -> list[FieldDifference]:
    """List the fields that differ between two dicts of JSON values, sorted by name.

    Each difference is named `prefix` + field name.
    """
    differences = []
    for name in sorted(set(expected) | set(stored)):
        differences += _compare_values(
            prefix + name, expected.get(name, MISSING), stored.get(name, MISSING)
        )
    return differences


def compare(expected: Fingerprint, stored: Fingerprint) -> list[FieldDifference]:
    """List the fields that differ between two fingerprints, sorted by name."""
    return compare_fields(expected.fields, stored.fields)


class FingerprintMismatchError(CacheError):
    """A cache was made with settings other than the ones the caller expects."""

    def __init__(self, path: str | Path, differences: list[FieldDifference]):
        self.path = str(path)
        self.differences = list(differences)
        lines = [
            f"teacher cache at {self.path} was made with different settings "
            f"({len(self.differences)} field(s) differ):"
        ]
        lines += [f"  {difference.describe()}" for difference in self.differences]
        lines.append(
            "Use the config that made this cache, or write a new cache by choosing another "
            "cache path (or deleting this one)."
        )
        super().__init__("\n".join(lines))
