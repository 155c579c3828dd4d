"""transformers image classifiers rebuilt as the equivalent timm model, weights copied once.

ViT and DeiT become timm's ``VisionTransformer`` (DeiT's distillation token as a second prefix
token), DeiT with its teacher head timm's distilled DeiT, BEiT timm's ``Beit``, DINOv2 a
``VisionTransformer`` whose head reads the CLS token and the mean of the patch tokens, Swin timm's
``SwinTransformer`` (the same network: transformers ports the original Swin, as timm does). The engines
then see the model shapes they know. Nothing here imports transformers: it reads the model's
config attributes and state dict, whatever version wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from vitcam_cli.errors import UnsupportedModelError

ARCHITECTURES = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "BeitForImageClassification",
    "Dinov2ForImageClassification",
    "Dinov2WithRegistersForImageClassification",
    "SwinForImageClassification",
)
SUPPORTED_CLASSES = (
    "vitcam explains these transformers classes: " + ", ".join(ARCHITECTURES) + " (see docs/transformers.md)"
)
# position embeddings that transformers interpolates to the input size on every call
INTERPOLATING = ("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}

# older transformers releases name the same tensors differently: read them in today's names
KEY_ALIASES = (
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"attention\.attention\.query\.", "attention.q_proj."),
    (r"attention\.attention\.key\.", "attention.k_proj."),
    (r"attention\.attention\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"attention\.attention\.relative_position_bias\.", "relative_position_bias."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"(layers\.\d+\.)output\.dense\.", r"\1mlp.fc2."),
)


def pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class ClassAndMeanHead(VisionTransformer):
    """DINOv2's classifier: the final-norm CLS token and the mean of the patch tokens, concatenated.

    ``global_pool`` names that pooling, which the compressed engine does not know, so it refuses the
    model and ``auto`` takes the dense engine.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, global_pool="token", **kwargs)
        self.global_pool = "token+mean"
        self.head = nn.Linear(2 * self.embed_dim, num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.cat([x[:, 0], x[:, self.num_prefix_tokens :].mean(1)], dim=-1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)


def canonical_state(model: nn.Module) -> dict[str, Tensor]:
    """The transformers model's tensors without its backbone prefix, in today's key names."""
    prefix = f"{model.base_model_prefix}."
    state = {}
    for key, value in model.state_dict().items():
        name = key.removeprefix(prefix)
        for pattern, replacement in KEY_ALIASES:
            name = re.sub(pattern, replacement, name)
        state[name] = value
    return state


def _common_kwargs(config: Any, input_size: tuple[int, int]) -> dict[str, Any]:
    activation = ACTIVATIONS.get(str(config.hidden_act))
    if activation is None:
        raise UnsupportedModelError(
            f"the activation {config.hidden_act!r} has no timm equivalent here; "
            f"supported: {', '.join(ACTIVATIONS)}"
        )
    # DINOv2 configs size the MLP by mlp_ratio (and may carry an unused intermediate_size)
    ratio = getattr(config, "mlp_ratio", None)
    mlp_ratio = float(ratio) if ratio is not None else config.intermediate_size / config.hidden_size
    return {
        "img_size": input_size,
        "patch_size": pair(config.patch_size),
        "in_chans": int(config.num_channels),
        "num_classes": len(config.id2label),
        "embed_dim": int(config.hidden_size),
        "depth": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "mlp_ratio": mlp_ratio,
        "qkv_bias": bool(getattr(config, "qkv_bias", True)),
        "norm_layer": partial(nn.LayerNorm, eps=float(config.layer_norm_eps)),
        "act_layer": activation,
    }


def _block_tensors(
    state: dict[str, Tensor], depth: int, layer_scale: tuple[str, str] | None = None
) -> dict[str, Tensor]:
    """timm Block tensors (``blocks.i.*``) from transformers layers (``layers.i.*``)."""
    out: dict[str, Tensor] = {}
    for i in range(depth):
        src, dst = f"layers.{i}.", f"blocks.{i}."

        def get(name: str, src: str = src) -> Tensor | None:
            return state.get(src + name)

        norm1 = "layernorm_before" if get("layernorm_before.weight") is not None else "norm1"
        norm2 = "layernorm_after" if get("layernorm_after.weight") is not None else "norm2"
        for part in ("weight", "bias"):
            out[f"{dst}norm1.{part}"] = get(f"{norm1}.{part}")
            out[f"{dst}norm2.{part}"] = get(f"{norm2}.{part}")
            out[f"{dst}attn.proj.{part}"] = get(f"attention.o_proj.{part}")
            out[f"{dst}mlp.fc1.{part}"] = get(f"mlp.fc1.{part}")
            out[f"{dst}mlp.fc2.{part}"] = get(f"mlp.fc2.{part}")
        out[f"{dst}attn.qkv.weight"] = torch.cat([get(f"attention.{n}_proj.weight") for n in "qkv"])
        biases = [get(f"attention.{n}_proj.bias") for n in "qkv"]
        if all(bias is not None for bias in biases):
            out[f"{dst}attn.qkv.bias"] = torch.cat(biases)
        if layer_scale is not None and get(layer_scale[0]) is not None:
            out[f"{dst}ls1.gamma"], out[f"{dst}ls2.gamma"] = get(layer_scale[0]), get(layer_scale[1])
    return out


def _embeddings(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        "cls_token": state["embeddings.cls_token"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
    }


def _norm_and_head(state: dict[str, Tensor], classifier: str = "classifier") -> dict[str, Tensor]:
    """The final LayerNorm and the linear classifier, under timm's names."""
    return {
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
        "head.weight": state[f"{classifier}.weight"],
        "head.bias": state[f"{classifier}.bias"],
    }


def _vit(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """ViT and DeiT (its distillation token a second prefix token, the head on CLS alone)."""
    config, state = model.config, canonical_state(model)
    distilled = "embeddings.distillation_token" in state
    timm_model = VisionTransformer(**_common_kwargs(config, input_size), reg_tokens=int(distilled))
    tensors = _embeddings(state) | _block_tensors(state, config.num_hidden_layers)
    tensors |= {
        "pos_embed": state["embeddings.position_embeddings"],
        **_norm_and_head(state),
    }
    if distilled:
        tensors["reg_token"] = state["embeddings.distillation_token"]
    return timm_model, tensors


def _deit_with_teacher(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """DeiT with its teacher head: timm's distilled DeiT, whose eval logits average the two heads."""
    config, state = model.config, canonical_state(model)
    timm_model = VisionTransformerDistilled(**_common_kwargs(config, input_size))
    tensors = _embeddings(state) | _block_tensors(state, config.num_hidden_layers)
    tensors |= {
        "dist_token": state["embeddings.distillation_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        **_norm_and_head(state, "cls_classifier"),
        "head_dist.weight": state["distillation_classifier.weight"],
        "head_dist.bias": state["distillation_classifier.bias"],
    }
    return timm_model, tensors


def _beit_blocks(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """timm Beit blocks: q/v biases apart (k has none), per-block relative position bias, gamma_1/2."""
    tensors = _block_tensors(state, depth, ("lambda_1", "lambda_2"))
    for i in range(depth):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        tensors.pop(f"{dst}attn.qkv.bias", None)
        tensors[f"{dst}attn.q_bias"] = state.get(f"{src}attention.q_proj.bias")
        tensors[f"{dst}attn.v_bias"] = state.get(f"{src}attention.v_proj.bias")
        tensors[f"{dst}attn.relative_position_bias_table"] = state.get(
            f"{src}relative_position_bias.relative_position_bias_table"
        )
        if f"{dst}ls1.gamma" in tensors:
            tensors[f"{dst}gamma_1"] = tensors.pop(f"{dst}ls1.gamma")
            tensors[f"{dst}gamma_2"] = tensors.pop(f"{dst}ls2.gamma")
    return tensors


def _beit(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    config, state = model.config, canonical_state(model)
    kwargs = _common_kwargs(config, input_size)
    if kwargs.pop("act_layer") is not nn.GELU:  # timm's Beit has exact GELU only
        raise UnsupportedModelError(f"BEiT with the activation {config.hidden_act!r} is not supported")
    mean_pooling = bool(config.use_mean_pooling)
    timm_model = Beit(
        **kwargs,
        global_pool="avg" if mean_pooling else "token",
        init_values=config.layer_scale_init_value if config.layer_scale_init_value > 0 else None,
        use_abs_pos_emb=bool(config.use_absolute_position_embeddings),
        use_rel_pos_bias=bool(config.use_relative_position_bias),
        use_shared_rel_pos_bias=bool(config.use_shared_relative_position_bias),
        use_fc_norm=mean_pooling,
    )
    tensors = _embeddings(state) | _beit_blocks(state, config.num_hidden_layers)
    tensors |= {"head.weight": state["classifier.weight"], "head.bias": state["classifier.bias"]}
    if config.use_absolute_position_embeddings:
        tensors["pos_embed"] = state["embeddings.position_embeddings"]
    if config.use_shared_relative_position_bias:
        tensors["rel_pos_bias.relative_position_bias_table"] = state[
            "shared_position_bias.relative_position_bias_table"
        ]
    norm = "pooler.layernorm" if mean_pooling else "layernorm"
    for part in ("weight", "bias"):
        tensors[f"{'fc_norm' if mean_pooling else 'norm'}.{part}"] = state[f"{norm}.{part}"]
    return timm_model, tensors


def _dinov2(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """DINOv2 (with or without registers): the position embedding interpolated once, by transformers'
    own code, for this input size; registers take none, so the CLS token's is folded into it."""
    config, state = model.config, canonical_state(model)
    if getattr(config, "use_swiglu_ffn", False):
        raise UnsupportedModelError("DINOv2 with a SwiGLU feed-forward (use_swiglu_ffn) is not supported yet")
    registers = int(getattr(config, "num_register_tokens", 0))
    kwargs = _common_kwargs(config, input_size)
    timm_model = ClassAndMeanHead(
        **kwargs, init_values=float(config.layerscale_value), reg_tokens=registers, no_embed_class=True
    )
    patch = pair(config.patch_size)
    grid = (input_size[0] // patch[0]) * (input_size[1] // patch[1])
    embeddings = model.base_model.embeddings
    with torch.no_grad():
        probe = torch.zeros(1, 1 + grid, config.hidden_size, dtype=embeddings.cls_token.dtype)
        position = embeddings.interpolate_pos_encoding(probe, *input_size).reshape(1, 1 + grid, -1)
    tensors = _embeddings(state) | _block_tensors(
        state, config.num_hidden_layers, ("layer_scale1.lambda1", "layer_scale2.lambda1")
    )
    tensors |= {
        "cls_token": state["embeddings.cls_token"] + position[:, :1],
        "pos_embed": position[:, 1:],
        **_norm_and_head(state),
    }
    if registers:
        tensors["reg_token"] = state["embeddings.register_tokens"]
    return timm_model, tensors


def _swin_stages(state: dict[str, Tensor], depths: list[int]) -> dict[str, Tensor]:
    """timm Swin stages from transformers' ``encoder.layers``. transformers merges patches at the end of
    a stage, timm at the start of the next, so stage ``s``'s ``downsample`` becomes stage ``s + 1``'s
    (both concatenate the 2x2 neighbours in the original Swin's order)."""
    tensors: dict[str, Tensor] = {}
    for s, depth in enumerate(depths):
        source = f"encoder.layers.{s}."
        blocks = {
            "layers." + key.removeprefix(source + "blocks."): value
            for key, value in state.items()
            if key.startswith(source + "blocks.")
        }
        for name, value in _block_tensors(blocks, depth).items():
            tensors[f"layers.{s}.{name}"] = value
        for j in range(depth):
            tensors[f"layers.{s}.blocks.{j}.attn.relative_position_bias_table"] = blocks.get(
                f"layers.{j}.attention.relative_position_bias.relative_position_bias_table"
            )
        for part in ("reduction.weight", "norm.weight", "norm.bias"):
            if source + f"downsample.{part}" in state:
                tensors[f"layers.{s + 1}.downsample.{part}"] = state[source + f"downsample.{part}"]
    return tensors


def _check_windows_fit(input_size: tuple[int, int], patch: tuple[int, int], window: int, stages: int) -> None:
    """transformers and timm pad a stage whose grid is not a multiple of its window differently (their
    logits differ), so such a stage is refused here rather than explained on another network."""
    grid = (input_size[0] // patch[0], input_size[1] // patch[1])
    for stage in range(stages):
        if min(grid) > window and (grid[0] % window or grid[1] % window):
            raise UnsupportedModelError(
                f"Swin's stage {stage + 1} has a {grid[0]}x{grid[1]} token grid, not a multiple of its "
                f"{window}x{window} windows; only inputs whose stage grids tile into whole windows are "
                "supported"
            )
        grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)


def _swin(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """Swin (V1): timm's ``SwinTransformer`` with the same stages, windows and pooling."""
    config, state = model.config, canonical_state(model)
    if getattr(config, "use_absolute_embeddings", False):
        raise UnsupportedModelError("Swin with absolute position embeddings is not supported")
    if str(config.hidden_act) != "gelu":  # timm's Swin has exact GELU only
        raise UnsupportedModelError(f"Swin with the activation {config.hidden_act!r} is not supported")
    depths = [int(depth) for depth in config.depths]
    _check_windows_fit(input_size, pair(config.patch_size), int(config.window_size), len(depths))
    timm_model = SwinTransformer(
        img_size=input_size,
        patch_size=int(config.patch_size),
        in_chans=int(config.num_channels),
        num_classes=len(config.id2label),
        embed_dim=int(config.embed_dim),
        depths=tuple(depths),
        num_heads=tuple(int(heads) for heads in config.num_heads),
        window_size=int(config.window_size),
        mlp_ratio=float(config.mlp_ratio),
        qkv_bias=bool(config.qkv_bias),
        norm_layer=partial(nn.LayerNorm, eps=float(config.layer_norm_eps)),
    )
    tensors = _swin_stages(state, depths)
    tensors |= {
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "patch_embed.norm.weight": state["embeddings.norm.weight"],
        "patch_embed.norm.bias": state["embeddings.norm.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
        "head.fc.weight": state["classifier.weight"],
        "head.fc.bias": state["classifier.bias"],
    }
    return timm_model, tensors


CONVERTERS: dict[str, Callable[[nn.Module, tuple[int, int]], tuple[nn.Module, dict[str, Tensor]]]] = {
    "ViTForImageClassification": _vit,
    "DeiTForImageClassification": _vit,
    "DeiTForImageClassificationWithTeacher": _deit_with_teacher,
    "BeitForImageClassification": _beit,
    "Dinov2ForImageClassification": _dinov2,
    "Dinov2WithRegistersForImageClassification": _dinov2,
    "SwinForImageClassification": _swin,
}


def to_timm(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """The timm model equal to ``model`` on ``input_size`` (height, width) images, in eval mode.

    Every tensor of the timm model must come from the transformers model (buffers timm computes
    itself, such as relative position indices, excepted); a missing one is refused in one line.
    """
    architecture = type(model).__name__
    if architecture not in CONVERTERS:
        raise UnsupportedModelError(f"{architecture} is not supported: {SUPPORTED_CLASSES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        timm_model, tensors = CONVERTERS[architecture](model, input_size)
    parameters = dict(timm_model.named_parameters())
    missing = sorted(name for name in parameters if tensors.get(name) is None)
    if missing:
        raise UnsupportedModelError(
            f"{architecture}: no weights for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
            f"in its timm equivalent; {SUPPORTED_CLASSES}"
        )
    timm_model.load_state_dict({name: tensors[name] for name in parameters}, strict=False)
    timm_model.pretrained_cfg = {"architecture": architecture}
    return timm_model.eval()
