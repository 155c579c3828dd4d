"""Metrics that need the model again: ADCC's re-explanation, insertion/deletion's forward passes, boxes.

Works for any saliency method. Every per-(image, class) value comes back flattened to (B*T,), in the
order of ``explanation.classes.flatten()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vitcam_cli.methods.base import Explanation, SaliencyMethod
from vitcam_cli.metrics.adcc import adcc_parts, masked_inputs, scale_to_input
from vitcam_cli.metrics.insertion_deletion import area_under, curves
from vitcam_cli.metrics.localization import energy_in_box, pointing_game


@dataclass(frozen=True)
class MetricSettings:
    adcc: bool = True
    insertion_deletion: bool = False
    steps: int = 20
    baseline: str = "blur"
    forward_batch: int = 64  # images per forward pass for the insertion/deletion curves


def _class_probability(logits: Tensor, classes: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=-1).gather(1, classes.view(-1, 1)).squeeze(1)


def measure(
    method: SaliencyMethod,
    model: nn.Module,
    images: Tensor,
    explanation: Explanation,
    settings: MetricSettings,
    inside_boxes: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per (image, class) metrics of ``explanation`` of ``images`` (B, C, H, W).

    ``inside_boxes`` (B, H, W), when given, marks the pixels inside the image's ground-truth boxes.
    """
    per_image = explanation.classes.shape[1]
    size = (images.shape[-2], images.shape[-1])
    classes = explanation.classes.flatten()
    saliency = scale_to_input(explanation.maps, size).flatten(0, 1)  # (B*T, H, W)
    probability = torch.softmax(explanation.logits, -1).gather(1, explanation.classes).flatten()
    repeated = images.repeat_interleave(per_image, dim=0)
    values: dict[str, Tensor] = {}
    if settings.adcc:
        masked = masked_inputs(repeated, saliency)
        again = method(masked, lambda _logits: classes.view(-1, 1))
        masked_saliency = scale_to_input(again.maps[:, 0], size)
        masked_probability = _class_probability(again.logits, classes)
        values |= adcc_parts(probability, masked_probability, saliency, masked_saliency)
    if settings.insertion_deletion:

        def probability_of(batch_images: Tensor, batch_classes: Tensor) -> Tensor:
            return _class_probability(model(batch_images), batch_classes)

        insertion, deletion = curves(
            probability_of, repeated, saliency, classes,
            settings.steps, settings.baseline, settings.forward_batch,
        )  # fmt: skip
        values |= {"insertion": area_under(insertion), "deletion": area_under(deletion)}
    if inside_boxes is not None:
        mask = inside_boxes.repeat_interleave(per_image, dim=0)
        values["pointing_game"] = pointing_game(saliency, mask)
        values["energy_in_box"] = energy_in_box(saliency, mask)
    return {name: value.float() for name, value in values.items()}
