"""The reference path: every masked copy runs at full length through the rest of the network.

It works on any supported ViT (EVA's rotary embedding, BEiT's relative position bias, custom
blocks) and on Swin (shifted window attention, patch merging between stages), because it only calls
the model's own blocks, with the target block's LayerNorm output replaced by its masked version.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitcam_cli.engine.base import MaskedEngine
from vitcam_cli.engine.geometry import Trace
from vitcam_cli.engine.masks import window_weights


def mask_patch_tokens(tokens: Tensor, weights: Tensor, num_prefix: int) -> Tensor:
    """Scale patch token j of row i by ``weights[i, j]``; prefix tokens pass unchanged."""
    patches = tokens[:, num_prefix:] * weights.to(tokens.dtype).unsqueeze(-1)
    return torch.cat([tokens[:, :num_prefix], patches], dim=1)


class DenseEngine(MaskedEngine):
    name = "dense"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.weights = window_weights(self.layout.grid, self.kernel, self.device)

    @property
    def sequence_length(self) -> int:
        return self.layout.num_tokens

    def prepare(self, traced: Trace) -> Tensor:
        return self.layout.blocks(self.model)[self.block_index].norm1(traced.block_input)

    def chunk_logits(self, traced: Trace, features: Tensor, image: Tensor, position: Tensor) -> Tensor:
        x, prefix = traced.block_input, self.layout.num_prefix
        window = self.weights[position]
        masked = mask_patch_tokens(features[image], window, prefix)
        if self.skip == "ln":
            residual = masked
        elif self.skip == "masked-input":
            residual = mask_patch_tokens(x[image], window, prefix)
        else:
            residual = x[image]
        return self.layout.run_blocks(self.model, residual, self.block_index, traced.block_extras, masked)
