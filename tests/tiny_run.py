"""Builders for end-to-end tests: tiny random models and a config over the bundled clips."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, build_config
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.teachers import save_tiny_teacher
from stages.demo import demo_config_dict, write_tiny_clip

TINY_MAX_WORDS = 16
TINY_MAX_FRAMES = 4


def tiny_config(directory: Path, teachers: tuple[str, ...] = ("xclip",), overrides: tuple[str, ...] = (),
                backend: str = "zarr") -> Config:
    """A config over the bundled clips with tiny random CLIP and teachers saved in their public layouts."""
    models = directory / "models"
    clip_path = models / "tiny-clip.pt"
    if not clip_path.exists():
        write_tiny_clip(clip_path)

    teacher_entries = []
    for name in teachers:
        path = models / f"tiny-{name}.bin"
        if not path.exists():
            save_tiny_teacher(name, path, CLIP_PRESETS["tiny"], max_words=TINY_MAX_WORDS,
                              max_frames=TINY_MAX_FRAMES, seed=1)
        teacher_entries.append({"name": name, "checkpoint": str(path)})

    data = demo_config_dict(directory, clip_path, models / "unused.bin", epochs=1, backend=backend)
    data["distillation"]["teachers"] = teacher_entries
    data["datasets"].update(max_words=TINY_MAX_WORDS, max_frames=TINY_MAX_FRAMES, num_thread_reader=0)
    data["cache"]["target_dtype"] = "float32"
    return build_config(data, source=str(directory / "config.yaml"), overrides=overrides)
