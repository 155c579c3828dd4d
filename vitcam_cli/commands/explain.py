"""``vitcam explain``: every image's overlays, maps and result rows, written as a batch run streams them.

Writes ``overlays/``, ``maps/``, ``results.jsonl`` and ``results.csv`` (one row per image and explained
class), ``summary.json`` and ``report.html``; a shard writes its own part files, merged later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import torch
from rich.console import Console
from rich.table import Table

from vitcam_cli.data import (
    IMAGE_EXTENSIONS,
    ImageItem,
    discover,
    output_folders,
    read_path_list,
)
from vitcam_cli.defaults import DEFAULT_PRESET, EXPLAIN_BATCH, PRESET_NAMES
from vitcam_cli.distributed import Shard, input_record
from vitcam_cli.embeddings import SimilarityRequest
from vitcam_cli.errors import ParameterError, VitcamError, render
from vitcam_cli.interrupts import interrupted_exit_code
from vitcam_cli.methods.base import SaliencyMethod
from vitcam_cli.methods.factory import (
    BASELINES,
    canonical_name,
    create_method,
    reciprocam_name,
    reciprocam_settings,
    scored_reading,
)
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, describe
from vitcam_cli.metrics.adcc import ADCC_DEFINITION
from vitcam_cli.metrics.aggregate import METRICS
from vitcam_cli.metrics.measure import MetricSettings
from vitcam_cli.models import LoadedModel, ModelSpec
from vitcam_cli.outputs.atomic import write_failed, write_json_atomic, writing
from vitcam_cli.outputs.folder import Journal, refuse_outputs_over_inputs, start_writing
from vitcam_cli.outputs.manifest import Counts, Manifest
from vitcam_cli.outputs.merge import merge_shards
from vitcam_cli.outputs.overlay import OverlaySettings
from vitcam_cli.outputs.report import THUMBNAIL_SIDE, Charts, Gallery, write_report
from vitcam_cli.outputs.resume import earlier_summary, refuse_other_settings
from vitcam_cli.outputs.rows import Row
from vitcam_cli.outputs.writer import ExplainWriter, Outputs
from vitcam_cli.paths import resolved
from vitcam_cli.runner import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchRun,
    RunSettings,
    note_skipped,
    progress_bar,
)
from vitcam_cli.runtime import check_precision, device_label, library_versions
from vitcam_cli.target_plan import TargetChoice, plan_targets
from vitcam_cli.targets import TargetRequest
from vitcam_cli.turns import Turns


@dataclass
class ExplainOptions:
    inputs: list[str]
    model: ModelSpec
    files_from: str | None = None  # a file of paths, one per line; "-" for standard input
    method: str | None = None  # any evaluate method string; None: ViT-ReciproCAM from variant and overrides
    variant: str | None = None  # the ViT-ReciproCAM preset; None: the default
    overrides: dict[str, Any] = field(default_factory=dict)  # explicit method options over the preset
    classes: list[str] = field(default_factory=list)
    top_k: int | None = None
    labels: Path | None = None
    threshold: float | None = None  # every class (or similarity target) at or above it
    references: list[str] = field(default_factory=list)  # reference images (files or folders)
    pairs: Path | None = None  # a query,reference CSV
    embeddings: Path | None = None  # an N x D .npy of target embeddings
    out: Path = Path("vitcam-out")
    save_maps: bool = False
    overlays: bool = True
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    adcc: bool = True
    skip_existing: bool = False
    jsonl: bool = False  # every row also as a JSON line on stdout
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=EXPLAIN_BATCH))
    overwrite: bool = False  # replace an earlier run in ``out`` whole
    config: Path | None = None  # the file the options came from: read beside the inputs, never written over

    def check(self) -> None:
        self.run.check()
        self.overlay.check()
        if self.variant is not None and self.variant not in PRESET_NAMES:
            raise ParameterError("variant", f"use one of {', '.join(PRESET_NAMES)}", self.variant)
        if not self.inputs and self.files_from is None and self.pairs is None:
            raise VitcamError(
                "no inputs: pass image files or folders, {files_from} FILE (- for stdin), or {pairs} FILE.csv"
            )
        self.choice().check()

    def choice(self) -> TargetChoice:
        similarity = SimilarityRequest(tuple(self.references), self.pairs, self.embeddings)
        return TargetChoice(
            tuple(self.classes), self.top_k, self.labels, self.threshold, similarity, self.model.class_names
        )


def explain_method(
    options: ExplainOptions, loaded: LoadedModel
) -> tuple[str, SaliencyMethod, dict[str, Any], LoadedModel]:
    """The method that makes the maps, its name in rows and tables, its settings as summary.json
    records them, and the model read as the method's score says (``sigmoid``: a multi-label head):
    ``method`` (any evaluate method string), else ViT-ReciproCAM from ``variant``; the ViT-ReciproCAM
    options given one by one (``overrides``) win over either."""
    run = options.run
    if options.method is not None and canonical_name(options.method) in BASELINES:
        name = canonical_name(options.method)
        given = [*(["variant"] if options.variant is not None else []), *options.overrides]
        if given:
            raise ParameterError(given[0], f"applies to ViT-ReciproCAM only, not to {{method}} {name}")
        method = create_method(name, loaded, run.mask_batch, run.engine)
        return name, method, {"name": name, "label": name}, loaded
    if options.method is not None and options.variant is not None:
        raise VitcamError("{method} and {variant} both choose the ViT-ReciproCAM preset: use one of them")
    if options.method is not None:
        preset, settings = reciprocam_settings(options.method)
    else:
        preset = options.variant or DEFAULT_PRESET
        settings = PRESETS[preset]
    settings = settings.with_overrides(**options.overrides)
    explicit = "score" in options.overrides or settings.score != PRESETS[preset].score
    settings, loaded = scored_reading(settings, loaded, explicit)
    explainer = ReciproCAM(
        loaded.model, loaded.layout, settings, loaded.input_size, run.mask_batch, run.engine, loaded.reading
    )
    name = reciprocam_name(preset, settings)
    described = {"name": "reciprocam", "label": name, "variant": preset, **settings.as_dict()}
    return name, explainer, described | {"score": loaded.reading.map_score(settings.score)}, loaded


TITLE = "vitcam explain"  # the summary table's, on the terminal (audit has its own)


def _method_line(summary: dict[str, Any]) -> str:
    method, engine = summary["settings"]["method"], summary["settings"]["engine"]
    if method.get("name", "reciprocam") != "reciprocam":
        return describe(method)
    return f"ViT-ReciproCAM {describe(method)}, {engine} engine"


def summary_table(summary: dict[str, Any], title: str = TITLE) -> Table:
    """The run in a table that fits 80 columns: short labels kept whole, long values folded."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    images = summary["images"]
    table.add_row("images ok", str(images["ok"]))
    table.add_row("images failed", str(images["error"]))
    table.add_row("resumed (skipped)", str(images["skipped"]))
    if summary["adcc"]:
        adcc = {name: f"{value:.4f}" for name, value in summary["adcc"].items()}
        # the dataset's ADCC two ways: of the parts averaged over the images, and averaged itself
        table.add_row("ADCC of the mean parts", adcc["adcc"])
        table.add_row("mean of per-image ADCC", adcc["adcc_mean"])
        table.add_row("mean drop / increase", f"{adcc['average_drop']} / {adcc['increase']}")
        table.add_row("mean coherency / complexity", f"{adcc['coherency']} / {adcc['complexity']}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("images / s", f"{summary['images_per_second']:.2f}")
    table.add_row("method", describe(summary["settings"]["method"]))
    table.add_row("engine", summary["settings"]["engine"] or "-")
    table.add_row("device", f"{summary['device']} {summary['precision']}")
    table.add_row("output", summary["out"])
    return table


def write_explain_report(path: Path, summary: dict[str, Any], gallery: Gallery, counts: Counts) -> None:
    """The report of an explain run (or of its merged shards), from its summary.json and its rows'
    ``counts`` (the distributions and the failed images)."""
    images, method, adcc = summary["images"], summary["settings"]["method"], summary["adcc"] or {}
    facts = [
        ("model", summary["settings"]["model"]["model"]),
        ("method", _method_line(summary)),
        ("images", f"{images['ok']} explained, {images['error']} failed, {images['skipped']} resumed"),
        ("device", f"{summary['device']} {summary['precision']}"),
        ("time", f"{summary['wall_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s"),
    ]
    columns = ["method", "images", *(name for name in METRICS if name in adcc)]
    label = method.get("label", method.get("variant"))
    row = [label, str(images["ok"]), *(f"{adcc[name]:.4f}" for name in columns[2:])]
    notes = [ADCC_DEFINITION] if adcc else ["ADCC was not computed: the gallery is sorted by probability."]
    if images["skipped"]:
        notes.append("The gallery shows images explained in this run; resumed images are in results.jsonl.")
    charts = Charts(histograms={label: counts.histograms}, means={label: adcc})
    write_report(
        path, "vitcam explain", facts, columns, [row], gallery.cards(), gallery.offered, notes, charts,
        counts.failures, images["error"], summary["settings"]["colormap"],
    )  # fmt: skip


def merge_explanations(folders: list[Path], destination: Path, quiet: bool, title: str = TITLE) -> int:
    """Combine an explain run's shards: results.jsonl/.csv, summary.json and report.html."""
    summary = merge_shards(folders, destination, write_explain_report)
    Console(stderr=True, quiet=quiet).print(summary_table(summary, title))
    return EXIT_SOME_FAILED if summary["images"]["error"] else EXIT_OK


class Explain:
    """The explain command on one process's images (see ``runner.run_command``)."""

    title = TITLE

    def __init__(
        self, options: ExplainOptions, stdin: IO[bytes] | None = None, stdout: TextIO | None = None
    ) -> None:
        self.options = options
        self.stdin = stdin
        self.stdout = stdout or sys.stdout
        self.out = options.out
        self.resume = options.skip_existing
        self.overwrite = options.overwrite
        self.resumable = True
        self.skipped: list[Path] = []  # earlier output folders among the inputs, not searched
        self.interrupted: int | None = None  # the exit code of an interrupted run (Ctrl-C, SIGTERM)
        self.loaded: LoadedModel | None = None  # the model as the run reads it, once loaded
        self.device: torch.device | None = None
        self.items: list[ImageItem] = []  # every input of the run, once listed (all shards')

    def merge(self, folders: list[Path], destination: Path, quiet: bool) -> int:
        return merge_explanations(folders, destination, quiet, self.title)

    def run(self, shard: Shard | None, device: torch.device, quiet: bool) -> int:
        started = time.perf_counter()
        options = self.options
        options.check()
        check_precision(options.run.precision, device)
        every = self._items()
        note_skipped(self.skipped, quiet)
        plan = plan_targets(options.choice(), options.model.load(device), every, device)
        items, unlabelled, request = plan.items, plan.failing, plan.request
        items = shard.take(items) if shard else items
        name, method, described, loaded = explain_method(options, plan.loaded)
        self.loaded, self.device, self.items = loaded, device, every  # what a run's sinks (an audit) need
        self._check_inputs()
        recorded = self._settings(loaded, request, method, described)
        part = shard.suffix if shard else ""
        earlier = earlier_summary(options.out, part) if options.skip_existing else {}
        if options.skip_existing:
            refuse_other_settings(options.out, recorded, earlier, part)
        refuse_outputs_over_inputs(options.out, self._input_files(items))
        summary: dict[str, Any] = {
            "tool": "vitcam explain",
            "status": "running",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": library_versions(),
            "settings": recorded,
            "device": device_label(device),
            "precision": options.run.precision,
            "out": str(options.out),
            "cwd": str(Path.cwd()),  # what the rows' relative paths are relative to
            "shard": f"{shard.index}/{shard.count}" if shard else None,
            "inputs": input_record(every or plan.items),  # a pairs file brings its own
            "output_folders_skipped": len(self.skipped),
        }
        origin = Path(earlier["cwd"]) if "cwd" in earlier else None  # earlier rows are relative to it
        with writing(options.out, "free space or fix the folder, then rerun"):
            start_writing(options.out, shard, self.overwrite)
            write_json_atomic(options.out / f"summary{part}.json", summary)
            manifest = Manifest(
                options.out, options.skip_existing, options.save_maps, part, options.overlays, origin
            )
        todo = [item for item in items if not manifest.finished(item)]
        run = BatchRun(
            items=[item for item in todo if item not in unlabelled],
            loaded=loaded,
            methods={name: method},
            targets=lambda batch: request.chooser(self._labels(request, batch)),
            settings=options.run,
            device=device,
            metrics=MetricSettings(adcc=options.adcc),
            overlay_side=options.overlay.size if options.overlays else THUMBNAIL_SIDE,
            turns=Turns(enabled=device.type == "cpu"),
            keep=request.chosen if request.threshold is not None else None,
        )
        labelled = request.from_labels and not loaded.reading.similarity  # labels, not a pairs file
        writer = ExplainWriter(
            options.out, manifest, self._emit, self._outputs(request, loaded), name, loaded.class_names,
            run.turns, labelled=labelled, journal=Journal(options.out, part),
        )  # fmt: skip
        try:
            status = self._stream(run, writer, manifest, todo, unlabelled, quiet)
            with self._writing(manifest):
                counts = self._finish(summary, status, manifest, writer, shard, started, items, todo, method)
        except VitcamError as error:  # the folder says why the run stopped (if it still can)
            summary.update(status="failed", error=str(error))
            with contextlib.suppress(OSError):
                write_json_atomic(options.out / f"summary{part}.json", summary)
            raise
        Console(stderr=True, quiet=quiet).print(summary_table(summary, self.title))
        if self.interrupted is not None:
            return self.interrupted
        return EXIT_SOME_FAILED if counts.images_error else EXIT_OK

    def _check_inputs(self) -> None:
        """Before anything is written: refuse inputs a sink would only read after every image (none here)."""

    def _finish(
        self,
        summary: dict[str, Any],
        status: str,
        manifest: Manifest,
        writer: ExplainWriter,
        shard: Shard | None,
        started: float,
        items: list[ImageItem],
        todo: list[ImageItem],
        method: SaliencyMethod,
    ) -> Counts:
        """results.csv, report.html, then summary.json: it says ``complete`` only once all are written."""
        counts: Counts = manifest.finish(csv_too=shard is None)
        elapsed = time.perf_counter() - started
        summary.update(
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
            images={
                "ok": counts.images_ok,
                "error": counts.images_error,
                "skipped": len({item.file for item in items}) - len({item.file for item in todo}),
                "total": len({item.file for item in items}),
            },
            rows=counts.rows,
            wall_seconds=round(elapsed, 3),
            images_per_second=round(len(todo) / elapsed, 3) if elapsed > 0 else 0.0,
            adcc=counts.metrics or None,
            mask_batch_reductions=getattr(method, "reductions", []),
        )
        if shard is None:  # a shard's report comes with the merge
            self._report(summary, writer, counts, status)
        summary["status"] = status
        write_json_atomic(self.options.out / f"summary{shard.suffix if shard else ''}.json", summary)
        return counts

    def _report(self, summary: dict[str, Any], writer: ExplainWriter, counts: Counts, status: str) -> None:
        """report.html of a whole run (a command built on explain writes its own)."""
        write_explain_report(self.options.out / "report.html", summary, writer.gallery, counts)

    def _input_files(self, items: list[ImageItem]) -> list[Path]:
        """Every file the run reads (links followed): no output may land on one of them."""
        options = self.options
        named = [options.labels, options.config, *options.model.files(), *options.choice().similarity.files()]
        if options.files_from not in (None, "-"):
            named.append(Path(options.files_from))
        references = [Path(reference) for reference in options.references]
        return [item.file for item in items] + [resolved(path) for path in [*named, *references] if path]

    def _items(self) -> list[ImageItem]:
        """The inputs (never the run's own outputs), all of them: a shard takes its share."""
        options = self.options
        listed = read_path_list(options.files_from, self.stdin) if options.files_from else []
        items = discover(options.inputs, listed, skip=output_folders(options.out), skipped=self.skipped)
        if not items and not (options.pairs is not None and not options.inputs and not listed):
            where = ", ".join(options.inputs) or options.files_from
            raise VitcamError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return items

    def _settings(
        self, loaded: LoadedModel, request: TargetRequest, method: SaliencyMethod, described: dict[str, Any]
    ) -> dict[str, Any]:
        """What summary.json records of the run: resuming and merging compare these."""
        options = self.options
        overlays = {"format": options.overlay.format, "size": options.overlay.size or "original"}
        return {
            "model": loaded.info,
            "method": described,
            "engine": engine.name if (engine := getattr(method, "engine", None)) else None,
            "targets": request.describe() | self._labels_file(),
            "colormap": options.overlay.colormap,
            "alpha": options.overlay.alpha,
            "overlays": overlays if options.overlays else None,
            "save_maps": options.save_maps,
            "adcc": options.adcc,
            "batch_size": options.run.batch_size,
            "mask_batch": options.run.mask_batch or "auto",
        }

    def _labels_file(self) -> dict[str, str]:
        """The labels file by name and by contents (resuming with other labels is refused)."""
        labels = self.options.labels
        if labels is None:
            return {}
        with labels.open("rb") as handle:
            return {"labels": str(labels), "labels_sha256": hashlib.file_digest(handle, "sha256").hexdigest()}

    def _outputs(self, request: TargetRequest, loaded: LoadedModel) -> Outputs:
        options = self.options
        what = "target whose cosine similarity" if loaded.reading.similarity else "class whose probability"
        nothing = f"no {what} is at least {{threshold}} {options.threshold}"
        return Outputs(
            options.overlays, options.save_maps, options.overlay, request.named_by_class,
            loaded.reading.similarity, render(nothing),
        )  # fmt: skip

    @staticmethod
    def _labels(request: TargetRequest, batch: list[ImageItem]) -> torch.Tensor | None:
        if not request.from_labels:
            return None
        return torch.tensor([int(item.target or 0) for item in batch])

    def _emit(self, rows: list[Row]) -> None:
        if self.options.jsonl:
            self.stdout.write("".join(json.dumps(row.record()) + "\n" for row in rows))
            self.stdout.flush()

    def _stream(
        self,
        run: BatchRun,
        writer: ExplainWriter,
        manifest: Manifest,
        todo: list[ImageItem],
        unlabelled: dict[ImageItem, str],
        quiet: bool,
    ) -> str:
        """Stream the run into the writer; returns complete or interrupted."""
        progress = progress_bar(Console(stderr=True, quiet=quiet), "explaining", quiet)
        task = progress.add_task("explain", total=len(todo))
        try:
            with progress:
                failing = [item for item in todo if item in unlabelled]
                for item in failing:  # the labels file has no row for it
                    writer.failed(item, unlabelled[item])
                progress.advance(task, len(failing))
                run.stream([writer], lambda count: progress.advance(task, count))
                writer.drain()
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: what was explained is kept
            self.interrupted = interrupted_exit_code(stop)  # the code only: its traceback holds the loader
            writer.drain()
            return "interrupted"
        except OSError as error:  # out of disk space, the folder removed or made read-only mid-run
            writer.abandon()
            raise self._write_failed(error, manifest) from error
        return "complete"

    @contextlib.contextmanager
    def _writing(self, manifest: Manifest) -> Iterator[None]:
        """Writes after the images (the CSV, the report, the summary): a failure is the same one line."""
        try:
            yield
        except OSError as error:
            raise self._write_failed(error, manifest) from error

    def _write_failed(self, error: OSError, manifest: Manifest) -> ParameterError:
        with contextlib.suppress(OSError):
            manifest.close()
        advice = (
            f"the images finished before are intact in {manifest.jsonl.name}: free space or fix the folder, "
            "then rerun with {skip_existing}"
        )
        return write_failed(self.options.out, error, advice)
