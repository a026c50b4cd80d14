"""Evaluate: teachers ranked through their own heads in chunks, and the files a run writes."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import metrics
from pipeline.cli import main
from pipeline.config import save_config
from pipeline.data.frames import FrameSettings, find_video, load_video_frames
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import StudentConfig, TeachCLIPStudent
from pipeline.models.teachers import load_teacher
from pipeline.models.teachers.tiny import build_tiny_teacher
from pipeline.models.teachers.xclip import XCLIPTeacher
from pipeline.text.tokenizer import tokenize_captions
from stages.evaluate import run_evaluate
from stages.evaluate_teacher import rank_pairwise
from tiny_run import TINY_MAX_FRAMES, TINY_MAX_WORDS, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def full_matrix_ranks(sim_matrix, query_video_index):
    """Text-to-video and video-to-text ranks of a whole matrix, counted in float64 numpy loops."""
    sim_matrix = np.asarray(sim_matrix, dtype=np.float64)
    query_video_index = np.asarray(query_video_index)
    text_to_video = [int((row >= row[video]).sum()) for row, video in zip(sim_matrix, query_video_index)]
    video_to_text = []
    for video in range(sim_matrix.shape[1]):
        own = query_video_index == video
        best = sim_matrix[own, video].max()
        video_to_text.append(1 + int((sim_matrix[~own, video] >= best).sum()))
    return np.array(text_to_video), np.array(video_to_text)


def rank_matrix(sim_matrix, query_video_index, tmp_path, chunk_size, dual_softmax_temperature=None):
    sim_matrix = torch.as_tensor(sim_matrix, dtype=torch.float32)
    return rank_pairwise(lambda rows: sim_matrix[rows], sim_matrix.shape[0], sim_matrix.shape[1],
                         query_video_index, tmp_path / "scores.npy", chunk_size=chunk_size,
                         dual_softmax_temperature=dual_softmax_temperature)


def test_pairwise_ranks_hand_built(tmp_path):
    # Captions 0 and 1 belong to video 0, caption 2 to video 1, caption 3 to video 2.
    sim_matrix = np.array([
        [0.9, 0.1, 0.2],
        [0.3, 0.3, 0.8],
        [0.5, 0.4, 0.6],
        [0.2, 0.7, 0.7],
    ])
    ranks = rank_matrix(sim_matrix, [0, 0, 1, 2], tmp_path, chunk_size=2)
    # Caption 1 ties with video 1, so video 1 counts against it: rank 1 + 2 (0.3 tie, 0.8).
    assert ranks.text_to_video.tolist() == [1, 3, 3, 2]
    # Video 0's best caption scores 0.9: no other caption reaches it. Video 1 (own 0.4): caption 3
    # (0.7) scores higher. Video 2 (own 0.7): caption 1 (0.8) scores higher.
    assert ranks.video_to_text.tolist() == [1, 2, 2]


def test_pairwise_own_tied_captions_not_counted(tmp_path):
    sim_matrix = np.array([[0.5, 0.0], [0.5, 0.1], [0.5, 0.9]])
    ranks = rank_matrix(sim_matrix, [0, 0, 1], tmp_path, chunk_size=1)
    # Video 0's two captions tie at 0.5; caption 2 of video 1 also scores 0.5 and counts against it.
    assert ranks.video_to_text.tolist() == [2, 1]


def test_paragraph_queries_one_per_video(tmp_path):
    rng = np.random.default_rng(3)
    sim_matrix = rng.standard_normal((6, 6))
    ranks = rank_matrix(sim_matrix, np.arange(6), tmp_path, chunk_size=4)
    expected_t2v = metrics.query_ranks(torch.as_tensor(sim_matrix), torch.arange(6))
    expected_v2t = metrics.query_ranks(torch.as_tensor(sim_matrix).T, torch.arange(6))
    assert ranks.text_to_video.tolist() == expected_t2v.tolist()
    assert ranks.video_to_text.tolist() == expected_v2t.tolist()


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 100])
def test_pairwise_chunks_equal_full_matrix(tmp_path, chunk_size):
    rng = np.random.default_rng(4)
    query_video_index = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 1, 3])
    sim_matrix = rng.standard_normal((len(query_video_index), 5)).astype(np.float32)
    ranks = rank_matrix(sim_matrix, query_video_index, tmp_path, chunk_size=chunk_size)

    expected_t2v, expected_v2t = full_matrix_ranks(sim_matrix, query_video_index)
    assert ranks.text_to_video.tolist() == expected_t2v.tolist()
    assert ranks.video_to_text.tolist() == expected_v2t.tolist()
    library_v2t = metrics.video_to_text_ranks(torch.as_tensor(sim_matrix), torch.as_tensor(query_video_index))
    assert ranks.video_to_text.tolist() == library_v2t.tolist()


def test_pairwise_dual_softmax_matches_formula(tmp_path):
    rng = np.random.default_rng(5)
    query_video_index = np.array([0, 1, 1, 2, 3, 3])
    sim_matrix = torch.as_tensor(rng.standard_normal((6, 4)) * 3, dtype=torch.float32)
    ranks = rank_matrix(sim_matrix, query_video_index, tmp_path, chunk_size=4, dual_softmax_temperature=1.0)

    reweighted = sim_matrix.double() * torch.softmax(sim_matrix.double(), dim=0)  # [queries, videos]
    expected = [int((row >= row[video]).sum()) for row, video in zip(reweighted, query_video_index)]
    assert ranks.text_to_video_dual_softmax.tolist() == expected


def test_pairwise_nan_score_rejected(tmp_path):
    sim_matrix = np.array([[0.1, np.nan], [0.2, 0.3]])
    with pytest.raises(metrics.NonFiniteScoreError):
        rank_matrix(sim_matrix, [0, 1], tmp_path, chunk_size=1)


def test_teacher_chunked_equals_unchunked(tmp_path):
    teacher = build_tiny_teacher(XCLIPTeacher, CLIP_PRESETS["tiny"], max_words=TINY_MAX_WORDS,
                                 max_frames=TINY_MAX_FRAMES, seed=2)
    captions = ["a man cooks pasta", "a dog runs", "two people talk", "a red car", "a cat sleeps",
                "children play football", "someone sings"]
    query_video_index = np.array([0, 1, 1, 2, 3, 3, 0])
    tokens = tokenize_captions(captions, TINY_MAX_WORDS)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, TINY_MAX_FRAMES, 224, 224, 3), dtype=torch.uint8, generator=generator)
    frame_mask = torch.ones(4, TINY_MAX_FRAMES, dtype=torch.long)
    frame_mask[2, 2:] = 0

    with torch.no_grad():
        texts = teacher.encode_texts(torch.from_numpy(tokens.input_ids).long(),
                                     torch.from_numpy(tokens.attention_mask).long())
        videos = teacher.encode_videos(normalize_frames(frames), frame_mask)
        full = teacher.score(texts, videos)  # [texts, videos]

        def score_block(rows):
            return teacher.score({name: tensor[rows] for name, tensor in texts.items()}, videos)

        for chunk_size in (1, 3, 7):
            ranks = rank_pairwise(score_block, len(captions), 4, query_video_index,
                                  tmp_path / f"scores{chunk_size}.npy", chunk_size=chunk_size)
            assert ranks.text_to_video.tolist() == metrics.query_ranks(full, query_video_index).tolist()
            assert ranks.video_to_text.tolist() == metrics.video_to_text_ranks(full, query_video_index).tolist()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("evaluate")
    config = tiny_config(directory)
    torch.manual_seed(0)
    student_path = directory / "models" / "tiny-student.bin"
    student = TeachCLIPStudent(StudentConfig(clip=CLIP_PRESETS["tiny"], temporal_layers=1))
    torch.save(student.state_dict(), student_path)
    return config, student_path


@pytest.fixture(scope="module")
def student_run(tiny_setup, tmp_path_factory):
    config, student_path = tiny_setup
    output_dir = tmp_path_factory.mktemp("student-eval")
    result = run_evaluate(config, student_path, output_dir=output_dir,
                          export_features=("zarr", "hdf5", "bigfile"))
    return output_dir, result


def read_rank_csv(path, key):
    with path.open() as handle:
        return {row[key]: int(row["rank"]) for row in csv.DictReader(handle)}


def test_student_bigfile_reproduces_ranks(student_run):
    output_dir, _ = student_run
    bigfile = output_dir / "bigfile"
    text_ids = (bigfile / "text_features" / "id.txt").read_text().split()
    video_ids = (bigfile / "video_features" / "id.txt").read_text().split()
    text_rows, dim = (int(value) for value in (bigfile / "text_features" / "shape.txt").read_text().split())
    texts = np.fromfile(bigfile / "text_features" / "feature.bin", dtype="<f4").reshape(text_rows, dim)
    videos = np.fromfile(bigfile / "video_features" / "feature.bin", dtype="<f4").reshape(len(video_ids), dim)
    ground_truth = dict(line.split("\t") for line in (bigfile / "ground_truth.txt").read_text().splitlines())
    query_video_index = np.array([video_ids.index(ground_truth[text_id]) for text_id in text_ids])

    expected_t2v, expected_v2t = full_matrix_ranks(texts.astype(np.float64) @ videos.T.astype(np.float64),
                                                   query_video_index)
    query_ranks = read_rank_csv(output_dir / "ranks.csv", "query_id")
    video_ranks = read_rank_csv(output_dir / "video_ranks.csv", "video_id")
    assert [query_ranks[text_id] for text_id in text_ids] == expected_t2v.tolist()
    assert [video_ranks[video_id] for video_id in video_ids] == expected_v2t.tolist()


def test_student_metrics_from_ranks(student_run):
    output_dir, _ = student_run
    written = json.loads((output_dir / "metrics.json").read_text())
    ranks = np.array(list(read_rank_csv(output_dir / "ranks.csv", "query_id").values()))
    assert written["model"] == "student"
    assert written["text_to_video"]["R1"] == pytest.approx(100.0 * np.mean(ranks <= 1))
    assert written["text_to_video"]["MeanR"] == pytest.approx(ranks.mean())
    assert set(written["features"]) == {"zarr", "hdf5", "bigfile"}


def test_student_report_png_written(student_run):
    output_dir, result = student_run
    assert (output_dir / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert result["report"] == str(output_dir / "report.png")


def test_teacher_evaluate_matches_full_scores(tiny_setup, tmp_path):
    config, _ = tiny_setup
    teacher_path = config.distillation.teachers[0].checkpoint
    config_path = tmp_path / "config.yaml"
    save_config(config, config_path)

    result = CliRunner().invoke(main, [
        "evaluate", "--config", str(config_path), "--checkpoint", str(teacher_path), "--teacher", "XCLIP",
        "--teacher-chunk-size", "3", "--output-dir", str(tmp_path / "eval"),
    ])
    assert result.exit_code == 0, result.output
    assert "video_to_text" in result.output
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["model"] == "xclip"
    assert not (tmp_path / "eval" / "features.zarr").exists()

    # Independent computation: decode each test video, encode everything, score the whole matrix.
    query_ranks = read_rank_csv(tmp_path / "eval" / "ranks.csv", "query_id")
    with (tmp_path / "eval" / "ranks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    video_ids = list(dict.fromkeys(row["video_id"] for row in rows))
    query_video_index = np.array([video_ids.index(row["video_id"]) for row in rows])

    teacher = load_teacher("xclip", teacher_path).eval()
    settings = FrameSettings(max_frames=TINY_MAX_FRAMES)
    decoded = [load_video_frames(find_video(config.datasets.video_path, video_id), settings) for video_id in video_ids]
    tokens = tokenize_captions(read_test_captions(config, rows), TINY_MAX_WORDS)
    with torch.no_grad():
        texts = teacher.encode_texts(torch.from_numpy(tokens.input_ids).long(),
                                     torch.from_numpy(tokens.attention_mask).long())
        videos = teacher.encode_videos(normalize_frames(torch.from_numpy(np.stack([v.frames for v in decoded]))),
                                       torch.from_numpy(np.stack([v.frame_mask for v in decoded])).long())
        full = teacher.score(texts, videos).numpy()
    expected_t2v, expected_v2t = full_matrix_ranks(full, query_video_index)
    assert [query_ranks[row["query_id"]] for row in rows] == expected_t2v.tolist()
    video_ranks = read_rank_csv(tmp_path / "eval" / "video_ranks.csv", "video_id")
    assert [video_ranks[video_id] for video_id in video_ids] == expected_v2t.tolist()


def read_test_captions(config, rows):
    """Captions of the test csv in the order of ranks.csv, read straight from the csv."""
    with open(config.datasets.test_csv) as handle:
        by_key = {row["key"]: row["sentence"] for row in csv.DictReader(handle)}
    return [by_key[row["query_id"]] for row in rows]


def test_unknown_teacher_named(tiny_setup, tmp_path):
    config, student_path = tiny_setup
    with pytest.raises(ValueError, match="unknown teacher 'vip'"):
        run_evaluate(config, student_path, output_dir=tmp_path, teacher="vip")
