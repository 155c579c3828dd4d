"""The timm adapter: registry names, ``hf-hub:``, ``local-dir:``, export folders, checkpoints.

Preprocessing comes from the model's pretrained_cfg, class names from its config (``label_names``)
or timm's ImageNet metadata; vitcam re-derives none of it. timm is also the fallback adapter: a
model string no other adapter claims is read as a timm name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import timm
import torch
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_input_data_config
from torch import nn

from vitcam_cli.defaults import BUNDLED_MODEL_NAMES, MODEL_FORMS
from vitcam_cli.engine.stages import model_layout
from vitcam_cli.errors import ParameterError, VitcamError, did_you_mean, literal
from vitcam_cli.models import hub
from vitcam_cli.models.files import check_model_folder, check_weights_file
from vitcam_cli.models.loaded import LoadedModel, ModelSpec

OFFLINE_HINT = (
    "pass {checkpoint} FILE (weights on disk, with {model} ARCH), {model} local-dir:PATH "
    "(a folder with config.json and model.safetensors), or {no_pretrained} (random weights)"
)


# models that ship inside the package, in timm's export format: ``--model NAME`` works offline
ASSETS = Path(__file__).parents[1] / "assets"
BUNDLED_MODELS = {name: ASSETS / name for name in BUNDLED_MODEL_NAMES}


def _export_folder(spec: str, folder: Path) -> str:
    """``local-dir:FOLDER`` when the folder is in timm's export format."""
    if not (folder / "config.json").is_file():
        raise ParameterError("model", "no config.json in that folder (expected timm's export format)", spec)
    return f"local-dir:{folder}"


def resolve_model_name(spec: str) -> str:
    """A model string as a timm model name: a bundled name or a folder with config.json -> ``local-dir:``."""
    if spec in BUNDLED_MODELS:
        return f"local-dir:{BUNDLED_MODELS[spec]}"
    if spec.startswith("local-dir:"):
        return _export_folder(spec, Path(spec.removeprefix("local-dir:")))
    path = Path(spec)
    if spec.startswith("hf-hub:"):
        return spec
    if path.is_dir():
        return _export_folder(spec, path)
    if path.is_file():
        raise ParameterError(
            "model", "is a file: pass the architecture as {model} and the file as {checkpoint}", spec
        )
    architecture, dot, _ = spec.partition(".")
    if not timm.is_model(architecture):
        names = [*BUNDLED_MODELS, *timm.list_models(), *(timm.list_pretrained() if dot else [])]
        raise ParameterError(
            "model", f"not a bundled or timm model name{did_you_mean(spec, names)}; use {MODEL_FORMS}", spec
        )
    if dot:
        _check_tag(spec, architecture)
    return spec


def _check_tag(spec: str, architecture: str) -> None:
    """``NAME.TAG`` must name one of timm's pretrained tags of NAME (timm refuses others when it builds)."""
    tags = timm.list_pretrained(f"{architecture}.*")
    if spec not in tags:
        listed = ", ".join(tag.partition(".")[2] for tag in tags) or "none"
        raise ParameterError(
            "model",
            f"not a pretrained tag of {architecture}{did_you_mean(spec, tags)}; its tags: {listed}",
            spec,
        )


def class_ids_for(model: nn.Module) -> list[str]:
    """Unique class identifiers where the model has them: ``label_names`` (with descriptions as names),
    or ImageNet's WordNet ids (n01440764 ...), so folders and label files may use either."""
    num_classes = int(model.num_classes)
    names = model.pretrained_cfg.get("label_names")
    if isinstance(names, list | tuple) and len(names) == num_classes:
        return [str(name) for name in names]
    subset = infer_imagenet_subset(model)
    if subset and ImageNetInfo(subset).num_classes() == num_classes:
        return list(ImageNetInfo(subset).label_names())
    return []


def class_names_for(model: nn.Module) -> list[str]:
    """``label_names`` from the model's config, else ImageNet descriptions, else the indices."""
    num_classes = int(model.num_classes)
    names = model.pretrained_cfg.get("label_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i, str(i))) for i in range(num_classes)]
    if names and len(names) == num_classes:
        descriptions = model.pretrained_cfg.get("label_descriptions") or {}
        return [str(descriptions.get(name, name)) for name in names]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def _classifier_name(model: nn.Module) -> str:
    """The classifier's module path (``head`` for a ViT, ``head.fc`` for a Swin)."""
    classifier = model.get_classifier()
    return next((name for name, module in model.named_modules() if module is classifier), "head")


def _load_checkpoint(model: nn.Module, checkpoint: Path) -> None:
    """Load .safetensors or .pth/.pt/.bin (weights only), unwrapping common containers and prefixes."""
    check_weights_file(checkpoint, "checkpoint")
    try:
        state_dict = timm.models.load_state_dict(str(checkpoint), use_ema=True, weights_only=True)
    except Exception as error:
        raise ParameterError(
            "checkpoint",
            f"cannot read it ({type(error).__name__}: {literal(error)}); expected .safetensors, or a "
            ".pth/.pt/.bin holding tensors only",
            checkpoint,
        ) from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ParameterError("checkpoint", "not a state dict of tensors", checkpoint)
    state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
    # the model family's own filter adapts native checkpoints (e.g. resamples pos_embed for --img-size,
    # renames an older Swin's head.weight to head.fc.weight)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    head = state_dict.get(f"{_classifier_name(model)}.weight")
    if head is not None and head.shape[0] != model.num_classes:
        raise ParameterError(
            "checkpoint",
            f"has a {head.shape[0]}-class head but the model has {model.num_classes}: add "
            f"{{num_classes}} {head.shape[0]}",
            checkpoint,
        )
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), "")
        raise ParameterError(
            "checkpoint", f"does not match the model architecture ({literal(first)})", checkpoint
        ) from error
    if missing or unexpected:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else "",
                f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}"
                if unexpected
                else "",
            )
            if part
        )
        raise ParameterError("checkpoint", f"does not match the model architecture ({detail})", checkpoint)


# the files timm reads pretrained weights from, in a hub repository
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hub_repository(name: str) -> str | None:
    """The hub repository a timm name's pretrained weights come from (None: not from the hub)."""
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:").split("@")[0]
    if name.startswith("local-dir:"):
        return None
    config = timm.models.get_pretrained_cfg(name)
    return getattr(config, "hf_hub_id", None) or None


def _check_hub(spec: str, name: str) -> None:
    """Before timm asks the hub for weights: with the hub out of reach, use cached weights at once (the
    hub's offline mode) or fail now with the way out, rather than after a minute of retries."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    repository = _hub_repository(name)
    if repository is None or hub.reachable():
        return
    if hub.cached(repository, HUB_WEIGHT_FILES):
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        return
    raise ParameterError(
        "model",
        f"its pretrained weights ({repository}) are not cached and the hub cannot be reached; download "
        f"them once with network access (later runs can set HF_HUB_OFFLINE=1), or {OFFLINE_HINT}",
        spec,
    )


def _create(spec: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with seeded random weights, its failures as one clear error."""
    name = spec
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (no pretrained weights, new heads) are the same every run
            name = resolve_model_name(spec)
            if name.startswith("local-dir:"):
                check_model_folder(Path(name.removeprefix("local-dir:")), "model", spec, weights=pretrained)
            elif pretrained:
                _check_hub(spec, name)
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except VitcamError:
        raise
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        if pretrained and name.startswith("local-dir:"):  # files on disk: the network is not the cause
            raise ParameterError("model", f"cannot load its weights ({literal(reason)})", spec) from error
        if pretrained:
            raise ParameterError(
                "model",
                f"cannot load pretrained weights ({literal(reason)}); offline or not cached? {OFFLINE_HINT}",
                spec,
            ) from error
        raise ParameterError("model", f"cannot build it ({literal(reason)})", spec) from error


MAX_PATCHES_PER_SIDE = 64  # the engine runs one masked copy of the whole token grid per patch


def _check_img_size(spec: str, img_size: tuple[int, int]) -> None:
    """Refuse an input size with no whole patch, or too many to explain, before building the model."""
    try:
        with torch.device("meta"):  # the architecture alone: no memory, no weights
            patch = timm.create_model(resolve_model_name(spec), pretrained=False).patch_embed.patch_size
    except Exception:  # the real build below reports what is wrong with the model
        return
    low = (int(patch[0]), int(patch[1]))
    high = (low[0] * MAX_PATCHES_PER_SIDE, low[1] * MAX_PATCHES_PER_SIDE)
    if not all(a <= side <= b for side, a, b in zip(img_size, low, high, strict=True)):
        raise ParameterError(
            "img_size",
            f"each side must be between one patch ({low[0]}x{low[1]} pixels) and {MAX_PATCHES_PER_SIDE} "
            f"patches ({high[0]}x{high[1]})",
            "x".join(map(str, img_size)),
        )


def accepts(name: str) -> bool:
    """Every model string: timm is the fallback, and says itself what is wrong with a bad name."""
    return True


def accepts_object(model: nn.Module) -> bool:
    """Every object, as the fallback: ``wrap`` refuses what is not a supported ViT or Swin in one line."""
    return True


def load(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Create the model, load its weights, check it is a supported ViT or Swin, build its preprocessing."""
    load_pretrained = spec.pretrained and spec.checkpoint is None
    if spec.num_classes is not None and spec.num_classes < 0:
        raise ParameterError("num_classes", "must be 0 (no head: the embedding) or more", spec.num_classes)
    if spec.img_size is not None:
        _check_img_size(spec.name, spec.img_size)
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes, "img_size": spec.img_size}
    model = _create(
        spec.name, load_pretrained, {key: value for key, value in kwargs.items() if value is not None}
    )
    model_layout(model)  # refuse an unsupported model before reading any weights
    if spec.checkpoint is not None:
        _load_checkpoint(model, spec.checkpoint)
    loaded = wrap(model, device, spec.name)
    loaded.info |= {
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "pretrained": load_pretrained or spec.checkpoint is not None,
    }
    return loaded


def wrap(model: nn.Module, device: torch.device | str = "cpu", name: str | None = None) -> LoadedModel:
    """A timm ViT or Swin in memory, ready to explain: put in eval mode on ``device``, its token layout
    checked, its preprocessing and class names read from its pretrained_cfg."""
    layout = model_layout(model)
    model.eval().to(device)
    data_config = resolve_input_data_config(model)
    transform = create_transform(**data_config, is_training=False)
    architecture = model.pretrained_cfg.get("architecture", type(model).__name__)
    info = {
        "model": name or architecture,
        "architecture": architecture,
        "checkpoint": None,
        "pretrained": None,
        "num_classes": int(model.num_classes),
        "input_size": list(data_config["input_size"]),
        "grid": list(layout.grid),
        "prefix_tokens": layout.num_prefix,
    }
    headless = int(model.num_classes) == 0
    pool = getattr(model, "global_pool", "its")
    embedding = f"timm's pooled features ({pool!r} pooling, no head)" if headless else None
    return LoadedModel(
        model,
        name or architecture,
        layout,
        data_config,
        transform,
        class_names_for(model),
        class_ids_for(model),
        info | ({"embedding": embedding} if embedding else {}),
        embedding=embedding,
    )
