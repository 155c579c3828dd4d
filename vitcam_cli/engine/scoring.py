"""From the logits of masked copies to saliency values for the requested classes."""

from __future__ import annotations

import torch
from torch import Tensor


def class_scores(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    """Score of ``classes`` (n, T) in each row of ``logits`` (n, C), in float32.

    ``contrast`` is the class's logit minus the log-sum-exp of all the other classes' logits: how much the
    copy favours the class over the rest, unaffected by evidence shared by all classes.
    """
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=-1).gather(1, classes)
    if score == "logit":
        return logits.gather(1, classes)
    others = logits.unsqueeze(1).expand(-1, classes.shape[1], -1)
    others = others.scatter(2, classes.unsqueeze(-1), float("-inf"))
    return logits.gather(1, classes) - torch.logsumexp(others, dim=-1)


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
