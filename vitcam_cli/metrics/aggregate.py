"""Dataset-level numbers from per-image metrics, summed as they arrive (constant memory, mergeable)."""

from __future__ import annotations

import torch
from torch import Tensor

from vitcam_cli.metrics.adcc import PARTS, adcc

# every metric a run can report, in table order; adcc_mean is the mean of the per-image ADCC values
METRICS = ("adcc", "adcc_mean", *PARTS[1:], "insertion", "deletion", "pointing_game", "energy_in_box")


class Totals:
    """Running sums of per-image metrics: constant memory, and mergeable (sum the sums)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Tensor | float | None]) -> None:
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, Tensor):
                total, count = float(value.double().sum()), value.numel()
            else:
                total, count = float(value), 1
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + count

    def merge(self, other: Totals) -> None:
        """Add another process's sums: the dataset means then cover both."""
        for name, total in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def state(self) -> dict[str, dict[str, float]]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: dict[str, dict[str, float]]) -> Totals:
        totals = cls()
        totals.sums = {name: float(value) for name, value in state["sums"].items()}
        totals.counts = {name: int(value) for name, value in state["counts"].items()}
        return totals

    def means(self) -> dict[str, float]:
        """Mean of every metric; ``adcc`` combines the averaged parts, ``adcc_mean`` averages the images'."""
        mean = {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name]}
        if "adcc" in mean:
            mean["adcc_mean"] = mean["adcc"]
            parts = (torch.tensor(mean[name]) for name in ("average_drop", "coherency", "complexity"))
            mean["adcc"] = float(adcc(*parts))
        return {name: mean[name] for name in METRICS if name in mean}
