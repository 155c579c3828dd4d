"""One row per (image, explained class): its fields, and the columns each output file takes from it.

``explain`` writes ``EXPLAIN_COLUMNS`` to results.jsonl and results.csv; ``evaluate`` writes
``EVALUATE_COLUMNS`` (one row per image and method) to per_image.csv. Merging shards, resuming and the
report read rows back through ``Row.from_record``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.paths import fs_text

# every per-image metric, in table order (the dataset's adcc_mean is the mean of the rows' adcc)
ROW_METRICS = (*PARTS, "insertion", "deletion", "pointing_game", "energy_in_box", "discrimination")
EXPLAIN_COLUMNS = (
    "path", "status", "error", "method", "class_index", "class_name", "probability", "rank", "overlay", "map",
    "width", "height", *PARTS, "reference", "similarity", "note", "path_bytes",
)  # fmt: skip
EVALUATE_COLUMNS = (
    "path", "status", "error", "method", "label", "predicted", "correct", "class_index", "class_name",
    "probability", *ROW_METRICS, "overlay", "reference", "similarity", "path_bytes",
)  # fmt: skip


# a text cell starting with one of these is a formula to a spreadsheet: it gets a leading ' (OWASP's advice)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A value as a CSV cell: text a spreadsheet would run as a formula is prefixed with ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _from_cell(value: object) -> object:
    """``csv_cell`` undone, for rows read back from a CSV."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(_FORMULA_STARTS):
        return value[1:]
    return value


def path_cells(path: str) -> tuple[str, str | None]:
    """A path as rows write it: UTF-8 text (bytes that are not UTF-8 shown as U+FFFD), and, only for a
    path that is not UTF-8, its exact bytes percent-encoded (``urllib.parse.unquote_to_bytes`` undoes it)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), quote_from_bytes(raw, safe="/")


def _text(value: object) -> object:
    """Text that can be written as UTF-8 (a file name inside an error message may not be)."""
    return fs_text(value) if isinstance(value, str) else value


def target_fields(similarity: bool, names: list[str], target: int, reading: float) -> dict[str, Any]:
    """A row's target: a class by index, name and probability; a similarity target by its reference
    and cosine."""
    if similarity:
        return {"reference": names[target], "similarity": reading}
    return {"class_index": target, "class_name": names[target], "probability": reading}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@dataclass
class Row:
    """An explained class of an image (``status`` ok), or an image that could not be explained (error)."""

    path: str
    status: str = "ok"
    error: str | None = None
    method: str | None = None  # the method's table name (evaluate)
    label: str | None = None  # the ground-truth class name, when known (evaluate)
    predicted: str | None = None  # the predicted class name (evaluate)
    class_index: int | None = None
    class_name: str | None = None
    probability: float | None = None  # of the class in the unmasked prediction: softmax, or sigmoid
    rank: int | None = None  # 1 = the top prediction (the most similar target)
    overlay: str | None = None  # relative to the output folder
    map: str | None = None
    width: int | None = None  # the original's, after EXIF orientation
    height: int | None = None
    reference: str | None = None  # a similarity target: the reference image as given, or the embedding's name
    similarity: float | None = None  # cosine of the unmasked image's embedding and the target's
    note: str | None = None  # why an image explained nothing (no class reached the threshold)
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, path: str, message: str, method: str | None = None) -> Row:
        return cls(path, status="error", error=message, method=method)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def correct(self) -> int | None:
        return None if self.label is None or self.predicted is None else int(self.label == self.predicted)

    def record(self) -> dict[str, Any]:
        """results.jsonl's object: every explain column, metrics rounded to 6 decimals, None when absent."""
        values = {name: _text(getattr(self, name, None)) for name in EXPLAIN_COLUMNS if name not in PARTS}
        values["path"], exact = path_cells(self.path)
        values["probability"], values["similarity"] = _rounded(self.probability), _rounded(self.similarity)
        return values | {name: _rounded(self.metrics.get(name)) for name in PARTS} | {"path_bytes": exact}

    def evaluate_cells(self) -> dict[str, str]:
        """per_image.csv's cells: empty for missing values, floats with 6 decimals."""
        values = {name: _text(getattr(self, name, None)) for name in EVALUATE_COLUMNS} | {
            name: self.metrics.get(name) for name in ROW_METRICS
        }
        values["path"], values["path_bytes"] = path_cells(self.path)
        return {
            name: f"{value:.6f}" if isinstance(value, float) else str(csv_cell(value))
            for name, value in values.items()
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Row:
        """A row from results.jsonl's object or per_image.csv's cells (empty cells are missing values)."""
        names = cls.__dataclass_fields__
        known = {name: _from_cell(value) for name, value in record.items() if name in names}
        fields = {name: None if value == "" else value for name, value in known.items() if name != "metrics"}
        if record.get("path_bytes"):  # a path that is not UTF-8, byte for byte
            fields["path"] = os.fsdecode(unquote_to_bytes(record["path_bytes"]))
        metrics = {name: float(record[name]) for name in ROW_METRICS if record.get(name) not in (None, "")}
        row = cls(**fields, metrics=metrics)
        for name in ("class_index", "rank", "width", "height"):
            value = getattr(row, name)
            setattr(row, name, None if value is None else int(value))
        row.probability = None if row.probability is None else float(row.probability)
        row.similarity = None if row.similarity is None else float(row.similarity)
        return row
