"""ADCC (Poppi et al., 2021): Average Drop, Coherency and Complexity, and their harmonic mean.

Definitions, per image and explained class c, with the map s min-max scaled to [0, 1] and upsampled
(bilinear) to the input size, and x' = x * s on the normalised input tensor:

- average drop  = max(0, p_c(x) - p_c(x')) / p_c(x)            (softmax probabilities)
- increase      = 1 if p_c(x') > p_c(x) else 0                 (its mean is the "increase in confidence")
- coherency     = (Pearson(s(x), s(x')) + 1) / 2               (s(x') re-explains x' for the same class c)
- complexity    = mean(s(x))
- ADCC          = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - average drop))

A dataset's ADCC is reported both ways: the harmonic mean of the averaged parts, and the mean of the
per-image ADCC values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PARTS = ("adcc", "average_drop", "increase", "coherency", "complexity")
ADCC_DEFINITION = (
    "ADCC (Poppi et al., 2021) = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - average drop)): the map s "
    "is min-max scaled and upsampled, x' = x * s on the normalised input, average drop = "
    "max(0, p(x) - p(x'))/p(x), coherency = (Pearson(s(x), s(x')) + 1)/2 with x' re-explained for the "
    "same class, complexity = mean(s). 'adcc' combines the averaged parts; 'adcc_mean' averages the "
    "per-image ADCC."
)


def scale_to_input(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Min-max scale each (rows, cols) map to [0, 1], then upsample it bilinearly to ``size``.

    ``maps`` is (..., rows, cols); a constant map becomes all zeros.
    """
    flat = maps.float().flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scaled = torch.where(high > low, (flat - low) / (high - low).clamp_min(1e-12), torch.zeros_like(flat))
    grid = scaled.reshape(-1, 1, *maps.shape[-2:])
    upsampled = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return upsampled.reshape(*maps.shape[:-2], *size).clamp(0.0, 1.0)


def masked_inputs(images: Tensor, saliency: Tensor) -> Tensor:
    """x' = x * s: (B, C, H, W) normalised images times (B, H, W) scaled, upsampled maps."""
    return images * saliency.unsqueeze(1).to(images.dtype)


def average_drop(probability: Tensor, masked_probability: Tensor) -> Tensor:
    return (probability - masked_probability).clamp_min(0.0) / probability.clamp_min(1e-12)


def increase_in_confidence(probability: Tensor, masked_probability: Tensor) -> Tensor:
    return (masked_probability > probability).float()


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of maps (B, ...); 0 when either map is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.norm(dim=1) * b.norm(dim=1)).float()
    numerator = (a * b).sum(1).float()
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), torch.zeros_like(numerator))


def coherency(saliency: Tensor, masked_saliency: Tensor) -> Tensor:
    return (pearson(saliency, masked_saliency) + 1.0) / 2.0


def complexity(saliency: Tensor) -> Tensor:
    return saliency.flatten(1).float().mean(1)


def adcc(drop: Tensor, coherence: Tensor, complexity_: Tensor) -> Tensor:
    """3 / (1/coherency + 1/(1 - complexity) + 1/(1 - drop)); 0 where any term is 0 (its limit)."""
    terms = torch.stack([coherence, 1.0 - complexity_, 1.0 - drop])
    positive = (terms > 0).all(0)
    return torch.where(positive, 3.0 / (1.0 / terms.clamp_min(1e-12)).sum(0), torch.zeros_like(drop))


def adcc_parts(
    probability: Tensor, masked_probability: Tensor, saliency: Tensor, masked_saliency: Tensor
) -> dict[str, Tensor]:
    """Every part, per image: probabilities (B,) and scaled, upsampled maps (B, H, W)."""
    drop = average_drop(probability, masked_probability)
    coherence = coherency(saliency, masked_saliency)
    complex_ = complexity(saliency)
    return {
        "adcc": adcc(drop, coherence, complex_),
        "average_drop": drop,
        "increase": increase_in_confidence(probability, masked_probability),
        "coherency": coherence,
        "complexity": complex_,
    }
