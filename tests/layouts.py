"""Miniatures of every annotation layout, made from the demo clips (shipped in the MSR-VTT layout).

Each `<layout>_layout(target)` writes that layout's files under `target` and links the demo videos
there under the names the layout expects. It returns the datasets-section values that point a
config at the miniature, and `as_overrides` turns those into `--set`-style overrides. Every layout carries the
same content: the 16 training videos with all their captions, and the 8 test videos as both the
validation and the test split. The demo files are parsed here with csv and json alone, so the
miniatures do not depend on the readers they test.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import imageio_ffmpeg

DEMO_DIR = Path(__file__).resolve().parents[1] / "pipeline" / "demo_data"
DEMO_VIDEO_SUFFIX = ".mp4"
# DiDeMo's times are indices of 5-second segments, one [start, end] pair per annotator.
DIDEMO_TIMES = [[0, 0], [0, 1], [0, 0], [1, 1]]


@dataclass(frozen=True)
class DemoContent:
    captions: dict[str, list[str]]  # video id -> captions, in the data JSON's order
    train_ids: list[str]
    test_ids: list[str]


def read_demo(demo_dir: Path = DEMO_DIR) -> DemoContent:
    data = json.loads((demo_dir / "MSRVTT_data.json").read_text(encoding="utf-8"))
    captions: dict[str, list[str]] = {}
    for sentence in data["sentences"]:
        captions.setdefault(sentence["video_id"], []).append(sentence["caption"])

    with (demo_dir / "MSRVTT_train.9k.csv").open(newline="", encoding="utf-8") as handle:
        train_ids = [row["video_id"] for row in csv.DictReader(handle)]
    with (demo_dir / "MSRVTT_JSFUSION_test.csv").open(newline="", encoding="utf-8") as handle:
        test_ids = [row["video_id"] for row in csv.DictReader(handle)]
    return DemoContent(captions=captions, train_ids=train_ids, test_ids=test_ids)


def link_videos(video_names: dict[str, str], folder: Path, demo_dir: Path = DEMO_DIR) -> None:
    """Link demo video `<id>.mp4` as `folder/<name>` for each id -> name; copy where links fail."""
    folder.mkdir(parents=True, exist_ok=True)
    for video_id, name in video_names.items():
        source = demo_dir / "videos" / f"{video_id}{DEMO_VIDEO_SUFFIX}"
        destination = folder / name
        try:
            os.symlink(source, destination)
        except OSError:
            shutil.copy2(source, destination)


@lru_cache(maxsize=None)
def duration_s(video_id: str, demo_dir: Path = DEMO_DIR) -> float:
    _, seconds = imageio_ffmpeg.count_frames_and_secs(str(demo_dir / "videos" / f"{video_id}{DEMO_VIDEO_SUFFIX}"))
    return float(seconds)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def as_overrides(fields: dict[str, str]) -> tuple[str, ...]:
    """Return `datasets.<key>=<value>` overrides for build_config or the CLI's --set."""
    return tuple(f"datasets.{key}={value}" for key, value in fields.items())


def msrvtt_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """The demo folder itself: MSR-VTT 1k-A style, one query per test video, val = test."""
    return {
        "data_type": "msrvtt",
        "data_path": str(demo_dir / "MSRVTT_data.json"),
        "train_csv": str(demo_dir / "MSRVTT_train.9k.csv"),
        "val_csv": str(demo_dir / "MSRVTT_JSFUSION_test.csv"),
        "test_csv": str(demo_dir / "MSRVTT_JSFUSION_test.csv"),
        "video_path": str(demo_dir / "videos"),
    }


def vatex_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """VATEX_data.json plus split csvs with only a video_id column, so every caption is a query."""
    demo = read_demo(demo_dir)
    target.mkdir(parents=True, exist_ok=True)
    sentences = [
        {"video_id": video_id, "caption": caption, "sen_id": index}
        for index, (video_id, caption) in enumerate(
            (video_id, caption) for video_id, captions in demo.captions.items() for caption in captions
        )
    ]
    (target / "VATEX_data.json").write_text(json.dumps({"sentences": sentences}), encoding="utf-8")
    for name, ids in (("train", demo.train_ids), ("val", demo.test_ids), ("test", demo.test_ids)):
        write_lines(target / f"VATEX_{name}.csv", ["video_id", *ids])
    link_videos({video_id: f"{video_id}.mp4" for video_id in demo.captions}, target / "videos", demo_dir)
    return {
        "data_type": "vatex",
        "data_path": str(target / "VATEX_data.json"),
        "train_csv": str(target / "VATEX_train.csv"),
        "val_csv": str(target / "VATEX_val.csv"),
        "test_csv": str(target / "VATEX_test.csv"),
        "video_path": str(target / "videos"),
    }


def msvd_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """raw-captions.pkl of token lists and one list file per split."""
    demo = read_demo(demo_dir)
    target.mkdir(parents=True, exist_ok=True)
    tokens = {video_id: [caption.split() for caption in captions] for video_id, captions in demo.captions.items()}
    (target / "raw-captions.pkl").write_bytes(pickle.dumps(tokens))
    for name, ids in (("train", demo.train_ids), ("val", demo.test_ids), ("test", demo.test_ids)):
        write_lines(target / f"{name}_list.txt", ids)
    # MSVD's videos are .avi; the demo clips stay .mp4, which the video lookup also tries.
    link_videos({video_id: f"{video_id}.mp4" for video_id in demo.captions}, target / "videos", demo_dir)
    return {"data_type": "msvd", "data_path": str(target), "video_path": str(target / "videos")}


def activitynet_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """train.json / val_1.json with 'v_' ids, the ids files, and videos named 'v_<id>.mp4'."""
    demo = read_demo(demo_dir)
    target.mkdir(parents=True, exist_ok=True)
    for captions_name, ids_name, ids in (("train.json", "train_ids.json", demo.train_ids),
                                         ("val_1.json", "val_ids.json", demo.test_ids)):
        entries = {}
        for video_id in ids:
            duration = duration_s(video_id, demo_dir)
            count = len(demo.captions[video_id])
            step = duration / count
            entries[f"v_{video_id}"] = {
                "duration": duration,
                "timestamps": [[round(index * step, 2), round((index + 1) * step, 2)] for index in range(count)],
                "sentences": demo.captions[video_id],
            }
        (target / captions_name).write_text(json.dumps(entries), encoding="utf-8")
        (target / ids_name).write_text(json.dumps([f"v_{video_id}" for video_id in ids]), encoding="utf-8")
    link_videos({video_id: f"v_{video_id}.mp4" for video_id in demo.captions}, target / "videos", demo_dir)
    return {"data_type": "activity", "data_path": str(target), "video_path": str(target / "videos")}


def didemo_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """{split}_data.json (one item per description) and {split}_list.txt."""
    demo = read_demo(demo_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", demo.train_ids), ("val", demo.test_ids), ("test", demo.test_ids)):
        items = [
            {"video": video_id, "description": caption, "times": DIDEMO_TIMES, "annotation_id": len(ids) * index + position}
            for position, video_id in enumerate(ids)
            for index, caption in enumerate(demo.captions[video_id])
        ]
        (target / f"{name}_data.json").write_text(json.dumps(items), encoding="utf-8")
        write_lines(target / f"{name}_list.txt", ids)
    link_videos({video_id: f"{video_id}.mp4" for video_id in demo.captions}, target / "videos", demo_dir)
    return {"data_type": "didemo", "data_path": str(target), "video_path": str(target / "videos")}


def teachclip_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """VideoSet, QuerySet and Annotations ground truth; query ids are '<video id>#<n>'."""
    demo = read_demo(demo_dir)
    # The training ground truth uses the '<set>-gt' name, the test one the '<prefix>-gt' name, so
    # the miniature covers both names the reader looks for.
    for set_name, ground_truth_name, ids in (("demo-train", "demo-train-gt", demo.train_ids),
                                             ("demo-test", "demo-gt", demo.test_ids)):
        pairs = [(f"{video_id}#{index}", video_id, caption)
                 for video_id in ids for index, caption in enumerate(demo.captions[video_id])]
        write_lines(target / "VideoSet" / f"{set_name}.txt", ids)
        write_lines(target / "QuerySet" / f"{set_name}-query.txt", [f"{query}\t{caption}" for query, _, caption in pairs])
        write_lines(target / "Annotations" / f"{ground_truth_name}.txt", [f"{query}\t{video}" for query, video, _ in pairs])
    link_videos({video_id: f"{video_id}.mp4" for video_id in demo.captions}, target / "VideoData", demo_dir)
    return {
        "data_type": "teachclip",
        "data_path": str(target),
        "train_csv": "demo-train",
        "val_csv": "demo-test",
        "test_csv": "demo-test",
        "video_path": str(target / "VideoData"),
    }


def plain_layout(target: Path, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """One CSV of video_id, caption, split; the test videos' rows appear once as 'val' and once as 'test'."""
    demo = read_demo(demo_dir)
    target.mkdir(parents=True, exist_ok=True)
    rows = [(video_id, caption, "train") for video_id in demo.train_ids for caption in demo.captions[video_id]]
    for split in ("val", "test"):
        rows += [(video_id, caption, split) for video_id in demo.test_ids for caption in demo.captions[video_id]]
    with (target / "captions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "caption", "split"])
        writer.writerows(rows)
    link_videos({video_id: f"{video_id}.mp4" for video_id in demo.captions}, target / "videos", demo_dir)
    return {"data_type": "plain", "data_path": str(target / "captions.csv"), "video_path": str(target / "videos")}


LAYOUTS: dict[str, Callable[[Path], dict[str, str]]] = {
    "msrvtt": msrvtt_layout,
    "vatex": vatex_layout,
    "msvd": msvd_layout,
    "activity": activitynet_layout,
    "didemo": didemo_layout,
    "teachclip": teachclip_layout,
    "plain": plain_layout,
}
PARAGRAPH_LAYOUTS = ("activity", "didemo")
