"""Where the tokens are, read from a timm model: prefix tokens, the patch grid, the blocks.

The engine treats a ViT as ``stem -> blocks[0..depth) -> norm -> forward_head``. The stem is never
re-implemented: a real forward pass runs it, and hooks record what enters the target block (and
the extra arguments, such as EVA's rotary embedding or BEiT's relative position bias, that every
later block receives). ``run_blocks`` then replays the rest of the network on masked copies.
A layout knows how to walk its model (``blocks``, ``tokens``, ``run_blocks``), so a hierarchical model
(``engine/stages.py``) is the same machinery with another walk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vitcam_cli.errors import ParameterError, UnsupportedModelError

SUPPORTED = (
    "vitcam explains timm Vision Transformers with a patch-token grid and pre-norm blocks "
    "(vit_*, deit_*, eva*, beit*, ... with any prefix tokens) and timm's Swin (swin_*); CNNs and "
    "other hierarchical transformers (resnet, convnext, swinv2, ...) are not supported"
)

BlockExtras = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of one image: ``num_prefix`` prefix tokens then a row-major ``grid``."""

    num_prefix: int
    grid: tuple[int, int]
    depth: int
    dim: int
    heads: int

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def block_index(self, target_block: int) -> int:
        """Normalise a Python-style block index (``-1`` = last) and check it is in range."""
        index = target_block + self.depth if target_block < 0 else target_block
        if not 0 <= index < self.depth:
            raise ParameterError(
                "target_block",
                f"is out of range for a model with {self.depth} blocks (use {-self.depth}..{self.depth - 1})",
                target_block,
            )
        return index

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The model's blocks in the order they run, indexed as ``--target-block`` counts them."""
        return list(model.blocks)

    def at_block(self, index: int) -> TokenLayout:
        """The layout block ``index`` sees: the same for every block of a ViT."""
        return self

    def tokens(self, x: Tensor) -> Tensor:
        """A block's input or norm1 output as a ``(B, N, C)`` token sequence: already one for a ViT."""
        return x

    def run_blocks(
        self,
        model: nn.Module,
        tokens: Tensor,
        start: int,
        extras: list[BlockExtras],
        norm1_output: Tensor | None = None,
    ) -> Tensor:
        """Run ``blocks[start:]``, the final norm and the head on ``tokens`` (B, N, C); return the logits.

        ``norm1_output``, when given, replaces the first block's LayerNorm output (see
        ``replace_norm1_output``) while ``tokens`` is what that block's skip path carries.
        """
        x = tokens
        for i, (block, (args, kwargs)) in enumerate(zip(self.blocks(model)[start:], extras, strict=True)):
            if i == 0 and norm1_output is not None:
                with replace_norm1_output(block, norm1_output):
                    x = block(x, *args, **kwargs)
            else:
                x = block(x, *args, **kwargs)
        return model.forward_head(model.norm(x))


def token_layout(model: nn.Module) -> TokenLayout:
    """Read the token layout from a timm ViT, or refuse the model with one clear line."""
    name = type(model).__name__
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    blocks = getattr(model, "blocks", None)
    looks_like_vit = (
        grid is not None
        and isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
        and hasattr(model, "num_prefix_tokens")
        and hasattr(model, "forward_head")
        and hasattr(model, "norm")
        and all(hasattr(block, "norm1") and hasattr(block, "attn") for block in blocks)
    )
    if not looks_like_vit:
        raise UnsupportedModelError(f"{name} is not supported: {SUPPORTED}")
    if getattr(patch_embed, "flatten", True) is False or getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(
            f"{name} with dynamic image size or unflattened patch tokens is not supported: {SUPPORTED}"
        )
    attn = blocks[0].attn
    dim = getattr(model, "embed_dim", None) or getattr(model, "num_features", 0)
    return TokenLayout(
        num_prefix=int(model.num_prefix_tokens),
        grid=(int(grid[0]), int(grid[1])),
        depth=len(blocks),
        dim=int(dim),
        heads=int(getattr(attn, "num_heads", 1)),
    )


@dataclass
class Trace:
    """One real forward pass of a batch, with what the target block and its successors received."""

    logits: Tensor
    block_input: Tensor
    block_extras: list[BlockExtras]
    later_inputs: list[Tensor] = field(default_factory=list)  # what each block after the first received

    def from_block(self, offset: int) -> Trace:
        """The same pass seen from ``offset`` blocks later: for fusing maps of several target blocks."""
        if offset == 0:
            return self
        inputs = [self.block_input, *self.later_inputs]
        return Trace(self.logits, inputs[offset], self.block_extras[offset:], inputs[offset + 1 :])


@contextmanager
def _record_block_calls(blocks: list[nn.Module], start: int, calls: list[BlockExtras]) -> Iterator[None]:
    handles = []

    def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((args, kwargs))

    for block in blocks[start:]:
        handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace(model: nn.Module, images: Tensor, start: int, layout: TokenLayout) -> Trace:
    """Run ``model(images)`` once, recording the input of ``blocks[start]`` and every later block's extras."""
    calls: list[BlockExtras] = []
    with _record_block_calls(layout.blocks(model), start, calls):
        logits = model(images)
    expected = layout.depth - start
    if len(calls) != expected:
        raise UnsupportedModelError(
            f"{type(model).__name__} called its blocks {len(calls)} times after block {start}, "
            f"expected {expected}: {SUPPORTED}"
        )
    block_input = layout.tokens(calls[0][0][0])
    seen = layout.at_block(start)
    if block_input.shape[1] != seen.num_tokens:
        raise UnsupportedModelError(
            f"{type(model).__name__} feeds {block_input.shape[1]} tokens to its blocks, expected "
            f"{seen.num_prefix} prefix + {seen.grid[0]}x{seen.grid[1]} patch tokens: {SUPPORTED}"
        )
    extras = [(args[1:], kwargs) for args, kwargs in calls]
    later = [layout.tokens(args[0]) for args, _ in calls[1:]]
    return Trace(logits=logits, block_input=block_input, block_extras=extras, later_inputs=later)


@contextmanager
def replace_norm1_output(block: nn.Module, replacement: Tensor) -> Iterator[None]:
    """Make ``block.norm1`` return ``replacement`` for one call: the masked LayerNorm output.

    The block's own forward then computes ``residual + attn(replacement)`` and its MLP, whatever
    its class (timm Block, EVA, BEiT), so the skip path is simply what the block is called with.
    """
    calls = 0

    def substitute(_module: nn.Module, _inputs: tuple, _output: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return replacement

    handle = block.norm1.register_forward_hook(substitute)
    try:
        yield
    finally:
        handle.remove()
    if calls != 1:
        raise UnsupportedModelError(
            f"{type(block).__name__} applies norm1 {calls} times per call, expected once: {SUPPORTED}"
        )


@torch.inference_mode()
def check_decomposition(
    model: nn.Module, layout: TokenLayout, start: int, input_size: tuple[int, ...]
) -> None:
    """Refuse a model whose forward pass is not ``stem -> blocks -> norm -> forward_head``.

    One random image goes through ``model(x)`` and through the replayed tail (with norm1's own
    output substituted, as the engine does); both must give the same logits.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((1, *input_size), generator=generator).to(device)
    traced = trace(model, images, start, layout)
    norm1 = layout.blocks(model)[start].norm1(traced.block_input)
    replayed = layout.run_blocks(model, traced.block_input, start, traced.block_extras, norm1)
    # equal_nan: a checkpoint with NaN weights is a broken model, reported per image, not an unsupported one
    if replayed.shape != traced.logits.shape or not torch.allclose(
        replayed, traced.logits, rtol=1e-4, atol=1e-4, equal_nan=True
    ):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s forward pass does not decompose into blocks -> norm -> "
            f"forward_head: {SUPPORTED}"
        )
