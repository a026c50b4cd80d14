"""Teachers loaded from the parity state dicts reproduce the outputs of TeachCLIP's teacher code."""

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


# TS2-Net's token selection adds fresh random noise (500 samples, sigma 0.05) on every call, in
# evaluation too, so the stored TS2-Net outputs are one random draw that no seed here repeats.
# With the same noise fed to both, this implementation matched TeachCLIP's TS2-Net within 1.2e-6.
# Here the stored draw must lie within the spread of draws under other noise seeds.
SELECTION_SEEDS = 16
# Allowed distance from the mean over seeds, in standard deviations over seeds plus 1e-5 (some
# entries do not depend on the selection). The stored draw lies within 1.5; repeating the frame
# mask per frame instead of tiling it as TS2-Net does moves it to 20 and more.
SELECTION_SPREAD = 6.0


@pytest.fixture(scope="module")
def ts2net_draws(parity_batch) -> tuple[torch.Tensor, torch.Tensor]:
    teacher = load_teacher("TS2Net", PARITY_DIR / "ts2net.bin")
    logits, frame_targets = [], []
    with torch.no_grad():
        texts = teacher.encode_texts(parity_batch["input_ids"], parity_batch["attention_mask"])
        for seed in range(SELECTION_SEEDS):
            videos = teacher.encode_videos(parity_batch["frames"], parity_batch["frame_mask"], selection_seed=seed)
            draw_logits, draw_frame_targets = teacher.batch_targets(texts, videos)
            logits.append(draw_logits)
            frame_targets.append(draw_frame_targets)
    return torch.stack(logits), torch.stack(frame_targets)


def spread_scores(draws: torch.Tensor, stored: np.ndarray) -> torch.Tensor:
    """Distance of each stored entry from the mean of the draws, in standard deviations of the draws."""
    return (torch.from_numpy(stored) - draws.mean(dim=0)).abs() / (draws.std(dim=0) + PARITY_TOLERANCE)


def test_ts2net_logits_within_selection_noise(ts2net_draws, reference_outputs):
    logits, _ = ts2net_draws
    scores = spread_scores(logits, reference_outputs["ts2net_logits"])
    assert scores.max().item() < SELECTION_SPREAD


def test_ts2net_frame_targets_within_selection_noise(ts2net_draws, reference_outputs):
    _, frame_targets = ts2net_draws
    scores = spread_scores(frame_targets, reference_outputs["ts2net_frame"])
    assert scores.max().item() < SELECTION_SPREAD
