"""The video feature store that `index` writes and `search` reads: a zarr directory of ids, file
paths and unit-length vectors, written in chunks of videos with a done flag per chunk.

Zarr's LocalStore writes each chunk file whole (a temporary file renamed into place), so a killed
index leaves every chunk either written or absent, and a rerun continues from the chunks not done.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import Crc32cCodec

logger = logging.getLogger(__name__)

STORE_FORMAT = "teachclip-feature-store"
STORE_VERSION = 1
FAILED_FILE = "failed.json"
VECTOR_DTYPES = ("float16", "float32")
# 1024 videos of 512 float16 values make 1 MiB chunk files: few files on a million-video index,
# and little work lost when an index run is killed.
DEFAULT_CHUNK_VIDEOS = 1024


class FeatureStoreError(ValueError):
    """A feature store that is missing, of another format, or built with other settings."""


@dataclass(frozen=True)
class FailedVideo:
    video_id: str
    path: str
    reason: str


def is_feature_store(path: str | Path) -> bool:
    """Return whether path is a zarr group written by FeatureStore.create."""
    metadata = Path(path) / "zarr.json"
    if not metadata.is_file():
        return False
    try:
        return json.loads(metadata.read_text(encoding="utf-8")).get("attributes", {}).get("format") == STORE_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


class FeatureStore:
    """Arrays `ids` [N], `paths` [N], `vectors` [N, dim], `valid` [N] and `done` [chunks] of one zarr group.

    A row is `valid` once its video was encoded. Rows of videos that failed to decode stay
    invalid, with zero vectors that search leaves out. `done[c]` is set only after chunk c's
    vectors and valid flags are written.
    """

    def __init__(self, group: zarr.Group, path: Path):
        self._group = group
        self.path = path
        self.attributes = dict(group.attrs)
        self.chunk_videos = int(self.attributes["chunk_videos"])

    @classmethod
    def create(cls, path: str | Path, ids: list[str], paths: list[str], dim: int, dtype: str,
               attributes: dict, chunk_videos: int = DEFAULT_CHUNK_VIDEOS, overwrite: bool = False) -> FeatureStore:
        """Create an empty store for `ids`; an existing store at `path` raises FileExistsError unless `overwrite`."""
        path = Path(path)
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"invalid vector dtype {dtype!r}; expected one of {VECTOR_DTYPES}")
        if chunk_videos < 1:
            raise ValueError(f"chunk_videos must be at least 1, got {chunk_videos}")
        if len(ids) != len(paths):
            raise ValueError(f"got {len(ids)} ids but {len(paths)} paths")
        if path.exists() and not overwrite and (path.is_file() or any(path.iterdir())):
            raise FileExistsError(f"{path} already exists; open it to resume, or pass overwrite=True to rebuild it")

        count = len(ids)
        rows = max(1, min(count, chunk_videos))
        root_attributes = {"format": STORE_FORMAT, "version": STORE_VERSION, "dim": dim, "dtype": dtype,
                           "chunk_videos": rows, **attributes}
        group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", attributes=root_attributes)
        id_array = group.create_array("ids", shape=(count,), dtype=str, chunks=(max(count, 1),))
        id_array[:] = np.asarray(ids, dtype=object)
        path_array = group.create_array("paths", shape=(count,), dtype=str, chunks=(max(count, 1),))
        path_array[:] = np.asarray(paths, dtype=object)
        # Vectors are left uncompressed: unit-length embeddings barely compress, and search loads
        # them in one read. The crc32c checksum makes a damaged chunk fail instead of reading wrong.
        group.create_array("vectors", shape=(count, dim), dtype=dtype, chunks=(rows, dim), fill_value=0,
                           compressors=(Crc32cCodec(),))
        group.create_array("valid", shape=(count,), dtype=bool, chunks=(rows,), fill_value=False)
        # One flag per chunk file, so setting a flag rewrites no other flag.
        group.create_array("done", shape=(cls._chunk_count(count, rows),), dtype=bool, chunks=(1,), fill_value=False)
        (path / FAILED_FILE).write_text("[]\n", encoding="utf-8")
        logger.info("created feature store %s for %d videos (%s, dim %d, %d videos per chunk)",
                    path, count, dtype, dim, rows)
        return cls(group, path)

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> FeatureStore:
        """Open an existing store; raise FeatureStoreError when `path` is not a feature store."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FeatureStoreError(f"no feature store at {path}; build one with `teachclip-pipeline index "
                                    "VIDEO_DIR --checkpoint STUDENT --output STORE`")
        group = zarr.open_group(zarr.storage.LocalStore(path, read_only=not writable), mode="r+" if writable else "r")
        if group.attrs.get("format") != STORE_FORMAT:
            raise FeatureStoreError(f"{path} is a zarr group but not a feature store (format "
                                    f"{group.attrs.get('format')!r}, expected {STORE_FORMAT!r})")
        if group.attrs.get("version") != STORE_VERSION:
            raise FeatureStoreError(f"{path} is feature store version {group.attrs.get('version')}, but this "
                                    f"version of teachclip-pipeline reads version {STORE_VERSION}; rebuild it with index")
        return cls(group, path)

    @staticmethod
    def _chunk_count(count: int, rows: int) -> int:
        return (count + rows - 1) // rows

    @property
    def count(self) -> int:
        return int(self._group["ids"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.attributes["dim"])

    @property
    def num_chunks(self) -> int:
        return int(self._group["done"].shape[0])

    def ids(self) -> list[str]:
        return [str(item) for item in self._group["ids"][:]]

    def paths(self) -> list[str]:
        return [str(item) for item in self._group["paths"][:]]

    def done(self) -> np.ndarray:
        return np.asarray(self._group["done"][:], dtype=bool)

    def valid(self) -> np.ndarray:
        return np.asarray(self._group["valid"][:], dtype=bool)

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def chunk_rows(self, chunk: int) -> range:
        start = chunk * self.chunk_videos
        return range(start, min(start + self.chunk_videos, self.count))

    def pending_chunks(self) -> list[int]:
        return [int(chunk) for chunk in np.flatnonzero(~self.done())]

    def write_chunk(self, chunk: int, vectors: np.ndarray, valid: np.ndarray) -> None:
        """Write one chunk's vectors [rows, dim] and valid flags [rows], then mark the chunk done."""
        rows = self.chunk_rows(chunk)
        if vectors.shape != (len(rows), self.dim) or valid.shape != (len(rows),):
            raise ValueError(f"chunk {chunk} has {len(rows)} rows of dim {self.dim}, got vectors {vectors.shape} "
                             f"and valid {valid.shape}")
        self._group["vectors"][rows.start:rows.stop] = vectors.astype(self.attributes["dtype"])
        self._group["valid"][rows.start:rows.stop] = valid
        self._group["done"][chunk] = True

    def reset_chunk(self, chunk: int) -> None:
        """Clear a chunk's done flag, so the next index run encodes its videos again."""
        self._group["done"][chunk] = False

    def read_vectors(self, rows: slice | None = None) -> np.ndarray:
        return np.asarray(self._group["vectors"][rows if rows is not None else slice(None)])

    def failed(self) -> list[FailedVideo]:
        """Return the videos that failed to decode, from failed.json."""
        entries = json.loads((self.path / FAILED_FILE).read_text(encoding="utf-8"))
        return [FailedVideo(entry["video_id"], entry["path"], entry["reason"]) for entry in entries]

    def record_chunk_failures(self, chunk_ids: list[str], failures: list[FailedVideo]) -> None:
        """Replace the failed.json entries of one chunk's ids with `failures`, written atomically."""
        stale = set(chunk_ids)
        merged = {entry.video_id: entry for entry in self.failed() if entry.video_id not in stale}
        merged.update({entry.video_id: entry for entry in failures})
        listing = [{"video_id": entry.video_id, "path": entry.path, "reason": entry.reason}
                   for entry in sorted(merged.values(), key=lambda entry: entry.video_id)]
        temporary = self.path / f"{FAILED_FILE}.partial"
        temporary.write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.path / FAILED_FILE)
