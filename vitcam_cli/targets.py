"""Which classes to explain for each image: the top prediction(s), fixed classes, or labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TargetRequest:
    top_k: int = 1
    classes: tuple[int, ...] = ()
    from_labels: bool = False

    @property
    def per_image(self) -> int:
        if self.classes:
            return len(self.classes)
        return 1 if self.from_labels else self.top_k

    @property
    def named_by_class(self) -> bool:
        """Whether outputs carry the class in their names: when an image may get several classes."""
        return self.from_labels or self.per_image > 1

    def describe(self) -> dict[str, object]:
        if self.classes:
            return {"mode": "classes", "classes": list(self.classes)}
        if self.from_labels:
            return {"mode": "labels"}
        return {"mode": "top-k", "k": self.top_k}

    def chooser(self, labels: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """A function from (B, C) logits to the (B, T) classes to explain."""

        def choose(logits: Tensor) -> Tensor:
            if self.classes:
                return torch.tensor(self.classes, device=logits.device).expand(logits.shape[0], -1)
            if self.from_labels:
                assert labels is not None, "labels are required for from_labels targets"
                return labels.to(logits.device).view(-1, 1)
            return logits.topk(self.top_k, dim=-1).indices

        return choose


def ranks(logits: Tensor, classes: Tensor) -> Tensor:
    """1-based rank of each class in its row's prediction (1 = the top class)."""
    chosen = logits.gather(1, classes)
    return (logits.unsqueeze(1) > chosen.unsqueeze(-1)).sum(-1) + 1
