"""The model's eval transform, read as geometry: which part of the original the model sees, and how to
feed it an image that the JPEG decoder already reduced without changing that geometry.

timm's eval transforms resize (``Resize`` / ``ResizeKeepRatio``), then crop (``CenterCrop`` /
``CenterCropOrPad``), then convert and normalise. A reduced decode (Pillow's ``draft()``) keeps the
aspect ratio only up to rounding, so the first resize is computed from the original's size and applied
to the reduced image directly: the crop then takes exactly the pixels it would have taken from the
full-size original.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_modes_mapping

View = tuple[float, float, float, float]  # x0, y0, x1, y1 of the original that the model sees
Size = tuple[int, int]  # width, height

_TORCH_FILTERS = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
_GEOMETRY_FREE = {
    "ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize", "ToNumpy",
    "ConvertImageDtype", "ToDtype",
}  # fmt: skip


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def resized_size(step: object, width: float, height: float) -> Size | None:
    """The (width, height) a resize step of an eval transform gives an image of this size, or None
    when ``step`` is not a resize vitcam knows."""
    if isinstance(step, T.Resize):
        if isinstance(step.size, int) or len(step.size) == 1:
            short = step.size if isinstance(step.size, int) else step.size[0]
            if width <= height:
                return short, int(short * height / width)
            return int(short * width / height), short
        return step.size[1], step.size[0]
    if isinstance(step, ResizeKeepRatio):
        target_h, target_w = step.size
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
        return round(width / ratio), round(height / ratio)
    return None


def _steps(transform: object) -> list[Any]:
    return list(getattr(transform, "transforms", [transform]))


def model_view(transform: object, width: int, height: int) -> View | None:
    """The rectangle (x0, y0, x1, y1) of the original image that the preprocessed tensor shows.

    Follows timm's eval transforms (Resize / ResizeKeepRatio, then CenterCrop / CenterCropOrPad);
    returns None when a step's geometry is unknown, and the caller then stretches over the image.
    """
    w, h = float(width), float(height)
    scale_x = scale_y = 1.0
    off_x = off_y = 0.0
    for step in _steps(transform):
        resized = resized_size(step, w, h)
        if resized is not None:
            new_w, new_h = resized
            scale_x, scale_y = scale_x * w / new_w, scale_y * h / new_h
            w, h = float(new_w), float(new_h)
        elif isinstance(step, T.CenterCrop | CenterCropOrPad):
            crop_h, crop_w = _pair(step.size)
            left = round((w - crop_w) / 2.0) if crop_w <= w else -int((crop_w - w) // 2)
            top = round((h - crop_h) / 2.0) if crop_h <= h else -int((crop_h - h) // 2)
            off_x, off_y = off_x + left * scale_x, off_y + top * scale_y
            w, h = float(crop_w), float(crop_h)
        elif type(step).__name__ not in _GEOMETRY_FREE:
            return None
    return off_x, off_y, off_x + w * scale_x, off_y + h * scale_y


def _resize_tensor(pixels: np.ndarray, size: Size, interpolation: InterpolationMode) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 at ``size`` (width, height), antialiased (bilinear, bicubic)."""
    writable = pixels if pixels.flags.writeable and pixels.flags.c_contiguous else pixels.copy()
    batch = torch.from_numpy(writable).permute(2, 0, 1).unsqueeze(0)  # channels-last memory
    return F.interpolate(batch, size=(size[1], size[0]), mode=interpolation.value, antialias=True)[0]


def resize_pixels(pixels: np.ndarray, size: Size, interpolation: InterpolationMode) -> np.ndarray:
    """(H, W, 3) uint8 ``pixels`` resized to ``size`` (width, height), antialiased like Pillow's resize.

    Bilinear and bicubic run on torch's vectorised uint8 kernels, several times faster than Pillow's;
    other filters fall back to Pillow.
    """
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    if interpolation not in _TORCH_FILTERS:
        return np.asarray(Image.fromarray(pixels).resize(size, pil_modes_mapping[interpolation]))
    return _resize_tensor(pixels, size, interpolation).permute(1, 2, 0).contiguous().numpy()


class Preprocessing:
    """A model's eval transform split where it pays: geometry on uint8 pixels where images are decoded,
    conversion to float and normalisation on the whole batch, on the model's device.

    vitcam does the first resize itself, with its output size computed from the original's size, so the
    transform also takes a reduced decode of the original (``draft()``) and still crops exactly what it
    would have cropped from the original. Bilinear and bicubic run on torch's uint8 kernels (within 2
    levels of Pillow's on a few pixels in a thousand, and faster). Batches travel as uint8 (a quarter of
    float32's bytes). A transform whose steps vitcam does not know is applied as it is, to the whole
    image, and its batches travel as float.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform
        steps = _steps(transform)
        known = bool(steps) and resized_size(steps[0], 100, 100) is not None
        self.first_resize = steps[0] if known and model_view(transform, 100, 100) is not None else None
        crops = 1
        while crops < len(steps) and isinstance(steps[crops], T.CenterCrop):  # pads as PIL's: zeros
            crops += 1
        tail = steps[crops:]
        fast = (
            self.first_resize is not None
            and self.first_resize.interpolation in _TORCH_FILTERS
            and [type(step).__name__ for step in tail]
            in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"])
        )
        self.crops = T.Compose(steps[1:crops]) if fast else None
        self.rest = T.Compose(steps[1:])
        self.mean = torch.as_tensor(tail[-1].mean).view(-1, 1, 1) if fast else None
        self.std = torch.as_tensor(tail[-1].std).view(-1, 1, 1) if fast else None

    def needs(self, size: Size) -> Size | None:
        """The smallest size a reduced decode of an original of ``size`` may have (None: the whole)."""
        if self.first_resize is None:
            return None
        return resized_size(self.first_resize, *size)

    def view(self, size: Size) -> View | None:
        return model_view(self.transform, *size)

    def __call__(self, pixels: np.ndarray, original_size: Size) -> torch.Tensor:
        """One image's share of the model input, from ``pixels`` (the original, or a reduced decode of
        it): (3, H, W) uint8, or float when the transform is not one vitcam splits."""
        target = self.needs(original_size)
        if self.first_resize is None or target is None:
            return self.transform(Image.fromarray(pixels))
        if self.crops is not None:
            return self.crops(_resize_tensor(pixels, target, self.first_resize.interpolation)).contiguous()
        return self.rest(Image.fromarray(resize_pixels(pixels, target, self.first_resize.interpolation)))

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of ``__call__`` results as the model's float input: to [0, 1], then normalised, as
        timm's ToTensor and Normalize do (on the batch's device)."""
        if images.dtype != torch.uint8 or self.mean is None or self.std is None:
            return images
        scaled = images.float().div(255)
        return scaled.sub_(self.mean.to(images.device)).div_(self.std.to(images.device))
