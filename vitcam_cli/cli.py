"""The ``vitcam`` command line: Typer options (each declared once), config files, flag names, one line per
error and exit codes. The library below it speaks of parameters, never of flags; this module names
them. Everything heavy is imported inside the commands, so ``vitcam --help`` and ``vitcam --version``
answer without loading torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import typer
import typer.core

from vitcam_cli import __version__
from vitcam_cli import defaults as D
from vitcam_cli.config import load_config
from vitcam_cli.errors import ParameterError, VitcamError, naming
from vitcam_cli.interrupts import INTERRUPTED_EXIT_CODES, interrupted_exit_code

MODEL, METHOD, TARGETS, OUTPUT, RUN, DATA, METRICS = (
    "Model", "ViT-ReciproCAM", "What to explain", "Output", "Run", "Data", "Metrics",
)  # fmt: skip
# library parameters whose flag has another name
FLAG_ALIASES = {"fuse": "fuse_blocks", "method": "methods"}


# what an option's value looks like in --help, by the option's name (the type's default otherwise)
METAVARS = {
    "out": "DIR", "model": "NAME", "device": "DEVICE", "img_size": "SIZE", "overlay_size": "SIDE",
    "shard": "I/N", "colormap": "NAME", "classes": "CLASS", "methods": "METHOD", "method": "METHOD",
    "data": "DIR",
}  # fmt: skip
METAVARS |= {"pretrained_tag": "TAG", "prompts": "TEMPLATE", "threshold": "P", "references": "FILE"}
_TYPE_METAVARS = {int: "N", float: "X", Path: "FILE", str: "TEXT"}
LONGEST_CHOICES = 18  # longer lists of choices are named in the help text, so that none wraps mid-word


def _tidy(param: Any) -> None:
    """One look for every option in --help: ``--top-k N``, ``--kernel gaussian|single``, flags bare, and
    every default as ``(default: ...)`` at the end of the help text."""
    if param.param_type_name == "argument":  # its name says what it takes: RUN_A, [INPUTS]...
        param.display_type_rich = lambda ctx: None
        param.metavar = param.name.upper()
        usage = param.metavar if param.required else f"[{param.metavar}]"
        usage += "..." if param.nargs != 1 else ""
        param.get_usage_pieces = lambda ctx: [usage]
        return
    described = param.type_descriptor
    default = param.default if param.show_default is not False else None
    if param.is_flag:
        param.metavar = ""
        default = param.opts[-1] if default and param.secondary_opts else None  # on by default
    elif described.is_choice:
        choices = [str(choice) for choice in described.choices]
        joined = "|".join(choices)
        param.metavar = joined if len(joined) <= LONGEST_CHOICES else "NAME"
        if param.metavar == "NAME" and not all(choice in (param.help or "") for choice in choices):
            param.help = f"{param.help} One of: {', '.join(choices)}."
    else:
        element = getattr(described.annotation, "__args__", (described.annotation,))[0]
        param.metavar = METAVARS.get(param.name, _TYPE_METAVARS.get(element, "VALUE"))
    if default is not None and param.show_default is not False:
        param.help = f"{param.help} (default: {default})"
    param.show_default = False


@contextlib.contextmanager
def _stacked_flag_pairs(params: list[Any]) -> Iterator[None]:
    """While --help is drawn: each ``--x/--no-x`` pair shown in one column, one name above the other, so
    that no option name is cut short at 80 columns (the parser keeps reading both)."""
    pairs = [(param, param.opts, param.secondary_opts) for param in params if param.secondary_opts]
    for param, opts, secondary in pairs:
        long = [name for name in opts if name.startswith("--")]
        param.opts = ["\n".join([*long, *secondary]), *(name for name in opts if name not in long)]
        param.secondary_opts = []
    try:
        yield
    finally:
        for param, opts, secondary in pairs:
            param.opts, param.secondary_opts = opts, secondary


class _Tidy:
    """--help that shows every option the same way (see ``_tidy``), --help itself as a bare flag."""

    params: list[Any]
    help: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _tidy(param)
        if self.help:  # docstring lines break where the source does: let each paragraph flow instead
            paragraphs = inspect.cleandoc(self.help).split("\n\n")
            self.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)

    def get_help_option(self, ctx: click.Context) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with _stacked_flag_pairs(self.params):
            super().format_help(ctx, formatter)


class TidyCommand(_Tidy, typer.core.TyperCommand):
    """A command whose --help shows every option the same way."""


class TidyGroup(_Tidy, typer.core.TyperGroup):
    """``vitcam`` itself: --version and --help shown as the commands show their flags."""


app = typer.Typer(
    name="vitcam",
    cls=TidyGroup,
    help="Fast, exact ViT-ReciproCAM explanations for timm Vision Transformers, for whole folders of images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    if value is not None:
        try:
            defaults = load_config(value, ctx.command, ctx.info_name or "explain")
        except VitcamError as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(error.exit_code) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _choice(names: tuple[str, ...]) -> Any:
    return Literal[names]


def _method_option(help: str, *names: str) -> Any:
    """A ViT-ReciproCAM option whose default comes from the preset (so it is not shown as a value)."""
    return typer.Option(*names, help=help, rich_help_panel=METHOD, show_default=False)


def _run_option(help: str, *names: str, **settings: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=RUN, **settings)


# every option, declared once; commands that take one share its declaration
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", rich_help_panel=MODEL,
        help=f"The model: {D.MODEL_FORMS}. With open_clip:ARCH the classes are the --class-names texts.",
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
ClassNamesOption = Annotated[
    Path | None,
    typer.Option(
        help="Class names, one per line in class-index order (or a JSON list), for a model whose config "
        "has none (e.g. --checkpoint with --num-classes). Used in rows, --class, labels files and reports. "
        "With open_clip:ARCH: the class texts, one per line.",
        rich_help_panel=MODEL,
    ),
]
VARIANT_HELP = (
    "Preset: the published implementations official = block -2, skip input, softmax; "
    "otx = block -1, skip ln, softmax; openvino-xai = block -1, skip masked-input, logit; and vitcam's "
    "discriminative = block -2, skip ln, softmax, prefix reset (see docs/discrimination.md); fused = "
    "openvino-xai with the single-token kernel at the last 4 blocks, averaged (see docs/quality.md)."
)
VariantOption = Annotated[
    _choice(D.PRESET_NAMES) | None,
    typer.Option(help=f"{VARIANT_HELP} (default: {D.DEFAULT_PRESET})", rich_help_panel=METHOD),
]
METHOD_FORMS = (
    f"reciprocam[:PRESET[:OPTIONS]] with PRESET {', '.join(D.PRESET_NAMES[:-1])} or {D.PRESET_NAMES[-1]} "
    "and OPTIONS comma-separated "
    "kernel=gaussian|single, block=N, skip=ln|masked-input|input, score=softmax|logit|contrast, "
    "subtract=none|empty, fuse=N, prefix=keep|reset|zero (e.g. reciprocam:otx:kernel=single,fuse=2); "
    "gradcam; rollout; relevance"
)
MethodOption = Annotated[
    str | None,
    typer.Option(
        help=f"The method that makes the maps: {METHOD_FORMS}. (default: ViT-ReciproCAM, --variant and "
        "the options below)",
        rich_help_panel=METHOD,
    ),
]


def _method_choice(choices: tuple[str, ...], help: str) -> Any:
    """A ViT-ReciproCAM option with a fixed set of values, unset unless given."""
    return Annotated[_choice(choices) | None, _method_option(help)]


KernelOption = _method_choice(
    D.KERNELS, "Mask: 3x3 Gaussian window or the single token (1x1). (default: gaussian)"
)
TargetBlockOption = Annotated[
    int | None,
    _method_option("Block whose first LayerNorm output is masked (-1 = last). (default: from --variant)"),
]
SkipOption = _method_choice(
    D.SKIPS,
    "What the target block's skip path carries: the masked LayerNorm output, the masked block input, or the "
    "unmasked block input. (default: from --variant)",
)
ScoreOption = _method_choice(
    D.SCORES,
    "Class score of each masked copy; contrast = the class logit minus the log-sum-exp of the other classes; "
    "sigmoid = each class on its own, for multi-label heads (probabilities and ADCC read it too). Similarity "
    "targets are scored by their cosine. (default: from --variant; sigmoid for a multi-label model)",
)
ReferenceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--reference",
        help="A reference image (a file, or a folder of them); repeatable: each is a target, and a map shows "
        "where the image makes its embedding similar (cosine) to the reference's. For models that yield an "
        "embedding (headless timm models, --num-classes 0 for any timm model, transformers base models, "
        "open_clip towers).",
        rich_help_panel=TARGETS,
        show_default=False,
    ),
]
EmbeddingsOption = Annotated[
    Path | None,
    typer.Option(
        help="An N x D .npy of target embeddings computed elsewhere (text embeddings, class prototypes, "
        "cluster centres), named by --class-names: each row is a target, compared by cosine.",
        rich_help_panel=TARGETS,
    ),
]
SubtractOption = _method_choice(
    D.SUBTRACTS,
    "empty: subtract the score of the copy with every patch token masked out and keep the positive part "
    "(only windows that raise the class count). (default: none)",
)
PrefixOption = _method_choice(
    D.PREFIXES,
    "What the prefix tokens (CLS, registers) carry into the masked copies: keep = as the image made them "
    "(the paper), reset = as they entered the first block, zero. (default: keep)",
)
FuseOption = Annotated[
    int | None,
    _method_option(
        "Average the maps of the target block and the N-1 blocks before it. (default: 1)", "--fuse-blocks"
    ),
]
MaskBatchOption = Annotated[
    int | None,
    _method_option("Masked sequences per forward chunk (bounds peak memory). (default: automatic)"),
]
EngineOption = Annotated[
    _choice(D.ENGINES),
    typer.Option(
        help="fast: the exact compressed path (standard timm ViT blocks); dense: every masked copy at full "
        "length; auto: fast wherever it is exact.",
        rich_help_panel=METHOD,
    ),
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUT)]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier run in --out whole: every file vitcam wrote there is removed first, "
        "nothing else.",
        rich_help_panel=OUTPUT,
    ),
]
ColormapOption = Annotated[
    str, typer.Option(help="Any matplotlib colormap for the overlays.", rich_help_panel=OUTPUT)
]
AlphaOption = Annotated[
    float, typer.Option(help="Heatmap opacity over the image (0..1).", rich_help_panel=OUTPUT)
]
OverlayFormatOption = Annotated[
    _choice(D.OVERLAY_FORMATS),
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
WORKERS_HELP = (
    "Image-decoding worker processes (0 = in the main process). (default: min(4, cores) on a CPU, "
    "min(4, cores - 1) with a GPU)"
)
SHARD_HELP = (
    "Process only shard I of N (every N-th image from the I-th, 0-based) into part files; combine the "
    "finished shards with 'vitcam merge'. Under torchrun each rank takes its shard itself."
)
BatchSizeOption = Annotated[int, _run_option("Images per batch.", "--batch-size", "-b")]
WorkersOption = Annotated[int | None, _run_option(WORKERS_HELP, show_default=False)]
DeviceOption = Annotated[str, _run_option("auto, cpu, cuda or cuda:N.")]
PrecisionOption = Annotated[
    _choice(D.PRECISIONS), _run_option("Autocast precision (fp16 on CUDA only); scores stay float32.")
]
QuietOption = Annotated[bool, _run_option("No progress bar or summary table.", "--quiet", "-q")]
ShardOption = Annotated[str | None, _run_option(SHARD_HELP)]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        help="TOML file with any of these options (flags on the command line win).",
        callback=_config_callback, is_eager=True, rich_help_panel=RUN,
    ),
]  # fmt: skip
DebugOption = Annotated[bool, typer.Option(help="Show full tracebacks for errors.", rich_help_panel=RUN)]
PretrainedTagOption = Annotated[
    str | None,
    typer.Option(
        help="open_clip:ARCH only: which of open_clip's pretrained weights to load (e.g. openai, "
        "laion2b_s34b_b79k; cached or downloaded).",
        rich_help_panel=MODEL,
    ),
]
PromptOption = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="open_clip:ARCH only: template each class text is filled into, {} marking where; repeatable "
        "(the text embeddings of all templates are averaged). (default: 'a photo of a {}.')",
        rich_help_panel=MODEL,
        show_default=False,
    ),
]


InputsArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Image files and folders (searched recursively).", show_default=False),
]
FilesFromOption = Annotated[
    str | None,
    typer.Option("--files-from", help="Also read image paths, one per line, from FILE ('-' for stdin)."),
]
SkipExistingOption = Annotated[
    bool,
    typer.Option(
        help="Resume: keep the finished images in --out, explain the rest (new inputs too).",
        rich_help_panel=OUTPUT,
    ),
]


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


def flag_namer(command: Any) -> Callable[[str], str]:
    """How ``command`` names a library parameter: by its flag (``fuse`` -> ``--fuse-blocks``), or by its
    argument (``data`` -> ``DATA``)."""
    names = {}
    for param in command.params:
        long = [opt for opt in param.opts if opt.startswith("--")]
        names[param.name] = long[0] if long else (param.name or "").upper()

    def flag(parameter: str) -> str:
        found = names.get(parameter) or names.get(FLAG_ALIASES.get(parameter, ""))
        return found or "--" + parameter.replace("_", "-")

    return flag


def _run(context: typer.Context, action: Callable[[], int], debug: bool) -> None:
    """Run a command; a user error is one line on stderr (a traceback only with --debug)."""
    with one_line_errors(context, debug):
        code = action()
    if code in INTERRUPTED_EXIT_CODES:  # even with --quiet: the one line that says how to get the rest
        print("interrupted: rerun the same command with --skip-existing to resume", file=sys.stderr)
    raise typer.Exit(code)


@contextlib.contextmanager
def one_line_errors(context: typer.Context, debug: bool) -> Iterator[None]:
    """Errors inside become one line on stderr and an exit code; messages name parameters by their flags."""
    token = naming.set(flag_namer(context.command))
    try:
        yield
    except VitcamError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (see ``interrupts``)
        print("interrupted", file=sys.stderr)
        raise typer.Exit(interrupted_exit_code(stop)) from None
    except Exception as error:
        if debug:
            raise
        print(
            f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr
        )
        raise typer.Exit(2) from None
    finally:
        naming.reset(token)


def _parse_img_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
        raise ParameterError("img_size", "use one number (224) or HEIGHTxWIDTH (112x160)", value)
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
        raise ParameterError("overlay_size", "use 'original' or a longest side in pixels (e.g. 768)", value)
    return side


def uses(**groups: Callable[..., Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the options of each group, a function whose parameters are options, and under the
    group's name what the group builds from them (``@uses(model=model_spec)`` gives it ``model``): each
    group of options is declared once and shared by the commands that take it."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        taken = {
            name: list(inspect.signature(group, eval_str=True).parameters.values())
            for name, group in groups.items()
        }
        leading = [parameter for parameter in own if parameter.default is inspect.Parameter.empty]
        rest = [parameter for parameter in own if parameter not in leading and parameter.name not in groups]
        parameters = [*leading, *(p for ps in taken.values() for p in ps), *rest]

        @functools.wraps(command)
        def wrapper(**given: Any) -> None:
            with one_line_errors(given["ctx"], given.get("debug", False)):
                for name, group in groups.items():
                    given[name] = group(
                        **{parameter.name: given.pop(parameter.name) for parameter in taken[name]}
                    )
            command(**given)

        wrapper.__signature__ = inspect.Signature(
            [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in parameters]
        )
        wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return wrapper

    return decorate


def model_spec(
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = True,
    num_classes: NumClassesOption = None,
    img_size: ImgSizeOption = None,
    class_names: ClassNamesOption = None,
    pretrained_tag: PretrainedTagOption = None,
    prompts: PromptOption = None,
) -> Any:
    """The model options as the library's ModelSpec."""
    from vitcam_cli.models import ModelSpec

    if model is None:
        raise ParameterError("model", f"is required: {D.MODEL_FORMS}")
    size = _parse_img_size(img_size)
    zero_shot = {"pretrained_tag": pretrained_tag, "prompts": tuple(prompts or ())}
    return ModelSpec(model, checkpoint, pretrained, num_classes, size, class_names, **zero_shot)


def method_overrides(
    kernel: KernelOption = None,
    target_block: TargetBlockOption = None,
    skip: SkipOption = None,
    score: ScoreOption = None,
    subtract: SubtractOption = None,
    fuse_blocks: FuseOption = None,
    prefix: PrefixOption = None,
) -> dict[str, object]:
    """The ViT-ReciproCAM options given explicitly: they win over the --variant preset."""
    given = {"kernel": kernel, "target_block": target_block, "skip": skip, "score": score}
    return {
        name: value
        for name, value in (given | {"subtract": subtract, "fuse": fuse_blocks, "prefix": prefix}).items()
        if value is not None
    }


def run_settings(
    workers: WorkersOption = None,
    device: DeviceOption = D.DEFAULT_DEVICE,
    precision: PrecisionOption = "fp32",
    mask_batch: MaskBatchOption = None,
    engine: EngineOption = "auto",
) -> Any:
    """The options of how a run computes, as the library's RunSettings (the command sets the batch)."""
    from vitcam_cli.runner import RunSettings

    return RunSettings(
        workers=workers, device=device, precision=precision, mask_batch=mask_batch, engine=engine
    )


def overlay_settings(
    colormap: ColormapOption = D.DEFAULT_COLORMAP,
    alpha: AlphaOption = D.DEFAULT_ALPHA,
    overlay_format: OverlayFormatOption = "auto",
    overlay_size: OverlaySizeOption = str(D.DEFAULT_OVERLAY_SIDE),
) -> Any:
    """The overlay options as the library's OverlaySettings."""
    from vitcam_cli.outputs.overlay import OverlaySettings

    return OverlaySettings(colormap, alpha, overlay_format, _parse_overlay_size(overlay_size))


def _options(kind: type, given: dict[str, Any], batch_size: int, **computed: Any) -> Any:
    """A command's options (the dataclass ``kind``) from the command's parameters of the same names; the
    batch size goes into the run settings."""
    names = {field.name for field in dataclasses.fields(kind)}
    chosen = {name: value for name, value in given.items() if name in names}
    if "config" in names and given.get("launch") is not None:  # read beside the inputs: never written over
        chosen["config"] = given["launch"].config
    run = dataclasses.replace(given["run"], batch_size=batch_size)
    return kind(**chosen | computed | {"run": run})


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a run command is launched: its shard, whether it is quiet, whether errors show tracebacks."""

    shard: str | None
    quiet: bool
    debug: bool
    config: Path | None = None

    def start(self, context: typer.Context, make: Callable[[], Any], device: str) -> None:
        """Run the command ``make()`` builds: in this process, as a shard or as a torchrun rank."""
        from vitcam_cli.distributed import parse_shard
        from vitcam_cli.runner import run_command

        def action() -> int:
            shard = parse_shard(self.shard) if self.shard else None
            return run_command(make(), shard, device, self.quiet)

        _run(context, action, self.debug)


def launch_settings(
    shard: ShardOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
    debug: DebugOption = False,
) -> Launch:
    """The options every run command takes (``config`` acts through its callback)."""
    return Launch(shard, quiet, debug, config)


@app.command(cls=TidyCommand)
@uses(
    model=model_spec,
    overrides=method_overrides,
    run=run_settings,
    overlay=overlay_settings,
    launch=launch_settings,
)
def explain(
    ctx: typer.Context,
    inputs: InputsArgument = None,
    files_from: FilesFromOption = None,
    method: MethodOption = None,
    variant: VariantOption = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class", "-c", help="Explain this class (index or name); repeatable.", rich_help_panel=TARGETS
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="Explain the K most probable classes, or the K most similar targets (one map each). "
            "(default: 1 class; every similarity target)",
            rich_help_panel=TARGETS,
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Explain every class whose probability is at least P (multi-label heads: with --score "
            "sigmoid), or every target whose cosine similarity is; an image with none gets a row saying so.",
            rich_help_panel=TARGETS,
        ),
    ] = None,
    references: ReferenceOption = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'query,reference' of image pairs: each pair explained both ways (the query against the "
            "reference, the reference against the query), for retrieval and duplicate debugging.",
            rich_help_panel=TARGETS,
        ),
    ] = None,
    embeddings: EmbeddingsOption = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,label' (label: index or class name): explain each image's labelled class; "
            "several rows of one file explain several classes.",
            rich_help_panel=TARGETS,
        ),
    ] = None,
    out: OutOption = Path("vitcam-out"),
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
    adcc: Annotated[
        bool,
        typer.Option(
            help="Score every map with ADCC (re-explains the map-masked image; about doubles the time).",
            rich_help_panel=OUTPUT,
        ),
    ] = True,
    skip_existing: SkipExistingOption = False,
    jsonl: Annotated[
        bool,
        typer.Option(
            help="Also print each result row as JSON on stdout (for pipes).", rich_help_panel=OUTPUT
        ),
    ] = False,
    batch_size: BatchSizeOption = D.EXPLAIN_BATCH,
    overwrite: OverwriteOption = False,
    model: Any = None,
    overrides: Any = None,
    run: Any = None,
    overlay: Any = None,
    launch: Any = None,
) -> None:
    """Explain every image: overlays/, maps/, results.jsonl/.csv, summary.json and report.html under --out.

    Exit codes: 0 all images explained, 1 finished but some inputs failed, 2 usage or model error.
    """
    given = dict(locals())

    def command() -> Any:
        from vitcam_cli.commands.explain import Explain, ExplainOptions

        lists = {
            "inputs": list(inputs or []),
            "classes": list(classes or []),
            "references": list(references or []),
        }
        return Explain(_options(ExplainOptions, given, batch_size, **lists))

    launch.start(ctx, command, run.device)


AUDIT = "Audit"


@app.command(cls=TidyCommand)
@uses(model=model_spec, run=run_settings, overlay=overlay_settings, launch=launch_settings)
def audit(
    ctx: typer.Context,
    inputs: InputsArgument = None,
    files_from: FilesFromOption = None,
    method: Annotated[
        str | None,
        typer.Option(
            help=f"The method that makes the maps: {METHOD_FORMS}. (default: reciprocam:fused, the setting "
            "that found planted shortcuts on every model tried; see docs/audit.md)",
            rich_help_panel=METHOD,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,label': each image's evidence is gathered for its labelled class (default: the "
            "predicted class).",
            rich_help_panel=AUDIT,
        ),
    ] = None,
    boxes: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,x1,y1,x2,y2[,label]' of the objects: each class's evidence outside them is "
            "reported, and only evidence outside them can make a shortcut candidate.",
            rich_help_panel=AUDIT,
        ),
    ] = None,
    candidates: Annotated[
        int,
        typer.Option(
            help="Classes whose most distinctive region is tested by intervention.", rich_help_panel=AUDIT
        ),
    ] = 10,
    images_per_test: Annotated[
        int,
        typer.Option(
            help="Images of the class blanked, and of other classes pasted into, per test.",
            rich_help_panel=AUDIT,
        ),
    ] = 48,
    out: OutOption = Path("vitcam-audit"),
    overlays: Annotated[
        bool, typer.Option(help="Also write every image's overlay.", rich_help_panel=OUTPUT)
    ] = False,
    adcc: Annotated[
        bool, typer.Option(help="Also score every map with ADCC.", rich_help_panel=OUTPUT)
    ] = False,
    skip_existing: SkipExistingOption = False,
    batch_size: BatchSizeOption = D.EXPLAIN_BATCH,
    overwrite: OverwriteOption = False,
    model: Any = None,
    run: Any = None,
    overlay: Any = None,
    launch: Any = None,
) -> None:
    """Find what a model relies on across a dataset: class evidence, shortcuts proved by intervention,
    strategies per class; findings.json, report.html and the rows under --out.

    Exit codes: 0 all images explained, 1 finished but some inputs failed, 2 usage or model error.
    """
    given = dict(locals())

    def command() -> Any:
        from vitcam_cli.analysis.audit import AuditSettings
        from vitcam_cli.commands.audit import AUDIT_METHOD, Audit, AuditOptions

        settings = AuditSettings(candidates=candidates, images_per_test=images_per_test)
        computed = {"inputs": list(inputs or []), "save_maps": True, "method": method or AUDIT_METHOD}
        return Audit(_options(AuditOptions, given, batch_size, **computed, audit=settings))

    launch.start(ctx, command, run.device)


@app.command(cls=TidyCommand)
@uses(model=model_spec, run=run_settings, overlay=overlay_settings, launch=launch_settings)
def evaluate(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Dataset folder (searched recursively).", show_default=False)],
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--methods",
            help="Saliency methods, repeatable or comma-separated: "
            f"{METHOD_FORMS}. The first one is gated by --fail-under. (default: reciprocam)",
            rich_help_panel=METHOD,
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="CSV 'file,label' (index or class name).", rich_help_panel=DATA),
    ] = None,
    class_map: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'folder,class' for ImageFolder trees whose folders are not class names.",
            rich_help_panel=DATA,
        ),
    ] = None,
    references: ReferenceOption = None,
    embeddings: EmbeddingsOption = None,
    boxes: Annotated[
        Path | None,
        typer.Option(
            help="CSV 'file,x1,y1,x2,y2[,label]' (original-image pixels, x2/y2 exclusive; several rows per "
            "file): adds the pointing game and energy-in-box; with a label column (each box's class) they "
            "count the explained class's boxes only, and discrimination is added.",
            rich_help_panel=DATA,
        ),
    ] = None,
    target: Annotated[
        _choice(D.TARGETS),
        typer.Option(
            help="Explain the predicted class, the labelled one, or (boxes) every class with a labelled box "
            "in the image, one row per image and class.",
            rich_help_panel=DATA,
        ),
    ] = "predicted",
    limit: Annotated[
        int | None,
        typer.Option(help="Evaluate a random subset of N images (see --seed).", rich_help_panel=DATA),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit subset.", rich_help_panel=DATA)] = 0,
    insertion_deletion: Annotated[
        bool,
        typer.Option(
            help="Also compute insertion and deletion AUC (2 x (steps+1) forward passes per image).",
            rich_help_panel=METRICS,
        ),
    ] = True,
    steps: Annotated[
        int, typer.Option(help="Steps of the insertion/deletion curves.", rich_help_panel=METRICS)
    ] = 20,
    protocol: Annotated[
        _choice(D.PROTOCOLS),
        typer.Option(
            help="How ADCC and insertion/deletion are computed: poppi (Poppi et al.'s ADCC, insertion/"
            "deletion over pixel fractions) or authors (the ViT-ReciproCAM authors' code, to reproduce the "
            "paper's numbers: token-grid complexity and coherency, bicubic unclipped masks, DAUC/IAUC over "
            "32-pixel cells).",
            rich_help_panel=METRICS,
        ),
    ] = "poppi",
    baseline: Annotated[
        _choice(D.DELETION_BASELINES),
        typer.Option(help="What deleted pixels become: a blurred copy or zeros.", rich_help_panel=METRICS),
    ] = "blur",
    bootstrap: Annotated[
        int,
        typer.Option(
            help="Add 95% bootstrap intervals (this many resamples of the images) to every metric.",
            rich_help_panel=METRICS,
        ),
    ] = 0,
    fail_under: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when the first method's --metric is below this value (CI gate).",
            rich_help_panel=METRICS,
        ),
    ] = None,
    metric: Annotated[
        _choice(D.GATE_METRICS),
        typer.Option(help="The metric --fail-under gates on.", rich_help_panel=METRICS),
    ] = "adcc",
    out: OutOption = Path("vitcam-eval"),
    save_overlays: Annotated[
        bool, typer.Option(help="Keep every method's overlay of every image.", rich_help_panel=OUTPUT)
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print metrics.json to stdout.", rich_help_panel=OUTPUT)
    ] = False,
    markdown: Annotated[
        bool, typer.Option(help="Print the comparison as a Markdown table to stdout.", rich_help_panel=OUTPUT)
    ] = False,
    batch_size: BatchSizeOption = D.EVALUATE_BATCH,
    overwrite: OverwriteOption = False,
    run: Any = None,
    model: Any = None,
    launch: Any = None,
    overlay: Any = None,
) -> None:
    """Measure saliency methods on a dataset: ADCC, insertion/deletion, pointing game, energy-in-box.

    Writes metrics.json, per_image.csv and report.html under --out. Exit codes: 0 ok, 1 some inputs failed
    or the --fail-under gate failed, 2 usage or model error.
    """
    given = dict(locals())

    def command() -> Any:
        from vitcam_cli.commands.evaluate import Evaluate, EvaluateOptions

        specs = [spec for value in (methods or [D.DEFAULT_METHOD]) for spec in D.split_methods(value)]
        if not specs:
            raise ParameterError(
                "method", "names no method; use reciprocam, gradcam, rollout or relevance", ""
            )
        lists = {"methods": specs, "references": list(references or [])}
        return Evaluate(_options(EvaluateOptions, given, batch_size, **lists))

    launch.start(ctx, command, run.device)


@app.command(cls=TidyCommand)
def merge(
    ctx: typer.Context,
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
    """Combine the finished shards of a '--shard I/N' run into one output folder and its report.html.

    explain's shards into one results.jsonl/.csv, summary.json and report.html; evaluate's into
    metrics.json, per_image.csv and report.html. Exit codes: 0 ok, 1 some images failed (or evaluate's
    --fail-under gate), 2 shards missing or unfinished.
    """

    def action() -> int:
        from vitcam_cli.commands.merge import merge_folders

        return merge_folders(folders, out or folders[0], quiet)

    _run(ctx, action, debug)


RunFolder = Annotated[
    Path,
    typer.Argument(
        help="Output folder of a finished 'vitcam explain --save-maps' (or 'vitcam audit') run.",
        show_default=False,
    ),
]


@app.command(cls=TidyCommand)
def compare(
    ctx: typer.Context,
    run_a: RunFolder,
    run_b: RunFolder,
    out: OutOption = Path("vitcam-compare"),
    changed_below: Annotated[
        float,
        typer.Option(help="An image's maps have changed when their Spearman correlation is below this."),
    ] = 0.5,
    fail_over: Annotated[
        float | None,
        typer.Option(help="Exit 1 when the share of changed images is above this (0..1; CI gate)."),
    ] = None,
    overwrite: OverwriteOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print comparison.json to stdout.", rich_help_panel=OUTPUT)
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
    debug: DebugOption = False,
) -> None:
    """Compare two runs over the same images (two models, checkpoints or methods), map by map.

    Matches the runs' rows by image file and class, and writes comparison.json, per_image.csv (Spearman
    and top-10% IoU of each image's two maps) and report.html (where each class's evidence moved) under
    --out. Exit codes: 0 ok, 1 the --fail-over gate failed, 2 a folder is not a finished run with maps.
    """

    def action() -> int:
        from vitcam_cli.commands.compare import CompareOptions, run_compare

        options = CompareOptions(run_a, run_b, out, changed_below, fail_over, overwrite, as_json, quiet)
        return run_compare(options)

    _run(ctx, action, debug)


@app.command(cls=TidyCommand)
@uses(model=model_spec, overrides=method_overrides)
def bench(
    ctx: typer.Context,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help=VARIANT_HELP + " Repeatable. (default: the three published ones)",
            rich_help_panel=METHOD,
        ),
    ] = None,
    mask_batch: MaskBatchOption = None,
    engine: EngineOption = "auto",
    batch_size: BatchSizeOption = D.BENCH_BATCH,
    device: DeviceOption = D.DEFAULT_DEVICE,
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
    model: Any = None,
    overrides: Any = None,
) -> None:
    """Time explaining against the plain forward pass it explains: same random batch, device and dtype.

    Reports images/s, the ratio explain time / forward time, and peak memory for each variant.
    """

    def action() -> int:
        from rich.console import Console

        from vitcam_cli.commands.bench import BenchOptions, bench_table, run_bench

        options = BenchOptions(
            model=model,
            variants=list(variants or D.PUBLISHED_PRESETS),
            overrides=overrides,
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

    _run(ctx, action, debug)


def main() -> None:
    app()
