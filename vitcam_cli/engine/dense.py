"""The reference path: every masked copy runs at full length through the rest of the network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitcam_cli.engine.geometry import TokenLayout, Trace, run_blocks
from vitcam_cli.engine.scoring import auto_mask_batch, class_scores

SKIPS = ("ln", "masked-input", "input")


def mask_patch_tokens(tokens: Tensor, weights: Tensor, num_prefix: int) -> Tensor:
    """Scale patch token j of row i by ``weights[i, j]``; prefix tokens pass unchanged."""
    patches = tokens[:, num_prefix:] * weights.to(tokens.dtype).unsqueeze(-1)
    return torch.cat([tokens[:, :num_prefix], patches], dim=1)


class DenseEngine:
    """Runs all h*w masked copies of each image through the target block and every later block.

    Copies of several images are flattened into one stream and cut into chunks of ``mask_batch``
    sequences, so peak memory depends on the chunk, never on the batch or folder size.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: TokenLayout,
        block_index: int,
        weights: Tensor,
        skip: str,
        score: str,
        mask_batch: int | None = None,
    ) -> None:
        if skip not in SKIPS:
            raise ValueError(f"unknown skip {skip!r}; expected one of {SKIPS}")
        self.model = model
        self.layout = layout
        self.block_index = block_index
        self.weights = weights
        self.skip = skip
        self.score = score
        self.mask_batch = mask_batch

    def chunk_size(self, dtype: torch.dtype) -> int:
        if self.mask_batch:
            return self.mask_batch
        itemsize = torch.finfo(dtype).bits // 8
        device = self.weights.device
        return auto_mask_batch(self.layout.num_tokens, self.layout.dim, self.layout.heads, device, itemsize)

    def __call__(self, traced: Trace, classes: Tensor) -> Tensor:
        """Saliency ``(B, T, rows, cols)`` for ``classes`` (B, T), in float32."""
        x = traced.block_input
        batch, num_masks = x.shape[0], self.layout.num_patches
        prefix = self.layout.num_prefix
        features = self.model.blocks[self.block_index].norm1(x)
        total = batch * num_masks
        scores = torch.empty(total, classes.shape[1], dtype=torch.float32, device=x.device)
        step = self.chunk_size(features.dtype)
        for begin in range(0, total, step):
            flat = torch.arange(begin, min(total, begin + step), device=x.device)
            image, position = flat // num_masks, flat % num_masks
            window = self.weights[position]
            masked = mask_patch_tokens(features[image], window, prefix)
            if self.skip == "ln":
                residual = masked
            elif self.skip == "masked-input":
                residual = mask_patch_tokens(x[image], window, prefix)
            else:
                residual = x[image]
            logits = run_blocks(self.model, residual, self.block_index, traced.block_extras, masked)
            scores[begin : begin + flat.numel()] = class_scores(logits, classes[image], self.score)
        rows, cols = self.layout.grid
        return scores.view(batch, num_masks, -1).permute(0, 2, 1).reshape(batch, -1, rows, cols)
