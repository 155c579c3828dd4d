"""The comparison's report.html: the numbers, each class's shift with the two runs' mean evidence side by
side, and the images whose maps changed most; self-contained like every vitcam page (pictures inline)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from vitcam_cli.analysis.compare import ClassShift, Comparison, PairResult
from vitcam_cli.defaults import DEFAULT_COLORMAP
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.overlay import colormap_table
from vitcam_cli.outputs.report import (
    PAGE_STYLE,
    TEMPLATES,
    draw_boxes,
    file_thumbnail,
    picture_view,
    thumbnail,
)
from vitcam_cli.paths import fs_text

CLASSES_SHOWN = 6  # the classes that agree least, drawn side by side
IMAGES_SHOWN = 12  # the images whose maps changed most
PICTURE_SIDE = 160  # pixels of a drawn map
STYLE = (
    PAGE_STYLE
    + """
.shifts { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.shift, .pair { background: var(--paper); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.shift h3, .pair h3 { margin: 0 0 6px; font-size: 14px; overflow-wrap: anywhere; }
.strip { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.strip figure { margin: 0; width: 160px; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.strip img { display: block; width: 160px; height: auto; border-radius: 4px; }
.muted { color: var(--muted); }
"""
)


def heat_picture(values: np.ndarray, low: float, high: float, colormap: str) -> np.ndarray:
    """A (rows, cols) map as an (H, W, 3) uint8 picture on the scale ``low``..``high``: each cell a
    square block, so that the cells (and a region drawn on them) stay visible as the statistics saw them."""
    scaled = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
    factor = max(1, PICTURE_SIDE // max(values.shape))
    cells = np.kron(scaled, np.ones((factor, factor)))
    return colormap_table(colormap)[(cells * 255).astype(np.uint8)]


def _named(encoded: bytes, name: str, alt: str) -> dict[str, Any]:
    return picture_view(encoded, alt) | {"name": name}


def _region_box(shift: ClassShift, factor: int) -> list[tuple[float, float, float, float]]:
    if shift.region_cells is None:
        return []
    row1, col1, row2, col2 = shift.region_cells
    return [(col1 * factor, row1 * factor, col2 * factor, row2 * factor)]


def _shift_view(shift: ClassShift, labels: tuple[str, str], colormap: str) -> dict[str, Any]:
    """A class's two mean evidence maps on one colour scale (so mass that moved shows), the region where
    run B gained most outlined on B's."""
    mean_a, mean_b = shift.means
    low, high = min(mean_a.min(), mean_b.min()), max(mean_a.max(), mean_b.max())
    factor = max(1, PICTURE_SIDE // max(mean_a.shape))
    outlined = draw_boxes(heat_picture(mean_b, low, high, colormap), _region_box(shift, factor))
    pictures = [
        _named(thumbnail(picture, PICTURE_SIDE), f"{label}: mean evidence", f"{shift.name} in {label}")
        for picture, label in ((heat_picture(mean_a, low, high, colormap), labels[0]), (outlined, labels[1]))
    ]
    return {"shift": shift, "pictures": pictures}


def _pair_picture(pair: PairResult, side: int, label: str, out: Path, colormap: str) -> dict[str, Any]:
    """One run's view of a changed image: its overlay when the run wrote one, else its map drawn."""
    overlay = pair.overlays[side]
    encoded = file_thumbnail(overlay) if overlay is not None else b""
    link = quote(Path(os.path.relpath(overlay, out)).as_posix()) if overlay is not None else None
    if not encoded:
        values = np.load(pair.maps[side], allow_pickle=False)
        encoded, link = thumbnail(heat_picture(values, values.min(), values.max(), colormap)), None
    return _named(encoded, label, f"{label}'s map of {pair.path}") | {"link": link}


def _pair_view(pair: PairResult, labels: tuple[str, str], out: Path, colormap: str) -> dict[str, Any]:
    name = Path(pair.reference).name if pair.reference else pair.class_name
    pictures = [_pair_picture(pair, side, labels[side], out, colormap) for side in (0, 1)]
    return {"pair": pair, "name": Path(pair.path).name, "target": name, "pictures": pictures}


def write_compare_report(path: Path, comparison: Comparison) -> None:
    """Write report.html atomically beside comparison.json (overlay links are relative to it)."""
    data = comparison.to_json()
    runs = data["runs"]
    labels = ("A", "B")
    facts = [
        *((f"run {label}", f"{run['folder']} · {run['model']} · {run['method']}") for label, run in
          zip(labels, runs.values(), strict=True)),
        ("matched", f"{data['matched']} images and targets; unmatched: "
                    f"{runs['a']['unmatched']} in A, {runs['b']['unmatched']} in B"),
        ("changed", f"{data['changed']} ({data['share_changed']:.1%}) with Spearman below "
                    f"{comparison.changed_below}"),
        ("mean Spearman", f"{data['spearman']:.3f}"),
        ("mean top-10% IoU", f"{data['top_iou']:.3f}"),
    ]  # fmt: skip
    colormap = comparison.runs[1].summary.get("settings", {}).get("colormap") or DEFAULT_COLORMAP
    out = path.parent
    page = TEMPLATES.get_template("compare.html.j2").render(
        title="vitcam compare", style=STYLE, facts=facts, classes=comparison.classes,
        shifts=[_shift_view(shift, labels, colormap) for shift in comparison.classes[:CLASSES_SHOWN]],
        pairs=[_pair_view(pair, labels, out, colormap) for pair in comparison.most_changed(IMAGES_SHOWN)],
        changed_below=comparison.changed_below,
    )  # fmt: skip
    write_atomic(path, lambda handle: handle.write(fs_text(page).encode("utf-8")))
