"""Feature exports of an evaluated split: zarr, HDF5, and TeachCLIP's BigFile directories.

A BigFile directory contains `id.txt` (ids separated by spaces), `shape.txt` ("N D") and
`feature.bin` (float32, row-major), which TeachCLIP's `evaluation.py` and `BigFile` class read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import zarr
import zarr.storage

logger = logging.getLogger(__name__)

ZARR, HDF5, BIGFILE = "zarr", "hdf5", "bigfile"
EXPORT_FORMATS = (ZARR, HDF5, BIGFILE)

# Names inside an output folder.
ZARR_EXPORT = "features.zarr"
HDF5_EXPORT = "features.h5"
BIGFILE_EXPORT = "bigfile"
BIGFILE_TEXTS = "text_features"
BIGFILE_VIDEOS = "video_features"
# Query id, tab, video id per line: the ground-truth layout TeachCLIP's evaluation.py reads.
BIGFILE_GROUND_TRUTH = "ground_truth.txt"

BIGFILE_IDS = "id.txt"
BIGFILE_SHAPE = "shape.txt"
BIGFILE_FEATURES = "feature.bin"
BIGFILE_DTYPE = np.dtype("<f4")

# Rows per chunk of the exported feature arrays: 4096 rows of 512 float32 values are 8 MiB.
EXPORT_CHUNK_ROWS = 4096

_WHITESPACE = re.compile(r"\s")


class BigFileError(ValueError):
    """A BigFile directory whose files are missing or disagree with each other."""


@dataclass(frozen=True)
class FeatureSet:
    """Ids and one feature row per id."""

    ids: tuple[str, ...]
    features: np.ndarray  # [items, dim]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[0] != len(self.ids):
            raise ValueError(f"expected features of shape [{len(self.ids)}, dim] for {len(self.ids)} ids, "
                             f"got {self.features.shape}")


@dataclass(frozen=True)
class SplitFeatures:
    """Text and video features of an evaluated split, with each text's positive video."""

    texts: FeatureSet
    videos: FeatureSet
    query_video_index: np.ndarray  # [texts] row of each text's video in `videos`


def write_bigfile(directory: str | Path, ids: Iterable[str], features: np.ndarray) -> Path:
    """Write ids and float32 features [items, dim] as a BigFile directory; returns the directory.

    Ids are joined by single spaces, so an id that contains whitespace raises ValueError.
    """
    directory = Path(directory)
    ids = [str(item) for item in ids]
    features = np.ascontiguousarray(features, dtype=BIGFILE_DTYPE)
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise ValueError(f"expected features of shape [{len(ids)}, dim] for {len(ids)} ids, got {features.shape}")
    for item in ids:
        if not item or _WHITESPACE.search(item):
            raise ValueError(f"BigFile ids are separated by spaces, so id {item!r} cannot be written; "
                             "rename the item to an id without whitespace")

    directory.mkdir(parents=True, exist_ok=True)
    (directory / BIGFILE_IDS).write_text(" ".join(ids), encoding="utf-8")
    (directory / BIGFILE_SHAPE).write_text(f"{features.shape[0]} {features.shape[1]}", encoding="utf-8")
    features.tofile(directory / BIGFILE_FEATURES)
    logger.info("wrote %d x %d features to BigFile %s", features.shape[0], features.shape[1], directory)
    return directory


def read_bigfile(directory: str | Path) -> FeatureSet:
    """Read a BigFile directory; features are a read-only float32 memory map [items, dim].

    Ids may be separated by spaces or newlines, as TeachCLIP's reader accepts both.
    """
    directory = Path(directory)
    for name in (BIGFILE_IDS, BIGFILE_SHAPE, BIGFILE_FEATURES):
        if not (directory / name).is_file():
            raise BigFileError(f"{directory / name} not found; a BigFile directory needs {BIGFILE_IDS}, "
                               f"{BIGFILE_SHAPE} and {BIGFILE_FEATURES}")

    shape_text = (directory / BIGFILE_SHAPE).read_text(encoding="utf-8").split()
    try:
        items, dim = (int(value) for value in shape_text[:2])
    except ValueError as error:
        raise BigFileError(f"{directory / BIGFILE_SHAPE} must contain 'N D', got {' '.join(shape_text)!r}") from error

    ids = tuple((directory / BIGFILE_IDS).read_text(encoding="utf-8").split())
    if len(ids) != items:
        raise BigFileError(f"{directory / BIGFILE_IDS} lists {len(ids)} ids but {BIGFILE_SHAPE} gives {items} rows")
    expected_bytes = items * dim * BIGFILE_DTYPE.itemsize
    actual_bytes = (directory / BIGFILE_FEATURES).stat().st_size
    if actual_bytes != expected_bytes:
        raise BigFileError(f"{directory / BIGFILE_FEATURES} has {actual_bytes} bytes, but {items} x {dim} float32 "
                           f"values take {expected_bytes}; the export is truncated or its shape.txt is wrong")

    if items == 0:
        return FeatureSet(ids=ids, features=np.zeros((0, dim), dtype=BIGFILE_DTYPE))
    features = np.memmap(directory / BIGFILE_FEATURES, dtype=BIGFILE_DTYPE, mode="r", shape=(items, dim))
    return FeatureSet(ids=ids, features=features)


def is_bigfile(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / BIGFILE_SHAPE).is_file() and (path / BIGFILE_FEATURES).is_file()


def export_split_features(output_dir: str | Path, formats: Iterable[str], split: SplitFeatures,
                          attributes: dict) -> dict[str, Path]:
    """Write the split's features in each requested format under output_dir; returns format -> path.

    zarr and HDF5 exports contain `texts/ids`, `texts/features`, `texts/video_index`, `videos/ids` and
    `videos/features`, with `attributes` on the root. BigFile writes one directory per side
    and a ground-truth file.
    """
    output_dir = Path(output_dir)
    formats = tuple(dict.fromkeys(formats))
    for name in formats:
        if name not in EXPORT_FORMATS:
            raise ValueError(f"unknown feature export format {name!r}; expected one of {EXPORT_FORMATS}")

    written: dict[str, Path] = {}
    if ZARR in formats:
        written[ZARR] = write_zarr_features(output_dir / ZARR_EXPORT, split, attributes)
    if HDF5 in formats:
        written[HDF5] = write_hdf5_features(output_dir / HDF5_EXPORT, split, attributes)
    if BIGFILE in formats:
        written[BIGFILE] = write_bigfile_split(output_dir / BIGFILE_EXPORT, split)
    return written


def write_bigfile_split(directory: Path, split: SplitFeatures) -> Path:
    """Write `text_features/`, `video_features/` and the ground truth (query id, tab, video id) under directory."""
    write_bigfile(directory / BIGFILE_TEXTS, split.texts.ids, split.texts.features)
    write_bigfile(directory / BIGFILE_VIDEOS, split.videos.ids, split.videos.features)
    lines = [f"{text_id}\t{split.videos.ids[video]}" for text_id, video in zip(split.texts.ids, split.query_video_index)]
    (directory / BIGFILE_GROUND_TRUTH).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def write_zarr_features(path: Path, split: SplitFeatures, attributes: dict) -> Path:
    store = zarr.storage.LocalStore(path)
    root = zarr.open_group(store, mode="w", attributes=dict(attributes))
    for side, features in (("texts", split.texts), ("videos", split.videos)):
        group = root.create_group(side)
        ids = group.create_array("ids", shape=(len(features.ids),), dtype=str)
        ids[:] = np.asarray(features.ids, dtype=object)
        rows = max(1, min(len(features.ids), EXPORT_CHUNK_ROWS))
        group.create_array("features", data=np.asarray(features.features, dtype=np.float32),
                           chunks=(rows, features.features.shape[1]))
    root["texts"].create_array("video_index", data=np.asarray(split.query_video_index, dtype=np.int64))
    logger.info("wrote text and video features to %s", path)
    return path


def write_hdf5_features(path: Path, split: SplitFeatures, attributes: dict) -> Path:
    with h5py.File(path, "w") as handle:
        for key, value in attributes.items():
            handle.attrs[key] = value if isinstance(value, (int, float, str)) else str(value)
        for side, features in (("texts", split.texts), ("videos", split.videos)):
            group = handle.create_group(side)
            group.create_dataset("ids", data=np.asarray(features.ids, dtype=object), dtype=h5py.string_dtype())
            group.create_dataset("features", data=np.asarray(features.features, dtype=np.float32))
        handle["texts"].create_dataset("video_index", data=np.asarray(split.query_video_index, dtype=np.int64))
    logger.info("wrote text and video features to %s", path)
    return path


def read_split_features(path: str | Path) -> SplitFeatures:
    """Read a zarr or HDF5 feature export written by `export_split_features`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature export {path} not found; run evaluate with --export-features zarr or hdf5")

    if path.is_dir():
        root = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
        sides = {side: FeatureSet(ids=tuple(str(item) for item in root[side]["ids"][:]),
                                  features=np.asarray(root[side]["features"][:]))
                 for side in ("texts", "videos")}
        video_index = np.asarray(root["texts"]["video_index"][:])
    else:
        with h5py.File(path, "r") as handle:
            sides = {side: FeatureSet(ids=tuple(handle[side]["ids"].asstr()[:]),
                                      features=handle[side]["features"][:])
                     for side in ("texts", "videos")}
            video_index = handle["texts"]["video_index"][:]
    return SplitFeatures(texts=sides["texts"], videos=sides["videos"], query_video_index=video_index)
