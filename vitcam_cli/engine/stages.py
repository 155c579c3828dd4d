"""Where the tokens are in a hierarchical timm model: Swin's stages, each with its own token grid.

timm's ``SwinTransformer`` runs ``patch_embed -> layers[0..S) -> norm -> forward_head``, each stage
``layers[s]`` being ``downsample`` (patch merging, identity for the first) then pre-norm blocks with
(shifted) window attention on an NHWC grid. Its blocks are numbered across all stages in the order they
run, so ``--target-block -1`` is the last block of the last stage and earlier blocks reach earlier,
finer grids. There are no prefix tokens. A block's input is seen as the ``(B, H*W, C)`` sequence of its
stage's grid in row-major order, the shape the engines mask; ``run_blocks`` folds it back into the grid
and calls the model's own blocks and patch merging, so window partitioning, the cyclic shift and its
attention mask, and the relative position bias are timm's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from vitcam_cli.engine.geometry import SUPPORTED, BlockExtras, TokenLayout, replace_norm1_output, token_layout
from vitcam_cli.errors import UnsupportedModelError


@dataclass(frozen=True)
class Stage:
    """One stage: its token grid, width, attention heads and number of blocks."""

    grid: tuple[int, int]
    dim: int
    heads: int
    depth: int


@dataclass(frozen=True)
class StageLayout(TokenLayout):
    """A Swin's layout. ``grid``, ``dim`` and ``heads`` are those of ``stage`` (the last stage unless
    ``at_block`` chose another): the grid a map of that stage's blocks has."""

    stages: tuple[Stage, ...] = ()
    stage: int = -1

    def locate(self, index: int) -> tuple[int, int]:
        """Block ``index`` (0-based, across stages) as (stage, block within the stage)."""
        for number, stage in enumerate(self.stages):
            if index < stage.depth:
                return number, index
            index -= stage.depth
        raise IndexError(index)

    def at_block(self, index: int) -> StageLayout:
        number, _ = self.locate(index)
        stage = self.stages[number]
        return replace(self, grid=stage.grid, dim=stage.dim, heads=stage.heads, stage=number)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for layer in model.layers for block in layer.blocks]

    def tokens(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H*W, C), row-major like the masks."""
        return x.flatten(1, 2)

    def run_blocks(
        self,
        model: nn.Module,
        tokens: Tensor,
        start: int,
        extras: list[BlockExtras],
        norm1_output: Tensor | None = None,
    ) -> Tensor:
        """The rest of the target stage from block ``start``, the later stages (patch merging, blocks), the
        final norm and the head, on ``tokens`` (B, H*W, C) of the target stage's grid. Swin blocks take
        no extra arguments, so ``extras`` (what the trace recorded) is empty for each of them."""
        number, first = self.locate(start)
        rows, cols = self.stages[number].grid
        x = tokens.unflatten(1, (rows, cols))
        for s in range(number, len(self.stages)):
            layer = model.layers[s]
            if s > number:
                x = layer.downsample(x)
            for j, block in enumerate(layer.blocks[first if s == number else 0 :]):
                if s == number and j == 0 and norm1_output is not None:
                    with replace_norm1_output(block, norm1_output.unflatten(1, (rows, cols))):
                        x = block(x)
                else:
                    x = block(x)
        return model.forward_head(model.norm(x))


def is_hierarchical(model: nn.Module) -> bool:
    return isinstance(model, SwinTransformer)


def stage_layout(model: SwinTransformer) -> StageLayout:
    """Read each stage's grid, width and heads from a timm Swin, or refuse it with one clear line."""
    name = type(model).__name__
    if getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(f"{name} with dynamic image size is not supported: {SUPPORTED}")
    stages = tuple(
        Stage(
            grid=(int(layer.output_resolution[0]), int(layer.output_resolution[1])),
            dim=int(layer.blocks[0].dim),
            heads=int(layer.blocks[0].attn.num_heads),
            depth=len(layer.blocks),
        )
        for layer in model.layers
    )
    if not stages or any(stage.depth == 0 for stage in stages):
        raise UnsupportedModelError(f"{name} has a stage without blocks: {SUPPORTED}")
    last = stages[-1]
    return StageLayout(
        num_prefix=0,
        grid=last.grid,
        depth=sum(stage.depth for stage in stages),
        dim=last.dim,
        heads=last.heads,
        stages=stages,
        stage=len(stages) - 1,
    )


def model_layout(model: nn.Module) -> TokenLayout:
    """The layout of any supported timm model: a Swin's stages, else a ViT's token layout (or a refusal)."""
    return stage_layout(model) if is_hierarchical(model) else token_layout(model)
