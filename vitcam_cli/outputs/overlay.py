"""Heatmap overlays at the original image size, aligned with what the model actually saw."""

from __future__ import annotations

from functools import lru_cache

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio
from torchvision import transforms as T

from vitcam_cli.errors import VitcamError

DEFAULT_COLORMAP = "inferno"
OUTSIDE_VIEW_BRIGHTNESS = 0.5
_GEOMETRY_FREE = {
    "ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize", "ToNumpy",
    "ConvertImageDtype", "ToDtype",
}  # fmt: skip

View = tuple[float, float, float, float]  # x0, y0, x1, y1 of the original that the model sees


@lru_cache(maxsize=8)
def colormap_table(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table for any matplotlib colormap name."""
    if name not in matplotlib.colormaps:
        raise VitcamError(f"--colormap {name}: not a matplotlib colormap (try inferno, viridis, turbo, jet)")
    table = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (table * 255.0 + 0.5).astype(np.uint8)


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def model_view(transform: object, width: int, height: int) -> View | None:
    """The rectangle (x0, y0, x1, y1) of the original image that the preprocessed tensor shows.

    Follows timm's eval transforms (Resize / ResizeKeepRatio, then CenterCrop / CenterCropOrPad);
    returns None when a step's geometry is unknown, and the caller then stretches over the image.
    """
    w, h = float(width), float(height)
    scale_x = scale_y = 1.0
    off_x = off_y = 0.0
    for step in getattr(transform, "transforms", [transform]):
        name = type(step).__name__
        if isinstance(step, T.Resize):
            if isinstance(step.size, int) or len(step.size) == 1:
                short = step.size if isinstance(step.size, int) else step.size[0]
                new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            else:
                new_h, new_w = step.size
        elif isinstance(step, ResizeKeepRatio):
            target_h, target_w = step.size
            ratio_h, ratio_w = h / target_h, w / target_w
            ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
            new_h, new_w = round(h / ratio), round(w / ratio)
        elif isinstance(step, T.CenterCrop | CenterCropOrPad):
            crop_h, crop_w = _pair(step.size)
            left = round((w - crop_w) / 2.0) if crop_w <= w else -int((crop_w - w) // 2)
            top = round((h - crop_h) / 2.0) if crop_h <= h else -int((crop_h - h) // 2)
            off_x, off_y = off_x + left * scale_x, off_y + top * scale_y
            w, h = float(crop_w), float(crop_h)
            continue
        elif name in _GEOMETRY_FREE:
            continue
        else:
            return None
        scale_x, scale_y = scale_x * w / new_w, scale_y * h / new_h
        w, h = float(new_w), float(new_h)
    return off_x, off_y, off_x + w * scale_x, off_y + h * scale_y


def min_max(saliency: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant map becomes all zeros."""
    low, high = saliency.min(), saliency.max()
    if high <= low:
        return torch.zeros_like(saliency)
    return (saliency - low) / (high - low)


def render_overlay(
    original: np.ndarray, saliency: torch.Tensor, view: View | None, colormap: str, alpha: float
) -> np.ndarray:
    """Blend the min-max scaled map, bilinearly upsampled onto ``view``, over ``original`` (H, W, 3).

    Pixels outside the model's view (cropped away by preprocessing) are dimmed, not coloured.
    """
    height, width = original.shape[:2]
    x0, y0, x1, y1 = view or (0.0, 0.0, float(width), float(height))
    view_w, view_h = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    scaled = min_max(saliency.detach().float().cpu())
    heat = F.interpolate(scaled[None, None], size=(view_h, view_w), mode="bilinear", align_corners=False)[
        0, 0
    ]
    left, top = round(x0), round(y0)
    src_x0, src_y0 = max(0, -left), max(0, -top)
    dst_x0, dst_y0 = max(0, left), max(0, top)
    dst_x1, dst_y1 = min(width, left + view_w), min(height, top + view_h)
    result = original.astype(np.float32) * OUTSIDE_VIEW_BRIGHTNESS
    if dst_x1 > dst_x0 and dst_y1 > dst_y0:
        patch = heat[src_y0 : src_y0 + dst_y1 - dst_y0, src_x0 : src_x0 + dst_x1 - dst_x0].numpy()
        colours = colormap_table(colormap)[np.clip(patch * 255.0 + 0.5, 0, 255).astype(np.uint8)]
        seen = original[dst_y0:dst_y1, dst_x0:dst_x1].astype(np.float32)
        result[dst_y0:dst_y1, dst_x0:dst_x1] = seen * (1.0 - alpha) + colours.astype(np.float32) * alpha
    return np.clip(result + 0.5, 0, 255).astype(np.uint8)
