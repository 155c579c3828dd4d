"""Why an open_clip checkpoint does not load into an architecture, and which architectures it fits.

Used when open_clip refuses a checkpoint: its own error is many lines long, cut after the first. The
architectures are built on the meta device (shapes only, no memory), so each comparison takes
milliseconds; only those with the checkpoint's widths, depth and patch size are built at all.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Shapes = dict[str, tuple[int, ...]]

SHOWN = 3  # differences of each kind named in a message
MOST_BUILT = 8  # candidate architectures built to compare with a checkpoint
# keys open_clip adapts while loading: the grid or context of positional embeddings is resized, a
# missing logit bias is filled with zeros, the scale and bias may be scalars or 1-d, position ids dropped
RESIZED_SUFFIX = "positional_embedding"
RESHAPED = ("logit_scale", "logit_bias")
FILLED = ("logit_bias",)
DROPPED = ("text.transformer.embeddings.position_ids",)
_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.")


@dataclass(frozen=True)
class Differences:
    """Tensors of other shapes (key, checkpoint shape, model shape), and keys missing or unexpected."""

    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    missing: list[str]
    unexpected: list[str]

    def __bool__(self) -> bool:
        return bool(self.reshaped or self.missing or self.unexpected)

    def describe(self) -> str:
        """``2 tensors of other shapes, the checkpoint's vs the model's (key: 48x3 vs 32x3, ...); 1 missing
        key (key); ...``: the first few of each kind and their counts."""
        shapes = [f"{key}: {_shape(ours)} vs {_shape(theirs)}" for key, ours, theirs in self.reshaped]
        versus = ", the checkpoint's vs the model's"
        parts = [
            _counted(shapes, "tensor of another shape" + versus, "tensors of other shapes" + versus),
            _counted(self.missing, "missing key", "missing keys"),
            _counted(self.unexpected, "unexpected key", "unexpected keys"),
        ]
        return "; ".join(part for part in parts if part)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _counted(items: list[str], one: str, many: str) -> str:
    if not items:
        return ""
    more = ", ..." if len(items) > SHOWN else ""
    return f"{len(items)} {one if len(items) == 1 else many} ({', '.join(items[:SHOWN])}{more})"


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """open_clip's log quiet while it builds a model whose random weights are wanted (or not used)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def checkpoint_shapes(open_clip: Any, checkpoint: Path) -> Shapes | None:
    """The checkpoint's tensor shapes, read as open_clip reads it (None: unreadable)."""
    try:
        state = open_clip.factory.load_state_dict(str(checkpoint), weights_only=True)
    except Exception:  # open_clip's own error already says why
        return None
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def model_shapes(open_clip: Any, architecture: str) -> Shapes | None:
    """The shapes of an architecture's tensors, built on the meta device (None: it cannot be built)."""
    try:
        with no_warnings(), torch.device("meta"):
            model = open_clip.create_model(architecture, pretrained=None, device="meta")
    except Exception:
        return None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _fits(key: str, ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    if ours == theirs:
        return True
    if key.endswith(RESIZED_SUFFIX):
        return ours[-1:] == theirs[-1:]
    return key in RESHAPED and torch.Size(ours).numel() == torch.Size(theirs).numel()


def differences(checkpoint: Shapes, model: Shapes) -> Differences:
    """What stops the checkpoint from loading into the model, after what open_clip adapts itself."""
    return Differences(
        reshaped=[
            (key, shape, model[key])
            for key, shape in checkpoint.items()
            if key in model and not _fits(key, shape, model[key])
        ],
        missing=[key for key in model if key not in checkpoint and key not in FILLED],
        unexpected=[key for key in checkpoint if key not in model and key not in DROPPED],
    )


def _signature(shapes: Shapes) -> tuple[int, int, int, int] | None:
    """Image-tower width, patch size and depth, and the embedding width: what a ViT config sets."""
    conv, projection = shapes.get("visual.conv1.weight"), shapes.get("visual.proj")
    if conv is None or len(conv) != 4 or projection is None:
        return None
    depth = len({match[1] for key in shapes if (match := _BLOCK.match(key))})
    return conv[0], conv[-1], depth, projection[-1]


def _config_signature(open_clip: Any, name: str) -> tuple[int, int, int, int] | None:
    """The same for a config, from its fields (None: a tower on a timm trunk or a Hugging Face text
    model, which would be fetched to be built)."""
    config = open_clip.get_model_config(name) or {}
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if vision.get("timm_model_name") or text.get("hf_model_name"):
        return None
    try:
        tower = open_clip.model.CLIPVisionCfg(**vision)
    except TypeError:
        return None
    if not isinstance(tower.layers, int):  # a ResNet
        return None
    return tower.width, tower.patch_size, tower.layers, config.get("embed_dim")


def fitting(open_clip: Any, checkpoint: Shapes, skip: str) -> list[str]:
    """The architectures every tensor of the checkpoint fits (several where only activations differ,
    as with and without QuickGELU)."""
    signature = _signature(checkpoint)
    if signature is None:
        return []
    candidates = [
        name
        for name in open_clip.list_models()
        if name != skip and _config_signature(open_clip, name) == signature
    ]
    found = []
    for name in candidates[:MOST_BUILT]:
        shapes = model_shapes(open_clip, name)
        if shapes is not None and not differences(checkpoint, shapes):
            found.append(name)
    return found
