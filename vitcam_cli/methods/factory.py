"""``--methods`` names to methods: ``reciprocam[:PRESET]``, ``gradcam``, ``rollout``, ``relevance``."""

from __future__ import annotations

from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.base import SaliencyMethod
from vitcam_cli.methods.gradcam import GradCAM
from vitcam_cli.methods.reciprocam import DEFAULT_PRESET, PRESETS, ReciproCAM
from vitcam_cli.methods.relevance import AttentionRelevance
from vitcam_cli.methods.rollout import AttentionRollout
from vitcam_cli.models import LoadedModel

BASELINES = {"gradcam": GradCAM, "rollout": AttentionRollout, "relevance": AttentionRelevance}
CHOICES = (*(f"reciprocam:{preset}" for preset in PRESETS), *BASELINES)


def canonical_name(spec: str) -> str:
    """``reciprocam`` -> ``reciprocam:official`` (the default preset); other names as they are."""
    spec = spec.strip().lower()
    if spec == "reciprocam":
        return f"reciprocam:{DEFAULT_PRESET}"
    if spec in CHOICES:
        return spec
    raise VitcamError(f"--methods {spec}: use reciprocam[:{'|'.join(PRESETS)}], {', '.join(BASELINES)}")


def create_method(
    spec: str, loaded: LoadedModel, mask_batch: int | None = None, engine: str = "auto"
) -> SaliencyMethod:
    name = canonical_name(spec)
    if name in BASELINES:
        return BASELINES[name](loaded.model, loaded.layout)
    preset = name.split(":", 1)[1]
    return ReciproCAM(loaded.model, loaded.layout, PRESETS[preset], loaded.input_size, mask_batch, engine)
