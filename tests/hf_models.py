"""Tiny random-weight transformers models of every supported class (classifiers and embedding models),
saved as save_pretrained folders.

Each comes with the image processor its family ships (ViT's, DeiT's, BEiT's, DINOv2's BitImageProcessor,
SigLIP's, CLIP's) sized for the tiny model, so that folders load exactly as Hub models do. DINOv2's
processors crop another size than its config's image_size: its position embedding is interpolated, as on
the Hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from tests.models import scramble

CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse"]
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "id2label": dict(enumerate(CLASS_NAMES)),
    "label2id": {name: i for i, name in enumerate(CLASS_NAMES)},
}
SQUARE = {"height": 32, "width": 32}

# class name -> (config class, config overrides, processor class, processor settings)
CLASSES: dict[str, tuple[str, dict, str, dict]] = {
    "ViTForImageClassification": ("ViTConfig", {}, "ViTImageProcessor", {"size": SQUARE, "resample": 2}),
    "DeiTForImageClassification": (
        "DeiTConfig",
        {},
        "DeiTImageProcessor",
        {"size": {"height": 40, "width": 40}, "crop_size": SQUARE},
    ),
    "DeiTForImageClassificationWithTeacher": (
        "DeiTConfig",
        {},
        "DeiTImageProcessor",
        {"size": {"height": 36, "width": 36}, "crop_size": SQUARE},
    ),
    "BeitForImageClassification": (
        "BeitConfig",
        {"use_relative_position_bias": True, "layer_scale_init_value": 0.1, "use_mean_pooling": True},
        "BeitImageProcessor",
        {"size": {"height": 40, "width": 40}, "crop_size": SQUARE, "do_center_crop": True},
    ),
    "Dinov2ForImageClassification": (
        "Dinov2Config",
        {"mlp_ratio": 2},
        "BitImageProcessor",
        {"size": {"shortest_edge": 28}, "crop_size": {"height": 24, "width": 24}},
    ),
    "Dinov2WithRegistersForImageClassification": (
        "Dinov2WithRegistersConfig",
        {"mlp_ratio": 2, "num_register_tokens": 2},
        "BitImageProcessor",
        {"size": {"shortest_edge": 48}, "crop_size": {"height": 40, "width": 40}},
    ),
}
FIVE = list(CLASSES)  # the five families: ViT, DeiT (two heads), BEiT, DINOv2 (with registers)

# embedding models: the classifiers' tiny sizes without classes
BASE = {key: value for key, value in TINY.items() if key not in ("id2label", "label2id")}
EMBEDDERS: dict[str, tuple[str, dict, str, dict]] = {
    "ViTModel": ("ViTConfig", {}, "ViTImageProcessor", {"size": SQUARE, "resample": 2}),
    "Dinov2Model": CLASSES["Dinov2ForImageClassification"],
    "Dinov2WithRegistersModel": CLASSES["Dinov2WithRegistersForImageClassification"],
    "SiglipVisionModel": ("SiglipVisionConfig", {}, "SiglipImageProcessor", {"size": SQUARE}),
    "CLIPVisionModelWithProjection": (
        "CLIPVisionConfig",
        {"projection_dim": 16},
        "CLIPImageProcessor",
        {"size": {"shortest_edge": 36}, "crop_size": SQUARE},
    ),
}

# Swin, 64 px in 4x4 patches: stages of 16x16, 8x8 and 4x4 tokens in 2x2 windows, so the second block of
# every stage shifts its windows (the last stage's too: it is larger than one window)
SWIN = {
    "image_size": 64,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [2, 2, 2],
    "num_heads": [1, 2, 4],
    "window_size": 2,
    "id2label": TINY["id2label"],
    "label2id": TINY["label2id"],
}


def tiny_classifier(name: str, seed: int = 0) -> tuple[nn.Module, object]:
    """A random-weight model of transformers class ``name`` (weights large enough for varied scores)
    and its image processor."""
    config_class, overrides, processor_class, settings = CLASSES[name]
    config = getattr(transformers, config_class)(**TINY, **overrides)
    config.architectures = [name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, name)(config)
    scramble(model, seed)
    processor = getattr(transformers, processor_class)(**settings)
    return model, processor


def tiny_embedder(
    name: str, seed: int = 0, pooler: bool = True, **overrides: object
) -> tuple[nn.Module, object]:
    """A random-weight embedding model of transformers class ``name`` and its image processor
    (``overrides`` for its config; ``pooler=False``: ViTModel without its pooling layer)."""
    config_class, class_overrides, processor_class, settings = EMBEDDERS[name]
    config = getattr(transformers, config_class)(**BASE | class_overrides | overrides)
    config.architectures = [name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, name)(config, **({} if pooler else {"add_pooling_layer": False}))
    scramble(model, seed)
    return model, getattr(transformers, processor_class)(**settings)


def save_embedder(folder: Path, name: str, seed: int = 0, pooler: bool = True, **overrides: object) -> Path:
    model, processor = tiny_embedder(name, seed, pooler, **overrides)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_swin_classifier(seed: int = 0, **overrides: object) -> tuple[nn.Module, object]:
    """A random-weight ``SwinForImageClassification`` and the ViT image processor Swin ships with."""
    config = transformers.SwinConfig(**SWIN | overrides)
    config.architectures = ["SwinForImageClassification"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.SwinForImageClassification(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # large random weights, norms near identity: scores that vary from image to image
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_norm_weight = "norm" in name and name.endswith("weight")
            parameter.copy_(1 + 0.1 * noise if is_norm_weight else noise * (0.1 if "norm" in name else 0.2))
    size = int(config.image_size)
    return model, transformers.ViTImageProcessor(size={"height": size, "width": size})


def save_classifier(folder: Path, name: str, seed: int = 0) -> Path:
    model, processor = (
        tiny_swin_classifier(seed) if name == "SwinForImageClassification" else (tiny_classifier(name, seed))
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
