"""Strategies per class: the maps of a class clustered, in the manner of spectral relevance analysis
(SpRAy, Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"), so that a minority strategy (a
watermark, a border, a context object) stands out as its own group.

Each image's evidence distribution is a point; points are joined to their nearest neighbours, and the
number of groups is where the graph Laplacian's eigenvalues jump most (the eigengap), as SpRAy does;
scikit-learn's spectral clustering then cuts the graph. One group means the class is explained one way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph

MIN_IMAGES = 10  # fewer images than this are one group: too few to tell strategies apart
MAX_GROUPS = 6
SAMPLE = 1000  # images per class clustered at most (the rest are not assigned)


@dataclass
class Strategy:
    """One group of a class's images explained alike."""

    images: list[int]  # indices into the run's images, the most typical first
    mean: np.ndarray  # (rows, cols) the group's mean distribution


def _affinity(points: np.ndarray) -> np.ndarray:
    """A symmetric k-nearest-neighbour connectivity graph of the points, k about log(n): enough to keep
    a group connected, few enough that two groups stay apart (von Luxburg, 2007)."""
    neighbours = min(len(points) - 1, max(2, math.ceil(math.log(len(points)))))
    graph = kneighbors_graph(points, n_neighbors=neighbours, include_self=False)
    return 0.5 * (graph + graph.T).toarray()


def _group_count(affinity: np.ndarray) -> int:
    """Where the normalised Laplacian's smallest eigenvalues jump most (at least 1)."""
    values = np.linalg.eigvalsh(laplacian(affinity, normed=True))[: MAX_GROUPS + 1]
    gaps = np.diff(values)
    return int(np.argmax(gaps)) + 1 if len(gaps) else 1


def strategies(distributions: np.ndarray, images: list[int], seed: int = 0) -> list[Strategy]:
    """The groups of one class's images (their ``distributions`` (N, rows, cols) rows), largest first."""
    chosen = (
        images if len(images) <= SAMPLE else list(np.random.default_rng(seed).choice(images, SAMPLE, False))
    )
    points = distributions[chosen].reshape(len(chosen), -1)
    if len(chosen) < MIN_IMAGES:
        return [_strategy(distributions, chosen)]
    affinity = _affinity(points)
    count = _group_count(affinity)
    if count == 1:
        return [_strategy(distributions, chosen)]
    labels = SpectralClustering(count, affinity="precomputed", random_state=seed).fit_predict(affinity)
    groups = [[chosen[i] for i in np.flatnonzero(labels == label)] for label in range(count)]
    found = [_strategy(distributions, group) for group in groups if group]
    return sorted(found, key=lambda strategy: -len(strategy.images))


def _strategy(distributions: np.ndarray, images: list[int]) -> Strategy:
    """A group, its images ordered by closeness to the group's mean (the most typical first)."""
    mean = distributions[images].mean(axis=0)
    distance = [float(np.abs(distributions[i] - mean).sum()) for i in images]
    return Strategy([images[i] for i in np.argsort(distance)], mean)
