"""The baselines against a hand-written ViT forward pass that exposes every attention matrix."""

from __future__ import annotations

import pytest
import torch

from tests.models import input_size, tiny_vit
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.errors import UnsupportedModelError
from vitcam_cli.methods.gradcam import GradCAM
from vitcam_cli.methods.relevance import AttentionRelevance
from vitcam_cli.methods.rollout import AttentionRollout


def manual_forward(model, images):
    """timm VisionTransformer forward, written out: returns logits, attentions, last block's norm1 output."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    attentions, last_norm1 = [], None
    for block in model.blocks:
        h = block.norm1(x)
        last_norm1 = h
        attn = block.attn
        batch, tokens, _ = h.shape
        q, k, v = attn.qkv(h).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)
        attentions.append(a)
        out = attn.proj((a @ v).transpose(1, 2).reshape(batch, tokens, -1))
        x = x + block.ls1(out)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x)), attentions, last_norm1


def top2(logits: torch.Tensor) -> torch.Tensor:
    return logits.topk(2, -1).indices


@pytest.mark.parametrize("family", ["cls", "avg", "registers"])
def test_gradcam(family):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(0))
    result = GradCAM(model, layout)(images, top2)
    prefix = layout.num_prefix
    for t in range(2):
        logits, _, tokens = manual_forward(model, images)
        score = logits.gather(1, result.classes[:, t : t + 1]).sum()
        (grad,) = torch.autograd.grad(score, tokens)
        cam = (tokens[:, prefix:] * grad[:, prefix:].mean(1, keepdim=True)).sum(-1).clamp_min(0)
        torch.testing.assert_close(result.maps[:, t].flatten(1), cam.detach(), rtol=1e-4, atol=1e-6)
    assert result.maps.std() > 0


@pytest.mark.parametrize("family", ["cls", "avg", "distilled"])
@torch.no_grad()
def test_rollout(family):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(1))
    result = AttentionRollout(model, layout)(images, top2)
    logits, attentions, _ = manual_forward(model, images)
    torch.testing.assert_close(result.outputs, logits, rtol=1e-4, atol=1e-5)
    tokens, prefix = layout.num_tokens, layout.num_prefix
    rollout = torch.eye(tokens).repeat(2, 1, 1)
    for a in attentions:
        rollout = ((a.mean(1) + torch.eye(tokens)) / 2) @ rollout
    rows = rollout[:, :prefix] if model.global_pool == "token" else rollout[:, prefix:]
    expected = rows.mean(1)[:, prefix:]
    torch.testing.assert_close(result.maps[:, 0].flatten(1), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.maps[:, 0], result.maps[:, 1])  # class-agnostic


@pytest.mark.parametrize("family", ["cls", "avg"])
def test_relevance(family):
    model = tiny_vit(family)
    layout = token_layout(model)
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(2))
    result = AttentionRelevance(model, layout)(images, top2)
    tokens, prefix = layout.num_tokens, layout.num_prefix
    for t in range(2):
        logits, attentions, _ = manual_forward(model, images)
        score = logits.gather(1, result.classes[:, t : t + 1]).sum()
        grads = torch.autograd.grad(score, attentions)
        relevance = torch.eye(tokens).repeat(2, 1, 1)
        for a, g in zip(attentions, grads, strict=True):
            relevance = relevance + (g * a).clamp_min(0).mean(1) @ relevance
        rows = relevance[:, :prefix] if model.global_pool == "token" else relevance[:, prefix:]
        expected = rows.mean(1)[:, prefix:].detach()
        torch.testing.assert_close(result.maps[:, t].flatten(1), expected, rtol=1e-4, atol=1e-6)


def test_relevance_restores_fused_attention():
    model = tiny_vit("cls")
    before = [block.attn.fused_attn for block in model.blocks]
    AttentionRelevance(model, token_layout(model))(torch.randn(1, *input_size(model)), top2)
    assert [block.attn.fused_attn for block in model.blocks] == before


def test_gradient_methods_work_inside_inference_mode():
    model = tiny_vit("cls")
    layout = token_layout(model)
    with torch.inference_mode():
        images = torch.randn(1, *input_size(model))
        for method in (GradCAM(model, layout), AttentionRelevance(model, layout)):
            assert torch.isfinite(method(images, top2).maps).all()


def test_attention_baselines_refuse_other_attention():
    import timm

    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=2, num_classes=5).eval()
    with pytest.raises(UnsupportedModelError, match="standard Attention"):
        AttentionRollout(model, token_layout(model))
