"""Small random teachers saved in their public checkpoint layouts, for tests and the demo."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.models.clip import CLIPConfig
from pipeline.models.teachers.base import Teacher

logger = logging.getLogger(__name__)

# Spread of the noise added to weights that start as identity matrices (X-CLIP's similarity
# weights, X-Pool's projections), so a random teacher exercises every term of its head.
IDENTITY_NOISE_STD = 0.1


def perturb_identity_weights(teacher: nn.Module, generator: torch.Generator) -> None:
    """Add noise to every square 2-D parameter outside CLIP that is still an identity matrix."""
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            if name.startswith("clip.") or parameter.dim() != 2 or parameter.shape[0] != parameter.shape[1]:
                continue
            if torch.equal(parameter, torch.eye(parameter.shape[0], dtype=parameter.dtype)):
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(IDENTITY_NOISE_STD * noise)


def build_tiny_teacher(teacher_class: type[Teacher], clip_config: CLIPConfig, max_words: int, max_frames: int,
                       seed: int) -> Teacher:
    """Build a randomly initialised teacher in evaluation mode; the same seed gives the same weights."""
    config = teacher_class.tiny_config(clip_config, max_words, max_frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = teacher_class(config)
    perturb_identity_weights(teacher, torch.Generator().manual_seed(seed))
    return teacher.eval()


def save_tiny_teacher(teacher_class: type[Teacher], path: str | Path, clip_config: CLIPConfig, max_words: int,
                      max_frames: int, seed: int) -> Path:
    """Build a random teacher of `teacher_class` and save it as its public checkpoints are saved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    teacher = build_tiny_teacher(teacher_class, clip_config, max_words, max_frames, seed)
    torch.save(teacher.release_checkpoint(), path)
    logger.info("saved a random %s teacher (seed %d) to %s", teacher_class.name, seed, path)
    return path
