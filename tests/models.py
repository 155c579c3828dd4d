"""Tiny random-weight timm ViTs for tests: each family the engine must handle, built in milliseconds."""

from __future__ import annotations

import timm
import torch
from torch import nn

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 7}

FAMILIES: dict[str, tuple[str, dict]] = {
    "cls": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
    "avg": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "global_pool": "avg", "class_token": False},
    ),
    "distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "patch_size": 8}),
    "registers": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "reg_tokens": 3, "init_values": 0.5},
    ),
    "nonsquare": ("vit_tiny_patch16_224", {"img_size": (112, 160), "patch_size": 16}),
}


def scramble(model: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Replace timm's small init with larger random weights so that class scores vary strongly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def tiny_vit(family: str, seed: int = 0) -> nn.Module:
    name, kwargs = FAMILIES[family]
    model = timm.create_model(name, pretrained=False, **TINY, **kwargs)
    return scramble(model, seed)


def input_size(model: nn.Module) -> tuple[int, int, int]:
    return (3, *model.patch_embed.img_size)
