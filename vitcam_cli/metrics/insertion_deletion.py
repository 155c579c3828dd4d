"""Insertion and deletion AUC (Petsiuk et al., 2018): does the class score follow the map's ranking?

Pixels are ranked by saliency (the scaled map upsampled to the input). Deletion replaces the top
fraction f of pixels with a baseline and watches the class probability fall; insertion starts from
the baseline and restores the top fraction f. Each curve is sampled at f = 0, 1/steps, ..., 1 and its
area (trapezoid rule over f) is the score: low deletion and high insertion mean a faithful map.
The baseline is a blurred copy of the input (Gaussian, sigma 5 px, as in the paper) or zeros (the
dataset mean, on normalised inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from vitcam_cli.defaults import DELETION_BASELINES as BASELINES


def baseline_images(images: Tensor, baseline: str) -> Tensor:
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")


def reveal_order(saliency: Tensor) -> Tensor:
    """Rank of every pixel (B, H, W): 0 for the most salient; ties broken by position, deterministically."""
    flat = saliency.flatten(1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(saliency)


def curves(
    probability_of: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    saliency: Tensor,
    classes: Tensor,
    steps: int,
    baseline: str,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Insertion and deletion curves (B, steps + 1) of the class probability.

    ``probability_of(images, classes)`` returns the probability of ``classes`` (n,) for ``images``
    (n, C, H, W), as ``Reading.probability`` reads it. ``saliency`` is (B, H, W), ``classes`` (B,).
    """
    batch, pixels = images.shape[0], saliency[0].numel()
    ranks = reveal_order(saliency)
    base = baseline_images(images, baseline)
    fractions = torch.arange(steps + 1, device=images.device) / steps
    counts = (fractions * pixels).round().long()  # how many top pixels are revealed (insertion) / removed
    jobs = [(b, s) for b in range(batch) for s in range(steps + 1)]
    insertion = torch.empty(batch, steps + 1, device=images.device)
    deletion = torch.empty(batch, steps + 1, device=images.device)
    for begin in range(0, len(jobs), batch_size):
        chunk = jobs[begin : begin + batch_size]
        index = torch.tensor([b for b, _ in chunk], device=images.device)
        step = torch.tensor([s for _, s in chunk], device=images.device)
        top = (ranks[index] < counts[step].view(-1, 1, 1)).unsqueeze(1)
        inserted = torch.where(top, images[index], base[index])
        deleted = torch.where(top, base[index], images[index])
        scores = probability_of(torch.cat([inserted, deleted]), classes[index].repeat(2))
        insertion[index, step] = scores[: len(chunk)].float()
        deletion[index, step] = scores[len(chunk) :].float()
    return insertion, deletion


def area_under(curve: Tensor) -> Tensor:
    """Trapezoid area of curves sampled evenly on [0, 1]: (B, steps + 1) -> (B,)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)
