"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021).

Relevance starts as the identity R = I and passes through the blocks in order: with the block's
attention probabilities A and the gradient of the class logit with respect to them,
R <- R + mean_heads((grad A * A)^+) R. The map is R's readout rows (the prefix tokens with token
pooling, all patch tokens with average pooling) over the patch tokens, one backward pass per class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitcam_cli.methods.attention import AttentionMethod, readout_rows, recorded_probabilities
from vitcam_cli.methods.base import ClassChooser, Explanation


class AttentionRelevance(AttentionMethod):
    name = "relevance"

    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        with torch.inference_mode(False), torch.enable_grad():
            images = images.detach().clone()
            with recorded_probabilities(self.modules) as records:
                logits = self.model(images)
            attention = [record["p"] for record in records]
            classes = choose_classes(self.reading.values(logits.detach()))
            tokens = self.layout.num_tokens
            maps = []
            for t in range(classes.shape[1]):
                score = self.reading.scores(logits, classes[:, t : t + 1], "logit").sum()
                grads = torch.autograd.grad(score, attention, retain_graph=t + 1 < classes.shape[1])
                relevance = torch.eye(tokens, device=images.device).expand(images.shape[0], -1, -1)
                for probs, grad in zip(attention, grads, strict=True):
                    weighted = (grad.float() * probs.detach().float()).clamp_min(0).mean(1)
                    relevance = relevance + weighted @ relevance
                maps.append(readout_rows(relevance, self.layout.num_prefix, self.token_pool))
        stacked = torch.stack(maps, 1).view(images.shape[0], classes.shape[1], *self.layout.grid)
        return Explanation(outputs=logits.detach().float(), classes=classes, maps=stacked)
