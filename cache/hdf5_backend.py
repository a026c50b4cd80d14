"""HDF5 storage for teacher caches: a finished store is one read-only `.h5` file.

HDF5 files can become unreadable when a writer is killed mid-write, and HDF5 takes
no concurrent writers. So an HDF5 cache is written as a zarr staging store next to
the target path (`<path>.staging.zarr`), with the same arrays and the same per-chunk
atomic writes, and `write_hdf5` copies it into the `.h5` file once every part is
written: into `<path>.tmp` first, then renamed over `<path>` in one step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cache.errors import CacheFormatError, CacheNotFoundError, ReadOnlyCacheError
from cache.fingerprint import canonical_json
from cache.schema import ROLE_STEP_DONE, ROLE_VIDEO_DONE, STRING_ENTRY_BYTES, ArraySpec
from cache.zarr_backend import ZarrArrays

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5")
STAGING_SUFFIX = ".staging.zarr"
TEMPORARY_SUFFIX = ".tmp"

# gzip is the compression filter that every HDF5 build has, so any HDF5 tool can
# read the file. On random float16 logits, level 4 compresses as well as level 9
# (to 88% of the raw bytes after the byte shuffle, measured with h5py 3.16).
GZIP_LEVEL = 4

# Done flags are written once, by `write_hdf5`, so the final file stores them in
# chunks of this many flags instead of one chunk per flag.
FLAG_CHUNK_ENTRIES = 1 << 16

# Arrays are copied from the staging store in blocks of about this many bytes.
COPY_BLOCK_BYTES = 64 << 20


def staging_location(path: str | Path) -> str:
    """Return the zarr staging store that contains an HDF5 cache while it is written."""
    return f"{path}{STAGING_SUFFIX}"


def has_hdf5_suffix(path: str | Path) -> bool:
    """Return whether a path names an HDF5 file by its suffix."""
    return str(path).lower().endswith(HDF5_SUFFIXES)


class Hdf5Arrays:
    """Named arrays and root attributes of a finished HDF5 cache file, read as numpy.

    Root attributes are stored as JSON text, array attributes as HDF5 scalars.
    """

    backend = "hdf5"
    writable = False

    def __init__(self, file: h5py.File, location: str):
        self._file = file
        self.location = location

    @classmethod
    def open(cls, location: str) -> Hdf5Arrays:
        """Open a finished cache file for reading."""
        if not os.path.exists(location):
            raise CacheNotFoundError(f"no teacher cache found at {location}")
        if not h5py.is_hdf5(location):
            raise CacheFormatError(
                f"{location} is a file but not an HDF5 file, so it is not a teacher cache; "
                "a cache is a zarr directory or an HDF5 file"
            )
        try:
            file = h5py.File(location, "r")
        except OSError as error:
            raise CacheFormatError(
                f"{location} cannot be read as an HDF5 file ({error}); it is truncated or damaged. "
                "Delete it and rerun precompute"
            ) from error
        return cls(file, location)

    def _dataset(self, name: str) -> h5py.Dataset:
        node = self._file[name]
        if not isinstance(node, h5py.Dataset):
            raise KeyError(f"{name} in {self.location} is a group, not a dataset")
        return node

    @property
    def root_attributes(self) -> dict[str, Any]:
        """The file's root attributes, decoded from JSON."""
        return {key: json.loads(value) for key, value in self._file.attrs.items()}

    def update_root_attributes(self, values: Mapping[str, Any]) -> None:
        raise ReadOnlyCacheError(f"{self.location} is a finished HDF5 cache and cannot be changed")

    def has(self, name: str) -> bool:
        """Return whether the file contains a dataset with this name."""
        return isinstance(self._file.get(name), h5py.Dataset)

    def array_names(self) -> list[str]:
        """Return the names of all datasets, sorted."""
        names = []
        self._file.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
        return sorted(names)

    def info(self, name: str) -> dict[str, Any]:
        """Return a dataset's shape, dtype, chunks, filters and attributes."""
        dataset = self._dataset(name)
        is_string = h5py.check_string_dtype(dataset.dtype) is not None
        codecs = [filter_name for filter_name, used in
                  (("shuffle", dataset.shuffle), (dataset.compression, dataset.compression), ("fletcher32", dataset.fletcher32))
                  if used]
        return {
            "shape": tuple(dataset.shape),
            "dtype": "string" if is_string else dataset.dtype.name,
            "chunks": tuple(dataset.chunks or dataset.shape),
            "codecs": codecs,
            "attributes": {key: _from_hdf5_scalar(value) for key, value in dataset.attrs.items()},
        }

    def read(self, name: str, selection: Any = ...) -> np.ndarray:
        """Read a selection of a dataset; string datasets come back as numpy object arrays of str."""
        dataset = self._dataset(name)
        if h5py.check_string_dtype(dataset.dtype) is not None:
            return np.asarray(dataset.asstr()[selection], dtype=object)
        return np.asarray(dataset[selection])

    def read_together(self, requests: Sequence[tuple[str, Any]]) -> list[np.ndarray]:
        """Read several (dataset name, selection) requests one after another, returning their values in order."""
        return [self.read(name, selection) for name, selection in requests]

    def write(self, name: str, selection: Any, values: Any) -> None:
        raise ReadOnlyCacheError(f"{self.location} is a finished HDF5 cache and cannot be changed")

    def update_array_attributes(self, name: str, values: Mapping[str, Any]) -> None:
        raise ReadOnlyCacheError(f"{self.location} is a finished HDF5 cache and cannot be changed")

    def stored_chunk_indices(self, name: str) -> tuple[set[int], list[str]]:
        """List the first-axis indices of the stored chunks; HDF5 leaves no temporary files."""
        dataset = self._dataset(name)
        chunk_rows = (dataset.chunks or dataset.shape)[0]
        indices = set()
        for position in range(dataset.id.get_num_chunks()):
            indices.add(dataset.id.get_chunk_info(position).chunk_offset[0] // chunk_rows)
        return indices, []

    def chunk_byte_range(self, name: str, row: int) -> tuple[int, int]:
        """Return the file offset and stored size of the chunk that starts at this first-axis row."""
        dataset = self._dataset(name)
        info = dataset.id.get_chunk_info_by_coord((row,) + (0,) * (dataset.ndim - 1))
        return info.byte_offset, info.size

    def disk_bytes(self) -> int:
        """Return the size of the file."""
        return os.path.getsize(self.location)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _from_hdf5_scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataset_chunks(spec: ArraySpec) -> tuple[int, ...]:
    if spec.role in (ROLE_STEP_DONE, ROLE_VIDEO_DONE):
        return (min(spec.shape[0], FLAG_CHUNK_ENTRIES),)
    return spec.chunks


def _create_dataset(file: h5py.File, spec: ArraySpec) -> h5py.Dataset:
    if spec.dtype == "string":
        # HDF5 applies no filters to variable-length strings.
        return file.create_dataset(spec.name, shape=spec.shape, dtype=h5py.string_dtype("utf-8"),
                                   chunks=spec.chunks, track_times=False)
    return file.create_dataset(
        spec.name,
        shape=spec.shape,
        dtype=spec.dtype,
        chunks=_dataset_chunks(spec),
        compression="gzip",
        compression_opts=GZIP_LEVEL,
        shuffle=True,
        # A checksum per chunk makes a damaged chunk fail to read instead of
        # returning wrong numbers.
        fletcher32=True,
        track_times=False,
    )


def _copy_array(source: ZarrArrays, target: h5py.Dataset, spec: ArraySpec) -> None:
    entry_bytes = STRING_ENTRY_BYTES if spec.dtype == "string" else np.dtype(spec.dtype).itemsize
    row_bytes = max(1, int(np.prod(spec.shape[1:], dtype=np.int64)) * entry_bytes)
    chunk_rows = spec.chunks[0]
    block_rows = max(chunk_rows, (COPY_BLOCK_BYTES // row_bytes) // chunk_rows * chunk_rows)
    for start in range(0, spec.shape[0], block_rows):
        stop = min(start + block_rows, spec.shape[0])
        target[start:stop] = source.read(spec.name, slice(start, stop))


def write_hdf5(
    source: ZarrArrays, specs: Mapping[str, ArraySpec], root_attributes: Mapping[str, Any], path: str | Path
) -> None:
    """Copy every array of a staging store into an HDF5 file at `path`, replacing it atomically.

    The file is written to `<path>.tmp`, flushed to disk, then renamed over `path`, so
    `path` is either absent or a whole file even if this process is killed.
    """
    started = time.perf_counter()
    temporary = f"{path}{TEMPORARY_SUFFIX}"

    with h5py.File(temporary, "w") as file:
        for key, value in root_attributes.items():
            file.attrs[key] = canonical_json(value)
        for spec in specs.values():
            dataset = _create_dataset(file, spec)
            _copy_array(source, dataset, spec)
            for key, value in source.info(spec.name)["attributes"].items():
                dataset.attrs[key] = value

    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    logger.info("wrote HDF5 cache %s in %.1f s", path, time.perf_counter() - started)
