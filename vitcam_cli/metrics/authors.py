"""The ViT-ReciproCAM authors' metric protocol (``--protocol authors``), to reproduce the paper's numbers.

It differs from vitcam's default (Poppi et al.'s ADCC and Petsiuk et al.'s insertion/deletion, see
``adcc.py`` and ``insertion_deletion.py``) in these steps, as the authors' published metric code does
them (``src/vit_recipro_cam_metric.py`` of github.com/sybyun/vitcam):

- ADCC: the map is min-max scaled on the token grid; complexity is its mean there; the mask is the grid
  map resized to the input with PIL's bicubic filter, not clipped to [0, 1] (bicubic overshoots);
  coherency correlates the token-grid maps of x and x' (not the upsampled ones).
- Insertion/deletion (IAUC/DAUC): the input is cut into cells of 32 x 32 pixels (7 x 7 at 224 px), each
  cell running one pixel into the next; cells go in the order of the map's values, highest first,
  with the map's flat token index read as a cell index in row-major order (so a map finer than the
  cell grid, such as 14 x 14 against 7 x 7, reaches only the cells its first tokens name, and indices
  past the last cell change nothing, as in the authors' code). Deletion sets the cells to zero in the
  normalised input (the dataset's mean colour); insertion reveals them on a canvas of the image's own
  mean colour. The curve has h*w + 1 points: the original's probability and one per cell (for
  insertion the original comes last); the score is its trapezoid area divided by the number of points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vitcam_cli.metrics.adcc import adcc, average_drop, increase_in_confidence, pearson

CELL = 32  # pixels per cell side of the authors' insertion/deletion


def grid_scaled(maps: Tensor) -> Tensor:
    """Each (rows, cols) map min-max scaled to [0, 1] on the token grid; a constant map becomes zeros."""
    flat = maps.float().flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scaled = torch.where(high > low, (flat - low) / (high - low).clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.view_as(maps)


def bicubic_masks(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, rows, cols) scaled maps -> (N, H, W) masks by PIL's bicubic resize of the float map, unclipped."""
    height, width = size
    resized = [
        np.asarray(Image.fromarray(item.cpu().numpy().astype(np.float32), mode="F").resize(
            (width, height), Image.Resampling.BICUBIC
        ))
        for item in grid
    ]  # fmt: skip
    return torch.from_numpy(np.stack(resized)).to(grid.device)


def adcc_parts(
    probability: Tensor, masked_probability: Tensor, grid: Tensor, masked_grid: Tensor
) -> dict[str, Tensor]:
    """Every part per (image, class): probabilities (N,) and scaled token-grid maps (N, rows, cols)."""
    drop = average_drop(probability, masked_probability)
    coherence = (pearson(grid, grid_scaled(masked_grid)) + 1.0) / 2.0
    complexity = grid.flatten(1).mean(1)
    return {
        "adcc": adcc(drop, coherence, complexity),
        "average_drop": drop,
        "increase": increase_in_confidence(probability, masked_probability),
        "coherency": coherence,
        "complexity": complexity,
    }


def cell_boxes(grid: Tensor, size: tuple[int, int]) -> list[list[tuple[int, int, int, int]]]:
    """Per map, the (y0, y1, x0, x1) pixel ranges (end exclusive) of the cells in deletion order."""
    height, width = size
    rows, cols = int(height / CELL), int(width / CELL)
    step_y, step_x = int(height / rows), int(width / cols)
    order = grid.flatten(1).argsort(dim=1, descending=True, stable=True)[:, : rows * cols]
    boxes = []
    for indices in order.tolist():
        cells = []
        for index in indices:
            row, col = divmod(index, cols)
            y0, x0 = row * step_y, col * step_x
            cells.append(
                (y0, min((row + 1) * step_y, height - 1) + 1, x0, min((col + 1) * step_x, width - 1) + 1)
            )
        boxes.append(cells)
    return boxes


def curves(
    probability_of: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    grid: Tensor,
    classes: Tensor,
    probability: Tensor,
    forward_batch: int,
) -> tuple[Tensor, Tensor]:
    """Insertion and deletion curves (N, cells + 1) of images (N, C, H, W) for their classes (N,)."""
    size = (images.shape[-2], images.shape[-1])
    insertion, deletion = [], []
    for image, cells, label, original in zip(
        images, cell_boxes(grid, size), classes, probability, strict=True
    ):
        deleted, inserted = image.clone(), image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        steps_deleted, steps_inserted = [], []
        for y0, y1, x0, x1 in cells:
            deleted[:, y0:y1, x0:x1] = 0.0
            inserted[:, y0:y1, x0:x1] = image[:, y0:y1, x0:x1]
            steps_deleted.append(deleted.clone())
            steps_inserted.append(inserted.clone())
        batch = torch.stack(steps_deleted + steps_inserted)
        labels = label.expand(batch.shape[0])
        probabilities = torch.cat(
            [probability_of(batch[i : i + forward_batch], labels[i : i + forward_batch])
             for i in range(0, batch.shape[0], forward_batch)]
        )  # fmt: skip
        count = len(cells)
        deletion.append(torch.cat([original.view(1), probabilities[:count]]))
        insertion.append(torch.cat([probabilities[count:], original.view(1)]))
    return torch.stack(insertion), torch.stack(deletion)


def area(curve: Tensor) -> Tensor:
    """Trapezoid area with unit spacing, divided by the number of points (N,)."""
    return torch.trapezoid(curve.double(), dim=1).float() / curve.shape[1]
