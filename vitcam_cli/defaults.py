"""Names and defaults every front end shows, declared once and importable without torch or timm, so
that ``vitcam --help`` and ``vitcam --version`` answer at once. The modules that use them import them
from here."""

from __future__ import annotations

# models that ship inside the package (vitcam_cli/assets/NAME): they load offline by name
BUNDLED_MODEL_NAMES = ("fashion-vit", "fashion-swin")
# every way to name a model, for help texts and errors (each adapter in vitcam_cli/models reads some)
MODEL_FORMS = (
    f"a bundled model ({', '.join(BUNDLED_MODEL_NAMES)}), a timm name (NAME or NAME.TAG), "
    "hf-hub:ORG/NAME or local-dir:PATH (timm), a folder with config.json (timm or transformers), "
    "hf:ORG/NAME (transformers) or open_clip:ARCH (zero-shot CLIP)"
)

# ViT-ReciproCAM: the published presets (see methods/reciprocam.py), vitcam's own, and the choices within them
PUBLISHED_PRESETS = ("official", "otx", "openvino-xai")
PRESET_NAMES = (*PUBLISHED_PRESETS, "discriminative", "fused")
# chosen on ground truth (benchmarks/planted_cues.py): every localised planted cue found on both model
# depths, one-garment pointing at least 0.9 on the clean models (docs/quality.md)
DEFAULT_PRESET = "fused"
KERNELS = ("gaussian", "single")
SKIPS = ("ln", "masked-input", "input")
SCORES = ("softmax", "logit", "contrast", "sigmoid")
SUBTRACTS = ("none", "empty")
PREFIXES = ("keep", "reset", "zero")
ENGINES = ("auto", "fast", "dense")
BASELINE_METHODS = ("gradcam", "rollout", "relevance")
DEFAULT_METHOD = "reciprocam"
METHOD_NAMES = ("reciprocam", "gradcam", "rollout", "relevance")


def split_methods(text: str) -> list[str]:
    """A comma-separated list of method strings; a comma inside one method's options
    (``reciprocam:otx:kernel=single,fuse=2``) stays with it."""
    specs: list[str] = []
    for piece in text.split(","):
        if specs and piece.strip().split(":")[0].lower() not in METHOD_NAMES and "=" in piece:
            specs[-1] += "," + piece.strip()
        elif piece.strip():
            specs.append(piece.strip())
    return specs


PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_DEVICE = "auto"

# overlays
DEFAULT_COLORMAP = "inferno"
DEFAULT_ALPHA = 0.5
OVERLAY_FORMATS = ("auto", "jpg", "png", "webp")
# the overlays' longest side unless told otherwise; every JPEG is decoded with at least this longest
# side whatever the overlay settings, so default overlays need no second decode and the model's input
# depends on the file and the model alone
DEFAULT_OVERLAY_SIDE = 768

# evaluate
TARGETS = ("predicted", "label", "boxes")
PROTOCOLS = ("poppi", "authors")  # how ADCC and insertion/deletion are computed
DELETION_BASELINES = ("blur", "zero")
# metrics where higher is better: the ones a CI gate (--fail-under) can gate on
GATE_METRICS = (
    "adcc", "adcc_mean", "coherency", "insertion", "pointing_game", "energy_in_box", "discrimination",
)  # fmt: skip

# batch sizes: explain writes overlays for every image, evaluate re-runs the model for its metrics
EXPLAIN_BATCH = 8
EVALUATE_BATCH = 16
BENCH_BATCH = 32
