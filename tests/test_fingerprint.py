"""Tests for cache fingerprints: digests, file hashes, field comparison and the mismatch message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cache.errors import CacheError
from cache.fingerprint import (
    MISSING,
    FieldDifference,
    Fingerprint,
    FingerprintMismatchError,
    compare,
    sha256_file,
    sha256_json,
)

DEMO_DATA_DIR = Path(__file__).resolve().parents[1] / "pipeline" / "demo_data"


def realistic_fields(**changes) -> dict:
    """Fields as precompute builds them: annotation hashes, video list, frames, tokenizer, schedule, teachers."""
    fields = {
        "annotation_sha256": {
            "MSRVTT_data.json": sha256_file(DEMO_DATA_DIR / "MSRVTT_data.json"),
            "MSRVTT_train.9k.csv": sha256_file(DEMO_DATA_DIR / "MSRVTT_train.9k.csv"),
        },
        "video_list_sha256": sha256_json([f"video{i}" for i in range(24)]),
        "frame_settings": {"feature_framerate": 1, "max_frames": 12, "slice_framepos": 2, "frame_order": 0},
        "tokenizer": {"vocab": "bpe_simple_vocab_16e6.txt.gz", "max_words": 32},
        "batch_size": 8,
        "seed": 42,
        "epochs": 5,
        "teacher.xclip.checkpoint_sha256": "ab" * 32,
        "teacher.xclip.config": {"width": 512, "layers": 12, "num_frames": 12},
    }
    fields.update(changes)
    return fields


def test_digest_is_sha256_of_sorted_json():
    fields = realistic_fields()
    expected = hashlib.sha256(
        json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()

    assert Fingerprint(fields).digest == expected


def test_digest_ignores_key_order():
    fields = realistic_fields()
    reversed_fields = dict(reversed(list(fields.items())))

    assert Fingerprint(reversed_fields).digest == Fingerprint(fields).digest


def test_tuples_and_numpy_values_normalised():
    with_python = Fingerprint({"frames": [1, 2], "batch_size": 8, "lr": 0.5})
    with_numpy = Fingerprint({"frames": (1, 2), "batch_size": np.int64(8), "lr": np.float32(0.5)})

    assert with_numpy == with_python
    assert with_numpy.fields["batch_size"] == 8


def test_nan_field_rejected_by_name():
    with pytest.raises(ValueError, match="'temperature'"):
        Fingerprint({"temperature": float("nan")})


def test_sha256_file_matches_whole_read(tmp_path):
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3_000_001, dtype=np.uint8).tobytes())

    expected = hashlib.sha256(path.read_bytes()).hexdigest()

    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_bytes=4096) == expected


def test_compare_equal_fingerprints_empty():
    assert compare(Fingerprint(realistic_fields()), Fingerprint(realistic_fields())) == []


def test_compare_names_nested_and_missing_fields():
    expected = Fingerprint(realistic_fields(batch_size=16, extra_field="x"))
    stored_fields = realistic_fields()
    stored_fields["teacher.xclip.config"] = {"width": 512, "layers": 6, "num_frames": 12}
    stored = Fingerprint(stored_fields)

    differences = compare(expected, stored)

    assert differences == [
        FieldDifference("batch_size", 16, 8),
        FieldDifference("extra_field", "x", MISSING),
        FieldDifference("teacher.xclip.config.layers", 12, 6),
    ]


def test_mismatch_message_lists_both_values():
    expected = Fingerprint(realistic_fields(seed=7, epochs=3))
    stored = Fingerprint(realistic_fields())

    message = str(FingerprintMismatchError("/data/cache.zarr", compare(expected, stored)))

    assert "/data/cache.zarr" in message
    assert "2 field(s) differ" in message
    assert "epochs: expected 3, stored 5" in message
    assert "seed: expected 7, stored 42" in message
    assert "another cache path" in message


def test_mismatch_message_shows_missing_side():
    expected = Fingerprint({"seed": 1})
    stored = Fingerprint({"seed": 1, "epochs": 5})

    message = str(FingerprintMismatchError("c.h5", compare(expected, stored)))

    assert "epochs: expected <missing>, stored 5" in message


def test_from_dict_round_trip():
    fingerprint = Fingerprint(realistic_fields())

    assert Fingerprint.from_dict(json.loads(json.dumps(fingerprint.to_dict()))) == fingerprint


def test_from_dict_rejects_edited_fields():
    stored = Fingerprint(realistic_fields()).to_dict()
    stored["fields"]["seed"] = 43

    with pytest.raises(CacheError, match="does not match its fields"):
        Fingerprint.from_dict(stored)
