"""Dataset-level numbers from per-image metrics, summed as they arrive (constant memory, mergeable)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitcam_cli.metrics.adcc import PARTS, adcc

# every metric a run can report, in table order; adcc_mean is the mean of the per-image ADCC values
METRICS = (
    "adcc", "adcc_mean", *PARTS[1:], "insertion", "deletion", "pointing_game", "energy_in_box",
    "discrimination",
)  # fmt: skip


HISTOGRAM_BINS = 20  # equal bins over [0, 1], where every per-image metric lies


class Totals:
    """Running sums of per-image metrics and their histograms: constant memory, and mergeable (sum the
    sums and the bins)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.histograms: dict[str, list[int]] = {}

    def add(self, values: dict[str, Tensor | float | None]) -> None:
        """Add per-image values; None and NaN mean "does not apply" (an image without boxes)."""
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, Tensor):
                present = value.double()[~value.isnan()].flatten()
            elif math.isnan(value):
                continue
            else:
                present = torch.tensor([float(value)], dtype=torch.float64)
            total, count = float(present.sum()), present.numel()
            if not count:
                continue
            bins = (present.clamp(0, 1) * HISTOGRAM_BINS).long().clamp(max=HISTOGRAM_BINS - 1)
            counted = torch.bincount(bins, minlength=HISTOGRAM_BINS).tolist()
            previous = self.histograms.get(name, [0] * HISTOGRAM_BINS)
            self.histograms[name] = [a + b for a, b in zip(previous, counted, strict=True)]
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + count

    def merge(self, other: Totals) -> None:
        """Add another process's sums: the dataset means then cover both."""
        for name, total in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]
        for name, bins in other.histograms.items():
            previous = self.histograms.get(name, [0] * len(bins))
            self.histograms[name] = [a + b for a, b in zip(previous, bins, strict=True)]

    def state(self) -> dict[str, dict[str, Any]]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "histograms": dict(self.histograms)}

    @classmethod
    def from_state(cls, state: dict[str, dict[str, Any]]) -> Totals:
        totals = cls()
        totals.sums = {name: float(value) for name, value in state["sums"].items()}
        totals.counts = {name: int(value) for name, value in state["counts"].items()}
        totals.histograms = {name: list(bins) for name, bins in state.get("histograms", {}).items()}
        return totals

    def means(self) -> dict[str, float]:
        """Mean of every metric; ``adcc`` combines the averaged parts, ``adcc_mean`` averages the images'."""
        mean = {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name]}
        if "adcc" in mean:
            mean["adcc_mean"] = mean["adcc"]
            parts = (torch.tensor(mean[name]) for name in ("average_drop", "coherency", "complexity"))
            mean["adcc"] = float(adcc(*parts))
        return {name: mean[name] for name in METRICS if name in mean}


def bootstrap_intervals(
    values: dict[str, np.ndarray], draws: int, seed: int, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every dataset metric, resampling images with replacement.

    ``values`` holds one array per metric with one value per image, all in the same image order (the
    ``adcc`` array holds the per-image ADCC; NaN where a metric does not apply to an image). Each draw
    recomputes the metrics exactly as ``Totals`` does, including ``adcc`` as the combination of the
    resampled averaged parts.
    """
    count = len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, count, size=(draws, count))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of images that all lack the metric
        means = {name: np.nanmean(array[picks], axis=1) for name, array in values.items()}
    if "adcc" in means:
        means["adcc_mean"] = means["adcc"]
        parts = (torch.from_numpy(means[name]) for name in ("average_drop", "coherency", "complexity"))
        means["adcc"] = adcc(*parts).numpy()
    low, high = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {
        name: (float(np.nanpercentile(means[name], low)), float(np.nanpercentile(means[name], high)))
        for name in METRICS
        if name in means
    }
