"""Shortcut candidates, and the interventions that confirm or reject them.

A candidate is a class whose evidence keeps to a place where the other classes' evidence is not: the
cells where the class's mean distribution most exceeds the mean of the other classes' (with boxes, the
evidence outside each image's objects). A candidate becomes a finding only when the model's own
behaviour confirms it, both ways:

- blanked: the region of the class's images replaced by a blurred copy of itself; the class's
  probability must fall by at least ``DROP`` of itself;
- pasted: the region of the class's images pasted at the same place into other classes' images; the
  class's probability must rise by at least ``GAIN`` (tested only once blanking has confirmed).

Both at the lower end of their 95% bootstrap intervals, so that a handful of images cannot confirm a
finding by chance. An object is rarely a shortcut by this test, unless it is small and always in one
place, which is then what the finding says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vitcam_cli.analysis.evidence import ClassEvidence
from vitcam_cli.metrics.insertion_deletion import baseline_images
from vitcam_cli.targets import Reading

DROP = 0.5  # relative fall of the class's probability when its region is blanked
GAIN = 0.1  # rise of the class's probability in other classes' images when its region is pasted
LARGEST_SHARE = 0.25  # a candidate region covers at most this share of the grid
DRAWS, LEVEL = 1000, 0.95

Cells = tuple[int, int, int, int]  # row and column ranges on the token grid: r1, c1, r2, c2 (exclusive)


@dataclass
class Candidate:
    """A class's most distinctive place: its cells and how much evidence exceeds the others' there."""

    evidence: ClassEvidence
    cells: Cells
    excess: float  # the class's evidence in the region minus the other classes' (shares of 1)


@dataclass
class Effect:
    """A mean over images and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: np.ndarray, seed: int = 0) -> Effect:
        if values.size == 0:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        picks = np.random.default_rng(seed).integers(0, values.size, size=(DRAWS, values.size))
        means = values[picks].mean(axis=1)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.percentile(means, [tail, 100 - tail])
        return cls(float(values.mean()), float(low), float(high), int(values.size))


@dataclass
class Test:
    """What the interventions on a candidate's region did to the class's probability."""

    candidate: Candidate
    drop: Effect  # blanked, in the class's images: p - p', absolute
    relative_drop: Effect  # (p - p') / p
    gain: Effect | None  # pasted, in other classes' images: p' - p, absolute (None: not pasted)
    flips: float | None  # share of the other classes' images whose prediction became the class
    examples: list[int] = field(default_factory=list)  # the class's images tested, strongest drop first

    @property
    def verified(self) -> bool:
        return self.relative_drop.low >= DROP and self.gain is not None and self.gain.low >= GAIN

    @property
    def strength(self) -> float:
        """What orders findings: the lower ends of both effects."""
        return min(self.relative_drop.low, 1.0) + (self.gain.low if self.gain is not None else 0.0)


def _region(excess: np.ndarray) -> Cells:
    """The box around every cell whose excess reaches half the peak's, with a margin of one cell (the
    evidence of a mark sits on its edges); wider than ``LARGEST_SHARE`` of the grid, the peak's 3 x 3
    neighbourhood instead."""
    rows, cols = excess.shape
    peak = np.unravel_index(int(np.argmax(excess)), excess.shape)
    hot_rows, hot_cols = np.nonzero(excess >= 0.5 * excess[peak])
    r1, r2 = max(0, int(hot_rows.min()) - 1), min(rows, int(hot_rows.max()) + 2)
    c1, c2 = max(0, int(hot_cols.min()) - 1), min(cols, int(hot_cols.max()) + 2)
    if (r2 - r1) * (c2 - c1) > LARGEST_SHARE * rows * cols:
        r1, r2 = max(0, int(peak[0]) - 1), min(rows, int(peak[0]) + 2)
        c1, c2 = max(0, int(peak[1]) - 1), min(cols, int(peak[1]) + 2)
    return r1, c1, r2, c2


def region_mass(distributions: np.ndarray, cells: Cells) -> np.ndarray:
    """(N,) the share of each distribution (N, rows, cols) inside the cells."""
    r1, c1, r2, c2 = cells
    return distributions[:, r1:r2, c1:c2].sum(axis=(1, 2))


def candidates(evidence: Sequence[ClassEvidence], limit: int) -> list[Candidate]:
    """Each class's most distinctive region where the other classes' evidence is not (no denser than
    if it were spread evenly: a place the others' objects do not take), the ``limit`` largest
    excesses first (classes with one image, or a single class, have nothing to stand out from)."""
    usable = [e for e in evidence if e.count >= 2 and e.mean is not None]
    if len(usable) < 2:
        return []
    total = np.sum([e.mean for e in usable], axis=0)
    found = []
    for item in usable:
        others = (total - item.mean) / (len(usable) - 1)
        cells = _region(item.mean - others)
        r1, c1, r2, c2 = cells
        area = (r2 - r1) * (c2 - c1) / others.size
        if float(region_mass(others[None], cells)[0]) <= area:
            excess = float(region_mass((item.mean - others)[None], cells)[0])
            found.append(Candidate(item, cells, excess))
    found.sort(key=lambda candidate: -candidate.excess)
    return [candidate for candidate in found if candidate.excess > 0][:limit]


def pixels(cells: Cells, grid: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A cell box as an input-pixel box (x1, y1, x2, y2; x2, y2 exclusive)."""
    r1, c1, r2, c2 = cells
    cell_h, cell_w = input_size[0] // grid[0], input_size[1] // grid[1]
    return c1 * cell_w, r1 * cell_h, c2 * cell_w, r2 * cell_h


Forward = Callable[[Tensor], Tensor]  # (n, C, H, W) model inputs -> (n, K) the model's outputs


def _probability(reading: Reading, outputs: Tensor, target: int) -> np.ndarray:
    targets = torch.full((len(outputs), 1), target, dtype=torch.long, device=outputs.device)
    return reading.probability(outputs, targets)[:, 0].double().cpu().numpy()


def test(
    candidate: Candidate,
    own: Tensor,
    own_outputs: Tensor,
    recipients: Callable[[], tuple[Tensor, Tensor]],
    forward: Forward,
    reading: Reading,
    box: tuple[int, int, int, int],
) -> Test:
    """Blank the region in the class's images (``own``, whose outputs are ``own_outputs``); only if that
    confirms the candidate, paste it into other classes' images (``recipients()``: their inputs and
    outputs), each paired with the class's images in turn. A candidate blanking rejects is not pasted:
    it could not be verified, and the paste would cost as much again."""
    target = candidate.evidence.class_index
    x1, y1, x2, y2 = box
    blanked = own.clone()
    blanked[..., y1:y2, x1:x2] = baseline_images(own, "blur")[..., y1:y2, x1:x2]
    before = _probability(reading, own_outputs, target)
    drop = before - _probability(reading, forward(blanked), target)
    relative = Effect.of(drop / np.clip(before, 1e-12, None))
    order = [int(i) for i in np.argsort(-(drop / np.clip(before, 1e-12, None)))]
    if relative.low < DROP:
        return Test(candidate, Effect.of(drop), relative, None, None, order)
    others, others_outputs = recipients()
    pasted = others.clone()
    donors = own[torch.arange(len(others), device=own.device) % len(own)]
    pasted[..., y1:y2, x1:x2] = donors[..., y1:y2, x1:x2]
    raised = forward(pasted)
    gain = _probability(reading, raised, target) - _probability(reading, others_outputs, target)
    flips = (
        float((reading.values(raised).argmax(-1) == target).float().mean()) if len(others) else float("nan")
    )
    return Test(candidate, Effect.of(drop), relative, Effect.of(gain), flips, order)
