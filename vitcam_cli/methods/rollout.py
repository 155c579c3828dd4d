"""Attention rollout (Abnar & Zuidema, 2020): attention flowing from the input patches to the readout.

Each block's head-averaged attention A is mixed with the identity for the skip connection,
(A + I) / 2, and the blocks' matrices are multiplied in order. The map is the rollout's readout rows
(the prefix tokens with token pooling, all patch tokens with average pooling) over the patch tokens.
It does not depend on the class: every requested class gets the same map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitcam_cli.methods.attention import (
    AttentionMethod,
    probabilities,
    readout_rows,
    recorded_queries_and_keys,
)
from vitcam_cli.methods.base import ClassChooser, Explanation


class AttentionRollout(AttentionMethod):
    name = "rollout"

    @torch.no_grad()
    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        with recorded_queries_and_keys(self.modules) as records:
            logits = self.model(images).float()
        classes = choose_classes(self.reading.values(logits))
        tokens = self.layout.num_tokens
        identity = torch.eye(tokens, device=images.device)
        rollout = identity.expand(images.shape[0], -1, -1)
        for attn, record in zip(self.modules, records, strict=True):
            mixed = (probabilities(attn, record["q"], record["k"]).mean(1) + identity) / 2
            rollout = mixed @ rollout
        saliency = readout_rows(rollout, self.layout.num_prefix, self.token_pool)
        maps = saliency.view(-1, 1, *self.layout.grid).expand(-1, classes.shape[1], -1, -1)
        return Explanation(outputs=logits, classes=classes, maps=maps.contiguous())
