"""The engine against a plain, independent re-implementation of ViT-ReciproCAM (one copy at a time)."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch

from tests.models import FAMILIES, TINY, input_size, scramble, tiny_vit
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings

GAUSSIAN = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


def naive_scores(model, image, target, settings: ReciproCAMSettings, block_offset: int = 0):
    """Textbook ViT-ReciproCAM for a timm VisionTransformer: a Python loop over grid positions.

    Returns the (rows, cols) map and the score of the copy with every patch token masked out.
    """
    depth = len(model.blocks)
    t = settings.target_block % depth - block_offset
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image))))
    first = x.clone()
    for block in model.blocks[:t]:
        x = block(x)
    block = model.blocks[t]
    prefix = model.num_prefix_tokens
    if settings.prefix != "keep":  # the prefix tokens as the first block received them, or zero
        x = x.clone()
        x[:, :prefix] = first[:, :prefix] if settings.prefix == "reset" else 0.0
    features = block.norm1(x)
    rows, cols = model.patch_embed.grid_size

    def score_of(weight: torch.Tensor) -> float:
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
        if settings.score == "softmax":
            return float(torch.softmax(logits, -1)[target])
        if settings.score == "logit":
            return float(logits[target])
        others = torch.cat([logits[:target], logits[target + 1 :]])
        return float(logits[target] - torch.logsumexp(others, 0))

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
        saliency[r, c] = score_of(weight.reshape(1, -1, 1))
    return saliency, score_of(torch.zeros(1, rows * cols, 1))


def naive_reciprocam(model, image, target, settings: ReciproCAMSettings) -> torch.Tensor:
    maps = []
    for offset in range(settings.fuse):
        saliency, empty = naive_scores(model, image, target, settings, offset)
        maps.append((saliency - empty).clamp_min(0) if settings.subtract == "empty" else saliency)
    return torch.stack(maps).mean(0)


SETTINGS = [
    ReciproCAMSettings(kernel=kernel, target_block=block, skip=skip, score=score)
    for kernel in ("gaussian", "single")
    for block in (-1, -2)
    for skip in ("ln", "masked-input", "input")
    for score in ("softmax", "logit")
]


def settings_id(settings: ReciproCAMSettings) -> str:
    return f"{settings.kernel}-{settings.target_block}-{settings.skip}-{settings.score}"


@pytest.mark.parametrize("engine", ["dense", "fast"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("settings", SETTINGS, ids=settings_id)
@torch.inference_mode()
def test_engine_equals_naive_reference(engine, family, settings):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(1))
    explainer = ReciproCAM(model, layout, settings, input_size(model), mask_batch=5, engine=engine)
    assert explainer.engine.name == engine
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


FAST_FAMILIES = [*sorted(FAMILIES), "avg_prefix", "max_pool", "qk_norm"]
EXTRA_FAMILIES = {
    "avg_prefix": {"global_pool": "avg", "reg_tokens": 2, "pool_include_prefix": True},
    "max_pool": {"global_pool": "max", "fc_norm": False},
    "qk_norm": {"qk_norm": True, "init_values": 0.3, "depth": 4},
}


def fast_family(name: str) -> torch.nn.Module:
    """The test families plus heads and attention options the fast path treats specially."""
    if name in FAMILIES:
        return tiny_vit(name, seed=5)
    kwargs = {**TINY, "img_size": 32, "patch_size": 8, **EXTRA_FAMILIES[name]}
    return scramble(timm.create_model("vit_tiny_patch16_224", **kwargs), seed=5)


def top2(logits: torch.Tensor) -> torch.Tensor:
    return logits.topk(2, dim=-1).indices


def top1(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1, keepdim=True)


@pytest.mark.parametrize("family", FAST_FAMILIES)
@pytest.mark.parametrize("settings", SETTINGS, ids=settings_id)
@torch.inference_mode()
def test_fast_equals_dense(family, settings):
    model = fast_family(family)
    layout = token_layout(model)
    images = torch.randn(3, *input_size(model), generator=torch.Generator().manual_seed(4))
    dense = ReciproCAM(model, layout, settings, input_size(model), mask_batch=7, engine="dense")
    fast = ReciproCAM(model, layout, settings, input_size(model), mask_batch=7, engine="fast")
    expected = dense(images, top2).maps
    torch.testing.assert_close(fast(images, top2).maps, expected, rtol=1e-5, atol=1e-6)
    assert expected.std() > 1e-3


# bf16 keeps 8 mantissa bits, and the two engines round in different places: their maps agree to
# within BF16_TOLERANCE of the map's largest magnitude (fp32 agreement is 1e-5 relative, above).
BF16_TOLERANCE = 0.02


@pytest.mark.parametrize("family", ["cls", "avg", "registers"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
@torch.inference_mode()
def test_fast_equals_dense_in_bf16(family, preset):
    model = fast_family(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(6))
    settings = PRESETS[preset]
    reference = ReciproCAM(model, layout, settings, input_size(model), engine="dense")(images, top1).maps
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = ReciproCAM(model, layout, settings, input_size(model), engine="fast")(images, top1).maps
        dense = ReciproCAM(model, layout, settings, input_size(model), engine="dense")(images, top1).maps
    peak = reference.abs().amax(dim=(-2, -1), keepdim=True)
    assert ((fast - dense).abs() / peak).max() < BF16_TOLERANCE
    # and the fast path is no less accurate than the dense one against fp32
    fast_error, dense_error = (
        ((fast - reference).abs() / peak).max(),
        ((dense - reference).abs() / peak).max(),
    )
    assert fast_error <= 2 * dense_error + 1e-3


POSITIONAL = {
    "eva02_tiny_patch14_224": {"img_size": 28, "depth": 2, "num_classes": 5},
    "beit_base_patch16_224": {
        "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 5,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(POSITIONAL))
@torch.inference_mode()
def test_models_with_positional_blocks_fall_back_to_dense(name):
    model = scramble(timm.create_model(name, **POSITIONAL[name]), std=0.1)
    layout = token_layout(model)
    size = (3, *model.patch_embed.img_size)
    explainer = ReciproCAM(model, layout, PRESETS["otx"], size)
    assert explainer.engine.name == "dense"
    with pytest.raises(VitcamError, match="engine fast is not exact"):
        ReciproCAM(model, layout, PRESETS["otx"], size, engine="fast")
    maps = explainer(torch.randn(1, *size), top1).maps
    assert maps.shape == (1, 1, *layout.grid) and torch.isfinite(maps).all() and maps.std() > 0


REFINEMENTS = [
    ReciproCAMSettings(target_block=block, skip=skip, score=score, subtract=subtract, fuse=fuse)
    for block, skip in ((-1, "ln"), (-1, "input"), (-2, "masked-input"))
    for score, subtract, fuse in (("contrast", "none", 1), ("softmax", "empty", 1), ("logit", "none", 2),
                                  ("contrast", "empty", 2))
] + [
    ReciproCAMSettings(target_block=block, skip=skip, score=score, fuse=fuse, prefix=prefix)
    for block, skip, score, fuse, prefix in (
        (-1, "masked-input", "logit", 1, "reset"), (-1, "ln", "softmax", 2, "reset"),
        (-2, "input", "softmax", 1, "reset"), (-1, "masked-input", "logit", 1, "zero"),
    )
]  # fmt: skip


@pytest.mark.parametrize("engine", ["dense", "fast"])
@pytest.mark.parametrize("family", ["cls", "avg", "registers"])
@pytest.mark.parametrize(
    "settings",
    REFINEMENTS,
    ids=lambda s: f"{s.target_block}-{s.skip}-{s.score}-{s.subtract}-fuse{s.fuse}-prefix-{s.prefix}",
)
@torch.inference_mode()
def test_refinements_equal_naive_reference(engine, family, settings):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(7))
    explainer = ReciproCAM(model, layout, settings, input_size(model), mask_batch=6, engine=engine)
    result = explainer(images, top1)
    for b in range(2):
        expected = naive_reciprocam(model, images[b : b + 1], int(result.classes[b, 0]), settings)
        torch.testing.assert_close(result.maps[b, 0], expected, rtol=1e-5, atol=1e-6)
    assert result.maps.std() > 0


def test_contrast_score_definition():
    from vitcam_cli.targets import class_scores

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    scores = class_scores(logits, torch.tensor([[0, 2], [2, 1]]), "contrast")
    expected = [[2 - math.log(math.exp(0) + math.exp(-1)), -1 - math.log(math.exp(2) + math.exp(0))],
                [3 - math.log(2 * math.exp(0.5)), 0.5 - math.log(math.exp(0.5) + math.exp(3))]]  # fmt: skip
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_refinement_options_are_checked():
    with pytest.raises(VitcamError, match="subtract must be one of"):
        PRESETS["otx"].with_overrides(subtract="full")
    with pytest.raises(VitcamError, match="fuse must be at least 1"):
        PRESETS["otx"].with_overrides(fuse=0)
    model = tiny_vit("cls")
    with pytest.raises(VitcamError, match="fuse=5: only"):
        ReciproCAM(model, token_layout(model), PRESETS["otx"].with_overrides(fuse=5), input_size(model))


@pytest.mark.parametrize("engine", ["dense", "fast"])
@pytest.mark.parametrize("family", ["cls", "registers"])
@torch.inference_mode()
def test_the_fused_preset_averages_every_block_it_has_up_to_four(engine, family):
    """On a 3-block model the default preset fuses the 3 blocks there are, single-token kernel."""
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(8))
    explainer = ReciproCAM(model, layout, PRESETS["fused"], input_size(model), engine=engine)
    assert [e.block_index for e in explainer.engines] == [2, 1, 0]
    result = explainer(images, top1)
    by_hand = PRESETS["openvino-xai"].with_overrides(kernel="single", fuse=3)
    for b in range(2):
        expected = naive_reciprocam(model, images[b : b + 1], int(result.classes[b, 0]), by_hand)
        torch.testing.assert_close(result.maps[b, 0], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(VitcamError, match="only 3 blocks"):  # asked for by number, it is not a bound
        ReciproCAM(model, layout, PRESETS["fused"].with_overrides(fuse=4), input_size(model))
