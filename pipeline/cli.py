"""The `teachclip-pipeline` command: precompute, distill, evaluate, demo and cache tools."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from cache.errors import CacheError
from pipeline.config import ConfigError, load_config

logger = logging.getLogger(__name__)

CONFIG_HELP = "YAML config file (sections model, datasets, distillation, train, cache, evaluate)."
SET_HELP = "Override one config value, as section.key=value (repeatable), e.g. --set train.epochs=1."


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def read_config(path: str, overrides: tuple[str, ...]):
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        raise click.ClickException(str(error)) from error


def run_stage(function, *args, **kwargs):
    """Run a stage and turn its user-facing errors into a message without a traceback, and exit code 1.

    `--verbose` logs the traceback as well.
    """
    try:
        return function(*args, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, CacheError, FloatingPointError) as error:
        logger.debug("stage failed", exc_info=True)
        if isinstance(error, (ConfigError, CacheError)):
            raise click.ClickException(str(error)) from error
        raise click.ClickException(f"{type(error).__name__}: {error}") from error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train fast text-to-video retrieval students by TeachCLIP distillation from cached teacher targets."""
    setup_logging(verbose)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help=SET_HELP)
@click.option("--cache", "cache_path", default=None, help="Cache location (zarr directory, fsspec URL or .h5 file); "
              "default: cache.path, else <train.output_dir>/teacher_cache.zarr.")
@click.option("--backend", type=click.Choice(["zarr", "hdf5"]), default=None,
              help="Cache format; default: cache.backend (zarr).")
@click.option("--device", default=None, help="Torch device for the teachers, e.g. cuda:0; default: cuda if available, else cpu.")
def precompute(config_path: str, overrides: tuple[str, ...], cache_path: str | None, backend: str | None,
               device: str | None) -> None:
    """Run the teachers over every training batch and store their targets (resumes an interrupted run)."""
    from stages.precompute import run_precompute

    extra = tuple(overrides)
    if cache_path:
        extra += (f"cache.path={cache_path}",)
    if backend:
        extra += (f"cache.backend={backend}",)
    config = read_config(config_path, extra)
    result = run_stage(run_precompute, config, device=device)
    click.echo(f"teacher cache: {result.cache_path} ({result.steps} steps, {result.steps_written} written now, "
               f"{result.seconds:.1f} s)")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help=SET_HELP)
@click.option("--cache", "cache_path", default=None, help="Teacher cache written by precompute; default as in precompute.")
@click.option("--output-dir", default=None, help="Run directory for checkpoints and logs; default: train.output_dir.")
@click.option("--resume", is_flag=True, help="Continue from the last saved state in the run directory.")
@click.option("--online", is_flag=True, help="Run the teachers inside the training loop instead of reading a cache "
              "(no disk needed for targets; slower).")
def distill(config_path: str, overrides: tuple[str, ...], cache_path: str | None, output_dir: str | None,
            resume: bool, online: bool) -> None:
    """Train the student against the cached teacher targets (use `accelerate launch` or torchrun for several processes)."""
    from stages.distill import run_distill

    extra = tuple(overrides)
    if cache_path:
        extra += (f"cache.path={cache_path}",)
    if output_dir:
        extra += (f"train.output_dir={output_dir}",)
    config = read_config(config_path, extra)
    result = run_stage(run_distill, config, resume=resume, online=online)
    click.echo(f"run directory: {result.output_dir}; best validation R@1 {result.best_r1:.1f} "
               f"({result.best_checkpoint})")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one config value, as section.key=value (repeatable), e.g. --set evaluate.dual_softmax=true.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Student checkpoint (pytorch_model.bin written by distill, or TeachCLIP's release); "
              "with --teacher, that teacher's checkpoint.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True, help="Split to rank.")
@click.option("--output-dir", default=None, help="Where metrics.json and ranks.csv go; default: evaluate.output_dir, "
              "else <train.output_dir>/eval.")
@click.option("--device", default=None, help="Torch device; default: cuda if available, else cpu.")
@click.option("--teacher", default=None, metavar="NAME",
              help="Evaluate a teacher (xclip, ts2net, xpool, clip4clip) through its own similarity head instead "
              "of a student.")
@click.option("--teacher-chunk-size", default=None, type=click.IntRange(min=1),
              help="Queries per call of the teacher's similarity head; bounds memory. Default: about 65,536 "
              "text-video pairs per call.")
@click.option("--export-features", multiple=True, default=("zarr",), show_default=True,
              type=click.Choice(["zarr", "hdf5", "bigfile", "none"]),
              help="Write the student's text and video vectors in this format (repeatable): features.zarr, "
              "features.h5, or TeachCLIP's BigFile directories under bigfile/.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Draw report.png: recall-at-K curves and rank histograms of both directions.")
def evaluate(config_path: str, overrides: tuple[str, ...], checkpoint: str, split: str, output_dir: str | None,
             device: str | None, teacher: str | None, teacher_chunk_size: int | None,
             export_features: tuple[str, ...], report: bool) -> None:
    """Rank every video for every query: text-to-video and video-to-text R@1/5/10/50, median and mean rank."""
    from stages.evaluate import format_table, run_evaluate

    config = read_config(config_path, tuple(overrides))
    result = run_stage(run_evaluate, config, checkpoint, split_name=split, output_dir=output_dir, device=device,
                       teacher=teacher, export_features=export_features, report=report,
                       teacher_chunk_size=teacher_chunk_size)
    click.echo(format_table(result))


@main.command()
@click.option("--output-dir", default="demo-output", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's models, cache, run directory and metrics.")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1), help="Training epochs.")
@click.option("--backend", type=click.Choice(["zarr", "hdf5"]), default="zarr", show_default=True, help="Cache format.")
def demo(output_dir: str, epochs: int, backend: str) -> None:
    """Run precompute, distill and evaluate on the bundled clips with tiny random models (CPU, under a minute)."""
    from stages.demo import run_demo

    result = run_stage(run_demo, Path(output_dir), epochs=epochs, backend=backend)
    click.echo(result)


@main.group()
def cache() -> None:
    """Inspect and check teacher caches."""


@cache.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def cache_info(path: str, as_json: bool) -> None:
    """Describe a cache: sizes, teachers, steps done, fingerprint fields."""
    from cache.inspect import describe_store, format_description

    description = run_stage(describe_store, path)
    click.echo(json.dumps(description, indent=2, default=str) if as_json else format_description(description))


@cache.command("verify")
@click.argument("path")
def cache_verify(path: str) -> None:
    """Check completeness, shapes, NaN and Inf, frame-target sums and every chunk; exit 1 on any fault."""
    from cache.verify import verify_store

    report = run_stage(verify_store, path)
    click.echo(report.format())
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN_OR_METRICS...")
@click.option("--format", "table_format", type=click.Choice(["markdown", "plain"]), default="markdown",
              show_default=True, help="Table layout.")
def compare(runs: tuple[str, ...], table_format: str) -> None:
    """Compare the metrics.json of several runs (files, or folders that contain metrics.json or eval/metrics.json)."""
    from pipeline.report import comparison_table

    click.echo(run_stage(comparison_table, list(runs), table_format))


@main.command()
@click.argument("video_dir", type=click.Path(file_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Student checkpoint.")
@click.option("--output", required=True, type=click.Path(), help="Feature store directory (zarr) to write or resume.")
@click.option("--feature-framerate", default=1, show_default=True, type=click.IntRange(min=1),
              help="Frames sampled per second of video.")
@click.option("--max-frames", default=12, show_default=True, type=click.IntRange(min=1),
              help="Frames kept per video.")
@click.option("--slice-framepos", type=click.Choice(["head", "tail", "uniform"]), default="uniform",
              show_default=True, help="Which frames are kept when a video has more than --max-frames.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored vector type.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Videos per forward pass.")
@click.option("--chunk-videos", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Videos per store chunk; a killed run loses at most one chunk of work.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Decoding processes; default: one per CPU core.")
@click.option("--decode-timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds one video may take to decode before it is listed as failed.")
@click.option("--device", default=None, help="Torch device; default: cuda if available, else cpu.")
@click.option("--overwrite", is_flag=True, help="Rebuild an existing feature store instead of resuming it.")
@click.option("--max-chunks", default=None, type=click.IntRange(min=1),
              help="Stop after encoding this many chunks (for time-limited jobs); the next run continues.")
def index(video_dir: str, checkpoint: str, output: str, feature_framerate: int, max_frames: int,
          slice_framepos: str, dtype: str, batch_size: int, chunk_videos: int, workers: int | None,
          decode_timeout: float, device: str | None, overwrite: bool, max_chunks: int | None) -> None:
    """Encode every video of VIDEO_DIR (.mp4 .avi .webm .mkv .mov) into a feature store for search."""
    from stages.index import SLICE_POSITIONS, IndexSettings, run_index

    settings = IndexSettings(feature_framerate=feature_framerate, max_frames=max_frames,
                             slice_framepos=SLICE_POSITIONS[slice_framepos], dtype=dtype, batch_size=batch_size,
                             chunk_videos=chunk_videos, workers=workers, decode_timeout_s=decode_timeout)
    result = run_stage(run_index, video_dir, checkpoint, output, settings, device=device, overwrite=overwrite,
                       max_chunks=max_chunks)
    state = "complete" if result.complete else "incomplete, run index again to continue"
    click.echo(f"feature store: {result.store} ({result.videos} videos; {result.encoded} encoded now, "
               f"{result.failed} failed now, {result.failed_total} listed in failed.json; {state}; "
               f"{result.seconds:.1f} s)")


@main.command()
@click.argument("store", type=click.Path())
@click.argument("queries", nargs=-1)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Student checkpoint that encodes the queries (the one that built the index).")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--max-words", default=32, show_default=True, type=click.IntRange(min=3),
              help="Tokens per query, start and end tokens included.")
@click.option("--paths", "paths_dir", default=None, type=click.Path(file_okay=False),
              help="Video folder, to print each result's file when STORE is a BigFile directory.")
@click.option("--interactive", is_flag=True, help="Read queries from standard input, one per line.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per query.")
@click.option("--device", default=None, help="Torch device; default: cuda if available, else cpu.")
def search(store: str, queries: tuple[str, ...], checkpoint: str, top_k: int, max_words: int,
           paths_dir: str | None, interactive: bool, as_json: bool, device: str | None) -> None:
    """Rank the videos of STORE (a feature store from index, or a BigFile directory) for each text query."""
    from dataclasses import asdict

    from stages.search import format_hits, open_searcher

    if not queries and not interactive:
        raise click.UsageError("give at least one query, or --interactive to read queries from standard input")
    searcher = run_stage(open_searcher, store, checkpoint, device=device, max_words=max_words, paths_dir=paths_dir)

    def answer(text: str) -> None:
        hits = run_stage(searcher.search, text, top_k)
        if as_json:
            click.echo(json.dumps({"query": text, "results": [asdict(hit) for hit in hits]}))
        else:
            click.echo(format_hits(text, hits))

    for text in queries:
        answer(text)
    if interactive:
        prompt = sys.stdin.isatty()
        if prompt:
            click.echo("query (Ctrl-D ends): ", nl=False, err=True)
        for line in sys.stdin:
            if line.strip():
                answer(line.strip())
            if prompt:
                click.echo("query (Ctrl-D ends): ", nl=False, err=True)


if __name__ == "__main__":
    main()
