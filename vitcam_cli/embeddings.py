"""Similarity targets: the embeddings a map compares the model's own embedding with.

A target is a reference image embedded by the model itself (``--reference``, ``--pairs``), or a row of
an ``.npy`` file of embeddings computed elsewhere (``--embeddings``: text embeddings, class prototypes,
cluster centres). Reference images are decoded and preprocessed as the explained images are, so an image
given as its own reference has a similarity of 1.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitcam_cli.data import DecodePlan, ImageItem, describe_decode_error, discover
from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.models.loaded import LoadedModel
from vitcam_cli.paths import absolute
from vitcam_cli.preprocessing import Preprocessing
from vitcam_cli.textfiles import open_lines

EMBED_BATCH = 16


@dataclass(frozen=True)
class SimilarityRequest:
    """What the similarity targets are: reference files or folders, a pairs file, or an .npy file."""

    references: tuple[str, ...] = ()
    pairs: Path | None = None
    embeddings: Path | None = None
    names: Sequence[str] | None = field(default=None)  # the embeddings' names (else FILE[i])

    def __bool__(self) -> bool:
        return bool(self.references) or self.pairs is not None or self.embeddings is not None

    def check(self) -> None:
        given = [bool(self.references), self.pairs is not None, self.embeddings is not None]
        if sum(given) > 1:
            raise VitcamError(
                "{references}, {pairs} and {embeddings} each give the targets: use only one of them"
            )

    def files(self) -> list[Path]:
        """The files this request reads (besides the reference images)."""
        return [path for path in (self.pairs, self.embeddings) if path is not None]

    def describe(self) -> dict[str, object]:
        if self.references:
            return {"kind": "references", "references": list(self.references)}
        if self.pairs is not None:
            return {"kind": "pairs", "pairs": str(self.pairs)}
        return {"kind": "embeddings", "embeddings": str(self.embeddings)}


def embed_images(loaded: LoadedModel, paths: Sequence[Path], device: torch.device) -> Tensor:
    """(K, D) the model's embedding of each image, decoded and preprocessed as explained images are."""
    preprocessing = Preprocessing(loaded.transform)
    plan = DecodePlan(preprocessing, None)
    embedded = []
    for start in range(0, len(paths), EMBED_BATCH):
        chunk = [_decoded(plan, path) for path in paths[start : start + EMBED_BATCH]]
        images = preprocessing.finish(torch.stack(chunk).to(device))
        with torch.inference_mode():
            embedded.append(loaded.model(images).float().cpu())
    table = torch.cat(embedded)
    if not torch.isfinite(table).all():
        raise VitcamError("the model gives NaN or inf embeddings for the reference images: broken weights?")
    return table


def _decoded(plan: DecodePlan, path: Path) -> Tensor:
    try:
        return plan.decode(path)[0]
    except Exception as error:  # whatever Pillow or the file system says: one line naming the file
        raise VitcamError(f"reference {literal(path)}: {describe_decode_error(error)}") from error


def reference_items(references: Sequence[str]) -> list[ImageItem]:
    """The reference images of ``--reference`` files and folders (folders searched as inputs are)."""
    return discover(list(references))


def read_embeddings(path: Path, dim: int, names: Sequence[str] | None) -> tuple[Tensor, list[str]]:
    """(N, D) rows of an .npy file and their names (``names``, else ``FILE[i]``); the width must be
    the model's embedding's."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ParameterError("embeddings", f"not a readable .npy file ({literal(reason)})", path) from error
    if array.ndim != 2 or array.shape[0] == 0 or array.dtype.kind not in "fiu":
        raise ParameterError("embeddings", f"must hold an N x D array of numbers, not {array.shape}", path)
    if array.shape[1] != dim:
        raise ParameterError(
            "embeddings", f"rows have {array.shape[1]} values but the model's embedding has {dim}", path
        )
    table = torch.from_numpy(np.array(array, dtype=np.float32))
    if not torch.isfinite(table).all() or bool((table.norm(dim=1) == 0).any()):
        raise ParameterError("embeddings", "holds NaN, inf or all-zero rows", path)
    if names is not None and len(names) != len(table):
        raise ParameterError(
            "class_names", f"holds {len(names)} names but {path} has {len(table)} embeddings", path
        )
    return table, list(names) if names is not None else [f"{path.name}[{i}]" for i in range(len(table))]


def read_pairs(path: Path) -> list[tuple[Path, Path]]:
    """(query, reference) paths of a ``query,reference`` CSV: each as given, or relative to the CSV's
    folder when that is where the file is."""
    reader = csv.DictReader(open_lines(path, "pairs"))
    try:
        header = {name.strip() for name in reader.fieldnames or []}
        if not {"query", "reference"} <= header:
            raise ParameterError("pairs", "the first line must be the header 'query,reference'", path)
        rows = [(line, row) for line, row in enumerate(reader, start=2)]
    except csv.Error as error:
        raise ParameterError("pairs", f"not a CSV file ({literal(error)})", path) from error
    folder = absolute(path).parent
    pairs = []
    for line, row in rows:
        cells = [(row.get(key) or "").strip() for key in ("query", "reference")]
        if not all(cells):
            raise ParameterError("pairs", f"line {line}: needs a query and a reference", path)
        pairs.append(tuple(_beside(folder, cell) for cell in cells))
    if not pairs:
        raise ParameterError("pairs", "holds no pairs", path)
    return pairs  # type: ignore[return-value]


def _beside(folder: Path, cell: str) -> Path:
    given = Path(cell)
    return given if given.exists() or given.is_absolute() or not (folder / given).exists() else folder / given
