"""The transformers adapter: Hugging Face image classifiers (ViT, DeiT, BEiT, DINOv2, Swin) and embedding
models (ViT, DINOv2, SigLIP and CLIP vision towers).

Claims ``hf:ORG/NAME`` (a Hub id in transformers' format, ``@REVISION`` optional), folders written
by ``save_pretrained`` (their config.json is a transformers config, with ``model_type``), and
transformers model objects. The model is converted once into the equivalent timm model
(``hf_weights``) and its output (a classifier's logits, a base model's embedding as its class defines
it) checked against the transformers model's own forward on a probe input, so every engine, method
and command runs on it unchanged. Preprocessing comes from the model's image processor
(``hf_processor``), class names from ``config.id2label``; a multi-label classifier
(``problem_type``) is read through a sigmoid. transformers itself is imported only here, inside the
functions, when such a model is named.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitcam_cli.errors import ParameterError, UnsupportedModelError, literal
from vitcam_cli.models import hub
from vitcam_cli.models.loaded import LoadedModel, ModelSpec

HUB_PREFIX = "hf:"
EXTRA_HINT = "transformers is not installed: pip install 'vitcam[transformers]'"
PROBE_TOLERANCE = 1e-4
# the embedding each base model's class defines: (its output field, what it is)
EMBEDDINGS: dict[str, tuple[str, str]] = {
    "ViTModel": ("pooler_output", "its pooler, dense and {act}, on the final layernorm's CLS token"),
    "Dinov2Model": ("pooler_output", "the final layernorm's CLS token"),
    "Dinov2WithRegistersModel": ("pooler_output", "the final layernorm's CLS token"),
    "SiglipVisionModel": (
        "pooler_output",
        "its attention-pooling head (a learned probe attending over the final-layernormed patch tokens, "
        "then layernorm and MLP)",
    ),
    "CLIPVisionModelWithProjection": ("image_embeds", "visual_projection of the post-layernormed CLS token"),
}


def _import_transformers(spec: str) -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ParameterError("model", f"is a transformers model but {EXTRA_HINT}", spec) from error
    return transformers


def _folder_config(folder: Path) -> dict[str, Any] | None:
    """The folder's config.json as a dict; None when it cannot be read as JSON."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def _is_transformers_folder(folder: Path) -> bool:
    """config.json names a transformers ``model_type``; or it is damaged and the folder holds an image
    processor config, which only transformers writes."""
    if not (folder / "config.json").is_file():
        return False
    config = _folder_config(folder)
    if config is None:
        return (folder / "preprocessor_config.json").is_file()
    return "model_type" in config or "architectures" in config


def accepts(name: str) -> bool:
    """``hf:ORG/NAME`` and folders of transformers' format (never ``local-dir:`` or bundled names)."""
    if name.startswith(HUB_PREFIX):
        return True
    path = Path(name)
    return ":" not in name.split("/")[0] and path.is_dir() and _is_transformers_folder(path)


def accepts_object(model: nn.Module) -> bool:
    """A transformers model, recognised by its class's module without importing transformers."""
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def _source(spec: str) -> tuple[str, str | None]:
    """(folder or Hub id, revision) for ``from_pretrained``."""
    if not spec.startswith(HUB_PREFIX):
        return spec, None
    repository, _, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    if repository.count("/") != 1:
        raise ParameterError("model", "a Hub id is written hf:ORG/NAME (optionally @REVISION)", spec)
    return repository, revision or None


def _offline(spec: str, repository: str, revision: str | None) -> bool:
    """Whether to read the Hub cache only: offline mode, or the Hub out of reach. Then a model that is
    not cached fails now with the way out, not after a minute of retries."""
    import huggingface_hub

    if not huggingface_hub.constants.HF_HUB_OFFLINE and hub.reachable():
        return False
    if hub.cached(repository, ("config.json",), revision):
        return True
    raise ParameterError(
        "model",
        f"{repository} is not cached and the hub is offline (HF_HUB_OFFLINE) or cannot be reached; download "
        "it once with network access (later runs can set HF_HUB_OFFLINE=1), or pass a folder written by "
        "save_pretrained",
        spec,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return literal(f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": "))


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars while reading files: a command's own output stays one line per problem."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _read_config(transformers: Any, spec: str, source: str, options: dict[str, Any]) -> Any:
    if not spec.startswith(HUB_PREFIX) and Path(spec).is_dir() and _folder_config(Path(spec)) is None:
        raise ParameterError(
            "model", "its config.json is damaged (not a JSON object); write it again with save_pretrained",
            spec,
        )  # fmt: skip
    try:
        return transformers.AutoConfig.from_pretrained(source, **options)
    except Exception as error:
        raise ParameterError("model", f"cannot read its config ({_first_line(error)})", spec) from error


def _model_class(transformers: Any, config: Any, spec: str) -> Any:
    from vitcam_cli.models.hf_weights import ARCHITECTURES, EMBEDDERS, SUPPORTED_CLASSES

    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise ParameterError("model", f"its config.json names no architectures; {SUPPORTED_CLASSES}", spec)
    if architectures[0] not in ARCHITECTURES + EMBEDDERS:
        raise ParameterError("model", f"{architectures[0]} is not supported; {SUPPORTED_CLASSES}", spec)
    return getattr(transformers, architectures[0])


def _read_processor(transformers: Any, spec: str, source: str, options: dict[str, Any]) -> Any:
    from vitcam_cli.models.hf_processor import PROCESSOR_FILE

    try:
        return transformers.AutoImageProcessor.from_pretrained(source, **options)
    except Exception as error:
        raise ParameterError(
            "model",
            f"cannot read its image processor ({_first_line(error)}); save it next to the model with "
            f"processor.save_pretrained ({PROCESSOR_FILE})",
            spec,
        ) from error


def _read_model(model_class: Any, config: Any, spec: ModelSpec, source: str, options: dict[str, Any]) -> Any:
    if not spec.pretrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights are the same every run
            return model_class(config)
    try:
        model, info = model_class.from_pretrained(
            source, config=config, dtype=torch.float32, output_loading_info=True, **options
        )
    except Exception as error:
        raise ParameterError(
            "model",
            f"cannot load its weights ({_first_line(error)}); a save_pretrained folder holds "
            "model.safetensors next to config.json",
            spec.name,
        ) from error
    missing = _without_pooler(model, sorted(info.get("missing_keys") or []))
    if missing:  # transformers would fill them with random values
        raise ParameterError(
            "model",
            f"its weights lack {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: the weights "
            "file is incomplete or belongs to another configuration",
            spec.name,
        )
    return model


def _without_pooler(model: nn.Module, missing: list[str]) -> list[str]:
    """A ViTModel whose weights lack only its pooler (DINO's ViTs ship without it) is the model built
    with ``add_pooling_layer=False``: its embedding is then the final layernorm's CLS token."""
    if type(model).__name__ != "ViTModel" or not missing or any(not k.startswith("pooler.") for k in missing):
        return missing
    model.pooler = None
    return []


def _refuse_timm_options(spec: ModelSpec) -> None:
    for parameter, value, why in (
        ("checkpoint", spec.checkpoint, "a transformers model carries its weights in its folder"),
        ("num_classes", spec.num_classes, "a transformers model's classes come from its config"),
        ("img_size", spec.img_size, "a transformers model's input size comes from its image processor"),
    ):
        if value is not None:
            raise ParameterError(parameter, f"does not apply: {why}", value)


def load(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Read the config, image processor and weights, convert to timm and check the logits agree."""
    _refuse_timm_options(spec)
    transformers = _import_transformers(spec.name)
    source, revision = _source(spec.name)
    options: dict[str, Any] = {"revision": revision} if revision else {}
    if spec.name.startswith(HUB_PREFIX) and _offline(spec.name, source, revision):
        options["local_files_only"] = True
    with _quiet(transformers):
        config = _read_config(transformers, spec.name, source, options)
        model_class = _model_class(transformers, config, spec.name)
        processor = _read_processor(transformers, spec.name, source, options)
        model = _read_model(model_class, config, spec, source, options)
    loaded = wrap(model, device, spec.name, image_processor=processor)
    loaded.info |= {"pretrained": spec.pretrained}
    return loaded


def _processor_for(model: nn.Module, name: str) -> Any:
    """The image processor saved with the model (its folder or Hub id)."""
    source = str(getattr(model, "name_or_path", "") or "")
    if not source:
        raise ParameterError(
            "image_processor",
            "is needed: this transformers model was not loaded from a folder or Hub id; pass "
            "AutoImageProcessor.from_pretrained(...) for it",
        )
    transformers = _import_transformers(name)
    return _read_processor(transformers, name, source, {"local_files_only": not Path(source).is_dir()})


def _input_size(model: nn.Module, data_config: dict[str, Any], name: str) -> tuple[int, int]:
    """The processor's output size, checked against what the model takes."""
    from vitcam_cli.models.hf_weights import INTERPOLATING, pair

    config = model.config
    size = (int(data_config["input_size"][1]), int(data_config["input_size"][2]))
    patch = pair(config.patch_size)
    fixed = type(model).__name__ not in INTERPOLATING
    if fixed and size != pair(config.image_size):
        raise ParameterError(
            "model",
            f"its image processor makes {size[0]}x{size[1]} inputs but the model takes "
            f"{'x'.join(map(str, pair(config.image_size)))} (image_size in config.json); the two configs "
            "do not belong together",
            name,
        )
    if size[0] % patch[0] or size[1] % patch[1] or int(config.num_channels) != len(data_config["mean"]):
        raise ParameterError(
            "model",
            f"its image processor makes {len(data_config['mean'])}x{size[0]}x{size[1]} inputs, which do not "
            f"fit the model's {config.num_channels} channels and {patch[0]}x{patch[1]} patches",
            name,
        )
    return size


def _embedding(model: nn.Module) -> tuple[str, Callable[[Any], Tensor]] | None:
    """A base model's embedding as its class defines it: a one-line description and how to read it from
    the model's output; None for a classifier, whose output is its logits."""
    architecture = type(model).__name__
    if architecture == "ViTModel" and model.pooler is None:
        return (
            "the final layernorm's CLS token of ViTModel (last_hidden_state[:, 0]): the model has no pooling "
            "layer, so no pooler_output",
            lambda outputs: outputs.last_hidden_state[:, 0],
        )
    if architecture not in EMBEDDINGS:
        return None
    field, what = EMBEDDINGS[architecture]
    what = what.format(act=getattr(model.config, "pooler_act", ""))
    return f"transformers' {field} of {architecture}: {what}", attrgetter(field)


@torch.inference_mode()
def _check_probe(
    model: nn.Module, converted: nn.Module, size: tuple[int, int], name: str, read: Callable[[Any], Tensor]
) -> None:
    """The converted model must give the transformers model's own output (``read`` from its forward's
    result: logits, or the embedding) on a random image."""
    device = next(model.parameters()).device
    probe = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(0))
    expected = read(model(pixel_values=probe.to(device))).float().cpu()
    actual = converted(probe)
    if not torch.allclose(actual, expected, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE):
        difference = float((actual - expected).abs().max())
        raise UnsupportedModelError(
            f"{name}: its timm conversion gives other outputs than transformers' forward (by "
            f"{difference:.2g}); this configuration of the model is not supported"
        )


def _class_names(config: Any) -> list[str]:
    labels = config.id2label
    return [str(labels.get(i, labels.get(str(i), i))) for i in range(len(labels))]


def wrap(
    model: nn.Module, device: torch.device | str = "cpu", name: str | None = None, image_processor: Any = None
) -> LoadedModel:
    """A transformers classifier or embedding model in memory, converted to its timm equivalent and ready
    to explain."""
    from timm.data import create_transform

    from vitcam_cli.engine.stages import model_layout
    from vitcam_cli.models.hf_processor import data_config as processor_data_config
    from vitcam_cli.models.hf_weights import to_timm

    architecture = type(model).__name__
    name = name or str(getattr(model, "name_or_path", "") or architecture)
    if next(model.parameters()).dtype != torch.float32:
        raise ParameterError("model", "load it in float32 (dtype=torch.float32); {precision} sets compute")
    processor = image_processor if image_processor is not None else _processor_for(model, name)
    data_config = processor_data_config(processor, name)
    size = _input_size(model, data_config, name)
    model.eval()
    try:
        converted = to_timm(model, size)
    except (KeyError, RuntimeError) as error:
        raise UnsupportedModelError(
            f"{name}: its weights do not fit the {architecture} its config describes ({_first_line(error)})"
        ) from error
    embedding = _embedding(model)
    description, read = embedding if embedding is not None else (None, attrgetter("logits"))
    _check_probe(model, converted, size, name, read)
    layout = model_layout(converted)
    converted.to(device)
    class_names = [] if description is not None else _class_names(model.config)
    info = {
        "model": name,
        "architecture": architecture,
        "library": "transformers",
        "checkpoint": None,
        "pretrained": None,
        "num_classes": len(class_names),
        "input_size": list(data_config["input_size"]),
        "grid": list(layout.grid),
        "prefix_tokens": layout.num_prefix,
    } | ({"embedding": description} if description is not None else {})
    transform = create_transform(**data_config, is_training=False)
    loaded = LoadedModel(
        converted, name, layout, data_config, transform, class_names, [], info, embedding=description
    )
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    return loaded.with_reading("sigmoid") if multi_label and description is None else loaded
