"""Two finished runs over the same images, compared map by map: where their explanations agree, and
where a class's evidence moved from one run to the other (two models, two checkpoints, two methods).

Rows are matched by the image file itself (links followed, each run's relative paths read from the
working folder its summary.json records) and by their target: a class index, or a similarity target's
reference. Only rows that explained something and saved a raw map (``--save-maps``) are compared.

Each pair of maps is compared on one grid: when the two runs' token grids differ, the map with fewer
cells is resampled to the other's grid by bilinear interpolation (cell centres aligned, as
``torch.nn.functional.interpolate(..., align_corners=False)`` does), so no cell of the finer map is
averaged away. On that grid:

- ``spearman``: the rank correlation of the two maps' cells (0 when either map is constant: a constant
  map ranks nothing);
- ``top_iou``: the intersection over union of the two maps' top cells, the ``ceil(0.1 * cells)`` highest
  of each (ties broken by cell order, so the result is deterministic).

Per target (class or reference) the two runs' mean evidence distributions (``evidence.distribution``) are
compared: ``moved`` is their total-variation distance (half the L1 distance, 0..1), and the region where
run B's mean gained most over run A's is the box of the cells whose gain is at least half the peak gain.

Targets are ranked by their mean Spearman, least agreement first (``moved`` breaks ties): a mean of
per-pair correlations does not depend on how many images a class has, whereas the distance between two
means of a few noisy maps is larger the fewer they are, and would rank a class of three images first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats

from vitcam_cli.analysis.evidence import distribution
from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.outputs.manifest import read_rows
from vitcam_cli.outputs.resume import earlier_summary
from vitcam_cli.outputs.rows import Row, path_cells
from vitcam_cli.paths import absolute, fs_text, resolved

CHANGED_BELOW = 0.5  # a pair of maps whose Spearman correlation is below this has changed
TOP_SHARE = 0.1  # the share of cells top_iou compares
REGION_SHARE = 0.5  # the gained region: cells whose gain is at least this share of the peak gain

Target = tuple[int | None, str | None]  # a row's class index, or its similarity target's reference
Key = tuple[Path, int | None, str | None]  # the image file, then its target
Cells = tuple[int, int, int, int]  # row1, col1, row2, col2 of a block of cells, row2/col2 exclusive
Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in the model's input pixels, x2/y2 exclusive


@dataclass
class RunMaps:
    """One finished run as a comparison reads it: its comparable rows, keyed by image file and target."""

    folder: Path
    summary: dict[str, Any]
    rows: dict[Key, Row]
    skipped: int  # rows not compared: failed images, rows without a map
    parameter: str = "run_a"  # how errors name the folder

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == "complete"

    @property
    def model(self) -> str | None:
        return self.summary.get("settings", {}).get("model", {}).get("model")

    @property
    def method(self) -> str | None:
        method = self.summary.get("settings", {}).get("method", {})
        return method.get("label", method.get("name"))

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) the model saw, as summary.json records it; None when it does not."""
        size = self.summary.get("settings", {}).get("model", {}).get("input_size")
        return (int(size[-2]), int(size[-1])) if size else None

    def saliency(self, row: Row) -> np.ndarray:
        """A row's raw map, as saved (float64 for the statistics); a map that cannot be read, or holds
        NaN or inf, is refused by its file."""
        path = self.folder / (row.map or "")
        try:
            saliency = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError, EOFError) as error:
            why = literal((str(error) or type(error).__name__).splitlines()[0])
            raise ParameterError(
                self.parameter,
                f"map {literal(path)} cannot be read ({why}): rerun explain on its image",
                self.folder,
            ) from error  # fmt: skip
        if saliency.ndim != 2 or not np.isfinite(saliency).all():
            raise ParameterError(
                self.parameter, f"map {literal(path)} is not a finite 2-D map: rerun explain on its image",
                self.folder,
            )  # fmt: skip
        return saliency

    def overlay(self, row: Row) -> Path | None:
        """A row's overlay file, when the run wrote one and it is still there."""
        path = self.folder / row.overlay if row.overlay else None
        return path if path is not None and path.is_file() else None


def read_run(folder: Path, parameter: str) -> RunMaps:
    """A finished run's comparable rows; ``parameter`` names the folder in errors (``run_a``, ``run_b``)."""
    if not folder.is_dir():
        raise ParameterError(parameter, "no such folder: name the output folder of an explain run", folder)
    results = folder / "results.jsonl"
    if not results.is_file():
        raise ParameterError(
            parameter,
            "holds no results.jsonl: name the output folder of a finished vitcam explain or audit run "
            "(shards: combine them with 'vitcam merge' first)",
            folder,
        )
    summary = earlier_summary(folder)
    origin = Path(summary.get("cwd") or Path.cwd())  # what the rows' relative paths are relative to
    rows: dict[Key, Row] = {}
    skipped = failed = 0
    for row in read_rows(results):
        failed += not row.ok
        if not (row.ok and row.map and (folder / row.map).is_file()):
            skipped += 1
            continue
        file = resolved(absolute(origin / row.path))
        rows.setdefault((file, row.class_index, row.reference), row)
    if not rows and failed == skipped and failed:
        raise ParameterError(parameter, "explained no image (every row failed; its rows say why)", folder)
    if not rows:
        raise ParameterError(
            parameter, "holds no saved maps: rerun explain with {save_maps} (audit always saves them)", folder
        )
    return RunMaps(folder, summary, rows, skipped, parameter)


def common_grid(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two maps on one grid: the one with fewer cells resampled bilinearly to the other's grid."""
    if first.shape == second.shape:
        return first, second
    if first.size < second.size:
        return resample(first, second.shape), second
    return first, resample(second, first.shape)


def resample(saliency: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """A map resampled bilinearly to ``grid``, cell centres aligned and edges repeated outward."""
    factors = [new / old for new, old in zip(grid, saliency.shape, strict=True)]
    return ndimage.zoom(saliency, factors, order=1, mode="nearest", grid_mode=True)


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Rank correlation of two maps' cells; 0 when either is constant (it ranks nothing, and scipy
    would answer NaN)."""
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first.ravel(), second.ravel()).statistic)


def top_cells(saliency: np.ndarray, share: float = TOP_SHARE) -> set[int]:
    """The ``ceil(share * cells)`` highest cells (flat indices); ties go to the earlier cell."""
    count = math.ceil(share * saliency.size)
    return set(np.argsort(-saliency.ravel(), kind="stable")[:count].tolist())


def top_iou(first: np.ndarray, second: np.ndarray, share: float = TOP_SHARE) -> float:
    """Intersection over union of the two maps' top cells."""
    top_first, top_second = top_cells(first, share), top_cells(second, share)
    return len(top_first & top_second) / len(top_first | top_second)


@dataclass
class PairResult:
    """One image and target explained by both runs: how far their maps agree."""

    path: str  # the image as run A's rows name it
    class_index: int | None
    class_name: str | None
    reference: str | None
    spearman: float
    top_iou: float
    changed: bool
    maps: tuple[Path, Path]  # each run's raw map file
    overlays: tuple[Path | None, Path | None]  # each run's overlay file, when it wrote one

    @property
    def target(self) -> Target:
        return (self.class_index, self.reference)

    def cells(self) -> dict[str, Any]:
        """per_image.csv's values."""
        path, exact = path_cells(self.path)
        return {
            "path": path,
            "path_bytes": exact,
            "class_index": self.class_index,
            "class_name": self.class_name,
            "reference": self.reference,
            "spearman": round(self.spearman, 6),
            "top_iou": round(self.top_iou, 6),
            "changed": int(self.changed),
        }


@dataclass
class ClassShift:
    """One target's pairs: how far the runs agree on it, and where its mean evidence moved."""

    class_index: int | None
    class_name: str | None
    reference: str | None
    pairs: int
    changed: int
    spearman: float  # mean over the pairs
    top_iou: float
    moved: float  # total-variation distance of the two mean distributions, 0..1
    peak_cell: tuple[int, int] | None  # (row, col) where B's mean gained most over A's; None: nowhere
    region_cells: Cells | None  # the cells gaining at least half the peak gain, as one block
    region_pixels: Box | None  # that block in run B's input pixels; None when summary.json has no size
    means: tuple[np.ndarray, np.ndarray] = field(repr=False)  # each run's mean distribution

    @property
    def name(self) -> str:
        """How tables name the target: the class name, or the reference's file name."""
        if self.reference is not None:
            return Path(self.reference).name or self.reference
        return self.class_name or str(self.class_index)

    def to_json(self) -> dict[str, Any]:
        return {
            "class_index": self.class_index,
            "class_name": self.class_name,
            "reference": self.reference,
            "pairs": self.pairs,
            "changed": self.changed,
            "spearman": round(self.spearman, 6),
            "top_iou": round(self.top_iou, 6),
            "moved": round(self.moved, 6),
            "moved_to": {
                "peak_cell": list(self.peak_cell) if self.peak_cell else None,
                "cells": list(self.region_cells) if self.region_cells else None,
                "pixels": list(self.region_pixels) if self.region_pixels else None,
            },
        }


def gained_region(gain: np.ndarray) -> tuple[tuple[int, int] | None, Cells | None]:
    """The peak cell of ``gain`` and the block of cells gaining at least ``REGION_SHARE`` of it; none
    when nothing gained."""
    peak = float(gain.max())
    if peak <= 0:
        return None, None
    row, col = np.unravel_index(int(np.argmax(gain)), gain.shape)
    rows, cols = np.nonzero(gain >= REGION_SHARE * peak)
    return (int(row), int(col)), (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def cells_to_pixels(cells: Cells, grid: tuple[int, int], input_size: tuple[int, int]) -> Box:
    """A block of cells of ``grid`` as a box in input pixels (the grid spread evenly over the input)."""
    row1, col1, row2, col2 = cells
    (rows, cols), (height, width) = grid, input_size
    return (
        round(col1 * width / cols), round(row1 * height / rows),
        round(col2 * width / cols), round(row2 * height / rows),
    )  # fmt: skip


@dataclass
class Evidence:
    """One target's two evidence distributions summed over its pairs (so that no pair keeps its maps)."""

    sums: list[np.ndarray] = field(default_factory=list)  # run A's, run B's
    pairs: list[PairResult] = field(default_factory=list)

    def add(self, pair: PairResult, distributions: tuple[np.ndarray, np.ndarray]) -> None:
        if not self.sums:
            self.sums = [np.zeros_like(values) for values in distributions]
        for total, added in zip(self.sums, distributions, strict=True):
            total += added
        self.pairs.append(pair)

    def shift(self, input_size: tuple[int, int] | None) -> ClassShift:
        """The target's pairs summed up."""
        mean_a, mean_b = (total / len(self.pairs) for total in self.sums)
        peak, cells = gained_region(mean_b - mean_a)
        pixels = cells_to_pixels(cells, mean_a.shape, input_size) if cells and input_size else None
        first = self.pairs[0]
        return ClassShift(
            first.class_index, first.class_name, first.reference, len(self.pairs),
            changed=sum(pair.changed for pair in self.pairs),
            spearman=float(np.mean([pair.spearman for pair in self.pairs])),
            top_iou=float(np.mean([pair.top_iou for pair in self.pairs])),
            moved=float(0.5 * np.abs(mean_a - mean_b).sum()),
            peak_cell=peak, region_cells=cells, region_pixels=pixels, means=(mean_a, mean_b),
        )  # fmt: skip


@dataclass
class Comparison:
    """Two runs compared: every matched pair, every target's shift (least agreement first), and counts."""

    runs: tuple[RunMaps, RunMaps]
    changed_below: float
    pairs: list[PairResult]
    classes: list[ClassShift]
    unmatched: tuple[int, int]  # compared rows of each run with no counterpart in the other

    @property
    def changed(self) -> int:
        return sum(pair.changed for pair in self.pairs)

    @property
    def share_changed(self) -> float:
        return self.changed / len(self.pairs)

    @property
    def spearman(self) -> float:
        return float(np.mean([pair.spearman for pair in self.pairs]))

    @property
    def top_iou(self) -> float:
        return float(np.mean([pair.top_iou for pair in self.pairs]))

    def most_changed(self, count: int) -> list[PairResult]:
        """The ``count`` pairs whose maps agree least (lowest Spearman first)."""
        return sorted(self.pairs, key=lambda pair: pair.spearman)[:count]

    def to_json(self) -> dict[str, Any]:
        """comparison.json's object (see docs/compare.md)."""
        return {
            "tool": "vitcam compare",
            "settings": {"changed_below": self.changed_below, "top_share": TOP_SHARE},
            "runs": {
                side: _run_json(run, unmatched)
                for side, run, unmatched in zip("ab", self.runs, self.unmatched, strict=True)
            },
            "matched": len(self.pairs),
            "changed": self.changed,
            "share_changed": round(self.share_changed, 6),
            "spearman": round(self.spearman, 6),
            "top_iou": round(self.top_iou, 6),
            "classes": [shift.to_json() for shift in self.classes],
        }


def _run_json(run: RunMaps, unmatched: int) -> dict[str, Any]:
    return {
        "folder": fs_text(run.folder),
        "model": run.model,
        "method": run.method,
        "status": run.summary.get("status"),
        "rows_compared": len(run.rows),
        "rows_skipped": run.skipped,
        "unmatched": unmatched,
    }


def compare_pair(
    a: RunMaps, row_a: Row, b: RunMaps, row_b: Row, changed_below: float
) -> tuple[PairResult, tuple[np.ndarray, np.ndarray]]:
    """The two runs' maps of one image and target, compared on their common grid; and their evidence
    distributions on it."""
    first, second = common_grid(a.saliency(row_a), b.saliency(row_b))
    correlation = spearman(first, second)
    pair = PairResult(
        row_a.path, row_a.class_index, row_a.class_name, row_a.reference,
        correlation, top_iou(first, second), correlation < changed_below,
        (a.folder / (row_a.map or ""), b.folder / (row_b.map or "")), (a.overlay(row_a), b.overlay(row_b)),
    )  # fmt: skip
    return pair, (distribution(first), distribution(second))


def compare_runs(run_a: Path, run_b: Path, changed_below: float = CHANGED_BELOW) -> Comparison:
    """Compare two finished runs (explain with ``save_maps``, or audit) over the same images.

    Raises a ``ParameterError`` naming ``run_a`` or ``run_b`` for a folder that is not such a run, and a
    ``VitcamError`` when no image and target is in both.
    """
    a, b = read_run(run_a, "run_a"), read_run(run_b, "run_b")
    matched = sorted(a.rows.keys() & b.rows.keys(), key=lambda key: (a.rows[key].path, _order(*key[1:])))
    if not matched:
        raise VitcamError(
            f"no image and target of {{run_a}} {literal(run_a)} is in {{run_b}} {literal(run_b)}: compare "
            "two runs over the same images and classes"
        )
    pairs: list[PairResult] = []
    by_target: dict[Target, Evidence] = {}
    for key in matched:
        pair, distributions = compare_pair(a, a.rows[key], b, b.rows[key], changed_below)
        pairs.append(pair)
        by_target.setdefault(pair.target, Evidence()).add(pair, distributions)
    size = b.input_size or a.input_size
    shifts = sorted(
        (evidence.shift(size) for evidence in by_target.values()),
        key=lambda shift: (shift.spearman, -shift.moved, _order(shift.class_index, shift.reference)),
    )
    unmatched = (len(a.rows) - len(matched), len(b.rows) - len(matched))
    return Comparison((a, b), changed_below, pairs, shifts, unmatched)


def _order(index: int | None, reference: str | None) -> tuple[int, str]:
    """A target's place among equals: classes by index, then references by name."""
    return (-1 if index is None else index, reference or "")
