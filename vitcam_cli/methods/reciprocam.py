"""ViT-ReciproCAM (Byun & Lee, 2023): saliency from the class scores of spatially masked token copies.

Three choices differ between public implementations and are explicit here: the target block,
what the block's skip path carries (``ln``: the masked LayerNorm output; ``masked-input``: the
masked block input; ``input``: the unmasked block input) and the score (softmax or logit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from vitcam_cli.engine.base import SKIPS
from vitcam_cli.engine.factory import create_engine
from vitcam_cli.engine.geometry import TokenLayout, check_decomposition, trace
from vitcam_cli.engine.masks import KERNELS
from vitcam_cli.engine.scoring import SCORES
from vitcam_cli.errors import VitcamError
from vitcam_cli.methods.base import ClassChooser, Explanation


@dataclass(frozen=True)
class ReciproCAMSettings:
    kernel: str = "gaussian"
    target_block: int = -2
    skip: str = "input"
    score: str = "softmax"

    def with_overrides(self, **overrides: object) -> ReciproCAMSettings:
        """Apply the options the user set explicitly on top of a preset."""
        settings = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        for name, allowed in (("kernel", KERNELS), ("skip", SKIPS), ("score", SCORES)):
            if getattr(settings, name) not in allowed:
                raise VitcamError(
                    f"--{name} must be one of {', '.join(allowed)}, not {getattr(settings, name)!r}"
                )
        return settings

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


PRESETS: dict[str, ReciproCAMSettings] = {
    # The paper authors' code: second-to-last block, unmasked block input on the skip path.
    "official": ReciproCAMSettings(target_block=-2, skip="input", score="softmax"),
    # OpenVINO Training Extensions: last block, the masked LayerNorm output on the skip path.
    "otx": ReciproCAMSettings(target_block=-1, skip="ln", score="softmax"),
    # OpenVINO XAI: last block, the masked block input on the skip path, raw logits.
    "openvino-xai": ReciproCAMSettings(target_block=-1, skip="masked-input", score="logit"),
}
DEFAULT_PRESET = "official"


class ReciproCAM:
    """Explains a batch: one forward pass to predict, then the masked copies through the engine."""

    name = "reciprocam"

    def __init__(
        self,
        model: nn.Module,
        layout: TokenLayout,
        settings: ReciproCAMSettings,
        input_size: tuple[int, ...],
        mask_batch: int | None = None,
        engine: str = "auto",
    ) -> None:
        self.model = model
        self.layout = layout
        self.settings = settings
        self.block_index = layout.block_index(settings.target_block)
        check_decomposition(model, layout, self.block_index, input_size)
        self.engine = create_engine(
            engine,
            model,
            layout,
            self.block_index,
            settings.kernel,
            settings.skip,
            settings.score,
            mask_batch,
        )

    @torch.inference_mode()
    def __call__(self, images: Tensor, choose_classes: ClassChooser) -> Explanation:
        """``choose_classes`` maps the (B, C) float32 logits to the (B, T) classes to explain."""
        traced = trace(self.model, images, self.block_index, self.layout)
        logits = traced.logits.float()
        classes = choose_classes(logits)
        maps = self.engine(traced, classes)
        return Explanation(logits=logits, classes=classes, maps=maps)
