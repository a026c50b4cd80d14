"""Search: encode a text query with a student and return the best-scoring videos of a feature store
(written by `index`) or of a BigFile export (written by `evaluate --export-features bigfile`).

The vectors are loaded once as float16 and scored with one matrix-vector product per block of
rows. Each block's best candidates are rescored in float32 and merged with `torch.topk`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cache.fingerprint import sha256_file
from pipeline.data.videos import VideoNotFoundError, find_video
from pipeline.exports import BigFileError, is_bigfile, read_bigfile
from pipeline.feature_store import FeatureStore, FeatureStoreError, is_feature_store
from pipeline.models.factory import load_student
from pipeline.models.student import TeachCLIPStudent
from pipeline.text.tokenizer import tokenize_captions

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
DEFAULT_MAX_WORDS = 32  # TeachCLIP's max_words for MSR-VTT, VATEX and MSVD
# Rows scored per matrix-vector product: 256 Ki rows of 512 float16 values are 256 MiB, and the
# block's scores 512 KiB. On a 2-core CPU, blocks this large ran as fast as one product over 1M rows.
SEARCH_BLOCK_ROWS = 2**18
# Candidates kept per block beyond top_k. Float16 scores keep about 3 significant digits, so videos
# within rounding of the k-th score may come out in the wrong order. Rescoring this many extra
# candidates in float32 restores the exact order unless more than this many tie within rounding.
RESCORE_EXTRA = 64
# Rows normalised per step when loading float32 BigFile features as float16.
LOAD_BLOCK_ROWS = 2**16
NO_PATH = "-"


@dataclass
class SearchIndex:
    """Vectors to search and what each row is."""

    ids: list[str]
    paths: list[str] | None  # one file per row, or None where only ids are known
    vectors: torch.Tensor  # [videos, dim] float16, unit length, on the search device
    source: Path
    checkpoint_sha256: str | None  # of the student that wrote the vectors, where the store records it


@dataclass(frozen=True)
class SearchHit:
    rank: int
    video_id: str
    path: str
    score: float  # cosine of the query and video vectors


def load_search_index(path: str | Path, device: torch.device | str = "cpu") -> SearchIndex:
    """Load a feature store or a BigFile directory as float16 unit vectors on `device`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no feature store or BigFile at {path}; build one with `teachclip-pipeline index "
                                "VIDEO_DIR --checkpoint STUDENT --output STORE`")
    if is_feature_store(path):
        return _load_feature_store(path, device)
    if is_bigfile(path):
        return _load_bigfile(path, device)
    raise FeatureStoreError(f"{path} is neither a feature store (written by index) nor a BigFile directory "
                            "(id.txt, shape.txt, feature.bin)")


def _load_feature_store(path: Path, device: torch.device | str) -> SearchIndex:
    store = FeatureStore.open(path)
    if not store.is_complete():
        pending = len(store.pending_chunks())
        logger.warning("%s is incomplete (%d of %d chunks not done); searching the videos encoded so far. "
                       "Run index again to finish it", path, pending, store.num_chunks)
    valid = store.valid()
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        raise FeatureStoreError(f"{path} has no encoded videos; run index to fill it")

    vectors = store.read_vectors()
    if rows.size < store.count:
        vectors = vectors[rows]  # [valid videos, dim]; failed and not yet encoded rows are left out
    ids, paths = store.ids(), store.paths()
    logger.info("loaded %d vectors of dim %d from %s", rows.size, store.dim, path)
    return SearchIndex(ids=[ids[row] for row in rows], paths=[paths[row] for row in rows],
                       vectors=torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float16)).to(device),
                       source=path, checkpoint_sha256=store.attributes.get("checkpoint_sha256"))


def _load_bigfile(path: Path, device: torch.device | str) -> SearchIndex:
    features = read_bigfile(path)
    if not features.ids:
        raise BigFileError(f"{path} contains no features (shape.txt gives 0 rows)")
    vectors = torch.empty(features.features.shape, dtype=torch.float16)
    for start in range(0, len(features.ids), LOAD_BLOCK_ROWS):
        block = torch.from_numpy(np.array(features.features[start:start + LOAD_BLOCK_ROWS]))  # [rows, dim]
        vectors[start:start + LOAD_BLOCK_ROWS] = F.normalize(block, dim=-1).half()
    logger.info("loaded %d vectors of dim %d from BigFile %s", len(features.ids), vectors.shape[1], path)
    return SearchIndex(ids=list(features.ids), paths=None, vectors=vectors.to(device), source=path,
                       checkpoint_sha256=None)


def top_k(vectors: torch.Tensor, query: torch.Tensor, k: int,
          block_rows: int = SEARCH_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the k best scores (float32, descending) and their rows for one query vector [dim].

    Each block of `block_rows` rows is scored in the vectors' dtype and keeps its k + RESCORE_EXTRA
    best rows. Those candidates are rescored in float32 and merged. Memory contains one block's scores.
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    rows = vectors.shape[0]
    k = min(k, rows)
    query = query.to(vectors.device)
    query_low = query.to(vectors.dtype)

    candidates = []
    for start in range(0, rows, block_rows):
        scores = vectors[start:start + block_rows] @ query_low  # [block rows]
        keep = min(k + RESCORE_EXTRA, scores.shape[0])
        candidates.append(torch.topk(scores, keep).indices + start)
    candidates = torch.cat(candidates)  # [blocks * keep]

    exact = vectors[candidates].float() @ query.float()  # [candidates]
    best, position = torch.topk(exact, k)
    return best.cpu(), candidates[position].cpu()


@torch.no_grad()
def encode_queries(model: TeachCLIPStudent, texts: list[str], max_words: int,
                   device: torch.device | str) -> torch.Tensor:
    """Unit-length text vectors [texts, dim] in float32."""
    tokens = tokenize_captions(texts, max_words)
    input_ids = torch.from_numpy(tokens.input_ids).long().to(device)
    return F.normalize(model.encode_text(input_ids).float(), dim=-1)


class Searcher:
    """A student's text encoder and a loaded index, ready to rank videos for queries."""

    def __init__(self, index: SearchIndex, model: TeachCLIPStudent, device: torch.device | str,
                 max_words: int = DEFAULT_MAX_WORDS, paths_dir: str | Path | None = None):
        dim = model.config.clip.embed_dim
        if index.vectors.shape[1] != dim:
            raise FeatureStoreError(f"{index.source} contains vectors of dim {index.vectors.shape[1]}, but the "
                                    f"checkpoint encodes queries of dim {dim}; search with the checkpoint "
                                    "that built the index")
        self.index = index
        self.model = model
        self.device = device
        self.max_words = max_words
        self.paths_dir = Path(paths_dir) if paths_dir else None

    def search(self, text: str, k: int = DEFAULT_TOP_K) -> list[SearchHit]:
        query = encode_queries(self.model, [text], self.max_words, self.device)[0]  # [dim]
        scores, rows = top_k(self.index.vectors, query, k)
        return [SearchHit(rank=rank, video_id=self.index.ids[row], path=self.path_of(row), score=float(score))
                for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist()), start=1)]

    def path_of(self, row: int) -> str:
        if self.index.paths is not None:
            return self.index.paths[row]
        if self.paths_dir is None:
            return NO_PATH
        try:
            return str(find_video(self.paths_dir, self.index.ids[row]))
        except (VideoNotFoundError, ValueError):
            return NO_PATH


def open_searcher(store: str | Path, checkpoint: str | Path, device: str | None = None,
                  max_words: int = DEFAULT_MAX_WORDS, paths_dir: str | Path | None = None) -> Searcher:
    """Load the index and the student once, for one or many queries."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    index = load_search_index(store, device)
    model = load_student(checkpoint).to(device).eval()
    if index.checkpoint_sha256 and index.checkpoint_sha256 != sha256_file(checkpoint):
        logger.warning("%s was indexed with another checkpoint (sha256 %s) than %s; scores compare vectors of "
                       "two models and mean nothing unless both files hold the same weights",
                       store, index.checkpoint_sha256[:12], checkpoint)
    return Searcher(index, model, device, max_words=max_words, paths_dir=paths_dir)


def format_hits(query: str, hits: list[SearchHit]) -> str:
    """Format one query's results as a table: rank, score, video id and path."""
    id_width = max([len("video_id")] + [len(hit.video_id) for hit in hits])
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  {'video_id':<{id_width}}  path"]
    lines += [f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.video_id:<{id_width}}  {hit.path}" for hit in hits]
    return "\n".join(lines)
