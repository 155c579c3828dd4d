"""Metrics that need the model again: ADCC's re-explanation, insertion/deletion's forward passes, boxes.

Works for any saliency method. Every per-(image, class) value comes back flattened to (B*T,), in the
order of ``explanation.classes.flatten()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from vitcam_cli.methods.base import Explanation, SaliencyMethod
from vitcam_cli.metrics import authors
from vitcam_cli.metrics.adcc import adcc_parts, masked_inputs, scale_to_input
from vitcam_cli.metrics.insertion_deletion import area_under, curves
from vitcam_cli.metrics.localization import BoxMasks, discrimination, energy_in_box, pointing_game
from vitcam_cli.targets import Reading


@dataclass(frozen=True)
class MetricSettings:
    adcc: bool = True
    insertion_deletion: bool = False
    steps: int = 20
    baseline: str = "blur"
    forward_batch: int = 64  # images per forward pass for the insertion/deletion curves
    protocol: str = "poppi"  # or "authors": the ViT-ReciproCAM authors' ADCC and DAUC/IAUC


def measure(
    method: SaliencyMethod,
    model: nn.Module,
    images: Tensor,
    explanation: Explanation,
    settings: MetricSettings,
    boxes: BoxMasks | None = None,
) -> dict[str, Tensor]:
    """Per (image, class) metrics of ``explanation`` of ``images`` (B, C, H, W).

    ``boxes``, when given, holds each image's ground-truth boxes in input pixels: it adds the pointing
    game and energy-in-box, and with labelled boxes the discrimination. ``settings.protocol`` chooses how
    ADCC and insertion/deletion are computed: ``poppi`` (vitcam's) or ``authors`` (see ``authors.py``).
    """
    size = (images.shape[-2], images.shape[-1])
    saliency = scale_to_input(explanation.maps, size).flatten(0, 1)  # (B*T, H, W)
    probability = method.reading.probability(explanation.outputs, explanation.classes).flatten()
    repeated = images.repeat_interleave(explanation.classes.shape[1], dim=0)
    measured = _authors if settings.protocol == "authors" else _poppi
    values = measured(_Batch(method, model, repeated, explanation, settings, saliency, probability))
    if boxes is not None:
        target, every, labelled = boxes.for_classes(explanation.classes)
        values["pointing_game"] = pointing_game(saliency, target)
        values["energy_in_box"] = energy_in_box(saliency, target)
        if bool(labelled.any()):
            values["discrimination"] = discrimination(saliency, target, every, labelled)
    return {name: value.float() for name, value in values.items()}


def _probability_of(model: nn.Module, reading: Reading) -> Callable[[Tensor, Tensor], Tensor]:
    def probability_of(batch_images: Tensor, batch_classes: Tensor) -> Tensor:
        return reading.probability(model(batch_images), batch_classes.view(-1, 1)).squeeze(1)

    return probability_of


@dataclass
class _Batch:
    """What a protocol measures: the method and model, the images once per explained class, the
    explanation, the settings, the maps scaled and upsampled to the input, and the class probabilities."""

    method: SaliencyMethod
    model: nn.Module
    images: Tensor
    explanation: Explanation
    settings: MetricSettings
    saliency: Tensor
    probability: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return (self.images.shape[-2], self.images.shape[-1])

    @property
    def classes(self) -> Tensor:
        return self.explanation.classes.flatten()

    def again(self, masked: Tensor) -> Explanation:
        """The method on the masked images, for the same classes."""
        return self.method(masked, lambda _values: self.classes.view(-1, 1))

    def target_probability(self, explanation: Explanation) -> Tensor:
        """(n,) the probability of each image's one target (``Reading.probability``)."""
        return self.method.reading.probability(explanation.outputs, self.classes.view(-1, 1)).squeeze(1)


def _poppi(batch: _Batch) -> dict[str, Tensor]:
    """ADCC on maps upsampled bilinearly and clipped; insertion/deletion over pixel fractions."""
    settings, saliency, classes = batch.settings, batch.saliency, batch.classes
    values: dict[str, Tensor] = {}
    if settings.adcc:
        again = batch.again(masked_inputs(batch.images, saliency))
        masked_saliency = scale_to_input(again.maps[:, 0], batch.size)
        masked_probability = batch.target_probability(again)
        values |= adcc_parts(batch.probability, masked_probability, saliency, masked_saliency)
    if settings.insertion_deletion:
        insertion, deletion = curves(
            _probability_of(batch.model, batch.method.reading), batch.images, saliency, classes,
            settings.steps, settings.baseline, settings.forward_batch,
        )  # fmt: skip
        values |= {"insertion": area_under(insertion), "deletion": area_under(deletion)}
    return values


def _authors(batch: _Batch) -> dict[str, Tensor]:
    """ADCC on token-grid maps with a bicubic, unclipped mask; insertion/deletion over 32-pixel cells."""
    settings, classes = batch.settings, batch.classes
    grid = authors.grid_scaled(batch.explanation.maps.flatten(0, 1))  # (B*T, rows, cols)
    values: dict[str, Tensor] = {}
    if settings.adcc:
        again = batch.again(masked_inputs(batch.images, authors.bicubic_masks(grid, batch.size)))
        masked_probability = batch.target_probability(again)
        values |= authors.adcc_parts(batch.probability, masked_probability, grid, again.maps[:, 0])
    if settings.insertion_deletion:
        insertion, deletion = authors.curves(
            _probability_of(batch.model, batch.method.reading),
            batch.images,
            grid,
            classes,
            batch.probability,
            settings.forward_batch,
        )
        values |= {"insertion": authors.area(insertion), "deletion": authors.area(deletion)}
    return values
