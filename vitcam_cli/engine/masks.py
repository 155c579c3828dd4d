"""Spatial masks over the patch grid: one row of token weights per grid position.

Built once per (grid, kernel) and cached; the engine indexes rows, it never loops over masks.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

KERNELS = ("gaussian", "single")


@lru_cache(maxsize=32)
def _window_weights_cpu(grid: tuple[int, int], kernel: str) -> Tensor:
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
    """``(K, K)`` float32 table, K = rows*cols: row k holds the weight of every patch token for mask k."""
    return _window_weights_cpu(tuple(grid), kernel).to(device)
