"""Index a folder of real clips into a feature store, resume it, and search it (library and CLI)."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.data.frames import FrameSettings, load_video_frames
from pipeline.exports import write_bigfile
from pipeline.feature_store import FeatureStore
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import StudentConfig, TeachCLIPStudent
from stages.index import IndexMismatchError, IndexSettings, list_video_files, run_index
from stages.search import encode_queries, load_search_index, open_searcher, top_k

# Few frames keep decoding and encoding fast; the CLI defaults (1 frame/s, 12 frames) are checked apart.
TEST_MAX_FRAMES = 3
CLIPS = ("video0", "video1", "video2", "video3")
# float16 keeps about 3 significant digits.
FLOAT16_TOLERANCE = 2e-3


def save_tiny_student(path, seed):
    torch.manual_seed(seed)
    model = TeachCLIPStudent(StudentConfig(clip=CLIP_PRESETS["tiny"], temporal_layers=1))
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "student.bin"
    return path, save_tiny_student(path, seed=0)


@pytest.fixture
def video_dir(tmp_path, demo_data_dir):
    """Four real clips (one in a subfolder) and a text file named like a video."""
    folder = tmp_path / "videos"
    (folder / "more").mkdir(parents=True)
    for name in CLIPS[:3]:
        shutil.copy(demo_data_dir / "videos" / f"{name}.mp4", folder / f"{name}.mp4")
    shutil.copy(demo_data_dir / "videos" / f"{CLIPS[3]}.mp4", folder / "more" / f"{CLIPS[3]}.mp4")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n")
    (folder / "readme.txt").write_text("not listed: the extension is not a video extension\n")
    return folder


def index_settings(**changes):
    values = {"max_frames": TEST_MAX_FRAMES, "chunk_videos": 2, "batch_size": 2, "workers": 2}
    values.update(changes)
    return IndexSettings(**values)


def build_store(path, vectors, valid=None, ids=None, chunk_videos=3):
    """A feature store written by hand: given vectors, all chunks done."""
    count = len(vectors)
    ids = ids or [f"clip{row}" for row in range(count)]
    store = FeatureStore.create(path, ids, [f"/videos/{item}.mp4" for item in ids], dim=vectors.shape[1],
                                dtype="float16", attributes={}, chunk_videos=chunk_videos)
    valid = np.ones(count, dtype=bool) if valid is None else valid
    for chunk in range(store.num_chunks):
        rows = store.chunk_rows(chunk)
        store.write_chunk(chunk, vectors[rows.start:rows.stop], valid[rows.start:rows.stop])
    return store


def unit_rows(rows, dim, seed):
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1).numpy()


def test_list_video_files_ids(video_dir):
    listed = list_video_files(video_dir)
    assert [video_id for video_id, _ in listed] == ["more/video3", "notes", "video0", "video1", "video2"]


def test_list_video_files_same_stem(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "clip.avi").write_bytes(b"x")
    assert [video_id for video_id, _ in list_video_files(tmp_path)] == ["clip.avi", "clip.mp4"]


def test_index_lists_text_file_failed(video_dir, student, tmp_path):
    checkpoint, _ = student
    result = run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    assert result.videos == 5
    assert result.encoded == 4
    assert result.failed == 1

    failed = json.loads((tmp_path / "store" / "failed.json").read_text())
    assert [entry["video_id"] for entry in failed] == ["notes"]
    assert failed[0]["path"] == str(video_dir / "notes.mp4")
    assert "decord" in failed[0]["reason"]

    store = FeatureStore.open(tmp_path / "store")
    assert store.is_complete()
    assert store.valid().tolist() == [True, False, True, True, True]
    index = load_search_index(tmp_path / "store")
    assert "notes" not in index.ids
    assert len(index.ids) == 4


def test_index_vectors_match_student(video_dir, student, tmp_path):
    checkpoint, model = student
    run_index(video_dir, checkpoint, tmp_path / "store", index_settings(dtype="float32"))
    store = FeatureStore.open(tmp_path / "store")
    stored = store.read_vectors()
    ids = store.ids()

    settings = FrameSettings(max_frames=TEST_MAX_FRAMES)
    for name in ("video0", "more/video3"):
        decoded = load_video_frames(video_dir / f"{name}.mp4", settings)
        with torch.no_grad():
            expected = model.encode_video(normalize_frames(torch.from_numpy(decoded.frames[None])),
                                          torch.from_numpy(decoded.frame_mask[None]))[0].numpy()
        np.testing.assert_allclose(stored[ids.index(name)], expected, atol=1e-5)
        assert np.linalg.norm(stored[ids.index(name)]) == pytest.approx(1.0, abs=1e-5)


def test_index_resume_encodes_missing_chunks(video_dir, student, tmp_path):
    checkpoint, _ = student
    run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    complete = FeatureStore.open(tmp_path / "store").read_vectors()

    # A run killed after the first chunk leaves the later chunks' done flags unset; reproduce that state.
    store = FeatureStore.open(tmp_path / "store", writable=True)
    for chunk in (1, 2):
        store.reset_chunk(chunk)
    resumed = run_index(video_dir, checkpoint, tmp_path / "store", index_settings())

    assert resumed.chunks_already_done == 1
    assert resumed.encoded == 3  # rows 2-4: video0, video1, video2
    assert resumed.failed == 0
    assert resumed.failed_total == 1  # notes, failed in the first chunk during the first run
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "store").read_vectors(), complete)


def test_index_partial_run_then_rest(video_dir, student, tmp_path):
    checkpoint, _ = student
    first = run_index(video_dir, checkpoint, tmp_path / "store", index_settings(), max_chunks=1)
    assert first.encoded == 1  # chunk 0: more/video3 and the text file notes.mp4
    assert first.failed == 1
    assert not first.complete
    assert FeatureStore.open(tmp_path / "store").done().tolist() == [True, False, False]

    rest = run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    assert rest.chunks_already_done == 1
    assert rest.encoded == 3
    assert rest.failed == 0
    assert rest.complete
    assert load_search_index(tmp_path / "store").ids == ["more/video3", "video0", "video1", "video2"]


KILLED_RUN_SCRIPT = textwrap.dedent("""
    import sys, time
    from pipeline.feature_store import FeatureStore
    from stages.index import IndexSettings, run_index

    original_write = FeatureStore.write_chunk

    def write_then_wait(store, chunk, vectors, valid):
        original_write(store, chunk, vectors, valid)
        print("written", chunk, flush=True)
        time.sleep(600)  # the test kills the process here

    FeatureStore.write_chunk = write_then_wait
    video_dir, checkpoint, output = sys.argv[1:4]
    run_index(video_dir, checkpoint, output, IndexSettings(max_frames=3, chunk_videos=2, batch_size=2, workers=1))
""")


def test_index_resumes_after_sigkill(video_dir, student, tmp_path):
    checkpoint, _ = student
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN_SCRIPT, str(video_dir), str(checkpoint),
                                str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().split() == ["written", "0"]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    resumed = run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    assert resumed.chunks_already_done == 1
    assert resumed.encoded == 3
    run_index(video_dir, checkpoint, tmp_path / "clean", index_settings())
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "store").read_vectors(),
                                  FeatureStore.open(tmp_path / "clean").read_vectors())
    assert json.loads((tmp_path / "store" / "failed.json").read_text())[0]["video_id"] == "notes"


def test_index_rerun_encodes_nothing(video_dir, student, tmp_path):
    checkpoint, _ = student
    run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    again = run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    assert again.encoded == 0
    assert again.chunks_already_done == 3


def test_index_other_checkpoint_rejected(video_dir, student, tmp_path):
    checkpoint, _ = student
    run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    other = tmp_path / "other.bin"
    save_tiny_student(other, seed=1)
    with pytest.raises(IndexMismatchError, match="checkpoint_sha256"):
        run_index(video_dir, other, tmp_path / "store", index_settings())


def test_index_changed_folder_rejected(video_dir, student, tmp_path):
    checkpoint, _ = student
    run_index(video_dir, checkpoint, tmp_path / "store", index_settings())
    (video_dir / "notes.mp4").unlink()
    with pytest.raises(IndexMismatchError, match=r"0 new, 1 gone"):
        run_index(video_dir, checkpoint, tmp_path / "store", index_settings())


def test_index_foreign_folder_untouched(video_dir, student, tmp_path):
    checkpoint, _ = student
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    with pytest.raises(IndexMismatchError, match="not a feature store"):
        run_index(video_dir, checkpoint, tmp_path / "precious", index_settings(), overwrite=True)
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"


def test_top_k_finds_equal_vector():
    vectors = torch.from_numpy(unit_rows(50, 16, seed=1)).half()
    scores, rows = top_k(vectors, vectors[37].float(), k=3, block_rows=8)
    assert rows[0] == 37
    assert scores[0] == pytest.approx(1.0, abs=FLOAT16_TOLERANCE)


def test_top_k_blocks_equal_full_sort():
    vectors = torch.from_numpy(unit_rows(200, 8, seed=2)).half()
    query = torch.from_numpy(unit_rows(1, 8, seed=3)[0])
    exact = vectors.double() @ query.double()  # [rows], float64 scores of the stored float16 vectors
    expected = torch.argsort(exact, descending=True)[:10]
    for block_rows in (7, 64, 1000):
        scores, rows = top_k(vectors, query, k=10, block_rows=block_rows)
        assert rows.tolist() == expected.tolist()
        np.testing.assert_allclose(scores.numpy(), exact[expected].numpy(), atol=1e-6)


def test_top_k_larger_than_index():
    vectors = torch.from_numpy(unit_rows(4, 8, seed=4)).half()
    scores, rows = top_k(vectors, vectors[0].float(), k=10)
    assert len(rows) == 4


def test_search_returns_stored_query_vector(student, tmp_path):
    checkpoint, model = student
    query_vector = encode_queries(model, ["a red car drives on a road"], 32, "cpu")[0].numpy()
    vectors = unit_rows(8, query_vector.shape[0], seed=5)
    vectors[5] = query_vector
    build_store(tmp_path / "store", vectors)

    searcher = open_searcher(tmp_path / "store", checkpoint)
    hits = searcher.search("a red car drives on a road", k=3)
    assert hits[0].video_id == "clip5"
    assert hits[0].path == "/videos/clip5.mp4"
    assert hits[0].score == pytest.approx(1.0, abs=FLOAT16_TOLERANCE)
    assert [hit.rank for hit in hits] == [1, 2, 3]


def test_search_skips_invalid_rows(student, tmp_path):
    checkpoint, model = student
    query_vector = encode_queries(model, ["a cat"], 32, "cpu")[0].numpy()
    vectors = unit_rows(6, query_vector.shape[0], seed=6)
    vectors[2] = query_vector
    valid = np.ones(6, dtype=bool)
    valid[2] = False
    build_store(tmp_path / "store", vectors, valid=valid)

    hits = open_searcher(tmp_path / "store", checkpoint).search("a cat", k=6)
    assert "clip2" not in [hit.video_id for hit in hits]
    assert len(hits) == 5


def test_search_bigfile_with_paths(student, tmp_path, demo_data_dir):
    checkpoint, model = student
    query_vector = encode_queries(model, ["coins on a cloth"], 32, "cpu")[0].numpy()
    vectors = 3.0 * unit_rows(4, query_vector.shape[0], seed=7)  # BigFile rows need not be unit length
    vectors[1] = 2.0 * query_vector
    write_bigfile(tmp_path / "video_features", ["video0", "video1", "video2", "absent"], vectors)

    searcher = open_searcher(tmp_path / "video_features", checkpoint, paths_dir=demo_data_dir / "videos")
    hits = searcher.search("coins on a cloth", k=4)
    assert hits[0].video_id == "video1"
    assert hits[0].path == str(demo_data_dir / "videos" / "video1.mp4")
    assert hits[0].score == pytest.approx(1.0, abs=FLOAT16_TOLERANCE)
    assert [hit.path for hit in hits if hit.video_id == "absent"] == ["-"]


def test_cli_index_then_search(video_dir, student, tmp_path):
    checkpoint, _ = student
    runner = CliRunner()
    indexed = runner.invoke(main, ["index", str(video_dir), "--checkpoint", str(checkpoint), "--output",
                                   str(tmp_path / "store"), "--max-frames", str(TEST_MAX_FRAMES), "--workers", "2"])
    assert indexed.exit_code == 0, indexed.output
    assert "4 encoded now, 1 failed now" in indexed.output
    assert "; complete;" in indexed.output

    store = FeatureStore.open(tmp_path / "store")
    assert store.attributes["frame_settings"]["feature_framerate"] == 1
    assert store.attributes["frame_settings"]["slice_framepos"] == 2
    assert store.attributes["dtype"] == "float16"

    searched = runner.invoke(main, ["search", str(tmp_path / "store"), "--checkpoint", str(checkpoint),
                                    "--top-k", "2", "a cup of coffee"])
    assert searched.exit_code == 0, searched.output
    lines = searched.output.splitlines()
    assert lines[0] == "query: a cup of coffee"
    assert len(lines) == 4
    assert lines[2].split()[0] == "1"


def test_cli_search_interactive_json(student, tmp_path):
    checkpoint, model = student
    query_vector = encode_queries(model, ["second query"], 32, "cpu")[0].numpy()
    vectors = unit_rows(5, query_vector.shape[0], seed=8)
    vectors[3] = query_vector
    build_store(tmp_path / "store", vectors)

    result = CliRunner().invoke(main, ["search", str(tmp_path / "store"), "--checkpoint", str(checkpoint),
                                       "--interactive", "--json", "--top-k", "1"],
                                input="first query\n\nsecond query\n")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    assert [answer["query"] for answer in answers] == ["first query", "second query"]
    assert answers[1]["results"][0]["video_id"] == "clip3"


def test_cli_search_missing_store(student, tmp_path):
    checkpoint, _ = student
    result = CliRunner().invoke(main, ["search", str(tmp_path / "nothing"), "--checkpoint", str(checkpoint), "q"])
    assert result.exit_code == 1
    assert "no feature store or BigFile at" in result.output
    assert "teachclip-pipeline index" in result.output


def test_cli_search_missing_checkpoint(tmp_path):
    build_store(tmp_path / "store", unit_rows(3, 64, seed=9))
    result = CliRunner().invoke(main, ["search", str(tmp_path / "store"), "--checkpoint",
                                       str(tmp_path / "gone.bin"), "q"])
    assert result.exit_code == 1
    assert "student checkpoint not found" in result.output
    assert "gone.bin" in result.output


def test_cli_search_without_query(tmp_path):
    result = CliRunner().invoke(main, ["search", str(tmp_path), "--checkpoint", "x.bin"])
    assert result.exit_code == 2
    assert "--interactive" in result.output


def test_cli_index_missing_checkpoint(video_dir, tmp_path):
    result = CliRunner().invoke(main, ["index", str(video_dir), "--checkpoint", str(tmp_path / "gone.bin"),
                                       "--output", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "student checkpoint not found" in result.output
    assert not (tmp_path / "store").exists()


def test_cli_index_missing_folder(student, tmp_path):
    checkpoint, _ = student
    result = CliRunner().invoke(main, ["index", str(tmp_path / "none"), "--checkpoint", str(checkpoint),
                                       "--output", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "video folder" in result.output
    assert "not found" in result.output


def test_search_dim_mismatch_named(student, tmp_path):
    checkpoint, _ = student
    build_store(tmp_path / "store", unit_rows(3, 32, seed=10))
    with pytest.raises(ValueError, match="dim 32"):
        open_searcher(tmp_path / "store", checkpoint)
