"""Torch datasets that decode videos (or read cached frames) for the stages' DataLoaders.

Readers are opened inside each worker, never in the parent, because decord's readers grow memory
when shared across DataLoader workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.frames import FrameSettings, VideoFrames
from pipeline.data.videos import find_video, load_video_frames

logger = logging.getLogger(__name__)


class VideoFramesDataset(Dataset):
    """Frames [frames, H, W, 3] uint8 and frame_mask [frames] of each listed video, decoded on demand."""

    def __init__(self, video_dir: str | Path, video_ids: tuple[str, ...], settings: FrameSettings,
                 clip_times: dict[str, tuple[float | None, float | None]] | None = None,
                 timeout_s: float | None = None, seed: int = 0):
        self.video_dir = Path(video_dir)
        self.video_ids = video_ids
        self.settings = settings
        self.clip_times = clip_times or {}
        self.timeout_s = timeout_s
        self.seed = seed

    def __len__(self) -> int:
        return len(self.video_ids)

    def load(self, index: int) -> VideoFrames:
        video_id = self.video_ids[index]
        start_time, end_time = self.clip_times.get(video_id, (None, None))
        # Seeded per video, so a shuffled frame order is the same in every run and every worker.
        rng = np.random.default_rng([self.seed, index])
        return load_video_frames(
            find_video(self.video_dir, video_id), self.settings,
            start_time=start_time, end_time=end_time, timeout_s=self.timeout_s, rng=rng,
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video = self.load(index)
        return {
            "index": torch.tensor(index),
            "frames": torch.from_numpy(video.frames),
            "frame_mask": torch.from_numpy(video.frame_mask),
        }
