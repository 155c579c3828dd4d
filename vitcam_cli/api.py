"""The Python API: an ``Explainer`` turns images into ``Explanations`` in a line.

    import timm
    from vitcam_cli import Explainer

    explainer = Explainer("fashion-vit", method="reciprocam")   # or a timm model object
    result = explainer(["a.jpg", "b.png"])  # paths, PIL images, or a preprocessed (B, 3, H, W) tensor
    result.maps          # (B, T, h, w) raw scores on the token grid, as --save-maps writes them
    result.overlays()    # PIL overlays, as the command line renders them
    explainer.scores(result)   # ADCC and its parts per image and class

Images go through exactly what ``vitcam explain`` does to them (decoding, the model's preprocessing,
the same method and engine), so a map from here equals the one the command line saves for that file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vitcam_cli.analysis.audit import AuditResult, AuditSettings, run_audit
from vitcam_cli.analysis.evidence import box_cells
from vitcam_cli.data import Box, DecodePlan, describe_decode_error
from vitcam_cli.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_COLORMAP,
    DEFAULT_METHOD,
    DEFAULT_OVERLAY_SIDE,
    PROTOCOLS,
)
from vitcam_cli.errors import MissingFileError, NonFiniteError, ParameterError, VitcamError
from vitcam_cli.methods.base import Explanation
from vitcam_cli.methods.factory import canonical_name, create_method
from vitcam_cli.metrics.adcc import scale_to_input
from vitcam_cli.metrics.localization import BoxMasks
from vitcam_cli.metrics.measure import MetricSettings, measure
from vitcam_cli.models import LoadedModel, ModelSpec, read_class_names, wrap_model
from vitcam_cli.outputs.overlay import render_overlay, view_in
from vitcam_cli.preprocessing import Preprocessing, Size, View
from vitcam_cli.runner import input_boxes
from vitcam_cli.runtime import autocast, check_precision, resolve_device
from vitcam_cli.targets import TargetRequest

ImageInput = str | Path | Image.Image
AUDIT_BATCH = 16  # images explained at once by ``Explainer.audit``


@dataclass
class Source:
    """What an explained image was: its original's size, a copy for overlays and the model's view."""

    size: Size  # the original's (width, height), after EXIF orientation
    copy: np.ndarray  # (h, w, 3) uint8, longest side at most 768 px (the command line's default)
    view: View | None  # the model's view, in the original's pixels


@dataclass
class Explanations:
    """Explanations of a batch: ``T`` explained classes for each of ``B`` images."""

    maps: Tensor  # (B, T, h, w) float32 raw saliency on the token grid
    classes: Tensor  # (B, T) class indices, or indices of the similarity targets
    class_names: list[list[str]]  # (B, T) class names, or the targets' names (reference paths)
    probabilities: Tensor  # (B, T) of the unmasked prediction: softmax, sigmoid, or cosine similarity
    method: str  # the method's canonical name
    inputs: Tensor = field(repr=False)  # (B, 3, H, W) the model's input, on its device
    sources: list[Source] = field(repr=False)
    raw: Explanation = field(repr=False)  # the method's own result, on the model's device
    chosen: Tensor | None = None  # (B, T) which targets are real: a threshold pads images with fewer

    def heatmaps(self, original: bool = False) -> Tensor | list[np.ndarray]:
        """Maps min-max scaled to [0, 1] and upsampled bilinearly: (B, T, H, W) at the model's input
        size, or with ``original`` one (T, height, width) array per image on the original's pixels
        (0 where preprocessing cropped the original away)."""
        if not original:
            return scale_to_input(self.maps, (self.inputs.shape[-2], self.inputs.shape[-1]))
        return [_on_original(maps, source) for maps, source in zip(self.maps, self.sources, strict=True)]

    def overlays(self, colormap: str = DEFAULT_COLORMAP, alpha: float = DEFAULT_ALPHA) -> list[Image.Image]:
        """One overlay per (image, class), in the order of ``classes.flatten()``, drawn as the command line
        draws them (longest side at most 768 px)."""
        pictures = []
        for maps, source in zip(self.maps, self.sources, strict=True):
            view = view_in((source.copy.shape[1], source.copy.shape[0]), source.size, source.view)
            pictures += [Image.fromarray(render_overlay(source.copy, m, view, colormap, alpha)) for m in maps]
        return pictures


def _on_original(maps: Tensor, source: Source) -> np.ndarray:
    width, height = source.size
    x0, y0, x1, y1 = source.view or (0.0, 0.0, float(width), float(height))
    view_w, view_h = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    scaled = scale_to_input(maps, (view_h, view_w))
    canvas = torch.zeros(maps.shape[0], height, width)
    left, top = round(x0), round(y0)
    src_x, src_y, dst_x, dst_y = max(0, -left), max(0, -top), max(0, left), max(0, top)
    w, h = min(width - dst_x, view_w - src_x), min(height - dst_y, view_h - src_y)
    if w > 0 and h > 0:
        canvas[:, dst_y : dst_y + h, dst_x : dst_x + w] = scaled[:, src_y : src_y + h, src_x : src_x + w]
    return canvas.numpy()


def _names(class_names: Sequence[str] | Path | str | None) -> tuple[list[str], str] | None:
    """Class names (or similarity targets' names) given as a list or a file, and where they came from."""
    if class_names is None:
        return None
    if isinstance(class_names, Path | str):
        return read_class_names(Path(class_names)), str(class_names)
    return list(class_names), "class_names"


class Explainer:
    """A model and a saliency method, ready to explain images.

    ``model`` is a timm model object or any model string of the command line (a timm name, ``hf-hub:``,
    ``local-dir:``, a folder, or a bundled ``fashion-vit``, ``fashion-swin``); ``method`` any method string
    (``reciprocam``, ``reciprocam:otx:single``, ``relevance``, ...). A transformers classifier object
    works too (``hf:ORG/NAME`` and ``save_pretrained`` folders as strings); ``image_processor`` is its
    image processor when the model was not loaded from a folder or Hub id. Zero-shot: ``open_clip:ARCH``
    (with ``pretrained_tag``) or an open_clip model object, with ``texts`` as the classes and ``prompts``
    as the templates they are filled into. A model that yields an embedding (a headless timm model,
    ``num_classes=0``, a transformers base model, an open_clip tower without texts) explains its
    similarity to ``references`` (paths or PIL images, embedded by the model itself) or to the rows of
    ``embeddings`` (an N x D array computed elsewhere, named by ``class_names``).
    """

    def __init__(
        self,
        model: nn.Module | str,
        method: str = DEFAULT_METHOD,
        *,
        device: str = "auto",
        precision: str = "fp32",
        engine: str = "auto",
        mask_batch: int | None = None,
        checkpoint: Path | None = None,
        pretrained: bool = True,
        num_classes: int | None = None,
        img_size: tuple[int, int] | None = None,
        class_names: Sequence[str] | Path | None = None,
        image_processor: object = None,
        pretrained_tag: str | None = None,
        texts: Sequence[str] | None = None,
        prompts: Sequence[str] = (),
        references: Sequence[ImageInput] | None = None,
        embeddings: np.ndarray | Tensor | None = None,
    ) -> None:
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.precision = precision
        if isinstance(model, nn.Module):
            self.loaded: LoadedModel = wrap_model(model, self.device, image_processor=image_processor)
            if texts is not None or prompts:
                self.loaded = self.loaded.with_texts(texts or self.loaded.class_names, prompts)
        else:
            file = Path(class_names) if isinstance(class_names, Path | str) else None
            given = () if file is not None or class_names is None else tuple(class_names)
            zero_shot = {"texts": given if texts is None else tuple(texts), "prompts": tuple(prompts)}
            spec = ModelSpec(
                model, checkpoint, pretrained, num_classes, img_size, file, pretrained_tag, **zero_shot
            )
            self.loaded = spec.load(self.device)
        self.preprocessing = Preprocessing(self.loaded.transform)
        self.plan = DecodePlan(self.preprocessing, DEFAULT_OVERLAY_SIDE)
        names = _names(class_names)
        if self.loaded.embedding is not None or references is not None or embeddings is not None:
            self.loaded = self._similarity(references, embeddings, names)
        elif names is not None:
            self.loaded = self.loaded.named(*names)
        if not self.loaded.class_names:
            raise ParameterError("texts", "is required: this model's classes are texts (zero-shot)")
        self.method_name = canonical_name(method)
        self.method = create_method(method, self.loaded, mask_batch, engine)

    def _similarity(
        self,
        references: Sequence[ImageInput] | None,
        embeddings: np.ndarray | Tensor | None,
        names: tuple[list[str], str] | None,
    ) -> LoadedModel:
        """The model with similarity targets: ``references`` embedded by the model, or ``embeddings``."""
        if (references is None) == (embeddings is None):
            raise VitcamError(
                "a model that yields an embedding explains its similarity to {references} or to "
                "{embeddings}: pass one of them"
            )
        self.loaded.require_embedding()
        if references is not None:
            inputs, _ = self._inputs(references)
            with torch.inference_mode(), autocast(self.precision, self.device):
                table = self.loaded.model(inputs).float().cpu()
            listed = [references] if isinstance(references, str | Path | Image.Image) else list(references)
            labels = [
                str(ref) if isinstance(ref, str | Path) else f"reference {i}" for i, ref in enumerate(listed)
            ]
            return self.loaded.with_targets(table, labels, {"kind": "references"})
        table = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if table.ndim != 2 or not torch.isfinite(table).all():
            raise ParameterError("embeddings", f"must be a finite N x D array, not {tuple(table.shape)}")
        labels = names[0] if names is not None else [f"embedding {i}" for i in range(len(table))]
        if len(labels) != len(table):
            raise ParameterError(
                "class_names", f"needs {len(table)} names, one per embedding, not {len(labels)}"
            )
        return self.loaded.with_targets(table, labels, {"kind": "embeddings"})

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def __call__(
        self,
        images: Sequence[ImageInput] | ImageInput | Tensor,
        *,
        classes: Sequence[int | str] | None = None,
        top_k: int | None = None,
        labels: Sequence[int | str] | None = None,
        threshold: float | None = None,
    ) -> Explanations:
        """Explain ``images`` for ``classes`` (the same for every image), the ``top_k`` most probable
        classes, each image's label in ``labels``, or every class at or above ``threshold``; by default
        each image's top prediction (every target, for similarity targets)."""
        inputs, sources = self._inputs(images)
        request = self._request(classes, top_k, labels, threshold, inputs.shape[0])
        choose = request.chooser(self._truth(labels))  # outside inference mode: methods with gradients use it
        with torch.inference_mode(), autocast(self.precision, self.device):
            raw = self.method(inputs, choose)
        self._check_finite(raw)
        classes_cpu = raw.classes.cpu()
        values = self.method.reading.values(raw.outputs).cpu()
        names = [[self.class_names[int(c)] for c in row] for row in classes_cpu]
        return Explanations(
            raw.maps.float().cpu(), classes_cpu, names, values.gather(1, classes_cpu), self.method_name,
            inputs, sources, raw, request.chosen(values, classes_cpu),
        )  # fmt: skip

    def audit(
        self,
        images: Sequence[ImageInput],
        *,
        labels: Sequence[int | str] | None = None,
        boxes: Sequence[Sequence[Sequence[float]]] | None = None,
        candidates: int = 10,
        images_per_test: int = 48,
    ) -> AuditResult:
        """What the model relies on across ``images``, as ``vitcam audit`` finds it: each class's evidence
        (labelled, else predicted), shortcut candidates tested by intervention, strategies per class.
        ``boxes``: each image's objects (x1, y1, x2, y2 in the original's pixels): evidence inside them
        is no shortcut. ``result.to_json()`` is findings.json."""
        listed = list(images)
        settings = AuditSettings(candidates, images_per_test)
        settings.check()
        if not listed:
            raise ParameterError("images", "an audit needs at least one image")
        if labels is not None and len(labels) != len(listed):
            raise ParameterError("labels", f"needs one label per image ({len(listed)}), not {len(labels)}")
        if boxes is not None and len(boxes) != len(listed):
            raise ParameterError("boxes", f"needs one list of boxes per image ({len(listed)})", len(boxes))
        checked = None if boxes is None else [[self._box(box) for box in image] for image in boxes]
        maps, classes, inputs, sources = [], [], [], []
        for start in range(0, len(listed), AUDIT_BATCH):
            chunk = listed[start : start + AUDIT_BATCH]
            given = None if labels is None else list(labels[start : start + AUDIT_BATCH])
            result = self(chunk, labels=given)
            maps.append(result.maps[:, 0].numpy())
            classes += [int(c) for c in result.classes[:, 0]]
            inputs.append(result.inputs.cpu())
            sources += result.sources
        stacked = torch.cat(inputs)
        size = (stacked.shape[-2], stacked.shape[-1])
        grid = maps[0].shape[1:]
        inside = None if checked is None else self._audit_boxes(checked, sources, classes, grid, size)
        found = run_audit(
            np.concatenate(maps), classes, self.class_names, lambda indices: stacked[indices].to(self.device),
            self.loaded.model, self.method.reading, size, inside, settings,
        )  # fmt: skip
        found.paths = [
            str(image) if isinstance(image, str | Path) else f"image {i}" for i, image in enumerate(listed)
        ]
        return found

    def _audit_boxes(
        self,
        boxes: list[list[tuple[Box, int | None]]],
        sources: list[Source],
        classes: list[int],
        grid: tuple[int, ...],
        size: tuple[int, int],
    ) -> list[np.ndarray | None]:
        """Each image's share of every cell inside its explained class's boxes (all its boxes when they
        carry no label), in the model's input frame."""
        inside: list[np.ndarray | None] = []
        for image, source, target in zip(boxes, sources, classes, strict=True):
            corners = [box for box, label in image if label in (None, target)]
            placed = input_boxes(corners, source.view, size, *source.size)
            inside.append(box_cells(placed, (grid[0], grid[1]), size) if placed else None)
        return inside

    def scores(
        self,
        result: Explanations,
        *,
        insertion_deletion: bool = False,
        steps: int = 20,
        baseline: str = "blur",
        boxes: Sequence[Sequence[Sequence[Any]]] | None = None,
        protocol: str = "poppi",
    ) -> dict[str, Tensor]:
        """Faithfulness (ADCC and its parts; insertion and deletion AUC on request) and, with ``boxes``
        (x1, y1, x2, y2 in the original's pixels, per image), the pointing game and energy-in-box: each a
        (B, T) tensor, as the command line computes them. ``protocol`` "authors": the ViT-ReciproCAM
        authors' ADCC and insertion/deletion (see ``vitcam_cli.metrics.authors``)."""
        if protocol not in PROTOCOLS:
            raise ParameterError("protocol", f"use one of {', '.join(PROTOCOLS)}", protocol)
        settings = MetricSettings(
            insertion_deletion=insertion_deletion, steps=steps, baseline=baseline, protocol=protocol
        )
        inside = self._inside(result, boxes) if boxes is not None else None
        with torch.inference_mode(), autocast(self.precision, self.device):
            values = measure(self.method, self.loaded.model, result.inputs, result.raw, settings, inside)
        shape = result.classes.shape
        return {name: value.view(shape).cpu() for name, value in values.items()}

    def _inputs(self, images: Sequence[ImageInput] | ImageInput | Tensor) -> tuple[Tensor, list[Source]]:
        """The model's input on its device, and where each image came from."""
        if isinstance(images, Tensor):
            return self._tensor_inputs(images)
        listed = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not listed:
            raise ParameterError("images", "is empty: pass paths, PIL images or a (B, 3, H, W) tensor")
        prepared = [
            self.plan.prepare(image) if isinstance(image, Image.Image) else self._decode(Path(image))
            for image in listed
        ]
        batch = torch.stack([tensor for tensor, _, _ in prepared]).to(self.device)
        sources = [Source(size, copy, self.preprocessing.view(size)) for _, copy, size in prepared]
        return self.preprocessing.finish(batch), sources

    def _decode(self, path: Path) -> tuple[Tensor, np.ndarray, Size]:
        """An image file as the command line decodes it; a missing or unreadable one is a typed error."""
        try:
            return self.plan.decode(path)
        except FileNotFoundError as error:
            raise MissingFileError("images", path) from error
        except Exception as error:  # whatever Pillow or the file system says, as explain's error rows do
            raise ParameterError("images", describe_decode_error(error), path) from error

    def _check_finite(self, raw: Explanation) -> None:
        """Refuse NaN or inf predictions or maps (fp16 overflow, broken weights) rather than return them."""
        bad = ~(torch.isfinite(raw.outputs).all(-1) & torch.isfinite(raw.maps.flatten(1)).all(-1))
        if bad.any():
            which = ", ".join(str(i) for i in bad.nonzero().flatten().tolist()[:5])
            cause = "fp16 overflow: try bf16 or fp32" if self.precision == "fp16" else "broken weights?"
            parameter = "precision" if self.precision == "fp16" else "model"
            value = self.precision if self.precision == "fp16" else self.loaded.spec
            raise NonFiniteError(
                parameter, f"gives NaN or inf predictions or maps for image {which} ({cause})", value
            )

    def _tensor_inputs(self, images: Tensor) -> tuple[Tensor, list[Source]]:
        expected = tuple(self.loaded.input_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ParameterError(
                "images", f"must be (B, {', '.join(map(str, expected))}), not {tuple(images.shape)}"
            )
        if not torch.isfinite(images).all():
            bad = (~torch.isfinite(images.flatten(1))).any(-1).nonzero().flatten().tolist()
            shown = ", ".join(map(str, bad[:5]))
            raise NonFiniteError("images", f"hold NaN or inf values (image {shown}): pass finite pixels")
        mean = torch.tensor(self.loaded.data_config["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.loaded.data_config["std"]).view(1, -1, 1, 1)
        pixels = ((images.detach().float().cpu() * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        size = (expected[2], expected[1])
        sources = [Source(size, picture.permute(1, 2, 0).numpy(), None) for picture in pixels]
        return images.to(self.device), sources

    def _request(
        self,
        classes: Sequence[int | str] | None,
        top_k: int | None,
        labels: Sequence[int | str] | None,
        threshold: float | None,
        count: int,
    ) -> TargetRequest:
        given = [classes is not None, top_k is not None, labels is not None, threshold is not None]
        if sum(given) > 1:
            raise VitcamError(
                "{classes}, {top_k}, {labels} and {threshold} choose the targets: pass only one of them"
            )
        if top_k is not None and not 1 <= top_k <= len(self.class_names):
            raise ParameterError("top_k", f"must be between 1 and {len(self.class_names)}", top_k)
        if labels is not None:
            if len(labels) != count:
                raise ParameterError("labels", f"needs one label per image ({count}), not {len(labels)}")
            return TargetRequest(from_labels=True)
        chosen = tuple(dict.fromkeys(self.loaded.resolve_class(str(value)) for value in classes or ()))
        every = self.loaded.reading.similarity and not any(given)
        return TargetRequest(top_k=top_k or 1, classes=chosen, threshold=threshold, every=every)

    def _truth(self, labels: Sequence[int | str] | None) -> Tensor | None:
        if labels is None:
            return None
        return torch.tensor([self.loaded.resolve_class(str(label)) for label in labels])

    def _inside(self, result: Explanations, boxes: Sequence[Sequence[Sequence[Any]]]) -> BoxMasks:
        """Boxes per image: (x1, y1, x2, y2) in the original's pixels, or (x1, y1, x2, y2, label) with a
        class index or name: labelled boxes make the localisation metrics class-specific."""
        if len(boxes) != len(result.sources):
            raise ParameterError("boxes", f"needs one list of boxes per image ({len(result.sources)})")
        size = (result.inputs.shape[-2], result.inputs.shape[-1])
        moved = []
        for image, source in zip(boxes, result.sources, strict=True):
            checked = [self._box(box) for box in image]
            placed = input_boxes([box for box, _ in checked], source.view, size, *source.size)
            moved.append(list(zip(placed, [label for _, label in checked], strict=True)))
        return BoxMasks.build(moved, size, self.device)

    def _box(self, box: Sequence[Any]) -> tuple[Box, int | None]:
        """(x1, y1, x2, y2) or (x1, y1, x2, y2, label) checked as a boxes file's row is: four finite
        numbers with x1 < x2 and y1 < y2, the label a class index or name."""
        if len(box) not in (4, 5):
            raise ParameterError("boxes", "each box is (x1, y1, x2, y2) or (x1, y1, x2, y2, label)", box)
        try:
            x1, y1, x2, y2 = (float(value) for value in box[:4])
        except (TypeError, ValueError) as error:
            raise ParameterError("boxes", "coordinates must be numbers", box) from error
        if not all(math.isfinite(value) for value in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            raise ParameterError("boxes", "needs finite coordinates with x1 < x2 and y1 < y2", box)
        label = self.loaded.resolve_class(str(box[4])) if len(box) == 5 else None
        return (x1, y1, x2, y2), label
