"""The explain loop: stream batches -> predict and explain -> overlays, maps and manifest rows."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import PIL
import timm
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vitcam_cli import __version__
from vitcam_cli.data import (
    DEFAULT_OVERLAY_SIDE,
    IMAGE_EXTENSIONS,
    DecodePlan,
    ImageFiles,
    ImageItem,
    default_workers,
    discover,
    make_loader,
    output_folders,
    read_labels,
    read_path_list,
)
from vitcam_cli.distributed import Shard, process_group, rank_device, torchrun_rank
from vitcam_cli.errors import VitcamError
from vitcam_cli.measure import MetricSettings, measure
from vitcam_cli.methods.reciprocam import DEFAULT_PRESET, PRESETS, ReciproCAM, describe
from vitcam_cli.metrics.adcc import ADCC_DEFINITION, PARTS
from vitcam_cli.metrics.aggregate import METRICS
from vitcam_cli.models import LoadedModel, ModelSpec
from vitcam_cli.outputs.atomic import remove_stale_temporaries, write_json_atomic
from vitcam_cli.outputs.manifest import Counts, Manifest
from vitcam_cli.outputs.merge import merge_shards
from vitcam_cli.outputs.overlay import (
    check_overlay_options,
    colormap_table,
    overlay_extension,
    view_in,
)
from vitcam_cli.outputs.report import THUMBNAIL_SIDE, Gallery, write_report
from vitcam_cli.outputs.writer import OutputWriter
from vitcam_cli.preprocessing import Preprocessing
from vitcam_cli.runtime import autocast, check_precision, resolve_device
from vitcam_cli.targets import TargetRequest, ranks
from vitcam_cli.turns import Turns

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# settings that change what is written: resuming into a folder written with others is refused
RESUME_KEYS = ("model", "method", "targets", "colormap", "alpha", "overlays")


@dataclass
class ExplainOptions:
    inputs: list[str]
    model: ModelSpec
    files_from: str | None = None
    variant: str = DEFAULT_PRESET
    overrides: dict[str, Any] = field(default_factory=dict)  # explicit method options over the preset
    classes: list[str] = field(default_factory=list)
    top_k: int | None = None
    labels: Path | None = None
    out: Path = Path("vitcam-out")
    save_maps: bool = False
    overlays: bool = True
    overlay_format: str = "auto"  # auto (JPEG for JPEG inputs, else PNG), jpg, png or webp
    overlay_size: int | None = DEFAULT_OVERLAY_SIDE  # the overlays' longest side; None: the original's
    colormap: str = "inferno"
    alpha: float = 0.5
    batch_size: int = 8
    workers: int | None = None  # decoding processes; None: default_workers(device)
    device: str = "auto"
    precision: str = "fp32"
    mask_batch: int | None = None
    engine: str = "auto"
    adcc: bool = True
    shard: Shard | None = None
    skip_existing: bool = False
    quiet: bool = False
    jsonl: bool = False


def library_versions() -> dict[str, str]:
    return {
        "vitcam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def _target_request(options: ExplainOptions, loaded: LoadedModel) -> TargetRequest:
    class_names = loaded.class_names
    chosen = sum([bool(options.classes), options.top_k is not None, options.labels is not None])
    if chosen > 1:
        raise VitcamError("--class, --top-k and --labels choose the target classes: use only one of them")
    if options.top_k is not None and not 1 <= options.top_k <= len(class_names):
        raise VitcamError(
            f"--top-k {options.top_k}: must be between 1 and {len(class_names)} (the class count)"
        )
    classes = tuple(dict.fromkeys(loaded.resolve_class(value) for value in options.classes))
    return TargetRequest(top_k=options.top_k or 1, classes=classes, from_labels=options.labels is not None)


def _check_options(options: ExplainOptions) -> None:
    if not 0.0 <= options.alpha <= 1.0:
        raise VitcamError(f"--alpha {options.alpha}: must be between 0 and 1")
    if options.batch_size < 1:
        raise VitcamError("--batch-size must be at least 1")
    if options.workers is not None and options.workers < 0:
        raise VitcamError("--workers must be 0 (decode in the main process) or more")
    if options.mask_batch is not None and options.mask_batch < 1:
        raise VitcamError("--mask-batch must be at least 1 (or leave it out for automatic)")
    check_overlay_options(options.overlay_format, options.overlay_size)
    if options.variant not in PRESETS:
        raise VitcamError(f"--variant {options.variant}: use one of {', '.join(PRESETS)}")
    if not options.inputs and options.files_from is None:
        raise VitcamError("no inputs: pass image files or folders, or --files-from FILE (- for stdin)")
    colormap_table(options.colormap)


def _prepare_out(out: Path, settings: dict[str, Any], resume: bool, summary_name: str) -> None:
    """Create ``out`` and check it is writable; when resuming, refuse a folder written with other settings."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as probe:  # a private file: shards check the same folder
            probe.write(b"ok")
            probe.flush()
    except OSError as error:
        raise VitcamError(
            f"--out {out}: cannot write there ({error.strerror}); choose another folder"
        ) from error
    if resume:  # temporary files of a killed run: never results, safe to remove
        remove_stale_temporaries(out)
    previous = out / summary_name
    if resume and previous.is_file():
        try:
            before = json.loads(previous.read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError):
            before = {}
        changed = [key for key in RESUME_KEYS if key in before and before[key] != settings.get(key)]
        if changed:
            raise VitcamError(
                f"--skip-existing: {out} was written with different {', '.join(changed)} settings; "
                "rerun with the same options or use a new --out"
            )


def _error_row(item: ImageItem, message: str) -> dict[str, Any]:
    return {
        "path": str(item.path),
        "status": "error",
        "error": message,
        "class_index": None,
        "class_name": None,
        "probability": None,
        "rank": None,
        "overlay": None,
        "map": None,
        "width": None,
        "height": None,
        **dict.fromkeys(PARTS),
    }


def _non_finite(logits: torch.Tensor, maps: torch.Tensor, precision: str) -> str | None:
    """Why an image's results cannot be written (never a map of NaNs), or None when they are finite."""
    cause = "fp16 overflow: try --precision bf16 or fp32" if precision == "fp16" else "a broken checkpoint?"
    if not torch.isfinite(logits).all():
        return f"non-finite prediction (NaN or inf logits; {cause})"
    if not torch.isfinite(maps).all():
        return f"non-finite saliency scores (NaN or inf; {cause})"
    return None


def _output_name(item: ImageItem, class_index: int, several: bool, suffix: str) -> str:
    """``<key><suffix>``, or ``<key>.<class><suffix>`` when each image gets several classes."""
    return f"{item.key}.{class_index}{suffix}" if several else f"{item.key}{suffix}"


def _progress(console: Console, disabled: bool) -> Progress:
    return Progress(
        TextColumn("explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        disable=disabled,
        transient=False,
    )


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="vitcam explain", show_header=False, title_justify="left")
    images = summary["images"]
    table.add_row("images ok", str(images["ok"]))
    table.add_row("images failed", str(images["error"]))
    table.add_row("resumed (skipped)", str(images["skipped"]))
    if summary["adcc"]:
        adcc = summary["adcc"]
        table.add_row("ADCC (of means / mean)", f"{adcc['adcc']:.4f} / {adcc['adcc_mean']:.4f}")
        table.add_row(
            "drop / increase / coherency / complexity",
            " / ".join(
                f"{adcc[name]:.4f}" for name in ("average_drop", "increase", "coherency", "complexity")
            ),
        )
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("images / s", f"{summary['images_per_second']:.2f}")
    table.add_row("method", describe(summary["settings"]["method"]))
    table.add_row("engine", summary["settings"]["engine"])
    table.add_row("device", f"{summary['device']} {summary['precision']}")
    table.add_row("output", summary["out"])
    return table


def write_explain_report(path: Path, summary: dict[str, Any], gallery: Gallery) -> None:
    """The report of a ``vitcam explain`` run (or of its merged shards), from its summary.json."""
    images, method, adcc = summary["images"], summary["settings"]["method"], summary["adcc"] or {}
    facts = [
        ("model", summary["settings"]["model"]["model"]),
        ("method", f"ViT-ReciproCAM {describe(method)}, {summary['settings']['engine']} engine"),
        ("images", f"{images['ok']} explained, {images['error']} failed, {images['skipped']} resumed"),
        ("device", f"{summary['device']} {summary['precision']}"),
        ("time", f"{summary['wall_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s"),
    ]
    columns = ["method", "images", *(name for name in METRICS if name in adcc)]
    row = [method["variant"], str(images["ok"]), *(f"{adcc[name]:.4f}" for name in columns[2:])]
    notes = (
        [ADCC_DEFINITION]
        if adcc
        else ["ADCC was not computed (--no-adcc): the gallery is sorted by probability."]
    )
    if images["skipped"]:
        notes.append("The gallery shows images explained in this run; resumed images are in results.jsonl.")
    write_report(path, "vitcam explain", facts, columns, [row], gallery.cards(), gallery.offered, notes)


def run_explain(options: ExplainOptions, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Explain every input image; return the exit code (0 all ok, 1 some failed, 130 interrupted).

    Under torchrun every rank explains its own shard on its own device, and rank 0 merges the shards
    once all have finished.
    """
    ranked = torchrun_rank()
    if ranked is None:
        return _explain_shard(options, stdin, stdout)
    if options.shard is not None:
        raise VitcamError("--shard splits a run by hand; under torchrun every rank takes its shard itself")
    rank, world, local_rank = ranked
    device = rank_device(resolve_device(options.device), local_rank)
    mine = replace(options, shard=Shard(rank, world), device=str(device), quiet=options.quiet or rank > 0)
    with process_group(device):
        code = _explain_shard(mine, stdin, stdout)
        dist.barrier()  # every shard's files are complete
        if rank == 0:
            summary = merge_shards([options.out], options.out, write_explain_report)
            Console(stderr=True, quiet=options.quiet).print(summary_table(summary))
            code = EXIT_SOME_FAILED if summary["images"]["error"] else EXIT_OK
        dist.barrier()
    return code


def _explain_shard(options: ExplainOptions, stdin: TextIO | None, stdout: TextIO | None) -> int:
    """One process's run: every image, or the images of ``options.shard``."""
    started = time.perf_counter()
    stdout = stdout or sys.stdout
    console = Console(stderr=True, quiet=options.quiet)
    _check_options(options)
    device = resolve_device(options.device)
    check_precision(options.precision, device)

    listed = read_path_list(options.files_from, stdin) if options.files_from else []
    items = discover(options.inputs, listed, skip=output_folders(options.out))
    if not items:
        where = ", ".join(options.inputs) or options.files_from
        raise VitcamError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    shard = options.shard
    part = shard.suffix if shard else ""
    if shard:
        items = shard.take(items)

    loaded: LoadedModel = options.model.load(device)
    request = _target_request(options, loaded)
    labels = read_labels(options.labels, items, loaded.resolve_class) if options.labels else {}
    method = PRESETS[options.variant].with_overrides(**options.overrides)
    explainer = ReciproCAM(
        loaded.model, loaded.layout, method, loaded.input_size, options.mask_batch, options.engine
    )

    settings = {
        "model": loaded.info,
        "method": {"name": "reciprocam", "variant": options.variant, **method.as_dict()},
        "engine": explainer.engine.name,
        "targets": request.describe() | ({"labels": str(options.labels)} if options.labels else {}),
        "colormap": options.colormap,
        "alpha": options.alpha,
        "overlays": {"format": options.overlay_format, "size": options.overlay_size or "original"}
        if options.overlays
        else None,
        "save_maps": options.save_maps,
        "batch_size": options.batch_size,
        "mask_batch": options.mask_batch or "auto",
    }
    _prepare_out(options.out, settings, options.skip_existing, f"summary{part}.json")
    summary: dict[str, Any] = {
        "tool": "vitcam explain",
        "status": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "settings": settings,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": options.precision,
        "out": str(options.out),
        "shard": f"{shard.index}/{shard.count}" if shard else None,
    }
    write_json_atomic(options.out / f"summary{part}.json", summary)

    manifest = Manifest(
        options.out,
        resume=options.skip_existing,
        needs_overlay=options.overlays,
        needs_map=options.save_maps,
        part=part,
    )
    todo = [item for item in items if str(item.path) not in manifest.done]
    progress = _progress(console, disabled=options.quiet or not console.is_terminal)
    task = progress.add_task("explain", total=len(todo), rate="")
    loop_started = time.perf_counter()

    def emit(rows: list[dict[str, Any]]) -> None:
        if options.jsonl:
            stdout.write("".join(json.dumps(row) + "\n" for row in rows))
            stdout.flush()
        finished = progress.tasks[0].completed + 1
        rate = finished / max(time.perf_counter() - loop_started, 1e-9)
        progress.update(task, advance=1, rate=f"{rate:.1f} img/s")

    turns = Turns(enabled=device.type == "cpu")
    writer = OutputWriter(
        options.out, manifest, emit, options.colormap, options.alpha, options.variant, turns
    )
    status = "complete"
    try:
        with progress:
            runnable = []
            for item in todo:
                label = labels.get(item.path)
                if isinstance(label, str):  # --labels has no row for this image
                    writer.submit_rows([_error_row(item, label)])
                else:
                    runnable.append(item)
            _explain_items(runnable, loaded, explainer, request, labels, options, device, writer, turns)
            writer.drain()
    except KeyboardInterrupt:
        status = "interrupted"
        writer.drain()
    except OSError as error:  # out of disk space, the folder removed or made read-only mid-run
        writer.abandon()
        with contextlib.suppress(OSError):
            manifest.close()
        raise VitcamError(
            f"--out {options.out}: writing failed ({error.strerror or error}); the images finished before "
            f"are intact in {manifest.jsonl.name}: free space or fix the folder, then rerun with "
            "--skip-existing"
        ) from error
    counts: Counts = manifest.finish(csv_too=shard is None)
    elapsed = time.perf_counter() - started
    summary.update(
        status=status,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        images={
            "ok": counts.images_ok,
            "error": counts.images_error,
            "skipped": len(items) - len(todo),
            "total": len(items),
        },
        rows=counts.rows,
        wall_seconds=round(elapsed, 3),
        images_per_second=round(len(todo) / elapsed, 3) if elapsed > 0 else 0.0,
        adcc=counts.metrics or None,
        mask_batch_reductions=explainer.reductions,
    )
    write_json_atomic(options.out / f"summary{part}.json", summary)
    if shard is None:  # a shard's report comes with the merge
        write_explain_report(options.out / "report.html", summary, writer.gallery)
    console.print(summary_table(summary))
    if status == "interrupted":
        # even with --quiet: the one line that says how to get the rest
        print("interrupted: rerun the same command with --skip-existing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if counts.images_error else EXIT_OK


def _explain_items(
    items: list[ImageItem],
    loaded: LoadedModel,
    explainer: ReciproCAM,
    request: TargetRequest,
    labels: dict[Path, int | str],
    options: ExplainOptions,
    device: torch.device,
    writer: OutputWriter,
    turns: Turns,
) -> None:
    several = request.per_image > 1
    preprocessing = Preprocessing(loaded.transform)
    # without overlay files, a thumbnail-size copy is enough for the report's gallery
    plan = DecodePlan(preprocessing, options.overlay_size if options.overlays else THUMBNAIL_SIDE)
    loader = make_loader(
        ImageFiles(items, plan, turns),
        options.batch_size,
        default_workers(device) if options.workers is None else options.workers,
        pin_memory=device.type == "cuda",
    )
    for batch in loader:
        failures = dict(batch.failures)
        if batch.images is None:
            for index, message in failures.items():
                writer.submit_rows([_error_row(items[index], message)])
            continue
        batch_items = [items[i] for i in batch.indices]
        batch_labels = (
            torch.tensor([int(labels[item.path]) for item in batch_items]) if request.from_labels else None
        )
        images = preprocessing.finish(batch.images.to(device, non_blocking=True))
        with turns.engine(), torch.inference_mode(), autocast(options.precision, device):
            result = explainer(images, request.chooser(batch_labels))
            values = {}
            if options.adcc:
                values = measure(explainer, loaded.model, images, result, MetricSettings())
        # per (image, class): the re-explanation reuses the prediction and the map just computed
        scores = {name: value.view(len(batch_items), -1).cpu() for name, value in values.items()}
        probabilities = torch.softmax(result.logits, dim=-1).gather(1, result.classes).cpu()
        class_ranks = ranks(result.logits, result.classes).cpu()
        classes = result.classes.cpu()
        maps = result.maps.cpu()
        logits = result.logits.cpu()
        for row_index, item in enumerate(batch_items):
            for index in [i for i in failures if i < batch.indices[row_index]]:  # keep input order
                writer.submit_rows([_error_row(items[index], failures.pop(index))])
            problem = _non_finite(logits[row_index], maps[row_index], options.precision)
            if problem:
                writer.submit_rows([_error_row(item, problem)])
                continue
            width, height = size = batch.sizes[row_index]
            overlay = batch.overlay(row_index)
            extension = overlay_extension(options.overlay_format, item.path)
            rows = []
            for t in range(classes.shape[1]):
                class_index = int(classes[row_index, t])
                rows.append(
                    {
                        "path": str(item.path),
                        "status": "ok",
                        "error": None,
                        "class_index": class_index,
                        "class_name": loaded.class_names[class_index],
                        "probability": round(float(probabilities[row_index, t]), 6),
                        "rank": int(class_ranks[row_index, t]),
                        "overlay": "overlays/" + _output_name(item, class_index, several, f".{extension}")
                        if options.overlays
                        else None,
                        "map": "maps/" + _output_name(item, class_index, several, ".npy")
                        if options.save_maps
                        else None,
                        "width": width,
                        "height": height,
                        **{
                            name: round(float(scores[name][row_index, t]), 6) if scores else None
                            for name in PARTS
                        },
                    }
                )
            view = view_in((overlay.shape[1], overlay.shape[0]), size, preprocessing.view(size))
            writer.submit({"rows": rows, "maps": list(maps[row_index]), "overlay": overlay, "view": view})
        for index, message in failures.items():
            writer.submit_rows([_error_row(items[index], message)])
