"""Retrieval ranks and recall metrics: one exact rank per query, computed in memory-bounded chunks.

A rank counts the candidates that score at least as high as the positive, so no row is sorted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Tie rules, written into metrics files beside the numbers they produced.
# The default is pessimistic: a candidate that ties with the positive is ranked above it.
TIE_RULE = "ties_count_against_positive"
OPTIMISTIC_TIE_RULE = "ties_count_for_positive"
TIE_RULES = (TIE_RULE, OPTIMISTIC_TIE_RULE)

# Video-to-text candidates: every caption (default), or one entry per video scored by its
# best caption, which is how TeachCLIP's and CLIP4Clip's evaluation code groups them.
CAPTION_CANDIDATES = "captions"
VIDEO_CANDIDATES = "videos"

RECALL_CUTOFFS = (1, 5, 10, 50)

# When no chunk size is given, the block is cut so that its scores take at most this many bytes.
# Counting adds one buffer of _COUNT_SLICE_ELEMENTS floats (16 MiB in float32).
DEFAULT_BLOCK_BYTES = 256 * 2**20

# Scores compared per slice when counting, which bounds the counting buffer.
_COUNT_SLICE_ELEMENTS = 2**22

# Integers up to 2**24 are exact in float32, so row counts below it can be summed in float32.
_EXACT_FLOAT32_COUNT = 2**24

# Indices listed in an error message before the rest are summarised as a count.
_MAX_INDICES_IN_MESSAGE = 10


class NonFiniteScoreError(ValueError):
    """A similarity score or feature is NaN or infinite, so ranks would be meaningless."""


def query_ranks(sim_matrix: torch.Tensor | np.ndarray, positive_index: torch.Tensor | np.ndarray,
                tie_rule: str = TIE_RULE) -> torch.Tensor:
    """Return the 1-based rank of each query's positive candidate, int64 [queries].

    sim_matrix is [queries, candidates] and positive_index [queries] gives each query's positive
    column. The rank is 1 + the number of other candidates scoring at least as high as the
    positive (TIE_RULE), or strictly higher (OPTIMISTIC_TIE_RULE). Each query gets exactly one
    rank. TeachCLIP's evaluation sorts each row and looks the positive's score up, which returns
    several positions for one query when scores tie and then averages over the wrong count.
    """
    sim_matrix = torch.as_tensor(sim_matrix)
    positive_index = _check_positive_index(positive_index, sim_matrix.shape, "positive_index")
    _check_tie_rule(tie_rule)
    _check_finite_scores(sim_matrix, "sim_matrix")
    return _rank_rows(sim_matrix, positive_index.to(sim_matrix.device), tie_rule).cpu()


def chunked_query_ranks(query_features: torch.Tensor, video_features: torch.Tensor,
                        positive_index: torch.Tensor | np.ndarray, chunk_size: int | None = None,
                        device: torch.device | str | None = None, tie_rule: str = TIE_RULE,
                        dtype: torch.dtype = torch.float32,
                        dual_softmax_temperature: float | None = None) -> torch.Tensor:
    """Rank each query's positive video with scores `query_features @ video_features.T`.

    query_features: [queries, dim]; video_features: [videos, dim]; positive_index: [queries].
    Scores are computed for `chunk_size` queries at a time against all videos, on `device`, in
    `dtype`, so memory holds the features plus one [chunk_size, videos] block. With
    `dual_softmax_temperature`, each score is re-weighted by its softmax over all queries
    (see `dual_softmax`), which takes one extra pass over the blocks and two more block-sized
    temporaries. Ranks follow `query_ranks`.

    NOTE: BLAS picks kernels by block shape, so a float32 score can differ in its last bit between
    chunk sizes (seen with MKL on CPU). Ranks then differ only between candidates that score
    within rounding of each other. With exactly representable scores, every chunk size agrees.
    """
    _check_tie_rule(tie_rule)
    queries, videos = _prepare_features(query_features, video_features, device, dtype)
    positive_index = _check_positive_index(positive_index, (queries.shape[0], videos.shape[0]),
                                           "positive_index").to(queries.device)
    rows = _rows_per_block(chunk_size, videos.shape[0], videos.element_size())
    logger.info("ranking %d queries against %d videos, %d queries per block, on %s",
                queries.shape[0], videos.shape[0], rows, videos.device)

    query_axis_lse = None
    if dual_softmax_temperature is not None:
        query_axis_lse = _logsumexp_over_blocks(_query_blocks(queries, videos, rows),
                                                dual_softmax_temperature, dim=0)

    ranks = []
    for start, block in _query_blocks(queries, videos, rows):  # block: [rows, videos]
        if query_axis_lse is not None:
            block = _reweight(block, query_axis_lse.unsqueeze(0), dual_softmax_temperature)
        ranks.append(_rank_rows(block, positive_index[start:start + block.shape[0]], tie_rule))
    return torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.int64)


def video_to_text_ranks(sim_matrix: torch.Tensor | np.ndarray,
                        query_video_index: torch.Tensor | np.ndarray, tie_rule: str = TIE_RULE,
                        candidates: str = CAPTION_CANDIDATES) -> torch.Tensor:
    """Return each video's rank as a query over the captions, int64 [videos].

    sim_matrix is [captions, videos] (the text-to-video matrix), and query_video_index [captions]
    gives each caption's video. With CAPTION_CANDIDATES a video's rank is the position of its
    best-scored caption among all captions: 1 + the number of other videos' captions scoring at
    least as high (TIE_RULE) or strictly higher (OPTIMISTIC_TIE_RULE). The video's own captions
    never count against it. With VIDEO_CANDIDATES each video is scored by its best caption
    and ranked among videos, as in TeachCLIP's evaluation, but with one rank per video.
    Every video needs at least one caption.
    """
    sim_matrix = torch.as_tensor(sim_matrix)
    query_video_index = _check_positive_index(query_video_index, sim_matrix.shape, "query_video_index")
    _check_tie_rule(tie_rule)
    _check_candidates(candidates)
    _check_every_video_has_caption(query_video_index, sim_matrix.shape[1])
    _check_finite_scores(sim_matrix, "sim_matrix")
    return _rank_videos_over_captions(sim_matrix, query_video_index.to(sim_matrix.device), 0,
                                      tie_rule, candidates).cpu()


def chunked_video_to_text_ranks(query_features: torch.Tensor, video_features: torch.Tensor,
                                query_video_index: torch.Tensor | np.ndarray,
                                chunk_size: int | None = None,
                                device: torch.device | str | None = None, tie_rule: str = TIE_RULE,
                                candidates: str = CAPTION_CANDIDATES,
                                dtype: torch.dtype = torch.float32,
                                dual_softmax_temperature: float | None = None) -> torch.Tensor:
    """Video-to-text ranks as `video_to_text_ranks`, scored `chunk_size` videos at a time.

    query_features: [captions, dim]; video_features: [videos, dim]; query_video_index: [captions].
    Memory holds the features plus one [captions, chunk_size] block. With
    `dual_softmax_temperature`, each score is re-weighted by its softmax over all videos, the
    query axis of this direction, at the cost of one extra pass and two block-sized temporaries.
    """
    _check_tie_rule(tie_rule)
    _check_candidates(candidates)
    queries, videos = _prepare_features(query_features, video_features, device, dtype)
    query_video_index = _check_positive_index(query_video_index, (queries.shape[0], videos.shape[0]),
                                              "query_video_index").to(queries.device)
    _check_every_video_has_caption(query_video_index, videos.shape[0])
    columns = _rows_per_block(chunk_size, queries.shape[0], queries.element_size())
    logger.info("ranking %d videos against %d captions, %d videos per block, on %s",
                videos.shape[0], queries.shape[0], columns, videos.device)

    video_axis_lse = None
    if dual_softmax_temperature is not None:
        video_axis_lse = _logsumexp_over_blocks(_video_blocks(queries, videos, columns),
                                                dual_softmax_temperature, dim=1)

    ranks = []
    for start, block in _video_blocks(queries, videos, columns):  # block: [captions, columns]
        if video_axis_lse is not None:
            block = _reweight(block, video_axis_lse.unsqueeze(1), dual_softmax_temperature)
        ranks.append(_rank_videos_over_captions(block, query_video_index, start, tie_rule, candidates))
    return torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.int64)


def recall_metrics(ranks: torch.Tensor | np.ndarray) -> dict[str, float | int]:
    """Summarise 1-based ranks: R1, R5, R10, R50 (percent), MedianR, MeanR and count.

    MedianR averages the two middle ranks for an even count, as numpy's median does.
    """
    ranks = np.asarray(torch.as_tensor(ranks).cpu(), dtype=np.int64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("cannot compute recall metrics from zero ranks; evaluate at least one query")
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based, but the smallest given is {ranks.min()}")

    metrics: dict[str, float | int] = {}
    for cutoff in RECALL_CUTOFFS:
        metrics[f"R{cutoff}"] = float(np.count_nonzero(ranks <= cutoff)) * 100.0 / ranks.size
    metrics["MedianR"] = float(np.median(ranks))
    metrics["MeanR"] = float(np.mean(ranks))
    metrics["count"] = int(ranks.size)
    return metrics


def dual_softmax(sim_matrix: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Re-weight scores by their softmax over the query axis (dual softmax, DSL).

    Returns sim * softmax(sim / temperature, dim=0) for a [queries, candidates] matrix, as
    TeachCLIP's `compute_dsl_metrics` does with temperature 1 on logits that already include
    CLIP's logit scale. For plain cosine scores, temperature 0.01 is the equivalent. The prior uses
    every query at once, so it is a transductive re-ranking. Report it beside the plain numbers.
    """
    sim_matrix = torch.as_tensor(sim_matrix)
    if not temperature > 0:
        raise ValueError(f"dual softmax temperature must be positive, got {temperature}")
    return sim_matrix * torch.softmax(sim_matrix / temperature, dim=0)


def _rank_rows(scores: torch.Tensor, positive_index: torch.Tensor, tie_rule: str) -> torch.Tensor:
    """Rank each row's positive column among that row's scores; scores [rows, candidates]."""
    positive_scores = scores.gather(1, positive_index.view(-1, 1))  # [rows, 1]
    if tie_rule == TIE_RULE:
        # The positive is among the scores at least as high as itself, so the count is 1 + the others.
        return _count_compared(scores, positive_scores.view(-1), torch.ge, dim=1)
    return 1 + _count_compared(scores, positive_scores.view(-1), torch.gt, dim=1)


def _count_compared(scores: torch.Tensor, thresholds: torch.Tensor,
                    compare: Callable[..., torch.Tensor], dim: int) -> torch.Tensor:
    """Count the scores that compare true against a threshold per row (dim=1) or per column (dim=0).

    scores: [rows, columns]; thresholds: [rows] for dim=1, [columns] for dim=0. Returns int64 counts.
    Rows are compared a slice at a time, and each comparison is written as 0.0 / 1.0 into one reused
    float buffer and summed there. Summing a boolean mask instead allocates an int64 copy of every
    slice, and those freed copies stayed resident (glibc malloc), which took a 10,000 x 1,000,000
    ranking from 2.4 to 7.1 GiB. Float32 sums of ones are exact below 2**24.
    """
    rows, columns = scores.shape
    rows_per_slice = max(1, _COUNT_SLICE_ELEMENTS // max(columns, 1))
    count_dtype = torch.float32 if scores.shape[dim] < _EXACT_FLOAT32_COUNT else torch.float64
    indicator_buffer = torch.empty(min(rows_per_slice, rows) * columns, dtype=count_dtype, device=scores.device)

    row_counts = []
    column_counts = torch.zeros(columns, dtype=count_dtype, device=scores.device)
    for start in range(0, rows, rows_per_slice):
        slice_scores = scores[start:start + rows_per_slice]
        indicators = indicator_buffer[:slice_scores.numel()].view(slice_scores.shape)
        if dim == 1:
            compare(slice_scores, thresholds[start:start + rows_per_slice].unsqueeze(1), out=indicators)
            row_counts.append(indicators.sum(dim=1))
        else:
            compare(slice_scores, thresholds.unsqueeze(0), out=indicators)
            column_counts += indicators.sum(dim=0)

    if dim == 0:
        return column_counts.to(torch.int64)
    if not row_counts:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    return torch.cat(row_counts).to(torch.int64)


def _rank_videos_over_captions(scores: torch.Tensor, query_video_index: torch.Tensor, first_video: int,
                               tie_rule: str, candidates: str) -> torch.Tensor:
    """Video-to-text ranks for the videos of one column block; scores [captions, block videos]."""
    block_videos = scores.shape[1]
    local_video = query_video_index - first_video  # [captions], the caption's column in this block
    in_block = (local_video >= 0) & (local_video < block_videos)
    captions_in_block = torch.nonzero(in_block).squeeze(1)
    columns_in_block = local_video[captions_in_block]

    positive_scores = scores[captions_in_block, columns_in_block]  # [captions in block]
    best_positive = torch.full((block_videos,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best_positive.scatter_reduce_(0, columns_in_block, positive_scores, reduce="amax")  # [block videos]

    if candidates == VIDEO_CANDIDATES:
        return _rank_videos_by_best_caption(scores, query_video_index, first_video, best_positive, tie_rule)

    if tie_rule == TIE_RULE:
        counted = _count_compared(scores, best_positive, torch.ge, dim=0)  # [block videos], own captions included
        own_counted = (positive_scores >= best_positive[columns_in_block]).to(torch.int64)
    else:
        counted = _count_compared(scores, best_positive, torch.gt, dim=0)
        own_counted = torch.zeros_like(columns_in_block)  # no caption beats its video's best
    own_per_video = torch.zeros(block_videos, dtype=torch.int64, device=scores.device)
    own_per_video.scatter_add_(0, columns_in_block, own_counted)
    return 1 + counted - own_per_video


def _rank_videos_by_best_caption(scores: torch.Tensor, query_video_index: torch.Tensor, first_video: int,
                                 best_positive: torch.Tensor, tie_rule: str) -> torch.Tensor:
    """Rank videos among videos, each candidate video scored by its best caption."""
    total_videos = int(query_video_index.max()) + 1  # every video has a caption, checked before
    index = query_video_index.view(-1, 1).expand_as(scores)  # [captions, block videos]
    best_per_video = torch.full((total_videos, scores.shape[1]), float("-inf"), dtype=scores.dtype,
                                device=scores.device)
    best_per_video.scatter_reduce_(0, index, scores, reduce="amax")  # [candidate videos, block videos]

    if tie_rule == TIE_RULE:
        # The video's own entry equals best_positive, so this count is 1 + the others.
        return _count_compared(best_per_video, best_positive, torch.ge, dim=0)
    return 1 + _count_compared(best_per_video, best_positive, torch.gt, dim=0)


def _prepare_features(query_features: torch.Tensor, video_features: torch.Tensor,
                      device: torch.device | str | None,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    queries = torch.as_tensor(query_features)
    videos = torch.as_tensor(video_features)
    if queries.dim() != 2 or videos.dim() != 2 or queries.shape[1] != videos.shape[1]:
        raise ValueError(f"features must be [queries, dim] and [videos, dim] with the same dim, got "
                         f"{tuple(queries.shape)} and {tuple(videos.shape)}")
    if device is None:
        device = queries.device
    queries = queries.to(device=device, dtype=dtype)
    videos = videos.to(device=device, dtype=dtype)
    _check_finite_scores(queries, "query_features")
    _check_finite_scores(videos, "video_features")
    return queries, videos


def _rows_per_block(chunk_size: int | None, row_length: int, element_size: int) -> int:
    if chunk_size is None:
        return max(1, DEFAULT_BLOCK_BYTES // (max(row_length, 1) * element_size))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return chunk_size


def _query_blocks(queries: torch.Tensor, videos: torch.Tensor,
                  rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first query, scores [rows, videos]) for each query block.

    Every block is written into one reused buffer, so a block is valid only until the next one is
    requested. Reusing it keeps a single block in memory instead of a new allocation per block.
    """
    buffer = queries.new_empty(min(rows, queries.shape[0]) * videos.shape[0])
    for start in range(0, queries.shape[0], rows):
        block_queries = queries[start:start + rows]
        block = buffer[:block_queries.shape[0] * videos.shape[0]].view(block_queries.shape[0], videos.shape[0])
        yield start, torch.matmul(block_queries, videos.T, out=block)  # [rows, videos]


def _video_blocks(queries: torch.Tensor, videos: torch.Tensor,
                  columns: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first video, scores [queries, columns]) for each video block, in one reused buffer."""
    buffer = queries.new_empty(queries.shape[0] * min(columns, videos.shape[0]))
    for start in range(0, videos.shape[0], columns):
        block_videos = videos[start:start + columns]
        block = buffer[:queries.shape[0] * block_videos.shape[0]].view(queries.shape[0], block_videos.shape[0])
        yield start, torch.matmul(queries, block_videos.T, out=block)  # [queries, columns]


def _logsumexp_over_blocks(blocks: Iterator[tuple[int, torch.Tensor]], temperature: float,
                           dim: int) -> torch.Tensor:
    """Log-sum-exp of score / temperature along `dim`, accumulated over blocks split along `dim`."""
    if not temperature > 0:
        raise ValueError(f"dual softmax temperature must be positive, got {temperature}")
    total = None
    for _, block in blocks:
        partial = torch.logsumexp(block / temperature, dim=dim)
        total = partial if total is None else torch.logaddexp(total, partial)
    return total


def _reweight(block: torch.Tensor, logsumexp: torch.Tensor, temperature: float) -> torch.Tensor:
    return block * torch.exp(block / temperature - logsumexp)


def _check_positive_index(index: torch.Tensor | np.ndarray, matrix_shape: tuple[int, ...] | torch.Size,
                          name: str) -> torch.Tensor:
    if len(matrix_shape) != 2:
        raise ValueError(f"scores must be a 2-D [queries, candidates] matrix, got shape {tuple(matrix_shape)}")
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"{name} must contain integer indices, got dtype {index.dtype}")
    index = index.to(torch.int64).reshape(-1)
    rows, columns = matrix_shape
    if index.numel() != rows:
        raise ValueError(f"{name} has {index.numel()} entries but there are {rows} queries")
    out_of_range = torch.nonzero((index < 0) | (index >= columns)).squeeze(1)
    if out_of_range.numel():
        first = int(out_of_range[0])
        raise ValueError(f"{name}[{first}] = {int(index[first])} is outside [0, {columns}) "
                         f"({out_of_range.numel()} such entries); check the query-to-video mapping")
    return index


def _check_every_video_has_caption(query_video_index: torch.Tensor, videos: int) -> None:
    caption_counts = torch.bincount(query_video_index.cpu(), minlength=videos)
    missing = torch.nonzero(caption_counts == 0).squeeze(1)
    if missing.numel():
        raise ValueError(f"{missing.numel()} videos have no caption, so they have no video-to-text "
                         f"rank, for example video indices {_short_list(missing)}; "
                         "drop them from the video-to-text evaluation")


def _check_finite_scores(values: torch.Tensor, name: str) -> None:
    # One sum is cheap and is NaN or infinite whenever a value is; only then find the rows.
    if values.numel() == 0 or bool(torch.isfinite(values.sum())):
        return
    finite_rows = torch.isfinite(values).all(dim=-1) if values.dim() > 1 else torch.isfinite(values)
    bad_rows = torch.nonzero(~finite_rows).reshape(-1)
    if bad_rows.numel():
        raise NonFiniteScoreError(f"{name} has NaN or infinite values in {bad_rows.numel()} rows, for "
                                  f"example rows {_short_list(bad_rows)}; check the encoder outputs")


def _check_tie_rule(tie_rule: str) -> None:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"invalid tie_rule {tie_rule!r}; expected one of {TIE_RULES}")


def _check_candidates(candidates: str) -> None:
    if candidates not in (CAPTION_CANDIDATES, VIDEO_CANDIDATES):
        raise ValueError(f"invalid candidates {candidates!r}; expected "
                         f"{CAPTION_CANDIDATES!r} or {VIDEO_CANDIDATES!r}")


def _short_list(indices: torch.Tensor) -> str:
    listed = ", ".join(str(int(i)) for i in indices[:_MAX_INDICES_IN_MESSAGE])
    return f"[{listed}, ...]" if indices.numel() > _MAX_INDICES_IN_MESSAGE else f"[{listed}]"
