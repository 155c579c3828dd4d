"""A transformers image processor read as a timm data config, so that vitcam's own streaming
preprocessing (reduced JPEG decodes, uint8 batches) computes what the processor computes.

The image processors of ViT, DeiT, BEiT, DINOv2, SigLIP and CLIP resize (to a fixed height x width, or
the shortest edge to a length), centre-crop, rescale by 1/255 and normalise: timm's eval transform with
crop mode ``squash`` or ``center`` and ``crop_pct`` = crop / resize. Anything else is refused in one line.
"""

from __future__ import annotations

import math
from typing import Any

from vitcam_cli.errors import ParameterError

# Pillow's resampling filter codes, as transformers stores them, by timm's names
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PROCESSOR_FILE = "preprocessor_config.json"


def _size(value: Any, key: str) -> int | None:
    size = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return None if size is None else int(size)


def _resize(processor: Any, source: str) -> tuple[str, tuple[int, int] | int]:
    """(``squash``, (height, width)) or (``center``, shortest edge)."""
    size = processor.size
    height, width, shortest = (_size(size, key) for key in ("height", "width", "shortest_edge"))
    if height and width:
        return "squash", (height, width)
    if shortest and not _size(size, "longest_edge"):
        return "center", shortest
    raise ParameterError(
        "model", f"its image processor's size {dict(size)!r} is not supported: use height and width, or "
        f"shortest_edge ({PROCESSOR_FILE})", source,
    )  # fmt: skip


def _crop_pct(mode: str, resize: tuple[int, int] | int, crop: tuple[int, int], source: str) -> float:
    """The crop_pct with which timm's eval transform resizes to exactly ``resize`` before cropping."""
    reference = resize[0] if isinstance(resize, tuple) else resize
    wanted = resize if isinstance(resize, tuple) else (resize, resize)
    for pct in (crop[0] / reference, crop[0] / (reference + 0.25)):  # the second absorbs float rounding
        if tuple(math.floor(side / pct) for side in crop) == wanted:
            return pct
    raise ParameterError(
        "model", f"its image processor resizes to {wanted} and crops {crop}, which timm's eval transform "
        f"cannot express (resize and crop must keep one ratio{', square' if mode == 'center' else ''}) "
        f"({PROCESSOR_FILE})", source,
    )  # fmt: skip


def _normalisation(processor: Any, source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not getattr(processor, "do_rescale", True) or not math.isclose(
        float(getattr(processor, "rescale_factor", 1 / 255)), 1 / 255
    ):
        raise ParameterError(
            "model",
            f"its image processor must rescale pixels by 1/255 (do_rescale, {PROCESSOR_FILE})",
            source,
        )
    if not getattr(processor, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))


def data_config(processor: Any, source: str) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, crop_pct, crop_mode, mean, std) for ``processor``."""
    if not getattr(processor, "do_resize", True):
        raise ParameterError(
            "model", f"its image processor must resize (do_resize, {PROCESSOR_FILE})", source
        )
    mode, resize = _resize(processor, source)
    crop_size = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop_size is not None:
        crop = (_size(crop_size, "height") or 0, _size(crop_size, "width") or 0)
    elif mode == "squash":
        crop = resize
    else:
        raise ParameterError(
            "model", f"its image processor resizes the shortest edge without a centre crop, so images "
            f"of different shapes give inputs of different sizes ({PROCESSOR_FILE})", source,
        )  # fmt: skip
    resample = int(getattr(processor, "resample", 3))
    if resample not in RESAMPLE:
        raise ParameterError("model", f"its image processor's resample {resample} is not supported", source)
    mean, std = _normalisation(processor, source)
    return {
        "input_size": (3, *crop),
        "interpolation": RESAMPLE[resample],
        "crop_pct": _crop_pct(mode, resize, crop, source),
        "crop_mode": mode,
        "mean": mean,
        "std": std,
    }
