"""Annotation readers by dataset type; each returns SplitAnnotations for one split."""

from __future__ import annotations

from typing import Callable

from pipeline.data.readers.activitynet import read_activitynet
from pipeline.data.readers.base import SPLITS, AnnotationError, Caption, SplitAnnotations
from pipeline.data.readers.didemo import read_didemo
from pipeline.data.readers.msrvtt import read_msrvtt
from pipeline.data.readers.msvd import read_msvd
from pipeline.data.readers.plain import read_plain
from pipeline.data.readers.teachclip_layout import read_teachclip_layout

Reader = Callable[[object, str], SplitAnnotations]

# data_type (as in TeachCLIP's configs) -> reader; VATEX uses the MSR-VTT layout.
READERS: dict[str, Reader] = {
    "msrvtt": read_msrvtt,
    "vatex": read_msrvtt,
    "msvd": read_msvd,
    "activity": read_activitynet,
    "didemo": read_didemo,
    "teachclip": read_teachclip_layout,
    "plain": read_plain,
}


def read_split(datasets, split: str) -> SplitAnnotations:
    """Read `split` of the dataset that the config's datasets section describes."""
    if split not in SPLITS:
        raise ValueError(f"split '{split}' is not one of {SPLITS}")
    reader = READERS.get(datasets.data_type)
    if reader is None:
        raise AnnotationError(
            f"datasets.data_type '{datasets.data_type}' has no reader; known types: {', '.join(sorted(READERS))}"
        )
    return reader(datasets, split)


__all__ = ["SPLITS", "READERS", "AnnotationError", "Caption", "SplitAnnotations", "read_split"]
