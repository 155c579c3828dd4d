"""transformers image models rebuilt as the equivalent timm model, weights copied once.

Classifiers: ViT and DeiT become timm's ``VisionTransformer`` (DeiT's distillation token as a second
prefix token), DeiT with its teacher head timm's distilled DeiT, BEiT timm's ``Beit``, DINOv2 a
``VisionTransformer`` whose head reads the CLS token and the mean of the patch tokens, Swin timm's
``SwinTransformer`` (the same network: transformers ports the original Swin, as timm does).

Embedding models (base models, no classes) become a ``VisionTransformer`` with ``num_classes=0`` whose
output is the embedding their transformers class defines: ViT's pooler (dense and tanh on the CLS token)
as the head, DINOv2's final-norm CLS token, SigLIP's attention-pooling head as timm's
``AttentionPoolLatent`` (``global_pool='map'``), CLIP's ``visual_projection`` of the final-norm CLS token
as a bias-free head after timm's ``norm_pre`` (CLIP's ``pre_layrnorm``), as timm's own CLIP models have.

The engines then see the model shapes they know. Nothing here imports transformers: it reads the
model's config attributes and state dict, whatever version wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.layers import QuickGELU
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
# base models whose outputs are an embedding (docs/transformers.md says which output each is)
EMBEDDERS = (
    "ViTModel",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
    "SiglipVisionModel",
    "CLIPVisionModelWithProjection",
)
SUPPORTED_CLASSES = (
    f"vitcam explains these transformers classifiers: {', '.join(ARCHITECTURES)}; and these embedding "
    f"models: {', '.join(EMBEDDERS)} (see docs/transformers.md)"
)
# position embeddings that transformers interpolates to the input size on every call
INTERPOLATING = (
    "Dinov2ForImageClassification",
    "Dinov2WithRegistersForImageClassification",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "gelu_new": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "quick_gelu": QuickGELU,
    "tanh": nn.Tanh,
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
# CLIP and SigLIP name their encoder layers' parts otherwise (Swin's stages are ``encoder.layers`` too,
# so these apply to those two alone)
TOWER_KEYS = (
    (r"^encoder\.layers\.(\d+)\.", r"layers.\1."),
    (r"^(layers\.\d+\.)self_attn\.out_proj\.", r"\1attention.o_proj."),
    (r"^(layers\.\d+\.)self_attn\.", r"\1attention."),
    (r"^(layers\.\d+\.)layer_norm([12])\.", r"\1norm\2."),
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


def _tower_state(model: nn.Module) -> dict[str, Tensor]:
    """A CLIP or SigLIP vision tower's tensors, its layers' parts under the names ``_block_tensors`` reads."""
    state = {}
    for name, value in canonical_state(model).items():
        for pattern, replacement in TOWER_KEYS:
            name = re.sub(pattern, replacement, name)
        state[name] = value
    return state


def _activation(name: str) -> Callable[[], nn.Module]:
    activation = ACTIVATIONS.get(str(name))
    if activation is None:
        raise UnsupportedModelError(
            f"the activation {name!r} has no timm equivalent here; supported: {', '.join(ACTIVATIONS)}"
        )
    return activation


def _common_kwargs(config: Any, input_size: tuple[int, int]) -> dict[str, Any]:
    """A classifier's timm arguments; an embedding model's override ``num_classes`` with 0."""
    activation = _activation(config.hidden_act)
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


def _final_norm(state: dict[str, Tensor], source: str = "layernorm") -> dict[str, Tensor]:
    return {"norm.weight": state[f"{source}.weight"], "norm.bias": state[f"{source}.bias"]}


def _norm_and_head(state: dict[str, Tensor], classifier: str = "classifier") -> dict[str, Tensor]:
    """The final LayerNorm and the linear classifier, under timm's names."""
    return _final_norm(state) | {
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


def _vit_model(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """ViTModel: token pooling without classes; its pooler (dense and activation on the final-norm CLS
    token) becomes the head, when the weights have one."""
    config, state = model.config, canonical_state(model)
    timm_model = VisionTransformer(**_common_kwargs(config, input_size) | {"num_classes": 0})
    tensors = _embeddings(state) | _block_tensors(state, config.num_hidden_layers) | _final_norm(state)
    tensors["pos_embed"] = state["embeddings.position_embeddings"]
    dense = state.get("pooler.dense.weight")
    if dense is not None:
        activation = _activation(config.pooler_act)
        timm_model.head = nn.Sequential(nn.Linear(dense.shape[1], dense.shape[0]), activation())
        tensors |= {"head.0.weight": dense, "head.0.bias": state["pooler.dense.bias"]}
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


def _dinov2_backbone(
    model: nn.Module, state: dict[str, Tensor], input_size: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """DINOv2 (with or without registers) up to its final norm: timm arguments and tensors. The position
    embedding is interpolated once, by transformers' own code, for this input size; registers take none,
    so the CLS token's is folded into it."""
    config = model.config
    if getattr(config, "use_swiglu_ffn", False):
        raise UnsupportedModelError("DINOv2 with a SwiGLU feed-forward (use_swiglu_ffn) is not supported yet")
    registers = int(getattr(config, "num_register_tokens", 0))
    kwargs = _common_kwargs(config, input_size) | {
        "init_values": float(config.layerscale_value),
        "reg_tokens": registers,
        "no_embed_class": True,
    }
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
        **_final_norm(state),
    }
    if registers:
        tensors["reg_token"] = state["embeddings.register_tokens"]
    return kwargs, tensors


def _dinov2(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """DINOv2's classifier: its head on the CLS token and the mean of the patch tokens."""
    state = canonical_state(model)
    kwargs, tensors = _dinov2_backbone(model, state, input_size)
    head = {"head.weight": state["classifier.weight"], "head.bias": state["classifier.bias"]}
    return ClassAndMeanHead(**kwargs), tensors | head


def _dinov2_model(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """Dinov2Model's pooler_output, the final-norm CLS token: timm's token pooling without classes."""
    kwargs, tensors = _dinov2_backbone(model, canonical_state(model), input_size)
    return VisionTransformer(**kwargs | {"num_classes": 0}), tensors


def _tower_layers(state: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    """A CLIP or SigLIP vision tower's patch embedding, position embedding and blocks."""
    tensors = _block_tensors(state, config.num_hidden_layers)
    tensors |= {
        "patch_embed.proj.weight": state["embeddings.patch_embedding.weight"],
        "pos_embed": state["embeddings.position_embedding.weight"][None],
    }
    if "embeddings.patch_embedding.bias" in state:
        tensors["patch_embed.proj.bias"] = state["embeddings.patch_embedding.bias"]
    return tensors


def _siglip(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """SigLIP's vision tower: patch tokens only, the final norm, then its attention-pooling head as timm's
    ``AttentionPoolLatent``: the learned probe its latent, torch's packed q/k/v projection (rows q, k, v)
    its ``q`` and ``kv``, the head's layernorm and MLP its own."""
    config, state = model.config, _tower_state(model)
    if "head.probe" not in state:
        raise UnsupportedModelError(
            "SiglipVisionModel without its attention-pooling head (vision_use_head false) has no "
            "pooler_output, the embedding vitcam explains"
        )
    kwargs = _common_kwargs(config, input_size) | {"num_classes": 0}
    timm_model = VisionTransformer(**kwargs, class_token=False, global_pool="map")
    width = int(config.hidden_size)
    packed, packed_bias = state["head.attention.in_proj_weight"], state["head.attention.in_proj_bias"]
    tensors = _tower_layers(state, config) | _final_norm(state, "post_layernorm")
    tensors |= {
        "attn_pool.latent": state["head.probe"],
        "attn_pool.q.weight": packed[:width],
        "attn_pool.q.bias": packed_bias[:width],
        "attn_pool.kv.weight": packed[width:],
        "attn_pool.kv.bias": packed_bias[width:],
    }
    for timm_name, name in (
        ("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
    ):  # fmt: skip
        for part in ("weight", "bias"):
            tensors[f"attn_pool.{timm_name}.{part}"] = state[f"head.{name}.{part}"]
    return timm_model, tensors


def _clip(model: nn.Module, input_size: tuple[int, int]) -> tuple[nn.Module, dict[str, Tensor]]:
    """CLIP's vision tower with its projection: ``pre_layrnorm`` after the embeddings is timm's
    ``norm_pre`` (whose patch embedding then has no bias, as CLIP's), token pooling after the final norm,
    and ``visual_projection`` a bias-free head, as in timm's own CLIP models."""
    config, state = model.config, _tower_state(model)
    timm_model = VisionTransformer(**_common_kwargs(config, input_size) | {"num_classes": 0}, pre_norm=True)
    projection = state["visual_projection.weight"]
    timm_model.head = nn.Linear(projection.shape[1], projection.shape[0], bias=False)
    tensors = _tower_layers(state, config) | _final_norm(state, "post_layernorm")
    tensors |= {
        "cls_token": state["embeddings.class_embedding"].reshape(1, 1, -1),
        "norm_pre.weight": state["pre_layrnorm.weight"],
        "norm_pre.bias": state["pre_layrnorm.bias"],
        "head.weight": projection,
    }
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
    "ViTModel": _vit_model,
    "Dinov2Model": _dinov2_model,
    "Dinov2WithRegistersModel": _dinov2_model,
    "SiglipVisionModel": _siglip,
    "CLIPVisionModelWithProjection": _clip,
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
