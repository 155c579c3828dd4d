"""Heatmap overlays, aligned with what the model actually saw, and their image files."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

from vitcam_cli.defaults import DEFAULT_ALPHA, DEFAULT_COLORMAP, DEFAULT_OVERLAY_SIDE, OVERLAY_FORMATS
from vitcam_cli.errors import ParameterError
from vitcam_cli.preprocessing import Size, View

OUTSIDE_VIEW_BRIGHTNESS = 0.5
# overlay file formats: the file extension -> Pillow's format and options
FORMATS = {
    "jpg": ("JPEG", {"quality": 90}),
    "png": ("PNG", {"compress_level": 3}),
    "webp": ("WEBP", {"quality": 90}),
}
JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class OverlaySettings:
    """How overlays look and what files they become."""

    colormap: str = DEFAULT_COLORMAP
    alpha: float = DEFAULT_ALPHA
    format: str = "auto"  # auto (JPEG for JPEG inputs, else PNG), jpg, png or webp
    size: int | None = DEFAULT_OVERLAY_SIDE  # the longest side; None: the original's

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ParameterError("alpha", "must be between 0 and 1", self.alpha)
        colormap_table(self.colormap)
        check_overlay_options(self.format, self.size)


def check_overlay_options(overlay_format: str, overlay_size: int | None) -> None:
    if overlay_format not in OVERLAY_FORMATS:
        raise ParameterError("overlay_format", f"use one of {', '.join(OVERLAY_FORMATS)}", overlay_format)
    if overlay_size is not None and overlay_size < 1:
        raise ParameterError(
            "overlay_size", "must be 'original' (None) or a longest side of at least 1 pixel"
        )


def overlay_extension(choice: str, source: Path) -> str:
    """The overlay's file extension: ``auto`` keeps JPEG inputs JPEG and draws every other one as PNG
    (lossy in, lossy out; lossless in, lossless out)."""
    if choice != "auto":
        return choice
    return "jpg" if source.suffix.lower() in JPEG_SUFFIXES else "png"


def encode_overlay(image: np.ndarray, extension: str) -> bytes:
    kind, options = FORMATS[extension]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind, **options)
    return buffer.getvalue()


def view_in(copy_size: Size, original_size: Size, view: View | None) -> View | None:
    """``view`` (original pixels) in the pixels of a copy of the original resized to ``copy_size``."""
    if view is None:
        return None
    scale_x, scale_y = copy_size[0] / original_size[0], copy_size[1] / original_size[1]
    x0, y0, x1, y1 = view
    return x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y


@lru_cache(maxsize=8)
def colormap_table(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table for any matplotlib colormap name."""
    if name not in matplotlib.colormaps:
        raise ParameterError("colormap", "not a matplotlib colormap (try inferno, viridis, turbo, jet)", name)
    table = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (table * 255.0 + 0.5).astype(np.uint8)


def min_max(saliency: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant map becomes all zeros."""
    low, high = saliency.min(), saliency.max()
    if high <= low:
        return torch.zeros_like(saliency)
    return (saliency - low) / (high - low)


def _blend(first: np.ndarray, second: np.ndarray | int, fraction: float) -> np.ndarray:
    """Round(first * (1 - fraction) + second * fraction) on uint8 arrays, in fixed point (x 256)."""
    add = round(fraction * 256)
    mixed = first.astype(np.uint16) * np.uint16(256 - add)
    mixed += np.asarray(second).astype(np.uint16) * np.uint16(add) + np.uint16(128)
    mixed >>= 8
    return mixed.astype(np.uint8)


def _bilinear_taps(size_out: int, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear upsampling along one axis, pixel centres aligned
    (``align_corners=False``, as torch's ``interpolate``): (low, high, weight of high)."""
    source = np.maximum((np.arange(size_out, dtype=np.float32) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    low = np.minimum(source.astype(np.intp), size_in - 1)
    return low, np.minimum(low + 1, size_in - 1), (source - low).astype(np.float32)


def heat_indices(saliency: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The min-max scaled map, bilinearly upsampled to ``size`` (height, width), as colormap indices
    0..255 (uint8). Plain numpy on one thread: overlays render beside the engine without taking its
    threads."""
    grid = min_max(saliency.detach().float().cpu()).numpy()
    rows_low, rows_high, rows_weight = _bilinear_taps(size[0], grid.shape[0])
    cols_low, cols_high, cols_weight = _bilinear_taps(size[1], grid.shape[1])
    across = grid[:, cols_low] * (1.0 - cols_weight) + grid[:, cols_high] * cols_weight  # (grid rows, width)
    heat = across[rows_low]
    heat *= (1.0 - rows_weight)[:, None]
    lower = across[rows_high]
    lower *= rows_weight[:, None]
    heat += lower
    heat *= 255.0
    heat += 0.5
    return heat.astype(np.uint8)  # heat is in [0.5, 255.5): truncation rounds


def render_overlay(
    original: np.ndarray, saliency: torch.Tensor, view: View | None, colormap: str, alpha: float
) -> np.ndarray:
    """Blend the min-max scaled map, bilinearly upsampled onto ``view``, over ``original`` (H, W, 3).

    Pixels outside the model's view (cropped away by preprocessing) are dimmed, not coloured. Integer
    arithmetic and a table lookup keep this cheap on large images (and mostly outside the GIL).
    """
    height, width = original.shape[:2]
    x0, y0, x1, y1 = view or (0.0, 0.0, float(width), float(height))
    view_w, view_h = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    left, top = round(x0), round(y0)
    src_x0, src_y0 = max(0, -left), max(0, -top)
    dst_x0, dst_y0 = max(0, left), max(0, top)
    dst_x1, dst_y1 = min(width, left + view_w), min(height, top + view_h)
    covered = (dst_x0, dst_y0, dst_x1, dst_y1) == (0, 0, width, height)
    result = np.empty_like(original) if covered else _blend(original, 0, 1.0 - OUTSIDE_VIEW_BRIGHTNESS)
    if dst_x1 > dst_x0 and dst_y1 > dst_y0:
        index = heat_indices(saliency, (view_h, view_w))
        patch = index[src_y0 : src_y0 + dst_y1 - dst_y0, src_x0 : src_x0 + dst_x1 - dst_x0]
        colours = np.take(colormap_table(colormap), patch, axis=0)
        seen = original[dst_y0:dst_y1, dst_x0:dst_x1]
        result[dst_y0:dst_y1, dst_x0:dst_x1] = _blend(seen, colours, alpha)
    return result
