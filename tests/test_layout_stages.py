"""Precompute and evaluate on a miniature of every annotation layout, made from the bundled clips."""

import json

import pytest

from pipeline.models.clip import CLIP_PRESETS
from stages.evaluate import run_evaluate
from stages.precompute import run_precompute
from layouts import LAYOUTS, as_overrides
from tiny_run import tiny_config

# ActivityNet and DiDeMo miniatures have 16 training paragraphs (one per video), the others 48 captions.
PARAGRAPH_LAYOUTS = {"activity", "didemo"}
# Eight test videos; each layout has one query per video (1k-A, paragraphs) or every caption.
EXPECTED_VIDEOS = 8


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    import torch

    from pipeline.models.student import StudentConfig, TeachCLIPStudent

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "pytorch_model.bin"
    model = TeachCLIPStudent(StudentConfig(clip=CLIP_PRESETS["tiny"], temporal_layers=1))
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_precompute_and_evaluate(layout, tmp_path, tiny_student):
    datasets = LAYOUTS[layout](tmp_path / "data")
    batch_size = 4 if layout in PARAGRAPH_LAYOUTS else 8
    config = tiny_config(tmp_path, overrides=(
        *as_overrides(datasets), f"datasets.data_type={layout}", f"train.batch_size={batch_size}",
        "cache.store_frames=false",
    ))

    result = run_precompute(config)
    assert result.steps_written == result.steps > 0

    metrics = run_evaluate(config, tiny_student, output_dir=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["videos"] == EXPECTED_VIDEOS
    assert written["text_to_video"]["count"] == metrics["queries"]
    assert written["video_to_text"]["count"] == EXPECTED_VIDEOS
