"""Tests for the teacher cache on real zarr and HDF5 stores: round trips, resume, kills, checks.

Run as a script, this file is the writer that the kill and multi-process tests start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from cache import (
    CacheCreationInterruptedError,
    CacheFormatError,
    CacheLayout,
    CacheNotFoundError,
    Fingerprint,
    FingerprintMismatchError,
    IncompleteCacheError,
    ReadOnlyCacheError,
    TeacherCache,
)
from cache.inspect import describe_store, format_description
from cache.verify import verify_store

TEACHERS = ("xclip", "xpool")
BACKEND_SUFFIXES = {"zarr": ".zarr", "hdf5": ".h5"}

# The kill test's writer writes 2 x 60 steps, and is killed after the first 10.
KILL_TEST_STEPS = 60
STEPS_BEFORE_KILL = 10
MULTI_PROCESS_STEPS = 20
CHILD_TIMEOUT_S = 120


def small_layout(**changes) -> CacheLayout:
    values = dict(num_samples=12, num_texts=12, max_words=8, num_videos=6, max_frames=4, num_steps=9,
                  batch_size=4, teacher_names=TEACHERS, target_dtype="float16", store_frames=False, image_size=8)
    values.update(changes)
    return CacheLayout(**values)


def small_fingerprint(**changes) -> Fingerprint:
    fields = {"annotation_sha256": {"train.csv": "0f" * 32}, "batch_size": 4, "seed": 42, "epochs": 3,
              "teacher.xclip.checkpoint_sha256": "ab" * 32}
    fields.update(changes)
    return Fingerprint(fields)


def synthetic_inputs(layout: CacheLayout) -> dict:
    """Deterministic samples, texts, videos, schedule and frames for a layout."""
    rng = np.random.default_rng(1234)
    frame_mask = np.ones((layout.num_videos, layout.max_frames), dtype=bool)
    frame_mask[0, -1] = False  # one short video, padded at the end
    frames = rng.integers(0, 256, (layout.num_videos, layout.max_frames, layout.image_size, layout.image_size, 3),
                          dtype=np.uint8)
    frames[~frame_mask] = 0
    return {
        "text_index": np.arange(layout.num_samples) % layout.num_texts,
        "video_index": np.arange(layout.num_samples) % layout.num_videos,
        "text_ids": [f"video{i % layout.num_videos}#{i}" for i in range(layout.num_texts)],
        "tokens": rng.integers(0, 49408, (layout.num_texts, layout.max_words)),
        "mask": rng.random((layout.num_texts, layout.max_words)) < 0.7,
        "video_ids": [f"video{i}" for i in range(layout.num_videos)],
        "frame_mask": frame_mask,
        "schedule": rng.integers(0, layout.num_samples, (layout.num_steps, layout.batch_size)),
        "frames": frames,
    }


def synthetic_targets(layout: CacheLayout, teacher: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic float32 logits and softmax frame targets for one teacher and step."""
    rng = np.random.default_rng([TEACHERS.index(teacher), int(step)])
    logits = (rng.standard_normal((layout.batch_size, layout.batch_size)) * 20).astype(np.float32)
    scores = rng.standard_normal((layout.batch_size, layout.max_frames))
    frame_targets = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)  # [batch, frames]
    return logits, frame_targets.astype(np.float32)


def write_inputs(cache: TeacherCache, layout: CacheLayout) -> None:
    inputs = synthetic_inputs(layout)
    cache.write_samples(inputs["text_index"], inputs["video_index"])
    cache.write_texts(inputs["text_ids"], inputs["tokens"], inputs["mask"])
    cache.write_videos(inputs["video_ids"], inputs["frame_mask"])
    cache.write_schedule(inputs["schedule"])
    if layout.store_frames:
        for video in range(layout.num_videos):
            cache.write_video_frames(video, inputs["frames"][video])


def write_steps(cache: TeacherCache, layout: CacheLayout, steps=None, rank: int = 0, world_size: int = 1,
                announce: bool = False) -> None:
    for teacher in layout.teacher_names:
        pending = cache.pending_steps(teacher, rank, world_size) if steps is None else steps
        for step in pending:
            cache.write_step(teacher, int(step), *synthetic_targets(layout, teacher, step))
            if announce:
                print(f"wrote {teacher} {step}", flush=True)


def build_store(path: Path, layout: CacheLayout, backend: str = "zarr") -> TeacherCache:
    """Create, fill and finalize a store, returning it open for reading."""
    cache = TeacherCache.create(path, layout, small_fingerprint(), backend=backend,
                                teacher_info={"xclip": {"checkpoint_sha256": "ab" * 32, "config": {"width": 64}}})
    write_inputs(cache, layout)
    write_steps(cache, layout)
    cache.finalize()
    return cache


def read_all_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read every array of a finished store with zarr or h5py directly, keyed by name."""
    if h5py.is_hdf5(path):
        arrays = {}
        with h5py.File(path, "r") as file:
            def collect(name, node):
                if isinstance(node, h5py.Dataset):
                    is_string = h5py.check_string_dtype(node.dtype) is not None
                    arrays[name] = np.asarray(node.asstr()[...] if is_string else node[...])
            file.visititems(collect)
        return arrays

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(node[...]) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def assert_same_arrays(first: Path, second: Path) -> None:
    arrays = read_all_arrays(first)
    other = read_all_arrays(second)

    assert sorted(arrays) == sorted(other)
    for name in arrays:
        assert arrays[name].dtype == other[name].dtype, name
        if arrays[name].dtype.kind in "OTU":
            assert arrays[name].tolist() == other[name].tolist(), name
        else:
            assert arrays[name].tobytes() == other[name].tobytes(), name


def store_path(tmp_path: Path, backend: str, name: str = "cache") -> Path:
    return tmp_path / f"{name}{BACKEND_SUFFIXES[backend]}"


# ----- round trips -----


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_round_trip_every_array(tmp_path, backend):
    layout = small_layout(store_frames=True)
    inputs = synthetic_inputs(layout)
    build_store(store_path(tmp_path, backend), layout, backend).close()

    with TeacherCache.open(store_path(tmp_path, backend)) as cache:
        assert cache.backend == backend
        assert cache.is_complete()
        np.testing.assert_array_equal(cache.text_index, inputs["text_index"])
        np.testing.assert_array_equal(cache.video_index, inputs["video_index"])
        assert cache.text_ids == inputs["text_ids"]
        np.testing.assert_array_equal(cache.tokens, inputs["tokens"])
        np.testing.assert_array_equal(cache.mask, inputs["mask"])
        assert cache.video_ids == inputs["video_ids"]
        np.testing.assert_array_equal(cache.frame_mask, inputs["frame_mask"])
        np.testing.assert_array_equal(cache.schedule, inputs["schedule"])
        assert cache.teacher_names == TEACHERS
        assert cache.fingerprint == small_fingerprint()

        for video in range(layout.num_videos):
            np.testing.assert_array_equal(cache.read_video_frames(video), inputs["frames"][video])

        for step in range(layout.num_steps):
            targets = cache.read_step(step)
            assert sorted(targets) == sorted(TEACHERS)
            for teacher in TEACHERS:
                logits, frame_targets = synthetic_targets(layout, teacher, step)
                assert targets[teacher][0].dtype == np.float32
                np.testing.assert_array_equal(targets[teacher][0], logits.astype(np.float16).astype(np.float32))
                np.testing.assert_array_equal(targets[teacher][1],
                                              frame_targets.astype(np.float16).astype(np.float32))


def test_float32_targets_stored_exactly(tmp_path):
    layout = small_layout(target_dtype="float32")
    build_store(tmp_path / "cache.zarr", layout).close()

    with TeacherCache.open(tmp_path / "cache.zarr") as cache:
        logits, frame_targets = synthetic_targets(layout, "xpool", 3)
        np.testing.assert_array_equal(cache.read_step(3)["xpool"][0], logits)
        np.testing.assert_array_equal(cache.read_step(3)["xpool"][1], frame_targets)


def test_zarr_step_arrays_chunked_per_step(tmp_path):
    layout = small_layout()
    build_store(tmp_path / "cache.zarr", layout).close()

    group = zarr.open_group(str(tmp_path / "cache.zarr"), mode="r")
    assert group["teachers/xclip/logits"].chunks == (1, layout.batch_size, layout.batch_size)
    assert group["teachers/xclip/frame_targets"].chunks == (1, layout.batch_size, layout.max_frames)
    assert group["teachers/xclip/done"].chunks == (1,)
    codecs = [type(codec).__name__ for codec in group["teachers/xclip/logits"].compressors]
    assert codecs == ["ZstdCodec", "Crc32cCodec"]


def test_hdf5_step_arrays_chunked_per_step(tmp_path):
    layout = small_layout()
    build_store(tmp_path / "cache.h5", layout, "hdf5").close()

    with h5py.File(tmp_path / "cache.h5", "r") as file:
        logits = file["teachers/xclip/logits"]
        assert logits.chunks == (1, layout.batch_size, layout.batch_size)
        assert file["teachers/xclip/frame_targets"].chunks == (1, layout.batch_size, layout.max_frames)
        assert logits.compression == "gzip"
        assert logits.fletcher32


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_manifest_records_fingerprint_and_teachers(tmp_path, backend):
    path = store_path(tmp_path, backend)
    build_store(path, small_layout(), backend).close()

    if backend == "hdf5":
        with h5py.File(path, "r") as file:
            manifest = json.loads(file.attrs["teachclip_cache"])
            logits_attributes = dict(file["teachers/xclip/logits"].attrs)
    else:
        group = zarr.open_group(str(path), mode="r")
        manifest = group.attrs["teachclip_cache"]
        logits_attributes = dict(group["teachers/xclip/logits"].attrs)

    assert manifest["schema_version"] == 1
    assert manifest["state"] == "complete"
    assert manifest["fingerprint"]["digest"] == small_fingerprint().digest
    assert manifest["fingerprint"]["fields"]["seed"] == 42
    assert manifest["teachers"]["xclip"]["checkpoint_sha256"] == "ab" * 32
    assert manifest["teachers"]["xclip"]["config"] == {"width": 64}
    assert manifest["target_dtype"] == "float16"
    assert manifest["store_frames"] is False
    assert manifest["arrays"]["teachers/xpool/logits"]["shape"] == [9, 4, 4]
    assert "exp(logit_scale)" in logits_attributes["description"]
    assert logits_attributes["rows"].startswith("texts")


def test_hdf5_suffix_selects_hdf5(tmp_path):
    path = tmp_path / "cache.h5"
    cache = TeacherCache.create(path, small_layout(), small_fingerprint())
    assert cache.backend == "hdf5"
    assert (tmp_path / "cache.h5.staging.zarr").is_dir()

    write_inputs(cache, small_layout())
    write_steps(cache, small_layout())
    cache.finalize()
    cache.close()

    assert h5py.is_hdf5(path)
    assert not (tmp_path / "cache.h5.staging.zarr").exists()


def test_fsspec_memory_url_round_trip():
    layout = small_layout()
    url = "memory://teachclip-tests/cache.zarr"
    build_store(url, layout).close()

    with TeacherCache.open(url) as cache:
        logits, _ = synthetic_targets(layout, "xclip", 5)
        np.testing.assert_array_equal(cache.read_step(5)["xclip"][0], logits.astype(np.float16).astype(np.float32))


# ----- opening, resuming and refusing -----


def test_open_missing_path_not_found(tmp_path):
    with pytest.raises(CacheNotFoundError, match="cache.h5.staging.zarr"):
        TeacherCache.open(tmp_path / "cache.h5")


def test_open_plain_zarr_group_rejected(tmp_path):
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(3,), dtype="int32")

    with pytest.raises(CacheFormatError, match="not a teacher cache"):
        TeacherCache.open(tmp_path / "other.zarr")


def test_open_plain_directory_rejected(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "video0.mp4").write_bytes(b"not a store")

    with pytest.raises(CacheFormatError, match="not a zarr v3 store"):
        TeacherCache.open_or_create(tmp_path / "videos", small_layout(), small_fingerprint())
    assert (tmp_path / "videos" / "video0.mp4").exists()


def test_open_text_file_rejected(tmp_path):
    (tmp_path / "train.csv").write_text("video_id,sentence\n")

    with pytest.raises(CacheFormatError, match="not an HDF5 file"):
        TeacherCache.open(tmp_path / "train.csv")


def test_killed_first_write_is_recreated(tmp_path):
    (tmp_path / "cache.zarr").mkdir()
    (tmp_path / "cache.zarr" / "zarr.json.0123abcd.partial").write_bytes(b"{")

    with TeacherCache.open_or_create(tmp_path / "cache.zarr", small_layout(), small_fingerprint()) as cache:
        assert cache.pending_steps("xclip").tolist() == list(range(9))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_open_or_create_resumes_matching_store(tmp_path, backend):
    layout = small_layout()
    path = store_path(tmp_path, backend)
    cache = TeacherCache.create(path, layout, small_fingerprint(), backend=backend)
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=[0, 2, 5])
    cache.close()

    with TeacherCache.open_or_create(path, layout, small_fingerprint(), backend=backend) as cache:
        assert cache.writable
        assert cache.pending_steps("xclip").tolist() == [1, 3, 4, 6, 7, 8]
        assert cache.pending_steps("xpool").tolist() == [1, 3, 4, 6, 7, 8]


def test_open_or_create_rejects_other_fingerprint(tmp_path):
    TeacherCache.create(tmp_path / "cache.zarr", small_layout(), small_fingerprint()).close()

    with pytest.raises(FingerprintMismatchError) as raised:
        TeacherCache.open_or_create(tmp_path / "cache.zarr", small_layout(num_steps=10), small_fingerprint(seed=7))

    message = str(raised.value)
    assert "seed: expected 7, stored 42" in message
    assert "layout.num_steps: expected 10, stored 9" in message
    assert [difference.name for difference in raised.value.differences] == ["seed", "layout.num_steps"]


def test_open_or_create_returns_complete_read_only(tmp_path):
    layout = small_layout()
    build_store(tmp_path / "cache.zarr", layout).close()

    with TeacherCache.open_or_create(tmp_path / "cache.zarr", layout, small_fingerprint()) as cache:
        assert not cache.writable
        assert cache.pending_steps("xclip").tolist() == []
        write_inputs(cache, layout)  # the values it holds: accepted without writing

        with pytest.raises(ReadOnlyCacheError, match="schedule differs"):
            cache.write_schedule(synthetic_inputs(layout)["schedule"][::-1])
        with pytest.raises(ReadOnlyCacheError):
            cache.write_step("xclip", 0, *synthetic_targets(layout, "xclip", 0))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_complete_store_rejects_write_mode(tmp_path, backend):
    path = store_path(tmp_path, backend)
    build_store(path, small_layout(), backend).close()

    with pytest.raises(ReadOnlyCacheError):
        TeacherCache.open(path, mode="r+")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_require_complete_names_missing_steps(tmp_path, backend):
    layout = small_layout()
    path = store_path(tmp_path, backend)
    cache = TeacherCache.create(path, layout, small_fingerprint(), backend=backend)
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=range(6))
    cache.write_step("xpool", 7, *synthetic_targets(layout, "xpool", 7))
    cache.close()

    with TeacherCache.open(path) as cache:
        assert not cache.is_complete()
        with pytest.raises(IncompleteCacheError) as raised:
            cache.require_complete()

    message = str(raised.value)
    assert "teacher 'xclip' has 3 of 9 steps missing (first: 6, 7, 8)" in message
    assert "teacher 'xpool' has 2 of 9 steps missing (first: 6, 8)" in message
    assert "teachclip-pipeline precompute" in message


def test_require_complete_names_unwritten_arrays(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    write_steps(cache, layout)
    cache.close()

    with TeacherCache.open(tmp_path / "cache.zarr") as cache:
        with pytest.raises(IncompleteCacheError, match="array schedule is not written"):
            cache.require_complete()


def test_require_complete_unfinalized_store(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout)
    cache.close()

    with TeacherCache.open(tmp_path / "cache.zarr") as cache:
        with pytest.raises(IncompleteCacheError, match="not marked complete"):
            cache.require_complete()


def test_read_pending_step_raises(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=[0])

    assert set(cache.read_step(0)) == set(TEACHERS)
    with pytest.raises(IncompleteCacheError, match="step 1 of teacher 'xclip'"):
        cache.read_step(1)


def test_finalize_incomplete_store_raises(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.h5", layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=range(8))

    with pytest.raises(IncompleteCacheError, match=r"has 1 of 9 steps missing \(first: 8\)"):
        cache.finalize()
    assert not (tmp_path / "cache.h5").exists()


def test_teacher_config_recorded_in_manifest(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    cache.write_teacher_config("xpool", {"width": 512, "num_frames": 12})
    cache.close()

    with TeacherCache.open(tmp_path / "cache.zarr") as cache:
        assert cache.manifest["teachers"]["xpool"]["config"] == {"width": 512, "num_frames": 12}
        assert cache.manifest["teachers"]["xclip"]["config"] == {}


def test_frames_complete_after_every_video(tmp_path):
    layout = small_layout(store_frames=True)
    inputs = synthetic_inputs(layout)
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    for video in range(layout.num_videos - 1):
        cache.write_video_frames(video, inputs["frames"][video])

    assert not cache.frames_complete()
    assert cache.pending_videos().tolist() == [layout.num_videos - 1]

    cache.write_video_frames(layout.num_videos - 1, inputs["frames"][-1])
    assert cache.frames_complete()


def test_mark_complete_if_done(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.h5", layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=range(8))

    assert not cache.mark_complete_if_done()
    assert not (tmp_path / "cache.h5").exists()

    write_steps(cache, layout, steps=[8])
    assert cache.mark_complete_if_done()
    assert h5py.is_hdf5(tmp_path / "cache.h5")
    cache.close()


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_interrupted_create_is_recreated(tmp_path, backend):
    path = store_path(tmp_path, backend)
    TeacherCache.create(path, small_layout(), small_fingerprint(), backend=backend).close()
    # A create killed before its last write leaves the root saying "creating".
    location = str(path) + (".staging.zarr" if backend == "hdf5" else "")
    zarr.open_group(location, mode="r+").attrs["teachclip_cache"] = {"schema_version": 1, "state": "creating"}

    with pytest.raises(CacheCreationInterruptedError, match="not fully created"):
        TeacherCache.open(path)

    with TeacherCache.open_or_create(path, small_layout(), small_fingerprint(), backend=backend) as cache:
        assert cache.pending_steps("xclip").tolist() == list(range(9))
        assert cache.manifest["state"] == "writing"


def test_create_existing_store_raises(tmp_path):
    TeacherCache.create(tmp_path / "cache.zarr", small_layout(), small_fingerprint()).close()

    with pytest.raises(FileExistsError, match="open_or_create"):
        TeacherCache.create(tmp_path / "cache.zarr", small_layout(), small_fingerprint())


# ----- input checks on writes -----


def test_write_step_rejects_nan(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    logits, frame_targets = synthetic_targets(layout, "xclip", 0)
    logits[1, 2] = np.nan

    with pytest.raises(ValueError, match="1 NaN or infinite"):
        cache.write_step("xclip", 0, logits, frame_targets)
    assert cache.pending_steps("xclip").tolist() == list(range(9))


def test_write_step_rejects_float16_overflow(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    logits, frame_targets = synthetic_targets(layout, "xclip", 0)
    logits[0, 0] = 1e5  # above float16's largest finite value, 65504

    with pytest.raises(ValueError, match="as float16"):
        cache.write_step("xclip", 0, logits, frame_targets)


def test_write_step_rejects_unnormalised_targets(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    logits, frame_targets = synthetic_targets(layout, "xclip", 0)

    with pytest.raises(ValueError, match="not distributions"):
        cache.write_step("xclip", 0, logits, frame_targets * 1.5)


def test_write_step_rejects_wrong_shape(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    logits, frame_targets = synthetic_targets(layout, "xclip", 0)

    with pytest.raises(ValueError, match=r"expected floats of shape \(4, 4\)"):
        cache.write_step("xclip", 0, logits[:3], frame_targets)


def test_write_schedule_rejects_bad_index(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    schedule = synthetic_inputs(layout)["schedule"]
    schedule[2, 1] = layout.num_samples

    with pytest.raises(ValueError, match="entry 9 is 12, which is not a valid sample index"):
        cache.write_schedule(schedule)


def test_write_frames_rejects_nonzero_padding(tmp_path):
    layout = small_layout(store_frames=True)
    inputs = synthetic_inputs(layout)
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    cache.write_videos(inputs["video_ids"], inputs["frame_mask"])
    frames = inputs["frames"][0].copy()
    frames[-1] = 7

    with pytest.raises(ValueError, match=r"padded positions \[3\]"):
        cache.write_video_frames(0, frames)
    assert cache.pending_videos().tolist() == list(range(layout.num_videos))


def test_pending_steps_split_by_rank(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.zarr", layout, small_fingerprint())
    write_steps(cache, layout, steps=[1, 4])

    assert cache.pending_steps("xclip", rank=0, world_size=2).tolist() == [0, 2, 6, 8]
    assert cache.pending_steps("xclip", rank=1, world_size=2).tolist() == [3, 5, 7]


# ----- verify and inspect -----


def faults_of(report) -> list[tuple[str, str, int | None]]:
    return [(fault.array, fault.kind, fault.position) for fault in report.faults]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_verify_complete_store_ok(tmp_path, backend):
    path = store_path(tmp_path, backend)
    build_store(path, small_layout(store_frames=True), backend).close()

    report = verify_store(path, expected_fingerprint=small_fingerprint())

    assert report.ok, report.format()
    assert report.checked["steps of xclip"] == 9
    assert report.checked["videos with frames"] == 6
    assert report.format().splitlines()[0].endswith(": OK")


def test_verify_finds_truncated_chunk_file(tmp_path):
    path = tmp_path / "cache.zarr"
    build_store(path, small_layout()).close()
    chunk_file = path / "teachers/xclip/logits/c.4.0.0"
    chunk_file.write_bytes(chunk_file.read_bytes()[: chunk_file.stat().st_size // 2])

    report = verify_store(path)

    assert faults_of(report) == [("teachers/xclip/logits", "unreadable chunk", 4)]
    assert "teachers/xclip/logits [4]: unreadable chunk" in report.format()


def test_verify_finds_overwritten_chunk_bytes(tmp_path):
    path = tmp_path / "cache.zarr"
    build_store(path, small_layout()).close()
    chunk_file = path / "teachers/xpool/frame_targets/c.2.0.0"
    data = bytearray(chunk_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(255 - value for value in data[middle:middle + 4])
    chunk_file.write_bytes(bytes(data))

    report = verify_store(path)

    assert faults_of(report) == [("teachers/xpool/frame_targets", "unreadable chunk", 2)]


def test_verify_finds_overwritten_hdf5_chunk(tmp_path):
    path = tmp_path / "cache.h5"
    build_store(path, small_layout(), "hdf5").close()
    with h5py.File(path, "r") as file:
        chunk = file["teachers/xclip/logits"].id.get_chunk_info_by_coord((6, 0, 0))
    with open(path, "r+b") as file:
        file.seek(chunk.byte_offset + chunk.size // 2)
        file.write(b"\xff\x00\xff\x00")

    report = verify_store(path)

    assert faults_of(report) == [("teachers/xclip/logits", "unreadable chunk", 6)]


def test_verify_reports_truncated_hdf5_file(tmp_path):
    path = tmp_path / "cache.h5"
    build_store(path, small_layout(), "hdf5").close()
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)

    report = verify_store(path)

    assert not report.ok
    assert faults_of(report) == [("store", "unreadable", None)]
    assert "truncated or damaged" in report.faults[0].message


def test_verify_finds_missing_chunk_file(tmp_path):
    path = tmp_path / "cache.zarr"
    build_store(path, small_layout()).close()
    (path / "teachers/xpool/logits/c.8.0.0").unlink()

    report = verify_store(path)

    assert faults_of(report) == [("teachers/xpool/logits", "missing chunk", 8)]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_verify_finds_planted_nan(tmp_path, backend):
    path = store_path(tmp_path, backend)
    build_store(path, small_layout(), backend).close()
    if backend == "hdf5":
        with h5py.File(path, "r+") as file:
            file["teachers/xpool/logits"][3, 1, 2] = np.nan
            file["teachers/xpool/logits"][5, 0, 0] = np.inf
    else:
        logits = zarr.open_group(str(path), mode="r+")["teachers/xpool/logits"]
        logits[3, 1, 2] = np.nan
        logits[5, 0, 0] = np.inf

    report = verify_store(path)

    assert faults_of(report) == [("teachers/xpool/logits", "NaN", 3), ("teachers/xpool/logits", "Inf", 5)]


def test_verify_finds_unnormalised_frame_targets(tmp_path):
    layout = small_layout()
    path = tmp_path / "cache.zarr"
    build_store(path, layout).close()
    frame_targets = zarr.open_group(str(path), mode="r+")["teachers/xclip/frame_targets"]
    bad = synthetic_targets(layout, "xclip", 7)[1]
    bad[2] *= 0.9  # row 2 sums to 0.9, beyond the float16 tolerance of 4 x 2**-10
    frame_targets[7] = bad.astype(np.float16)

    report = verify_store(path)

    row_sum = bad.astype(np.float16).astype(np.float64)[2].sum()
    assert faults_of(report) == [("teachers/xclip/frame_targets", "frame sum", 7)]
    assert f"row 2 sums to {row_sum:.4f}" in report.faults[0].message


def test_verify_finds_nonzero_frame_padding(tmp_path):
    path = tmp_path / "cache.zarr"
    build_store(path, small_layout(store_frames=True)).close()
    zarr.open_group(str(path), mode="r+")["videos/frames"][0, 3, 0, 0, 0] = 200

    report = verify_store(path)

    assert faults_of(report) == [("videos/frames", "frame padding", 0)]


def test_verify_finds_schedule_out_of_range(tmp_path):
    layout = small_layout()
    path = tmp_path / "cache.zarr"
    build_store(path, layout).close()
    zarr.open_group(str(path), mode="r+")["schedule"][4, 2] = layout.num_samples

    report = verify_store(path)

    assert faults_of(report) == [("schedule", "index range", None)]


def test_verify_reports_incomplete_store(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.h5", layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=range(7))
    cache.close()

    report = verify_store(tmp_path / "cache.h5")

    assert faults_of(report) == [("store", "incomplete", None), ("store", "incomplete", None)]
    assert "teacher 'xclip' has 2 of 9 steps missing (first: 7, 8)" in report.faults[0].message
    assert report.checked["steps of xclip"] == 7


def test_verify_reports_fingerprint_fields(tmp_path):
    path = tmp_path / "cache.zarr"
    build_store(path, small_layout()).close()

    report = verify_store(path, expected_fingerprint=small_fingerprint(seed=1, epochs=4))

    assert faults_of(report) == [("manifest", "fingerprint", None)] * 2
    assert report.faults[0].message == "epochs: expected 4, stored 3"
    assert report.faults[1].message == "seed: expected 1, stored 42"


def test_verify_notes_leftover_temporary_file(tmp_path):
    layout = small_layout()
    path = tmp_path / "cache.zarr"
    build_store(path, layout).close()
    (path / "teachers/xclip/done/c.3.0123abcd.partial").write_bytes(b"\x01")

    report = verify_store(path)

    assert report.ok
    assert report.notes == ["teachers/xclip/done: 1 temporary chunk file(s) left by killed writers; "
                            "finalize removes them"]


def test_finalize_removes_temporary_files(tmp_path):
    layout = small_layout()
    path = tmp_path / "cache.zarr"
    cache = TeacherCache.create(path, layout, small_fingerprint())
    write_inputs(cache, layout)
    write_steps(cache, layout)
    leftover = path / "teachers/xpool/logits/c.4.0.0123abcd.partial"
    leftover.write_bytes(b"\x00" * 16)

    cache.finalize()

    assert not leftover.exists()
    assert verify_store(path).notes == []


def test_describe_unfinished_hdf5_store(tmp_path):
    layout = small_layout()
    cache = TeacherCache.create(tmp_path / "cache.h5", layout, small_fingerprint(),
                                teacher_info={"xclip": {"checkpoint_sha256": "cd" * 32}})
    write_inputs(cache, layout)
    write_steps(cache, layout, steps=range(4))
    cache.write_step("xpool", 4, *synthetic_targets(layout, "xpool", 4))
    cache.close()

    description = describe_store(tmp_path / "cache.h5")

    assert description["backend"] == "hdf5"
    assert description["location"] == f"{tmp_path / 'cache.h5'}.staging.zarr"
    assert description["state"] == "writing"
    assert description["schema_version"] == 1
    assert description["size_on_disk_bytes"] > 0
    assert description["teachers"]["xclip"]["steps_done"] == 4
    assert description["teachers"]["xpool"]["steps_done"] == 5
    assert description["teachers"]["xclip"]["checkpoint_sha256"] == "cd" * 32
    assert description["fingerprint"]["fields"]["seed"] == 42
    logits = next(array for array in description["arrays"] if array["name"] == "teachers/xclip/logits")
    assert logits["shape"] == [9, 4, 4]
    assert logits["chunks"] == [1, 4, 4]
    assert logits["codecs"] == ["zstd", "crc32c"]


def test_format_description_lists_teachers(tmp_path):
    path = tmp_path / "cache.h5"
    build_store(path, small_layout(), "hdf5").close()

    text = format_description(describe_store(path))

    assert "state          complete" in text
    assert "xclip: 9 of 9 steps done, checkpoint sha256 " + "ab" * 32 in text
    assert "  seed = 42" in text
    assert "teachers/xpool/logits: float16 [9, 4, 4], chunks [1, 4, 4], shuffle+gzip+fletcher32" in text


# ----- killed writers and several writers -----


def start_writer(path: Path, backend: str, num_steps: int, rank: int = 0, world_size: int = 1,
                 finalize: bool = True) -> subprocess.Popen:
    """Start this file as a writer process that prints one line per written step."""
    command = [sys.executable, __file__, str(path), backend, str(num_steps), str(rank), str(world_size),
               "1" if finalize else "0"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def run_writer_to_end(path: Path, backend: str, num_steps: int) -> None:
    child = start_writer(path, backend, num_steps)
    child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0


def staging_or_store(path: Path, backend: str) -> str:
    return f"{path}.staging.zarr" if backend == "hdf5" else str(path)


def chunk_file_bytes(path: Path) -> dict[str, bytes]:
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted((path / "teachers").rglob("*"))
            if file.is_file()}


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, backend):
    layout = small_layout(num_steps=KILL_TEST_STEPS)
    killed = store_path(tmp_path, backend, "killed")

    child = start_writer(killed, backend, layout.num_steps)
    for _ in range(STEPS_BEFORE_KILL):
        assert child.stdout.readline().startswith("wrote"), "the writer stopped before the kill"
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL

    with TeacherCache.open(killed) as cache:
        assert not cache.is_complete()
        pending = {teacher: set(cache.pending_steps(teacher).tolist()) for teacher in TEACHERS}
    assert len(pending["xclip"]) <= layout.num_steps - STEPS_BEFORE_KILL
    assert pending["xpool"], "the writer finished before the kill"

    group = zarr.open_group(staging_or_store(killed, backend), mode="r")
    for teacher in TEACHERS:
        for step in sorted(set(range(layout.num_steps)) - pending[teacher]):
            logits, frame_targets = synthetic_targets(layout, teacher, step)
            np.testing.assert_array_equal(group[f"teachers/{teacher}/logits"][step], logits.astype(np.float16))
            np.testing.assert_array_equal(group[f"teachers/{teacher}/frame_targets"][step],
                                          frame_targets.astype(np.float16))

    run_writer_to_end(killed, backend, layout.num_steps)
    uninterrupted = store_path(tmp_path, backend, "uninterrupted")
    run_writer([str(uninterrupted), backend, str(layout.num_steps), "0", "1", "1"], announce=False)

    with TeacherCache.open(killed) as cache:
        assert cache.is_complete()
    assert_same_arrays(killed, uninterrupted)
    if backend == "zarr":
        assert chunk_file_bytes(killed) == chunk_file_bytes(uninterrupted)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_two_processes_match_single_process(tmp_path, backend):
    layout = small_layout(num_steps=MULTI_PROCESS_STEPS)
    shared = store_path(tmp_path, backend, "shared")
    cache = TeacherCache.create(shared, layout, small_fingerprint(), backend=backend)
    write_inputs(cache, layout)
    cache.close()

    children = [start_writer(shared, backend, layout.num_steps, rank, 2, finalize=False) for rank in (0, 1)]
    outputs = [child.communicate(timeout=CHILD_TIMEOUT_S)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]

    for rank, output in enumerate(outputs):
        steps = [int(line.split()[2]) for line in output.splitlines()]
        assert len(steps) == len(TEACHERS) * len(range(rank, layout.num_steps, 2))
        assert all(step % 2 == rank for step in steps)

    with TeacherCache.open(shared, mode="r+") as cache:
        cache.finalize()
    single = store_path(tmp_path, backend, "single")
    cache = TeacherCache.create(single, layout, small_fingerprint(), backend=backend)
    write_inputs(cache, layout)
    write_steps(cache, layout)
    cache.finalize()
    cache.close()

    assert_same_arrays(shared, single)


def run_writer(arguments: list[str], announce: bool = True) -> None:
    """Write the synthetic store: path, backend, steps, rank, world size, finalize ("1" or "0")."""
    path, backend, num_steps, rank, world_size, finalize = arguments
    layout = small_layout(num_steps=int(num_steps))
    cache = TeacherCache.open_or_create(path, layout, small_fingerprint(), backend=backend)
    if int(world_size) == 1:
        write_inputs(cache, layout)
    write_steps(cache, layout, rank=int(rank), world_size=int(world_size), announce=announce)
    if finalize == "1":
        cache.finalize()
    cache.close()


if __name__ == "__main__":
    run_writer(sys.argv[1:])
