"""What a run explains, decided once before any image is: the model read the way its targets need (a
sigmoid for a multi-label head, cosines with target embeddings for a model that yields an embedding),
the request that picks each image's targets, and the items (one per image, or one per image and target
when each names its own: a labels file, a pairs file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitcam_cli.data import ImageItem, discover, read_label_lists, with_targets
from vitcam_cli.embeddings import (
    SimilarityRequest,
    embed_images,
    read_embeddings,
    read_pairs,
    reference_items,
)
from vitcam_cli.errors import ParameterError, VitcamError
from vitcam_cli.models import LoadedModel, read_class_names
from vitcam_cli.paths import resolved
from vitcam_cli.targets import TargetRequest


@dataclass(frozen=True)
class TargetChoice:
    """The options that choose targets (they exclude each other, but for ``threshold``, which refines
    the model's own classes)."""

    classes: tuple[str, ...] = ()
    top_k: int | None = None
    labels: Path | None = None
    threshold: float | None = None
    similarity: SimilarityRequest = field(default_factory=SimilarityRequest)
    names: Path | None = None  # --class-names: the embeddings' names, for an embedding model

    def check(self) -> None:
        self.similarity.check()
        chosen = [
            bool(self.classes),
            self.top_k is not None,
            self.labels is not None,
            self.threshold is not None,
        ]
        if sum(chosen) > 1:
            raise VitcamError(
                "{classes}, {top_k}, {labels} and {threshold} choose the targets: use only one of them"
            )
        if self.labels is not None and self.similarity:
            raise VitcamError("{labels} names classes; similarity targets have none: drop one of them")
        low, what = (
            (-1.0, "a cosine: between -1 and 1")
            if self.similarity
            else (0.0, "a probability: between 0 and 1")
        )
        if self.threshold is not None and not low <= self.threshold <= 1.0:
            raise ParameterError("threshold", f"is {what}", self.threshold)


@dataclass
class TargetPlan:
    loaded: LoadedModel
    request: TargetRequest
    items: list[ImageItem]
    failing: dict[ImageItem, str] = field(default_factory=dict)  # items that fail before decoding


def plan_targets(
    choice: TargetChoice, loaded: LoadedModel, items: list[ImageItem], device: torch.device
) -> TargetPlan:
    """The model, request and items of a run on ``items`` (a pairs file brings its own items)."""
    choice.check()
    if choice.similarity:
        return _similarity_plan(choice, loaded, items, device)
    if loaded.embedding is not None:
        raise VitcamError(
            "this model has no classes: its outputs are an embedding. Explain its similarity to "
            "{references} images or to {embeddings} FILE.npy, or give it a classifier with {num_classes} N "
            "and {checkpoint} FILE"
        )
    request = _class_request(choice, loaded)
    if choice.labels is None:
        return TargetPlan(loaded, request, items)
    classes = read_label_lists(choice.labels, items, loaded.resolve_class)
    work = with_targets(items, classes)
    missing = f"no label for this file in {choice.labels}"
    return TargetPlan(loaded, request, work, {item: missing for item in work if item.target is None})


def _class_request(choice: TargetChoice, loaded: LoadedModel) -> TargetRequest:
    count = len(loaded.class_names)
    if choice.top_k is not None and not 1 <= choice.top_k <= count:
        raise ParameterError("top_k", f"must be between 1 and {count} (the target count)", choice.top_k)
    classes = tuple(dict.fromkeys(loaded.resolve_class(value) for value in choice.classes))
    return TargetRequest(
        top_k=choice.top_k or 1,
        classes=classes,
        from_labels=choice.labels is not None,
        threshold=choice.threshold,
    )


def _similarity_plan(
    choice: TargetChoice, loaded: LoadedModel, items: list[ImageItem], device: torch.device
) -> TargetPlan:
    """Targets of an embedding model: every target for every image (or the ``top_k`` most similar,
    those above ``threshold``, named ``classes``), or each pair's partner in both directions."""
    similarity = choice.similarity
    loaded.require_embedding()  # before any reference is embedded
    if similarity.pairs is not None:
        return _pairs_plan(similarity.pairs, loaded, items, device)
    if similarity.embeddings is not None:
        names = read_class_names(choice.names) if choice.names is not None else None
        dim = int(loaded.model(torch.zeros(1, *loaded.input_size, device=device)).shape[-1])
        table, labels = read_embeddings(similarity.embeddings, dim, names)
    else:
        references = [item.path for item in reference_items(similarity.references)]
        table, labels = embed_images(loaded, references, device), [str(path) for path in references]
    loaded = loaded.with_targets(table, labels, similarity.describe())
    chosen = choice.classes or choice.top_k is not None or choice.threshold is not None
    request = _class_request(choice, loaded) if chosen else TargetRequest(every=True)
    return TargetPlan(loaded, request, items)


def _pairs_plan(path: Path, loaded: LoadedModel, items: list[ImageItem], device: torch.device) -> TargetPlan:
    """Every image of a pairs file, once, against each of its partners: the query against the
    reference and the reference against the query."""
    if items:
        raise VitcamError("{pairs} names the images itself: drop the other inputs")
    pairs = read_pairs(path)
    work = discover([], [file for pair in pairs for file in pair])
    index = {item.file: number for number, item in enumerate(work)}
    partners: dict[Path, list[int]] = {}
    for query, reference in pairs:
        first, second = (index[resolved(name)] for name in (query, reference))
        for one, other in ((first, second), (second, first)):
            found = partners.setdefault(work[one].path, [])
            if other not in found:
                found.append(other)
    table = embed_images(loaded, [item.path for item in work], device)
    names = [str(item.path) for item in work]
    loaded = loaded.with_targets(table, names, {"kind": "pairs", "pairs": str(path)})
    return TargetPlan(loaded, TargetRequest(from_labels=True, source="pairs"), with_targets(work, partners))
