"""What a batch run hands its sinks: each image after every method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import Tensor

from vitcam_cli.data import ImageItem
from vitcam_cli.preprocessing import Size, View


@dataclass
class MethodOutput:
    """One method's results for one image: a map, a target and scores per explained target (none when a
    threshold kept none)."""

    maps: Tensor  # (T, rows, cols) float32, on the CPU
    classes: list[int]  # class indices, or rows of the reading's table (similarity targets)
    readings: list[float]  # each target as the reading reads it: class probability, or cosine
    ranks: list[int]  # 1 = the image's highest target
    predicted: int  # the image's highest target
    values: dict[str, list[float]]  # metric -> one value per explained target


@dataclass
class ImageResult:
    """One image after every method: what sinks receive."""

    item: ImageItem
    size: Size  # the original's (width, height), after EXIF orientation
    copy: np.ndarray  # (h, w, 3) uint8: the image at the size overlays are drawn at
    view: View | None  # the model's view of the image, in the copy's pixels
    methods: dict[str, MethodOutput]


class Sink(Protocol):
    def failed(self, item: ImageItem, message: str) -> None: ...

    def explained(self, image: ImageResult) -> None: ...
