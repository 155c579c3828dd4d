"""The engine against a plain, independent re-implementation of ViT-ReciproCAM (one copy at a time)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.models import FAMILIES, input_size, tiny_vit
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings

GAUSSIAN = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


def naive_reciprocam(model, image, target, settings: ReciproCAMSettings) -> torch.Tensor:
    """Textbook ViT-ReciproCAM for a timm VisionTransformer: a Python loop over grid positions."""
    depth = len(model.blocks)
    t = settings.target_block % depth
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image))))
    for block in model.blocks[:t]:
        x = block(x)
    block = model.blocks[t]
    features = block.norm1(x)
    prefix = model.num_prefix_tokens
    rows, cols = model.patch_embed.grid_size
    saliency = torch.zeros(rows, cols)
    for r, c in itertools.product(range(rows), range(cols)):
        weight = torch.zeros(rows, cols)
        for dr, dc in itertools.product((-1, 0, 1), repeat=2):
            rr, cc = r + dr, c + dc
            if 0 <= rr < rows and 0 <= cc < cols:
                if settings.kernel == "gaussian":
                    weight[rr, cc] = GAUSSIAN[dr + 1][dc + 1]
                elif dr == 0 and dc == 0:
                    weight[rr, cc] = 1.0
        weight = weight.reshape(1, -1, 1)
        masked = features.clone()
        masked[:, prefix:] = features[:, prefix:] * weight
        if settings.skip == "ln":
            residual = masked
        elif settings.skip == "masked-input":
            residual = x.clone()
            residual[:, prefix:] = x[:, prefix:] * weight
        else:
            residual = x
        y = residual + block.ls1(block.attn(masked))
        y = y + block.ls2(block.mlp(block.norm2(y)))
        for later in model.blocks[t + 1 :]:
            y = later(y)
        logits = model.forward_head(model.norm(y))[0]
        value = torch.softmax(logits, -1)[target] if settings.score == "softmax" else logits[target]
        saliency[r, c] = value
    return saliency


SETTINGS = [
    ReciproCAMSettings(kernel=kernel, target_block=block, skip=skip, score=score)
    for kernel in ("gaussian", "single")
    for block in (-1, -2)
    for skip in ("ln", "masked-input", "input")
    for score in ("softmax", "logit")
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: f"{s.kernel}-{s.target_block}-{s.skip}-{s.score}"
)
@torch.inference_mode()
def test_engine_equals_naive_reference(family, settings):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(1))
    explainer = ReciproCAM(model, layout, settings, input_size(model), mask_batch=5)
    result = explainer(images, lambda logits: logits.topk(2, dim=-1).indices)
    assert result.maps.shape == (2, 2, *layout.grid)
    for b in range(2):
        for t in range(2):
            expected = naive_reciprocam(model, images[b : b + 1], int(result.classes[b, t]), settings)
            torch.testing.assert_close(result.maps[b, t], expected, rtol=1e-5, atol=1e-6)
    # the maps carry signal: a test on near-constant scores could not tell variants apart
    assert result.maps.std() > 1e-3


@torch.inference_mode()
def test_presets_give_different_maps():
    model = tiny_vit("cls")
    layout = token_layout(model)
    images = torch.randn(1, *input_size(model), generator=torch.Generator().manual_seed(2))
    maps = {}
    for name, settings in PRESETS.items():
        explainer = ReciproCAM(model, layout, settings, input_size(model))
        maps[name] = explainer(images, lambda logits: logits.argmax(-1, keepdim=True)).maps
    assert not torch.allclose(maps["official"], maps["otx"])
    assert not torch.allclose(maps["otx"], maps["openvino-xai"])


@torch.inference_mode()
def test_chunking_does_not_change_maps():
    model = tiny_vit("registers")
    layout = token_layout(model)
    images = torch.randn(3, *input_size(model), generator=torch.Generator().manual_seed(3))
    settings = PRESETS["otx"]
    whole = ReciproCAM(model, layout, settings, input_size(model), mask_batch=1000)
    single = ReciproCAM(model, layout, settings, input_size(model), mask_batch=1)
    top = lambda logits: logits.argmax(-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(whole(images, top).maps, single(images, top).maps, rtol=1e-5, atol=1e-6)
