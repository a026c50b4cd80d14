"""Annotation readers of every layout, on small files written here and on the demo miniatures."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from layouts import LAYOUTS, PARAGRAPH_LAYOUTS, as_overrides, read_demo
from pipeline.config import DatasetConfig, build_config
from pipeline.data.readers import READERS, AnnotationError, read_split


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def texts(annotations) -> list[str]:
    return [caption.text for caption in annotations.captions]


def pairs(annotations) -> list[tuple[str, str]]:
    return [(caption.text_id, caption.video_id) for caption in annotations.captions]


# MSVD


def write_msvd(folder: Path, captions: dict, lists: dict[str, str]) -> DatasetConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    for split, text in lists.items():
        write(folder / f"{split}_list.txt", text)
    return DatasetConfig(data_type="msvd", data_path=str(folder))


def test_msvd_captions_follow_list_order(tmp_path):
    captions = {
        "vidA": [["a", "dog", "runs"], ["the", "dog", "is", "running"]],
        "vidB": [["a", "cat", "sleeps"]],
        "vidC": [["unused"]],
    }
    datasets = write_msvd(tmp_path, captions, {"train": "vidB\nvidA\n\n", "val": "vidC\n", "test": "vidA\n"})

    train = read_split(datasets, "train")

    assert train.video_ids == ("vidB", "vidA")
    assert texts(train) == ["a cat sleeps", "a dog runs", "the dog is running"]
    assert pairs(train) == [("vidB#0", "vidB"), ("vidA#0", "vidA"), ("vidA#1", "vidA")]
    assert train.clip_times == {}
    assert train.source_files == (str(tmp_path / "raw-captions.pkl"), str(tmp_path / "train_list.txt"))


def test_msvd_every_test_caption_is_query(tmp_path):
    captions = {"vidA": [["one"], ["two"], ["three"]], "vidB": [["four"]]}
    datasets = write_msvd(tmp_path, captions, {"train": "vidA\n", "val": "vidB\n", "test": "vidA\nvidB\n"})

    test = read_split(datasets, "test")

    assert texts(test) == ["one", "two", "three", "four"]
    assert test.video_ids == ("vidA", "vidB")


def test_msvd_pickle_with_global_rejected(tmp_path):
    marker = tmp_path / "created_by_pickle"

    class MakesDirectory:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    datasets = write_msvd(tmp_path, {}, {"train": "vidA\n"})
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"vidA": [MakesDirectory()]}))

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    message = str(error.value)
    assert "raw-captions.pkl" in message
    assert f"{os.mkdir.__module__}.mkdir" in message
    assert not marker.exists()


def test_msvd_listed_video_without_captions(tmp_path):
    datasets = write_msvd(tmp_path, {"vidA": [["a"]]}, {"train": "vidA\nvidZ\n"})

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert "vidZ" in str(error.value)
    assert "train_list.txt" in str(error.value)


def test_msvd_missing_list_file(tmp_path):
    datasets = write_msvd(tmp_path, {"vidA": [["a"]]}, {"train": "vidA\n"})

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "val")

    assert str(tmp_path / "val_list.txt") in str(error.value)
    assert "datasets.data_path" in str(error.value)


def test_msvd_caption_not_token_list(tmp_path):
    datasets = write_msvd(tmp_path, {"vidA": [["fine"], 17]}, {"train": "vidA\n"})

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert "vidA" in str(error.value)
    assert "17" in str(error.value)


def test_msvd_data_path_not_folder(tmp_path):
    datasets = DatasetConfig(data_type="msvd", data_path=str(tmp_path / "absent"))

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert str(tmp_path / "absent") in str(error.value)
    assert "raw-captions.pkl" in str(error.value)


# ActivityNet Captions


def write_activitynet(folder: Path, train: dict, train_ids: list, val: dict | None = None,
                      val_ids: list | None = None) -> DatasetConfig:
    write(folder / "train.json", json.dumps(train))
    write(folder / "train_ids.json", json.dumps(train_ids))
    write(folder / "val_1.json", json.dumps(val or {}))
    write(folder / "val_ids.json", json.dumps(val_ids or []))
    return DatasetConfig(data_type="activity", data_path=str(folder))


def activitynet_entry(duration, sentences):
    return {"duration": duration, "timestamps": [[0, 1]] * len(sentences), "sentences": sentences}


def test_activitynet_paragraph_and_clip_end(tmp_path):
    train = {
        "v_first": activitynet_entry(12.3, ["A man walks in.", " He sits down. ", " He waves."]),
        "v_second": activitynet_entry(40.0, ["A dog barks."]),
    }
    datasets = write_activitynet(tmp_path, train, ["v_second", "v_first"])

    annotations = read_split(datasets, "train")

    assert annotations.video_ids == ("v_second", "v_first")
    assert pairs(annotations) == [("v_second#0", "v_second"), ("v_first#0", "v_first")]
    assert texts(annotations) == ["A dog barks.", "A man walks in.  He sits down.   He waves."]
    assert annotations.clip_times == {"v_second": (0.0, 40.0), "v_first": (0.0, 13.0)}


def test_activitynet_test_reads_val_files(tmp_path):
    val = {"v_valvideo": activitynet_entry(5.5, ["Someone cooks.", "Someone eats."])}
    datasets = write_activitynet(tmp_path, {"v_t": activitynet_entry(1, ["x"])}, ["v_t"], val, ["v_valvideo"])

    test = read_split(datasets, "test")

    assert test.video_ids == ("v_valvideo",)
    assert texts(test) == ["Someone cooks. Someone eats."]
    assert test.clip_times == {"v_valvideo": (0.0, 6.0)}
    assert test.source_files == (str(tmp_path / "val_1.json"), str(tmp_path / "val_ids.json"))


def test_activitynet_listed_without_entry_left_out(tmp_path, caplog):
    train = {"v_kept": activitynet_entry(3, ["Kept."]), "v_unlisted": activitynet_entry(3, ["Unlisted."])}
    datasets = write_activitynet(tmp_path, train, ["v_gone", "v_kept", "v_kept"])

    with caplog.at_level(logging.WARNING):
        annotations = read_split(datasets, "train")

    assert annotations.video_ids == ("v_kept",)
    assert texts(annotations) == ["Kept."]
    assert "v_gone" in caplog.text
    assert "more than once" in caplog.text


def test_activitynet_invalid_duration(tmp_path):
    datasets = write_activitynet(tmp_path, {"v_a": activitynet_entry("long", ["x"])}, ["v_a"])

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert "v_a" in str(error.value)
    assert "train.json" in str(error.value)
    assert "'long'" in str(error.value)


def test_activitynet_malformed_json_names_line(tmp_path):
    datasets = write_activitynet(tmp_path, {"v_a": activitynet_entry(1, ["x"])}, ["v_a"])
    write(tmp_path / "train.json", '{"v_a": {"duration": 1,\n "sentences": ["x"],,}}')

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert "train.json" in str(error.value)
    assert "line 2" in str(error.value)


# DiDeMo


def didemo_item(video, description, times=((0, 0), (1, 1))):
    return {"video": video, "description": description, "times": [list(pair) for pair in times]}


def write_didemo(folder: Path, split: str, items: list, listed: str) -> DatasetConfig:
    write(folder / f"{split}_data.json", json.dumps(items))
    write(folder / f"{split}_list.txt", listed)
    return DatasetConfig(data_type="didemo", data_path=str(folder))


def test_didemo_paragraphs_in_json_order(tmp_path):
    items = [
        didemo_item("clip2.mov", "the red ball rolls"),
        didemo_item("12090392@N02_13482799053_87ef417396.mov", "a girl waves", times=((4, 5),)),
        didemo_item("unlisted.mov", "never read"),
        didemo_item("clip2.mov", "the ball stops"),
        didemo_item("12090392@N02_13482799053_87ef417396.mov", "she turns around"),
    ]
    listed = "12090392@N02_13482799053_87ef417396.mov\nclip2.mov\n"
    datasets = write_didemo(tmp_path, "test", items, listed)

    test = read_split(datasets, "test")

    assert test.video_ids == ("clip2.mov", "12090392@N02_13482799053_87ef417396.mov")
    assert texts(test) == ["the red ball rolls the ball stops", "a girl waves she turns around"]
    assert pairs(test) == [("clip2.mov#0", "clip2.mov"),
                           ("12090392@N02_13482799053_87ef417396.mov#0", "12090392@N02_13482799053_87ef417396.mov")]


def test_didemo_clip_is_31_seconds(tmp_path):
    items = [didemo_item("a", "late moment", times=((5, 5), (4, 5)))]
    datasets = write_didemo(tmp_path, "train", items, "a\n")

    annotations = read_split(datasets, "train")

    assert annotations.clip_times == {"a": (0.0, 31.0)}


def test_didemo_listed_without_description(tmp_path, caplog):
    datasets = write_didemo(tmp_path, "val", [didemo_item("a", "x")], "a\nb\n")

    with caplog.at_level(logging.WARNING):
        annotations = read_split(datasets, "val")

    assert annotations.video_ids == ("a",)
    assert "'b'" in caplog.text or "['b']" in caplog.text


def test_didemo_item_without_video(tmp_path):
    datasets = write_didemo(tmp_path, "train", [didemo_item("a", "x"), {"description": "no video"}], "a\n")

    with pytest.raises(AnnotationError) as error:
        read_split(datasets, "train")

    assert "item 1" in str(error.value)
    assert "train_data.json" in str(error.value)


# TeachCLIP's own layout


def write_teachclip(root: Path, videos: str, queries: str, ground_truth: str, gt_name: str = "demo-gt") -> None:
    write(root / "VideoSet" / "demo-test.txt", videos)
    write(root / "QuerySet" / "demo-test-query.txt", queries)
    write(root / "Annotations" / f"{gt_name}.txt", ground_truth)


def teachclip_config(root: Path, test_csv: str = "demo-test") -> DatasetConfig:
    return DatasetConfig(data_type="teachclip", data_path=str(root), test_csv=test_csv)


def test_teachclip_layout_ground_truth_order(tmp_path):
    write_teachclip(
        tmp_path,
        videos="video7\nvideo9\nvideo8\n",
        queries="q1\ta man sings\nq2\ta woman\tdances\nq3\ta car\nq4\tunused query\n",
        ground_truth="q2\tvideo9\nq1\tvideo7\nq3\tvideo9\n",
    )

    test = read_split(teachclip_config(tmp_path), "test")

    assert pairs(test) == [("q2", "video9"), ("q1", "video7"), ("q3", "video9")]
    assert texts(test) == ["a woman\tdances", "a man sings", "a car"]
    assert test.video_ids == ("video9", "video7")
    assert test.source_files[2] == str(tmp_path / "Annotations" / "demo-gt.txt")


def test_teachclip_layout_set_ground_truth_name(tmp_path):
    write_teachclip(tmp_path, "v1\n", "q1\tx\n", "q1\tv1\n", gt_name="demo-test-gt")
    write(tmp_path / "Annotations" / "demo-gt.txt", "q1\tnot-in-set\n")

    test = read_split(teachclip_config(tmp_path), "test")

    assert pairs(test) == [("q1", "v1")]


def test_teachclip_layout_explicit_names(tmp_path):
    write(tmp_path / "VideoSet" / "videos.txt", "v1\nv2\n")
    write(tmp_path / "QuerySet" / "sentences.txt", "q1\tfirst\nq2\tsecond\n")
    write(tmp_path / "Annotations" / "truth.txt", "q1\tv2\nq2\tv1\n")

    test = read_split(teachclip_config(tmp_path, "videos, sentences.txt, truth"), "test")

    assert pairs(test) == [("q1", "v2"), ("q2", "v1")]


def test_teachclip_layout_unknown_video(tmp_path):
    write_teachclip(tmp_path, "v1\n", "q1\tx\nq2\ty\n", "q1\tv1\nq2\tv404\n")

    with pytest.raises(AnnotationError) as error:
        read_split(teachclip_config(tmp_path), "test")

    message = str(error.value)
    assert "demo-gt.txt, line 2" in message
    assert "'v404'" in message
    assert "demo-test.txt" in message


def test_teachclip_layout_query_line_without_tab(tmp_path):
    write_teachclip(tmp_path, "v1\n", "q1\tfine\nq2 no tab here\n", "q1\tv1\n")

    with pytest.raises(AnnotationError) as error:
        read_split(teachclip_config(tmp_path), "test")

    assert "demo-test-query.txt, line 2" in str(error.value)


def test_teachclip_layout_query_with_two_videos(tmp_path):
    write_teachclip(tmp_path, "v1\nv2\n", "q1\tx\n", "q1\tv1\nq1\tv2\n")

    with pytest.raises(AnnotationError) as error:
        read_split(teachclip_config(tmp_path), "test")

    assert "line 2" in str(error.value)
    assert "'q1'" in str(error.value)


def test_teachclip_layout_missing_ground_truth(tmp_path):
    write(tmp_path / "VideoSet" / "demo-test.txt", "v1\n")
    write(tmp_path / "QuerySet" / "demo-test-query.txt", "q1\tx\n")
    (tmp_path / "Annotations").mkdir()

    with pytest.raises(AnnotationError) as error:
        read_split(teachclip_config(tmp_path), "test")

    message = str(error.value)
    assert str(tmp_path / "Annotations" / "demo-test-gt.txt") in message
    assert str(tmp_path / "Annotations" / "demo-gt.txt") in message


def test_teachclip_layout_didemo_clip_times(tmp_path):
    root = tmp_path / "datasets" / "didemo"
    write_teachclip(root, "v1\n", "q1\tx\n", "q1\tv1\n")

    test = read_split(teachclip_config(root), "test")

    assert test.clip_times == {"v1": (0.0, 31.0)}


def test_teachclip_layout_unset_split(tmp_path):
    write_teachclip(tmp_path, "v1\n", "q1\tx\n", "q1\tv1\n")

    with pytest.raises(AnnotationError) as error:
        read_split(teachclip_config(tmp_path), "train")

    assert "datasets.train_csv" in str(error.value)


# Plain layout


PLAIN_CSV = (
    "video_id,caption,split,start,end\n"
    'beach,"waves, sand and sun",train,,\n'
    "beach,a quiet shore,train,,\n"
    "kitchen,someone chops onions,train,2.5,9\n"
    "garden,a bee on a flower,test,,\n"
    "kitchen,onions on a board,train,2.5,9\n"
    "garden,flowers in the wind,test,,\n"
)


def plain_config(path: Path) -> DatasetConfig:
    return DatasetConfig(data_type="plain", data_path=str(path))


def test_plain_csv_train_split(tmp_path):
    path = write(tmp_path / "captions.csv", PLAIN_CSV)

    train = read_split(plain_config(path), "train")

    assert train.video_ids == ("beach", "kitchen")
    assert pairs(train) == [("beach#0", "beach"), ("beach#1", "beach"), ("kitchen#0", "kitchen"), ("kitchen#1", "kitchen")]
    assert texts(train) == ["waves, sand and sun", "a quiet shore", "someone chops onions", "onions on a board"]
    assert train.clip_times == {"kitchen": (2.5, 9.0)}
    assert train.source_files == (str(path),)


def test_plain_csv_test_split(tmp_path):
    path = write(tmp_path / "captions.csv", PLAIN_CSV)

    test = read_split(plain_config(path), "test")

    assert test.video_ids == ("garden",)
    assert texts(test) == ["a bee on a flower", "flowers in the wind"]
    assert test.clip_times == {}


def test_plain_jsonl_matches_csv(tmp_path):
    csv_path = write(tmp_path / "captions.csv", PLAIN_CSV)
    lines = [
        {"video_id": "beach", "caption": "waves, sand and sun", "split": "train"},
        {"video_id": "beach", "caption": "a quiet shore", "split": "train", "start": None},
        {"video_id": "kitchen", "caption": "someone chops onions", "split": "train", "start": 2.5, "end": 9},
        {"video_id": "garden", "caption": "a bee on a flower", "split": "test"},
        {"video_id": "kitchen", "caption": "onions on a board", "split": "train", "start": "2.5", "end": 9.0},
        {"video_id": "garden", "caption": "flowers in the wind", "split": "test"},
    ]
    jsonl_path = write(tmp_path / "captions.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")

    for split in ("train", "test"):
        assert read_split(plain_config(jsonl_path), split).captions == read_split(plain_config(csv_path), split).captions
        assert read_split(plain_config(jsonl_path), split).clip_times == read_split(plain_config(csv_path), split).clip_times


def test_plain_unknown_split_value(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption,split\nv1,a caption,train\nv2,another,testing\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "captions.csv, line 3" in str(error.value)
    assert "'testing'" in str(error.value)


def test_plain_conflicting_clip_times(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption,split,start,end\nv1,a,train,0,5\nv1,b,train,1,5\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "line 3" in str(error.value)
    assert "line 2" in str(error.value)
    assert "'v1'" in str(error.value)


def test_plain_unknown_column(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,captions,split\nv1,a,train\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "missing ['caption']" in str(error.value)
    assert "unknown ['captions']" in str(error.value)


def test_plain_malformed_jsonl_line(tmp_path):
    path = write(tmp_path / "captions.jsonl", '{"video_id": "v1", "caption": "a", "split": "train"}\n{"video_id": \n')

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "captions.jsonl, line 2" in str(error.value)


def test_plain_end_before_start(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption,split,start,end\nv1,a,train,8,3\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "line 2" in str(error.value)
    assert "end (3.0) must be after start (8.0)" in str(error.value)


def test_plain_empty_split(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption,split\nv1,a,train\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "val")

    assert "no rows with split 'val'" in str(error.value)


def test_plain_missing_file(tmp_path):
    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(tmp_path / "nothing.csv"), "train")

    assert str(tmp_path / "nothing.csv") in str(error.value)


def test_plain_row_field_count(tmp_path):
    path = write(tmp_path / "captions.csv", "video_id,caption,split\nv1,a, b,train\n")

    with pytest.raises(AnnotationError) as error:
        read_split(plain_config(path), "train")

    assert "line 2" in str(error.value)
    assert "quote" in str(error.value)


DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"


def docs_code_block(after: str) -> str:
    """Return the first fenced block that follows the line starting with `after` in docs/own-data.md."""
    text = DOCS_PAGE.read_text(encoding="utf-8")
    start = text.index("```", text.index(after))
    body_start = text.index("\n", start) + 1
    return text[body_start:text.index("```", body_start)]


def test_plain_docs_example_reads(tmp_path):
    csv_path = write(tmp_path / "captions.csv", docs_code_block("`data/mine/captions.csv`"))
    jsonl_path = write(tmp_path / "captions.jsonl", docs_code_block("The same rows as JSON Lines"))

    assert len(csv_path.read_text().splitlines()) == 5
    for split, video_ids in (("train", ("cooking", "harbour")), ("val", ("market",)), ("test", ("garden",))):
        from_csv = read_split(plain_config(csv_path), split)
        from_jsonl = read_split(plain_config(jsonl_path), split)
        assert from_csv.video_ids == video_ids
        assert from_jsonl.captions == from_csv.captions
    assert texts(read_split(plain_config(csv_path), "train"))[1] == "boats rock in a small harbour, gulls overhead"
    assert read_split(plain_config(jsonl_path), "test").clip_times == {"garden": (3.0, 12.0)}


# Registry and demo miniatures


def test_readers_cover_every_data_type():
    assert set(READERS) >= {"msrvtt", "vatex", "msvd", "activity", "didemo", "teachclip", "plain"}


def test_unknown_data_type_lists_known(tmp_path):
    with pytest.raises(AnnotationError) as error:
        read_split(DatasetConfig(data_type="lsmdc"), "train")

    assert "'lsmdc'" in str(error.value)
    assert "didemo" in str(error.value)


@pytest.fixture(scope="module")
def demo():
    return read_demo()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_demo_layout_matches_demo(layout, tmp_path, demo):
    fields = LAYOUTS[layout](tmp_path / layout)
    datasets = build_config({}, overrides=as_overrides(fields)).datasets
    paragraph = layout in PARAGRAPH_LAYOUTS
    prefix = "v_" if layout == "activity" else ""

    for split, ids in (("train", demo.train_ids), ("val", demo.test_ids), ("test", demo.test_ids)):
        annotations = read_split(datasets, split)
        assert annotations.video_ids == tuple(prefix + video_id for video_id in ids), split

        if paragraph:
            expected = [(prefix + video_id, " ".join(demo.captions[video_id])) for video_id in ids]
        elif layout == "msrvtt" and split != "train":
            # MSR-VTT 1k-A: one query per test video, the first caption of each in the demo set.
            expected = [(video_id, demo.captions[video_id][0]) for video_id in ids]
        else:
            expected = [(video_id, caption) for video_id in ids for caption in demo.captions[video_id]]
        assert [(caption.video_id, caption.text) for caption in annotations.captions] == expected, split


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_demo_layout_videos_present(layout, tmp_path):
    fields = LAYOUTS[layout](tmp_path / layout)
    datasets = build_config({}, overrides=as_overrides(fields)).datasets
    video_folder = Path(datasets.video_path)

    for split in ("train", "test"):
        for video_id in read_split(datasets, split).video_ids:
            assert (video_folder / f"{video_id}.mp4").is_file(), video_id
