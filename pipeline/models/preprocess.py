"""CLIP's pixel normalisation, applied on the model's device right before the image tower."""

from __future__ import annotations

import torch

# Per-channel RGB mean and standard deviation of CLIP's training images.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIXEL_MAX = 255.0


def normalize_frames(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn uint8 frames [..., H, W, 3] into normalised floats [..., 3, H, W]."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB pixels, got {frames.dtype}; decode videos with pipeline.data.frames")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=frames.device)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=frames.device)

    pixels = frames.to(torch.float32) / PIXEL_MAX
    pixels = (pixels - mean) / std
    return pixels.movedim(-1, -3).contiguous().to(dtype)  # [..., 3, H, W]
