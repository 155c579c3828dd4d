"""The ``vitcam`` command line: parse options, call a pipeline, turn errors into one line and an exit code."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from vitcam_cli import __version__
from vitcam_cli.config import load_config
from vitcam_cli.data import DEFAULT_OVERLAY_SIDE
from vitcam_cli.distributed import parse_shard
from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.reciprocam import DEFAULT_PRESET
from vitcam_cli.models import ModelSpec
from vitcam_cli.outputs.overlay import DEFAULT_COLORMAP

app = typer.Typer(
    name="vitcam",
    help="Fast, exact ViT-ReciproCAM explanations for timm Vision Transformers, for whole folders of images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

MODEL, METHOD, TARGETS, OUTPUT, RUN = "Model", "ViT-ReciproCAM", "Classes to explain", "Output", "Run"
Variant = Literal["official", "otx", "openvino-xai"]


def _config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        try:
            defaults = load_config(value, ctx.command, ctx.info_name or "explain")
        except VitcamError as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(error.exit_code) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


# options shared by several commands
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", rich_help_panel=MODEL,
        help="timm model name, hf-hub:ORG/NAME, local-dir:PATH, or a folder with config.json.",
    ),
]  # fmt: skip
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        help="Weights to load: .safetensors, or .pth/.pt/.bin (weights only; 'state_dict'/'model' "
        "containers and 'module.' prefixes are unwrapped).",
        rich_help_panel=MODEL,
    ),
]
PretrainedOption = Annotated[
    bool,
    typer.Option(
        "--pretrained/--no-pretrained",
        help="Load the model's pretrained weights (timm's hub cache); --no-pretrained: random weights.",
        rich_help_panel=MODEL,
    ),
]
NumClassesOption = Annotated[
    int | None, typer.Option(help="Override the classifier's class count.", rich_help_panel=MODEL)
]
ImgSizeOption = Annotated[
    str | None,
    typer.Option(help="Override the input size: 224 or HEIGHTxWIDTH (e.g. 112x160).", rich_help_panel=MODEL),
]
KernelOption = Annotated[
    Literal["gaussian", "single"] | None,
    typer.Option(
        help="Mask: 3x3 Gaussian window or the single token (1x1). (default: gaussian)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
TargetBlockOption = Annotated[
    int | None,
    typer.Option(
        help="Block whose first LayerNorm output is masked (-1 = last). (default: from --variant)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
SkipOption = Annotated[
    Literal["ln", "masked-input", "input"] | None,
    typer.Option(
        help="What the target block's skip path carries: the masked LayerNorm output, the masked block "
        "input, or the unmasked block input. (default: from --variant)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
ScoreOption = Annotated[
    Literal["softmax", "logit", "contrast"] | None,
    typer.Option(
        help="Class score of each masked copy; contrast = the class logit minus the log-sum-exp of the other "
        "classes. (default: from --variant)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
SubtractOption = Annotated[
    Literal["none", "empty"] | None,
    typer.Option(
        help="empty: subtract the score of the copy with every patch token masked out and keep the positive "
        "part (only windows that raise the class count). (default: none)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
FuseOption = Annotated[
    int | None,
    typer.Option(
        "--fuse-blocks",
        help="Average the maps of the target block and the N-1 blocks before it. (default: 1)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
MaskBatchOption = Annotated[
    int | None,
    typer.Option(
        help="Masked sequences per forward chunk (bounds peak memory). (default: automatic)",
        rich_help_panel=METHOD, show_default=False,
    ),
]  # fmt: skip
EngineOption = Annotated[
    Literal["auto", "fast", "dense"],
    typer.Option(
        help="fast: the exact compressed path (standard timm ViT blocks); dense: every masked copy at full "
        "length; auto: fast wherever it is exact.",
        rich_help_panel=METHOD,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN)]
PrecisionOption = Annotated[
    Literal["fp32", "bf16", "fp16"],
    typer.Option(help="Autocast precision (fp16 on CUDA only); scores stay float32.", rich_help_panel=RUN),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        help="TOML file with any of these options (flags on the command line win).",
        callback=_config_callback, is_eager=True, rich_help_panel=RUN,
    ),
]  # fmt: skip
DebugOption = Annotated[bool, typer.Option(help="Show full tracebacks for errors.", rich_help_panel=RUN)]
ShardOption = Annotated[
    str | None,
    typer.Option(
        help="Process only shard I of N (every N-th image from the I-th, 0-based) into part files; combine "
        "the finished shards with 'vitcam merge'. Under torchrun each rank takes its shard itself.",
        rich_help_panel=RUN,
    ),
]
OverlayFormatOption = Annotated[
    Literal["auto", "jpg", "png", "webp"],
    typer.Option(
        help="Overlay file format; auto: JPEG for JPEG inputs, PNG for every other input.",
        rich_help_panel=OUTPUT,
    ),
]
OverlaySizeOption = Annotated[
    str,
    typer.Option(
        help="Longest side of the overlays in pixels (smaller images keep their size), or 'original'.",
        rich_help_panel=OUTPUT,
    ),
]
VARIANT_HELP = (
    "Preset of the published implementations: official = block -2, skip input, softmax; "
    "otx = block -1, skip ln, softmax; openvino-xai = block -1, skip masked-input, logit."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitcam {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Explain ViT predictions with ViT-ReciproCAM: overlays, raw maps and a manifest for every image."""


def _parse_img_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
        raise VitcamError(f"--img-size {value}: use one number (224) or HEIGHTxWIDTH (112x160)")
    return (sizes[0], sizes[-1])


def _parse_overlay_size(value: str) -> int | None:
    """``original`` (None) or a longest side in pixels."""
    if value.strip().lower() == "original":
        return None
    try:
        side = int(value)
    except ValueError:
        side = 0
    if side < 1:
        raise VitcamError(f"--overlay-size {value}: use 'original' or a longest side in pixels (e.g. 1024)")
    return side


def _model_spec(
    model: str | None,
    checkpoint: Path | None,
    pretrained: bool,
    num_classes: int | None,
    img_size: str | None,
) -> ModelSpec:
    if model is None:
        raise VitcamError("--model is required (a timm name, hf-hub:ORG/NAME, local-dir:PATH or a folder)")
    return ModelSpec(model, checkpoint, pretrained, num_classes, _parse_img_size(img_size))


def _overrides(
    kernel: str | None,
    target_block: int | None,
    skip: str | None,
    score: str | None,
    subtract: str | None,
    fuse: int | None,
) -> dict[str, object]:
    """The method options given explicitly: they win over the --variant preset."""
    given = {"kernel": kernel, "target_block": target_block, "skip": skip, "score": score}
    given |= {"subtract": subtract, "fuse": fuse}
    return {name: value for name, value in given.items() if value is not None}


def _run(action: Callable[[], int], debug: bool) -> None:
    """Run a pipeline; a user error is one line on stderr (a traceback only with --debug)."""
    try:
        code = action()
    except VitcamError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as error:
        if debug:
            raise
        print(
            f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr
        )
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def explain(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image files and folders (searched recursively).", show_default=False),
    ] = None,
    files_from: Annotated[
        str | None,
        typer.Option("--files-from", help="Also read image paths, one per line, from FILE ('-' for stdin)."),
    ] = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = True,
    num_classes: NumClassesOption = None,
    img_size: ImgSizeOption = None,
    variant: Annotated[Variant, typer.Option(help=VARIANT_HELP, rich_help_panel=METHOD)] = DEFAULT_PRESET,
    kernel: KernelOption = None,
    target_block: TargetBlockOption = None,
    skip: SkipOption = None,
    score: ScoreOption = None,
    subtract: SubtractOption = None,
    fuse_blocks: FuseOption = None,
    mask_batch: MaskBatchOption = None,
    engine: EngineOption = "auto",
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class", "-c", help="Explain this class (index or name); repeatable.", rich_help_panel=TARGETS
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="Explain the K most probable classes (one map each). (default: 1)",
            rich_help_panel=TARGETS,
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,label' (label: index or class name): explain each image's labelled class.",
            rich_help_panel=TARGETS,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUT)] = Path(
        "vitcam-out"
    ),
    save_maps: Annotated[
        bool,
        typer.Option(
            help="Also save raw float32 maps (token grid, unscaled) as .npy.", rich_help_panel=OUTPUT
        ),
    ] = False,
    overlays: Annotated[
        bool,
        typer.Option(
            help="Write an overlay per explained class; --no-overlays: only maps, scores and rows.",
            rich_help_panel=OUTPUT,
        ),
    ] = True,
    overlay_format: OverlayFormatOption = "auto",
    overlay_size: OverlaySizeOption = str(DEFAULT_OVERLAY_SIDE),
    colormap: Annotated[
        str, typer.Option(help="Any matplotlib colormap for the overlays.", rich_help_panel=OUTPUT)
    ] = DEFAULT_COLORMAP,
    alpha: Annotated[
        float, typer.Option(help="Heatmap opacity over the image (0..1).", rich_help_panel=OUTPUT)
    ] = 0.5,
    adcc: Annotated[
        bool,
        typer.Option(
            help="Score every map with ADCC (re-explains the map-masked image; about doubles the time).",
            rich_help_panel=OUTPUT,
        ),
    ] = True,
    skip_existing: Annotated[
        bool,
        typer.Option(
            help="Resume: keep finished images in --out and process only the missing ones.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    jsonl: Annotated[
        bool,
        typer.Option(
            help="Also print each result row as JSON on stdout (for pipes).", rich_help_panel=OUTPUT
        ),
    ] = False,
    shard: ShardOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per batch.", rich_help_panel=RUN)
    ] = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Image-decoding worker processes (0 = in the main process). (default: min(4, cores) on a "
            "CPU, min(4, cores - 1) with a GPU)",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.", rich_help_panel=RUN)
    ] = False,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> None:
    """Explain every image: overlays/, maps/ (--save-maps), results.jsonl/.csv and summary.json under --out.

    Exit codes: 0 all images explained, 1 finished but some inputs failed, 2 usage or model error.
    """
    from vitcam_cli.pipeline import ExplainOptions, run_explain

    def action() -> int:
        options = ExplainOptions(
            inputs=list(inputs or []),
            files_from=files_from,
            model=_model_spec(model, checkpoint, pretrained, num_classes, img_size),
            variant=variant,
            overrides=_overrides(kernel, target_block, skip, score, subtract, fuse_blocks),
            classes=list(classes or []),
            top_k=top_k,
            labels=labels,
            out=out,
            save_maps=save_maps,
            overlays=overlays,
            overlay_format=overlay_format,
            overlay_size=_parse_overlay_size(overlay_size),
            colormap=colormap,
            alpha=alpha,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision,
            mask_batch=mask_batch,
            engine=engine,
            adcc=adcc,
            shard=parse_shard(shard) if shard else None,
            skip_existing=skip_existing,
            quiet=quiet,
            jsonl=jsonl,
        )
        return run_explain(options)

    _run(action, debug)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="Dataset folder (searched recursively).", show_default=False)],
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = True,
    num_classes: NumClassesOption = None,
    img_size: ImgSizeOption = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--methods",
            help="Saliency methods, repeatable or comma-separated: reciprocam[:PRESET[:single]] (e.g. "
            "reciprocam:otx:single), "
            "gradcam, rollout, relevance. The first one is gated by --fail-under. (default: reciprocam)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    mask_batch: MaskBatchOption = None,
    engine: EngineOption = "auto",
    labels: Annotated[
        Path | None,
        typer.Option(help="CSV 'file,label' (index or class name).", rich_help_panel="Data"),
    ] = None,
    class_map: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'folder,class' for ImageFolder trees whose folders are not class names.",
            rich_help_panel="Data",
        ),
    ] = None,
    boxes: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,x1,y1,x2,y2' (original-image pixels, x2/y2 exclusive; several rows per file): "
            "adds the pointing game and energy-in-box.",
            rich_help_panel="Data",
        ),
    ] = None,
    target: Annotated[
        Literal["predicted", "label"],
        typer.Option(help="Explain the predicted class or the labelled one.", rich_help_panel="Data"),
    ] = "predicted",
    limit: Annotated[
        int | None,
        typer.Option(help="Evaluate a random subset of N images (see --seed).", rich_help_panel="Data"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit subset.", rich_help_panel="Data")] = 0,
    insertion_deletion: Annotated[
        bool,
        typer.Option(
            help="Also compute insertion and deletion AUC (2 x (steps+1) forward passes per image).",
            rich_help_panel="Metrics",
        ),
    ] = True,
    steps: Annotated[
        int, typer.Option(help="Steps of the insertion/deletion curves.", rich_help_panel="Metrics")
    ] = 20,
    baseline: Annotated[
        Literal["blur", "zero"],
        typer.Option(help="What deleted pixels become: a blurred copy or zeros.", rich_help_panel="Metrics"),
    ] = "blur",
    bootstrap: Annotated[
        int,
        typer.Option(
            help="Add 95% bootstrap intervals (this many resamples of the images) to every metric.",
            rich_help_panel="Metrics",
        ),
    ] = 0,
    fail_under: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when the first method's --metric is below this value (CI gate).",
            rich_help_panel="Metrics",
        ),
    ] = None,
    metric: Annotated[
        Literal["adcc", "adcc_mean", "coherency", "insertion", "pointing_game", "energy_in_box"],
        typer.Option(help="The metric --fail-under gates on.", rich_help_panel="Metrics"),
    ] = "adcc",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUT)] = Path(
        "vitcam-eval"
    ),
    save_overlays: Annotated[
        bool, typer.Option(help="Keep every method's overlay of every image.", rich_help_panel=OUTPUT)
    ] = False,
    overlay_format: OverlayFormatOption = "auto",
    overlay_size: OverlaySizeOption = str(DEFAULT_OVERLAY_SIDE),
    colormap: Annotated[
        str, typer.Option(help="Any matplotlib colormap for the overlays.", rich_help_panel=OUTPUT)
    ] = DEFAULT_COLORMAP,
    alpha: Annotated[float, typer.Option(help="Heatmap opacity (0..1).", rich_help_panel=OUTPUT)] = 0.5,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print metrics.json to stdout.", rich_help_panel=OUTPUT)
    ] = False,
    markdown: Annotated[
        bool, typer.Option(help="Print the comparison as a Markdown table to stdout.", rich_help_panel=OUTPUT)
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per batch.", rich_help_panel=RUN)
    ] = 16,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Image-decoding worker processes (0 = in the main process). (default: min(4, cores) on a "
            "CPU, min(4, cores - 1) with a GPU)",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or table.", rich_help_panel=RUN)
    ] = False,
    shard: ShardOption = None,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> None:
    """Measure saliency methods on a dataset: ADCC, insertion/deletion, pointing game, energy-in-box.

    Writes metrics.json, per_image.csv and report.html under --out. Exit codes: 0 ok, 1 some inputs failed
    or the --fail-under gate failed, 2 usage or model error.
    """
    from vitcam_cli.evaluate import EvaluateOptions, run_evaluate

    def action() -> int:
        specs = [spec for value in (methods or ["reciprocam"]) for spec in value.split(",") if spec.strip()]
        options = EvaluateOptions(
            data=data,
            model=_model_spec(model, checkpoint, pretrained, num_classes, img_size),
            labels=labels,
            boxes=boxes,
            class_map=class_map,
            target=target,
            methods=specs,
            limit=limit,
            seed=seed,
            out=out,
            save_overlays=save_overlays,
            overlay_format=overlay_format,
            overlay_size=_parse_overlay_size(overlay_size),
            insertion_deletion=insertion_deletion,
            steps=steps,
            baseline=baseline,
            fail_under=fail_under,
            metric=metric,
            as_json=as_json,
            markdown=markdown,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision,
            mask_batch=mask_batch,
            engine=engine,
            colormap=colormap,
            alpha=alpha,
            quiet=quiet,
            shard=parse_shard(shard) if shard else None,
            bootstrap=bootstrap,
        )
        return run_evaluate(options)

    _run(action, debug)


@app.command()
def merge(
    folders: Annotated[list[Path], typer.Argument(help="Output folders holding the shards' part files.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where the merged run goes. (default: the first folder)", show_default=False
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
    debug: DebugOption = False,
) -> None:
    """Combine the finished shards of a '--shard I/N' run: explain's into one results.jsonl/.csv,
    summary.json and report.html; evaluate's into metrics.json, per_image.csv and report.html.
    Exit codes: 0 ok, 1 some images failed (or evaluate's --fail-under gate), 2 shards missing or unfinished.
    """
    from rich.console import Console

    from vitcam_cli.evaluate import merge_evaluation
    from vitcam_cli.outputs.merge import merge_shards
    from vitcam_cli.pipeline import EXIT_OK, EXIT_SOME_FAILED, summary_table, write_explain_report

    def action() -> int:
        destination = out or folders[0]
        if any(any(folder.glob("metrics.shard-*-of-*.json")) for folder in folders):
            return merge_evaluation(folders, destination, quiet, sys.stdout)
        summary = merge_shards(folders, destination, write_explain_report)
        Console(stderr=True, quiet=quiet).print(summary_table(summary))
        return EXIT_SOME_FAILED if summary["images"]["error"] else EXIT_OK

    _run(action, debug)


@app.command()
def bench(
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = True,
    num_classes: NumClassesOption = None,
    img_size: ImgSizeOption = None,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variant", help=VARIANT_HELP + " Repeatable. (default: all three)", rich_help_panel=METHOD
        ),
    ] = None,
    kernel: KernelOption = None,
    target_block: TargetBlockOption = None,
    skip: SkipOption = None,
    score: ScoreOption = None,
    subtract: SubtractOption = None,
    fuse_blocks: FuseOption = None,
    mask_batch: MaskBatchOption = None,
    engine: EngineOption = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per batch.", rich_help_panel=RUN)
    ] = 32,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.", rich_help_panel=RUN)] = 1,
    repeat: Annotated[
        int, typer.Option(help="Timed calls; the median is reported.", rich_help_panel=RUN)
    ] = 3,
    adcc: Annotated[
        bool,
        typer.Option(
            "--adcc",
            help="Also time each variant with its ADCC (as explain runs by default).",
            rich_help_panel=RUN,
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.", rich_help_panel=RUN)
    ] = False,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> None:
    """Time explaining against the plain forward pass it explains: same random batch, device and dtype.

    Reports images/s, the ratio explain time / forward time, and peak memory for each variant.
    """
    from rich.console import Console

    from vitcam_cli.bench import BenchOptions, bench_table, run_bench
    from vitcam_cli.methods.reciprocam import PRESETS

    def action() -> int:
        options = BenchOptions(
            model=_model_spec(model, checkpoint, pretrained, num_classes, img_size),
            variants=list(variants or PRESETS),
            overrides=_overrides(kernel, target_block, skip, score, subtract, fuse_blocks),
            engine=engine,
            mask_batch=mask_batch,
            batch_size=batch_size,
            device=device,
            precision=precision,
            warmup=warmup,
            repeat=repeat,
            adcc=adcc,
        )
        result = run_bench(options)
        if as_json:
            print(json.dumps(result))
        else:
            Console().print(bench_table(result))
        return 0

    _run(action, debug)


def main() -> None:
    app()
