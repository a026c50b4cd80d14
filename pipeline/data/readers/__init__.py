"""Annotation readers by dataset type; each returns SplitAnnotations for one split."""

from __future__ import annotations

from typing import Callable

from pipeline.data.readers.base import SPLITS, AnnotationError, Caption, SplitAnnotations
from pipeline.data.readers.msrvtt import read_msrvtt

Reader = Callable[[object, str], SplitAnnotations]

# data_type (as in TeachCLIP's configs) -> reader; VATEX uses the MSR-VTT layout.
READERS: dict[str, Reader] = {
    "msrvtt": read_msrvtt,
    "vatex": read_msrvtt,
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
