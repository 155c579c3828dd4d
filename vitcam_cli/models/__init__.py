"""Models in: one adapter per model library turns what the user names into a ``LoadedModel``.

An adapter is a module with ``accepts(name)``, ``load(spec, device)``, ``accepts_object(model)`` and
``wrap(model, device, name)``. Adapters are asked in order and the first that accepts wins; timm comes
last and accepts every string. Optional model libraries are imported only when their adapter loads.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from vitcam_cli.errors import ParameterError
from vitcam_cli.models.loaded import LoadedModel, ModelSpec, read_class_names, resolve_class
from vitcam_cli.models.timm import BUNDLED_MODELS

ADAPTERS = ("vitcam_cli.models.open_clip", "vitcam_cli.models.transformers", "vitcam_cli.models.timm")

__all__ = [
    "BUNDLED_MODELS",
    "LoadedModel",
    "ModelSpec",
    "adapter_for",
    "load_model",
    "read_class_names",
    "resolve_class",
    "wrap_model",
]


def _adapters() -> list[ModuleType]:
    return [import_module(name) for name in ADAPTERS]


def adapter_for(name: str) -> ModuleType:
    """The adapter that loads this model string."""
    return next(adapter for adapter in _adapters() if adapter.accepts(name))


def load_model(
    name: str,
    *,
    checkpoint: Path | None = None,
    pretrained: bool = True,
    num_classes: int | None = None,
    img_size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load a model string as the command line does (without class-name overrides)."""
    spec = ModelSpec(name, checkpoint, pretrained, num_classes, img_size)
    return adapter_for(name).load(spec, device)


def wrap_model(
    model: nn.Module,
    device: torch.device | str = "cpu",
    name: str | None = None,
    image_processor: object = None,
) -> LoadedModel:
    """A model object already in memory, from any supported library, ready to explain (a transformers
    model with its image processor, when it was not loaded from a folder or Hub id)."""
    adapter = next(adapter for adapter in _adapters() if adapter.accepts_object(model))
    if image_processor is None:
        return adapter.wrap(model, device, name)
    if "image_processor" not in inspect.signature(adapter.wrap).parameters:
        raise ParameterError("image_processor", f"does not apply to a {type(model).__name__}")
    return adapter.wrap(model, device, name, image_processor=image_processor)
