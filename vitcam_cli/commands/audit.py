"""``vitcam audit``: what a model relies on across a dataset, and proof by intervention.

An audit is an explain run (the same inputs, models, resume, shards and devices) whose maps are kept,
followed, once every image is explained, by the dataset's analysis (``analysis.audit``): each class's
evidence, shortcut candidates tested by intervention, each class's strategies. It writes the explain
run's rows and summary, ``evidence/class-N.npy``, ``findings.json`` and an audit ``report.html``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from vitcam_cli.analysis.audit import AuditResult, AuditSettings, run_audit
from vitcam_cli.analysis.evidence import box_cells
from vitcam_cli.commands.explain import Explain, ExplainOptions
from vitcam_cli.data import DecodePlan, GroundTruthBox, ImageItem, read_boxes
from vitcam_cli.distributed import Shard
from vitcam_cli.errors import ParameterError
from vitcam_cli.outputs.atomic import write_atomic, write_json_atomic
from vitcam_cli.outputs.audit_report import evidence_picture, write_audit_report
from vitcam_cli.outputs.folder import Journal
from vitcam_cli.outputs.manifest import Counts, read_rows
from vitcam_cli.outputs.rows import Row
from vitcam_cli.outputs.writer import ExplainWriter
from vitcam_cli.paths import resolved
from vitcam_cli.preprocessing import Preprocessing
from vitcam_cli.runner import input_boxes

# chosen on planted cues (docs/quality.md): the setting that found every localised cue on two depths
AUDIT_METHOD = "reciprocam:fused"


@dataclass
class AuditOptions(ExplainOptions):
    boxes: Path | None = None  # CSV 'file,x1,y1,x2,y2[,label]': evidence inside the objects is no shortcut
    audit: AuditSettings = field(default_factory=AuditSettings)

    def check(self) -> None:
        super().check()
        if self.references or self.pairs is not None or self.embeddings is not None:
            raise ParameterError("references", "an audit explains classes; similarity targets have none")
        self.audit.check()


class Audit(Explain):
    """The audit command: an explain run, then the analysis of all its maps."""

    title = "vitcam audit"

    def __init__(self, options: AuditOptions) -> None:
        super().__init__(options)
        self.options: AuditOptions = options
        self.result: AuditResult | None = None
        self.quiet = False
        self.boxes: dict[Path, list[GroundTruthBox]] = {}

    def _input_files(self, items: list[ImageItem]) -> list[Path]:
        """Explain's, and the boxes file."""
        boxes = [resolved(self.options.boxes)] if self.options.boxes is not None else []
        return super()._input_files(items) + boxes

    def _check_inputs(self) -> None:
        """The boxes are read (and a bad file refused) before the first image is explained."""
        if self.options.boxes is not None:
            assert self.loaded is not None
            self.boxes = read_boxes(self.options.boxes, self.items, self.loaded.resolve_class)

    def run(self, shard: Shard | None, device: torch.device, quiet: bool) -> int:
        self.quiet = quiet
        return super().run(shard, device, quiet)

    def _report(self, summary: dict[str, Any], writer: ExplainWriter, counts: Counts, status: str) -> None:
        """Once every image is explained: the analysis; an interrupted run gets explain's report."""
        if status == "complete" and self._audit(summary):
            return
        super()._report(summary, writer, counts, status)
        if status == "complete" and not self.quiet:
            print(
                "audit: no image has a map, so nothing was analysed and no findings.json was written "
                "(the rows say why each image failed)",
                file=sys.stderr,
            )

    def merge(self, folders: list[Path], destination: Path, quiet: bool) -> int:
        """Under torchrun, rank 0 merges the ranks' rows, then analyses them all (it holds the model)."""
        code = super().merge(folders, destination, quiet)
        summary = json.loads((destination / "summary.json").read_text(encoding="utf-8"))
        if summary.get("status") == "complete" and self.loaded is not None:
            self._audit(summary)
        return code

    def _audit(self, summary: dict[str, Any]) -> bool:
        """The analysis of the maps of this run's inputs (rows a resume kept of images no longer given are
        left out: the interventions need the images), written; False when no image has one."""
        given = {item.file for item in self.items}
        rows = [
            row
            for row in read_rows(self.options.out / "results.jsonl")
            if row.ok and row.map and resolved(Path(row.path)) in given
        ]
        if not rows:
            return False
        started = time.perf_counter()
        self.result = self._analyse(rows, summary)
        self.result.context["analysis_seconds"] = round(time.perf_counter() - started, 3)
        self._write(self.result, summary)
        return True

    def _analyse(self, rows: list[Row], summary: dict[str, Any]) -> AuditResult:
        loaded, device = self.loaded, self.device
        assert loaded is not None and device is not None
        out = self.options.out
        maps = np.stack([np.load(out / row.map) for row in rows])
        size = (int(loaded.input_size[1]), int(loaded.input_size[2]))
        preprocessing = Preprocessing(loaded.transform)
        plan = DecodePlan(preprocessing, None)

        def inputs(indices: list[int]) -> torch.Tensor:
            tensors = torch.stack([plan.decode(Path(rows[i].path))[0] for i in indices])
            return preprocessing.finish(tensors.to(device))

        inside = self._inside(rows, preprocessing, maps.shape[1:], size)
        classes = [int(row.class_index or 0) for row in rows]
        result = run_audit(
            maps, classes, loaded.class_names, inputs, loaded.model, loaded.reading, size, inside,
            self.options.audit,
        )  # fmt: skip
        result.paths = [row.path for row in rows]
        result.context = {
            "tool": "vitcam audit",
            "model": summary["settings"]["model"],
            "method": summary["settings"]["method"],
            "images": len(rows),
            "targets": "labelled" if self.options.labels else "predicted",
            "boxes": str(self.options.boxes) if self.options.boxes else None,
        }
        return result

    def _inside(
        self, rows: list[Row], preprocessing: Preprocessing, grid: tuple[int, ...], size: tuple[int, int]
    ) -> list[np.ndarray | None] | None:
        """With boxes: each image's share of every cell inside its explained class's objects (all its
        boxes when they carry no label), in the model's input frame."""
        if self.options.boxes is None:
            return None
        by_file = {item.file: self.boxes.get(item.path, []) for item in self.items}
        inside = []
        for row in rows:
            given = by_file.get(resolved(Path(row.path)), [])
            found = [b for b in given if b.label in (None, row.class_index)]
            original = [(b.x1, b.y1, b.x2, b.y2) for b in found]
            view = preprocessing.view((row.width or 1, row.height or 1))
            placed = input_boxes(original, view, size, row.width or 1, row.height or 1)
            inside.append(box_cells(placed, (grid[0], grid[1]), size) if found else None)
        return inside

    def _write(self, result: AuditResult, summary: dict[str, Any]) -> None:
        """evidence/class-N.npy and .png, findings.json and report.html (each evidence file recorded
        first, so that --overwrite removes it)."""
        out = self.options.out
        journal = Journal(out)
        colormap = summary["settings"]["colormap"]
        for evidence in result.classes:
            stem = f"evidence/class-{evidence.class_index}"
            journal.add(f"{stem}.npy")
            journal.add(f"{stem}.png")
            mean = np.asarray(evidence.mean, dtype=np.float32)
            write_atomic(out / f"{stem}.npy", lambda handle, mean=mean: np.save(handle, mean))
            picture = Image.fromarray(evidence_picture(mean, result.input_size, colormap))
            write_atomic(out / f"{stem}.png", lambda handle, picture=picture: picture.save(handle, "PNG"))
        journal.close()
        findings = result.to_json()
        write_json_atomic(out / "findings.json", findings)
        write_audit_report(out / "report.html", result, summary, self.loaded)
        Console(stderr=True, quiet=self.quiet).print(findings_table(findings))


def findings_table(findings: dict[str, Any]) -> Table:
    """The tested candidates: verified findings first."""
    table = Table(title="vitcam audit: shortcut candidates, tested", title_justify="left")
    columns = ("class", "region x1,y1,x2,y2", "verified", "blanked: relative drop", "pasted: gain", "flips")
    for column in columns:
        table.add_column(column)
    for item in findings["shortcuts"]:
        drop, gain = item["relative_drop"], item["pasted_gain"]
        table.add_row(
            item["class_name"], ",".join(map(str, item["region"])), "yes" if item["verified"] else "no",
            _interval(drop),
            _interval(gain), "-" if item["flips"] is None else f"{item['flips']:.2f}",
        )  # fmt: skip
    return table


def _interval(effect: dict[str, Any] | None) -> str:
    """A mean and its interval, compactly; "-" for a test not run (pasting after blanking rejected)."""
    if effect is None:
        return "-"
    return f"{effect['mean']:.2f} [{effect['low']:.2f}, {effect['high']:.2f}]"
