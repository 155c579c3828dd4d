"""How many masked copies an engine runs at once."""

from __future__ import annotations

import torch


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
