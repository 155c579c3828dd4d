"""Spatial masks over the patch grid: one row of token weights per grid position.

Built once per (grid, kernel) and cached; the engine indexes rows, it never loops over masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from vitcam_cli.defaults import KERNELS


def empty_window(grid: tuple[int, int]) -> int:
    """The row of the window tables that masks out every patch token (one past the last grid position)."""
    return grid[0] * grid[1]


@lru_cache(maxsize=32)
def _window_weights_cpu(grid: tuple[int, int], kernel: str) -> Tensor:
    return torch.cat([_grid_windows(grid, kernel), torch.zeros(1, grid[0] * grid[1])])


def _grid_windows(grid: tuple[int, int], kernel: str) -> Tensor:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    rows, cols = grid
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    if kernel == "single":
        return ((dy == 0) & (dx == 0)).float()
    # 3x3 Gaussian: 1/4 centre, 1/8 edge, 1/16 corner; truncated at the border, never renormalised.
    inside = (dy <= 1) & (dx <= 1)
    return torch.where(inside, 0.25 / 2.0 ** (dy + dx).float(), torch.zeros(()))


def window_weights(grid: tuple[int, int], kernel: str, device: torch.device | str = "cpu") -> Tensor:
    """``(K + 1, K)`` float32 table, K = rows*cols: row k < K holds every patch token's weight for the mask
    centred on grid position k; row K (``EMPTY``) is the empty window, every patch token masked out."""
    return _window_weights_cpu(tuple(grid), kernel).to(device)


@dataclass(frozen=True)
class WindowSlots:
    """Each mask as a short list of slots: the patch tokens its window keeps, padded to a fixed width.

    ``index`` (K, S) patch indices, ``weight`` (K, S) their kernel weights (0 on padding slots),
    ``valid`` (K, S) which slots are real, ``zeros`` (K,) how many patch tokens the mask sets to 0.
    """

    index: Tensor
    weight: Tensor
    valid: Tensor
    zeros: Tensor

    def to(self, device: torch.device | str) -> WindowSlots:
        return WindowSlots(*(t.to(device) for t in (self.index, self.weight, self.valid, self.zeros)))


@lru_cache(maxsize=32)
def _window_slots_cpu(grid: tuple[int, int], kernel: str) -> WindowSlots:
    weights = _window_weights_cpu(grid, kernel)
    width = int((weights > 0).sum(1).max())
    weight, index = weights.topk(width, dim=1, sorted=False)
    order = index.argsort(dim=1)  # slots in token order, so results do not depend on topk's order
    index, weight = index.gather(1, order), weight.gather(1, order)
    valid = weight > 0
    index = torch.where(valid, index, torch.zeros_like(index))
    zeros = weights.shape[1] - valid.sum(1)
    return WindowSlots(index=index, weight=weight, valid=valid, zeros=zeros)


def window_slots(grid: tuple[int, int], kernel: str, device: torch.device | str = "cpu") -> WindowSlots:
    """The compressed form of ``window_weights``: at most 9 slots per mask (1 for ``single``)."""
    return _window_slots_cpu(tuple(grid), kernel).to(device)
