"""From the logits of masked copies to saliency values for the requested classes."""

from __future__ import annotations

import torch
from torch import Tensor

SCORES = ("softmax", "logit")


def class_scores(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    """Score of ``classes`` (n, T) in each row of ``logits`` (n, C), in float32."""
    logits = logits.float()
    values = torch.softmax(logits, dim=-1) if score == "softmax" else logits
    return values.gather(1, classes)


def auto_mask_batch(num_tokens: int, dim: int, heads: int, device: torch.device, itemsize: int) -> int:
    """How many masked sequences to run at once so that activations stay within a fixed budget.

    A pre-norm block holds about 14 token-by-dim tensors (residual, norms, q/k/v, MLP hidden at 4x)
    plus, on paths without fused attention, two heads-by-tokens-by-tokens matrices.
    """
    per_sequence = itemsize * (14 * num_tokens * dim + 2 * heads * num_tokens * num_tokens)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(free * 0.3)
    else:
        budget = 1 << 30
    return max(1, min(4096, budget // max(per_sequence, 1)))
