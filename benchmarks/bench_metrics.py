"""Time exact chunked ranking against sort-based ranking, and measure peak memory on a large gallery.

Run: .venv/bin/python benchmarks/bench_metrics.py [--large-videos N] [--skip-large]
Each part runs in a fresh process, so its peak resident set size (getrusage ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import time

import numpy as np
import torch

from pipeline.metrics import OPTIMISTIC_TIE_RULE, chunked_query_ranks, query_ranks

SEED = 0
# Timings of the 10,000 x 10,000 part are the fastest of this many runs, because other processes
# on a shared machine slow single runs down.
REPEATS = 3
# Videos generated per step when filling the large gallery, so no float64 or temporary copy of
# the whole gallery exists at once.
GENERATION_CHUNK = 65_536


def random_unit_features(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Fill a float32 [rows, dim] tensor with L2-normalised Gaussian rows, chunk by chunk."""
    features = torch.empty(rows, dim, dtype=torch.float32)
    for start in range(0, rows, GENERATION_CHUNK):
        chunk = features[start:start + GENERATION_CHUNK]
        chunk.normal_(generator=generator)
        chunk /= chunk.norm(dim=1, keepdim=True)
    return features


def argsort_ranks(sim_matrix: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """Rank by a full descending argsort of each row, then the positive's position in it."""
    order = torch.argsort(sim_matrix, dim=1, descending=True)  # [queries, videos]
    positions = (order == positive_index.view(-1, 1)).to(torch.int8).argmax(dim=1)
    return positions + 1


def sort_and_match_positions(sim_matrix: np.ndarray, positive_index: np.ndarray) -> np.ndarray:
    """Rank as TeachCLIP's compute_metrics does: sort each row, then find the positive's score in it.

    Returns every matching position, so a query whose positive ties with another video gets more
    than one entry.
    """
    sorted_rows = np.sort(-sim_matrix, axis=1)  # [queries, videos]
    positive_scores = -sim_matrix[np.arange(sim_matrix.shape[0]), positive_index][:, None]
    _, positions = np.where(sorted_rows - positive_scores == 0)
    return positions + 1


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(function, *args):
    """Run function(*args) REPEATS times; return its result and the fastest wall time."""
    fastest = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function(*args)
        fastest = min(fastest, time.perf_counter() - start)
    return result, fastest


def compare_with_sorting(queries: int, videos: int, dim: int) -> dict:
    generator = torch.Generator().manual_seed(SEED)
    query_features = random_unit_features(queries, dim, generator)
    video_features = random_unit_features(videos, dim, generator)
    positive_index = torch.randint(0, videos, (queries,), generator=generator)

    sim_matrix, matmul_seconds = timed(torch.matmul, query_features, video_features.T)
    sorted_ranks, argsort_seconds = timed(argsort_ranks, sim_matrix, positive_index)
    matched, match_seconds = timed(sort_and_match_positions, sim_matrix.numpy(), positive_index.numpy())
    _, count_seconds = timed(query_ranks, sim_matrix, positive_index)
    del sim_matrix

    pessimistic, chunked_seconds = timed(chunked_query_ranks, query_features, video_features, positive_index)
    optimistic = chunked_query_ranks(query_features, video_features, positive_index,
                                     tie_rule=OPTIMISTIC_TIE_RULE)
    differing = sorted_ranks != pessimistic
    # A differing query must be an exact tie: the sort's position lies between the two tie rules.
    ties_explain = bool(((optimistic <= sorted_ranks) & (sorted_ranks <= pessimistic)).all())

    return {
        "matmul_seconds": matmul_seconds,
        "argsort_seconds": argsort_seconds,
        "match_seconds": match_seconds,
        "count_seconds": count_seconds,
        "chunked_seconds": chunked_seconds,
        "differing": int(differing.sum()),
        "ties_explain": ties_explain,
        "matched_positions": int(matched.size),
        "peak_rss_gib": peak_rss_gib(),
    }


def rank_large_gallery(queries: int, videos: int, dim: int) -> dict:
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    query_features = random_unit_features(queries, dim, generator)
    video_features = random_unit_features(videos, dim, generator)
    positive_index = torch.randint(0, videos, (queries,), generator=generator)
    generate_seconds = time.perf_counter() - start

    start = time.perf_counter()
    ranks = chunked_query_ranks(query_features, video_features, positive_index)
    rank_seconds = time.perf_counter() - start

    return {
        "generate_seconds": generate_seconds,
        "rank_seconds": rank_seconds,
        "median_rank": float(ranks.float().median()),
        "peak_rss_gib": peak_rss_gib(),
    }


def run_in_fresh_process(function, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000, help="queries in both parts")
    parser.add_argument("--videos", type=int, default=10_000, help="videos in the sorting comparison")
    parser.add_argument("--large-videos", type=int, default=1_000_000, help="videos in the memory part")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--skip-large", action="store_true", help="run only the sorting comparison")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, no GPU used")

    result = run_in_fresh_process(compare_with_sorting, args.queries, args.videos, args.dim)
    sort_total = result["matmul_seconds"] + result["argsort_seconds"]
    match_total = result["matmul_seconds"] + result["match_seconds"]
    print(f"{args.queries} queries x {args.videos} videos, dim {args.dim}, float32:")
    print(f"  score matrix (one matmul):                 {result['matmul_seconds']:.2f} s")
    print(f"  ranks from the matrix, torch argsort:      {result['argsort_seconds']:.2f} s")
    print(f"  ranks from the matrix, numpy sort-match:   {result['match_seconds']:.2f} s")
    print(f"  ranks from the matrix, query_ranks count:  {result['count_seconds']:.2f} s")
    print(f"  end to end, matmul + torch argsort:        {sort_total:.2f} s")
    print(f"  end to end, matmul + numpy sort-match:     {match_total:.2f} s")
    print(f"  end to end, chunked_query_ranks:           {result['chunked_seconds']:.2f} s")
    print(f"  speed-up end to end: {sort_total / result['chunked_seconds']:.1f}x over argsort, "
          f"{match_total / result['chunked_seconds']:.1f}x over sort-match; ranking step alone: "
          f"{result['argsort_seconds'] / result['count_seconds']:.0f}x over argsort, "
          f"{result['match_seconds'] / result['count_seconds']:.0f}x over sort-match")
    print(f"  queries ranked differently from argsort: {result['differing']} "
          f"(all exact ties: {result['ties_explain']}); sort-match positions found: "
          f"{result['matched_positions']} for {args.queries} queries")
    print(f"  peak RSS (getrusage ru_maxrss, whole process): {result['peak_rss_gib']:.2f} GiB")

    if args.skip_large:
        return
    result = run_in_fresh_process(rank_large_gallery, args.queries, args.large_videos, args.dim)
    print(f"{args.queries} queries x {args.large_videos} videos, dim {args.dim}, float32:")
    print(f"  feature generation: {result['generate_seconds']:.1f} s; "
          f"chunked ranks: {result['rank_seconds']:.1f} s; median rank {result['median_rank']:.0f}")
    print(f"  peak RSS (getrusage ru_maxrss, whole process): {result['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
