"""Localisation against ground-truth boxes: the pointing game, the energy inside the boxes, and how
well a map tells the explained class's object from the others.

All take the scaled map upsampled to the input (N, H, W), one per explained (image, class), and masks
of the pixels inside boxes (boxes mapped into input pixels the way preprocessing moved them). Where an
image's boxes carry labels, the boxes that count are those of the explained class (the class-specific
pointing game of Zhang et al., 2016); unlabelled boxes all count, whatever the class. A metric that
does not apply to an (image, class) is NaN and stays out of the dataset means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Box = tuple[float, float, float, float]
UNLABELLED, PADDING = -1, -2


def box_mask(box: Box, size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """(H, W) bool: the pixel centres inside the box (x1, y1, x2, y2; x2, y2 exclusive). A box too small
    to hold a pixel centre marks the pixel under its centre: every box is somewhere."""
    height, width = size
    x1, y1, x2, y2 = box
    ys = torch.arange(height, device=device).view(-1, 1) + 0.5
    xs = torch.arange(width, device=device).view(1, -1) + 0.5
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    if not inside.any():
        inside[min(max(int((y1 + y2) / 2), 0), height - 1), min(max(int((x1 + x2) / 2), 0), width - 1)] = True
    return inside


@dataclass
class BoxMasks:
    """Each image's boxes as masks in input pixels, with the class of each (UNLABELLED when the boxes
    file has no labels; PADDING pads images with fewer boxes)."""

    masks: Tensor  # (B, M, H, W) bool
    labels: Tensor  # (B, M) long

    @classmethod
    def build(
        cls,
        boxes: Sequence[Sequence[tuple[Box, int | None]]],
        size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> BoxMasks:
        count = max((len(image) for image in boxes), default=0)
        masks = torch.zeros(len(boxes), max(count, 1), *size, dtype=torch.bool, device=device)
        labels = torch.full((len(boxes), max(count, 1)), PADDING, dtype=torch.long, device=device)
        for i, image in enumerate(boxes):
            for j, (box, label) in enumerate(image):
                masks[i, j] = box_mask(box, size, device)
                labels[i, j] = UNLABELLED if label is None else label
        return cls(masks, labels)

    def for_classes(self, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For (B, T) explained classes, one entry per (image, class) in that order: the pixels of the
        boxes that count for the class, the pixels of all the image's boxes, and whether the image's
        boxes are labelled."""
        per_image = classes.shape[1]
        labels = self.labels.repeat_interleave(per_image, dim=0)  # (N, M)
        masks = self.masks.repeat_interleave(per_image, dim=0)  # (N, M, H, W)
        labelled = (labels >= 0).any(1)
        counts = torch.where(
            labelled.unsqueeze(1), labels == classes.reshape(-1, 1), labels == UNLABELLED
        )  # (N, M): the boxes that count for each explained class
        present = labels != PADDING
        target = (masks & counts[..., None, None]).any(1)
        every = (masks & present[..., None, None]).any(1)
        return target, every, labelled


def _where_boxes(values: Tensor, mask: Tensor) -> Tensor:
    """NaN (does not apply) where ``mask`` is empty: no box of the explained class, or none at all."""
    return torch.where(mask.flatten(1).any(1), values, torch.full_like(values, float("nan")))


def pointing_game(saliency: Tensor, mask: Tensor) -> Tensor:
    """1 where the map's maximum (the first, in row-major order, on ties) falls inside a box that counts,
    else 0; NaN without such a box."""
    peak = saliency.flatten(1).argmax(1)
    return _where_boxes(mask.flatten(1).gather(1, peak.unsqueeze(1)).squeeze(1).float(), mask)


def energy_in_box(saliency: Tensor, mask: Tensor) -> Tensor:
    """Share of the map's total mass inside the boxes that count (0 for an all-zero map; NaN without
    such a box)."""
    total = saliency.flatten(1).sum(1)
    inside = (saliency * mask).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
    return _where_boxes(share, mask)


def discrimination(saliency: Tensor, target: Tensor, every: Tensor, labelled: Tensor) -> Tensor:
    """The map's mass inside the explained class's boxes / its mass inside all labelled boxes: 1 when the
    map lights only the right object, 0.5 for a map spread evenly over two equal objects. NaN for
    unlabelled boxes, without a box of the explained class, or with no mass in any box."""
    inside = (saliency * target).flatten(1).sum(1)
    boxed = (saliency * every).flatten(1).sum(1)
    share = inside / boxed.clamp_min(1e-12)
    applies = labelled & target.flatten(1).any(1) & (boxed > 0)
    return torch.where(applies, share, torch.full_like(share, float("nan")))
