"""Video files by id, the decoding entry point with decoder fallback and a per-video time limit,
and the pre-flight scan that finds missing and undecodable videos before long work starts.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import functools
import importlib.util
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline.data.decoders import (
    BACKENDS,
    DECORD,
    FFMPEG,
    DecodedVideo,
    SamplingError,
    VideoDecodeError,
    decode_with,
)
from pipeline.data.frames import (
    SLICE_HEAD,
    FrameSettings,
    VideoFrames,
    normalise_time_range,
    pad_and_order_frames,
)

logger = logging.getLogger(__name__)

__all__ = [
    "VIDEO_EXTENSIONS", "DecodePool", "ScanReport", "VideoDecodeError", "VideoFrames", "VideoNotFoundError",
    "VideoRequest", "decode_video", "find_video", "load_many", "load_video_frames", "scan_videos",
]

AUTO = "auto"
# Tried in this order, then the id as it is; the reference tries .mp4, .avi, then the bare id.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
MISSING_VIDEO_HINT = "restore the file, or pass --set datasets.on_missing_video=skip to leave it out"

# Generous per-video limit: decord reads every packet of a file when it opens it (an estimated few
# seconds for a feature-length video), and each kept frame costs a seek.
DEFAULT_TIMEOUT_S = 120.0
# A cold worker start imports NumPy, Pillow and decord before it reports ready.
WORKER_STARTUP_S = 60.0
# The ffmpeg backend runs ffmpeg at most four times for one video (probe, read, count, read again),
# each under the per-video limit.
FFMPEG_RUNS_PER_VIDEO = 4
# Time a worker may take beyond its ffmpeg runs: unpickling, resizing, pickling the frames.
WORKER_SLACK_S = 30.0
# Individual problems logged by a scan before it only counts them.
SCAN_LOG_LIMIT = 20

_MESSAGE_HEADER = struct.Struct("<Q")  # byte length of the pickled message that follows
_READ_CHUNK = 1 << 20
_PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size; 12 frames of 224x224 RGB are 1.8 MB
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that contains `pipeline/`
_WORKER_ENTRY = "from pipeline.data.videos import serve_decode_requests; serve_decode_requests()"
_READY = "ready"  # a worker's first message, sent once its imports are done


class VideoNotFoundError(FileNotFoundError):
    """A video id or path with no file, with the folder, the names tried and what to do."""

    def __init__(self, message: str, video_id: str | None = None, video_dir: str | Path | None = None,
                 tried: tuple[str, ...] = ()):
        super().__init__(message)
        self.video_id = video_id
        self.video_dir = video_dir
        self.tried = tried

    def __reduce__(self):
        return (type(self), (str(self), self.video_id, self.video_dir, self.tried))


# Finding files -----------------------------------------------------------------------------------


def find_video(video_dir: str | Path, video_id: str) -> Path:
    """Return the file of a video id: the id with each of VIDEO_EXTENSIONS, then the id as it is.

    Raises ValueError for an id that is empty, absolute or leads outside video_dir (checked on
    the path as written, so symlinks inside video_dir may point anywhere), and VideoNotFoundError
    when no candidate exists.
    """
    video_dir = Path(video_dir)
    if not video_id or Path(video_id).is_absolute():
        raise ValueError(f"invalid video id {video_id!r}: expected a name relative to {video_dir}")
    relative = os.path.normpath(video_id)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"invalid video id {video_id!r}: it leads outside {video_dir}")

    candidates = [video_dir / f"{relative}{extension}" for extension in VIDEO_EXTENSIONS]
    candidates.append(video_dir / relative)
    for candidate in candidates:
        if candidate.exists() and not candidate.is_dir():
            return candidate

    tried = ", ".join(VIDEO_EXTENSIONS) + ", no extension"
    raise VideoNotFoundError(
        f"video {video_id!r} not found under {video_dir} (tried {tried}); {MISSING_VIDEO_HINT}",
        video_id=video_id, video_dir=video_dir, tried=VIDEO_EXTENSIONS + ("",),
    )


def check_video_file(path: str | Path) -> Path:
    """Raise VideoNotFoundError for a missing path and VideoDecodeError for an empty file or a folder."""
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(f"video file {path} not found; {MISSING_VIDEO_HINT}", video_dir=path.parent)
    if path.is_dir():
        raise VideoDecodeError(path, "it is a folder, not a video file")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty (0 bytes)",
                               hint="re-download or re-encode it, or pass "
                                    "--set datasets.on_missing_video=skip to leave it out")
    return path


# Decoding with fallback ----------------------------------------------------------------------------


@functools.cache
def decord_installed() -> bool:
    """Return whether decord can be imported, logging once when it cannot."""
    installed = importlib.util.find_spec("decord") is not None
    if not installed:
        logger.warning("decord is not installed; decoding every video with ffmpeg")
    return installed


def backend_chain(decoder: str) -> tuple[str, ...]:
    """Return the backends to try in order: decord then ffmpeg for 'auto', else the one named."""
    if decoder == AUTO:
        return BACKENDS if decord_installed() else (FFMPEG,)
    if decoder in BACKENDS:
        return (decoder,)
    raise ValueError(f"unknown decoder {decoder!r}; use 'auto', 'decord' or 'ffmpeg'")


def failure_reason(backend: str, error: BaseException) -> str | None:
    """Return why a backend failed when the next backend may still succeed, else None (re-raise)."""
    if isinstance(error, SamplingError):
        return None
    if isinstance(error, VideoDecodeError):
        return error.reason  # the decoders' reasons name the decoder
    if isinstance(error, ImportError):
        return f"{backend} is not installed ({error})"
    return None


def log_failure(path: Path, reason: str, remaining: tuple[str, ...] | deque) -> None:
    if remaining:
        logger.warning("video %s: %s; falling back to %s", path, reason, remaining[0])
    else:
        logger.warning("video %s: %s; no decoder left", path, reason)


def decode_video(path: str | Path, settings: FrameSettings, start_s: int | None = None, end_s: int | None = None,
                 decoder: str = AUTO, timeout_s: float | None = None) -> DecodedVideo:
    """Decode the kept frames of one video file, trying decord and then ffmpeg for decoder 'auto'.

    With timeout_s, decoding runs in a worker process that is killed after timeout_s (decord can
    hang in native code where no signal reaches it), and each ffmpeg run has the same limit.
    Without it, decoding runs in this process with no limit. start_s and end_s are whole seconds.
    """
    path = Path(path)
    if timeout_s is not None:
        job = DecodeJob(path=path, settings=settings, start_s=start_s, end_s=end_s, decoder=decoder,
                        timeout_s=timeout_s)
        _, outcome = next(shared_pool().decode([job]))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    backends = backend_chain(decoder)
    failures: list[str] = []
    for position, backend in enumerate(backends):
        try:
            decoded = decode_with(backend, path, settings, start_s, end_s)
        except Exception as error:
            reason = failure_reason(backend, error)
            if reason is None:
                raise
            failures.append(reason)
            log_failure(path, reason, backends[position + 1:])
            continue
        return decoded
    raise VideoDecodeError(path, "; ".join(failures))


def load_video_frames(path: str | Path, settings: FrameSettings, start_time: float | None = None,
                      end_time: float | None = None, decoder: str = AUTO, timeout_s: float | None = None,
                      rng: np.random.Generator | None = None) -> VideoFrames:
    """Decode one video into max_frames zero-padded uint8 frames and their frame_mask.

    start_time and end_time (seconds, ActivityNet and DiDeMo segments) are whole-second bounds
    as in the reference loaders. decoder is 'auto' (decord, then ffmpeg), 'decord' or 'ffmpeg'.
    timeout_s limits each decoder's time on the video (see `decode_video`). rng shuffles the
    frames when settings.frame_order is 2. Raises VideoNotFoundError for a missing file and
    VideoDecodeError when no decoder can read it; it never returns an all-zero video.
    """
    path = check_video_file(path)
    start_s, end_s = normalise_time_range(start_time, end_time)
    decoded = decode_video(path, settings, start_s, end_s, decoder, timeout_s)
    return pad_and_order_frames(decoded.frames, settings, decoded.decoder, rng)


# Worker processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeJob:
    """One video for a DecodePool: the file, the frame settings, the segment and the decoder policy."""

    path: Path
    settings: FrameSettings
    start_s: int | None = None
    end_s: int | None = None
    decoder: str = AUTO
    timeout_s: float | None = DEFAULT_TIMEOUT_S


@dataclass
class _JobState:
    position: int
    job: DecodeJob
    backends: deque
    failures: list[str] = field(default_factory=list)


class _Worker:
    """A child Python process that decodes one video at a time for a DecodePool."""

    def __init__(self) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(_PACKAGE_PARENT), environment.get("PYTHONPATH", "")) if part
        )
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER_ENTRY], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=environment)
        self.owner_pid = os.getpid()
        try:
            # One read per response instead of one per 64 KiB, the default pipe size on Linux.
            fcntl.fcntl(self.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except (AttributeError, OSError):
            pass  # not Linux, or a pipe-max-size below _PIPE_BYTES: smaller reads still work
        self.ready = False  # True once the process has imported its decoders and sent _READY
        self.state: _JobState | None = None
        self.backend: str | None = None
        self.deadline: float | None = None
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def wait_ready(self) -> None:
        """Block until the process has started, so its start-up never counts against a video's limit."""
        deadline = time.monotonic() + WORKER_STARTUP_S
        while not self.ready:
            readable, _, _ = select.select([self], [], [], max(deadline - time.monotonic(), 0.0))
            try:
                message = self.read_message() if readable else None
            except EOFError:
                message = None
            if message == _READY:
                self.ready = True
            elif not readable or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(
                    f"decoding worker process did not start within {WORKER_STARTUP_S:g} s "
                    f"(exit code {self.process.poll()}); run `{sys.executable} -c \"{_WORKER_ENTRY}\"` "
                    "to see its error"
                )

    def send(self, state: _JobState, backend: str, limit_s: float | None) -> None:
        if not self.ready:
            self.wait_ready()
        job = state.job
        payload = pickle.dumps((backend, str(job.path), job.settings, job.start_s, job.end_s, job.timeout_s))
        self.process.stdin.write(_MESSAGE_HEADER.pack(len(payload)) + payload)
        self.process.stdin.flush()

        self.state, self.backend = state, backend
        self.deadline = None if limit_s is None else time.monotonic() + limit_s

    def read_message(self) -> object | None:
        """Read what the process has written; return its next message once complete, else None.

        Raises EOFError when the process has exited.
        """
        chunk = os.read(self.fileno(), _READ_CHUNK)
        if not chunk:
            raise EOFError
        self._buffer += chunk
        if len(self._buffer) < _MESSAGE_HEADER.size:
            return None
        (length,) = _MESSAGE_HEADER.unpack_from(self._buffer)
        end = _MESSAGE_HEADER.size + length
        if len(self._buffer) < end:
            return None

        message = pickle.loads(self._buffer[_MESSAGE_HEADER.size:end])
        del self._buffer[:end]
        return message

    def read_response(self) -> tuple | None:
        """Return the response to the current request once complete, else None; see read_message."""
        response = self.read_message()
        if response is not None:
            self.state, self.backend, self.deadline = None, None, None
        return response

    def kill(self) -> None:
        if self.owner_pid == os.getpid() and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Let the process exit after its current request; kill it if it does not."""
        if self.owner_pid != os.getpid():
            return  # inherited through fork: the parent process owns it
        try:
            self.process.stdin.close()
            self.process.wait(timeout=WORKER_SLACK_S)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self.process.stdout.close()


class DecodePool:
    """Worker processes that decode videos in parallel, each decoder's turn under a time limit.

    A worker that exceeds the limit or dies is killed and replaced, and the video goes on to the
    next decoder of its job. Readers live only inside the workers and only for one video, which
    avoids decord's memory growth with long-lived or shared readers.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.size = workers or os.cpu_count() or 1
        self._workers: list[_Worker] = []

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the started workers (none before the first decode call)."""
        return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def decode(self, jobs: Iterable[DecodeJob]) -> Iterator[tuple[DecodeJob, DecodedVideo | Exception]]:
        """Yield each job with its DecodedVideo, or with the VideoDecodeError or VideoNotFoundError
        that ends it, in the order of `jobs`. Any other exception is a bug and is raised.

        Not thread-safe: one thread at a time may iterate a pool.
        """
        if not self._workers:
            self._workers = [_Worker() for _ in range(self.size)]
        run = _PoolRun(jobs)
        try:
            while True:
                self._fill_idle_workers(run)
                busy = [worker for worker in self._workers if worker.state is not None]
                if not busy and run.exhausted and not run.retries:
                    break
                if busy:
                    self._wait_for_workers(busy, run)
                yield from run.pop_finished_in_order()
            yield from run.pop_finished_in_order()
        finally:
            # Stopped early (an error, or the caller stopped iterating): drop unfinished requests.
            for worker in [worker for worker in self._workers if worker.state is not None]:
                self._replace(worker)

    def _fill_idle_workers(self, run: _PoolRun) -> None:
        for index, worker in enumerate(self._workers):
            if worker.state is not None:
                continue
            state = run.next_state()
            if state is None:
                return
            self._workers[index] = self._dispatch(worker, state)

    def _wait_for_workers(self, busy: list[_Worker], run: _PoolRun) -> None:
        """Wait until a busy worker responds or reaches its deadline, then handle what happened."""
        deadlines = [worker.deadline for worker in busy if worker.deadline is not None]
        wait_s = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None
        readable, _, _ = select.select(busy, [], [], wait_s)
        for worker in busy:
            if worker in readable:
                self._collect(worker, run)
            elif worker.deadline is not None and time.monotonic() >= worker.deadline:
                self._expire(worker, run)

    def _dispatch(self, worker: _Worker, state: _JobState) -> _Worker:
        """Send a job's next backend to a worker, replacing a worker whose process has exited."""
        backend = state.backends.popleft()
        limit_s = state.job.timeout_s
        if limit_s is not None and backend == FFMPEG:
            limit_s = FFMPEG_RUNS_PER_VIDEO * limit_s + WORKER_SLACK_S
        try:
            worker.send(state, backend, limit_s)
        except OSError:  # BrokenPipeError: the process exited while idle
            logger.warning("decoding worker %d exited while idle (exit code %s); starting a new one",
                           worker.process.pid, worker.process.poll())
            worker.kill()
            worker = _Worker()
            worker.send(state, backend, limit_s)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker()

    def _collect(self, worker: _Worker, run: _PoolRun) -> None:
        state, backend = worker.state, worker.backend
        try:
            response = worker.read_response()
        except EOFError:
            code = worker.process.wait()
            self._replace(worker)
            run.fail(state, f"{backend} worker process exited with code {code}")
            return
        if response is None:
            return  # partial message; the rest comes with the next read

        outcome, records = response
        for level, name, message in records:
            logging.getLogger(name).log(level, "%s", message)

        if isinstance(outcome, (DecodedVideo, SamplingError)):
            run.finished[state.position] = (state.job, outcome)
            return
        reason = failure_reason(backend, outcome)
        if reason is None:
            raise outcome
        run.fail(state, reason)

    def _expire(self, worker: _Worker, run: _PoolRun) -> None:
        state, backend = worker.state, worker.backend
        self._replace(worker)
        run.fail(state, f"{backend} timed out after {state.job.timeout_s:g} s; its worker process was killed")


class _PoolRun:
    """The bookkeeping of one DecodePool.decode call: jobs not yet sent, retries and finished results."""

    def __init__(self, jobs: Iterable[DecodeJob]) -> None:
        self.numbered = enumerate(jobs)
        self.exhausted = False
        self.retries: deque[_JobState] = deque()
        self.finished: dict[int, tuple[DecodeJob, DecodedVideo | Exception]] = {}
        self.next_position = 0

    def next_state(self) -> _JobState | None:
        """Return the next job that needs a worker: a retry first, then a new job; None when none is left.

        New jobs whose file is missing or empty finish here without a worker.
        """
        if self.retries:
            return self.retries.popleft()
        for position, job in self.numbered:
            try:
                check_video_file(job.path)
                backends = deque(backend_chain(job.decoder))
            except (VideoNotFoundError, VideoDecodeError) as error:
                self.finished[position] = (job, error)
                continue
            return _JobState(position=position, job=job, backends=backends)
        self.exhausted = True
        return None

    def fail(self, state: _JobState, reason: str) -> None:
        """Record a backend's failure, then queue the job's next backend or finish it with every reason."""
        state.failures.append(reason)
        log_failure(state.job.path, reason, state.backends)
        if state.backends:
            self.retries.append(state)
        else:
            self.finished[state.position] = (state.job, VideoDecodeError(state.job.path, "; ".join(state.failures)))

    def pop_finished_in_order(self) -> Iterator[tuple[DecodeJob, DecodedVideo | Exception]]:
        while self.next_position in self.finished:
            yield self.finished.pop(self.next_position)
            self.next_position += 1


_shared_pools: dict[tuple[int, int], DecodePool] = {}


def shared_pool() -> DecodePool:
    """Return this thread's one-worker pool for `decode_video` calls with a time limit.

    Keyed by process and thread, so a process forked from this one (a DataLoader worker) and
    each thread start their own worker process instead of sharing one.
    """
    key = (os.getpid(), threading.get_ident())
    pool = _shared_pools.get(key)
    if pool is None:
        pool = _shared_pools[key] = DecodePool(workers=1)
        atexit.register(pool.close)
    return pool


class _LogCollector(logging.Handler):
    """Keeps a worker's log records so the parent process logs them through its own handlers."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))

    def drain(self) -> list[tuple[int, str, str]]:
        records, self.records = self.records, []
        return records


def serve_decode_requests() -> None:
    """Serve decode requests from stdin until it closes; the main loop of a DecodePool worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which closes the pool
    responses = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # native code printing to stdout cannot corrupt responses

    collector = _LogCollector()
    logging.getLogger().addHandler(collector)
    logging.getLogger().setLevel(logging.INFO)

    try:
        import decord  # noqa: F401  (imported before _READY so the first video's time limit excludes it)
    except ImportError:
        pass
    _send_message(responses, _READY)

    requests = sys.stdin.buffer
    while True:
        header = requests.read(_MESSAGE_HEADER.size)
        if len(header) < _MESSAGE_HEADER.size:
            return
        (length,) = _MESSAGE_HEADER.unpack(header)
        backend, path, settings, start_s, end_s, timeout_s = pickle.loads(requests.read(length))

        try:
            outcome = decode_with(backend, path, settings, start_s, end_s, timeout_s)
        except Exception as error:
            outcome = error
        records = collector.drain()
        try:
            _send_message(responses, (outcome, records))
        except (pickle.PicklingError, TypeError, AttributeError):
            _send_message(responses, (RuntimeError(f"{type(outcome).__name__}: {outcome}"), records))


def _send_message(stream, message: object) -> None:
    payload = pickle.dumps(message)
    stream.write(_MESSAGE_HEADER.pack(len(payload)) + payload)
    stream.flush()


# Many videos and the pre-flight scan --------------------------------------------------------------


@dataclass(frozen=True)
class VideoRequest:
    """A video file and, for segment datasets, the segment's start and end in seconds."""

    path: Path
    start_time: float | None = None
    end_time: float | None = None


@dataclass
class LoadResult:
    """One video of `load_many`: its frames, or the error that kept it from decoding."""

    request: VideoRequest
    frames: VideoFrames | None
    error: VideoDecodeError | VideoNotFoundError | None


def load_many(requests: Iterable[VideoRequest], settings: FrameSettings, pool: DecodePool,
              decoder: str = AUTO, timeout_s: float | None = DEFAULT_TIMEOUT_S,
              rng: np.random.Generator | None = None) -> Iterator[LoadResult]:
    """Decode many videos with a pool, yielding a LoadResult per request in request order.

    rng shuffles frames (frame_order 2) and is drawn from in request order, so a seeded rng gives
    the same frame orders on every run whatever the pool size.
    """
    requests = list(requests)
    jobs = []
    for request in requests:
        start_s, end_s = normalise_time_range(request.start_time, request.end_time)
        jobs.append(DecodeJob(path=Path(request.path), settings=settings, start_s=start_s, end_s=end_s,
                              decoder=decoder, timeout_s=timeout_s))

    for request, (_, outcome) in zip(requests, pool.decode(jobs)):
        if isinstance(outcome, DecodedVideo):
            frames = pad_and_order_frames(outcome.frames, settings, outcome.decoder, rng)
            yield LoadResult(request=request, frames=frames, error=None)
        else:
            yield LoadResult(request=request, frames=None, error=outcome)


SCAN_EXISTS, SCAN_FIRST_FRAME, SCAN_SAMPLED_FRAMES = "exists", "first_frame", "sampled_frames"


@dataclass
class ScanReport:
    """Result of a pre-flight scan: the file, or the problem, of each video id."""

    found: dict[str, Path] = field(default_factory=dict)  # id -> file, readable or not
    missing: dict[str, str] = field(default_factory=dict)  # id -> error message
    undecodable: dict[str, str] = field(default_factory=dict)  # id -> error message with every decoder's reason
    fallbacks: dict[str, str] = field(default_factory=dict)  # id -> decoder that read it after decord failed

    @property
    def ok(self) -> bool:
        return not self.missing and not self.undecodable

    def problems(self) -> dict[str, str]:
        """Return each missing or undecodable id with its reason."""
        return {**self.missing, **self.undecodable}

    def summary(self) -> str:
        readable = len(self.found) - len(self.undecodable)
        return (f"{readable} readable, {len(self.missing)} missing, {len(self.undecodable)} undecodable, "
                f"{len(self.fallbacks)} read only by ffmpeg")


def scan_videos(video_dir: str | Path, video_ids: Iterable[str], settings: FrameSettings,
                check: str = SCAN_FIRST_FRAME, pool: DecodePool | None = None, decoder: str = AUTO,
                timeout_s: float | None = DEFAULT_TIMEOUT_S) -> ScanReport:
    """Find each video and check that it decodes, before long work starts.

    check 'exists' only looks the files up; 'first_frame' (default) opens each file and decodes
    its first sampled frame, which catches missing, empty and unreadable files cheaply;
    'sampled_frames' decodes every frame the settings keep, as training will. Without a pool,
    one with a worker per CPU core is used for the scan and closed afterwards.
    """
    if check not in (SCAN_EXISTS, SCAN_FIRST_FRAME, SCAN_SAMPLED_FRAMES):
        raise ValueError(f"unknown scan check {check!r}; use 'exists', 'first_frame' or 'sampled_frames'")
    video_ids = list(dict.fromkeys(video_ids))
    logger.info("scanning %d videos under %s (check %s)", len(video_ids), video_dir, check)

    report = ScanReport()
    for video_id in video_ids:
        try:
            report.found[video_id] = find_video(video_dir, video_id)
        except VideoNotFoundError as error:
            report.missing[video_id] = str(error)

    if check != SCAN_EXISTS and report.found:
        if check == SCAN_FIRST_FRAME:
            settings = dataclasses.replace(settings, max_frames=1, slice_framepos=SLICE_HEAD)
        jobs = [DecodeJob(path=path, settings=settings, decoder=decoder, timeout_s=timeout_s)
                for path in report.found.values()]
        own_pool = pool is None
        pool = pool or DecodePool()
        try:
            for video_id, (_, outcome) in zip(report.found, pool.decode(jobs)):
                if isinstance(outcome, DecodedVideo):
                    if outcome.decoder != DECORD and decoder == AUTO and decord_installed():
                        report.fallbacks[video_id] = outcome.decoder
                else:
                    report.undecodable[video_id] = str(outcome)
        finally:
            if own_pool:
                pool.close()

    log_scan_problems(report)
    logger.info("scan of %s: %s", video_dir, report.summary())
    return report


def log_scan_problems(report: ScanReport) -> None:
    problems = list(report.problems().items())
    for video_id, reason in problems[:SCAN_LOG_LIMIT]:
        logger.warning("video %s: %s", video_id, reason)
    if len(problems) > SCAN_LOG_LIMIT:
        logger.warning("%d more missing or undecodable videos not listed here", len(problems) - SCAN_LOG_LIMIT)
