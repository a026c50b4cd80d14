"""The demo: all three stages on the bundled real clips with tiny random models, on CPU.

Random tiny models make the retrieval numbers meaningless; the demo shows the pipeline running end
to end on real video, not retrieval quality.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

import torch
import yaml

from pipeline.config import build_config, save_config
from pipeline.models.clip import CLIP, CLIP_PRESETS
from pipeline.models.teachers import save_tiny_teacher
from stages.distill import run_distill
from stages.evaluate import format_table, run_evaluate
from stages.precompute import run_precompute

logger = logging.getLogger(__name__)

DEMO_SEED = 0
DEMO_MAX_WORDS = 32
DEMO_MAX_FRAMES = 12
# 48 training captions (16 videos x 3) give 6 full batches of 8 per epoch.
DEMO_BATCH_SIZE = 8
MEANINGLESS_NOTE = (
    "NOTE: these models are tiny and random, so the retrieval numbers above are meaningless; "
    "the demo shows every stage running on real video. Use OpenAI's CLIP and released teacher checkpoints "
    "with a benchmark config for real numbers."
)


def demo_data_dir() -> Path:
    return Path(str(resources.files("pipeline").joinpath("demo_data")))


def write_tiny_clip(path: Path) -> Path:
    """Save a random tiny CLIP as OpenAI's archives hold it: the state dict plus three scalar entries."""
    torch.manual_seed(DEMO_SEED)
    config = CLIP_PRESETS["tiny"]
    state = CLIP(config).state_dict()
    state["input_resolution"] = torch.tensor(config.image_resolution)
    state["context_length"] = torch.tensor(config.context_length)
    state["vocab_size"] = torch.tensor(config.vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def demo_config_dict(output_dir: Path, clip_path: Path, teacher_path: Path, epochs: int, backend: str) -> dict:
    data = demo_data_dir()
    cache_name = "teacher_cache.h5" if backend == "hdf5" else "teacher_cache.zarr"
    return {
        "model": {"pretrained_clip_name": "tiny", "clip_checkpoint": str(clip_path), "cross_num_hidden_layers": 4},
        "datasets": {
            "data_type": "msrvtt",
            "data_path": str(data / "MSRVTT_data.json"),
            "train_csv": str(data / "MSRVTT_train.9k.csv"),
            "val_csv": str(data / "MSRVTT_JSFUSION_test.csv"),
            "test_csv": str(data / "MSRVTT_JSFUSION_test.csv"),
            "video_path": str(data / "videos"),
            "max_words": DEMO_MAX_WORDS,
            "max_frames": DEMO_MAX_FRAMES,
            "num_thread_reader": 2,
        },
        "distillation": {"teachers": [{"name": "XCLIP", "checkpoint": str(teacher_path)}]},
        "train": {
            # A rerun of the demo into the same folder starts the run over.
            "seed": DEMO_SEED, "epochs": epochs, "batch_size": DEMO_BATCH_SIZE, "batch_size_val": 8, "overwrite": True,
            "output_dir": str(output_dir / "run"),
        },
        # Frames are cached too, so distill reads them instead of decoding each video again every epoch.
        "cache": {"path": str(output_dir / cache_name), "backend": backend, "encode_batch_size": 8, "store_frames": True},
        "evaluate": {"output_dir": str(output_dir / "eval")},
    }


def run_demo(output_dir: Path, epochs: int = 2, backend: str = "zarr") -> str:
    """Write tiny models and a config under output_dir, run the three stages, and return a summary."""
    output_dir = output_dir.resolve()
    timings = {}
    clip_path = write_tiny_clip(output_dir / "models" / "tiny-clip.pt")
    teacher_path = save_tiny_teacher("xclip", output_dir / "models" / "tiny-xclip.bin", CLIP_PRESETS["tiny"],
                                     max_words=DEMO_MAX_WORDS, max_frames=DEMO_MAX_FRAMES, seed=DEMO_SEED)
    data = demo_config_dict(output_dir, clip_path, teacher_path, epochs, backend)
    config = build_config(data, source=str(output_dir / "config.yaml"))
    save_config(config, output_dir / "config.yaml")
    logger.info("demo config written to %s", output_dir / "config.yaml")

    started = time.perf_counter()
    precomputed = run_precompute(config)
    timings["precompute"] = time.perf_counter() - started

    started = time.perf_counter()
    distilled = run_distill(config)
    timings["distill"] = time.perf_counter() - started

    started = time.perf_counter()
    result = run_evaluate(config, distilled.best_checkpoint)
    timings["evaluate"] = time.perf_counter() - started

    timing_record = {name: round(value, 2) for name, value in timings.items()}
    (output_dir / "timings.yaml").write_text(yaml.safe_dump(timing_record, sort_keys=False))
    lines = [
        format_table(result),
        "",
        f"config:        {output_dir / 'config.yaml'}",
        f"teacher cache: {precomputed.cache_path}",
        f"run directory: {distilled.output_dir} (best checkpoint {distilled.best_checkpoint})",
        f"metrics:       {output_dir / 'eval' / 'metrics.json'}",
        "seconds per stage: " + ", ".join(f"{name} {value:.1f}" for name, value in timings.items()),
        "",
        MEANINGLESS_NOTE,
    ]
    return "\n".join(lines)
