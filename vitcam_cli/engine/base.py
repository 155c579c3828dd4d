"""What every engine shares: masked copies of a batch flattened into one stream and cut into chunks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vitcam_cli.defaults import SKIPS, SUBTRACTS
from vitcam_cli.engine.geometry import TokenLayout, Trace
from vitcam_cli.engine.masks import empty_window
from vitcam_cli.engine.scoring import auto_mask_batch
from vitcam_cli.errors import VitcamError
from vitcam_cli.targets import Target


@dataclass(frozen=True)
class CopySettings:
    """How masked copies are made: the engine's side of a method's settings (the score is the target's)."""

    kernel: str
    skip: str
    subtract: str = "none"  # "empty": minus the score of the copy with every patch token masked, rectified


class MaskedEngine(ABC):
    """Runs the h*w masked copies of each image through the rest of the network and scores them.

    Copies of several images share chunks of ``mask_batch`` sequences (automatic when None), so peak
    memory depends on the chunk, never on the batch or folder size. Subclasses say how one chunk of
    (image, mask) pairs becomes logits, and how long their sequences are.
    """

    name = "engine"

    def __init__(
        self,
        model: nn.Module,
        layout: TokenLayout,
        block_index: int,
        copies: CopySettings,
        mask_batch: int | None = None,
    ) -> None:
        if copies.skip not in SKIPS or copies.subtract not in SUBTRACTS:
            raise ValueError(f"unknown skip or subtract in {copies}")
        self.model = model
        self.layout = layout
        self.block_index = block_index
        self.copies = copies
        self.kernel, self.skip = copies.kernel, copies.skip
        self.mask_batch = mask_batch
        self.device = next(model.parameters()).device
        self.reductions: list[dict[str, int]] = []  # chunk sizes given up after out-of-memory errors

    @property
    @abstractmethod
    def sequence_length(self) -> int:
        """Tokens per masked copy: sizes the automatic chunks."""

    @abstractmethod
    def prepare(self, traced: Trace) -> Any:
        """Per-batch work shared by all copies of its images (e.g. the target block's LayerNorm)."""

    @abstractmethod
    def chunk_logits(self, traced: Trace, state: Any, image: Tensor, position: Tensor) -> Tensor:
        """Outputs (n, ...) of the copies of images ``image`` (n,) masked at grid ``position`` (n,): class
        logits, or embeddings."""

    def _smaller_chunk(self, step: int) -> int:
        """After an out-of-memory error: halve the chunk for this and every later batch, once per size."""
        if step <= 1:
            raise VitcamError(
                "out of memory with a single masked sequence per chunk: use a smaller {batch_size}, "
                "{precision} bf16, or a device with more memory"
            )
        smaller = step // 2
        self.reductions.append({"from": step, "to": smaller})
        self.mask_batch = smaller
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return smaller

    def chunk_size(self, dtype: torch.dtype) -> int:
        if self.mask_batch:
            return self.mask_batch
        itemsize = torch.finfo(dtype).bits // 8
        return auto_mask_batch(
            self.sequence_length, self.layout.dim, self.layout.heads, self.device, itemsize
        )

    def __call__(self, traced: Trace, target: Target) -> Tensor:
        """Saliency ``(B, T, rows, cols)`` for the batch's ``target`` (T per image), in float32."""
        x = traced.block_input
        batch, num_masks = x.shape[0], self.layout.num_patches
        state = self.prepare(traced)
        total = batch * num_masks
        scores = torch.empty(total, target.count, dtype=torch.float32, device=x.device)
        step, begin = self.chunk_size(x.dtype), 0
        while begin < total:
            flat = torch.arange(begin, min(total, begin + step), device=x.device)
            image, position = flat // num_masks, flat % num_masks
            try:
                logits = self.chunk_logits(traced, state, image, position)
            except torch.OutOfMemoryError:
                step = self._smaller_chunk(step)
                continue
            scores[begin : begin + flat.numel()] = target(logits, image)
            begin += flat.numel()
        rows, cols = self.layout.grid
        maps = scores.view(batch, num_masks, -1).permute(0, 2, 1).reshape(batch, -1, rows, cols)
        if self.copies.subtract == "empty":
            maps = (maps - self._empty_scores(traced, state, target)[..., None, None]).clamp_min(0.0)
        return maps

    def _empty_scores(self, traced: Trace, state: Any, target: Target) -> Tensor:
        """(B, T) scores of the copy of each image with every patch token masked out."""
        image = torch.arange(target.indices.shape[0], device=target.indices.device)
        position = torch.full_like(image, empty_window(self.layout.grid))
        return target(self.chunk_logits(traced, state, image, position), image)
