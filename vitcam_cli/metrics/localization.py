"""Localisation against ground-truth boxes: the pointing game and the energy inside the boxes.

Both take the scaled map upsampled to the input (B, H, W) and a (B, H, W) mask of the pixels inside
any of the image's boxes (boxes mapped into input pixels the way preprocessing moved them).
"""

from __future__ import annotations

import torch
from torch import Tensor

Box = tuple[float, float, float, float]


def boxes_mask(boxes: list[list[Box]], size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """(B, H, W) bool: pixel centres inside any box; boxes are x1, y1, x2, y2 (x2, y2 exclusive).

    A box too small to hold a pixel centre marks the pixel under its centre: every box is somewhere,
    so an image's mask is empty exactly when it has no boxes.
    """
    height, width = size
    ys = torch.arange(height, device=device).view(-1, 1) + 0.5
    xs = torch.arange(width, device=device).view(1, -1) + 0.5
    mask = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=device)
    for i, image_boxes in enumerate(boxes):
        for x1, y1, x2, y2 in image_boxes:
            inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
            if not inside.any():
                row = min(max(int((y1 + y2) / 2), 0), height - 1)
                col = min(max(int((x1 + x2) / 2), 0), width - 1)
                inside[row, col] = True
            mask[i] |= inside
    return mask


def _without_boxes(values: Tensor, mask: Tensor) -> Tensor:
    """NaN (not applicable) for the images without boxes: they stay out of the dataset means."""
    return torch.where(mask.flatten(1).any(1), values, torch.full_like(values, float("nan")))


def pointing_game(saliency: Tensor, mask: Tensor) -> Tensor:
    """1 where the map's maximum (the first, in row-major order, on ties) falls inside a box, else 0;
    NaN for an image without boxes."""
    peak = saliency.flatten(1).argmax(1)
    return _without_boxes(mask.flatten(1).gather(1, peak.unsqueeze(1)).squeeze(1).float(), mask)


def energy_in_box(saliency: Tensor, mask: Tensor) -> Tensor:
    """Share of the map's total mass inside the boxes (0 for an all-zero map; NaN without boxes)."""
    total = saliency.flatten(1).sum(1)
    inside = (saliency * mask).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
    return _without_boxes(share, mask)
