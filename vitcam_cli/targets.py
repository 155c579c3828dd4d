"""What a map scores: a class of a classifier (read through a softmax, or a sigmoid for multi-label
heads), or a target embedding compared by cosine with the model's own embedding (a reference image, a
text or class prototype computed elsewhere).

A ``Reading`` says how a model's outputs are read; the engines and methods call a batch's ``Target``
on the outputs of any copies and get one score per copy and target, whatever kind it is. Which targets
each image gets (its top prediction, fixed ones, labels, a threshold) is a ``TargetRequest``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

READINGS = ("softmax", "sigmoid", "cosine")


def class_scores(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    """Score of ``classes`` (n, T) in each row of ``logits`` (n, C), in float32.

    ``contrast`` is the class's logit minus the log-sum-exp of all the other classes' logits: how much the
    copy favours the class over the rest, unaffected by evidence shared by all classes. ``sigmoid`` reads
    each class on its own, as a multi-label head is trained.
    """
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=-1).gather(1, classes)
    if score == "sigmoid":
        return torch.sigmoid(logits.gather(1, classes))
    if score == "logit":
        return logits.gather(1, classes)
    others = logits.unsqueeze(1).expand(-1, classes.shape[1], -1)
    others = others.scatter(2, classes.unsqueeze(-1), float("-inf"))
    return logits.gather(1, classes) - torch.logsumexp(others, dim=-1)


@dataclass(frozen=True, eq=False)
class Reading:
    """How a model's outputs are read.

    ``softmax``: class logits of a single-label classifier; ``sigmoid``: class logits of a multi-label
    one, each class on its own; ``cosine``: an embedding, compared with each row of ``table`` (K, D),
    the unit embeddings of the run's targets.
    """

    kind: str = "softmax"
    table: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in READINGS or (self.kind == "cosine") != (self.table is not None):
            raise ValueError(f"a {self.kind!r} reading with{'out' * (self.table is None)} a table")

    @property
    def similarity(self) -> bool:
        return self.kind == "cosine"

    def cosines(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """Cosine of each embedding (n, D) with its targets (n, T) of the table, or with every row."""
        assert self.table is not None
        embeddings = F.normalize(outputs.float(), dim=-1)
        table = self.table.to(embeddings.device, embeddings.dtype)
        if targets is None:
            return embeddings @ table.T
        return torch.einsum("nd,ntd->nt", embeddings, table[targets])

    def values(self, outputs: Tensor) -> Tensor:
        """(B, K) what rows report and targets are chosen by: class probabilities, or cosines."""
        if self.kind == "cosine":
            return self.cosines(outputs)
        logits = outputs.float()
        return torch.sigmoid(logits) if self.kind == "sigmoid" else torch.softmax(logits, dim=-1)

    def probability(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """(B, T) the probability of each target that ADCC's drop and insertion/deletion read: the class
        probability, or for a similarity (1 + cosine) / 2, the cosine mapped onto [0, 1]."""
        if self.kind == "cosine":
            return (1.0 + self.cosines(outputs, targets)) / 2.0
        return self.values(outputs).gather(1, targets)

    def scores(self, outputs: Tensor, targets: Tensor, score: str) -> Tensor:
        """(n, T) what masked copies are scored by: a similarity by its cosine whatever ``score`` says."""
        if self.kind == "cosine":
            return self.cosines(outputs, targets)
        return class_scores(outputs, targets, score)

    def map_score(self, score: str) -> str:
        """The score a method's ``score`` setting becomes under this reading (as summary.json records it)."""
        return "cosine" if self.kind == "cosine" else score


@dataclass(frozen=True, eq=False)
class Target:
    """A batch's chosen targets, as engines call them: ``target(outputs, image)`` scores the outputs
    (n, ...) of copies of images ``image`` (n,) for each of that image's targets: (n, T)."""

    indices: Tensor  # (B, T) class indices, or rows of the reading's table
    reading: Reading
    score: str

    @property
    def count(self) -> int:
        return self.indices.shape[1]

    def __call__(self, outputs: Tensor, image: Tensor) -> Tensor:
        return self.reading.scores(outputs, self.indices[image], self.score)


@dataclass(frozen=True)
class TargetRequest:
    """Which targets each image gets: the ``top_k`` highest, fixed ``classes``, the labelled one
    (``from_labels``), every one at or above ``threshold``, or all of them (``every``)."""

    top_k: int = 1
    classes: tuple[int, ...] = ()
    from_labels: bool = False
    threshold: float | None = None
    every: bool = False
    source: str = "labels"  # what names each item's target when ``from_labels``: labels, or pairs

    @property
    def per_image(self) -> int:
        if self.classes:
            return len(self.classes)
        return 1 if self.from_labels else self.top_k

    @property
    def named_by_class(self) -> bool:
        """Whether outputs carry the target in their names: when an image may get several."""
        return self.from_labels or self.every or self.threshold is not None or self.per_image > 1

    def describe(self) -> dict[str, object]:
        if self.classes:
            return {"mode": "classes", "classes": list(self.classes)}
        if self.from_labels:
            return {"mode": self.source}
        if self.threshold is not None:
            return {"mode": "threshold", "threshold": self.threshold}
        if self.every:
            return {"mode": "every"}
        return {"mode": "top-k", "k": self.top_k}

    def chooser(self, labels: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """A function from (B, K) values (``Reading.values``) to the (B, T) targets to explain. With a
        threshold T is the most any image of the batch has; an image with fewer repeats its top target
        (``chosen`` tells the real ones apart)."""

        def choose(values: Tensor) -> Tensor:
            if self.classes:
                return torch.tensor(self.classes, device=values.device).expand(values.shape[0], -1)
            if self.from_labels:
                assert labels is not None, "labels are required for from_labels targets"
                return labels.to(values.device).view(-1, 1)
            if self.every:
                return torch.arange(values.shape[1], device=values.device).expand(values.shape[0], -1)
            if self.threshold is not None:
                return _at_least(values, self.threshold)
            return values.topk(self.top_k, dim=-1).indices

        return choose

    def chosen(self, values: Tensor, targets: Tensor) -> Tensor:
        """(B, T) which of ``targets`` are real: all, but with a threshold those at or above it (each
        once)."""
        if self.threshold is None:
            return torch.ones_like(targets, dtype=torch.bool)
        first = torch.ones_like(targets, dtype=torch.bool)
        first[:, 1:] = targets[:, 1:] != targets[:, :1]
        return first & (values.gather(1, targets) >= self.threshold)


def _at_least(values: Tensor, threshold: float) -> Tensor:
    """Every target at or above ``threshold``, highest first; rows padded with their top target."""
    ranked = values.argsort(dim=-1, descending=True)
    count = int((values >= threshold).sum(-1).max().clamp_min(1))
    kept = ranked[:, :count]
    enough = values.gather(1, kept) >= threshold
    return torch.where(enough, kept, kept[:, :1])


def ranks(values: Tensor, targets: Tensor) -> Tensor:
    """1-based rank of each target in its row's values (1 = the highest)."""
    chosen = values.gather(1, targets)
    return (values.unsqueeze(1) > chosen.unsqueeze(-1)).sum(-1) + 1
