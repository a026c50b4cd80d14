"""Reports of retrieval ranks: a PNG with recall-at-K curves and rank histograms, and a table
that compares the metrics.json files of several runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPORT_FILE = "report.png"
METRICS_FILE = "metrics.json"
# A run directory of distill keeps its evaluation here; evaluate's default output folder.
EVAL_SUBDIR = "eval"
STUDENT = "student"

# Figure size in inches and resolution: two panels side by side, 1200 x 450 pixels.
FIGURE_SIZE_INCHES = (12.0, 4.5)
FIGURE_DPI = 100
# Histogram bins per decade of rank (bins are log-spaced, since ranks span 1 to the gallery size).
HISTOGRAM_BINS_PER_DECADE = 8
# Rank axes up to this size are labelled at 1, 2 and 5 times each power of ten; larger ones at powers only.
LABELLED_STEPS_UP_TO = 1000

DIRECTIONS = ("text_to_video", "video_to_text")
COMPARED_METRICS = ("R1", "R5", "R10", "R50", "MedianR", "MeanR")
TABLE_FORMATS = ("markdown", "plain")


@dataclass(frozen=True)
class RankSeries:
    """One direction's ranks (1-based) and the number of candidates each query was ranked among."""

    label: str
    ranks: np.ndarray  # [queries] int
    gallery_size: int


def recall_curve(ranks: np.ndarray, gallery_size: int) -> np.ndarray:
    """Return R@K in percent for K = 1 .. gallery_size: the share of ranks at most K, float64 [gallery_size]."""
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("cannot draw a recall curve from zero ranks")
    if ranks.min() < 1 or ranks.max() > gallery_size:
        raise ValueError(f"ranks must lie in [1, {gallery_size}], got [{ranks.min()}, {ranks.max()}]")
    counts = np.bincount(ranks, minlength=gallery_size + 1)[1:]  # [gallery_size], queries at each rank
    return np.cumsum(counts) * 100.0 / ranks.size


def histogram_edges(largest_rank: int) -> np.ndarray:
    """Return integer bin edges from 1 to largest_rank + 1, log-spaced, so small ranks get one bin each."""
    bins = max(1, int(np.ceil(np.log10(largest_rank + 1) * HISTOGRAM_BINS_PER_DECADE)))
    edges = np.unique(np.round(np.logspace(0, np.log10(largest_rank + 1), bins + 1)).astype(np.int64))
    return edges.astype(np.float64)


def label_log_axis(axes, largest: int) -> None:
    """Put the x axis (ranks) on a log scale, labelled with plain numbers at 1, 2, 5, 10, 20, ...

    Past LABELLED_STEPS_UP_TO, only powers of ten are labelled, so the labels do not overlap.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_xscale("log")
    steps = (1.0, 2.0, 5.0) if largest <= LABELLED_STEPS_UP_TO else (1.0,)
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=steps))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def write_rank_report(series: list[RankSeries], path: str | Path, title: str = "") -> Path:
    """Draw the recall-at-K curves (left) and the rank histograms (right) of each series into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    figure, (curve_axis, histogram_axis) = plt.subplots(1, 2, figsize=FIGURE_SIZE_INCHES)

    for item in series:
        cutoffs = np.arange(1, item.gallery_size + 1)
        curve_axis.plot(cutoffs, recall_curve(item.ranks, item.gallery_size), drawstyle="steps-post",
                        label=f"{item.label} ({len(item.ranks)} queries, {item.gallery_size} candidates)")
    largest = max(item.gallery_size for item in series)
    label_log_axis(curve_axis, largest)
    curve_axis.set_xlabel("K")
    curve_axis.set_ylabel("R@K (%)")
    curve_axis.set_ylim(0, 100)
    curve_axis.grid(True, which="both", alpha=0.3)
    curve_axis.legend(loc="lower right")
    curve_axis.set_title("recall at K")

    edges = histogram_edges(largest)
    for item in series:
        histogram_axis.hist(item.ranks, bins=edges, histtype="step", linewidth=1.5, label=item.label)
    label_log_axis(histogram_axis, largest)
    histogram_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    histogram_axis.set_xlabel("rank of the positive (1 is best)")
    histogram_axis.set_ylabel("queries")
    histogram_axis.legend(loc="upper right")
    histogram_axis.set_title("rank histogram")

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    logger.info("wrote rank report %s", path)
    return path


def find_metrics_file(path: str | Path) -> Path:
    """Return the metrics.json of a run: the file itself, `<dir>/metrics.json` or `<dir>/eval/metrics.json`."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / METRICS_FILE, path / EVAL_SUBDIR / METRICS_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"no metrics file for {path} (tried {tried}); pass a metrics.json written by "
                            "evaluate, or the folder that contains it")


def load_run_metrics(path: str | Path) -> dict:
    """Read a run's metrics.json and check that it has both directions."""
    metrics_path = find_metrics_file(path)
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{metrics_path} is not valid JSON: {error}") from error
    for direction in DIRECTIONS:
        if direction not in metrics:
            raise ValueError(f"{metrics_path} has no '{direction}' metrics; it was not written by evaluate")
    return metrics


def run_label(path: str | Path, metrics: dict) -> str:
    """Name a run in a table: its checkpoint (prefixed by the teacher's name for a teacher), else its folder."""
    checkpoint = metrics.get("checkpoint")
    model = metrics.get("model", STUDENT)
    if checkpoint:
        return str(checkpoint) if model == STUDENT else f"{model}: {checkpoint}"
    path = Path(path)
    return str(path.parent if path.name == METRICS_FILE else path)


def comparison_table(paths: list[str | Path], table_format: str = "markdown") -> str:
    """Compare runs: one row per metrics.json with text-to-video and video-to-text R@1/5/10/50, MedianR, MeanR."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {table_format!r}; expected one of {TABLE_FORMATS}")
    if not paths:
        raise ValueError("no runs to compare; pass one or more metrics.json files or run folders")

    header = ["run", "split"]
    for direction in DIRECTIONS:
        prefix = "t2v" if direction == "text_to_video" else "v2t"
        header += [f"{prefix} {name}" for name in COMPARED_METRICS]

    rows = []
    for path in paths:
        metrics = load_run_metrics(path)
        row = [run_label(path, metrics), str(metrics.get("split", ""))]
        for direction in DIRECTIONS:
            row += [f"{float(metrics[direction][name]):.1f}" for name in COMPARED_METRICS]
        rows.append(row)

    if table_format == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
                     for row in [header, *rows])
