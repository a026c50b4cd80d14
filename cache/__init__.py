"""The teacher cache: soft targets of every teacher for every scheduled batch, in zarr or HDF5.

Writing (stage one)::

    cache = TeacherCache.open_or_create(path, layout, fingerprint, backend="zarr", teacher_info=info)
    cache.write_samples(text_index, video_index)      # [samples] rows of texts and videos
    cache.write_texts(text_ids, tokens, mask)         # [texts], [texts, max_words] x 2
    cache.write_videos(video_ids, frame_mask)         # [videos], [videos, max_frames]
    cache.write_schedule(schedule)                    # [steps, batch] sample indices
    cache.write_video_frames(video, frames)           # only with layout.store_frames
    for step in cache.pending_steps(teacher, rank, world_size):
        cache.write_step(teacher, step, logits, frame_targets)   # [batch, batch], [batch, frames]
    cache.finalize()                                  # marks it complete; HDF5: writes the .h5 file
    cache.close()

`open_or_create` resumes a store made with an equal fingerprint and layout and raises
FingerprintMismatchError listing each differing field otherwise. A step or video is
marked done only after its data is stored, so a process killed at any moment (SIGKILL
included) leaves every done step intact, and resuming writes only the pending ones.
The write_* methods for samples, texts, videos and schedule may be called on every
run: on a complete store they accept the values it already holds.

Several processes: the main process calls `open_or_create` first, the others after a
barrier. Each process writes the steps that `pending_steps(teacher, rank, world_size)`
returns. Because every step, every done flag and every video is its own chunk, no two
processes write the same chunk. After a final barrier, one process calls `finalize`.
Both backends take this pattern, because an HDF5 cache is written into a zarr
staging store (`<path>.staging.zarr`) that `finalize` copies into the `.h5` file.

Reading (stage two)::

    with TeacherCache.open(path) as cache:             # "r" by default; backend detected
        cache.require_complete()                       # IncompleteCacheError names what is missing
        targets = cache.read_step(step)                # teacher -> (logits, frame_targets) float32
        cache.schedule, cache.tokens, cache.mask, cache.frame_mask, cache.fingerprint, ...

Open one TeacherCache per process or DataLoader worker. `cache.inspect.describe_store`
and `cache.verify.verify_store` back the `cache info` and `cache verify` commands.
"""

from cache.errors import (
    CacheCreationInterruptedError,
    CacheError,
    CacheExistsError,
    CacheFormatError,
    CacheNotFoundError,
    IncompleteCacheError,
    ReadOnlyCacheError,
)
from cache.fingerprint import (
    FieldDifference,
    Fingerprint,
    FingerprintMismatchError,
    compare,
    sha256_file,
    sha256_json,
)
from cache.schema import SCHEMA_VERSION, CacheLayout
from cache.store import BACKENDS, TeacherCache

__all__ = [
    "BACKENDS",
    "SCHEMA_VERSION",
    "CacheCreationInterruptedError",
    "CacheError",
    "CacheExistsError",
    "CacheFormatError",
    "CacheLayout",
    "CacheNotFoundError",
    "FieldDifference",
    "Fingerprint",
    "FingerprintMismatchError",
    "IncompleteCacheError",
    "ReadOnlyCacheError",
    "TeacherCache",
    "compare",
    "sha256_file",
    "sha256_json",
]
