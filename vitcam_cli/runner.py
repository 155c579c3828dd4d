"""One batch run, shared by ``explain`` and ``evaluate``: image files in, explained images out to sinks.

``BatchRun.stream``: decoding workers -> every method (and the metrics that re-run the model) on each
batch -> every sink, one image at a time and in input order. On a CPU the image work takes turns with
the engine (see ``Turns``). ``run_command`` adds what both commands share around a run: one process,
a hand-made shard, or one shard per torchrun rank and the merge of the shards on rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor

from vitcam_cli.data import (
    Batch,
    Box,
    DecodePlan,
    GroundTruthBox,
    ImageFiles,
    ImageItem,
    default_workers,
    image_boxes,
    make_loader,
)
from vitcam_cli.distributed import Shard, process_group, rank_device, torchrun_rank
from vitcam_cli.errors import ParameterError
from vitcam_cli.interrupts import sigterm_as_interrupt
from vitcam_cli.methods.base import ClassChooser, Explanation, SaliencyMethod
from vitcam_cli.metrics.localization import BoxMasks
from vitcam_cli.metrics.measure import MetricSettings, measure
from vitcam_cli.models import LoadedModel
from vitcam_cli.outputs.folder import clear, is_output_folder, refuse_reuse
from vitcam_cli.outputs.lock import OutputLock
from vitcam_cli.outputs.overlay import view_in
from vitcam_cli.outputs.results import ImageResult, MethodOutput, Sink
from vitcam_cli.preprocessing import Preprocessing, Size, View
from vitcam_cli.runtime import autocast, resolve_device
from vitcam_cli.targets import ranks
from vitcam_cli.turns import Turns

EXIT_OK, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class RunSettings:
    """How a run computes, whatever it writes."""

    batch_size: int = 8
    workers: int | None = None  # decoding processes; None: default_workers(device)
    device: str = "auto"
    precision: str = "fp32"
    mask_batch: int | None = None  # masked sequences per chunk; None: automatic
    engine: str = "auto"

    def check(self) -> None:
        if self.batch_size < 1:
            raise ParameterError("batch_size", "must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ParameterError("workers", "must be 0 (decode in the main process) or more")
        if self.mask_batch is not None and self.mask_batch < 1:
            raise ParameterError("mask_batch", "must be at least 1 (or None for automatic)")


@dataclass
class MethodClock:
    """Seconds a method spent explaining (metrics excluded), after one untimed call with ``warm_up``."""

    warm_up: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def call(self, name: str, method: SaliencyMethod, images: Tensor, choose: ClassChooser) -> Explanation:
        if self.warm_up and name not in self.seconds:
            method(images, choose).maps.sum().item()  # no method pays the run's one-off set-up
        started = time.perf_counter()
        explanation = method(images, choose)
        explanation.maps.sum().item()  # waits for the device: the explanation alone is timed
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return explanation


def non_finite(outputs: Tensor, maps: Tensor, precision: str) -> str | None:
    """Why an image's results cannot be written (never a map of NaNs), or None when they are finite."""
    cause = "fp16 overflow: try {precision} bf16 or fp32" if precision == "fp16" else "a broken checkpoint?"
    if not torch.isfinite(outputs).all():
        return f"non-finite prediction (NaN or inf outputs; {cause})"
    if not torch.isfinite(maps).all():
        return f"non-finite saliency scores (NaN or inf; {cause})"
    return None


@dataclass
class BatchRun:
    """The images of one process, explained by every method, batch after batch."""

    items: list[ImageItem]
    loaded: LoadedModel
    methods: dict[str, SaliencyMethod]
    targets: Callable[[list[ImageItem]], ClassChooser]  # the targets to explain for a batch's images
    settings: RunSettings
    device: torch.device
    metrics: MetricSettings = field(default_factory=MetricSettings)
    overlay_side: int | None = 768  # of the copies overlays are drawn on; None: the original size
    boxes: dict[Path, list[GroundTruthBox]] | None = None  # ground truth for the localisation metrics
    clock: MethodClock = field(default_factory=MethodClock)
    turns: Turns = field(default_factory=lambda: Turns(enabled=False))  # shared with the sinks' threads
    # which of the chosen (values, targets) are real (a threshold pads the images with fewer); None: all
    keep: Callable[[Tensor, Tensor], Tensor] | None = None

    def stream(self, sinks: Sequence[Sink], advance: Callable[[int], None]) -> None:
        """Hand every image to every sink, in input order; ``advance`` counts finished images."""
        preprocessing = Preprocessing(self.loaded.transform)
        dataset = ImageFiles(self.items, DecodePlan(preprocessing, self.overlay_side), self.turns)
        workers = default_workers(self.device) if self.settings.workers is None else self.settings.workers
        loader = make_loader(dataset, self.settings.batch_size, workers, self.device.type == "cuda")
        for batch in loader:
            results = self._explain(batch, preprocessing) if batch.images is not None else {}
            failures = dict(batch.failures)
            for index in sorted([*batch.indices, *failures]):
                item = self.items[index]
                outcome = results.get(index) or failures.get(index, "")
                for sink in sinks:
                    if isinstance(outcome, str):
                        sink.failed(item, outcome)
                    else:
                        sink.explained(outcome)
            advance(len(batch.indices) + len(failures))

    def _explain(self, batch: Batch, preprocessing: Preprocessing) -> dict[int, ImageResult | str]:
        """Every decoded image of ``batch``: its result, or why it has none (non-finite scores)."""
        items = [self.items[index] for index in batch.indices]
        views = [preprocessing.view(size) for size in batch.sizes]
        images = preprocessing.finish(batch.images.to(self.device, non_blocking=True))
        inside, box_problems = self._inside_boxes(items, views, batch.sizes)
        choose = self.targets(items)
        with self.turns.engine(), torch.inference_mode(), autocast(self.settings.precision, self.device):
            outputs = {
                name: self._run_method(name, method, images, choose, inside)
                for name, method in self.methods.items()
            }
        results: dict[int, ImageResult | str] = {}
        for position, (index, item) in enumerate(zip(batch.indices, items, strict=True)):
            problems = [box_problems[position], *(output[1][position] for output in outputs.values())]
            problem = next((p for p in problems if p), None)
            if problem:
                results[index] = problem
                continue
            copy = batch.overlay(position)
            size = batch.sizes[position]
            view = view_in((copy.shape[1], copy.shape[0]), size, views[position])
            methods = {name: output[0][position] for name, output in outputs.items()}
            results[index] = ImageResult(item, size, copy, view, methods)
        return results

    def _inside_boxes(
        self, items: list[ImageItem], views: list[View | None], sizes: list[Size]
    ) -> tuple[BoxMasks | None, list[str | None]]:
        """Each image's boxes (clipped to the image) in input pixels, and per image why its boxes
        cannot be used (None when they can)."""
        if self.boxes is None:
            return None, [None] * len(items)
        input_size = (int(self.loaded.input_size[1]), int(self.loaded.input_size[2]))
        moved, problems = [], []
        for item, view, size in zip(items, views, sizes, strict=True):
            clipped = image_boxes(self.boxes[item.path], size)
            problems.append(clipped if isinstance(clipped, str) else None)
            boxes = [] if isinstance(clipped, str) else clipped
            placed = input_boxes([box for box, _ in boxes], view, input_size, *size)
            moved.append(list(zip(placed, (label for _, label in boxes), strict=True)))
        return BoxMasks.build(moved, input_size, self.device), problems

    def _run_method(
        self, name: str, method: SaliencyMethod, images: Tensor, choose: ClassChooser, inside: BoxMasks | None
    ) -> tuple[list[MethodOutput], list[str | None]]:
        """Per image: the method's output, and why it cannot be used (None when it can)."""
        explanation = self.clock.call(name, method, images, choose)
        values = {}
        if self.metrics.adcc or self.metrics.insertion_deletion or inside is not None:
            values = measure(method, self.loaded.model, images, explanation, self.metrics, inside)
        batch = images.shape[0]
        per_image = {metric: value.view(batch, -1).cpu() for metric, value in values.items()}
        outputs = explanation.outputs.float().cpu()
        read = method.reading.values(explanation.outputs).float().cpu()
        classes = explanation.classes.cpu()
        maps = explanation.maps.float().cpu()
        kept = self.keep(read, classes) if self.keep else torch.ones_like(classes, dtype=torch.bool)
        target_ranks = ranks(read, classes)
        results = [
            MethodOutput(
                maps=maps[i][kept[i]],
                classes=classes[i][kept[i]].tolist(),
                readings=read[i].gather(0, classes[i])[kept[i]].tolist(),
                ranks=target_ranks[i][kept[i]].tolist(),
                predicted=int(read[i].argmax()),
                values={metric: value[i][kept[i]].tolist() for metric, value in per_image.items()},
            )
            for i in range(batch)
        ]
        problems = [non_finite(outputs[i], maps[i], self.settings.precision) for i in range(batch)]
        return results, problems


def input_boxes(
    boxes: list[Box], view: View | None, input_size: tuple[int, int], width: int, height: int
) -> list[Box]:
    """Original-image boxes moved into the preprocessed input's pixels, the way preprocessing moved them."""
    rows, cols = input_size
    x0, y0, x1, y1 = view or (0.0, 0.0, float(width), float(height))
    sx, sy = cols / (x1 - x0), rows / (y1 - y0)
    return [((a - x0) * sx, (b - y0) * sy, (c - x0) * sx, (d - y0) * sy) for a, b, c, d in boxes]


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "")


PROGRESS_EVERY_S = 10.0  # in a log: at most one progress line this often (and one at the end)


class ProgressLines:
    """Progress for logs (stderr not a terminal): a plain line now and then, and one at the end unless
    the last line already said it all.

    Same calls as rich's ``Progress`` for one task: ``add_task``, ``advance``, and a ``with`` block.
    """

    def __init__(
        self, console: Console, label: str, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.label = label
        self.every = every
        self.clock = clock
        self.total = self.done = 0
        self.shown = -1  # the count the last line reported
        self.started = self.last = 0.0

    def add_task(self, description: str, total: int) -> int:
        self.total = total
        return 0

    def __enter__(self) -> ProgressLines:
        self.started = self.last = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.done != self.shown:
            self._line()

    def advance(self, task: int, count: float = 1) -> None:
        self.done += int(count)
        if self.clock() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        self.last, self.shown = now, self.done
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        remaining = f", {_clock_time(left)} left" if left is not None and self.done < self.total else ""
        self.console.print(
            f"{self.label}: {self.done}/{self.total} images, {rate:.1f} img/s, {_clock_time(elapsed)} "
            f"elapsed{remaining}",
            highlight=False,
            soft_wrap=True,
        )


def _clock_time(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def progress_bar(console: Console, label: str, quiet: bool) -> Progress | ProgressLines:
    """done/total, images/s and time left: a live bar on a terminal's stderr, a plain line at most every
    10 s (and at the end) in a log; nothing when quiet."""
    if not quiet and not console.is_terminal:
        return ProgressLines(console, label, PROGRESS_EVERY_S)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )


def note_skipped(skipped: list[Path], quiet: bool) -> None:
    """Say once that earlier output folders among the inputs were not searched for images."""
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        shown = ", ".join(map(str, skipped[:3])) + more
        Console(stderr=True, quiet=quiet).print(
            f"skipped {len(skipped)} vitcam output folder{'s' * (len(skipped) > 1)} among the inputs "
            f"(not searched for images): {shown}",
            highlight=False,
            soft_wrap=True,
        )


class Command(Protocol):
    """What ``explain`` and ``evaluate`` each add to a run."""

    out: Path
    resume: bool  # keep an earlier run in ``out`` and add to it (--skip-existing)
    overwrite: bool  # replace an earlier run in ``out`` whole (--overwrite)
    resumable: bool  # whether the command can resume at all

    def run(self, shard: Shard | None, device: torch.device, quiet: bool) -> int:
        """This process's images (all, or a shard's, then into part files); returns the exit code."""
        ...

    def merge(self, folders: list[Path], destination: Path, quiet: bool) -> int:
        """Combine the finished shards' part files into the outputs one process writes."""
        ...


def run_command(command: Command, shard: Shard | None, device: str, quiet: bool) -> int:
    """One process, a hand-made shard, or under torchrun one shard per rank merged by rank 0; SIGTERM
    stops any of them as Ctrl-C does."""
    with sigterm_as_interrupt():
        ranked = torchrun_rank()
        if ranked is None:
            resolved = resolve_device(device)
            with OutputLock(command.out, shard):
                refuse_reuse(command.out, shard, command.resume, command.overwrite, command.resumable)
                return command.run(shard, resolved, quiet)  # it clears the folder (--overwrite) itself
        return _run_ranks(command, shard, device, quiet, ranked)


def _run_ranks(
    command: Command, shard: Shard | None, device: str, quiet: bool, ranked: tuple[int, int, int]
) -> int:
    """Every torchrun rank runs its shard; rank 0 merges them. The ranks check the folder as one whole
    run before any of them writes, so they all take the same decision; rank 0 clears it for all."""
    if shard is not None:
        raise ParameterError(
            "shard", "splits a run by hand; under torchrun every rank takes its shard itself"
        )
    rank, world, local_rank = ranked
    resolved = rank_device(resolve_device(device), local_rank)
    with process_group(resolved), OutputLock(command.out, Shard(rank, world)):
        refuse_reuse(command.out, None, command.resume, command.overwrite, command.resumable)
        dist.barrier()  # every rank has looked at the folder as it was
        if rank == 0 and command.overwrite and is_output_folder(command.out):
            clear(command.out, None)
        command.overwrite = False  # done for every rank, before any of them writes
        dist.barrier()
        code = command.run(Shard(rank, world), resolved, quiet or rank > 0)
        dist.barrier()  # every rank's part files are complete
        if rank == 0:
            code = command.merge([command.out], command.out, quiet)
        dist.barrier()
    return code
