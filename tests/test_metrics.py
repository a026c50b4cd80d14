"""Retrieval ranks and recalls on hand-built matrices and against independent re-computations."""

import numpy as np
import pytest
import torch

from pipeline import metrics
from pipeline.metrics import (
    OPTIMISTIC_TIE_RULE,
    TIE_RULE,
    VIDEO_CANDIDATES,
    NonFiniteScoreError,
    chunked_query_ranks,
    chunked_video_to_text_ranks,
    dual_softmax,
    query_ranks,
    recall_metrics,
    video_to_text_ranks,
)

# Captions of three videos: video 0 has two, video 1 one, video 2 two.
CAPTION_VIDEO = [0, 0, 1, 2, 2]
CAPTION_SIM = [
    [0.9, 0.1, 0.3],
    [0.4, 0.8, 0.3],
    [0.7, 0.6, 0.2],
    [0.2, 0.9, 0.5],
    [0.1, 0.6, 0.5],
]


def integer_features(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Small integers as float32: every dot product is exact in any summation order, and ties are common."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (rows, dim), generator=generator).to(torch.float32)


def argsort_ranks(sim: np.ndarray, positive_index: np.ndarray) -> np.ndarray:
    """Rank by sorting each row, as TeachCLIP's evaluation finds a positive (correct without ties)."""
    order = np.argsort(-sim, axis=1)
    return np.array([int(np.nonzero(order[i] == positive_index[i])[0][0]) + 1
                     for i in range(sim.shape[0])])


def test_ranks_of_small_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.3],
                        [0.2, 0.5, 0.8],
                        [0.1, 0.2, 0.3]])
    assert query_ranks(sim, torch.arange(3)).tolist() == [1, 2, 1]


def test_tied_positive_ranked_pessimistically():
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    assert query_ranks(sim, [0]).tolist() == [4]


def test_tied_positive_ranked_optimistically():
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    assert query_ranks(sim, [0], tie_rule=OPTIMISTIC_TIE_RULE).tolist() == [2]


def test_all_equal_row_gives_one_rank():
    sim = torch.zeros(3, 6)
    ranks = query_ranks(sim, torch.tensor([0, 2, 5]))
    assert ranks.tolist() == [6, 6, 6]
    assert ranks.dtype == torch.int64


def test_ranks_match_argsort_without_ties():
    generator = np.random.default_rng(0)
    sim = generator.standard_normal((40, 30))
    positive_index = generator.integers(0, 30, size=40)
    expected = argsort_ranks(sim, positive_index)
    assert query_ranks(sim, positive_index).tolist() == expected.tolist()


def test_several_captions_per_video_text_to_video():
    ranks = query_ranks(torch.tensor(CAPTION_SIM), CAPTION_VIDEO)
    # Every caption but the first has exactly one other video scoring above its own video.
    assert ranks.tolist() == [1, 2, 2, 2, 2]


def test_video_to_text_best_caption_rank():
    ranks = video_to_text_ranks(torch.tensor(CAPTION_SIM), CAPTION_VIDEO)
    # Video 1's caption scores 0.6; captions 1 (0.8), 3 (0.9) and 4 (0.6, a tie) count against it.
    # Video 2's two captions tie at 0.5 with no other caption as high, so it ranks first.
    assert ranks.tolist() == [1, 4, 1]


def test_video_to_text_optimistic_ties():
    ranks = video_to_text_ranks(torch.tensor(CAPTION_SIM), CAPTION_VIDEO, tie_rule=OPTIMISTIC_TIE_RULE)
    assert ranks.tolist() == [1, 3, 1]


def test_video_to_text_video_candidates():
    ranks = video_to_text_ranks(torch.tensor(CAPTION_SIM), CAPTION_VIDEO, candidates=VIDEO_CANDIDATES)
    # Column 1 by best caption per video: video 0 scores 0.8, video 2 scores 0.9, video 1 scores 0.6.
    assert ranks.tolist() == [1, 3, 1]


def test_video_candidates_match_grouped_loops():
    generator = np.random.default_rng(1)
    caption_video = np.repeat(np.arange(12), 3)
    generator.shuffle(caption_video)
    sim = generator.standard_normal((caption_video.size, 12))

    grouped = np.full((12, 12), -np.inf)  # [candidate videos, query videos]
    for caption, video in enumerate(caption_video):
        grouped[video] = np.maximum(grouped[video], sim[caption])
    expected = argsort_ranks(grouped.T, np.arange(12))

    ranks = video_to_text_ranks(sim, caption_video, candidates=VIDEO_CANDIDATES)
    assert ranks.tolist() == expected.tolist()


def test_caption_candidates_match_loops():
    generator = np.random.default_rng(2)
    caption_video = np.repeat(np.arange(10), 4)
    sim = generator.standard_normal((caption_video.size, 10))

    expected = []
    for video in range(10):
        best = max(sim[c, video] for c in range(caption_video.size) if caption_video[c] == video)
        higher = sum(1 for c in range(caption_video.size)
                     if caption_video[c] != video and sim[c, video] >= best)
        expected.append(1 + higher)

    assert video_to_text_ranks(sim, caption_video).tolist() == expected


def test_paragraph_queries_one_per_video():
    generator = np.random.default_rng(3)
    sim = generator.standard_normal((15, 15))
    diagonal = np.arange(15)
    assert query_ranks(sim, diagonal).tolist() == argsort_ranks(sim, diagonal).tolist()
    assert video_to_text_ranks(sim, diagonal).tolist() == argsort_ranks(sim.T, diagonal).tolist()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 250, None])
@pytest.mark.parametrize("tie_rule", [TIE_RULE, OPTIMISTIC_TIE_RULE])
def test_chunked_text_to_video_equals_full(chunk_size, tie_rule):
    queries, videos = integer_features(250, 16, seed=4), integer_features(90, 16, seed=5)
    positive_index = torch.randint(0, 90, (250,), generator=torch.Generator().manual_seed(6))
    full = query_ranks(queries @ videos.T, positive_index, tie_rule=tie_rule)
    chunked = chunked_query_ranks(queries, videos, positive_index, chunk_size=chunk_size, tie_rule=tie_rule)
    assert torch.equal(chunked, full)


def test_chunked_ranks_include_ties():
    queries, videos = integer_features(250, 16, seed=4), integer_features(90, 16, seed=5)
    positive_index = torch.randint(0, 90, (250,), generator=torch.Generator().manual_seed(6))
    pessimistic = chunked_query_ranks(queries, videos, positive_index, chunk_size=7)
    optimistic = chunked_query_ranks(queries, videos, positive_index, chunk_size=7,
                                     tie_rule=OPTIMISTIC_TIE_RULE)
    assert bool((pessimistic > optimistic).any())


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 30, None])
@pytest.mark.parametrize("candidates", ["captions", "videos"])
def test_chunked_video_to_text_equals_full(chunk_size, candidates):
    caption_video = torch.arange(30).repeat_interleave(3)[torch.randperm(90, generator=torch.Generator().manual_seed(7))]
    queries, videos = integer_features(90, 16, seed=8), integer_features(30, 16, seed=9)
    full = video_to_text_ranks(queries @ videos.T, caption_video, candidates=candidates)
    chunked = chunked_video_to_text_ranks(queries, videos, caption_video, chunk_size=chunk_size,
                                          candidates=candidates)
    assert torch.equal(chunked, full)


def test_chunked_dual_softmax_equals_full():
    generator = torch.Generator().manual_seed(10)
    queries = torch.randn(60, 8, generator=generator, dtype=torch.float64)
    videos = torch.randn(45, 8, generator=generator, dtype=torch.float64)
    positive_index = torch.randint(0, 45, (60,), generator=generator)
    full = query_ranks(dual_softmax(queries @ videos.T, temperature=0.5), positive_index)
    chunked = chunked_query_ranks(queries, videos, positive_index, chunk_size=7, dtype=torch.float64,
                                  dual_softmax_temperature=0.5)
    assert torch.equal(chunked, full)


def test_chunked_video_dual_softmax_equals_full():
    generator = torch.Generator().manual_seed(11)
    queries = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    videos = torch.randn(20, 8, generator=generator, dtype=torch.float64)
    caption_video = torch.arange(20).repeat(2)
    full = video_to_text_ranks(dual_softmax((queries @ videos.T).T, temperature=0.5).T, caption_video)
    chunked = chunked_video_to_text_ranks(queries, videos, caption_video, chunk_size=6, dtype=torch.float64,
                                          dual_softmax_temperature=0.5)
    assert torch.equal(chunked, full)


def test_dual_softmax_matches_formula():
    sim = np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 1.0]])
    expected = np.empty_like(sim)
    for column in range(2):
        exp = np.exp(sim[:, column] / 0.5)
        expected[:, column] = sim[:, column] * exp / exp.sum()
    result = dual_softmax(torch.tensor(sim), temperature=0.5).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_recall_metrics_by_hand():
    metrics = recall_metrics(torch.tensor([1, 2, 5, 6, 10, 11, 50, 51]))
    assert metrics["R1"] == 12.5
    assert metrics["R5"] == 37.5
    assert metrics["R10"] == 62.5
    assert metrics["R50"] == 87.5
    assert metrics["MedianR"] == 8.0
    assert metrics["MeanR"] == 17.0
    assert metrics["count"] == 8


def test_recall_metrics_odd_count_median():
    metrics = recall_metrics(np.array([3, 1, 7]))
    assert metrics["MedianR"] == 3.0
    assert metrics["MeanR"] == pytest.approx(11 / 3)


def test_recall_metrics_reject_zero_rank():
    with pytest.raises(ValueError, match="1-based"):
        recall_metrics([0, 1])


def test_out_of_range_positive_rejected():
    with pytest.raises(ValueError, match=r"positive_index\[1\] = 3 is outside \[0, 3\)"):
        query_ranks(torch.zeros(2, 3), [0, 3])


def test_nan_score_rejected():
    sim = torch.zeros(3, 3)
    sim[1, 2] = float("nan")
    with pytest.raises(NonFiniteScoreError, match=r"rows \[1\]"):
        query_ranks(sim, [0, 1, 2])


def test_video_without_caption_rejected():
    with pytest.raises(ValueError, match=r"1 videos have no caption.*\[1\]"):
        video_to_text_ranks(torch.zeros(3, 3), [0, 2, 2])


@pytest.mark.parametrize("candidates", ["captions", "videos"])
def test_counting_in_small_slices(monkeypatch, candidates):
    # A slice of 50 scores splits every row set below into many slices, as large galleries do.
    monkeypatch.setattr(metrics, "_COUNT_SLICE_ELEMENTS", 50)
    caption_video = torch.arange(30).repeat_interleave(3)
    queries, videos = integer_features(90, 16, seed=12), integer_features(30, 16, seed=13)
    sim = (queries @ videos.T).numpy()

    expected_text = argsort_free_ranks(sim, caption_video.numpy())
    assert chunked_query_ranks(queries, videos, caption_video, chunk_size=8).tolist() == expected_text

    expected_video = loop_video_to_text_ranks(sim, caption_video.numpy(), candidates)
    ranks = chunked_video_to_text_ranks(queries, videos, caption_video, chunk_size=7, candidates=candidates)
    assert ranks.tolist() == expected_video


def loop_video_to_text_ranks(sim: np.ndarray, caption_video: np.ndarray, candidates: str) -> list[int]:
    """Video-to-text ranks with ties against the video, one video at a time."""
    ranks = []
    for video in range(sim.shape[1]):
        own = caption_video == video
        best = sim[own, video].max()
        if candidates == "captions":
            ranks.append(1 + int(np.count_nonzero(sim[~own, video] >= best)))
        else:
            others = [sim[caption_video == other, video].max() for other in range(sim.shape[1]) if other != video]
            ranks.append(1 + sum(1 for score in others if score >= best))
    return ranks


def argsort_free_ranks(sim: np.ndarray, positive_index: np.ndarray) -> list[int]:
    """1 + the number of other columns scoring at least the positive, one row at a time."""
    ranks = []
    for row, positive in zip(sim, positive_index):
        others = np.delete(row, positive)
        ranks.append(1 + int(np.count_nonzero(others >= row[positive])))
    return ranks
