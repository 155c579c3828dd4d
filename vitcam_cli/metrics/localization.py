"""Localisation against ground-truth boxes: the pointing game and the energy inside the boxes.

Both take the scaled map upsampled to the input (B, H, W) and a (B, H, W) mask of the pixels inside
any of the image's boxes (boxes mapped into input pixels the way preprocessing moved them).
"""

from __future__ import annotations

import torch
from torch import Tensor

Box = tuple[float, float, float, float]


def boxes_mask(boxes: list[list[Box]], size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """(B, H, W) bool: pixel centres inside any box; boxes are x1, y1, x2, y2 (x2, y2 exclusive)."""
    height, width = size
    ys = torch.arange(height, device=device).view(-1, 1) + 0.5
    xs = torch.arange(width, device=device).view(1, -1) + 0.5
    mask = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=device)
    for i, image_boxes in enumerate(boxes):
        for x1, y1, x2, y2 in image_boxes:
            mask[i] |= (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return mask


def pointing_game(saliency: Tensor, mask: Tensor) -> Tensor:
    """1 where the map's maximum (the first, in row-major order, on ties) falls inside a box, else 0."""
    peak = saliency.flatten(1).argmax(1)
    return mask.flatten(1).gather(1, peak.unsqueeze(1)).squeeze(1).float()


def energy_in_box(saliency: Tensor, mask: Tensor) -> Tensor:
    """Share of the map's total mass inside the boxes (0 for an all-zero map)."""
    total = saliency.flatten(1).sum(1)
    inside = (saliency * mask).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
