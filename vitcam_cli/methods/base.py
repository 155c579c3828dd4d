"""The one interface every saliency method shares: images and a class chooser in, raw grid maps out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

ClassChooser = Callable[[Tensor], Tensor]  # (B, C) float32 logits -> (B, T) class indices


@dataclass
class Explanation:
    logits: Tensor  # (B, C) float32 predictions of the unmasked images
    classes: Tensor  # (B, T) explained class indices
    maps: Tensor  # (B, T, rows, cols) float32 raw saliency on the token grid, before any scaling


class SaliencyMethod(Protocol):
    name: str

    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        """Predict ``images``, pick the classes with ``choose_classes``, and explain each of them."""
        ...
