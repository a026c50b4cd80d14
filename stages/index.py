"""Index: encode every video of a folder with a student checkpoint into a feature store for `search`.

No annotations are needed. Videos that fail to decode are logged and listed in the store's
failed.json, never stored as vectors. A killed run resumes from the chunks not marked done.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.fingerprint import sha256_file
from pipeline.data.frames import ORDER_KEEP, SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM, FrameSettings
from pipeline.data.videos import DEFAULT_TIMEOUT_S, VIDEO_EXTENSIONS, DecodePool, VideoRequest, load_many
from pipeline.feature_store import (
    DEFAULT_CHUNK_VIDEOS,
    FailedVideo,
    FeatureStore,
    FeatureStoreError,
    is_feature_store,
)
from pipeline.models.factory import load_student
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import TeachCLIPStudent

logger = logging.getLogger(__name__)

SLICE_POSITIONS = {"head": SLICE_HEAD, "tail": SLICE_TAIL, "uniform": SLICE_UNIFORM}
# Failures logged one by one per run; the rest are counted, and all are in failed.json.
FAILURE_LOG_LIMIT = 20
# Settings that must match for a run to continue an existing store.
RESUME_FIELDS = ("checkpoint_sha256", "frame_settings", "dim", "dtype")


class IndexMismatchError(FeatureStoreError):
    """An existing store built from other videos, another checkpoint or other settings."""


@dataclass(frozen=True)
class IndexSettings:
    """Frame sampling (TeachCLIP's evaluation defaults), vector type and batching of an index run."""

    feature_framerate: int = 1  # frames per second of video
    max_frames: int = 12
    slice_framepos: int = SLICE_UNIFORM
    dtype: str = "float16"
    batch_size: int = 16  # videos per forward pass of the student
    chunk_videos: int = DEFAULT_CHUNK_VIDEOS  # videos per store chunk, the unit of resuming
    workers: int | None = None  # decoding processes; default one per CPU core
    decode_timeout_s: float = DEFAULT_TIMEOUT_S
    recursive: bool = True


@dataclass(frozen=True)
class IndexResult:
    store: Path
    videos: int  # video files in the store
    encoded: int  # videos encoded by this run
    failed: int  # videos of this run that failed to decode
    failed_total: int  # failed videos listed in failed.json
    chunks_already_done: int
    complete: bool  # every chunk done
    seconds: float


def list_video_files(video_dir: str | Path, recursive: bool = True) -> list[tuple[str, Path]]:
    """Return (video id, file) for each video under video_dir, sorted by path.

    A video's id is its path relative to video_dir without the extension. Where two files differ
    only in extension, both keep the extension in their ids. Hidden files are skipped.
    """
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder {video_dir} not found or not a folder")
    pattern = "**/*" if recursive else "*"
    files = sorted(path for path in video_dir.glob(pattern)
                   if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
                   and not any(part.startswith(".") for part in path.relative_to(video_dir).parts))

    stems = [path.relative_to(video_dir).with_suffix("").as_posix() for path in files]
    repeated = {stem for stem, count in Counter(stems).items() if count > 1}
    return [(path.relative_to(video_dir).as_posix() if stem in repeated else stem, path)
            for stem, path in zip(stems, files)]


def frame_settings_for(model: TeachCLIPStudent, settings: IndexSettings) -> FrameSettings:
    return FrameSettings(feature_framerate=settings.feature_framerate, max_frames=settings.max_frames,
                         slice_framepos=settings.slice_framepos, frame_order=ORDER_KEEP,
                         image_size=model.config.clip.image_resolution)


def open_or_create_store(output: Path, videos: list[tuple[str, Path]], attributes: dict, settings: IndexSettings,
                         overwrite: bool) -> FeatureStore:
    """Open the store at output to resume it, after checking it matches; or create it."""
    ids = [video_id for video_id, _ in videos]
    is_store = is_feature_store(output)
    if output.exists() and not is_store and (output.is_file() or any(output.iterdir())):
        raise IndexMismatchError(f"{output} exists and is not a feature store; choose another --output "
                                 "(nothing there is overwritten)")
    if is_store and not overwrite:
        store = FeatureStore.open(output, writable=True)
        for name in RESUME_FIELDS:
            if store.attributes.get(name) != attributes[name]:
                raise IndexMismatchError(
                    f"{output} was built with {name} = {store.attributes.get(name)!r}, but this run has "
                    f"{attributes[name]!r}; pass --overwrite to rebuild it, or index into a new --output")
        stored_ids = store.ids()
        if stored_ids != ids:
            added = len(set(ids) - set(stored_ids))
            removed = len(set(stored_ids) - set(ids))
            raise IndexMismatchError(
                f"{output} was built for {len(stored_ids)} videos, but the folder now has {len(ids)} "
                f"({added} new, {removed} gone); pass --overwrite to rebuild it, or index into a new --output")
        logger.info("resuming %s: %d of %d chunks done", output, store.num_chunks - len(store.pending_chunks()),
                    store.num_chunks)
        return store
    return FeatureStore.create(output, ids, [str(path) for _, path in videos], dim=attributes["dim"],
                               dtype=settings.dtype, attributes=attributes, chunk_videos=settings.chunk_videos,
                               overwrite=overwrite)


class ChunkEncoder:
    """Decode the videos of store chunks with a pool and encode them in batches with the student."""

    def __init__(self, model: TeachCLIPStudent, frames: FrameSettings, settings: IndexSettings,
                 pool: DecodePool, device: torch.device, progress: tqdm):
        self.model = model
        self.frames = frames
        self.settings = settings
        self.pool = pool
        self.device = device
        self.progress = progress
        self.failures_logged = 0

    def encode(self, ids: list[str], paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[FailedVideo]]:
        """Return vectors [videos, dim] float32, valid [videos] and the failures of one chunk."""
        vectors = np.zeros((len(ids), self.model.config.clip.embed_dim), dtype=np.float32)
        valid = np.zeros(len(ids), dtype=bool)
        failures: list[FailedVideo] = []
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (row, frames, frame_mask)

        requests = [VideoRequest(path=Path(path)) for path in paths]
        results = load_many(requests, self.frames, self.pool, timeout_s=self.settings.decode_timeout_s)
        for row, result in enumerate(results):
            if result.error is not None:
                # A decode error's reason names every decoder's failure, without the dataset hint of str().
                reason = getattr(result.error, "reason", None) or str(result.error)
                failures.append(FailedVideo(ids[row], paths[row], reason))
                self.log_failure(ids[row], reason)
            else:
                pending.append((row, result.frames.frames, result.frames.frame_mask))
            if len(pending) == self.settings.batch_size:
                self.encode_batch(pending, ids, vectors, valid)
                pending = []
            self.progress.update(1)
        if pending:
            self.encode_batch(pending, ids, vectors, valid)
        return vectors, valid, failures

    @torch.no_grad()
    def encode_batch(self, batch: list[tuple[int, np.ndarray, np.ndarray]], ids: list[str],
                     vectors: np.ndarray, valid: np.ndarray) -> None:
        rows = [row for row, _, _ in batch]
        frames = torch.from_numpy(np.stack([item[1] for item in batch])).to(self.device)  # [videos, F, H, W, 3]
        frame_mask = torch.from_numpy(np.stack([item[2] for item in batch])).to(self.device)  # [videos, F]
        encoded = self.model.encode_video(normalize_frames(frames), frame_mask).float().cpu().numpy()

        finite = np.isfinite(encoded).all(axis=1)
        if not finite.all():
            bad = [ids[row] for row, ok in zip(rows, finite) if not ok]
            raise ValueError(f"the student returned NaN or infinite vectors for videos {bad[:10]}; "
                             "check the checkpoint (it may be damaged or diverged)")
        vectors[rows] = encoded
        valid[rows] = True

    def log_failure(self, video_id: str, reason: str) -> None:
        if self.failures_logged < FAILURE_LOG_LIMIT:
            logger.warning("video %s not indexed: %s", video_id, reason)
        elif self.failures_logged == FAILURE_LOG_LIMIT:
            logger.warning("more videos failed to decode; failed.json in the store lists all of them")
        self.failures_logged += 1


def run_index(video_dir: str | Path, checkpoint: str | Path, output: str | Path,
              settings: IndexSettings = IndexSettings(), device: str | None = None,
              overwrite: bool = False, max_chunks: int | None = None) -> IndexResult:
    """Encode every video under video_dir into the feature store at output, resuming an unfinished one.

    With `max_chunks`, the run stops after encoding that many chunks, and a later run continues.
    """
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    output = Path(output)
    videos = list_video_files(video_dir, settings.recursive)
    if not videos:
        raise FileNotFoundError(f"no video files under {video_dir} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    logger.info("found %d video files under %s", len(videos), video_dir)

    model = load_student(checkpoint).to(device).eval()
    frames = frame_settings_for(model, settings)
    attributes = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "video_dir": str(Path(video_dir).resolve()),
        "frame_settings": asdict(frames),
        "dim": model.config.clip.embed_dim,
        "dtype": settings.dtype,
        "unit_length": True,
    }
    store = open_or_create_store(output, videos, attributes, settings, overwrite)
    ids, paths = store.ids(), store.paths()
    pending = store.pending_chunks()
    already_done = store.num_chunks - len(pending)
    if max_chunks is not None:
        pending = pending[:max_chunks]

    encoded = failed = 0
    pending_videos = sum(len(store.chunk_rows(chunk)) for chunk in pending)
    with DecodePool(settings.workers) as pool, tqdm(total=pending_videos, desc="index", unit="video") as progress:
        encoder = ChunkEncoder(model, frames, settings, pool, device, progress)
        for chunk in pending:
            rows = store.chunk_rows(chunk)
            chunk_ids = ids[rows.start:rows.stop]
            vectors, valid, failures = encoder.encode(chunk_ids, paths[rows.start:rows.stop])
            store.record_chunk_failures(chunk_ids, failures)
            store.write_chunk(chunk, vectors, valid)
            encoded += int(valid.sum())
            failed += len(failures)

    failed_total = len(store.failed())
    seconds = time.perf_counter() - started
    logger.info("index %s: %d videos, %d encoded now, %d failed now (%d listed in failed.json), %d of %d "
                "chunks done, %.1f s", output, store.count, encoded, failed, failed_total,
                already_done + len(pending), store.num_chunks, seconds)
    return IndexResult(store=output, videos=store.count, encoded=encoded, failed=failed, failed_total=failed_total,
                       chunks_already_done=already_done, complete=store.is_complete(), seconds=seconds)
