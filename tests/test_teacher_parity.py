"""Teachers loaded from the parity state dicts reproduce the reference implementations' outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers import load_teacher

PARITY_DIR = Path(__file__).parent / "fixtures" / "parity"
# TeachCLIP's code, rerun on another machine, differs from the stored X-CLIP logits by 2.3e-6.
PARITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity_batch() -> dict[str, torch.Tensor]:
    inputs = np.load(PARITY_DIR / "inputs.npz")
    return {
        "input_ids": torch.from_numpy(inputs["input_ids"]),
        "attention_mask": torch.from_numpy(inputs["input_mask"]),
        "frames": normalize_frames(torch.from_numpy(inputs["frames_uint8"])),
        "frame_mask": torch.from_numpy(inputs["frame_mask"]),
    }


@pytest.fixture(scope="module")
def reference_outputs() -> dict[str, np.ndarray]:
    return dict(np.load(PARITY_DIR / "outputs.npz"))


def run_teacher(name: str, checkpoint: str, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    teacher = load_teacher(name, PARITY_DIR / checkpoint)
    with torch.no_grad():
        logits, frame_targets = teacher(**batch)
    return logits.numpy(), frame_targets.numpy()


def test_xclip_logits_match_reference(parity_batch, reference_outputs):
    logits, _ = run_teacher("XCLIP", "xclip.bin", parity_batch)
    np.testing.assert_allclose(logits, reference_outputs["xclip_logits"], rtol=0, atol=PARITY_TOLERANCE)


def test_xclip_frame_targets_match_reference(parity_batch, reference_outputs):
    _, frame_targets = run_teacher("XCLIP", "xclip.bin", parity_batch)
    np.testing.assert_allclose(frame_targets, reference_outputs["xclip_frame"], rtol=0, atol=PARITY_TOLERANCE)


def test_xpool_logits_match_reference(parity_batch, reference_outputs):
    logits, _ = run_teacher("XPool", "xpool.bin", parity_batch)
    np.testing.assert_allclose(logits, reference_outputs["xpool_logits"], rtol=0, atol=PARITY_TOLERANCE)


def test_xpool_frame_targets_match_reference(parity_batch, reference_outputs):
    _, frame_targets = run_teacher("XPool", "xpool.bin", parity_batch)
    np.testing.assert_allclose(frame_targets, reference_outputs["xpool_frame"], rtol=0, atol=PARITY_TOLERANCE)
