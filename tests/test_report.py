"""The rank report PNG, recall curves, and the table that compares runs."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.report import (
    FIGURE_DPI,
    FIGURE_SIZE_INCHES,
    RankSeries,
    comparison_table,
    histogram_edges,
    recall_curve,
    write_rank_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Matplotlib's first two line colours (tab:blue, tab:orange) in RGB.
FIRST_LINE_RGB = (31, 119, 180)
SECOND_LINE_RGB = (255, 127, 14)


def metrics_record(checkpoint, t2v_r1, v2t_r1, split="test"):
    def direction(r1):
        return {"R1": r1, "R5": 50.0, "R10": 75.0, "R50": 100.0, "MedianR": 3.0, "MeanR": 4.25, "count": 4}

    return {"model": "student", "checkpoint": checkpoint, "split": split,
            "text_to_video": direction(t2v_r1), "video_to_text": direction(v2t_r1)}


def count_pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    distance = np.abs(image[..., :3].astype(int) - np.array(rgb)).sum(axis=-1)
    return int((distance < tolerance).sum())


def test_recall_curve_by_hand():
    curve = recall_curve(np.array([1, 3, 3, 5]), gallery_size=5)
    np.testing.assert_allclose(curve, [25.0, 25.0, 75.0, 75.0, 100.0])


def test_recall_curve_rank_beyond_gallery_rejected():
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        recall_curve(np.array([1, 4]), gallery_size=3)


@pytest.mark.parametrize("largest", [1, 8, 1000, 59_800])
def test_histogram_edges_cover_every_rank(largest):
    edges = histogram_edges(largest)
    assert edges[0] == 1
    assert edges[-1] == largest + 1
    assert np.all(np.diff(edges) >= 1)


def test_report_png_has_two_panels(tmp_path):
    rng = np.random.default_rng(0)
    series = [
        RankSeries("text-to-video", rng.integers(1, 101, size=300), gallery_size=100),
        RankSeries("video-to-text", rng.integers(1, 301, size=100), gallery_size=300),
    ]
    path = write_rank_report(series, tmp_path / "report.png", title="tiny run")

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = np.asarray(Image.open(path).convert("RGB"))
    width, height = (round(size * FIGURE_DPI) for size in FIGURE_SIZE_INCHES)
    assert image.shape[:2] == (height, width)
    left, right = image[:, : width // 2], image[:, width // 2:]
    for panel in (left, right):
        assert count_pixels_near(panel, FIRST_LINE_RGB) > 100
        assert count_pixels_near(panel, SECOND_LINE_RGB) > 100


def test_compare_markdown_table(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics_record("a.bin", 12.5, 25.0)))
    (tmp_path / "b" / "eval").mkdir(parents=True)
    (tmp_path / "b" / "eval" / "metrics.json").write_text(json.dumps(metrics_record("b.bin", 40.0, 37.5)))

    table = comparison_table([tmp_path / "a" / "metrics.json", tmp_path / "b"]).splitlines()
    assert table[0].startswith("| run | split | t2v R1 | t2v R5 |")
    assert "v2t MeanR |" in table[0]
    assert table[2].startswith("| a.bin | test | 12.5 | 50.0 | 75.0 | 100.0 | 3.0 | 4.2 | 25.0 |")
    assert table[3].startswith("| b.bin | test | 40.0 |")
    assert len(table) == 4


def test_compare_plain_table_aligned(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics_record("model.bin", 5.0, 6.0)))
    lines = comparison_table([tmp_path], table_format="plain").splitlines()
    assert lines[0].split()[:4] == ["run", "split", "t2v", "R1"]
    assert lines[1].split()[:4] == ["model.bin", "test", "5.0", "50.0"]
    assert len(lines[0]) == len(lines[1])


def test_compare_teacher_row_named(tmp_path):
    record = metrics_record("xclip.bin", 30.0, 31.0)
    record["model"] = "xclip"
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert "| xclip: xclip.bin | test | 30.0 |" in comparison_table([tmp_path])


def test_compare_missing_metrics_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval/metrics.json"):
        comparison_table([tmp_path / "nowhere"])


def test_compare_cli_prints_table(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics_record("m.bin", 1.0, 2.0)))
    result = CliRunner().invoke(main, ["compare", str(tmp_path), "--format", "plain"])
    assert result.exit_code == 0, result.output
    assert "m.bin" in result.output


def test_compare_cli_missing_file_error(tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "gone.json")])
    assert result.exit_code == 1
    assert "no metrics file for" in result.output
