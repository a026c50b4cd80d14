"""Evaluate: encode each video to one holistic vector and each query to one vector, then rank.

Reports text-to-video and video-to-text R@1, R@5, R@10, R@50, median and mean rank, with exactly
one rank per query (ties count against the positive), and writes per-query ranks, the features
and a PNG report. Teachers are ranked through their own pairwise heads (`stages.evaluate_teacher`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import metrics
from pipeline.config import Config
from pipeline.exports import FeatureSet, SplitFeatures, export_split_features
from pipeline.models.factory import load_student
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import TeachCLIPStudent
from pipeline.models.teachers import canonical_teacher_name, load_teacher
from pipeline.report import REPORT_FILE, STUDENT, RankSeries, write_rank_report
from pipeline.text.tokenizer import tokenize_captions
from stages.common import SplitData, load_split, split_videos
from stages.evaluate_teacher import encode_teacher_split, score_teacher_split

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.csv"
VIDEO_RANKS_FILE = "video_ranks.csv"
DEFAULT_EXPORTS = ("zarr",)
METRIC_ORDER = ("R1", "R5", "R10", "R50", "MedianR", "MeanR")
# Dual softmax on unit-vector cosines; equals TeachCLIP's temperature 1 on logits scaled by CLIP's 100.
DUAL_SOFTMAX_TEMPERATURE = 0.01


@dataclass
class EncodedSplit:
    text_vectors: torch.Tensor  # [queries, dim], unit length
    video_vectors: torch.Tensor  # [videos, dim], unit length
    query_video_index: np.ndarray  # [queries] index of each query's positive video


@torch.no_grad()
def encode_split(model: TeachCLIPStudent, config: Config, split: SplitData, split_name: str,
                 device: torch.device) -> EncodedSplit:
    """Encode every query and every video of a split with the student."""
    model.eval()
    samples = split.samples
    batch_size = config.train.batch_size_val

    tokens = tokenize_captions(list(samples.captions), config.datasets.max_words)
    text_chunks = []
    for start in tqdm(range(0, len(tokens.input_ids), batch_size), desc=f"{split_name}: texts", unit="batch", leave=False):
        input_ids = torch.from_numpy(tokens.input_ids[start:start + batch_size]).long().to(device)
        text_chunks.append(torch.nn.functional.normalize(model.encode_text(input_ids), dim=-1).cpu())

    dataset = split_videos(config, samples, split_name)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=config.datasets.num_thread_reader)
    video_chunks = []
    for batch in tqdm(loader, desc=f"{split_name}: videos", unit="batch"):
        frames = normalize_frames(batch["frames"].to(device))  # [videos, frames, 3, H, W]
        video_chunks.append(model.encode_video(frames, batch["frame_mask"].to(device)).cpu())

    return EncodedSplit(
        text_vectors=torch.cat(text_chunks),
        video_vectors=torch.cat(video_chunks),
        query_video_index=samples.video_index.astype(np.int64),
    )


def score_split(encoded: EncodedSplit, chunk_size: int | None, dual_softmax: bool = False) -> dict:
    """Text-to-video and video-to-text metrics of an encoded split; ranks are exact, ties against the positive."""
    positive = torch.from_numpy(encoded.query_video_index)
    t2v_ranks = metrics.chunked_query_ranks(encoded.text_vectors, encoded.video_vectors, positive, chunk_size=chunk_size)
    v2t_ranks = metrics.chunked_video_to_text_ranks(encoded.text_vectors, encoded.video_vectors, positive,
                                                     chunk_size=chunk_size)
    result = {
        "text_to_video": metrics.recall_metrics(t2v_ranks),
        "video_to_text": metrics.recall_metrics(v2t_ranks),
        "tie_rule": metrics.TIE_RULE,
        "queries": int(len(positive)),
        "videos": int(encoded.video_vectors.shape[0]),
        "t2v_ranks": np.asarray(t2v_ranks).tolist(),
        "v2t_ranks": np.asarray(v2t_ranks).tolist(),
    }
    if dual_softmax:
        reranked = metrics.chunked_query_ranks(encoded.text_vectors, encoded.video_vectors, positive,
                                               chunk_size=chunk_size,
                                               dual_softmax_temperature=DUAL_SOFTMAX_TEMPERATURE)
        result["text_to_video_dual_softmax"] = metrics.recall_metrics(reranked)
    return result


def format_table(result: dict) -> str:
    directions = [name for name in ("text_to_video", "video_to_text", "text_to_video_dual_softmax") if name in result]
    width = max(len("direction"), *(len(name) for name in directions)) + 2
    lines = [f"{'direction':<{width}}" + "".join(f"{name:>9}" for name in METRIC_ORDER)]
    for direction in directions:
        row = result[direction]
        lines.append(f"{direction:<{width}}" + "".join(f"{row[name]:>9.1f}" for name in METRIC_ORDER))
    lines.append(f"{result['queries']} queries, {result['videos']} videos; ties count against the positive")
    return "\n".join(lines)


def write_outputs(result: dict, split: SplitData, output_dir: Path, extra: dict) -> Path:
    """Write metrics.json, the per-query ranks (ranks.csv) and the per-video ranks (video_ranks.csv).

    Takes the rank lists out of `result`, so it holds only the summary afterwards.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    ranks = result.pop("t2v_ranks")
    video_ranks = result.pop("v2t_ranks", None)
    samples = split.samples
    with (output_dir / RANKS_FILE).open("w", encoding="utf-8") as handle:
        handle.write("query_id,video_id,rank\n")
        for text_id, video_index, rank in zip(samples.text_ids, samples.video_index, ranks):
            handle.write(f"{text_id},{samples.video_ids[video_index]},{rank}\n")
    if video_ranks is not None:
        with (output_dir / VIDEO_RANKS_FILE).open("w", encoding="utf-8") as handle:
            handle.write("video_id,rank\n")
            for video_id, rank in zip(samples.video_ids, video_ranks):
                handle.write(f"{video_id},{rank}\n")
    path = output_dir / METRICS_FILE
    path.write_text(json.dumps({**extra, **result}, indent=2))
    logger.info("wrote %s, %s and %s", path, output_dir / RANKS_FILE, output_dir / VIDEO_RANKS_FILE)
    return path


def split_features(encoded: EncodedSplit, split: SplitData) -> SplitFeatures:
    samples = split.samples
    return SplitFeatures(
        texts=FeatureSet(ids=tuple(samples.text_ids), features=encoded.text_vectors.numpy()),
        videos=FeatureSet(ids=tuple(samples.video_ids), features=encoded.video_vectors.numpy()),
        query_video_index=encoded.query_video_index,
    )


def write_report(result: dict, output_dir: Path, title: str) -> Path:
    """Draw the recall-at-K curves and rank histograms of both directions into report.png."""
    series = [
        RankSeries("text-to-video", np.asarray(result["t2v_ranks"]), result["videos"]),
        RankSeries("video-to-text", np.asarray(result["v2t_ranks"]), result["queries"]),
    ]
    return write_rank_report(series, output_dir / REPORT_FILE, title=title)


def evaluate_model(model: TeachCLIPStudent, config: Config, split_name: str, device: torch.device,
                   split: SplitData | None = None) -> dict:
    """Metrics of `model` on a split (used by distill for validation and by run_evaluate)."""
    split = split or load_split(config, split_name)
    encoded = encode_split(model, config, split, split_name, device)
    return score_split(encoded, config.evaluate.chunk_size or None, config.evaluate.dual_softmax)


def run_evaluate(config: Config, checkpoint: str | Path, split_name: str = "test",
                 output_dir: str | Path | None = None, device: str | None = None, *,
                 teacher: str | None = None, export_features: tuple[str, ...] = DEFAULT_EXPORTS,
                 report: bool = True, teacher_chunk_size: int | None = None) -> dict:
    """Evaluate a student checkpoint, or with `teacher` a teacher checkpoint, on a split.

    Writes metrics.json, ranks.csv, video_ranks.csv, and report.png unless `report` is False. A
    student's text and video features go out in each format of `export_features` ("zarr", "hdf5",
    "bigfile"). Teachers have no single vector per item, so nothing is exported for them.
    `teacher_chunk_size` sets the queries per call of a teacher's head (default: about 64 Ki pairs).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_name = canonical_teacher_name(teacher) if teacher else STUDENT
    output_dir = Path(output_dir or config.evaluate.output_dir or Path(config.train.output_dir) / "eval")
    # The checkpoint is loaded before the videos are scanned, so a wrong path fails at once.
    if teacher:
        model = load_teacher(model_name, checkpoint, config.model.precision).to(device)
    else:
        model = load_student(checkpoint, config.model.precision).to(device)
    split = load_split(config, split_name, report_dir=output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    extra = {"model": model_name, "checkpoint": str(checkpoint), "split": split_name,
             "skipped_videos": sorted(split.skipped)}

    encoded = None
    if teacher:
        teacher_encoded = encode_teacher_split(model, config, split, split_name, device)
        result = score_teacher_split(model, teacher_encoded, device, chunk_size=teacher_chunk_size,
                                     dual_softmax=config.evaluate.dual_softmax, work_dir=output_dir)
    else:
        encoded = encode_split(model, config, split, split_name, device)
        result = score_split(encoded, config.evaluate.chunk_size or None, config.evaluate.dual_softmax)

    if report:
        extra["report"] = str(write_report(result, output_dir, f"{model_name} on {split_name}: {checkpoint}"))
    exports = [name for name in export_features if name != "none"]
    if encoded is not None and exports:
        written = export_split_features(output_dir, exports, split_features(encoded, split),
                                        attributes={"checkpoint": str(checkpoint), "split": split_name,
                                                    "unit_length": True})
        extra["features"] = {name: str(path) for name, path in written.items()}
    elif exports:
        logger.info("no features exported: a %s teacher scores pairs with its own head, not single vectors",
                    model_name)

    write_outputs(result, split, output_dir, extra)
    result.update(extra)
    return result
