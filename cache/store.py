"""TeacherCache: create, resume, write and read a teacher cache in zarr or HDF5."""

from __future__ import annotations

import copy
import datetime
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from cache.errors import (
    CacheCreationInterruptedError,
    CacheError,
    CacheExistsError,
    CacheFormatError,
    CacheNotFoundError,
    IncompleteCacheError,
    ReadOnlyCacheError,
)
from cache.fingerprint import Fingerprint, FingerprintMismatchError, compare, compare_fields
from cache.hdf5_backend import Hdf5Arrays, has_hdf5_suffix, staging_location, write_hdf5
from cache.schema import (
    MANIFEST_ATTRIBUTE,
    ROLE_STATIC,
    SCHEMA_VERSION,
    STATE_COMPLETE,
    STATE_CREATING,
    STATE_WRITING,
    WRITTEN_ATTRIBUTE,
    CacheLayout,
    build_manifest,
    array_specs,
    frame_sum_tolerance,
    teacher_array_name,
    validate_manifest,
)
from cache.zarr_backend import ZarrArrays, contains_only_temporary_files, is_remote_url, local_path

logger = logging.getLogger(__name__)

BACKENDS = ("zarr", "hdf5")

# Error messages list at most this many missing step or video indices.
MAX_LISTED_INDICES = 5

PRECOMPUTE_HINT = (
    "Rerun `teachclip-pipeline precompute` with the same config: it resumes at the first missing step."
)


def resolve_backend(path: str | Path, backend: str | None) -> str:
    """Return the backend for a new store: HDF5 for a `.h5`/`.hdf5` path, else `backend` (zarr by default)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"cache backend {backend!r} is not supported; choose one of {BACKENDS}")
    if has_hdf5_suffix(path):
        return "hdf5"
    return backend or "zarr"


def _format_indices(indices: Sequence[int]) -> str:
    listed = ", ".join(str(int(index)) for index in indices[:MAX_LISTED_INDICES])
    if len(indices) > MAX_LISTED_INDICES:
        listed += ", ..."
    return listed


def _locate(path: str) -> tuple[str, str, bool]:
    """Find the store behind a path: (backend, location of the arrays, whether it is a finished HDF5 file)."""
    if is_remote_url(path):
        return "zarr", path, False

    local = local_path(path)
    staging = staging_location(local)
    if local.is_file():
        if Path(staging).exists():
            logger.warning(
                "%s is left over from an interrupted finalize of %s, which finished; delete it to free space "
                "(TeacherCache.open_or_create deletes it)",
                staging, local,
            )
        return "hdf5", str(local), True
    if local.is_dir():
        return "zarr", path, False
    if Path(staging).is_dir():
        return "hdf5", staging, False

    also = f" or {staging}" if has_hdf5_suffix(path) else ""
    raise CacheNotFoundError(f"no teacher cache found at {path}{also}")


def _read_manifest(arrays: ZarrArrays | Hdf5Arrays) -> dict[str, Any]:
    attributes = arrays.root_attributes
    if MANIFEST_ATTRIBUTE not in attributes:
        raise CacheFormatError(
            f"{arrays.location} is not a teacher cache: its root has no {MANIFEST_ATTRIBUTE!r} attribute"
        )

    manifest = attributes[MANIFEST_ATTRIBUTE]
    if isinstance(manifest, Mapping) and manifest.get("state") == STATE_CREATING:
        raise CacheCreationInterruptedError(
            f"{arrays.location} was not fully created: the process creating it stopped before it finished. "
            "TeacherCache.open_or_create, which precompute uses, deletes and recreates such a store; "
            "or delete it by hand"
        )
    validate_manifest(manifest, arrays.location)
    return dict(manifest)


class TeacherCache:
    """One teacher-cache store, open for reading ("r") or for writing pending parts ("r+").

    Get one from `create`, `open` or `open_or_create`, never from the constructor.
    """

    def __init__(self, arrays: ZarrArrays | Hdf5Arrays, path: str, backend: str, manifest: dict[str, Any]):
        self._arrays = arrays
        self.path = path
        self.backend = backend
        self._manifest = manifest
        self.layout = CacheLayout.from_dict(manifest["layout"])
        self._specs = array_specs(self.layout)
        self._static_values: dict[str, Any] = {}

    # ----- opening -----

    @classmethod
    def create(
        cls,
        path: str | Path,
        layout: CacheLayout,
        fingerprint: Fingerprint,
        backend: str | None = "zarr",
        teacher_info: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        overwrite: bool = False,
    ) -> TeacherCache:
        """Create an empty store with every array and the manifest, open for writing.

        `teacher_info` maps teacher names to `{"checkpoint_sha256": ..., "config": {...}}`
        plus any other JSON values to record. With `overwrite`, an existing store at
        the path is deleted first. An HDF5 store is written into a zarr staging store
        until `finalize` turns it into the `.h5` file.
        """
        path = str(path)
        backend = resolve_backend(path, backend)
        manifest = build_manifest(layout, fingerprint, teacher_info, STATE_WRITING)
        specs = array_specs(layout)

        location = path
        if backend == "hdf5":
            if is_remote_url(path):
                raise ValueError(f"HDF5 caches need a local path, got {path}; use the zarr backend for URLs")
            if local_path(path).exists():
                if not overwrite:
                    raise CacheExistsError(f"{path} already exists; open it with TeacherCache.open or choose another path")
                local_path(path).unlink()
            location = staging_location(local_path(path))

        # The root manifest has state "creating" until every array exists, so a store
        # whose creation was killed is recognised as such.
        creating = {MANIFEST_ATTRIBUTE: {"schema_version": SCHEMA_VERSION, "state": STATE_CREATING}}
        if not overwrite and contains_only_temporary_files(location):
            logger.warning("%s contains only temporary files of a killed create; creating the store again", location)
            overwrite = True
        try:
            arrays = ZarrArrays.create(location, specs, creating, overwrite=overwrite)
        except FileExistsError as error:
            raise CacheExistsError(
                f"{location} already exists; use TeacherCache.open_or_create to resume it, or choose another path"
            ) from error
        arrays.update_root_attributes({MANIFEST_ATTRIBUTE: manifest})

        logger.info(
            "created %s teacher cache %s: %d steps of batch %d, teachers %s, frames %s",
            backend, path, layout.num_steps, layout.batch_size, ", ".join(layout.teacher_names),
            "stored" if layout.store_frames else "not stored",
        )
        return cls(arrays, path, backend, manifest)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> TeacherCache:
        """Open an existing store; the backend is detected from what is at the path.

        Mode "r" reads; "r+" also writes pending parts and is rejected for a complete store.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = str(path)
        backend, location, finished_hdf5 = _locate(path)

        if finished_hdf5:
            if mode == "r+":
                raise ReadOnlyCacheError(f"{path} is a finished HDF5 cache and cannot be written")
            arrays: ZarrArrays | Hdf5Arrays = Hdf5Arrays.open(location)
        else:
            arrays = ZarrArrays.open(location, writable=mode == "r+")

        try:
            manifest = _read_manifest(arrays)
            if mode == "r+" and manifest["state"] == STATE_COMPLETE:
                raise ReadOnlyCacheError(f"{path} is complete and cannot be written; open it with mode='r'")
        except CacheError:
            arrays.close()
            raise
        return cls(arrays, path, backend, manifest)

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        layout: CacheLayout,
        fingerprint: Fingerprint,
        backend: str | None = "zarr",
        teacher_info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TeacherCache:
        """Resume the store at `path` if it matches, else create it.

        A store made with another fingerprint or layout raises FingerprintMismatchError
        listing every differing field. A complete store comes back open for reading, an
        unfinished one for writing. A store whose creation was interrupted is deleted
        and created again. With several processes, call this on the main process
        first and on the others after a barrier, so that only one process creates.
        """
        try:
            cache = cls.open(path, "r")
        except CacheNotFoundError:
            return cls.create(path, layout, fingerprint, backend, teacher_info)
        except CacheCreationInterruptedError:
            logger.warning("teacher cache %s was not fully created by an earlier run; creating it again", path)
            return cls.create(path, layout, fingerprint, backend, teacher_info, overwrite=True)

        differences = compare(fingerprint, cache.fingerprint)
        differences += compare_fields(layout.to_dict(), cache.layout.to_dict(), prefix="layout.")
        if differences:
            cache.close()
            raise FingerprintMismatchError(path, differences)

        if cache.is_complete():
            staging = Path(staging_location(local_path(str(path))))
            if cache.backend == "hdf5" and staging.is_dir():
                # The .h5 file replaced the staging store before its deletion was interrupted,
                # so nothing in it is needed any more.
                shutil.rmtree(staging)
                logger.info("deleted %s, left over from an interrupted finalize", staging)
            logger.info("teacher cache %s is complete; opened it for reading", path)
            return cache

        cache.close()
        cache = cls.open(path, "r+")
        pending = {teacher: len(cache.pending_steps(teacher)) for teacher in layout.teacher_names}
        logger.info("resuming teacher cache %s; pending steps per teacher: %s", path, pending)
        return cache

    # ----- checks shared by the write methods -----

    @property
    def storage(self) -> ZarrArrays | Hdf5Arrays:
        """The backend object that reads and writes the named arrays; `verify` and `inspect` use it."""
        return self._arrays

    @property
    def writable(self) -> bool:
        """Whether this handle may write."""
        return self._arrays.writable

    def _require_writable(self) -> None:
        if not self._arrays.writable:
            raise ReadOnlyCacheError(f"{self.path} is open for reading only; open it with mode='r+' to write")

    def _check_teacher(self, teacher: str) -> None:
        if teacher not in self.layout.teacher_names:
            raise KeyError(f"teacher {teacher!r} is not in cache {self.path}; it has {list(self.layout.teacher_names)}")

    def _check_position(self, item_kind: str, index: int, size: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < size:
            raise IndexError(f"{item_kind} {index!r} is out of range for cache {self.path}, which has {size}")
        return int(index)

    def _as_array(
        self, name: str, values: Any, shape: tuple[int, ...], kinds: str, dtype: str, index_of: tuple[str, int] | None = None
    ) -> np.ndarray:
        """Check shape and dtype kind, and with `index_of` = (what, count) that values index `count` items."""
        array = np.asarray(values)
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, but the cache layout expects {shape}")
        if array.dtype.kind not in kinds:
            raise ValueError(f"{name} has dtype {array.dtype}, which cannot be stored as {dtype}")
        if dtype == "bool" and array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1 (or booleans)")

        if index_of is not None:
            item_kind, count = index_of
            bad = np.flatnonzero((array < 0) | (array >= count))
            if len(bad):
                position = int(bad[0])
                raise ValueError(
                    f"{name} entry {position} is {array.flat[position]}, "
                    f"which is not a valid {item_kind} index (0 to {count - 1})"
                )
        return array.astype(dtype, copy=False)

    def _check_ids(self, name: str, ids: Sequence[str], count: int) -> np.ndarray:
        ids = list(ids)
        if len(ids) != count:
            raise ValueError(f"{name} has {len(ids)} entries, but the cache layout expects {count}")
        for position, value in enumerate(ids):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}[{position}] = {value!r} is not a non-empty string")
        if len(set(ids)) != len(ids):
            duplicates = sorted({value for value in ids if ids.count(value) > 1})[:MAX_LISTED_INDICES]
            raise ValueError(f"{name} contains duplicate ids, for example {duplicates}")
        return np.asarray(ids, dtype=str)

    def _write_static(self, values: Mapping[str, np.ndarray]) -> None:
        if not self.writable and self._manifest["state"] == STATE_COMPLETE:
            # Rewriting a complete store with the values it contains is a no-op, so a
            # rerun of precompute may write its inputs before it finds nothing pending.
            for name, array in values.items():
                stored = self._arrays.read(name)
                if stored.shape != array.shape or not (stored == array).all():
                    raise ReadOnlyCacheError(
                        f"{name} differs from the values stored in the complete cache {self.path}, "
                        "which cannot be changed; write a new cache under another path"
                    )
            return

        self._require_writable()
        for name, array in values.items():
            self._arrays.write(name, ..., array)
            self._static_values.pop(name, None)
        for name in values:
            self._arrays.update_array_attributes(name, {WRITTEN_ATTRIBUTE: True})

    # ----- write side -----

    def write_samples(self, text_index: Any, video_index: Any) -> None:
        """Store, for each training sample, its row in the texts and in the videos arrays."""
        shape = (self.layout.num_samples,)
        text_index = self._as_array("text_index", text_index, shape, "iu", "int32", ("text", self.layout.num_texts))
        video_index = self._as_array(
            "video_index", video_index, shape, "iu", "int32", ("video", self.layout.num_videos)
        )
        self._write_static({"samples/text_index": text_index, "samples/video_index": video_index})

    def write_texts(self, ids: Sequence[str], tokens: Any, mask: Any) -> None:
        """Store the text ids with their token ids and token masks."""
        shape = (self.layout.num_texts, self.layout.max_words)
        ids_array = self._check_ids("text ids", ids, self.layout.num_texts)
        tokens = self._as_array("tokens", tokens, shape, "iu", "int32")
        mask = self._as_array("mask", mask, shape, "biu", "bool")
        self._write_static({"texts/ids": ids_array, "texts/tokens": tokens, "texts/mask": mask})

    def write_videos(self, ids: Sequence[str], frame_mask: Any) -> None:
        """Store the video ids and which frame positions hold sampled frames."""
        ids_array = self._check_ids("video ids", ids, self.layout.num_videos)
        frame_mask = self._as_array(
            "frame_mask", frame_mask, (self.layout.num_videos, self.layout.max_frames), "biu", "bool"
        )
        self._write_static({"videos/ids": ids_array, "videos/frame_mask": frame_mask})

    def write_schedule(self, schedule: Any) -> None:
        """Store the training order: the sample indices of each global batch."""
        shape = (self.layout.num_steps, self.layout.batch_size)
        schedule = self._as_array("schedule", schedule, shape, "iu", "int64", ("sample", self.layout.num_samples))
        self._write_static({"schedule": schedule})

    def write_video_frames(self, video_index: int, frames: Any) -> None:
        """Store one video's frames [frames, height, width, 3] uint8, then mark the video done.

        Positions where the video's frame_mask is false must be zero. This is checked
        here when `write_videos` came first, and by `verify_store` in any case.
        """
        self._require_writable()
        if not self.layout.store_frames:
            raise CacheError(f"{self.path} was created without frames (CacheLayout.store_frames is false)")
        video_index = self._check_position("video index", video_index, self.layout.num_videos)

        size = self.layout.image_size
        shape = (self.layout.max_frames, size, size, 3)
        frames = np.asarray(frames)
        if frames.shape != shape or frames.dtype != np.uint8:
            raise ValueError(f"frames have shape {frames.shape} and dtype {frames.dtype}, expected {shape} uint8")

        if self._arrays.info("videos/frame_mask")["attributes"].get(WRITTEN_ATTRIBUTE, False):
            frame_mask = self.frame_mask[video_index]
            if frames[~frame_mask].any():
                raise ValueError(
                    f"frames of video {video_index} are not zero at padded positions "
                    f"{np.flatnonzero(~frame_mask).tolist()}, where frame_mask is false"
                )

        self._arrays.write("videos/frames", video_index, frames)
        # The done flag goes last: a process killed before this line leaves the video pending.
        self._arrays.write("videos/done", video_index, True)

    def _as_targets(self, name: str, teacher: str, step: int, values: Any, shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(values)
        if array.shape != shape or array.dtype.kind != "f":
            raise ValueError(
                f"{name} of teacher {teacher!r} at step {step} have shape {array.shape} and dtype {array.dtype}, "
                f"expected floats of shape {shape}"
            )
        with np.errstate(over="ignore"):  # overflow to infinity is reported below
            stored = array.astype(self.layout.target_dtype)
        not_finite = int(np.count_nonzero(~np.isfinite(stored)))
        if not_finite:
            raise ValueError(
                f"{name} of teacher {teacher!r} at step {step} contain {not_finite} NaN or infinite values "
                f"as {self.layout.target_dtype}; check the teacher's checkpoint and inputs"
            )
        return stored

    def write_step(self, teacher: str, step: int, logits: Any, frame_targets: Any) -> None:
        """Store one teacher's targets for one step, then mark the step done.

        `logits` [batch, batch] has text rows and video columns. Row i of
        `frame_targets` [batch, frames] is the frame distribution of the positive pair
        (text i, video i), so each row sums to 1. Both are stored in the layout's
        target dtype.
        """
        self._require_writable()
        self._check_teacher(teacher)
        step = self._check_position("step", step, self.layout.num_steps)

        batch, frames = self.layout.batch_size, self.layout.max_frames
        logits = self._as_targets("logits", teacher, step, logits, (batch, batch))
        frame_targets = self._as_targets("frame targets", teacher, step, frame_targets, (batch, frames))

        row_sums = frame_targets.astype(np.float64).sum(axis=1)  # [batch]
        bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > frame_sum_tolerance(frames))
        if len(bad_rows) or (frame_targets < 0).any():
            raise ValueError(
                f"frame targets of teacher {teacher!r} at step {step} are not distributions: rows must be "
                f"non-negative and sum to 1 (row sums {row_sums[bad_rows[:MAX_LISTED_INDICES]].tolist()})"
            )

        self._arrays.write_together([
            (teacher_array_name(teacher, "logits"), step, logits),
            (teacher_array_name(teacher, "frame_targets"), step, frame_targets),
        ])
        # The done flag goes last: a process killed before this line leaves the step pending.
        # NOTE: chunks are not fsynced, so this order holds for a killed process but not across
        # a power failure; verify_store reports steps damaged that way.
        self._arrays.write(teacher_array_name(teacher, "done"), step, True)

    def write_teacher_config(self, teacher: str, config: Mapping[str, Any]) -> None:
        """Record a teacher's model config in the manifest; call it from one process only."""
        self._require_writable()
        self._check_teacher(teacher)
        manifest = copy.deepcopy(self._manifest)
        manifest["teachers"][teacher]["config"] = dict(config)
        self._arrays.update_root_attributes({MANIFEST_ATTRIBUTE: manifest})
        self._manifest = manifest

    def pending_steps(self, teacher: str, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Return the steps of a teacher not marked done, ascending.

        With `world_size` > 1, only steps with `step % world_size == rank` are returned,
        a split that stays the same while other processes mark steps done.
        """
        self._check_teacher(teacher)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        if self._manifest["state"] == STATE_COMPLETE:
            return np.zeros(0, dtype=np.int64)

        done = self._arrays.read(teacher_array_name(teacher, "done"))
        steps = np.flatnonzero(~done).astype(np.int64)
        return steps[steps % world_size == rank]

    def pending_videos(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Return the videos whose frames are not stored yet, split across ranks like `pending_steps`."""
        if not self.layout.store_frames:
            return np.zeros(0, dtype=np.int64)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        if self._manifest["state"] == STATE_COMPLETE:
            return np.zeros(0, dtype=np.int64)

        done = self._arrays.read("videos/done")
        videos = np.flatnonzero(~done).astype(np.int64)
        return videos[videos % world_size == rank]

    # ----- read side -----

    def _static(self, name: str) -> Any:
        if name not in self._static_values:
            if self._manifest["state"] != STATE_COMPLETE:
                if not self._arrays.info(name)["attributes"].get(WRITTEN_ATTRIBUTE, False):
                    raise IncompleteCacheError(f"array {name} of {self.path} is not written yet. {PRECOMPUTE_HINT}")
            values = self._arrays.read(name)
            if values.dtype == object:
                values = values.tolist()
            self._static_values[name] = values
        return self._static_values[name]

    @property
    def schedule(self) -> np.ndarray:
        """Sample indices of each global batch, [steps, batch] int64."""
        return self._static("schedule")

    @property
    def text_index(self) -> np.ndarray:
        """Row of the texts arrays for each sample, [samples] int32."""
        return self._static("samples/text_index")

    @property
    def video_index(self) -> np.ndarray:
        """Row of the videos arrays for each sample, [samples] int32."""
        return self._static("samples/video_index")

    @property
    def text_ids(self) -> list[str]:
        """Text id of each row of the texts arrays."""
        return self._static("texts/ids")

    @property
    def tokens(self) -> np.ndarray:
        """Token ids, [texts, max_words] int32."""
        return self._static("texts/tokens")

    @property
    def mask(self) -> np.ndarray:
        """Token masks, [texts, max_words] bool."""
        return self._static("texts/mask")

    @property
    def video_ids(self) -> list[str]:
        """Video id of each row of the videos arrays."""
        return self._static("videos/ids")

    @property
    def frame_mask(self) -> np.ndarray:
        """Sampled frame positions, [videos, max_frames] bool."""
        return self._static("videos/frame_mask")

    @property
    def teacher_names(self) -> tuple[str, ...]:
        """Names of the teachers, in layout order."""
        return self.layout.teacher_names

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as read when the store was opened or last changed."""
        return copy.deepcopy(self._manifest)

    @property
    def fingerprint(self) -> Fingerprint:
        """The fingerprint stored in the manifest."""
        return Fingerprint.from_dict(self._manifest["fingerprint"])

    def read_step(self, step: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Return each teacher's (logits [batch, batch], frame targets [batch, frames]) for a step, as float32.

        In an unfinished store, a step that a teacher has not written raises IncompleteCacheError.
        """
        step = self._check_position("step", step, self.layout.num_steps)
        teachers = self.layout.teacher_names
        if self._manifest["state"] != STATE_COMPLETE:
            done = self._arrays.read_together([(teacher_array_name(teacher, "done"), step) for teacher in teachers])
            for teacher, teacher_done in zip(teachers, done):
                if not teacher_done:
                    raise IncompleteCacheError(
                        f"step {step} of teacher {teacher!r} is not written yet in {self.path}. {PRECOMPUTE_HINT}"
                    )

        requests = []
        for teacher in teachers:
            requests += [(teacher_array_name(teacher, "logits"), step), (teacher_array_name(teacher, "frame_targets"), step)]
        values = self._arrays.read_together(requests)

        targets = {}
        for position, teacher in enumerate(teachers):
            logits, frame_targets = values[2 * position], values[2 * position + 1]
            targets[teacher] = (logits.astype(np.float32), frame_targets.astype(np.float32))
        return targets

    def read_video_frames(self, video_index: int) -> np.ndarray:
        """Return one video's stored frames, [frames, height, width, 3] uint8."""
        if not self.layout.store_frames:
            raise CacheError(f"{self.path} stores no frames (it was created with store_frames false); decode the videos")
        video_index = self._check_position("video index", video_index, self.layout.num_videos)
        if self._manifest["state"] != STATE_COMPLETE and not self._arrays.read("videos/done", video_index):
            raise IncompleteCacheError(f"frames of video {video_index} are not written yet in {self.path}. {PRECOMPUTE_HINT}")
        return self._arrays.read("videos/frames", video_index)

    # ----- completeness -----

    def _refresh_manifest(self) -> None:
        self._manifest = _read_manifest(self._arrays)

    def is_complete(self) -> bool:
        """Return whether the store is marked complete, which `finalize` does once every part is written."""
        self._refresh_manifest()
        return self._manifest["state"] == STATE_COMPLETE

    def missing_parts(self) -> list[str]:
        """Describe each part not written yet: static arrays, videos' frames, teachers' steps."""
        if self._manifest["state"] == STATE_COMPLETE:
            return []

        missing = []
        for name, spec in self._specs.items():
            if spec.role == ROLE_STATIC and not self._arrays.info(name)["attributes"].get(WRITTEN_ATTRIBUTE, False):
                missing.append(f"array {name} is not written")

        videos = self.pending_videos()
        if len(videos):
            missing.append(
                f"frames of {len(videos)} of {self.layout.num_videos} videos are missing "
                f"(first: {_format_indices(videos)})"
            )

        for teacher in self.layout.teacher_names:
            steps = self.pending_steps(teacher)
            if len(steps):
                missing.append(
                    f"teacher {teacher!r} has {len(steps)} of {self.layout.num_steps} steps missing "
                    f"(first: {_format_indices(steps)})"
                )
        return missing

    def frames_complete(self) -> bool:
        """Return whether every video's frames are stored; true for a store without frames."""
        return len(self.pending_videos()) == 0

    def require_complete(self) -> None:
        """Raise IncompleteCacheError, naming what is missing, unless the store is complete."""
        if self.is_complete():
            return

        missing = self.missing_parts()
        if missing:
            raise IncompleteCacheError(
                f"teacher cache {self.path} is incomplete: " + "; ".join(missing) + f". {PRECOMPUTE_HINT}"
            )
        raise IncompleteCacheError(
            f"teacher cache {self.path} has every part written but is not marked complete, because precompute "
            "stopped before its last step. Rerun `teachclip-pipeline precompute` with the same config: "
            "it finds nothing to compute and marks the cache complete."
        )

    def finalize(self) -> None:
        """Mark the store complete; an HDF5 store is copied from staging into its `.h5` file.

        Raises IncompleteCacheError naming what is missing, and does nothing on a
        complete store. With several writing processes, call it on one process after
        all of them have finished.
        """
        if self._manifest["state"] == STATE_COMPLETE:
            return
        self._require_writable()
        missing = self.missing_parts()
        if missing:
            raise IncompleteCacheError(f"cannot finalize teacher cache {self.path}: " + "; ".join(missing))
        self._mark_complete()

    def mark_complete_if_done(self) -> bool:
        """Run `finalize` when nothing is missing and return whether the store is now complete."""
        if self._manifest["state"] == STATE_COMPLETE:
            return True
        self._require_writable()
        missing = self.missing_parts()
        if missing:
            logger.info("teacher cache %s is not complete yet: %s", self.path, "; ".join(missing))
            return False
        self._mark_complete()
        return True

    def _mark_complete(self) -> None:
        manifest = dict(self._manifest)
        manifest["state"] = STATE_COMPLETE
        manifest["completed_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

        if self.backend == "zarr":
            removed = self._arrays.remove_temporary_files()
            if removed:
                logger.info("removed %d temporary chunk files left by killed writers from %s", removed, self.path)
            self._arrays.update_root_attributes({MANIFEST_ATTRIBUTE: manifest})
            self._arrays.close()
            self._arrays = ZarrArrays.open(self.path, writable=False)
        else:
            staging = self._arrays.location
            write_hdf5(self._arrays, self._specs, {MANIFEST_ATTRIBUTE: manifest}, local_path(self.path))
            self._arrays.close()
            shutil.rmtree(staging)
            self._arrays = Hdf5Arrays.open(str(local_path(self.path)))

        self._manifest = manifest
        logger.info("teacher cache %s is complete", self.path)

    # ----- lifetime -----

    def close(self) -> None:
        """Release the store; the handle cannot be used afterwards."""
        self._arrays.close()

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TeacherCache({self.path!r}, backend={self.backend!r}, state={self._manifest['state']!r}, "
            f"mode={'r+' if self.writable else 'r'!r})"
        )
