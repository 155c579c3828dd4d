"""``vitcam bench``: how long explaining takes next to the forward pass it explains, on random inputs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from vitcam_cli.defaults import BENCH_BATCH, PRESET_NAMES, PUBLISHED_PRESETS
from vitcam_cli.errors import ParameterError
from vitcam_cli.methods.factory import scored_reading
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, describe
from vitcam_cli.metrics.measure import MetricSettings, measure
from vitcam_cli.models import LoadedModel, ModelSpec
from vitcam_cli.runtime import autocast, check_precision, device_name, library_versions, resolve_device


@dataclass
class BenchOptions:
    model: ModelSpec
    variants: list[str] = field(default_factory=lambda: list(PUBLISHED_PRESETS))
    overrides: dict[str, Any] = field(default_factory=dict)  # explicit method options over the preset
    engine: str = "auto"
    mask_batch: int | None = None
    batch_size: int = BENCH_BATCH
    device: str = "auto"
    precision: str = "fp32"
    warmup: int = 1
    repeat: int = 3
    seed: int = 0
    adcc: bool = False


class PeakMemory:
    """Peak memory of one measured call: CUDA's allocator peak, or the process's peak RSS on the CPU.

    On Linux the RSS high-water mark is reset before each measurement (``/proc/self/clear_refs``);
    where that is impossible the figure is the process's lifetime peak, and ``reset_ok`` says so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset_ok = True

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.reset_ok = False

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        self.reset_ok = False
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_pair(
    forward: Callable[[], object],
    explain: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeat: int,
) -> tuple[float, float]:
    """Median seconds of ``forward`` and ``explain``, timed alternately so that a machine's drift
    (clock changes, a busy neighbour) hits both alike and their ratio stays fair."""
    for _ in range(warmup):
        forward()
        explain()
    pairs = [(_timed(forward, device), _timed(explain, device)) for _ in range(repeat)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def _adcc_cost(
    explainer: ReciproCAM,
    loaded: LoadedModel,
    images: torch.Tensor,
    device: torch.device,
    options: BenchOptions,
) -> dict[str, float]:
    """Explanation alone against explanation plus its ADCC (what ``vitcam explain`` does by default)."""

    def top1(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1, keepdim=True)

    def with_adcc() -> None:
        measure(explainer, loaded.model, images, explainer(images, top1), MetricSettings())

    alone, both = time_pair(
        lambda: explainer(images, top1), with_adcc, device, options.warmup, options.repeat
    )
    return {
        "adcc_seconds_per_batch": round(both, 4),
        "explain_with_adcc_images_per_s": round(options.batch_size / both, 3),
        "adcc_cost_ratio": round(both / alone, 3),
    }


def _with_reference(loaded: LoadedModel, images: torch.Tensor) -> LoadedModel:
    """A model that yields an embedding is timed explaining its similarity to a reference: the
    batch's first image (a classifier explains its top-1 class)."""
    if loaded.embedding is None:
        return loaded
    with torch.inference_mode():
        reference = loaded.model(images[:1]).float().cpu()
    return loaded.with_targets(reference, ["the batch's first image"], {"kind": "bench"})


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Time a plain forward pass, then each requested variant, on the same random batch."""
    for name, value, least in (("batch_size", options.batch_size, 1), ("repeat", options.repeat, 1),
                               ("warmup", options.warmup, 0)):  # fmt: skip
        if value < least:
            raise ParameterError(name, f"must be at least {least}", value)
    unknown = [v for v in options.variants if v not in PRESET_NAMES]
    if unknown or not options.variants:
        raise ParameterError("variant", f"use one or more of {', '.join(PRESET_NAMES)}", ", ".join(unknown))
    device = resolve_device(options.device)
    check_precision(options.precision, device)
    loaded: LoadedModel = options.model.load(device)
    generator = torch.Generator().manual_seed(options.seed)
    images = torch.randn((options.batch_size, *loaded.input_size), generator=generator).to(device)
    loaded = _with_reference(loaded, images)
    memory = PeakMemory(device)

    def top1(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1, keepdim=True)

    with torch.inference_mode(), autocast(options.precision, device):
        memory.reset()
        loaded.model(images)  # untimed: the forward pass's memory; its speed comes with each variant's
        forward_memory = memory.read_mb()
        runs = []
        for variant in options.variants:
            settings = PRESETS[variant].with_overrides(**options.overrides)
            settings, read = scored_reading(settings, loaded, "score" in options.overrides)
            explainer = ReciproCAM(
                read.model, read.layout, settings, read.input_size, options.mask_batch, options.engine,
                read.reading,
            )  # fmt: skip
            memory.reset()
            forward, seconds = time_pair(
                lambda: loaded.model(images),
                lambda e=explainer: e(images, top1),
                device,
                options.warmup,
                options.repeat,
            )
            runs.append(
                {
                    "variant": variant,
                    **settings.as_dict(),
                    "score": read.reading.map_score(settings.score),
                    "engine": explainer.engine.name,
                    "seconds_per_batch": round(seconds, 4),
                    "forward_seconds_per_batch": round(forward, 4),
                    "forward_images_per_s": round(options.batch_size / forward, 3),
                    "explain_images_per_s": round(options.batch_size / seconds, 3),
                    "ratio": round(seconds / forward, 3),
                    "peak_memory_mb": round(memory.read_mb(), 1),
                    "grid": list(explainer.engine.layout.grid),  # the target block's (a Swin stage's)
                }
            )
            if options.adcc:
                runs[-1] |= _adcc_cost(explainer, loaded, images, device, options)
    first = runs[0]
    return {
        "model": options.model.name,
        "input_size": list(loaded.input_size),
        "grid": list(loaded.layout.grid),
        "batch_size": options.batch_size,
        "target": "similarity to a reference image" if loaded.reading.similarity else "the top-1 class",
        "device": str(device),
        "device_name": device_name(device),
        "precision": options.precision,
        "repeat": options.repeat,
        "warmup": options.warmup,
        # the first variant's figures, all from the same alternately timed calls
        "forward_seconds_per_batch": first["forward_seconds_per_batch"],
        "forward_images_per_s": first["forward_images_per_s"],
        "forward_peak_memory_mb": round(forward_memory, 1),
        "explain_images_per_s": first["explain_images_per_s"],
        "ratio": first["ratio"],
        "peak_memory_mb": first["peak_memory_mb"],
        "memory_is_per_call": memory.reset_ok,
        "runs": runs,
        "versions": library_versions(),
    }


def bench_table(result: dict[str, Any]) -> Table:
    """One row per variant: its forward and explain rates and their ratio come from the same calls."""
    table = Table(
        title=f"vitcam bench: {result['model']}, batch {result['batch_size']}, {result['device_name']}, "
        f"{result['precision']}",
        title_justify="left",
        caption=f"the forward pass alone peaks at {result['forward_peak_memory_mb']:.0f} MB",
        caption_justify="left",
    )
    with_adcc = any("adcc_cost_ratio" in run for run in result["runs"])
    columns = [
        "run",
        "engine",
        "forward img/s",
        "img/s",
        "x forward",
        "peak MB",
        *(["x with ADCC"] if with_adcc else []),
    ]
    table.add_column("run", min_width=24)
    for column in columns[1:]:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for run in result["runs"]:
        rates = [f"{run[key]:.2f}" for key in ("forward_images_per_s", "explain_images_per_s", "ratio")]
        cells = [describe(run), run["engine"], *rates, f"{run['peak_memory_mb']:.0f}"]
        if with_adcc:
            cells.append(f"{run['adcc_cost_ratio']:.2f}")
        table.add_row(*cells)
    return table
