"""Grad-CAM (Selvaraju et al., 2017) for ViTs: the last block's first LayerNorm, tokens as the grid.

The patch tokens of ``blocks[-1].norm1`` are the feature map; each channel's weight is the mean
gradient of the class logit (of the cosine, for a similarity target) over the patch tokens, and the map
is ReLU(sum_c weight_c * token_c), the recipe pytorch-grad-cam documents for timm ViTs. On a Swin the
last block is that of the last stage (``layers[-1].blocks[-1].norm1``, pytorch-grad-cam's choice too)
and the map has its grid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitcam_cli.engine.geometry import TokenLayout
from vitcam_cli.methods.base import ClassChooser, Explanation
from vitcam_cli.targets import Reading


class GradCAM:
    name = "gradcam"

    def __init__(self, model: nn.Module, layout: TokenLayout, reading: Reading | None = None) -> None:
        self.model = model
        self.layout = layout
        self.reading = reading or Reading()
        self.layer = layout.blocks(model)[-1].norm1

    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        captured: list[Tensor] = []
        prefix = self.layout.num_prefix
        with torch.inference_mode(False), torch.enable_grad():
            images = images.detach().clone()
            handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                logits = self.model(images)
            finally:
                handle.remove()
            output = captured[0]
            tokens = self.layout.tokens(output.detach())
            classes = choose_classes(self.reading.values(logits.detach()))
            maps = []
            for t in range(classes.shape[1]):
                score = self.reading.scores(logits, classes[:, t : t + 1], "logit").sum()
                (grad,) = torch.autograd.grad(score, output, retain_graph=t + 1 < classes.shape[1])
                weights = self.layout.tokens(grad)[:, prefix:].float().mean(1, keepdim=True)
                maps.append((tokens[:, prefix:].float() * weights).sum(-1).clamp_min(0))
        stacked = torch.stack(maps, 1).view(images.shape[0], classes.shape[1], *self.layout.grid)
        return Explanation(outputs=logits.detach().float(), classes=classes, maps=stacked)
