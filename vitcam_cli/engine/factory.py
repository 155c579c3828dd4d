"""Choosing an engine: the fast compressed path where it is exact, the dense path everywhere else."""

from __future__ import annotations

from torch import nn

from vitcam_cli.defaults import ENGINES
from vitcam_cli.engine.base import CopySettings, MaskedEngine
from vitcam_cli.engine.compressed import CompressedEngine, fast_unsupported_reason
from vitcam_cli.engine.dense import DenseEngine
from vitcam_cli.engine.geometry import TokenLayout
from vitcam_cli.errors import ParameterError, literal


def create_engine(
    name: str,
    model: nn.Module,
    layout: TokenLayout,
    block_index: int,
    copies: CopySettings,
    mask_batch: int | None = None,
) -> MaskedEngine:
    """``auto`` takes ``fast`` whenever it is exact for this model and block, else ``dense``."""
    if name not in ENGINES:
        raise ParameterError("engine", f"use one of {', '.join(ENGINES)}", name)
    reason = fast_unsupported_reason(model, block_index)
    if name == "fast" and reason is not None:
        raise ParameterError(
            "engine", f"fast is not exact for this model: {literal(reason)}; use auto or dense"
        )
    engine = CompressedEngine if name == "fast" or (name == "auto" and reason is None) else DenseEngine
    return engine(model, layout, block_index, copies, mask_batch)
