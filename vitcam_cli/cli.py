"""The ``vitcam`` command line: parse options, call a pipeline, turn errors into one line and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from vitcam_cli import __version__
from vitcam_cli.config import load_config
from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.reciprocam import DEFAULT_PRESET
from vitcam_cli.outputs.overlay import DEFAULT_COLORMAP

app = typer.Typer(
    name="vitcam",
    help="Fast, exact ViT-ReciproCAM explanations for timm Vision Transformers, for whole folders of images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

MODEL = "Model"
TARGETS = "Classes to explain"
METHOD = "ViT-ReciproCAM"
OUTPUT = "Output"
RUN = "Run"


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


def _config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        try:
            defaults = load_config(value, ctx.command, ctx.info_name or "explain")
        except VitcamError as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(error.exit_code) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


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


def _default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


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
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            rich_help_panel=MODEL,
            help="timm model name, hf-hub:ORG/NAME, local-dir:PATH, or a folder with config.json.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Weights to load: .safetensors, or .pth/.pt/.bin (weights only; 'state_dict'/'model' "
            "containers and 'module.' prefixes are unwrapped).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Load the model's pretrained weights (timm's hub cache); --no-pretrained: random weights.",
            rich_help_panel=MODEL,
        ),
    ] = True,
    num_classes: Annotated[
        int | None, typer.Option(help="Override the classifier's class count.", rich_help_panel=MODEL)
    ] = None,
    img_size: Annotated[
        str | None,
        typer.Option(
            help="Override the input size: 224 or HEIGHTxWIDTH (e.g. 112x160).", rich_help_panel=MODEL
        ),
    ] = None,
    variant: Annotated[
        Literal["official", "otx", "openvino-xai"],
        typer.Option(
            help="Preset of the published implementations: official = block -2, skip input, softmax; "
            "otx = block -1, skip ln, softmax; openvino-xai = block -1, skip masked-input, logit.",
            rich_help_panel=METHOD,
        ),
    ] = DEFAULT_PRESET,
    kernel: Annotated[
        Literal["gaussian", "single"] | None,
        typer.Option(
            help="Mask: 3x3 Gaussian window or the single token (1x1). (default: gaussian)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    target_block: Annotated[
        int | None,
        typer.Option(
            help="Block whose first LayerNorm output is masked (-1 = last). (default: from --variant)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    skip: Annotated[
        Literal["ln", "masked-input", "input"] | None,
        typer.Option(
            help="What the target block's skip path carries: the masked LayerNorm output, the masked block "
            "input, or the unmasked block input. (default: from --variant)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    score: Annotated[
        Literal["softmax", "logit"] | None,
        typer.Option(
            help="Class score of each masked copy. (default: from --variant)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    mask_batch: Annotated[
        int | None,
        typer.Option(
            help="Masked sequences per forward chunk (bounds peak memory). (default: automatic)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
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
    colormap: Annotated[
        str, typer.Option(help="Any matplotlib colormap for the overlays.", rich_help_panel=OUTPUT)
    ] = DEFAULT_COLORMAP,
    alpha: Annotated[
        float, typer.Option(help="Heatmap opacity over the image (0..1).", rich_help_panel=OUTPUT)
    ] = 0.5,
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
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per batch.", rich_help_panel=RUN)
    ] = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Image-decoding worker processes (0 = in the main process). (default: min(4, cores-1))",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN)] = "auto",
    precision: Annotated[
        Literal["fp32", "bf16", "fp16"],
        typer.Option(
            help="Autocast precision (fp16 on CUDA only); scores stay float32.", rich_help_panel=RUN
        ),
    ] = "fp32",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.", rich_help_panel=RUN)
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with any of these options (flags on the command line win).",
            callback=_config_callback,
            is_eager=True,
            rich_help_panel=RUN,
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option(help="Show full tracebacks for errors.", rich_help_panel=RUN)
    ] = False,
) -> None:
    """Explain every image: overlays/, maps/ (--save-maps), results.jsonl/.csv and summary.json under --out.

    Exit codes: 0 all images explained, 1 finished but some inputs failed, 2 usage or model error.
    """
    from vitcam_cli.pipeline import ExplainOptions, run_explain

    def action() -> int:
        if model is None:
            raise VitcamError(
                "--model is required (a timm name, hf-hub:ORG/NAME, local-dir:PATH or a folder)"
            )
        options = ExplainOptions(
            inputs=list(inputs or []),
            files_from=files_from,
            model=model,
            checkpoint=checkpoint,
            pretrained=pretrained,
            num_classes=num_classes,
            img_size=_parse_img_size(img_size),
            variant=variant,
            kernel=kernel,
            target_block=target_block,
            skip=skip,
            score=score,
            classes=list(classes or []),
            top_k=top_k,
            labels=labels,
            out=out,
            save_maps=save_maps,
            colormap=colormap,
            alpha=alpha,
            batch_size=batch_size,
            workers=_default_workers() if workers is None else workers,
            device=device,
            precision=precision,
            mask_batch=mask_batch,
            skip_existing=skip_existing,
            quiet=quiet,
            jsonl=jsonl,
        )
        return run_explain(options)

    _run(action, debug)


def main() -> None:
    app()
