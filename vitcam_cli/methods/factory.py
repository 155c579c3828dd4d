"""``--methods`` names: ``reciprocam[:PRESET[:KERNEL]]``, ``gradcam``, ``rollout``, ``relevance``."""

from __future__ import annotations

from vitcam_cli.engine.masks import KERNELS
from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.base import SaliencyMethod
from vitcam_cli.methods.gradcam import GradCAM
from vitcam_cli.methods.reciprocam import DEFAULT_PRESET, PRESETS, ReciproCAM
from vitcam_cli.methods.relevance import AttentionRelevance
from vitcam_cli.methods.rollout import AttentionRollout
from vitcam_cli.models import LoadedModel

BASELINES = {"gradcam": GradCAM, "rollout": AttentionRollout, "relevance": AttentionRelevance}
DEFAULT_KERNEL = "gaussian"


def canonical_name(spec: str) -> str:
    """``reciprocam`` -> ``reciprocam:official``; the default kernel is left out, the single one named."""
    parts = spec.strip().lower().split(":")
    if parts[0] in BASELINES and len(parts) == 1:
        return parts[0]
    if parts[0] == "reciprocam" and len(parts) <= 3:
        preset = parts[1] if len(parts) > 1 else DEFAULT_PRESET
        kernel = parts[2] if len(parts) > 2 else DEFAULT_KERNEL
        if preset in PRESETS and kernel in KERNELS:
            return f"reciprocam:{preset}" + ("" if kernel == DEFAULT_KERNEL else f":{kernel}")
    presets, kernels = "|".join(PRESETS), "|".join(KERNELS)
    raise VitcamError(f"--methods {spec}: use reciprocam[:{presets}[:{kernels}]], {', '.join(BASELINES)}")


def create_method(
    spec: str, loaded: LoadedModel, mask_batch: int | None = None, engine: str = "auto"
) -> SaliencyMethod:
    name = canonical_name(spec)
    if name in BASELINES:
        return BASELINES[name](loaded.model, loaded.layout)
    _, preset, *kernel = name.split(":")
    settings = PRESETS[preset].with_overrides(kernel=kernel[0] if kernel else None)
    return ReciproCAM(loaded.model, loaded.layout, settings, loaded.input_size, mask_batch, engine)
