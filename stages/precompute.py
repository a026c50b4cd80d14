"""Stage one: run the teachers once over the training schedule and cache their soft targets.

Each unique video and text is encoded once per teacher; then only the teachers' pairwise heads
run for each scheduled batch. Steps already marked done in the cache are skipped, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cache import CacheLayout, TeacherCache
from cache.fingerprint import sha256_file
from pipeline.config import Config
from pipeline.data.samples import build_schedule, tokenize_samples
from pipeline.data.video_dataset import VideoFramesDataset
from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers import Teacher, canonical_teacher_name, load_teacher
from stages.common import SplitData, cache_fingerprint, default_cache_path, frame_settings, load_split

logger = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]


@dataclass
class PrecomputeResult:
    cache_path: Path
    steps: int
    steps_written: int
    seconds: float


def describe_teachers(config: Config) -> list[dict]:
    """Name, checkpoint digest and path of each configured teacher, for the fingerprint."""
    if not config.distillation.teachers:
        raise ValueError(
            f"{config.source}: distillation.teachers is empty, so there is nothing to precompute; "
            "list at least one {name, checkpoint} teacher"
        )
    described = []
    for spec in config.distillation.teachers:
        name = canonical_teacher_name(spec.name)
        checkpoint = Path(spec.checkpoint).expanduser()
        if not checkpoint.is_file():
            # load_teacher raises the full "not found" message below; hashing needs the file first.
            load_teacher(name, checkpoint)
        described.append({"name": name, "checkpoint_sha256": sha256_file(checkpoint)})
    return described


def concat_features(chunks: list[Features]) -> Features:
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}


def select_features(features: Features, index: torch.Tensor) -> Features:
    return {key: value.index_select(0, index) for key, value in features.items()}


@torch.no_grad()
def encode_texts(teacher: Teacher, tokens: np.ndarray, mask: np.ndarray, batch_size: int, device: torch.device) -> Features:
    chunks = []
    for start in tqdm(range(0, len(tokens), batch_size), desc=f"{teacher.name}: texts", unit="batch", leave=False):
        input_ids = torch.from_numpy(tokens[start:start + batch_size]).long().to(device)
        attention_mask = torch.from_numpy(mask[start:start + batch_size]).long().to(device)
        chunks.append({key: value.cpu() for key, value in teacher.encode_texts(input_ids, attention_mask).items()})
    return concat_features(chunks)


@torch.no_grad()
def encode_videos(teachers: list[Teacher], loader: DataLoader, device: torch.device,
                  cache: TeacherCache, store_frames: bool) -> tuple[list[Features], np.ndarray]:
    """Decode each video once and encode it with every teacher; returns features and frame masks."""
    chunks: list[list[Features]] = [[] for _ in teachers]
    masks = []
    for batch in tqdm(loader, desc="videos", unit="batch"):
        if store_frames:
            for index, frames in zip(batch["index"].tolist(), batch["frames"].numpy()):
                cache.write_video_frames(index, frames)

        frames = normalize_frames(batch["frames"].to(device))  # [videos, frames, 3, H, W]
        frame_mask = batch["frame_mask"].to(device)
        masks.append(batch["frame_mask"].numpy())
        for teacher, teacher_chunks in zip(teachers, chunks):
            encoded = teacher.encode_videos(frames, frame_mask.long())
            teacher_chunks.append({key: value.cpu() for key, value in encoded.items()})
    return [concat_features(teacher_chunks) for teacher_chunks in chunks], np.concatenate(masks)


def build_layout(config: Config, split: SplitData, schedule: np.ndarray, teacher_names: tuple[str, ...]) -> CacheLayout:
    return CacheLayout(
        num_samples=split.samples.num_samples,
        num_texts=len(split.samples.text_ids),
        max_words=config.datasets.max_words,
        num_videos=len(split.samples.video_ids),
        max_frames=config.datasets.max_frames,
        num_steps=len(schedule),
        batch_size=config.train.batch_size,
        teacher_names=teacher_names,
        target_dtype=config.cache.target_dtype,
        store_frames=config.cache.store_frames,
    )


def run_precompute(config: Config, device: str | None = None) -> PrecomputeResult:
    """Write (or finish) the teacher cache for `config`; returns where it is and what was written."""
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cache_path = default_cache_path(config)
    report_dir = Path(config.train.output_dir)

    split = load_split(config, "train", report_dir=report_dir)
    samples = split.samples
    tokens = tokenize_samples(samples, config.datasets.max_words)
    schedule = build_schedule(samples, config.train.batch_size, config.train.epochs, config.train.seed,
                              expand_sentences=config.datasets.expand_msrvtt_sentences)
    teacher_info = describe_teachers(config)
    teacher_names = tuple(info["name"] for info in teacher_info)
    fingerprint = cache_fingerprint(config, split, teacher_info)

    cache = TeacherCache.open_or_create(
        cache_path, build_layout(config, split, schedule, teacher_names), fingerprint,
        backend=config.cache.backend, teacher_info={info["name"]: info for info in teacher_info},
    )
    with cache:
        cache.write_samples(samples.text_index, samples.video_index)
        cache.write_texts(np.asarray(samples.text_ids), tokens.input_ids, tokens.attention_mask)
        cache.write_schedule(schedule)

        pending = {name: cache.pending_steps(name) for name in teacher_names}
        frames_pending = config.cache.store_frames and not cache.frames_complete()
        if not any(len(steps) for steps in pending.values()) and not frames_pending:
            logger.info("cache %s is already complete: %d steps for %s", cache_path, len(schedule), ", ".join(teacher_names))
            return PrecomputeResult(cache_path, len(schedule), 0, time.perf_counter() - started)

        teachers = [load_teacher(spec.name, spec.checkpoint, precision=config.model.precision).to(device).eval()
                    for spec in config.distillation.teachers]
        for teacher, info in zip(teachers, teacher_info):
            cache.write_teacher_config(info["name"], teacher.describe())

        dataset = VideoFramesDataset(config.datasets.video_path, samples.video_ids, frame_settings(config, "train"),
                                     clip_times=samples.clip_times, timeout_s=config.datasets.decode_timeout_s,
                                     seed=config.train.seed)
        loader = DataLoader(dataset, batch_size=config.cache.encode_batch_size,
                            num_workers=config.datasets.num_thread_reader, shuffle=False)
        logger.info("encoding %d unique videos and %d unique texts with %s", len(samples.video_ids),
                    len(samples.text_ids), ", ".join(teacher_names))
        video_features, frame_mask = encode_videos(teachers, loader, device, cache, config.cache.store_frames)
        cache.write_videos(np.asarray(samples.video_ids), frame_mask)

        written = 0
        for teacher, features in zip(teachers, video_features):
            text_features = encode_texts(teacher, tokens.input_ids, tokens.attention_mask,
                                         config.cache.encode_batch_size, device)
            written += write_teacher_steps(teacher, cache, schedule, pending[teacher.name], samples,
                                           text_features, features, device)

        cache.mark_complete_if_done()
    seconds = time.perf_counter() - started
    logger.info("precompute finished: %d steps written to %s in %.1f s", written, cache_path, seconds)
    return PrecomputeResult(cache_path, len(schedule), written, seconds)


@torch.no_grad()
def write_teacher_steps(teacher: Teacher, cache: TeacherCache, schedule: np.ndarray, pending: np.ndarray,
                        samples, text_features: Features, video_features: Features, device: torch.device) -> int:
    """Run the teacher's pairwise head on each pending step and write its logits and frame targets."""
    text_index = torch.from_numpy(samples.text_index.astype(np.int64))
    video_index = torch.from_numpy(samples.video_index.astype(np.int64))
    for step in tqdm(pending.tolist(), desc=f"{teacher.name}: steps", unit="step"):
        batch = torch.from_numpy(schedule[step])  # [batch] sample indices
        texts = {key: value.to(device) for key, value in select_features(text_features, text_index[batch]).items()}
        videos = {key: value.to(device) for key, value in select_features(video_features, video_index[batch]).items()}
        logits, frame_targets = teacher.batch_targets(texts, videos)  # [batch, batch], [batch, frames]
        cache.write_step(teacher.name, step, logits.float().cpu().numpy(), frame_targets.float().cpu().numpy())
    return len(pending)
