"""The teacher-cache schema: store sizes, the arrays they imply, and the manifest.

Both backends build their arrays from `array_specs`, so names, shapes, dtypes,
chunks and attributes are the same in zarr and HDF5 stores.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cache.errors import CacheFormatError
from cache.fingerprint import Fingerprint, canonical_json

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Root attribute that stores the manifest. Its presence marks a store as a teacher cache.
MANIFEST_ATTRIBUTE = "teachclip_cache"

TARGET_DTYPES = ("float16", "float32")

# Manifest states. A store is "creating" until all arrays exist, "writing" until
# every part is written and `finalize` ran, then "complete".
STATE_CREATING = "creating"
STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

# Static arrays are split into chunks of about this many bytes: large enough that
# reading a whole array takes few requests, small enough to decompress quickly.
STATIC_CHUNK_BYTES = 4 << 20

# Bytes assumed per entry of a variable-length string array when sizing its chunks.
STRING_ENTRY_BYTES = 32

# Teacher names become group names in the store, so they are restricted to these characters.
TEACHER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")

# Array roles, which decide how an array is chunked, written and checked.
ROLE_STATIC = "static"  # written once, by `write_samples`, `write_texts`, `write_videos`, `write_schedule`
ROLE_STEP = "step"  # one chunk per schedule step
ROLE_STEP_DONE = "step_done"  # one flag per step, one chunk per flag
ROLE_VIDEO = "video"  # one chunk per video
ROLE_VIDEO_DONE = "video_done"  # one flag per video, one chunk per flag

# Attribute that marks a static array as written.
WRITTEN_ATTRIBUTE = "written"

# Float16 machine epsilon, the spacing of float16 values just above 1.
FLOAT16_EPSILON = 2.0**-10


def frame_sum_tolerance(max_frames: int) -> float:
    """Return how far a row of frame targets may sum from 1.

    A row is a softmax that the teacher may have computed in float16 (the reference
    runs teachers in float16). Each of the `max_frames` entries and each partial sum is
    rounded with relative error up to half of FLOAT16_EPSILON, so the row's sum can
    drift by up to about `max_frames * FLOAT16_EPSILON`.
    """
    return max_frames * FLOAT16_EPSILON


@dataclass(frozen=True)
class CacheLayout:
    """Sizes that fix every array of a store."""

    num_samples: int
    num_texts: int
    max_words: int
    num_videos: int
    max_frames: int
    num_steps: int
    batch_size: int
    teacher_names: tuple[str, ...]
    target_dtype: str = "float16"
    store_frames: bool = False
    image_size: int = 224

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher_names", tuple(self.teacher_names))

        for size_field in ("num_samples", "num_texts", "max_words", "num_videos", "max_frames",
                           "num_steps", "batch_size", "image_size"):
            value = getattr(self, size_field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CacheLayout.{size_field} must be a positive integer, got {value!r}")

        if not self.teacher_names:
            raise ValueError("CacheLayout.teacher_names is empty; a cache needs at least one teacher")
        if len(set(self.teacher_names)) != len(self.teacher_names):
            raise ValueError(f"CacheLayout.teacher_names has duplicates: {list(self.teacher_names)}")
        for name in self.teacher_names:
            if not isinstance(name, str) or not TEACHER_NAME_PATTERN.match(name):
                raise ValueError(
                    f"teacher name {name!r} is invalid: use letters, digits, '_', '.' and '-' only"
                )

        if self.target_dtype not in TARGET_DTYPES:
            raise ValueError(f"CacheLayout.target_dtype must be one of {TARGET_DTYPES}, got {self.target_dtype!r}")
        if self.batch_size > self.num_samples:
            raise ValueError(
                f"CacheLayout.batch_size {self.batch_size} is larger than num_samples {self.num_samples}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the layout as JSON-ready values."""
        values = asdict(self)
        values["teacher_names"] = list(self.teacher_names)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CacheLayout:
        """Build a layout from `to_dict` output, rejecting unknown or missing keys."""
        known = {layout_field.name for layout_field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CacheFormatError(f"cache layout has unknown keys {unknown}; the store needs a newer version of this package")
        return cls(**values)


@dataclass(frozen=True)
class ArraySpec:
    """Name, shape, dtype, chunks, role and attributes of one array of a store.

    `dtype` is a numpy dtype name, or "string" for variable-length UTF-8 text.
    Attribute values are strings, numbers or booleans, which both backends store natively.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    role: str
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the entry that the manifest stores for this array."""
        return {"shape": list(self.shape), "dtype": self.dtype, "chunks": list(self.chunks), "role": self.role}


def teacher_array_name(teacher: str, part: str) -> str:
    """Return the store path of a teacher's array: `logits`, `frame_targets` or `done`."""
    return f"teachers/{teacher}/{part}"


def _rows_per_chunk(num_rows: int, row_bytes: int) -> int:
    return max(1, min(num_rows, STATIC_CHUNK_BYTES // max(1, row_bytes)))


def _static_spec(name: str, shape: tuple[int, ...], dtype: str, entry_bytes: int, **attributes: Any) -> ArraySpec:
    row_entries = 1
    for size in shape[1:]:
        row_entries *= size
    rows = _rows_per_chunk(shape[0], row_entries * entry_bytes)
    return ArraySpec(name, shape, dtype, (rows, *shape[1:]), ROLE_STATIC, attributes)


def array_specs(layout: CacheLayout) -> dict[str, ArraySpec]:
    """Return every array of a store with this layout, keyed by name, in creation order."""
    specs = [
        _static_spec("samples/text_index", (layout.num_samples,), "int32", 4,
                     description="row of texts/ids for each training sample"),
        _static_spec("samples/video_index", (layout.num_samples,), "int32", 4,
                     description="row of videos/ids for each training sample"),
        _static_spec("texts/ids", (layout.num_texts,), "string", STRING_ENTRY_BYTES,
                     description="text id of each tokenised caption"),
        _static_spec("texts/tokens", (layout.num_texts, layout.max_words), "int32", 4,
                     description="CLIP BPE token ids: start token, words, end token, zero padding"),
        _static_spec("texts/mask", (layout.num_texts, layout.max_words), "bool", 1,
                     description="true at token positions, false at padding"),
        _static_spec("videos/ids", (layout.num_videos,), "string", STRING_ENTRY_BYTES,
                     description="video id of each row of the videos arrays"),
        _static_spec("videos/frame_mask", (layout.num_videos, layout.max_frames), "bool", 1,
                     description="true at sampled frames, false at zero padding"),
        _static_spec("schedule", (layout.num_steps, layout.batch_size), "int64", 8,
                     description="sample indices of each global batch, in training order"),
    ]

    if layout.store_frames:
        frame_shape = (layout.max_frames, layout.image_size, layout.image_size, 3)
        specs += [
            ArraySpec("videos/frames", (layout.num_videos, *frame_shape), "uint8", (1, *frame_shape), ROLE_VIDEO,
                      {"description": "RGB frames, [video, frame, height, width, channel], "
                                      "zero where frame_mask is false; CLIP normalisation not applied"}),
            ArraySpec("videos/done", (layout.num_videos,), "bool", (1,), ROLE_VIDEO_DONE,
                      {"description": "true once the video's frames are written"}),
        ]

    batch = layout.batch_size
    for teacher in layout.teacher_names:
        specs += [
            ArraySpec(teacher_array_name(teacher, "logits"), (layout.num_steps, batch, batch), layout.target_dtype,
                      (1, batch, batch), ROLE_STEP,
                      {"description": "teacher similarity logits of each batch, scaled by exp(logit_scale)",
                       "rows": "texts of the batch, in schedule order",
                       "columns": "videos of the batch, in schedule order"}),
            ArraySpec(teacher_array_name(teacher, "frame_targets"), (layout.num_steps, batch, layout.max_frames),
                      layout.target_dtype, (1, batch, layout.max_frames), ROLE_STEP,
                      {"description": "teacher frame-relevance distribution of each positive pair "
                                      "(text i with video i of the batch) over all frame positions; rows sum to 1"}),
            ArraySpec(teacher_array_name(teacher, "done"), (layout.num_steps,), "bool", (1,), ROLE_STEP_DONE,
                      {"description": "true once the step's logits and frame_targets are written"}),
        ]
    return {spec.name: spec for spec in specs}


def build_manifest(
    layout: CacheLayout,
    fingerprint: Fingerprint,
    teacher_info: Mapping[str, Mapping[str, Any]] | None,
    state: str,
) -> dict[str, Any]:
    """Build the manifest of a new store: schema version, layout, fingerprint, teachers and arrays."""
    teacher_info = dict(teacher_info or {})
    unknown = sorted(set(teacher_info) - set(layout.teacher_names))
    if unknown:
        raise ValueError(f"teacher_info names teachers {unknown} that are not in the layout {list(layout.teacher_names)}")

    teachers = {}
    for name in layout.teacher_names:
        info = dict(teacher_info.get(name, {}))
        entry = {"name": name, "checkpoint_sha256": info.pop("checkpoint_sha256", None), "config": info.pop("config", {})}
        entry.update(info)
        try:
            canonical_json(entry)
        except (TypeError, ValueError) as error:
            raise ValueError(f"teacher_info for {name!r} cannot be stored as JSON: {error}") from error
        teachers[name] = entry

    return {
        "schema_version": SCHEMA_VERSION,
        "state": state,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "completed_at": None,
        "layout": layout.to_dict(),
        "target_dtype": layout.target_dtype,
        "store_frames": layout.store_frames,
        "fingerprint": fingerprint.to_dict(),
        "teachers": teachers,
        "arrays": {name: spec.to_dict() for name, spec in array_specs(layout).items()},
    }


def validate_manifest(manifest: Any, location: str) -> None:
    """Raise CacheFormatError unless the manifest has a supported schema version and the required keys."""
    if not isinstance(manifest, Mapping):
        raise CacheFormatError(f"{location} has a damaged manifest (attribute {MANIFEST_ATTRIBUTE!r} is not a mapping)")

    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CacheFormatError(
            f"{location} uses cache schema version {version!r}, but this package reads version {SCHEMA_VERSION}; "
            "rerun precompute with this version to write a new cache"
        )

    missing = [key for key in ("state", "layout", "fingerprint", "teachers", "arrays") if key not in manifest]
    if missing:
        raise CacheFormatError(f"{location} has a manifest without the keys {missing}; the store is damaged")
