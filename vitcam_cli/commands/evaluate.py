"""``vitcam evaluate``: several saliency methods on the same batches of a dataset, metrics, tables.

One batch run explains every batch with every method and computes ADCC, insertion and deletion and
(with boxes) the pointing game and energy-in-box per image; three sinks take the images: the metric
totals (constant memory, mergeable), per_image.csv, and the report's gallery. Writes metrics.json,
per_image.csv and report.html; a shard writes part files that ``merge_evaluation`` combines.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vitcam_cli.data import (
    GroundTruthBox,
    ImageItem,
    discover,
    folder_labels,
    image_boxes,
    output_folders,
    read_boxes,
    read_class_map,
    read_labels,
    with_targets,
)
from vitcam_cli.defaults import DELETION_BASELINES, EVALUATE_BATCH, GATE_METRICS, PROTOCOLS, TARGETS
from vitcam_cli.distributed import Shard, collect_shards, input_record
from vitcam_cli.embeddings import SimilarityRequest
from vitcam_cli.errors import ParameterError, VitcamError, render
from vitcam_cli.methods.base import ClassChooser
from vitcam_cli.methods.factory import BASELINES, canonical_name, create_method, reciprocam_settings
from vitcam_cli.metrics.adcc import ADCC_DEFINITION
from vitcam_cli.metrics.aggregate import METRICS, Totals, bootstrap_intervals
from vitcam_cli.metrics.measure import MetricSettings
from vitcam_cli.models import LoadedModel, ModelSpec
from vitcam_cli.outputs.atomic import atomic_text_stream, write_atomic, write_json_atomic, writing
from vitcam_cli.outputs.folder import Journal, refuse_outputs_over_inputs, start_writing
from vitcam_cli.outputs.manifest import FAILURES_KEPT
from vitcam_cli.outputs.names import output_link
from vitcam_cli.outputs.overlay import OverlaySettings, encode_overlay, overlay_extension, render_overlay
from vitcam_cli.outputs.report import (
    THUMBNAIL_SIDE,
    Card,
    Charts,
    Gallery,
    Panel,
    card_from_dict,
    card_to_dict,
    draw_boxes,
    thumbnail,
    write_report,
)
from vitcam_cli.outputs.results import ImageResult, MethodOutput
from vitcam_cli.outputs.rows import EVALUATE_COLUMNS, Row, target_fields
from vitcam_cli.paths import resolved
from vitcam_cli.runner import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchRun,
    MethodClock,
    RunSettings,
    note_skipped,
    progress_bar,
)
from vitcam_cli.runtime import check_precision, library_versions
from vitcam_cli.target_plan import TargetChoice, plan_targets
from vitcam_cli.turns import Turns

GALLERY_LIMIT = 100  # the report keeps this many worst and best images


@dataclass
class EvaluateOptions:
    data: Path
    model: ModelSpec
    labels: Path | None = None
    boxes: Path | None = None
    class_map: Path | None = None
    references: list[str] = field(default_factory=list)  # similarity targets: reference images
    embeddings: Path | None = None  # similarity targets: an N x D .npy
    target: str = "predicted"
    methods: list[str] = field(default_factory=lambda: ["reciprocam"])
    limit: int | None = None
    seed: int = 0
    out: Path = Path("vitcam-eval")
    save_overlays: bool = False
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    insertion_deletion: bool = True
    protocol: str = "poppi"  # or "authors": the ViT-ReciproCAM authors' ADCC and DAUC/IAUC
    steps: int = 20
    baseline: str = "blur"
    fail_under: float | None = None
    metric: str = "adcc"
    as_json: bool = False
    markdown: bool = False
    bootstrap: int = 0  # draws for 95% intervals (0: none)
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=EVALUATE_BATCH))
    overwrite: bool = False  # replace an earlier run in ``out`` whole
    config: Path | None = None  # the file the options came from: read beside the inputs, never written over

    def check(self) -> None:
        self.run.check()
        self.overlay.check()
        targets, baselines, gates = (
            ", ".join(names) for names in (TARGETS, DELETION_BASELINES, GATE_METRICS)
        )
        checks = [
            ("target", self.target in TARGETS, f"use one of {targets}", self.target),
            ("protocol", self.protocol in PROTOCOLS, f"use one of {', '.join(PROTOCOLS)}", self.protocol),
            ("baseline", self.baseline in DELETION_BASELINES, f"use one of {baselines}", self.baseline),
            ("bootstrap", self.bootstrap >= 0, "must be 0 (none) or a number of draws", self.bootstrap),
            ("steps", self.steps >= 1, "must be at least 1", self.steps),
            ("limit", self.limit is None or self.limit >= 1, "must be at least 1", self.limit),
            ("metric", self.metric in GATE_METRICS, f"use one of {gates} (higher is better)", self.metric),
            ("fail_under", self.fail_under is None or math.isfinite(self.fail_under), "must be a number",
             self.fail_under),
        ]  # fmt: skip
        for parameter, ok, problem, value in checks:
            if not ok:
                raise ParameterError(parameter, problem, value)
        if not self.data.is_dir():
            raise ParameterError("data", "not a folder", self.data)


def _subset(items: list[ImageItem], limit: int | None, seed: int) -> list[ImageItem]:
    """A seeded random subset of ``limit`` images, kept in sorted order."""
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def _ground_truth(
    options: EvaluateOptions, items: list[ImageItem], loaded: LoadedModel
) -> dict[Path, int | str] | None:
    """Labels from the labels file, else from an ImageFolder tree, else None (unlabelled)."""
    if options.labels is not None:
        return read_labels(options.labels, items, loaded.resolve_class)
    class_map = read_class_map(options.class_map) if options.class_map else None
    found = folder_labels(items, loaded.resolve_class, class_map)
    return dict(found) if found is not None else None


def _chooser(
    target: str, truth_of: dict[Path, int | str] | None
) -> Callable[[list[ImageItem]], ClassChooser]:
    """The classes a batch's images are explained for: the prediction, or the ground truth."""

    def targets(items: list[ImageItem]) -> ClassChooser:
        if target == "boxes":
            classes = torch.tensor([int(item.target or 0) for item in items])
            return lambda logits: classes.to(logits.device).view(-1, 1)
        if target == "label" and truth_of is not None:
            truth = torch.tensor([int(truth_of[item.path]) for item in items])
            return lambda logits: truth.to(logits.device).view(-1, 1)
        return lambda logits: logits.argmax(-1, keepdim=True)

    return targets


PROTOCOL_NOTES = {
    "poppi": "poppi: ADCC on bilinearly upsampled, clipped maps (Poppi et al., 2021); insertion/deletion "
    "over pixel fractions (Petsiuk et al., 2018)",
    "authors": "authors: the ViT-ReciproCAM authors' code: ADCC with token-grid complexity and coherency "
    "and a bicubic, unclipped mask; DAUC/IAUC over 32-pixel cells",
}


class MetricTotals:
    """Sums of every method's per-image metrics, and the counts and accuracy of the run."""

    def __init__(
        self,
        names: list[str],
        truth_of: dict[Path, int | str] | None,
        images: int,
        boxes: dict[Path, list[GroundTruthBox]] | None = None,
    ) -> None:
        self.names = names
        self.truth_of = truth_of
        self.boxes = boxes
        self.totals = {name: Totals() for name in names}
        self.counts = {"images": images, "evaluated": 0, "failed": 0, "labelled": 0, "correct": 0}
        if boxes is not None:  # left out of the localisation metrics
            self.counts["without_boxes"] = 0

    def failed(self, item: ImageItem, message: str) -> None:
        self.counts["failed"] += 1

    def explained(self, image: ImageResult) -> None:
        self.counts["evaluated"] += 1
        if self.boxes is not None and not self.boxes.get(image.item.path):
            self.counts["without_boxes"] += 1
        for name, output in image.methods.items():
            self.totals[name].add({metric: torch.tensor(values) for metric, values in output.values.items()})
        truth = self.truth_of.get(image.item.path) if self.truth_of is not None else None
        if truth is not None:
            self.counts["labelled"] += 1
            self.counts["correct"] += int(image.methods[self.names[0]].predicted == truth)


def first_values(output: MethodOutput) -> dict[str, float]:
    """The metrics of the first explained class that apply to the image (NaN: no boxes)."""
    return {metric: values[0] for metric, values in output.values.items() if not math.isnan(values[0])}


def overlay_link(image: ImageResult, name: str, overlay: OverlaySettings) -> str:
    """Where ``--save-overlays`` puts a method's overlay of an image, relative to the output folder."""
    extension = overlay_extension(overlay.format, image.item.path)
    return output_link(f"overlays/{name.replace(':', '-')}", image.item.rel, extension, image.item.target)


def _overlay(image: ImageResult, name: str, overlay: OverlaySettings) -> np.ndarray:
    saliency = image.methods[name].maps[0]
    return render_overlay(image.copy, saliency, image.view, overlay.colormap, overlay.alpha)


class PerImageRows:
    """per_image.csv: one row per image and method (and every method's overlay, when kept)."""

    def __init__(
        self,
        handle: IO[str],
        options: EvaluateOptions,
        loaded: LoadedModel,
        truth_of: dict[Path, int | str] | None,
        journal: Journal | None = None,
    ) -> None:
        """``journal`` records every overlay before it is written (``--overwrite`` removes them)."""
        self.journal = journal or Journal(options.out)
        self.writer = csv.DictWriter(handle, fieldnames=EVALUATE_COLUMNS)
        self.writer.writeheader()
        self.options = options
        self.class_names = loaded.class_names
        self.similarity = loaded.reading.similarity
        self.truth_of = truth_of or {}

    def failed(self, item: ImageItem, message: str) -> None:
        self.writer.writerow(Row.failed(str(item.path), message).evaluate_cells())

    def explained(self, image: ImageResult) -> None:
        truth = self.truth_of.get(image.item.path)
        for name, output in image.methods.items():
            target = target_fields(self.similarity, self.class_names, output.classes[0], output.readings[0])
            row = Row(
                path=str(image.item.path),
                method=name,
                label=self.class_names[truth] if isinstance(truth, int) else None,
                predicted=self.class_names[output.predicted],
                overlay=self._save(image, name) if self.options.save_overlays else None,
                metrics=first_values(output),
                **target,
            )
            self.writer.writerow(row.evaluate_cells())

    def _save(self, image: ImageResult, name: str) -> str:
        link = overlay_link(image, name, self.options.overlay)
        data = encode_overlay(_overlay(image, name, self.options.overlay), Path(link).suffix[1:])
        self.journal.add(link)
        write_atomic(self.options.out / link, lambda handle: handle.write(data))
        return link


class EvaluationGallery:
    """The report's worst and best images by the first method's ADCC, every method side by side."""

    def __init__(
        self,
        options: EvaluateOptions,
        loaded: LoadedModel,
        truth_of: dict[Path, int | str] | None,
        boxes: dict[Path, list[GroundTruthBox]] | None = None,
    ) -> None:
        self.gallery = Gallery(limit=GALLERY_LIMIT)
        self.options = options
        self.class_names = loaded.class_names
        self.similarity = loaded.reading.similarity
        self.truth_of = truth_of or {}
        self.boxes = boxes or {}
        self.failures: list[tuple[str, str]] = []  # the first few, for the report

    def failed(self, item: ImageItem, message: str) -> None:
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append((str(item.path), message))

    def explained(self, image: ImageResult) -> None:
        first = next(iter(image.methods.values()))
        self.gallery.offer(float(first.values.get("adcc", [math.nan])[0]), lambda: self._card(image))

    def _card(self, image: ImageResult) -> Card:
        panels = []
        for name, output in image.methods.items():
            link = overlay_link(image, name, self.options.overlay) if self.options.save_overlays else None
            panels.append(
                Panel(
                    method=name,
                    thumbnail=thumbnail(self._with_boxes(image, _overlay(image, name, self.options.overlay))),
                    link=link,
                    class_name=self._target_name(output.classes[0]),
                    probability=output.readings[0],
                    metrics=first_values(output),
                    similarity=self.similarity,
                )
            )
        truth = self.truth_of.get(image.item.path)
        label = self.class_names[truth] if isinstance(truth, int) else None
        predicted = self.class_names[next(iter(image.methods.values())).predicted]
        shown = predicted if label is not None else None
        return Card(str(image.item.path), label, panels, shown, thumbnail(image.copy))

    def _target_name(self, target: int) -> str:
        name = self.class_names[target]
        return (Path(name).name or name) if self.similarity else name

    def _with_boxes(self, image: ImageResult, overlay: np.ndarray) -> np.ndarray:
        """The overlay with the image's ground-truth boxes drawn on it (clipped to the image)."""
        boxes = image_boxes(self.boxes.get(image.item.path, []), image.size)
        if isinstance(boxes, str) or not boxes:
            return overlay
        scale = (overlay.shape[1] / image.size[0], overlay.shape[0] / image.size[1])
        moved = [(a * scale[0], b * scale[1], c * scale[0], d * scale[1]) for (a, b, c, d), _ in boxes]
        return draw_boxes(overlay, moved)


@dataclass
class Part:
    """One process's share of an evaluation: mergeable sums and counts, and its gallery."""

    header: dict[str, Any]
    names: list[str]
    totals: dict[str, Totals]
    seconds: dict[str, float]
    counts: dict[str, int]
    cards: list[Card]
    offered: int
    wall_seconds: float
    inputs: dict[str, Any] | None = None  # every shard's inputs (count, digest): all must be the same
    from_shards: bool = False  # read back from a shard's part files (its rows are in a part file too)
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first few failed images


AGAIN = "free space or fix the folder, then run the evaluation again with {overwrite}"
# run-defining fields every shard of one evaluation must share
SHARED_HEADER = ("data", "target", "labels", "boxes", "limit", "seed", "model", "methods", "settings", "gate")


class Evaluate:
    """The evaluate command on one process's images (see ``runner.run_command``)."""

    def __init__(self, options: EvaluateOptions, stdout: TextIO | None = None) -> None:
        self.options = options
        self.stdout = stdout or sys.stdout
        self.out = options.out
        self.resume = False
        self.overwrite = options.overwrite
        self.resumable = False  # an evaluation is run whole: replaced, never resumed
        self.skipped: list[Path] = []  # earlier output folders in the data, not searched

    def run(self, shard: Shard | None, device: torch.device, quiet: bool) -> int:
        part = self._evaluate(shard, device, quiet)
        if shard is not None:
            write_part(part, self.options.out, shard)
            return EXIT_SOME_FAILED if part.counts["failed"] else EXIT_OK
        return finish(
            self.options.out, [part], self.options.as_json, self.options.markdown, quiet, self.stdout
        )

    def merge(self, folders: list[Path], destination: Path, quiet: bool) -> int:
        parts = [part for _, part in read_parts(folders)]
        return finish(destination, parts, self.options.as_json, self.options.markdown, quiet, self.stdout)

    def _evaluate(self, shard: Shard | None, device: torch.device, quiet: bool) -> Part:
        """This process's share: its images (all, or its shard's) through every method."""
        started = time.perf_counter()
        options = self.options
        options.check()
        names = list(dict.fromkeys(canonical_name(spec) for spec in options.methods))
        check_precision(options.run.precision, device)
        found = discover([str(options.data)], skip=output_folders(options.out), skipped=self.skipped)
        items = _subset(found, options.limit, options.seed)
        if not items:
            raise ParameterError("data", "no images found", options.data)
        note_skipped(self.skipped, quiet)
        loaded = self._read(options.model.load(device), items, names, device)
        truth_of = _ground_truth(options, items, loaded)
        if options.target == "label" and truth_of is None:
            raise VitcamError(
                "{target} label needs ground truth: pass {labels} FILE.csv or an ImageFolder tree"
            )
        inputs = input_record(items)
        boxes = read_boxes(options.boxes, items, loaded.resolve_class) if options.boxes else None
        items, unusable = self._work(items, truth_of, boxes)
        items = shard.take(items) if shard is not None else items
        runnable = [item for item in items if item not in unusable]
        run = self._batch_run(runnable, loaded, names, truth_of, boxes, device)
        totals = MetricTotals(names, truth_of, len(items), boxes)
        gallery = EvaluationGallery(options, loaded, truth_of, boxes)
        suffix = shard.suffix if shard else ""
        progress = progress_bar(Console(stderr=True, quiet=quiet), "evaluating", quiet)
        task = progress.add_task("evaluate", total=len(items))
        refuse_outputs_over_inputs(options.out, self._input_files(items))
        with writing(options.out, AGAIN):
            start_writing(options.out, shard, self.overwrite)
        journal = Journal(options.out, suffix)
        with (
            writing(options.out, AGAIN),
            atomic_text_stream(options.out / f"per_image{suffix}.csv") as handle,
            progress,
        ):
            sinks = [totals, PerImageRows(handle, options, loaded, truth_of, journal), gallery]
            for item in items:
                if item in unusable:  # no label, or no labelled box, for it
                    for sink in sinks:
                        sink.failed(item, unusable[item])
                    progress.advance(task)
            run.stream(sinks, lambda count: progress.advance(task, count))
        journal.close()
        return Part(
            header=self._header(loaded, names, str(device)),
            names=names,
            totals=totals.totals,
            seconds={name: run.clock.seconds.get(name, 0.0) for name in names},
            counts=totals.counts,
            cards=gallery.gallery.cards(),
            offered=gallery.gallery.offered,
            wall_seconds=time.perf_counter() - started,
            inputs=inputs,
            failures=gallery.failures,
        )

    def _similarity(self) -> SimilarityRequest:
        return SimilarityRequest(tuple(self.options.references), None, self.options.embeddings)

    def _read(
        self, loaded: LoadedModel, items: list[ImageItem], names: list[str], device: torch.device
    ) -> LoadedModel:
        """The model read as the evaluation needs: cosines with the similarity targets (each image's
        most similar one is explained), or a sigmoid when a method scores with it."""
        similarity = self._similarity()
        if similarity or loaded.embedding is not None:
            if self.options.target != "predicted" or self.options.labels is not None:
                raise VitcamError(
                    "similarity targets are evaluated for each image's most similar one: {target} label "
                    "and boxes, and {labels}, name classes"
                )
            choice = TargetChoice(similarity=similarity, names=self.options.model.class_names)
            return plan_targets(choice, loaded, items, device).loaded
        scores = [reciprocam_settings(name)[1].score for name in names if name not in BASELINES]
        if "sigmoid" in scores and loaded.reading.kind == "softmax":
            return loaded.with_reading("sigmoid")
        return loaded

    def _input_files(self, items: list[ImageItem]) -> list[Path]:
        """Every file the evaluation reads (links followed): no output may land on one of them."""
        options = self.options
        named = [options.labels, options.boxes, options.class_map, options.config, *options.model.files()]
        named += [*self._similarity().files(), *map(Path, options.references)]
        return [item.file for item in items] + [resolved(path) for path in named if path is not None]

    def _work(
        self,
        items: list[ImageItem],
        truth_of: dict[Path, int | str] | None,
        boxes: dict[Path, list[GroundTruthBox]] | None,
    ) -> tuple[list[ImageItem], dict[ImageItem, str]]:
        """What to explain: every image, or with ``target`` boxes every (image, class with a labelled
        box); and the items that fail before decoding, with why (no label, no labelled box)."""
        no_label = {path: text for path, text in (truth_of or {}).items() if isinstance(text, str)}
        if self.options.target != "boxes":
            return items, {item: no_label[item.path] for item in items if item.path in no_label}
        if boxes is None or not any(box.label is not None for found in boxes.values() for box in found):
            raise VitcamError("{target} boxes needs {boxes} FILE.csv with a label column (each box's class)")
        classes = {path: list(dict.fromkeys(box.label for box in found)) for path, found in boxes.items()}
        work = with_targets(items, classes)
        no_box = f"no labelled box for this file in {self.options.boxes}"
        failed = {
            item: no_box if item.target is None else no_label[item.path]
            for item in work
            if item.target is None or item.path in no_label
        }
        return work, failed

    def _batch_run(
        self,
        items: list[ImageItem],
        loaded: LoadedModel,
        names: list[str],
        truth_of: dict[Path, int | str] | None,
        boxes: dict[Path, list[GroundTruthBox]] | None,
        device: torch.device,
    ) -> BatchRun:
        options = self.options
        settings = options.run
        return BatchRun(
            items=items,
            loaded=loaded,
            methods={
                name: create_method(name, loaded, settings.mask_batch, settings.engine) for name in names
            },
            targets=_chooser(options.target, truth_of),
            settings=settings,
            device=device,
            metrics=MetricSettings(
                insertion_deletion=options.insertion_deletion,
                steps=options.steps,
                baseline=options.baseline,
                forward_batch=max(2 * settings.batch_size, 32),
                protocol=options.protocol,
            ),
            overlay_side=options.overlay.size if options.save_overlays else THUMBNAIL_SIDE,
            boxes=boxes,
            clock=MethodClock(warm_up=True),
            turns=Turns(enabled=device.type == "cpu"),
        )

    def _header(self, loaded: LoadedModel, names: list[str], device: str) -> dict[str, Any]:
        """The metrics.json fields that describe the run, the same in every shard."""
        options = self.options
        return {
            "tool": "vitcam evaluate",
            "data": str(options.data),
            "target": options.target,
            "labels": str(options.labels) if options.labels else None,
            "boxes": str(options.boxes) if options.boxes else None,
            "limit": options.limit,
            "seed": options.seed,
            "model": loaded.info,
            "methods": names,
            "settings": {
                "protocol": options.protocol,
                "insertion_deletion": options.insertion_deletion,
                "steps": options.steps,
                "baseline": options.baseline,
                "batch_size": options.run.batch_size,
                "mask_batch": options.run.mask_batch or "auto",
                "engine": options.run.engine,
            },
            "device": device,
            "precision": options.run.precision,
            "versions": library_versions(),
            "gate": None
            if options.fail_under is None
            else {"metric": options.metric, "threshold": options.fail_under},
            "bootstrap": options.bootstrap,
            "colormap": options.overlay.colormap,
            "output_folders_skipped": len(self.skipped),
        }


def write_part(part: Part, out: Path, shard: Shard) -> None:
    """A shard's sums, counts and gallery (thumbnails in base64) for a later merge."""
    data = {
        "shard": f"{shard.index}/{shard.count}",
        "status": "complete",
        **{key: value for key, value in part.__dict__.items() if key not in ("totals", "cards")},
        "totals": {name: totals.state() for name, totals in part.totals.items()},
        "cards": [card_to_dict(card) for card in part.cards],
    }
    write_json_atomic(out / f"metrics{shard.suffix}.json", data)


def read_parts(folders: list[Path]) -> list[tuple[Path, Part]]:
    """Every shard's part of one evaluation, in shard order."""
    shards = collect_shards(
        folders, "metrics", lambda d: {key: d["header"].get(key) for key in SHARED_HEADER}
    )
    parts = []
    for folder, data in shards:
        part = Part(
            header=data["header"], names=data["names"], seconds=data["seconds"], counts=data["counts"],
            offered=data["offered"], wall_seconds=data["wall_seconds"], inputs=data.get("inputs"),
            from_shards=True, failures=[tuple(pair) for pair in data.get("failures", [])],
            totals={name: Totals.from_state(state) for name, state in data["totals"].items()},
            cards=[card_from_dict(card) for card in data["cards"]],
        )  # fmt: skip
        parts.append((folder, part))
    return parts


def method_totals(parts: list[Part]) -> dict[str, Totals]:
    """Every method's sums and histograms over all parts."""
    merged = {name: Totals() for name in parts[0].names}
    for name, totals in merged.items():
        for part in parts:
            totals.merge(part.totals[name])
    return merged


def _metrics(parts: list[Part]) -> dict[str, Any]:
    """metrics.json: the parts' sums combined, so any split gives the numbers of a single process."""
    names, header = parts[0].names, parts[0].header
    counts = {key: sum(part.counts[key] for part in parts) for key in parts[0].counts}
    accuracy = counts["correct"] / counts["labelled"] if counts["labelled"] else None
    methods = {}
    for name, totals in method_totals(parts).items():
        seconds = sum(part.seconds[name] for part in parts)
        methods[name] = {
            **totals.means(),
            "n": counts["evaluated"],
            "accuracy": accuracy,
            "seconds": round(seconds, 3),
            "seconds_per_image": round(seconds / counts["evaluated"], 4) if counts["evaluated"] else None,
        }
    metrics: dict[str, Any] = {
        **{key: value for key, value in header.items() if key not in ("methods", "gate", "limit", "seed")},
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": counts | {"limit": header["limit"], "seed": header["seed"]},
        "labels": header["labels"] or ("folders" if counts["labelled"] else None),
        "wall_seconds": round(max(part.wall_seconds for part in parts), 3),
        "shards": len(parts) if len(parts) > 1 else None,
        "primary": names[0],
        "methods": methods,
    }
    gate = header.get("gate")
    if gate is not None:
        value = methods[names[0]].get(gate["metric"])
        metrics["gate"] = gate | {"value": value, "passed": value is not None and value >= gate["threshold"]}
    return metrics


def finish(out: Path, parts: list[Part], as_json: bool, markdown: bool, quiet: bool, stdout: TextIO) -> int:
    """Write metrics.json and report.html (and, for shards, per_image.csv) and print the comparison."""
    names = parts[0].names
    if parts[0].from_shards:
        _merge_rows(out, len(parts))
    metrics = _metrics(parts)
    draws = parts[0].header.get("bootstrap", 0)
    if draws:
        intervals = _intervals(out / "per_image.csv", names, draws, parts[0].header["seed"])
        for name, method_intervals in intervals.items():
            metrics["methods"][name]["intervals"] = method_intervals
    gallery = Gallery(limit=GALLERY_LIMIT)
    for part in parts:
        for card in part.cards:
            gallery.offer(card.panels[0].metrics.get("adcc", math.nan), lambda card=card: card)
    histograms = {name: totals.histograms for name, totals in method_totals(parts).items()}
    failures = [failure for part in parts for failure in part.failures]
    with writing(out, AGAIN):
        _write_report(out, metrics, names, gallery, histograms, failures)
        write_json_atomic(out / "metrics.json", metrics)  # last: a folder with it holds a whole evaluation
    _print_table(Console(stderr=True, quiet=quiet), metrics, names)
    if markdown:
        stdout.write(markdown_table(metrics, names) + "\n")
    if as_json:
        stdout.write(json.dumps(metrics, indent=2) + "\n")
    stdout.flush()
    gate = metrics.get("gate")
    if gate and not gate["passed"]:
        shown = "missing" if gate["value"] is None else f"{gate['value']:.4f}"
        # even when quiet: this line is why a CI job failed
        print(
            render(
                f"failed: {names[0]} {gate['metric']} = {shown} is below {{fail_under}} {gate['threshold']}"
            ),
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if metrics["dataset"]["failed"] else EXIT_OK


def _read_rows(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Row.from_record(record) for record in csv.DictReader(handle)]


def _intervals(
    per_image: Path, names: list[str], draws: int, seed: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """95% bootstrap intervals of each method's metrics, from its per-image values in per_image.csv."""
    rows = [row for row in _read_rows(per_image) if row.ok and row.method in names]
    present = {name: {m for row in rows if row.method == name for m in row.metrics} for name in names}
    columns: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for row in rows:
        for metric in present[row.method]:  # NaN where the metric does not apply to the image
            columns[row.method].setdefault(metric, []).append(row.metrics.get(metric, math.nan))
    return {
        name: bootstrap_intervals({k: np.array(v) for k, v in values.items()}, draws, seed)
        for name, values in columns.items()
        if values
    }


def _merge_rows(out: Path, count: int) -> None:
    """per_image.csv from the shards' part files, rows sorted by path (each image's methods in order)."""
    rows = [
        row for index in range(count) for row in _read_rows(out / f"per_image.shard-{index}-of-{count}.csv")
    ]
    rows.sort(key=lambda row: row.path)
    with atomic_text_stream(out / "per_image.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=EVALUATE_COLUMNS)
        writer.writeheader()
        writer.writerows(row.evaluate_cells() for row in rows)


def merge_evaluation(folders: list[Path], destination: Path, quiet: bool, stdout: TextIO) -> int:
    """``vitcam merge`` for evaluate shards (their part files must share one folder)."""
    parts = read_parts(folders)
    if any(folder.resolve() != destination.resolve() for folder, _ in parts):
        raise VitcamError("evaluate shards must write to one shared {out} folder; merge that folder")
    return finish(destination, [part for _, part in parts], False, False, quiet, stdout)


COLUMNS = (*METRICS, "seconds_per_image")


def _columns(metrics: dict[str, Any], names: list[str]) -> list[str]:
    return [column for column in COLUMNS if any(metrics["methods"][n].get(column) is not None for n in names)]


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


ADCC_LEGEND = (
    "adcc: ADCC of the mean parts (average drop, coherency and complexity averaged over the images, then "
    "combined); adcc_mean: the mean of per-image ADCC."
)


def _print_table(console: Console, metrics: dict[str, Any], names: list[str]) -> None:
    """The header on one line (a log does not wrap it to the table's width), the table, and what the
    two ADCC rows are."""
    dataset = metrics["dataset"]
    accuracy = metrics["methods"][names[0]]["accuracy"]
    protocol = metrics["settings"].get("protocol", "poppi")
    header = (
        f"vitcam evaluate: {dataset['evaluated']} images, target {metrics['target']}, "
        f"{protocol} protocol" + (f", accuracy {accuracy:.3f}" if accuracy is not None else "")
    )
    console.print(header, soft_wrap=True, highlight=False)
    console.print(_table(metrics, names))
    if "adcc" in _columns(metrics, names):
        console.print(ADCC_LEGEND, highlight=False)


def _table(metrics: dict[str, Any], names: list[str]) -> Table:
    columns = _columns(metrics, names)
    # metrics down, methods across: long method names break at ':' and ',', never cut at 120 columns
    table = Table()
    table.add_column("metric")
    for name in names:
        table.add_column(name.replace(":", ":\n").replace(",", ",\n"), justify="right", overflow="fold")
    for column in columns:
        table.add_row(column, *(_cell(metrics["methods"][name].get(column)) for name in names))
    return table


def markdown_table(metrics: dict[str, Any], names: list[str]) -> str:
    columns = _columns(metrics, names)
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        values = metrics["methods"][name]
        intervals = values.get("intervals", {})
        cells = (
            _cell(values.get(column))
            + (f" [{intervals[column][0]:.3f}, {intervals[column][1]:.3f}]" if column in intervals else "")
            for column in columns
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_report(
    out: Path,
    metrics: dict[str, Any],
    names: list[str],
    gallery: Gallery,
    histograms: dict[str, dict[str, list[int]]],
    failures: list[tuple[str, str]],
) -> None:
    columns = _columns(metrics, names)
    dataset = metrics["dataset"]
    facts = [
        ("data", metrics["data"]),
        ("model", metrics["model"]["model"]),
        ("methods", ", ".join(names)),
        ("images", f"{dataset['evaluated']} evaluated, {dataset['failed']} failed"),
        ("target", metrics["target"]),
        ("protocol", PROTOCOL_NOTES[metrics["settings"].get("protocol", "poppi")]),
        ("device", f"{metrics['device']} {metrics['precision']}"),
    ]
    if "without_boxes" in dataset:
        facts.append(("without boxes", f"{dataset['without_boxes']} (left out of the localisation metrics)"))
    accuracy = metrics["methods"][names[0]]["accuracy"]
    if accuracy is not None:
        facts.append(("accuracy", f"{accuracy:.4f}"))
    rows = [[name, *(_cell(metrics["methods"][name].get(column)) for column in columns)] for name in names]
    means = {name: {m: v for m, v in metrics["methods"][name].items() if m in METRICS} for name in names}
    charts = Charts(histograms=histograms, means=means, comparison=True)
    write_report(
        out / "report.html", "vitcam evaluate", facts, ["method", *columns], rows, gallery.cards(),
        gallery.offered, [ADCC_DEFINITION], charts, failures, dataset["failed"], metrics.get("colormap"),
    )  # fmt: skip
