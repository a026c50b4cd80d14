"""Describe a teacher cache for `teachclip-pipeline cache info`: sizes, arrays, teachers, progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cache.schema import STATE_COMPLETE
from cache.store import TeacherCache

logger = logging.getLogger(__name__)

# Fingerprint values longer than this are cut in the text description.
MAX_VALUE_CHARS = 100

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def describe_store(path: str | Path) -> dict[str, Any]:
    """Return a JSON-ready description of a store: backend, state, sizes, arrays, teachers, fingerprint."""
    with TeacherCache.open(path, mode="r") as cache:
        manifest = cache.manifest
        layout = cache.layout
        storage = cache.storage
        complete = manifest["state"] == STATE_COMPLETE

        teachers = {}
        for name in layout.teacher_names:
            info = manifest["teachers"][name]
            pending = len(cache.pending_steps(name))
            teachers[name] = {
                "steps_done": layout.num_steps - pending,
                "steps_total": layout.num_steps,
                "checkpoint_sha256": info.get("checkpoint_sha256"),
                "config": info.get("config", {}),
            }

        arrays = []
        for name in storage.array_names():
            info = storage.info(name)
            arrays.append({
                "name": name,
                "shape": list(info["shape"]),
                "dtype": info["dtype"],
                "chunks": list(info["chunks"]),
                "codecs": info["codecs"],
                "attributes": info["attributes"],
            })

        frames = None
        if layout.store_frames:
            frames = {"videos_done": layout.num_videos - len(cache.pending_videos()), "videos_total": layout.num_videos}

        return {
            "path": str(path),
            "backend": cache.backend,
            "location": storage.location,
            "state": manifest["state"],
            "complete": complete,
            "schema_version": manifest["schema_version"],
            "created_at": manifest.get("created_at"),
            "completed_at": manifest.get("completed_at"),
            "size_on_disk_bytes": storage.disk_bytes(),
            "layout": layout.to_dict(),
            "target_dtype": layout.target_dtype,
            "store_frames": layout.store_frames,
            "frames": frames,
            "teachers": teachers,
            "fingerprint": manifest["fingerprint"],
            "arrays": arrays,
        }


def format_bytes(size: int | None) -> str:
    """Return a byte count in binary units, or "unknown"."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in BYTE_UNITS:
        if value < 1024 or unit == BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def format_description(description: dict[str, Any]) -> str:
    """Return `describe_store` output as aligned text for a terminal."""
    layout = description["layout"]
    lines = [
        f"teacher cache  {description['path']}",
        f"backend        {description['backend']}" + (
            f" (being written in {description['location']})" if description["location"] != description["path"] else ""),
        f"state          {description['state']}",
        f"schema         version {description['schema_version']}",
        f"created        {description['created_at']}",
        f"completed      {description['completed_at'] or '-'}",
        f"size on disk   {format_bytes(description['size_on_disk_bytes'])}",
        f"layout         {layout['num_steps']} steps x batch {layout['batch_size']}, {layout['num_samples']} samples, "
        f"{layout['num_texts']} texts x {layout['max_words']} words, {layout['num_videos']} videos x "
        f"{layout['max_frames']} frames",
        f"targets        {description['target_dtype']}",
    ]
    frames = description["frames"]
    lines.append("frames         " + (f"stored, {frames['videos_done']} of {frames['videos_total']} videos written"
                                      if frames else "not stored"))

    lines.append("teachers")
    for name, teacher in description["teachers"].items():
        lines.append(f"  {name}: {teacher['steps_done']} of {teacher['steps_total']} steps done, "
                     f"checkpoint sha256 {teacher['checkpoint_sha256'] or '-'}")

    lines.append(f"fingerprint    {description['fingerprint']['digest']}")
    for key, value in sorted(description["fingerprint"]["fields"].items()):
        lines.append(f"  {key} = {_short(value)}")

    lines.append("arrays")
    for array in description["arrays"]:
        lines.append(f"  {array['name']}: {array['dtype']} {array['shape']}, chunks {array['chunks']}, "
                     f"{'+'.join(array['codecs']) or 'uncompressed'}")
    return "\n".join(lines)
