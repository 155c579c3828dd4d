"""The open_clip adapter: ``open_clip:ARCH`` and open_clip model objects, explained zero-shot or as
image embeddings.

The image tower becomes, once, at load, the timm model it is equivalent to: open_clip's own ViT is
converted into a timm VisionTransformer (timm's ``checkpoint_filter_fn`` reads open_clip's state-dict
layout); a tower on a timm trunk (SigLIP) is that trunk, with open_clip's projection after its head.
Without class texts the model is its image embedding, open_clip's ``encode_image`` (the projection of the
pooled token, not normalised), and its targets are embeddings compared by cosine. With class texts the
zero-shot classifier becomes the model's ``head``: project, L2-normalise, cosine with each class text's
embedding, times ``logit_scale``, plus ``logit_bias`` where the model has one; such a model was trained
with the sigmoid loss (SigLIP), so its logits are read each on its own, through a sigmoid. The class
texts' embeddings are computed once, with open_clip's own tokenizer and zero-shot recipe (each prompt
template filled with the text, the embeddings averaged). The engines then see a ViT with a head like any
other. The conversion is checked at load: its embedding of a probe input must equal ``encode_image``'s.
"""

from __future__ import annotations

import contextlib
import copy
import string
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import create_transform
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.errors import ParameterError, UnsupportedModelError, VitcamError, did_you_mean, literal
from vitcam_cli.models import hub, open_clip_fit
from vitcam_cli.models.files import check_weights_file
from vitcam_cli.models.loaded import LoadedModel, ModelSpec, read_class_names
from vitcam_cli.targets import Reading

PREFIX = "open_clip:"
DEFAULT_PROMPT = "a photo of a {}."
SUPPORTED = (
    "vitcam explains open_clip's own ViT image towers (class-token or average pooling, ln_pre, standard "
    "residual attention blocks: OpenAI CLIP and the LAION, DataComp, DFN and MetaCLIP ViTs) and towers on "
    "timm ViT trunks (SigLIP, SigLIP2, EVA02, PE-Core, ...); attentional pooling (CoCa), ResNets, custom "
    "attention blocks and timm trunks that are not ViTs (ConvNeXt, Swin, FastViT, ...) are not"
)
INSTALL_HINT = "open_clip models need the open_clip_torch package: pip install 'vitcam[clip]'"
# open_clip's resize modes that timm's eval transform reproduces (vitcam then streams reduced decodes)
CROP_MODES = {"shortest": "center", "squash": "squash"}
SHOWN_TAGS = 4  # pretrained tags named in a message (open_clip.list_pretrained_tags_by_model has all)
# the files open_clip reads a hub repository's weights from when its config names none
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# relative to the embedding's largest value: float32 rounding of the same arithmetic in another order
PROBE_TOLERANCE = 1e-4
# what the embedding projects, by the timm tower's global_pool
POOLED = {"token": "class token", "avg": "mean patch token", "map": "attention-pool latent"}


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as error:
        raise VitcamError(INSTALL_HINT) from error
    return open_clip


class ZeroShotHead(nn.Module):
    """Pooled image token -> zero-shot logits: the tower's projection, L2-normalised, cosine with each
    class text's (unit) embedding, times ``logit_scale``, plus ``logit_bias``."""

    def __init__(self, projection: nn.Module, texts: Tensor, logit_scale: float, logit_bias: float) -> None:
        super().__init__()
        self.projection = projection
        self.register_buffer("texts", texts)  # (C, D) one unit vector per class text
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.register_buffer("logit_bias", torch.tensor(float(logit_bias)))

    def forward(self, x: Tensor) -> Tensor:
        image = F.normalize(self.projection(x), dim=-1)
        return self.logit_scale * image @ self.texts.to(image.dtype).T + self.logit_bias


def check_prompts(prompts: Sequence[str]) -> tuple[str, ...]:
    """Prompt templates, each with one bare ``{}`` where the class text goes: a format spec or a
    conversion (``{:.0}``, ``{!r}``) would change every class's text, and ``{{}}`` is a literal pair of
    braces, not a place for it."""
    for template in prompts:
        try:
            fields = [parts[1:] for parts in string.Formatter().parse(template) if parts[1] is not None]
        except ValueError:  # a lone { or }
            fields = []
        if fields != [("", "", None)]:
            raise ParameterError(
                "prompts", "must hold one {{}} where the class text goes, e.g. 'a photo of a {{}}.'", template
            )
    return tuple(prompts) or (DEFAULT_PROMPT,)


def _refuse(why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{why}: {SUPPORTED}")


def _activation(open_clip: Any, block: nn.Module) -> str:
    act = block.mlp.gelu
    if isinstance(act, open_clip.transformer.QuickGELU):
        return "quick_gelu"
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    raise _refuse(f"its MLP activation {type(act).__name__} has no timm equivalent")


def _check_tower(open_clip: Any, visual: nn.Module) -> None:
    """Refuse an open_clip ViT tower that has no exact timm VisionTransformer equivalent."""
    if visual.attn_pool is not None:
        raise _refuse("its image tower pools with attention")
    if visual.pool_type not in ("tok", "avg") or (visual.pool_type == "avg" and visual.final_ln_after_pool):
        raise _refuse(f"its image tower pools with {visual.pool_type!r}")
    if isinstance(visual.ln_pre, nn.Identity):
        raise _refuse("its image tower has no ln_pre")
    blocks = visual.transformer.resblocks
    if any(type(block) is not open_clip.transformer.ResidualAttentionBlock for block in blocks):
        raise _refuse("its image tower has custom attention blocks")


def _converted_tower(open_clip: Any, visual: nn.Module) -> VisionTransformer:
    """The timm VisionTransformer equal to open_clip's own ViT tower, its head the tower's projection."""
    _check_tower(open_clip, visual)
    first = visual.transformer.resblocks[0]
    width = visual.conv1.out_channels
    model = VisionTransformer(
        img_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        embed_dim=width,
        depth=len(visual.transformer.resblocks),
        num_heads=first.attn.num_heads,
        mlp_ratio=first.mlp.c_fc.out_features / width,
        init_values=None if isinstance(first.ls_1, nn.Identity) else 1.0,
        pre_norm=True,
        global_pool={"tok": "token", "avg": "avg"}[visual.pool_type],
        fc_norm=False,
        num_classes=visual.output_dim,
        norm_layer=partial(nn.LayerNorm, eps=visual.ln_post.eps),
        act_layer=_activation(open_clip, first),
    )
    prefixed = {f"visual.{key}": value for key, value in visual.state_dict().items()}
    state = checkpoint_filter_fn(prefixed, model)
    # timm's filter renames everything but open_clip's LayerScale (ls_1 -> ls1)
    state = {key.replace(".ls_1.", ".ls1.").replace(".ls_2.", ".ls2."): value for key, value in state.items()}
    model.load_state_dict(state)
    return model


def _trunk_tower(visual: nn.Module) -> nn.Module:
    """A timm-trunk tower (SigLIP's ``TimmModel``) as one timm model: a copy of the trunk (the caller's
    model stays as it was), with open_clip's head (projection, MLP; often none) after the trunk's own."""
    trunk = visual.trunk
    try:
        token_layout(trunk)
    except UnsupportedModelError as error:
        raise _refuse(f"its image tower's timm trunk is a {type(trunk).__name__}") from error
    tower = copy.deepcopy(visual)
    model = tower.trunk
    model.head = nn.Sequential(model.head, tower.head)
    return model


def timm_tower(open_clip: Any, visual: nn.Module) -> nn.Module:
    """The timm model equal to an open_clip image tower, its head the tower's projection: what
    ``encode_image`` returns."""
    if isinstance(visual, open_clip.timm_model.TimmModel):
        return _trunk_tower(visual).eval()
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise _refuse(f"its image tower is a {type(visual).__name__}")
    return _converted_tower(open_clip, visual).eval()


def text_embeddings(
    open_clip: Any, clip: nn.Module, tokenizer: Any, texts: Sequence[str], prompts: Sequence[str]
) -> Tensor:
    """(C, D) unit embeddings of the class texts: CLIP's zero-shot recipe (every template, averaged)."""
    device = next(clip.parameters()).device
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(
            clip, tokenizer, list(texts), list(prompts), device=device
        )
    return weights.T.float().cpu().clone()


def _logit_terms(clip: nn.Module) -> tuple[float, float]:
    bias = getattr(clip, "logit_bias", None)
    with torch.no_grad():
        return float(clip.logit_scale.exp()), 0.0 if bias is None else float(bias)


def _reading(clip: nn.Module) -> Reading:
    """How the zero-shot logits are read: a softmax over the texts ignores a bias they all share, so a model
    with a logit bias learnt it from the sigmoid loss (SigLIP), which reads each text on its own."""
    return Reading() if getattr(clip, "logit_bias", None) is None else Reading("sigmoid")


@torch.inference_mode()
def _check_embedding(clip: nn.Module, model: nn.Module, name: str) -> int:
    """Refuse a conversion whose embedding of a probe input differs from open_clip's ``encode_image``;
    return the embedding's width."""
    device = next(clip.parameters()).device
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((2, 3, *model.patch_embed.img_size), generator=generator).to(device)
    expected = clip.encode_image(probe).float()
    got = model(probe).float()
    tolerance = PROBE_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not torch.allclose(got, expected, rtol=0, atol=tolerance):
        difference = float((got - expected).abs().max())
        raise _refuse(
            f"{name}: the converted image tower's embedding differs from open_clip's by {difference:.2g}"
        )
    return expected.shape[-1]


def _data_config(visual: nn.Module) -> dict[str, Any]:
    config = visual.preprocess_cfg
    size = tuple(visual.image_size)
    return {
        "input_size": (3, *size),
        "interpolation": config.get("interpolation", "bicubic"),
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "crop_pct": 1.0,
        "crop_mode": CROP_MODES.get(config.get("resize_mode", "shortest"), "center"),
    }


def _transform(open_clip: Any, visual: nn.Module, data_config: dict[str, Any]) -> Any:
    """open_clip's eval transform, as timm builds it where timm's is the same (so decodes stream reduced)."""
    if visual.preprocess_cfg.get("resize_mode", "shortest") in CROP_MODES:
        return create_transform(**data_config, is_training=False)
    return open_clip.image_transform_v2(open_clip.PreprocessCfg(**visual.preprocess_cfg), is_train=False)


class ZeroShot:
    """An open_clip model, its image tower converted once, ready to become a ``LoadedModel``: its image
    embedding, or zero-shot for any class texts and prompts."""

    def __init__(
        self, clip: nn.Module, tokenizer: Callable[[], Any], device: torch.device | str, name: str
    ) -> None:
        """``tokenizer`` makes the text tower's tokenizer when class texts first need it."""
        self.open_clip = _open_clip()
        self.clip = clip.eval().to(device)
        self.make_tokenizer = tokenizer
        self.device = device
        self.name = name
        self.tower = timm_tower(self.open_clip, self.clip.visual).to(device)
        self.projection = self.tower.head
        self.width = _check_embedding(self.clip, self.tower, name)
        self.layout = token_layout(self.tower)
        self.data_config = _data_config(self.clip.visual)
        self.reading = _reading(self.clip)

    @cached_property
    def tokenizer(self) -> Any:
        """Made for the first class texts, not before: an embedding needs none, and SigLIP's is read from
        the hub."""
        return self.make_tokenizer()

    def loaded(self, texts: Sequence[str], prompts: Sequence[str], source: str) -> LoadedModel:
        """Zero-shot for ``texts`` filled into ``prompts``; without texts, the image embedding."""
        if texts:
            return self._zero_shot(texts, check_prompts(prompts), source)
        if prompts:
            raise ParameterError(
                "prompts",
                "needs class texts to fill in ({class_names}); without them the model is its image embedding",
            )
        return self._embedding()

    def _zero_shot(self, texts: Sequence[str], prompts: tuple[str, ...], source: str) -> LoadedModel:
        """The tower with a zero-shot head for ``texts``, read as open_clip's training read them."""
        embeddings = text_embeddings(self.open_clip, self.clip, self.tokenizer, texts, prompts)
        scale, bias = _logit_terms(self.clip)
        model = self.tower  # one tower per model: new texts (or the embedding) replace its head
        model.head = ZeroShotHead(self.projection, embeddings, scale, bias).to(self.device)
        model.num_classes = len(texts)
        info = self._info(len(texts)) | {
            "class_names": source,
            "prompts": list(prompts),
            "reading": self.reading.kind,
        }
        return self._loaded(
            list(texts),
            info,
            reading=self.reading,
            class_texts=lambda new, templates, where: self.loaded(new, templates or prompts, where),
        )

    def _embedding(self) -> LoadedModel:
        """The tower with its projection as the head: ``encode_image``, not normalised."""
        model = self.tower
        model.head = self.projection
        model.num_classes = self.width
        pooled = POOLED.get(getattr(model, "global_pool", ""), "pooled token")
        projected = " projected" if any(True for _ in self.projection.parameters()) else ""
        embedding = (
            f"open_clip encode_image: the image tower's {pooled}{projected} ({self.width} values, not "
            "normalised)"
        )
        info = self._info(0) | {"embedding": embedding}
        return self._loaded([], info, embedding=embedding, class_texts=self.loaded)

    def _info(self, classes: int) -> dict[str, Any]:
        return {
            "model": self.name,
            "architecture": f"{PREFIX}{self.name.removeprefix(PREFIX)}",
            "checkpoint": None,
            "pretrained": None,
            "num_classes": classes,
            "input_size": list(self.data_config["input_size"]),
            "grid": list(self.layout.grid),
            "prefix_tokens": self.layout.num_prefix,
        }

    def _loaded(self, class_names: list[str], info: dict[str, Any], **kind: Any) -> LoadedModel:
        return LoadedModel(
            self.tower,
            self.name,
            self.layout,
            self.data_config,
            _transform(self.open_clip, self.clip.visual, self.data_config),
            class_names,
            [],
            info,
            **kind,
        )


def accepts(name: str) -> bool:
    return name.startswith(PREFIX)


def accepts_object(model: nn.Module) -> bool:
    """open_clip's CLIP models (``open_clip.CLIP``, ``CustomTextCLIP``), recognised without importing it."""
    return type(model).__module__.startswith("open_clip.") and hasattr(model, "encode_text")


def _architecture(open_clip: Any, name: str) -> str:
    architecture = name.removeprefix(PREFIX)
    if architecture not in open_clip.list_models():
        hint = did_you_mean(architecture, open_clip.list_models(), PREFIX)
        raise ParameterError(
            "model",
            f"not an open_clip architecture{hint}; open_clip.list_models() names them",
            name,
        )
    return architecture


def _weights(open_clip: Any, architecture: str, spec: ModelSpec) -> str | None:
    """What open_clip loads: a pretrained tag, a checkpoint file, or nothing (random weights)."""
    tag, checkpoint = spec.pretrained_tag, spec.checkpoint
    if tag is not None and checkpoint is not None:
        raise VitcamError("{pretrained_tag} and {checkpoint} both give weights: pass only one of them")
    if tag is not None and not spec.pretrained:
        raise VitcamError("{pretrained_tag} loads pretrained weights: drop it or {no_pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if checkpoint is not None:
        check_weights_file(checkpoint, "checkpoint")
        return str(checkpoint)
    listed = ", ".join(tags[:SHOWN_TAGS]) + (", ..." if len(tags) > SHOWN_TAGS else "")
    if tag is not None and tag not in tags:
        raise ParameterError(
            "pretrained_tag", f"not a tag of {architecture} (open_clip has: {listed or 'none'})", tag
        )
    if tag is None and spec.pretrained:
        listed = f" (one of {listed})" if tags else ""
        raise ParameterError(
            "pretrained_tag",
            f"is needed for {architecture}'s weights{listed}; or pass {{checkpoint}} FILE (an open_clip "
            "state dict) or {no_pretrained} (random weights)",
        )
    if tag is not None:
        _check_hub(open_clip, architecture, tag)
    return tag


def _check_hub(open_clip: Any, architecture: str, tag: str) -> None:
    """Before open_clip asks the hub for a tag's weights: with the hub out of reach, use cached weights at
    once (the hub's offline mode) or fail now with the way out, rather than after a minute of retries."""
    import huggingface_hub

    location = open_clip.get_pretrained_cfg(architecture, tag).get("hf_hub", "")
    if not location or huggingface_hub.constants.HF_HUB_OFFLINE or hub.reachable():
        return
    # 'org/name/file' names a file; 'org/name/' the repository, whose default files open_clip reads
    repository, _, filename = location.rpartition("/")
    named = (filename, filename.replace(".bin", ".safetensors")) if filename else ()
    files = (*named, *HUB_WEIGHT_FILES)
    if hub.cached(repository, files):
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        return
    raise ParameterError(
        "pretrained_tag",
        f"its weights ({repository}) are not cached and the hub cannot be reached; download them once with "
        "network access, or pass {checkpoint} FILE (an open_clip state dict) or {no_pretrained}",
        tag,
    )


def _reason(error: Exception) -> str:
    """An exception's type and first line, as words in a message."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return literal(f"{type(error).__name__}: {first}")


def _create(open_clip: Any, architecture: str, spec: ModelSpec) -> nn.Module:
    """``open_clip.create_model`` with seeded random weights, its failures as one clear line."""
    weights = _weights(open_clip, architecture, spec)
    size = {"force_image_size": spec.img_size} if spec.img_size is not None else {}
    # without weights open_clip warns "initialized randomly": as asked
    quiet = contextlib.nullcontext() if weights else open_clip_fit.no_warnings()
    try:
        with torch.random.fork_rng(devices=[]), quiet:
            torch.manual_seed(0)
            return open_clip.create_model(architecture, pretrained=weights, **size)
    except Exception as error:
        reason = _reason(error)
        if spec.checkpoint is not None:
            raise _checkpoint_error(open_clip, architecture, spec.checkpoint, reason) from error
        if weights is not None:
            raise ParameterError(
                "pretrained_tag", f"cannot load these weights ({reason}); offline and not cached?", weights
            ) from error
        raise ParameterError("model", f"cannot build it ({reason})", spec.name) from error


def _checkpoint_error(open_clip: Any, architecture: str, checkpoint: Path, reason: str) -> ParameterError:
    """A checkpoint open_clip refused: the tensors that differ from the architecture's and the
    architectures it fits, where it can be read; otherwise open_clip's own first line."""
    found = open_clip_fit.checkpoint_shapes(open_clip, checkpoint)
    expected = open_clip_fit.model_shapes(open_clip, architecture)
    differ = open_clip_fit.differences(found, expected) if found and expected else None
    if not differ:
        return ParameterError(
            "checkpoint", f"is not an open_clip state dict of {architecture} ({reason})", checkpoint
        )
    fits = [PREFIX + name for name in open_clip_fit.fitting(open_clip, found, architecture)]
    fix = (
        f"it fits {' or '.join(fits)}: pass {'that' if len(fits) == 1 else 'one of them'} as {{model}}"
        if fits
        else "pass the open_clip:ARCH it was trained as to {model} (open_clip.list_models() names them)"
    )
    problem = f"is not an open_clip state dict of {architecture}: {literal(differ.describe())}; {fix}"
    return ParameterError("checkpoint", problem, checkpoint)


def _class_texts(spec: ModelSpec) -> tuple[list[str], str]:
    """The class texts and where they came from; none (the image embedding) when none are named."""
    if spec.texts:
        return list(spec.texts), "texts"
    if spec.class_names is not None:
        texts = read_class_names(spec.class_names)
        if texts:
            return texts, str(spec.class_names)
        raise ParameterError("class_names", "holds no class texts (one per line)", spec.class_names)
    return [], "none"


def _named_tokenizer(open_clip: Any, spec: ModelSpec, architecture: str) -> Any:
    """open_clip's tokenizer for the architecture (SigLIP's is read from the hub), its failures one line."""
    try:
        return open_clip.get_tokenizer(architecture)
    except Exception as error:
        raise ParameterError(
            "model",
            f"cannot load its tokenizer for the class texts ({_reason(error)}); offline and not cached? "
            "Without {class_names} the model is its image embedding and needs none",
            spec.name,
        ) from error


def load(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the open_clip model and its weights: zero-shot for the class texts, or the image embedding."""
    open_clip = _open_clip()
    if spec.num_classes is not None:
        raise ParameterError(
            "num_classes", "does not apply to open_clip models: the class texts are the classes"
        )
    architecture = _architecture(open_clip, spec.name)
    texts, source = _class_texts(spec)
    if texts:  # checked before the weights are read; loaded() says what prompts without texts mean
        check_prompts(spec.prompts)
    clip = _create(open_clip, architecture, spec)
    tokenizer = partial(_named_tokenizer, open_clip, spec, architecture)
    loaded = ZeroShot(clip, tokenizer, device, spec.name).loaded(texts, spec.prompts, source)
    loaded.info |= {
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "pretrained": spec.pretrained_tag is not None or spec.checkpoint is not None,
        "pretrained_tag": spec.pretrained_tag,
    }
    return loaded


def _tokenizer(open_clip: Any, clip: nn.Module) -> Any:
    """CLIP's BPE tokenizer at the model's context length (open_clip's tokenizer for its own text towers;
    a model object does not say which tokenizer a Hugging Face text tower or another vocabulary needs)."""
    pass_by_name = "pass it by name (open_clip:ARCH), so that vitcam uses its tokenizer"
    if isinstance(getattr(clip, "text", None), open_clip.hf_model.HFTextEncoder):
        raise VitcamError(f"{type(clip).__name__} has a Hugging Face text tower: {pass_by_name}")
    tokenizer = open_clip.SimpleTokenizer(context_length=int(getattr(clip, "context_length", 77)))
    vocabulary = getattr(clip, "vocab_size", tokenizer.vocab_size)
    if vocabulary != tokenizer.vocab_size:
        raise VitcamError(
            f"{type(clip).__name__}'s text tower has a vocabulary of {vocabulary} tokens, not CLIP's "
            f"{tokenizer.vocab_size} (SigLIP's?): {pass_by_name}"
        )
    return tokenizer


def wrap(model: nn.Module, device: torch.device | str = "cpu", name: str | None = None) -> LoadedModel:
    """An open_clip model object, converted: its image embedding until it is given class texts
    (``LoadedModel.with_texts``)."""
    open_clip = _open_clip()
    label = name or f"{PREFIX}{type(model).__name__}"
    return ZeroShot(model, partial(_tokenizer, open_clip, model), device, label).loaded([], (), "none")
