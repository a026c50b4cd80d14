"""Stage one: run the teachers once over the training schedule and cache their soft targets.

Each unique video and text is encoded once per teacher; then only the teachers' pairwise heads
run for each scheduled batch. Steps already marked done in the cache are skipped, so a killed run
resumes where it stopped. Under `accelerate launch` (or torchrun) each process encodes its share
of the videos and texts, the features are gathered, and each process writes its share of the steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cache import CacheLayout, IncompleteCacheError, TeacherCache
from cache.fingerprint import sha256_file
from pipeline.config import Config
from pipeline.data.samples import SampleSet, build_schedule, tokenize_samples
from pipeline.data.video_dataset import VideoFramesDataset
from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers import Teacher, canonical_teacher_name, load_teacher
from stages.common import SplitData, cache_fingerprint, default_cache_path, load_split, split_videos

logger = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]


@dataclass
class PrecomputeResult:
    cache_path: Path
    steps: int
    steps_written: int
    seconds: float


def describe_teachers(config: Config) -> list[dict]:
    """Name and checkpoint digest of each configured teacher, for the fingerprint."""
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
            # load_teacher raises the full "not found" message, naming where users get the file.
            load_teacher(name, checkpoint)
        described.append({"name": name, "checkpoint_sha256": sha256_file(checkpoint)})
    return described


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


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's share of item indices: those equal to rank modulo world_size."""
    return indices[indices % world_size == rank]


def concat_features(chunks: list[Features]) -> Features:
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}


def gather_rows(indices: np.ndarray, features: Features | None, total: int) -> Features:
    """Collect every process's (indices, features) into full tables [total, ...] indexed by item."""
    gathered = gather_object([(indices, features)])
    tables: Features = {}
    for part_indices, part_features in gathered:
        if part_features is None or not len(part_indices):
            continue
        for key, value in part_features.items():
            if key not in tables:
                tables[key] = torch.zeros((total, *value.shape[1:]), dtype=value.dtype)
            tables[key][torch.from_numpy(part_indices)] = value
    return tables


@torch.no_grad()
def encode_video_shard(teachers: list[Teacher], dataset: VideoFramesDataset, indices: np.ndarray, config: Config,
                       device: torch.device, cache: TeacherCache, frames_to_store: set[int]) -> tuple[list[Features | None], np.ndarray]:
    """Decode the listed videos once and encode them with every teacher; returns features and frame masks."""
    if not len(indices):
        return [None for _ in teachers], np.zeros((0, config.datasets.max_frames), dtype=bool)

    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=config.cache.encode_batch_size,
                        num_workers=config.datasets.num_thread_reader, shuffle=False)
    chunks: list[list[Features]] = [[] for _ in teachers]
    masks = []
    for batch in tqdm(loader, desc="videos", unit="batch"):
        for index, frames in zip(batch["index"].tolist(), batch["frames"].numpy()):
            if index in frames_to_store:
                cache.write_video_frames(index, frames)

        frames = normalize_frames(batch["frames"].to(device))  # [videos, frames, 3, H, W]
        frame_mask = batch["frame_mask"].to(device)
        masks.append(batch["frame_mask"].numpy())
        for teacher, teacher_chunks in zip(teachers, chunks):
            encoded = teacher.encode_videos(frames, frame_mask.long())
            teacher_chunks.append({key: value.cpu() for key, value in encoded.items()})
    return [concat_features(teacher_chunks) for teacher_chunks in chunks], np.concatenate(masks)


@torch.no_grad()
def encode_text_shard(teacher: Teacher, tokens: np.ndarray, mask: np.ndarray, indices: np.ndarray,
                      batch_size: int, device: torch.device) -> Features | None:
    if not len(indices):
        return None
    chunks = []
    for start in tqdm(range(0, len(indices), batch_size), desc=f"{teacher.name}: texts", unit="batch", leave=False):
        rows = indices[start:start + batch_size]
        input_ids = torch.from_numpy(tokens[rows]).long().to(device)
        attention_mask = torch.from_numpy(mask[rows]).long().to(device)
        chunks.append({key: value.cpu() for key, value in teacher.encode_texts(input_ids, attention_mask).items()})
    return concat_features(chunks)


@torch.no_grad()
def write_teacher_steps(teacher: Teacher, cache: TeacherCache, schedule: np.ndarray, pending: np.ndarray,
                        samples: SampleSet, text_features: Features, video_features: Features,
                        device: torch.device) -> int:
    """Run the teacher's pairwise head on each pending step and write its logits and frame targets."""
    text_index = torch.from_numpy(samples.text_index.astype(np.int64))
    video_index = torch.from_numpy(samples.video_index.astype(np.int64))
    for step in tqdm(pending.tolist(), desc=f"{teacher.name}: steps", unit="step"):
        batch = torch.from_numpy(schedule[step])  # [batch] sample indices
        texts = {key: value.index_select(0, text_index[batch]).to(device) for key, value in text_features.items()}
        videos = {key: value.index_select(0, video_index[batch]).to(device) for key, value in video_features.items()}
        logits, frame_targets = teacher.batch_targets(texts, videos)  # [batch, batch], [batch, frames]
        cache.write_step(teacher.name, step, logits.float().cpu().numpy(), frame_targets.float().cpu().numpy())
    return len(pending)


def frame_mask_stored(cache: TeacherCache) -> bool:
    try:
        cache.frame_mask
    except IncompleteCacheError:
        return False
    return True


def prepare_split(config: Config, accelerator: PartialState) -> SplitData:
    """Scan the videos on the main process only and share the skipped ids with the others."""
    report_dir = Path(config.train.output_dir)
    split = load_split(config, "train", report_dir=report_dir) if accelerator.is_main_process else None
    skipped = broadcast_object_list([split.skipped if split is not None else None])[0]
    return split if split is not None else load_split(config, "train", skipped=skipped)


def open_cache(config: Config, accelerator: PartialState, split: SplitData, schedule: np.ndarray,
               teacher_info: list[dict], tokens) -> tuple[TeacherCache, bool]:
    """Create or resume the store on the main process, then open it on the others; returns (cache, complete)."""
    cache_path = default_cache_path(config)
    teacher_names = tuple(info["name"] for info in teacher_info)
    complete = False
    if accelerator.is_main_process:
        fingerprint = cache_fingerprint(config, split, teacher_info)
        cache = TeacherCache.open_or_create(
            cache_path, build_layout(config, split, schedule, teacher_names), fingerprint,
            backend=config.cache.backend, teacher_info={info["name"]: info for info in teacher_info},
        )
        cache.write_samples(split.samples.text_index, split.samples.video_index)
        cache.write_texts(np.asarray(split.samples.text_ids), tokens.input_ids, tokens.attention_mask)
        cache.write_schedule(schedule)
        complete = cache.is_complete()
    complete = broadcast_object_list([complete])[0]
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        cache = TeacherCache.open(cache_path, mode="r" if complete else "r+")
    return cache, complete


def run_precompute(config: Config, device: str | None = None) -> PrecomputeResult:
    """Write (or finish) the teacher cache for `config`; returns where it is and what was written."""
    started = time.perf_counter()
    # PartialState carries the process layout without fixing a mixed-precision mode, which distill sets.
    accelerator = PartialState(cpu=not torch.cuda.is_available())
    rank, world_size = accelerator.process_index, accelerator.num_processes
    device = torch.device(device) if device else accelerator.device

    split = prepare_split(config, accelerator)
    samples = split.samples
    tokens = tokenize_samples(samples, config.datasets.max_words)
    schedule = build_schedule(samples, config.train.batch_size, config.train.epochs, config.train.seed,
                              expand_sentences=config.datasets.expand_msrvtt_sentences)
    teacher_info = describe_teachers(config)
    cache, complete = open_cache(config, accelerator, split, schedule, teacher_info, tokens)

    with cache:
        if complete:
            logger.info("cache %s is already complete: %d steps for %s", cache.path, len(schedule),
                        ", ".join(info["name"] for info in teacher_info))
            return PrecomputeResult(Path(cache.path), len(schedule), 0, time.perf_counter() - started)

        teachers = [load_teacher(spec.name, spec.checkpoint, precision=config.model.precision).to(device).eval()
                    for spec in config.distillation.teachers]
        if accelerator.is_main_process:
            for teacher in teachers:
                cache.write_teacher_config(teacher.name, teacher.describe())

        # Every process reads the same done flags here, before any of them writes a step.
        all_pending = {teacher.name: cache.pending_steps(teacher.name) for teacher in teachers}
        my_pending = {name: steps[steps % world_size == rank] for name, steps in all_pending.items()}
        pending_samples = np.unique(np.concatenate([schedule[steps].reshape(-1) for steps in all_pending.values()]))
        needed_videos = np.unique(samples.video_index[pending_samples]).astype(np.int64)
        needed_texts = np.unique(samples.text_index[pending_samples]).astype(np.int64)
        mask_missing = not frame_mask_stored(cache)
        if mask_missing:
            needed_videos = np.arange(len(samples.video_ids))
        frames_to_store = set(cache.pending_videos(rank, world_size).tolist())
        my_videos = np.union1d(shard(needed_videos, rank, world_size), np.fromiter(frames_to_store, dtype=np.int64))
        logger.info("process %d of %d: encoding %d of %d videos and %d of %d texts, writing %s steps", rank,
                    world_size, len(my_videos), len(samples.video_ids), len(shard(needed_texts, rank, world_size)),
                    len(samples.text_ids), {name: len(steps) for name, steps in my_pending.items()})

        dataset = split_videos(config, samples, "train")
        video_parts, masks = encode_video_shard(teachers, dataset, my_videos, config, device, cache, frames_to_store)
        if mask_missing:
            mask_table = gather_rows(my_videos, {"frame_mask": torch.from_numpy(masks)}, len(samples.video_ids))
            if accelerator.is_main_process:
                cache.write_videos(np.asarray(samples.video_ids), mask_table["frame_mask"].numpy())

        # NOTE: every process keeps the gathered features of all needed items in memory. X-CLIP's
        # word features for 180,000 MSR-VTT captions take about 12 GB in float32 (an estimate from shapes).
        written = 0
        for teacher, video_part in zip(teachers, video_parts):
            video_features = gather_rows(my_videos, video_part, len(samples.video_ids))
            my_texts = shard(needed_texts, rank, world_size)
            text_part = encode_text_shard(teacher, tokens.input_ids, tokens.attention_mask, my_texts,
                                          config.cache.encode_batch_size, device)
            text_features = gather_rows(my_texts, text_part, len(samples.text_ids))
            if len(my_pending[teacher.name]):
                written += write_teacher_steps(teacher, cache, schedule, my_pending[teacher.name], samples,
                                               text_features, video_features, device)

        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            cache.mark_complete_if_done()
        accelerator.wait_for_everyone()

    seconds = time.perf_counter() - started
    logger.info("precompute finished on process %d: %d steps written to %s in %.1f s", rank, written,
                cache.path, seconds)
    return PrecomputeResult(Path(cache.path), len(schedule), written, seconds)
