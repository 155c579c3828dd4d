"""The one interface every saliency method shares: images and a target chooser in, raw grid maps out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from vitcam_cli.targets import Reading

# (B, K) float32 values (class probabilities, or cosines with the targets) -> (B, T) target indices
ClassChooser = Callable[[Tensor], Tensor]


@dataclass
class Explanation:
    outputs: Tensor  # (B, ...) float32 outputs of the unmasked images: class logits, or embeddings
    classes: Tensor  # (B, T) explained targets: class indices, or rows of the reading's table
    maps: Tensor  # (B, T, rows, cols) float32 raw saliency on the token grid, before any scaling


class SaliencyMethod(Protocol):
    name: str
    reading: Reading  # how the model's outputs are read: what a target's score is

    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        """Predict ``images``, pick the targets with ``choose_classes``, and explain each of them."""
        ...
