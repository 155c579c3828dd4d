"""``--methods`` names: ``reciprocam[:PRESET[:OPTIONS]]``, ``gradcam``, ``rollout``, ``relevance``.

OPTIONS override the preset, comma-separated: ``kernel=single``, ``block=-2``, ``skip=ln``,
``score=contrast``, ``subtract=empty``, ``fuse=2`` (or just ``single`` for the kernel).
"""

from __future__ import annotations

from dataclasses import fields

from vitcam_cli.defaults import DEFAULT_PRESET
from vitcam_cli.errors import ParameterError, did_you_mean
from vitcam_cli.methods.base import SaliencyMethod
from vitcam_cli.methods.gradcam import GradCAM
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings
from vitcam_cli.methods.relevance import AttentionRelevance
from vitcam_cli.methods.rollout import AttentionRollout
from vitcam_cli.models import LoadedModel

BASELINES = {"gradcam": GradCAM, "rollout": AttentionRollout, "relevance": AttentionRelevance}
OPTION_NAMES = {"kernel": "kernel", "block": "target_block", "skip": "skip", "score": "score",
                "subtract": "subtract", "fuse": "fuse", "prefix": "prefix"}  # fmt: skip
USAGE = (
    f"use reciprocam[:{'|'.join(PRESETS)}[:kernel=..,block=..,skip=..,score=..,subtract=..,fuse=..,"
    "prefix=..]], "
    f"{', '.join(BASELINES)}"
)


def _settings(spec: str) -> tuple[str, ReciproCAMSettings]:
    """The preset and the settings a ``reciprocam:...`` name asks for."""
    _, *rest = spec.split(":", 2)
    preset = (rest[0] if rest else "") or DEFAULT_PRESET  # reciprocam::fuse=2: the default preset
    if preset not in PRESETS:
        raise ParameterError(
            "method", f"no preset {preset!r}{did_you_mean(preset, list(PRESETS))}; {USAGE}", spec
        )
    overrides: dict[str, object] = {}
    for option in filter(None, (rest[1] if len(rest) > 1 else "").split(",")):
        key, _, value = option.partition("=")
        if not value:  # a bare value names the kernel
            key, value = "kernel", key
        if key not in OPTION_NAMES:
            raise ParameterError(
                "method", f"unknown option {key!r}{did_you_mean(key, list(OPTION_NAMES))}; {USAGE}", spec
            )
        kind = {f.name: f.type for f in fields(ReciproCAMSettings)}[OPTION_NAMES[key]]
        try:
            overrides[OPTION_NAMES[key]] = int(value) if kind == "int" else value
        except ValueError as error:
            raise ParameterError("method", f"{key} needs a whole number", spec) from error
    try:
        return preset, PRESETS[preset].with_overrides(**overrides)
    except ParameterError as error:  # named as in the method string: block=, fuse=
        raise ParameterError("method", error.render(_option_key), spec) from error


def _option_key(parameter: str) -> str:
    return {name: key for key, name in OPTION_NAMES.items()}.get(parameter, parameter)


def canonical_name(spec: str) -> str:
    """A method's name in tables: ``reciprocam:PRESET`` plus the options that differ from the preset."""
    spec = spec.strip().lower()
    if spec in BASELINES:
        return spec
    name = spec.split(":")[0]
    if name != "reciprocam":
        hint = did_you_mean(name, [*BASELINES, "reciprocam"])
        raise ParameterError("method", f"no such method{hint}; {USAGE}", spec)
    return reciprocam_name(*_settings(spec))


def reciprocam_name(preset: str, settings: ReciproCAMSettings) -> str:
    """``reciprocam:PRESET`` plus the options of ``settings`` that differ from the preset's."""
    reference = PRESETS[preset]
    changed = [
        f"{key}={getattr(settings, name)}"
        for key, name in OPTION_NAMES.items()
        if getattr(settings, name) != getattr(reference, name)
    ]
    return f"reciprocam:{preset}" + (f":{','.join(changed)}" if changed else "")


def reciprocam_settings(spec: str) -> tuple[str, ReciproCAMSettings]:
    """The preset and settings of a ``reciprocam[:PRESET[:options]]`` method string."""
    if canonical_name(spec) in BASELINES:
        raise ParameterError("method", "is not ViT-ReciproCAM", spec)
    return _settings(spec.strip().lower())


def scored_reading(
    settings: ReciproCAMSettings, loaded: LoadedModel, explicit: bool
) -> tuple[ReciproCAMSettings, LoadedModel]:
    """A multi-label model (sigmoid reading) scores its copies through a sigmoid unless a score was
    asked for (``explicit``); a ``sigmoid`` score reads every class on its own, probabilities included."""
    if loaded.reading.kind == "sigmoid" and not explicit:
        return settings.with_overrides(score="sigmoid"), loaded
    if settings.score == "sigmoid" and loaded.reading.kind == "softmax":
        return settings, loaded.with_reading("sigmoid")
    return settings, loaded


def create_method(
    spec: str, loaded: LoadedModel, mask_batch: int | None = None, engine: str = "auto"
) -> SaliencyMethod:
    """The method a method string names, reading the model as ``loaded.reading`` says."""
    name = canonical_name(spec)
    if name in BASELINES:
        return BASELINES[name](loaded.model, loaded.layout, loaded.reading)
    preset, settings = _settings(name)
    settings, loaded = scored_reading(settings, loaded, settings.score != PRESETS[preset].score)
    return ReciproCAM(
        loaded.model, loaded.layout, settings, loaded.input_size, mask_batch, engine, loaded.reading
    )
