"""Teacher registry: canonical names, loading from local checkpoints, and tiny random teachers.

Names follow TeachCLIP's (`XCLIP`, `TS2Net`, `XPool`, `CLIP4Clip`) in any letter case.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.models.checkpoints import read_state_dict, require_model
from pipeline.models.clip import CLIPConfig
from pipeline.models.teachers.base import (
    PRECISIONS,
    Features,
    Teacher,
    check_precision,
    concatenate_items,
    select_items,
)
from pipeline.models.teachers.clip4clip import CLIP4ClipTeacher
from pipeline.models.teachers.tiny import save_tiny_teacher as _save_tiny_teacher
from pipeline.models.teachers.ts2net import TS2NetTeacher
from pipeline.models.teachers.xclip import XCLIPTeacher
from pipeline.models.teachers.xpool import XPoolTeacher

logger = logging.getLogger(__name__)

TEACHER_CLASSES: dict[str, type[Teacher]] = {
    cls.name: cls for cls in (XCLIPTeacher, TS2NetTeacher, XPoolTeacher, CLIP4ClipTeacher)
}

# Spellings accepted besides the canonical lower-case names (compared after lower-casing).
TEACHER_ALIASES = {
    "x-clip": "xclip",
    "ts2-net": "ts2net",
    "x-pool": "xpool",
}


def canonical_teacher_name(name: str) -> str:
    """Map a teacher name in any letter case ("XCLIP", "TS2Net", "xpool") to its registry key."""
    key = name.strip().lower()
    key = TEACHER_ALIASES.get(key, key)
    if key not in TEACHER_CLASSES:
        known = ", ".join(sorted(TEACHER_CLASSES))
        raise ValueError(f"unknown teacher '{name}'; known teachers: {known}")
    return key


def load_teacher(name: str, checkpoint: str | Path, precision: str = "fp32") -> Teacher:
    """Build a teacher in evaluation mode from a local checkpoint, sized by the checkpoint's own shapes.

    Raises CheckpointNotFoundError for a missing file (naming where to get it) and
    CheckpointMismatchError for a checkpoint of another model or with missing parameters.
    """
    key = canonical_teacher_name(name)
    check_precision(precision)

    state_dict = read_state_dict(checkpoint, kind=key)
    require_model(state_dict, key, checkpoint)
    teacher = TEACHER_CLASSES[key].from_state_dict(state_dict, source=str(checkpoint), precision=precision)
    teacher.requires_grad_(False)  # teachers only produce targets and are never trained here
    logger.info("loaded %s teacher from %s (%s)", key, checkpoint, precision)
    return teacher


def save_tiny_teacher(name: str, path: str | Path, clip_config: CLIPConfig, max_words: int, max_frames: int,
                      seed: int) -> Path:
    """Write a randomly initialised teacher in its public checkpoint layout, for tests and the demo."""
    key = canonical_teacher_name(name)
    return _save_tiny_teacher(TEACHER_CLASSES[key], path, clip_config, max_words, max_frames, seed)


__all__ = [
    "PRECISIONS",
    "TEACHER_CLASSES",
    "Features",
    "Teacher",
    "canonical_teacher_name",
    "concatenate_items",
    "load_teacher",
    "save_tiny_teacher",
    "select_items",
]
