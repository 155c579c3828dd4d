"""Reading attention out of timm ViT blocks, for the attention-based baselines.

Rollout needs the attention probabilities only: they are recomputed from the q and k each block's
attention produces (hooks on its ``q_norm``/``k_norm``), so timm's fused attention stays on.
Relevance needs their gradients too, so the probabilities must be the ones the forward pass used:
fused attention is switched off for the call and each block's ``attn_drop`` (identity at eval,
applied to the probabilities) hands them over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from timm.layers import Attention
from torch import Tensor, nn

from vitcam_cli.engine.geometry import TokenLayout
from vitcam_cli.engine.stages import StageLayout
from vitcam_cli.errors import UnsupportedModelError
from vitcam_cli.targets import Reading


class AttentionMethod:
    """A method that reads the blocks' attention: the model, its token layout, the attention modules and
    whether the head reads the prefix token (token pooling) or averages the patch tokens."""

    name: str

    def __init__(self, model: nn.Module, layout: TokenLayout, reading: Reading | None = None) -> None:
        self.model = model
        self.layout = layout
        self.reading = reading or Reading()
        if isinstance(layout, StageLayout):
            raise UnsupportedModelError(
                f"{self.name} needs an attention matrix over the whole image, and "
                f"{type(model).__name__}'s window attention has none (each window attends within "
                "itself): use reciprocam or gradcam"
            )
        self.modules = attention_modules(model, self.name)
        self.token_pool = getattr(model, "global_pool", "token") == "token"


def attention_modules(model: nn.Module, method: str) -> list[Attention]:
    modules = [block.attn for block in model.blocks]
    if not all(isinstance(attn, Attention) for attn in modules):
        raise UnsupportedModelError(
            f"{method} needs timm's standard Attention in every block; "
            f"{type(model).__name__} uses {type(modules[0]).__name__}"
        )
    return modules


def _store(record: dict[str, Tensor], key: str) -> Callable[[nn.Module, tuple, Tensor], None]:
    """A forward hook that keeps the module's output in ``record[key]``."""

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        record[key] = output

    return hook


@contextmanager
def _recording(
    modules: list[Attention], hooked: Callable[[Attention], list[tuple[nn.Module, str]]]
) -> Iterator[list[dict[str, Tensor]]]:
    """Per block, the outputs of the submodules ``hooked(attn)`` names, kept under their keys."""
    records: list[dict[str, Tensor]] = [{} for _ in modules]
    handles = [
        submodule.register_forward_hook(_store(record, key))
        for record, attn in zip(records, modules, strict=True)
        for submodule, key in hooked(attn)
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def recorded_queries_and_keys(modules: list[Attention]) -> AbstractContextManager[list[dict[str, Tensor]]]:
    """Per block, the (B, heads, N, head_dim) q and k after timm's q_norm / k_norm."""
    return _recording(modules, lambda attn: [(attn.q_norm, "q"), (attn.k_norm, "k")])


def probabilities(attn: Attention, q: Tensor, k: Tensor) -> Tensor:
    """softmax(q k^T * scale): (B, heads, N, N), in float32."""
    return torch.softmax((q.float() * attn.scale) @ k.float().transpose(-2, -1), dim=-1)


@contextmanager
def recorded_probabilities(modules: list[Attention]) -> Iterator[list[dict[str, Tensor]]]:
    """Per block, the attention probabilities the forward pass used (B, heads, N, N), in the graph."""
    fused = [attn.fused_attn for attn in modules]
    for attn in modules:
        attn.fused_attn = False
    try:
        with _recording(modules, lambda attn: [(attn.attn_drop, "p")]) as records:
            yield records
    finally:
        for attn, was_fused in zip(modules, fused, strict=True):
            attn.fused_attn = was_fused


def readout_rows(matrix: Tensor, num_prefix: int, token_pool: bool) -> Tensor:
    """What the head reads, as a row over the patch tokens: the prefix rows for token pooling, else all."""
    rows = matrix[:, :num_prefix] if token_pool and num_prefix else matrix[:, num_prefix:]
    return rows.mean(1)[:, num_prefix:]
