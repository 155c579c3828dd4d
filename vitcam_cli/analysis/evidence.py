"""Class evidence: where, on average, a class's maps put their mass, in the model's input frame.

Each map is min-max scaled and divided by its sum, so that every image weighs the same and a map is a
distribution of evidence over the token grid (a constant map: uniform). A class's evidence is the mean
of its images' distributions; with boxes, the share of it that lies outside the class's own objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the model's input pixels, x2/y2 exclusive


def distribution(saliency: np.ndarray) -> np.ndarray:
    """A raw (rows, cols) map as a distribution: min-max scaled, summing to 1 (uniform when constant)."""
    values = np.asarray(saliency, dtype=np.float64)
    low, high = values.min(), values.max()
    if not np.isfinite(high - low) or high <= low:
        return np.full(values.shape, 1.0 / values.size)
    scaled = (values - low) / (high - low)
    return scaled / scaled.sum()


def box_cells(boxes: Sequence[Box], grid: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """(rows, cols) share of each token cell covered by any of ``boxes`` (input pixels)."""
    rows, cols = grid
    height, width = input_size
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        mask[max(0, round(y1)) : max(0, round(y2)), max(0, round(x1)) : max(0, round(x2))] = True
    return mask.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))


@dataclass
class ClassEvidence:
    """One class's images and where their evidence lies."""

    class_index: int
    class_name: str
    images: list[int] = field(default_factory=list)  # indices into the run's images
    mean: np.ndarray | None = None  # (rows, cols) the mean distribution, summing to 1
    outside_boxes: float | None = None  # the mean share of evidence outside the class's boxes

    @property
    def count(self) -> int:
        return len(self.images)


def class_evidence(
    distributions: np.ndarray,
    classes: Sequence[int],
    names: Sequence[str],
    inside: Sequence[np.ndarray | None] | None = None,
) -> list[ClassEvidence]:
    """Every explained class's evidence, most images first: ``distributions`` (N, rows, cols), each
    image's class, and (with boxes) the share of each cell inside the image's objects of that class."""
    found: dict[int, ClassEvidence] = {}
    for index, target in enumerate(classes):
        found.setdefault(target, ClassEvidence(target, names[target])).images.append(index)
    for evidence in found.values():
        evidence.mean = distributions[evidence.images].mean(axis=0)
        if inside is not None:
            shares = [
                float((distributions[i] * (1.0 - inside[i])).sum())
                for i in evidence.images
                if inside[i] is not None
            ]
            evidence.outside_boxes = float(np.mean(shares)) if shares else None
    return sorted(found.values(), key=lambda evidence: (-evidence.count, evidence.class_index))
