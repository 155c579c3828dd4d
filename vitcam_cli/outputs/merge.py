"""Combining the part files of a sharded ``vitcam explain`` run into one output folder.

Each shard leaves ``results.shard-I-of-N.jsonl`` and ``summary.shard-I-of-N.json``. Merging checks
that all N shards of one run are there and finished with the same settings, then writes the whole
run's results.jsonl and results.csv (rows sorted by path), summary.json and report.html. Shards may
have written to different folders (separate machines): overlay and map paths are rewritten relative
to the merged folder, nothing is copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitcam_cli.data import decode_reduced, fit_within
from vitcam_cli.distributed import collect_shards
from vitcam_cli.errors import VitcamError
from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.outputs.atomic import write_atomic, write_json_atomic, writing
from vitcam_cli.outputs.folder import mark
from vitcam_cli.outputs.manifest import Counts, jsonl, read_rows, write_results_csv
from vitcam_cli.outputs.report import THUMBNAIL_SIDE, Card, Gallery, Panel, thumbnail
from vitcam_cli.outputs.rows import Row

# settings every shard of one run must share
SHARED_SETTINGS = ("model", "method", "targets", "colormap", "alpha", "save_maps", "overlays", "adcc")


def find_shards(folders: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, shard summary) of every shard of one explain run, in shard order."""
    return collect_shards(
        folders, "summary", lambda s: {key: s["settings"].get(key) for key in SHARED_SETTINGS}
    )


def _rebased(row: Row, folder: Path, destination: Path) -> Row:
    """The row with its file links relative to ``destination`` instead of its shard's ``folder``."""
    if folder.resolve() == destination.resolve():
        return row
    for key in ("overlay", "map"):
        if link := getattr(row, key):
            setattr(row, key, Path(os.path.relpath(folder / link, destination)).as_posix())
    return row


def merge_shards(
    folders: Sequence[Path],
    destination: Path,
    write_report: Callable[[Path, dict[str, Any], Gallery, Counts], None],
) -> dict[str, Any]:
    """Merge every shard found in ``folders`` into ``destination``; returns the merged summary.

    ``write_report`` renders the merged run's report.html (the command that ran the shards knows how).
    """
    shards = find_shards(folders)
    count = len(shards)
    rows = []
    for index, (folder, summary) in enumerate(shards):
        part = folder / f"results.shard-{index}-of-{count}.jsonl"
        found = [_rebased(row, folder, destination) for row in read_rows(part)]
        if len(found) != summary.get("rows", len(found)):
            raise VitcamError(
                f"shard {index}/{count}: {part} holds {len(found)} whole rows but the shard's summary "
                f"counted {summary['rows']} (a torn or edited file): rerun that shard with {{shard}} "
                f"{index}/{count} "
                "{skip_existing}, then merge again"
            )
        rows += found
    rows.sort(key=lambda row: row.path)  # stable: an image's classes keep their order
    with writing(destination, "free space or fix the folder, then merge again"):
        return _write_merged(shards, rows, destination, write_report)


def _write_merged(
    shards: list[tuple[Path, dict[str, Any]]],
    rows: list[Row],
    destination: Path,
    write_report: Callable[[Path, dict[str, Any], Gallery, Counts], None],
) -> dict[str, Any]:
    """The merged run's files: results.jsonl/.csv, report.html and, last, summary.json."""
    count = len(shards)
    destination.mkdir(parents=True, exist_ok=True)
    mark(destination)  # a merged run is an output folder too: never searched for images
    text = jsonl(rows)
    write_atomic(destination / "results.jsonl", lambda handle: handle.write(text.encode()))
    counts: Counts = write_results_csv(destination / "results.csv", rows)
    first = shards[0][1]
    images = {key: sum(s["images"][key] for _, s in shards) for key in ("skipped", "total")}
    wall = max(s["wall_seconds"] for _, s in shards)
    summary = {
        **{k: v for k, v in first.items() if k not in ("shard", "out")},
        "status": "complete",
        "started": min(s["started"] for _, s in shards),
        "finished": max(s["finished"] for _, s in shards),
        "out": str(destination),
        "images": {"ok": counts.images_ok, "error": counts.images_error, **images},
        "rows": counts.rows,
        "wall_seconds": wall,
        "images_per_second": round((images["total"] - images["skipped"]) / wall, 3) if wall else 0.0,
        "adcc": counts.metrics or None,
        "shards": [
            {
                "shard": f"{i}/{count}",
                "folder": str(folder),
                "device": s["device"],
                "wall_seconds": s["wall_seconds"],
            }
            for i, (folder, s) in enumerate(shards)
        ],
    }
    method = summary["settings"]["method"]
    labelled = "labels" in summary["settings"].get("targets", {})
    gallery = _gallery(rows, destination, method.get("label", method.get("variant")), labelled)
    write_report(destination / "report.html", summary, gallery, counts)
    write_json_atomic(destination / "summary.json", summary)  # last: it says the merged run is whole
    return summary


def _original(path: Path) -> bytes:
    """The input image's thumbnail, read again from its path; b"" once it is gone or unreadable."""
    try:
        image, _ = decode_reduced(path, lambda size: fit_within(size, THUMBNAIL_SIDE))
    except Exception:  # moved, changed or removed since the run: the card keeps its overlay
        return b""
    return thumbnail(np.asarray(image))


def _gallery(rows: list[Row], destination: Path, method: str, labelled: bool) -> Gallery:
    """The report's worst and best rows by ADCC, thumbnails read back from the overlays on disk (rows
    without overlays get a card without a picture) and from the input images where they still are."""
    gallery = Gallery(limit=100)
    for row in rows:
        if not row.ok:
            continue

        def card(row: Row = row) -> Card:
            picture = b""
            if row.overlay:
                with Image.open(destination / row.overlay) as image:
                    picture = thumbnail(np.asarray(image.convert("RGB")))
            metrics = {name: row.metrics[name] for name in PARTS if name in row.metrics}
            panel = Panel(method, picture, row.overlay, row.class_name or "", row.probability or 0.0, metrics)
            original = _original(Path(row.path))
            if not labelled:
                return Card(row.path, None, [panel], original=original)
            predicted = row.class_name if row.rank == 1 else f"another class (the label ranks {row.rank})"
            return Card(row.path, row.class_name, [panel], predicted, original)

        value = row.metrics.get("adcc", row.probability)
        gallery.offer(float(value if value is not None else float("nan")), card)
    return gallery
