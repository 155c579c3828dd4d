"""``vitcam evaluate``: several saliency methods on the same batches of a dataset, metrics, tables.

One pass over the data: each batch is decoded once and every method explains it; ADCC, insertion and
deletion, and (with boxes) the pointing game and energy-in-box are computed per image and summed per
method in constant memory. Writes metrics.json, per_image.csv and report.html.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vitcam_cli.data import (
    DEFAULT_OVERLAY_SIDE,
    Box,
    DecodePlan,
    ImageFiles,
    ImageItem,
    default_workers,
    discover,
    folder_labels,
    make_loader,
    output_folders,
    read_boxes,
    read_class_map,
    read_labels,
)
from vitcam_cli.distributed import Shard, collect_shards, process_group, rank_device, torchrun_rank
from vitcam_cli.errors import VitcamError
from vitcam_cli.measure import MetricSettings, measure
from vitcam_cli.methods.base import SaliencyMethod
from vitcam_cli.methods.factory import canonical_name, create_method
from vitcam_cli.metrics.adcc import ADCC_DEFINITION
from vitcam_cli.metrics.aggregate import METRICS, Totals, bootstrap_intervals
from vitcam_cli.metrics.insertion_deletion import BASELINES
from vitcam_cli.metrics.localization import boxes_mask
from vitcam_cli.models import LoadedModel, ModelSpec
from vitcam_cli.outputs.atomic import atomic_text_stream, write_atomic, write_json_atomic
from vitcam_cli.outputs.overlay import (
    check_overlay_options,
    colormap_table,
    encode_overlay,
    overlay_extension,
    render_overlay,
    view_in,
)
from vitcam_cli.outputs.report import (
    THUMBNAIL_SIDE,
    Card,
    Gallery,
    Panel,
    card_from_dict,
    card_to_dict,
    thumbnail,
    write_report,
)
from vitcam_cli.pipeline import EXIT_OK, EXIT_SOME_FAILED, library_versions
from vitcam_cli.preprocessing import Preprocessing, View
from vitcam_cli.runtime import autocast, check_precision, resolve_device
from vitcam_cli.turns import Turns

GALLERY_LIMIT = 100  # the report keeps this many worst and best images
# metrics where higher is better: the ones --fail-under can gate on
GATE_METRICS = ("adcc", "adcc_mean", "coherency", "insertion", "pointing_game", "energy_in_box")
ROW_FIELDS = (
    "path", "status", "error", "method", "label", "predicted", "correct", "class_index", "class_name",
    "probability", *(name for name in METRICS if name != "adcc_mean"), "overlay",
)  # fmt: skip


@dataclass
class EvaluateOptions:
    data: Path
    model: ModelSpec
    labels: Path | None = None
    boxes: Path | None = None
    class_map: Path | None = None
    target: str = "predicted"
    methods: list[str] = field(default_factory=lambda: ["reciprocam"])
    limit: int | None = None
    seed: int = 0
    out: Path = Path("vitcam-eval")
    save_overlays: bool = False
    overlay_format: str = "auto"  # auto (JPEG for JPEG inputs, else PNG), jpg, png or webp
    overlay_size: int | None = DEFAULT_OVERLAY_SIDE  # the overlays' longest side; None: the original's
    insertion_deletion: bool = True
    steps: int = 20
    baseline: str = "blur"
    fail_under: float | None = None
    metric: str = "adcc"
    as_json: bool = False
    markdown: bool = False
    batch_size: int = 16
    workers: int | None = None  # decoding processes; None: default_workers(device)
    device: str = "auto"
    precision: str = "fp32"
    mask_batch: int | None = None
    engine: str = "auto"
    colormap: str = "inferno"
    alpha: float = 0.5
    quiet: bool = False
    shard: Shard | None = None
    bootstrap: int = 0  # draws for 95% intervals (0: none)


@dataclass
class MethodRecord:
    method: SaliencyMethod
    totals: Totals = field(default_factory=Totals)
    seconds: float = 0.0  # explaining alone, without the metrics
    warmed: bool = False  # one untimed call first, so no method is charged the run's one-off set-up


@dataclass
class BatchResult:
    """One method's results for one batch, on the CPU, one entry per image."""

    maps: torch.Tensor  # (B, rows, cols)
    classes: torch.Tensor  # (B,)
    probabilities: torch.Tensor  # (B,)
    predicted: torch.Tensor  # (B,)
    values: dict[str, torch.Tensor]  # metric -> (B,)


def _check(options: EvaluateOptions) -> None:
    if options.target not in ("predicted", "label"):
        raise VitcamError(f"--target {options.target}: use predicted or label")
    if options.baseline not in BASELINES:
        raise VitcamError(f"--baseline {options.baseline}: use {' or '.join(BASELINES)}")
    if options.bootstrap < 0:
        raise VitcamError("--bootstrap must be 0 (no intervals) or a number of resamples")
    if options.steps < 1:
        raise VitcamError("--steps must be at least 1")
    if options.limit is not None and options.limit < 1:
        raise VitcamError("--limit must be at least 1")
    if options.metric not in GATE_METRICS:
        raise VitcamError(
            f"--metric {options.metric}: use one of {', '.join(GATE_METRICS)} (higher is better)"
        )
    if options.batch_size < 1 or (options.workers is not None and options.workers < 0):
        raise VitcamError("--batch-size must be at least 1 and --workers at least 0")
    check_overlay_options(options.overlay_format, options.overlay_size)
    if not options.data.is_dir():
        raise VitcamError(f"DATA {options.data}: not a folder")
    colormap_table(options.colormap)


def _subset(items: list[ImageItem], limit: int | None, seed: int) -> list[ImageItem]:
    """A seeded random subset of ``limit`` images, kept in sorted order."""
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def _ground_truth(
    options: EvaluateOptions, items: list[ImageItem], loaded: LoadedModel
) -> dict[Path, int | str] | None:
    """Labels from --labels, else from an ImageFolder tree, else None (unlabelled)."""

    def resolve(value: str) -> int:
        return loaded.resolve_class(value)

    if options.labels is not None:
        return read_labels(options.labels, items, resolve)
    class_map = read_class_map(options.class_map) if options.class_map else None
    found = folder_labels(items, resolve, class_map)
    return dict(found) if found is not None else None


def input_boxes(
    boxes: list[Box], view: View | None, input_size: tuple[int, int], width: int, height: int
) -> list[Box]:
    """Original-image boxes moved into the preprocessed input's pixels, the way preprocessing moved them."""
    rows, cols = input_size
    x0, y0, x1, y1 = view or (0.0, 0.0, float(width), float(height))
    sx, sy = cols / (x1 - x0), rows / (y1 - y0)
    return [((a - x0) * sx, (b - y0) * sy, (c - x0) * sx, (d - y0) * sy) for a, b, c, d in boxes]


def _explain_batch(
    record: MethodRecord,
    loaded: LoadedModel,
    images: torch.Tensor,
    truth: torch.Tensor | None,
    options: EvaluateOptions,
    settings: MetricSettings,
    inside: torch.Tensor | None,
) -> BatchResult:
    def choose(logits: torch.Tensor) -> torch.Tensor:
        if options.target == "label" and truth is not None:
            return truth.to(logits.device).view(-1, 1)
        return logits.argmax(-1, keepdim=True)

    with torch.inference_mode(), autocast(options.precision, images.device):
        if not record.warmed:
            record.method(images, choose).maps.sum().item()
            record.warmed = True
        tick = time.perf_counter()
        explanation = record.method(images, choose)
        explanation.maps.sum().item()  # waits for the device: the explanation alone is what is timed
        record.seconds += time.perf_counter() - tick
        values = measure(record.method, loaded.model, images, explanation, settings, inside)
    record.totals.add(values)
    logits = explanation.logits.cpu()
    classes = explanation.classes[:, 0].cpu()
    return BatchResult(
        maps=explanation.maps[:, 0].float().cpu(),
        classes=classes,
        probabilities=torch.softmax(logits, -1).gather(1, classes.view(-1, 1)).squeeze(1),
        predicted=logits.argmax(-1),
        values={name: value.cpu() for name, value in values.items()},
    )


def run_evaluate(options: EvaluateOptions, stdout: TextIO | None = None) -> int:
    """Evaluate every method; exit code 0, or 1 when inputs failed or --fail-under was missed.

    With --shard, or one shard per rank under torchrun, each process evaluates its slice and leaves its
    part files; rank 0 (or ``vitcam merge``) combines them into the same outputs a single process writes.
    """
    _check(options)
    stdout = stdout or sys.stdout
    ranked = torchrun_rank()
    if ranked is None:
        device = resolve_device(options.device)
        part = _evaluate(options, device)
        if options.shard is not None:
            write_part(part, options.out, options.shard)
            return EXIT_SOME_FAILED if part.counts["failed"] else EXIT_OK
        return finish(options.out, [part], options.as_json, options.markdown, options.quiet, stdout)
    if options.shard is not None:
        raise VitcamError("--shard splits a run by hand; under torchrun every rank takes its shard itself")
    rank, world, local_rank = ranked
    device = rank_device(resolve_device(options.device), local_rank)
    mine = replace(options, shard=Shard(rank, world), quiet=options.quiet or rank > 0)
    code = EXIT_OK
    with process_group(device):
        write_part(_evaluate(mine, device), options.out, mine.shard)
        dist.barrier()  # every rank's part files are complete
        if rank == 0:
            parts = [part for _, part in read_parts([options.out])]
            code = finish(options.out, parts, options.as_json, options.markdown, options.quiet, stdout)
        dist.barrier()
    return code


def _evaluate(options: EvaluateOptions, device: torch.device) -> Part:
    """This process's share: its images (all, or its shard's) through every method."""
    started = time.perf_counter()
    console = Console(stderr=True, quiet=options.quiet)
    names = list(dict.fromkeys(canonical_name(spec) for spec in options.methods))
    check_precision(options.precision, device)
    items = _subset(
        discover([str(options.data)], skip=output_folders(options.out)), options.limit, options.seed
    )
    if not items:
        raise VitcamError(f"DATA {options.data}: no images found")
    loaded = options.model.load(device)
    truth_of = _ground_truth(options, items, loaded)
    if options.target == "label" and truth_of is None:
        raise VitcamError("--target label needs ground truth: pass --labels FILE.csv or an ImageFolder tree")
    if options.shard is not None:
        items = options.shard.take(items)
    boxes = read_boxes(options.boxes, items) if options.boxes else None
    records = {
        name: MethodRecord(create_method(name, loaded, options.mask_batch, options.engine)) for name in names
    }
    settings = MetricSettings(
        insertion_deletion=options.insertion_deletion, steps=options.steps, baseline=options.baseline,
        forward_batch=max(2 * options.batch_size, 32),
    )  # fmt: skip
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VitcamError(f"--out {options.out}: cannot create it ({error.strerror})") from error

    counts = {"images": len(items), "evaluated": 0, "failed": 0, "labelled": 0, "correct": 0}
    gallery = Gallery(limit=GALLERY_LIMIT)
    progress = Progress(
        TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=options.quiet or not console.is_terminal,
    )  # fmt: skip
    task = progress.add_task("evaluate", total=len(items))
    input_size = (int(loaded.input_size[1]), int(loaded.input_size[2]))
    suffix = options.shard.suffix if options.shard else ""
    with atomic_text_stream(options.out / f"per_image{suffix}.csv") as handle, progress:
        rows = csv.DictWriter(handle, fieldnames=ROW_FIELDS, extrasaction="ignore")
        rows.writeheader()

        def fail(item: ImageItem, message: str) -> None:
            counts["failed"] += 1
            rows.writerow({"path": str(item.path), "status": "error", "error": message})
            progress.advance(task)

        runnable = []
        for item in items:
            truth = truth_of.get(item.path) if truth_of is not None else None
            if isinstance(truth, str):
                fail(item, truth)
            else:
                runnable.append(item)
        preprocessing = Preprocessing(loaded.transform)
        # without saved overlays, a thumbnail-size copy is enough for the report's gallery
        plan = DecodePlan(preprocessing, options.overlay_size if options.save_overlays else THUMBNAIL_SIDE)
        turns = Turns(enabled=device.type == "cpu")
        workers = default_workers(device) if options.workers is None else options.workers
        loader = make_loader(
            ImageFiles(runnable, plan, turns), options.batch_size, workers, device.type == "cuda"
        )
        for batch in loader:
            for index, message in batch.failures:
                fail(runnable[index], message)
            if batch.images is None:
                continue
            batch_items = [runnable[i] for i in batch.indices]
            views = [preprocessing.view(size) for size in batch.sizes]
            originals = [batch.overlay(position) for position in range(len(batch_items))]
            truth = None
            if truth_of is not None:
                truth = torch.tensor([int(truth_of[item.path]) for item in batch_items])
            inside = None
            if boxes is not None:
                moved = [
                    input_boxes(boxes[item.path], view, input_size, *size)
                    for item, view, size in zip(batch_items, views, batch.sizes, strict=True)
                ]
                inside = boxes_mask(moved, input_size, device)
            images = preprocessing.finish(batch.images.to(device, non_blocking=True))
            with turns.engine():
                results = {
                    name: _explain_batch(record, loaded, images, truth, options, settings, inside)
                    for name, record in records.items()
                }
            if truth is not None:
                counts["labelled"] += len(batch_items)
                counts["correct"] += int((results[names[0]].predicted == truth).sum())
            for position, item in enumerate(batch_items):
                copy = originals[position]
                view = view_in((copy.shape[1], copy.shape[0]), batch.sizes[position], views[position])
                _record_image(
                    item, position, results, copy, view, truth, loaded, options, rows, gallery,
                )  # fmt: skip
            counts["evaluated"] += len(batch_items)
            progress.advance(task, len(batch_items))

    return Part(
        header=_header(options, loaded, names, str(device)),
        names=names,
        totals={name: record.totals for name, record in records.items()},
        seconds={name: record.seconds for name, record in records.items()},
        counts=counts,
        cards=gallery.cards(),
        offered=gallery.offered,
        wall_seconds=time.perf_counter() - started,
    )


def _record_image(
    item: ImageItem,
    position: int,
    results: dict[str, BatchResult],
    original: np.ndarray,
    view: View | None,
    truth: torch.Tensor | None,
    loaded: LoadedModel,
    options: EvaluateOptions,
    rows: csv.DictWriter,
    gallery: Gallery,
) -> None:
    """The image's CSV rows and overlays (one per method), and its card for the report's gallery."""
    label = int(truth[position]) if truth is not None else None
    rendered: dict[str, np.ndarray] = {}

    def overlay(name: str) -> np.ndarray:
        if name not in rendered:
            saliency = results[name].maps[position]
            rendered[name] = render_overlay(original, saliency, view, options.colormap, options.alpha)
        return rendered[name]

    links: dict[str, str | None] = {}
    for name, result in results.items():
        link = None
        if options.save_overlays:
            extension = overlay_extension(options.overlay_format, item.path)
            link = f"overlays/{name.replace(':', '-')}/{item.key}.{extension}"
            data = encode_overlay(overlay(name), extension)
            write_atomic(options.out / link, lambda handle, data=data: handle.write(data))
        links[name] = link
        class_index = int(result.classes[position])
        predicted = int(result.predicted[position])
        rows.writerow(
            {
                "path": str(item.path), "status": "ok", "method": name,
                "label": loaded.class_names[label] if label is not None else "",
                "predicted": loaded.class_names[predicted],
                "correct": "" if label is None else int(predicted == label),
                "class_index": class_index, "class_name": loaded.class_names[class_index],
                "probability": f"{float(result.probabilities[position]):.6f}",
                **{metric: f"{float(value[position]):.6f}" for metric, value in result.values.items()},
                "overlay": link or "",
            }
        )  # fmt: skip

    def card() -> Card:
        panels = [
            Panel(
                method=name,
                thumbnail=thumbnail(overlay(name)),
                link=links[name],
                class_name=loaded.class_names[int(result.classes[position])],
                probability=float(result.probabilities[position]),
                metrics={metric: float(value[position]) for metric, value in result.values.items()},
            )
            for name, result in results.items()
        ]
        return Card(str(item.path), loaded.class_names[label] if label is not None else None, panels)

    first = next(iter(results.values()))
    gallery.offer(float(first.values["adcc"][position]), card)


def _header(options: EvaluateOptions, loaded: LoadedModel, names: list[str], device: str) -> dict[str, Any]:
    """The metrics.json fields that describe the run, the same in every shard."""
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
            "insertion_deletion": options.insertion_deletion,
            "steps": options.steps,
            "baseline": options.baseline,
            "batch_size": options.batch_size,
            "mask_batch": options.mask_batch or "auto",
            "engine": options.engine,
        },
        "device": device,
        "precision": options.precision,
        "versions": library_versions(),
        "gate": None
        if options.fail_under is None
        else {"metric": options.metric, "threshold": options.fail_under},
        "bootstrap": options.bootstrap,
    }


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


# run-defining fields every shard of one evaluation must share
SHARED_HEADER = ("data", "target", "labels", "boxes", "limit", "seed", "model", "methods", "settings", "gate")


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
            offered=data["offered"], wall_seconds=data["wall_seconds"],
            totals={name: Totals.from_state(state) for name, state in data["totals"].items()},
            cards=[card_from_dict(card) for card in data["cards"]],
        )  # fmt: skip
        parts.append((folder, part))
    return parts


def _metrics(parts: list[Part]) -> dict[str, Any]:
    """metrics.json: the parts' sums combined, so any split gives the numbers of a single process."""
    names, header = parts[0].names, parts[0].header
    counts = {key: sum(part.counts[key] for part in parts) for key in parts[0].counts}
    accuracy = counts["correct"] / counts["labelled"] if counts["labelled"] else None
    methods = {}
    for name in names:
        totals = Totals()
        for part in parts:
            totals.merge(part.totals[name])
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
    if len(parts) > 1:
        _merge_rows(out, len(parts))
    metrics = _metrics(parts)
    draws = parts[0].header.get("bootstrap", 0)
    if draws:
        for name, intervals in _intervals(
            out / "per_image.csv", names, draws, parts[0].header["seed"]
        ).items():
            metrics["methods"][name]["intervals"] = intervals
    write_json_atomic(out / "metrics.json", metrics)
    gallery = Gallery(limit=GALLERY_LIMIT)
    for part in parts:
        for card in part.cards:
            gallery.offer(card.panels[0].metrics.get("adcc", math.nan), lambda card=card: card)
    _write_report(out, metrics, names, gallery.cards(), sum(part.offered for part in parts))
    Console(stderr=True, quiet=quiet).print(_table(metrics, names))
    if markdown:
        stdout.write(markdown_table(metrics, names) + "\n")
    if as_json:
        stdout.write(json.dumps(metrics, indent=2) + "\n")
    stdout.flush()
    gate = metrics.get("gate")
    if gate and not gate["passed"]:
        shown = "missing" if gate["value"] is None else f"{gate['value']:.4f}"
        print(  # even with --quiet: this line is why a CI job failed
            f"failed: {names[0]} {gate['metric']} = {shown} is below --fail-under {gate['threshold']}",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if metrics["dataset"]["failed"] else EXIT_OK


def _intervals(
    per_image: Path, names: list[str], draws: int, seed: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """95% bootstrap intervals of each method's metrics, from its per-image values in per_image.csv."""
    columns: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    with per_image.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["status"] != "ok":
                continue
            for metric in METRICS:
                if row.get(metric):
                    columns[row["method"]].setdefault(metric, []).append(float(row[metric]))
    return {
        name: bootstrap_intervals({k: np.array(v) for k, v in values.items()}, draws, seed)
        for name, values in columns.items()
        if values
    }


def _merge_rows(out: Path, count: int) -> None:
    """per_image.csv from the shards' part files, rows sorted by path (each image's methods in order)."""
    rows: list[dict[str, str]] = []
    for index in range(count):
        with (out / f"per_image.shard-{index}-of-{count}.csv").open(newline="", encoding="utf-8") as handle:
            rows += list(csv.DictReader(handle))
    rows.sort(key=lambda row: row["path"])
    with atomic_text_stream(out / "per_image.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def merge_evaluation(folders: list[Path], destination: Path, quiet: bool, stdout: TextIO) -> int:
    """``vitcam merge`` for evaluate shards (their part files must share one folder)."""
    parts = read_parts(folders)
    if any(folder.resolve() != destination.resolve() for folder, _ in parts):
        raise VitcamError("evaluate shards must write to one shared --out folder; merge that folder")
    return finish(destination, [part for _, part in parts], False, False, quiet, stdout)


COLUMNS = (*METRICS, "seconds_per_image")


def _columns(metrics: dict[str, Any], names: list[str]) -> list[str]:
    return [column for column in COLUMNS if any(metrics["methods"][n].get(column) is not None for n in names)]


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _table(metrics: dict[str, Any], names: list[str]) -> Table:
    columns = _columns(metrics, names)
    dataset = metrics["dataset"]
    accuracy = metrics["methods"][names[0]]["accuracy"]
    title = f"vitcam evaluate: {dataset['evaluated']} images, target {metrics['target']}" + (
        f", accuracy {accuracy:.3f}" if accuracy is not None else ""
    )
    table = Table(title=title, title_justify="left")
    table.add_column("method")
    for column in columns:
        table.add_column(column, justify="right")
    for name in names:
        table.add_row(name, *(_cell(metrics["methods"][name].get(column)) for column in columns))
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
    out: Path, metrics: dict[str, Any], names: list[str], cards: list[Card], offered: int
) -> None:
    columns = _columns(metrics, names)
    dataset = metrics["dataset"]
    facts = [
        ("data", metrics["data"]),
        ("model", metrics["model"]["model"]),
        ("images", f"{dataset['evaluated']} evaluated, {dataset['failed']} failed"),
        ("target", metrics["target"]),
        ("device", f"{metrics['device']} {metrics['precision']}"),
    ]
    accuracy = metrics["methods"][names[0]]["accuracy"]
    if accuracy is not None:
        facts.append(("accuracy", f"{accuracy:.4f}"))
    rows = [[name, *(_cell(metrics["methods"][name].get(column)) for column in columns)] for name in names]
    write_report(
        out / "report.html", "vitcam evaluate", facts, ["method", *columns], rows, cards, offered,
        [ADCC_DEFINITION],
    )  # fmt: skip
