"""Evaluate a teacher through its own pairwise similarity head, so teacher and student are ranked
on the same split with the same rules.

Each text and video is encoded once; the head then scores blocks of queries against all videos.
Scores go to a temporary float32 file on disk, so memory holds one block at a time.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import metrics
from pipeline.config import Config
from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers.base import Features, Teacher, concatenate_items
from pipeline.text.tokenizer import tokenize_captions
from stages.common import SplitData, split_videos

logger = logging.getLogger(__name__)

# Teacher logits already include the teacher's logit scale, so the dual softmax runs at temperature 1,
# as TeachCLIP's DSL evaluation does on logits.
TEACHER_DUAL_SOFTMAX_TEMPERATURE = 1.0
# Text-video pairs per call of the teacher's head when no chunk size is given. By estimate from the
# heads' shapes, X-CLIP keeps a few [pairs, words, frames] float32 tensors at once (96 MiB each for
# 64 Ki pairs of 32 words and 12 frames) and X-Pool a few [pairs, dim] ones (128 MiB each at dim 512).
DEFAULT_PAIRS_PER_BLOCK = 2**16
SCORES_FILE = "teacher_scores.npy"

ScoreBlock = Callable[[slice], torch.Tensor]


@dataclass
class TeacherEncodedSplit:
    texts: Features  # items along dim 0, one per query
    videos: Features  # items along dim 0, one per video
    query_video_index: np.ndarray  # [queries] index of each query's positive video


@dataclass
class PairwiseRanks:
    text_to_video: torch.Tensor  # [queries] int64
    video_to_text: torch.Tensor  # [videos] int64
    text_to_video_dual_softmax: torch.Tensor | None  # [queries] int64, when requested


def _to_cpu(features: Features) -> Features:
    return {name: tensor.cpu() for name, tensor in features.items()}


@torch.no_grad()
def encode_teacher_split(teacher: Teacher, config: Config, split: SplitData, split_name: str,
                         device: torch.device) -> TeacherEncodedSplit:
    """Encode every query and every video of a split once with the teacher's encoders."""
    teacher.eval()
    samples = split.samples
    batch_size = config.train.batch_size_val

    tokens = tokenize_captions(list(samples.captions), config.datasets.max_words)
    text_chunks = []
    for start in tqdm(range(0, len(tokens.input_ids), batch_size), desc=f"{teacher.name}: texts", unit="batch",
                      leave=False):
        input_ids = torch.from_numpy(tokens.input_ids[start:start + batch_size]).long().to(device)
        attention_mask = torch.from_numpy(tokens.attention_mask[start:start + batch_size]).long().to(device)
        text_chunks.append(_to_cpu(teacher.encode_texts(input_ids, attention_mask)))

    dataset = split_videos(config, samples, split_name)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=config.datasets.num_thread_reader)
    video_chunks = []
    for batch in tqdm(loader, desc=f"{teacher.name}: videos", unit="batch"):
        frames = normalize_frames(batch["frames"].to(device))  # [videos, frames, 3, H, W]
        video_chunks.append(_to_cpu(teacher.encode_videos(frames, batch["frame_mask"].to(device).long())))

    return TeacherEncodedSplit(
        texts=concatenate_items(text_chunks),
        videos=concatenate_items(video_chunks),
        query_video_index=samples.video_index.astype(np.int64),
    )


def teacher_score_block(teacher: Teacher, encoded: TeacherEncodedSplit, device: torch.device) -> ScoreBlock:
    """Return a function that scores the queries of a row slice against all videos: logits [rows, videos]."""
    videos = {name: tensor.to(device) for name, tensor in encoded.videos.items()}

    @torch.no_grad()
    def score(rows: slice) -> torch.Tensor:
        texts = {name: tensor[rows].to(device) for name, tensor in encoded.texts.items()}
        return teacher.score(texts, videos)

    return score


def rank_pairwise(score_block: ScoreBlock, queries: int, videos: int, query_video_index: np.ndarray | torch.Tensor,
                  scores_path: Path, chunk_size: int | None = None,
                  dual_softmax_temperature: float | None = None) -> PairwiseRanks:
    """Rank both directions from a pairwise scorer, `chunk_size` queries per call of `score_block`.

    Text-to-video ranks come from `metrics.query_ranks` on each block. The blocks are also written to
    a float32 [queries, videos] file at `scores_path`. Column blocks of that file give the
    video-to-text ranks, which rank a video's best caption among all captions as
    `metrics.video_to_text_ranks` does with caption candidates. Row blocks of it give the query-axis
    softmax of the dual softmax. Memory keeps about chunk_size x videos scores at a time, and ties
    count against the positive.
    """
    positive = torch.as_tensor(np.asarray(query_video_index), dtype=torch.int64).reshape(-1)
    if positive.numel() != queries:
        raise ValueError(f"query_video_index has {positive.numel()} entries but there are {queries} queries")
    rows = chunk_size or max(1, DEFAULT_PAIRS_PER_BLOCK // max(videos, 1))
    if rows < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    logger.info("scoring %d queries against %d videos, %d queries per block", queries, videos, rows)

    scores = np.lib.format.open_memmap(scores_path, mode="w+", dtype=np.float32, shape=(queries, videos))
    positive_scores = torch.empty(queries, dtype=torch.float32)
    text_to_video = []
    for start in tqdm(range(0, queries, rows), desc="scoring", unit="block", leave=False):
        stop = min(start + rows, queries)
        block = score_block(slice(start, stop)).detach().float().cpu()  # [rows, videos]
        if tuple(block.shape) != (stop - start, videos):
            raise ValueError(f"the scorer returned shape {tuple(block.shape)} for queries {start}:{stop}, "
                             f"expected ({stop - start}, {videos})")
        text_to_video.append(metrics.query_ranks(block, positive[start:stop]))
        positive_scores[start:stop] = block.gather(1, positive[start:stop].view(-1, 1)).squeeze(1)
        scores[start:stop] = block.numpy()
    scores.flush()

    columns = max(1, rows * videos // max(queries, 1))
    video_to_text = _video_to_text_from_scores(scores, positive, positive_scores, columns)

    dual = None
    if dual_softmax_temperature is not None:
        dual = _dual_softmax_ranks(scores, positive, rows, dual_softmax_temperature)
    del scores
    return PairwiseRanks(text_to_video=torch.cat(text_to_video), video_to_text=video_to_text,
                         text_to_video_dual_softmax=dual)


def _video_to_text_from_scores(scores: np.ndarray, positive: torch.Tensor, positive_scores: torch.Tensor,
                               columns: int) -> torch.Tensor:
    """Rank each video's best caption among all captions, reading `columns` videos of scores at a time.

    `metrics.query_ranks` on the transposed block counts every caption scoring at least the best own
    caption. The video's other own captions that tie with its best are taken back out, so only other
    videos' captions count against it.
    """
    queries, videos = scores.shape
    caption_counts = torch.bincount(positive, minlength=videos)
    if bool((caption_counts == 0).any()):
        missing = torch.nonzero(caption_counts == 0).squeeze(1)[:10].tolist()
        raise ValueError(f"{int((caption_counts == 0).sum())} videos have no caption, so they have no "
                         f"video-to-text rank, for example video indices {missing}")

    best_score = torch.full((videos,), float("-inf"))
    best_score.scatter_reduce_(0, positive, positive_scores, reduce="amax")  # [videos]
    is_best = positive_scores == best_score[positive]  # [queries], captions tied at their video's best
    best_caption = torch.full((videos,), -1, dtype=torch.int64)
    best_caption.scatter_reduce_(0, positive[is_best], torch.nonzero(is_best).squeeze(1), reduce="amax")
    tied_own_captions = torch.bincount(positive[is_best], minlength=videos)  # [videos], at least 1

    ranks = []
    for start in range(0, videos, columns):
        stop = min(start + columns, videos)
        block = torch.from_numpy(np.ascontiguousarray(scores[:, start:stop]))  # [queries, columns]
        counted = metrics.query_ranks(block.T, best_caption[start:stop])  # [columns]
        ranks.append(counted - (tied_own_captions[start:stop] - 1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def _dual_softmax_ranks(scores: np.ndarray, positive: torch.Tensor, rows: int, temperature: float) -> torch.Tensor:
    """Text-to-video ranks after re-weighting each score by its softmax over all queries (`metrics.dual_softmax`)."""
    if not temperature > 0:
        raise ValueError(f"dual softmax temperature must be positive, got {temperature}")
    queries = scores.shape[0]

    logsumexp = None
    for start in range(0, queries, rows):
        block = torch.from_numpy(np.asarray(scores[start:start + rows]))  # [rows, videos]
        partial = torch.logsumexp(block / temperature, dim=0)  # [videos]
        logsumexp = partial if logsumexp is None else torch.logaddexp(logsumexp, partial)

    ranks = []
    for start in range(0, queries, rows):
        block = torch.from_numpy(np.asarray(scores[start:start + rows]))  # [rows, videos]
        reweighted = block * torch.exp(block / temperature - logsumexp.unsqueeze(0))
        ranks.append(metrics.query_ranks(reweighted, positive[start:start + rows]))
    return torch.cat(ranks)


def score_teacher_split(teacher: Teacher, encoded: TeacherEncodedSplit, device: torch.device,
                        chunk_size: int | None = None, dual_softmax: bool = False,
                        work_dir: Path | None = None) -> dict:
    """Metrics of a teacher on an encoded split, in the layout of `stages.evaluate.score_split`."""
    queries = len(encoded.query_video_index)
    videos = next(iter(encoded.videos.values())).shape[0]
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="teacher-scores-") as directory:
        ranks = rank_pairwise(
            teacher_score_block(teacher, encoded, device), queries, videos, encoded.query_video_index,
            Path(directory) / SCORES_FILE, chunk_size=chunk_size,
            dual_softmax_temperature=TEACHER_DUAL_SOFTMAX_TEMPERATURE if dual_softmax else None,
        )

    result = {
        "text_to_video": metrics.recall_metrics(ranks.text_to_video),
        "video_to_text": metrics.recall_metrics(ranks.video_to_text),
        "tie_rule": metrics.TIE_RULE,
        "queries": queries,
        "videos": videos,
        "t2v_ranks": ranks.text_to_video.tolist(),
        "v2t_ranks": ranks.video_to_text.tolist(),
    }
    if ranks.text_to_video_dual_softmax is not None:
        result["text_to_video_dual_softmax"] = metrics.recall_metrics(ranks.text_to_video_dual_softmax)
    return result
