"""Time `search` on a large index: query encoding, float16 scoring and top-k over random unit vectors.

Run: .venv/bin/python benchmarks/bench_search.py [--videos N] [--dim D] [--queries Q] [--no-store] [--threads T]
By default the vectors are written to a feature store in a temporary folder and loaded back the way
`teachclip-pipeline search` loads them; --no-store keeps them in memory only.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.feature_store import FeatureStore
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.student import StudentConfig, TeachCLIPStudent
from stages.search import DEFAULT_MAX_WORDS, SearchIndex, Searcher, encode_queries, load_search_index, top_k

SEED = 0
TOP_K = 10
# Rows generated and written per step, so no float32 copy of the whole index exists at once.
GENERATION_ROWS = 65_536
QUERIES = (
    "a man is cooking pasta in a kitchen", "a dog runs across a field", "two people talk on a sofa",
    "a red car drives along a coastal road", "a cat sleeps in the sun", "children play football in a park",
    "a woman sings on a stage", "a chef slices vegetables", "a timelapse of clouds over mountains",
    "someone plays the guitar", "a news anchor reads the headlines", "a basketball game in a gym",
    "a bird eats seeds from a feeder", "cars wait at a traffic light", "a person rides a bicycle downhill",
    "waves crash on a rocky beach", "a cartoon character jumps", "a man explains a math problem",
    "people dance at a wedding", "a cup of espresso on a saucer",
)


def random_unit_vectors(rows: int, dim: int) -> np.ndarray:
    """Float16 [rows, dim] Gaussian rows scaled to unit length, generated block by block."""
    generator = torch.Generator().manual_seed(SEED)
    vectors = np.empty((rows, dim), dtype=np.float16)
    for start in range(0, rows, GENERATION_ROWS):
        count = min(GENERATION_ROWS, rows - start)
        block = F.normalize(torch.randn(count, dim, generator=generator), dim=-1)
        vectors[start:start + count] = block.half().numpy()
    return vectors


def write_store(path: Path, vectors: np.ndarray) -> None:
    ids = [f"video{row}" for row in range(len(vectors))]
    store = FeatureStore.create(path, ids, [f"/videos/{item}.mp4" for item in ids], dim=vectors.shape[1],
                                dtype="float16", attributes={})
    for chunk in range(store.num_chunks):
        rows = store.chunk_rows(chunk)
        store.write_chunk(chunk, vectors[rows.start:rows.stop], np.ones(len(rows), dtype=bool))


def exact_top_rows(vectors: torch.Tensor, query: torch.Tensor, k: int) -> list[int]:
    """Top-k rows by float32 scores of every stored vector, for checking the float16 search."""
    scores = torch.cat([vectors[start:start + GENERATION_ROWS].float() @ query
                        for start in range(0, vectors.shape[0], GENERATION_ROWS)])
    return torch.topk(scores, k).indices.tolist()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (512 for ViT-B/32)")
    parser.add_argument("--queries", type=int, default=len(QUERIES), help=f"timed queries, at most {len(QUERIES)}")
    parser.add_argument("--no-store", action="store_true", help="search the vectors in memory, without a store")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, no GPU used; load average before the run "
          f"{os.getloadavg()[0]:.1f} (other processes share these cores)")

    started = time.perf_counter()
    vectors = random_unit_vectors(args.videos, args.dim)
    print(f"generated {args.videos} x {args.dim} float16 unit vectors in {time.perf_counter() - started:.1f} s")

    # A student of ViT-B/32 size (random weights): its 12-layer text tower is what encodes each query.
    torch.manual_seed(SEED)
    clip = CLIP_PRESETS["ViT-B/32"]
    if clip.embed_dim != args.dim:
        raise SystemExit(f"--dim must be {clip.embed_dim}, the ViT-B/32 student's vector size")
    model = TeachCLIPStudent(StudentConfig(clip=clip)).eval()

    with tempfile.TemporaryDirectory(prefix="bench-search-") as directory:
        if args.no_store:
            index = SearchIndex(ids=[f"video{row}" for row in range(args.videos)], paths=None,
                                vectors=torch.from_numpy(vectors), source=Path("memory"), checkpoint_sha256=None)
        else:
            started = time.perf_counter()
            write_store(Path(directory) / "store", vectors)
            print(f"wrote the feature store in {time.perf_counter() - started:.1f} s")
            del vectors
            started = time.perf_counter()
            index = load_search_index(Path(directory) / "store")
            print(f"loaded it (as search does, once per process) in {time.perf_counter() - started:.1f} s")

        searcher = Searcher(index, model, "cpu", max_words=DEFAULT_MAX_WORDS)
        searcher.search("warm-up query", k=TOP_K)

        encode_ms, score_ms, total_ms = [], [], []
        for text in QUERIES[:args.queries]:
            started = time.perf_counter()
            query = encode_queries(model, [text], DEFAULT_MAX_WORDS, "cpu")[0]
            encoded = time.perf_counter()
            _, rows = top_k(index.vectors, query, TOP_K)
            finished = time.perf_counter()
            encode_ms.append(1000 * (encoded - started))
            score_ms.append(1000 * (finished - encoded))
            total_ms.append(1000 * (finished - started))

        query = encode_queries(model, [QUERIES[0]], DEFAULT_MAX_WORDS, "cpu")[0]
        _, rows = top_k(index.vectors, query, TOP_K)
        agrees = rows.tolist() == exact_top_rows(index.vectors, query, TOP_K)

    print(f"search over {args.videos} vectors, top {TOP_K}, {len(total_ms)} queries (median, min, max in ms):")
    for name, values in (("query encoding", encode_ms), ("scoring + top-k", score_ms), ("total", total_ms)):
        print(f"  {name:<16} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}")
    print(f"  top-{TOP_K} equals exact float32 scoring of all vectors: {agrees}")
    print(f"  peak RSS (getrusage ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; "
          f"load average after the run {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
