"""Check a teacher cache: completeness, shapes, dtypes, values, fingerprint and every chunk.

Faults are reported per array and step (or video), so a damaged store shows where
to look and which steps a rerun of precompute must rewrite.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.errors import CacheError
from cache.fingerprint import Fingerprint, compare
from cache.hdf5_backend import Hdf5Arrays
from cache.schema import (
    ROLE_STATIC,
    ROLE_STEP,
    STATE_COMPLETE,
    ArraySpec,
    array_specs,
    frame_sum_tolerance,
    teacher_array_name,
)
from cache.store import TeacherCache
from cache.zarr_backend import ZarrArrays

logger = logging.getLogger(__name__)

# Steps read at once: large blocks let zarr fetch chunks concurrently, and a block
# that fails to read is read again step by step to find the damaged chunk.
STEP_BLOCK = 256

# `VerifyReport.format` lists at most this many faults of one kind in one array.
MAX_LISTED_FAULTS = 10

# Index arrays checked against the size of the arrays they index: array -> layout field.
INDEX_TARGETS = {
    "samples/text_index": "num_texts",
    "samples/video_index": "num_videos",
    "schedule": "num_samples",
}


@dataclass(frozen=True)
class Fault:
    """One problem found in a store.

    `array` is an array name, or "store" and "manifest" for problems outside arrays.
    `position` is the step (for per-step arrays), the video (for frames) or the
    first row of a chunk (for other arrays), and None for whole-array problems.
    """

    array: str
    kind: str
    message: str
    position: int | None = None

    def describe(self) -> str:
        """Return one line naming the array, the position and the problem."""
        where = self.array if self.position is None else f"{self.array} [{self.position}]"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    """Faults found by `verify_store`, with notes and counts of what was checked."""

    path: str
    backend: str | None = None
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether no fault was found."""
        return not self.faults

    def add(self, array: str, kind: str, message: str, position: int | None = None) -> None:
        """Record a fault."""
        self.faults.append(Fault(array, kind, message, position))

    def format(self) -> str:
        """Return the report as text: a summary line, faults grouped by array and kind, notes, counts."""
        backend = f" ({self.backend})" if self.backend else ""
        if self.ok:
            lines = [f"teacher cache {self.path}{backend}: OK"]
        else:
            lines = [f"teacher cache {self.path}{backend}: {len(self.faults)} fault(s)"]

        grouped: dict[tuple[str, str], list[Fault]] = defaultdict(list)
        for fault in self.faults:
            grouped[(fault.array, fault.kind)].append(fault)
        for (array, kind), faults in grouped.items():
            for fault in faults[:MAX_LISTED_FAULTS]:
                lines.append(f"  {fault.describe()}")
            if len(faults) > MAX_LISTED_FAULTS:
                lines.append(f"  {array}: {kind}: {len(faults) - MAX_LISTED_FAULTS} more")

        lines += [f"  note: {note}" for note in self.notes]
        if self.checked:
            lines.append("  checked: " + ", ".join(f"{count} {what}" for what, count in self.checked.items()))
        return "\n".join(lines)


def _read_chunks_safely(
    storage: ZarrArrays | Hdf5Arrays, name: str, start: int, stop: int, step_rows: int, report: VerifyReport
) -> dict[int, np.ndarray]:
    """Read rows start..stop of an array, returning {first row of chunk: values} for every readable chunk.

    A chunk that fails to decode (truncated, overwritten, failed checksum) becomes a
    fault naming the array and the chunk's first row.
    """
    try:
        values = storage.read(name, slice(start, stop))
        return {row: values[row - start:row - start + step_rows] for row in range(start, stop, step_rows)}
    # Any decoding error of any codec means a damaged chunk, and verification must
    # go on to find the others, so every exception is caught and reported here.
    except Exception:  # noqa: BLE001
        pass

    readable = {}
    for row in range(start, stop, step_rows):
        try:
            readable[row] = storage.read(name, slice(row, min(row + step_rows, stop)))
        except Exception as error:  # noqa: BLE001
            logger.warning("chunk at row %d of %s cannot be read: %s", row, name, error)
            report.add(name, "unreadable chunk", f"{type(error).__name__}: {error}", row)
    return readable


def _check_fingerprint(cache: TeacherCache, expected: Fingerprint | None, report: VerifyReport) -> None:
    try:
        stored = cache.fingerprint
    except CacheError as error:
        report.add("manifest", "fingerprint", str(error))
        return

    if expected is None:
        return
    for difference in compare(expected, stored):
        report.add("manifest", "fingerprint", difference.describe())


def _check_array_metadata(
    cache: TeacherCache, specs: dict[str, ArraySpec], report: VerifyReport
) -> set[str]:
    """Compare each array's shape and dtype with the manifest and the layout; return the arrays that match."""
    storage = cache.storage
    manifest_arrays = cache.manifest["arrays"]
    usable = set()

    for name, spec in specs.items():
        recorded = manifest_arrays.get(name)
        if recorded is None or tuple(recorded["shape"]) != spec.shape or recorded["dtype"] != spec.dtype:
            report.add(name, "manifest", f"manifest entry {recorded} does not match the layout's "
                                         f"shape {list(spec.shape)} and dtype {spec.dtype}")
        if not storage.has(name):
            report.add(name, "missing array", "the array listed in the manifest does not exist")
            continue

        info = storage.info(name)
        if info["shape"] != spec.shape:
            report.add(name, "shape", f"shape {info['shape']} differs from the manifest's {spec.shape}")
            continue
        if info["dtype"] != spec.dtype:
            report.add(name, "dtype", f"dtype {info['dtype']} differs from the manifest's {spec.dtype}")
            continue
        if spec.role == ROLE_STEP and info["chunks"][0] != 1:
            report.add(name, "chunks", f"chunks {info['chunks']} hold several steps; expected one step per chunk")
        usable.add(name)
    return usable


def _check_completeness(cache: TeacherCache, report: VerifyReport) -> None:
    if cache.manifest["state"] == STATE_COMPLETE:
        return
    missing = cache.missing_parts()
    for part in missing:
        report.add("store", "incomplete", part)
    if not missing:
        report.add("store", "incomplete", "every part is written, but the store is not marked complete; "
                                          "rerun precompute with the same config to mark it")


def _read_done_flags(storage: ZarrArrays | Hdf5Arrays, name: str, size: int, report: VerifyReport) -> np.ndarray:
    """Read a done-flag array; a flag whose chunk cannot be read counts as not done."""
    done = np.zeros(size, dtype=bool)
    chunk_rows = storage.info(name)["chunks"][0]
    for block_start in range(0, size, STEP_BLOCK * chunk_rows):
        block_stop = min(block_start + STEP_BLOCK * chunk_rows, size)
        for row, values in _read_chunks_safely(storage, name, block_start, block_stop, chunk_rows, report).items():
            done[row:row + len(values)] = values
    return done


def _missing_chunks(storage: ZarrArrays | Hdf5Arrays, name: str, expected: np.ndarray, chunk_rows: int,
                    report: VerifyReport) -> set[int]:
    """Report the chunks (by first-axis chunk index) that should be stored but are not, and return their indices."""
    stored, _ = storage.stored_chunk_indices(name)
    missing = set(int(index) for index in expected) - stored
    for index in sorted(missing):
        report.add(name, "missing chunk", "the chunk was written, but it is not in the store", index * chunk_rows)
    return missing


def _note_temporary_files(storage: ZarrArrays | Hdf5Arrays, report: VerifyReport) -> None:
    for name in storage.array_names():
        leftovers = storage.stored_chunk_indices(name)[1]
        if leftovers:
            report.notes.append(f"{name}: {len(leftovers)} temporary chunk file(s) left by killed writers; "
                                "finalize removes them")


def _check_teacher(cache: TeacherCache, teacher: str, usable: set[str], report: VerifyReport) -> None:
    storage = cache.storage
    layout = cache.layout
    logits_name = teacher_array_name(teacher, "logits")
    targets_name = teacher_array_name(teacher, "frame_targets")
    done_name = teacher_array_name(teacher, "done")
    if not {logits_name, targets_name, done_name} <= usable:
        return

    done = _read_done_flags(storage, done_name, layout.num_steps, report)
    done_steps = np.flatnonzero(done)
    skipped = set()
    for name in (logits_name, targets_name):
        skipped |= _missing_chunks(storage, name, done_steps, 1, report)

    tolerance = frame_sum_tolerance(layout.max_frames)
    for block_start in range(0, layout.num_steps, STEP_BLOCK):
        block_stop = min(block_start + STEP_BLOCK, layout.num_steps)
        if not done[block_start:block_stop].any():
            continue
        logits = _read_chunks_safely(storage, logits_name, block_start, block_stop, 1, report)
        targets = _read_chunks_safely(storage, targets_name, block_start, block_stop, 1, report)

        for step in range(block_start, block_stop):
            if not done[step] or step in skipped:
                continue
            if step in logits:
                _check_finite(logits_name, step, logits[step], report)
            if step in targets and _check_finite(targets_name, step, targets[step], report):
                _check_distribution(targets_name, step, targets[step][0], tolerance, report)

    report.checked[f"steps of {teacher}"] = len(done_steps)


def _check_finite(name: str, step: int, values: np.ndarray, report: VerifyReport) -> bool:
    nan_count = int(np.isnan(values).sum())
    inf_count = int(np.isinf(values).sum())
    if nan_count:
        report.add(name, "NaN", f"{nan_count} NaN value(s)", step)
    if inf_count:
        report.add(name, "Inf", f"{inf_count} infinite value(s)", step)
    return not nan_count and not inf_count


def _check_distribution(name: str, step: int, frame_targets: np.ndarray, tolerance: float, report: VerifyReport) -> None:
    row_sums = frame_targets.astype(np.float64).sum(axis=1)  # [batch]
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > tolerance)
    if len(bad_rows):
        listed = ", ".join(f"row {row} sums to {row_sums[row]:.4f}" for row in bad_rows[:MAX_LISTED_FAULTS])
        report.add(name, "frame sum", f"{len(bad_rows)} row(s) do not sum to 1 within {tolerance:.4f}: {listed}", step)
    negative = int((frame_targets < 0).sum())
    if negative:
        report.add(name, "negative", f"{negative} negative value(s) in a distribution", step)


def _check_static(cache: TeacherCache, specs: dict[str, ArraySpec], usable: set[str], report: VerifyReport) -> dict:
    """Read every chunk of the static arrays and check index ranges; return the arrays read whole."""
    storage = cache.storage
    layout = cache.layout
    values: dict[str, np.ndarray] = {}

    for name, spec in specs.items():
        if spec.role != ROLE_STATIC or name not in usable:
            continue
        if cache.manifest["state"] != STATE_COMPLETE and not storage.info(name)["attributes"].get("written"):
            continue

        chunk_rows = storage.info(name)["chunks"][0]
        _missing_chunks(storage, name, np.arange(-(-spec.shape[0] // chunk_rows)), chunk_rows, report)
        chunks = _read_chunks_safely(storage, name, 0, spec.shape[0], chunk_rows, report)
        if len(chunks) * chunk_rows >= spec.shape[0]:
            values[name] = np.concatenate([chunks[row] for row in sorted(chunks)])

        count = getattr(layout, INDEX_TARGETS[name]) if name in INDEX_TARGETS else None
        if count is not None and name in values:
            bad = np.flatnonzero((values[name] < 0) | (values[name] >= count))
            if len(bad):
                report.add(name, "index range", f"{len(bad)} value(s) outside 0 to {count - 1}, "
                                                f"first at flat position {int(bad[0])}: {values[name].flat[bad[0]]}")
    report.checked["static arrays"] = len(values)
    return values


def _check_frames(cache: TeacherCache, static: dict[str, np.ndarray], usable: set[str], report: VerifyReport) -> None:
    frame_mask = static.get("videos/frame_mask")
    if frame_mask is None:
        return
    for video in np.flatnonzero(~frame_mask.any(axis=1)):
        report.add("videos/frame_mask", "no frames", "the video has no sampled frame", int(video))

    if not cache.layout.store_frames or not {"videos/frames", "videos/done"} <= usable:
        return
    storage = cache.storage
    done = _read_done_flags(storage, "videos/done", cache.layout.num_videos, report)
    done_videos = np.flatnonzero(done)
    skipped = _missing_chunks(storage, "videos/frames", done_videos, 1, report)

    for video in done_videos:
        if video in skipped:
            continue
        frames = _read_chunks_safely(storage, "videos/frames", int(video), int(video) + 1, 1, report)
        if int(video) not in frames:
            continue
        padded = ~frame_mask[video]
        if frames[int(video)][0][padded].any():
            report.add("videos/frames", "frame padding",
                       f"frames at padded positions {np.flatnonzero(padded).tolist()} are not zero", int(video))
    report.checked["videos with frames"] = len(done_videos)


def verify_store(path: str | Path, expected_fingerprint: Fingerprint | None = None) -> VerifyReport:
    """Check a store and return a report of every fault found; the store is only read."""
    report = VerifyReport(str(path))
    try:
        cache = TeacherCache.open(path, mode="r")
    except CacheError as error:
        report.add("store", "unreadable", str(error))
        return report

    with cache:
        report.backend = cache.backend
        specs = array_specs(cache.layout)
        _check_fingerprint(cache, expected_fingerprint, report)
        usable = _check_array_metadata(cache, specs, report)
        _check_completeness(cache, report)
        static = _check_static(cache, specs, usable, report)
        _check_frames(cache, static, usable, report)
        for teacher in cache.layout.teacher_names:
            _check_teacher(cache, teacher, usable, report)
        _note_temporary_files(cache.storage, report)

    logger.info("verified teacher cache %s: %d fault(s)", path, len(report.faults))
    return report
