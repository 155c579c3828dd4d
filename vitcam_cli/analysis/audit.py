"""A dataset's findings from its maps: each class's evidence, shortcut candidates confirmed or rejected by
intervention, and each class's strategies. The command line (``vitcam audit``) and the API
(``Explainer.audit``) feed it a finished run's maps and a way to get any image's model input again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitcam_cli.analysis.evidence import ClassEvidence, class_evidence, distribution
from vitcam_cli.analysis.shortcuts import DROP, GAIN, Candidate, Test, candidates, pixels, region_mass, test
from vitcam_cli.analysis.strategies import Strategy, strategies
from vitcam_cli.errors import ParameterError
from vitcam_cli.outputs.rows import path_cells
from vitcam_cli.targets import Reading

CHUNK = 32  # images per forward pass in the interventions


@dataclass(frozen=True)
class AuditSettings:
    candidates: int = 10  # classes whose most distinctive region is tested by intervention
    images_per_test: int = 48  # of the class (blanked), and of the other classes (pasted into)
    seed: int = 0

    def check(self) -> None:
        """A test needs two images a side for its interval; a negative count is a mistake, not a slice."""
        if self.images_per_test < 2:
            raise ParameterError("images_per_test", "needs at least 2 images per test", self.images_per_test)
        if self.candidates < 0:
            raise ParameterError("candidates", "must be 0 or more", self.candidates)


@dataclass
class AuditResult:
    """What an audit found; ``to_json`` is findings.json."""

    classes: list[ClassEvidence]
    tests: list[Test]  # every tested candidate, verified ones first, then by strength
    strategies: dict[int, list[Strategy]]
    paths: list[str]
    grid: tuple[int, int]
    input_size: tuple[int, int]
    boxes: bool = False
    context: dict[str, Any] = field(default_factory=dict)  # the run's model, method, counts

    @property
    def findings(self) -> list[Test]:
        return [test for test in self.tests if test.verified]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.context,
            "rule": {"relative_drop_at_least": DROP, "gain_at_least": GAIN, "interval": 0.95},
            "shortcuts": [self._shortcut(test) for test in self.tests],
            "classes": [self._class(evidence) for evidence in self.classes],
            "clusters": [
                self._cluster(target, number, strategy)
                for target, found in self.strategies.items()
                for number, strategy in enumerate(found)
            ],
        }

    def _shortcut(self, test: Test) -> dict[str, Any]:
        evidence = test.candidate.evidence
        own = evidence.images[: len(test.examples)]
        return {
            "class_index": evidence.class_index,
            "class_name": evidence.class_name,
            "region": list(pixels(test.candidate.cells, self.grid, self.input_size)),
            "cells": list(test.candidate.cells),
            "verified": test.verified,
            "excess": round(test.candidate.excess, 6),
            "probability_drop": _effect(test.drop),
            "relative_drop": _effect(test.relative_drop),
            "pasted_gain": None if test.gain is None else _effect(test.gain),
            "flips": None if test.flips is None else round(test.flips, 6),
            "images": [self._path(own[i]) for i in test.examples[:10]],
        }

    def _class(self, evidence: ClassEvidence) -> dict[str, Any]:
        return {
            "class_index": evidence.class_index,
            "class_name": evidence.class_name,
            "images": evidence.count,
            "outside_boxes": None if evidence.outside_boxes is None else round(evidence.outside_boxes, 6),
            "evidence": f"evidence/class-{evidence.class_index}.npy",
            "picture": f"evidence/class-{evidence.class_index}.png",
            "exemplars": [self._path(i) for i in evidence.images[:5]],
        }

    def _path(self, index: int) -> str:
        """An image as the rows' ``path`` column shows it (UTF-8; their ``path_bytes`` keeps odd bytes)."""
        return path_cells(self.paths[index])[0]

    @property
    def _names(self) -> dict[int, str]:
        return {evidence.class_index: evidence.class_name for evidence in self.classes}

    def _cluster(self, target: int, number: int, strategy: Strategy) -> dict[str, Any]:
        return {
            "class_index": target,
            "class_name": self._names.get(target, str(target)),
            "cluster": number,
            "size": len(strategy.images),
            "exemplars": [self._path(i) for i in strategy.images[:5]],
        }


def _effect(effect: Any) -> dict[str, float | int]:
    return {"mean": round(effect.mean, 6), "low": round(effect.low, 6), "high": round(effect.high, 6),
            "images": effect.count}  # fmt: skip


class Outputs:
    """The model's outputs on any inputs, in chunks; an unchanged image's are computed once per audit
    (every test reads the originals of the images it changes)."""

    def __init__(self, model: nn.Module, inputs: Callable[[list[int]], Tensor]) -> None:
        self.model, self.inputs = model, inputs
        self.originals: dict[int, Tensor] = {}

    def __call__(self, images: Tensor) -> Tensor:
        with torch.inference_mode():
            chunks = [self.model(images[i : i + CHUNK]).float() for i in range(0, len(images), CHUNK)]
        return torch.cat(chunks)

    def of(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The images' inputs and their (cached) outputs."""
        images = self.inputs(indices)
        missing = [i for i, index in enumerate(indices) if index not in self.originals]
        if missing:
            for i, output in zip(missing, self(images[missing]), strict=True):
                self.originals[indices[i]] = output
        return images, torch.stack([self.originals[index] for index in indices])


def run_audit(
    maps: np.ndarray,
    classes: Sequence[int],
    names: Sequence[str],
    inputs: Callable[[list[int]], Tensor],
    model: nn.Module,
    reading: Reading,
    input_size: tuple[int, int],
    inside: Sequence[np.ndarray | None] | None = None,
    settings: AuditSettings = AuditSettings(),
) -> AuditResult:
    """Audit N images from their raw maps (N, rows, cols) and explained classes; ``inputs(indices)``
    gives those images' model inputs; ``inside`` (with boxes) each image's share of every cell inside
    its class's objects (with boxes, evidence inside them is not a shortcut candidate's)."""
    distributions = np.stack([distribution(m) for m in maps])
    evidence = class_evidence(distributions, classes, names, inside)
    if inside is not None:  # with boxes, the classes most explained by what lies outside their objects first
        evidence.sort(key=lambda item: -1.0 if item.outside_boxes is None else -item.outside_boxes)
    outside = distributions if inside is None else _outside(distributions, inside)
    found = candidates(class_evidence(outside, classes, names), settings.candidates)
    by_class = {e.class_index: e for e in evidence}
    forward = Outputs(model, inputs)
    rng = np.random.default_rng(settings.seed)
    tests = []
    grid = (maps.shape[1], maps.shape[2])
    for candidate in found:
        candidate.evidence = by_class[candidate.evidence.class_index]
        own = candidate.evidence.images[: settings.images_per_test]
        others = _recipients(distributions, classes, candidate, settings.images_per_test, rng)
        box = pixels(candidate.cells, grid, input_size)
        tests.append(test(candidate, *forward.of(own), partial(forward.of, others), forward, reading, box))
    tests.sort(key=lambda t: (not t.verified, -t.strength))
    plans = {e.class_index: strategies(distributions, e.images, settings.seed) for e in evidence}
    return AuditResult(evidence, tests, plans, [], grid, input_size, boxes=inside is not None)


def _recipients(
    distributions: np.ndarray,
    classes: Sequence[int],
    candidate: Candidate,
    count: int,
    rng: np.random.Generator,
) -> list[int]:
    """Other classes' images the region is pasted into: those with the least of their own evidence
    there (the paste then covers their background, not what they are), in a random order."""
    rest = np.array([i for i in range(len(classes)) if classes[i] != candidate.evidence.class_index])
    rest = rest[rng.permutation(len(rest))]
    mass = region_mass(distributions[rest], candidate.cells)
    return [int(i) for i in rest[np.argsort(mass, kind="stable")[:count]]]


def _outside(distributions: np.ndarray, inside: Sequence[np.ndarray | None]) -> np.ndarray:
    """Each distribution with its evidence inside the image's objects taken out (renormalised)."""
    pairs = zip(distributions, inside, strict=True)
    kept = np.stack([d * (1.0 - (cells if cells is not None else 0.0)) for d, cells in pairs])
    sums = kept.sum(axis=(1, 2), keepdims=True)
    return np.where(sums > 0, kept / np.where(sums > 0, sums, 1.0), distributions)
