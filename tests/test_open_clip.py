"""Zero-shot CLIP and SigLIP (``open_clip:ARCH`` and open_clip objects): logits, image embeddings and maps
equal to open_clip's own model, preprocessing equal to open_clip's transform, and every path through the
real entry points.

The models are tiny open_clip configs registered with ``open_clip.add_model_config``, random weights; the
SigLIP-shaped ones run on a tiny timm ViT registered here, with CLIP's tokenizer (SigLIP's is downloaded).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer
from torch import Tensor, nn

from tests.conftest import noise
from tests.models import scramble
from tests.test_cli import rows_of, run
from vitcam_cli import Explainer
from vitcam_cli.errors import UnsupportedModelError, VitcamError
from vitcam_cli.methods.reciprocam import PRESETS as SETTINGS
from vitcam_cli.methods.reciprocam import ReciproCAM
from vitcam_cli.models import ModelSpec, wrap_model
from vitcam_cli.targets import Reading

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VISION = {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8}
# SigLIP's towers: a timm ViT trunk (no class token, attention-pool head), a logit bias, a text tower
# without causal mask. No 'siglip' in the names: open_clip would fetch its tokenizer
SIGMOID = "vitcam-tiny-sigmoid-clip"
TRUNK = {
    "image_size": [32, 48],
    "timm_model_name": "vitcam_tiny_siglip",
    "timm_pool": "map",
    "timm_proj": "none",
}
SIGMOID_TEXT = {**TEXT, "no_causal_mask": True, "proj_bias": True}
CONFIGS = {
    # OpenAI-style: QuickGELU, class-token pooling
    "vitcam-tiny-clip": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": VISION, "text_cfg": TEXT},
    # GELU, LayerScale, a logit bias, non-square grid, average pooling
    "vitcam-tiny-clip-bias": {
        "embed_dim": 16,
        "init_logit_bias": -2.0,
        "vision_cfg": {**VISION, "image_size": [32, 48], "ls_init_value": 0.5, "pool_type": "avg"},
        "text_cfg": TEXT,
    },
    # another width: no tensor of its image tower has vitcam-tiny-clip's shape
    "vitcam-tiny-clip-wide": {"embed_dim": 16, "vision_cfg": {**VISION, "width": 48}, "text_cfg": TEXT},
    # a tower vitcam cannot convert exactly: attentional pooling
    "vitcam-tiny-clip-attnpool": {
        "embed_dim": 16,
        "vision_cfg": {**VISION, "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2},
        "text_cfg": TEXT,
    },
    # SigLIP: the trunk's attention-pool latent is the embedding
    SIGMOID: {
        "embed_dim": 32,
        "init_logit_bias": -2.0,
        "custom_text": True,
        "vision_cfg": TRUNK,
        "text_cfg": SIGMOID_TEXT,
    },
    # a timm trunk with open_clip's own projection after it
    "vitcam-tiny-sigmoid-clip-proj": {
        "embed_dim": 16,
        "init_logit_bias": -2.0,
        "custom_text": True,
        "vision_cfg": {**TRUNK, "timm_proj": "linear", "timm_proj_bias": True},
        "text_cfg": SIGMOID_TEXT,
    },
    # a timm trunk that is not a ViT
    "vitcam-tiny-clip-convnext": {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "timm_model_name": "test_convnext",
            "timm_pool": "avg",
            "timm_proj": "linear",
        },
        "text_cfg": TEXT,
    },
}
# timm reads the pretrained config of a model registered in this module from here
default_cfgs = {"vitcam_tiny_siglip": {"input_size": (3, 32, 48), "num_classes": 0}}


@register_model
def vitcam_tiny_siglip(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """A tiny timm ViT shaped as SigLIP's: no class token, an attention-pool latent as its pooled token."""
    args = {"img_size": (32, 48), "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    args |= {"class_token": False, "global_pool": "map"}
    return _create_vision_transformer("vitcam_tiny_siglip", pretrained=pretrained, **{**args, **kwargs})


TEXTS = ["cat", "dog", "red car", "tree"]
PROMPTS = ["a photo of a {}.", "a drawing of the {}."]
# the published presets: target block, skip path, score
PRESETS = {
    "official": (-2, "input", "softmax"),
    "otx": (-1, "ln", "softmax"),
    "openvino-xai": (-1, "masked-input", "logit"),
}


@pytest.fixture(scope="session", autouse=True)
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def tiny_clip(name: str = "vitcam-tiny-clip", seed: int = 0) -> torch.nn.Module:
    model = open_clip.create_model(name, pretrained=None)
    scramble(model, seed=seed, std=0.2)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(20.0))  # a trained model's scale: softmax scores far from uniform
    return model.eval()


def textbook_texts(model: torch.nn.Module, name: str, texts: list[str], prompts: list[str]) -> torch.Tensor:
    """CLIP's zero-shot recipe written out: each text in every template, embeddings normalised, averaged,
    normalised again."""
    tokenizer = open_clip.get_tokenizer(name)
    rows = []
    with torch.no_grad():
        for text in texts:
            embedded = model.encode_text(tokenizer([p.format(text) for p in prompts]), normalize=True)
            rows.append(F.normalize(embedded.mean(0), dim=-1))
    return torch.stack(rows)


def open_clip_logits(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ texts.T
        return logits + (model.logit_bias if model.logit_bias is not None else 0.0)


def images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn((count, 3, *size), generator=torch.Generator().manual_seed(seed))


EMBEDDERS = ["vitcam-tiny-clip", "vitcam-tiny-clip-bias", SIGMOID, "vitcam-tiny-sigmoid-clip-proj"]


@pytest.mark.parametrize("name", EMBEDDERS)
def test_zero_shot_logits_equal_open_clip(name):
    """logit_scale times the cosine, plus logit_bias; a model with a logit bias learnt it from the sigmoid
    loss (SigLIP), so its logits are read each on its own, through a sigmoid."""
    model = tiny_clip(name)
    explainer = Explainer(model, texts=TEXTS, prompts=PROMPTS, device="cpu")
    x = images(3, tuple(model.visual.image_size))
    expected = open_clip_logits(model, x, textbook_texts(model, name, TEXTS, PROMPTS))
    with torch.no_grad():
        got = explainer.loaded.model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    spread = got.max(dim=1).values - got.min(dim=1).values
    assert explainer.class_names == TEXTS and spread.min() > 0.5  # scores that tell the texts apart
    reading = "softmax" if model.logit_bias is None else "sigmoid"
    assert explainer.loaded.reading.kind == explainer.loaded.info["reading"] == reading


@pytest.mark.parametrize("name", EMBEDDERS)
def test_without_texts_the_model_is_encode_image(name):
    """A model object without texts is its image embedding: ``encode_image``, not normalised, from a copy
    of the tower (the object is left as it was)."""
    model = tiny_clip(name)
    x = images(3, tuple(model.visual.image_size))
    with torch.no_grad():
        before = model.encode_image(x)
    loaded = wrap_model(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), before, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_image(x), before, rtol=0, atol=0)
    assert loaded.class_names == [] and loaded.info["num_classes"] == 0
    assert loaded.embedding == loaded.info["embedding"]
    assert loaded.embedding.startswith("open_clip encode_image: the image tower's ")
    assert f"({before.shape[1]} values, not normalised)" in loaded.embedding
    zero_shot = loaded.with_texts(TEXTS)  # the same tower, then given texts
    assert zero_shot.class_names == TEXTS and zero_shot.embedding is None


@pytest.mark.parametrize("name", ["vitcam-tiny-clip", SIGMOID])
def test_by_name_without_class_names_is_encode_image(name, tmp_path):
    """``open_clip:ARCH`` without class texts: the image embedding of the weights given."""
    model = tiny_clip(name, seed=4)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    loaded = ModelSpec(f"open_clip:{name}", checkpoint).load()
    x = images(2, tuple(model.visual.image_size), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model.encode_image(x), rtol=1e-4, atol=1e-5)
    assert loaded.embedding is not None and loaded.info["embedding"] == loaded.embedding
    assert loaded.class_names == [] and loaded.info["checkpoint"] == str(checkpoint)


def _window(grid: tuple[int, int], k: int) -> torch.Tensor:
    """The 3x3 Gaussian window centred on grid position k: 1/4 centre, 1/8 edge, 1/16 corner, cut at the
    border, never renormalised."""
    rows, cols = grid
    weights = torch.zeros(rows, cols)
    r, c = divmod(k, cols)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if 0 <= r + dr < rows and 0 <= c + dc < cols:
                weights[r + dr, c + dc] = 0.25 / 2 ** (abs(dr) + abs(dc))
    return weights.flatten()


@contextmanager
def replaced(block: nn.Module, norm: nn.Module, residual: Tensor, masked: Tensor) -> Iterator[None]:
    """A block called with ``residual`` as its input and ``masked`` as its first LayerNorm's output."""
    handles = [
        block.register_forward_pre_hook(lambda _m, args: (residual, *args[1:])),
        norm.register_forward_hook(lambda _m, _i, _o: masked),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def tower_parts(model: nn.Module) -> tuple[list[nn.Module], str, int, tuple[int, int]]:
    """open_clip's own image tower as the method reads it: its blocks, the name of their first LayerNorm,
    the prefix tokens (CLIP's class token; none in SigLIP) and the patch grid."""
    visual = model.visual
    if isinstance(visual, open_clip.timm_model.TimmModel):
        trunk = visual.trunk
        return list(trunk.blocks), "norm1", trunk.num_prefix_tokens, tuple(trunk.patch_embed.grid_size)
    return list(visual.transformer.resblocks), "ln_1", 1, tuple(visual.grid_size)


def textbook_maps(model, image, read: Callable[[Tensor], Tensor], block: int, skip: str) -> Tensor:
    """ViT-ReciproCAM by the definition, on open_clip's own image tower, one masked copy per position:
    ``read`` scores the copies (open_clip's model run on them with the substitution in place), (h*w, T)."""
    blocks, norm, prefix, grid = tower_parts(model)
    resblock = blocks[block]
    seen = []
    handle = resblock.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model.visual(image)
    handle.remove()
    tokens = seen[0]  # (1, prefix + h*w, D): the block's input
    features = getattr(resblock, norm)(tokens)
    count = grid[0] * grid[1]
    weights = torch.stack([_window(grid, k) for k in range(count)])  # (h*w copies, h*w tokens)
    scale = torch.cat([torch.ones(count, prefix), weights], dim=1).unsqueeze(-1)  # prefix tokens kept
    masked = features * scale
    residual = {"ln": masked, "masked-input": tokens * scale, "input": tokens.expand(count, -1, -1)}[skip]
    with torch.no_grad(), replaced(resblock, getattr(resblock, norm), residual, masked):
        values = read(image.expand(count, -1, -1, -1))
    return values.T.reshape(-1, *grid)


SCORED = {
    "softmax": lambda logits: logits.softmax(-1),
    "logit": lambda logits: logits,
    "sigmoid": torch.sigmoid,
}


def class_reader(model, texts: Tensor, classes: list[int], score: str) -> Callable[[Tensor], Tensor]:
    """Copies scored by open_clip's zero-shot logits for ``classes``, through ``score``."""
    return lambda copies: SCORED[score](open_clip_logits(model, copies, texts))[:, classes]


@pytest.mark.parametrize("engine", ["dense", "fast"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", ["vitcam-tiny-clip", "vitcam-tiny-clip-bias"])
def test_maps_equal_textbook_loop_on_open_clip(name, preset, engine):
    model = tiny_clip(name, seed=1)
    explainer = Explainer(model, f"reciprocam:{preset}", texts=TEXTS, engine=engine, device="cpu")
    x = images(2, tuple(model.visual.image_size), seed=2)
    result = explainer(x, classes=["dog", 3])
    texts = textbook_texts(model, name, TEXTS, ["a photo of a {}."])
    block, skip, score = PRESETS[preset]
    if name == "vitcam-tiny-clip-bias":  # a logit bias: each text read on its own, copies scored by sigmoid
        score = "sigmoid"
    for i in range(2):
        expected = textbook_maps(model, x[i : i + 1], class_reader(model, texts, [1, 3], score), block, skip)
        torch.testing.assert_close(result.maps[i], expected, rtol=1e-4, atol=1e-5)
    assert result.maps.std() > 0


@pytest.mark.parametrize("engine", ["dense", "auto"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_sigmoid_maps_equal_textbook_loop_on_a_siglip_tower(preset, engine):
    """SigLIP's zero-shot score: each copy's sigmoid of its logit for the text (logit_scale times the cosine,
    plus logit_bias), whatever the other texts."""
    model = tiny_clip(SIGMOID, seed=1)
    method = f"reciprocam:{preset}:score=sigmoid"
    explainer = Explainer(model, method, texts=TEXTS, engine=engine, device="cpu")
    x = images(2, (32, 48), seed=2)
    result = explainer(x, classes=["dog", 3])
    texts = textbook_texts(model, SIGMOID, TEXTS, ["a photo of a {}."])
    block, skip, _ = PRESETS[preset]
    for i in range(2):
        expected = textbook_maps(
            model, x[i : i + 1], class_reader(model, texts, [1, 3], "sigmoid"), block, skip
        )
        torch.testing.assert_close(result.maps[i], expected, rtol=1e-4, atol=1e-5)
    assert result.maps.std() > 0
    expected = open_clip_logits(model, x, texts)[:, [1, 3]].sigmoid()
    torch.testing.assert_close(result.probabilities, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", ["dense", "auto"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_embedding_maps_equal_textbook_loop_on_a_siglip_tower(preset, engine):
    """Without texts the tower is ``encode_image``; a map value is the cosine of a copy's embedding with a
    target embedding (here another image's)."""
    model = tiny_clip(SIGMOID, seed=1)
    loaded = wrap_model(model)
    x = images(3, (32, 48), seed=2)
    with torch.no_grad():
        target = F.normalize(model.encode_image(x[2:]), dim=-1)
    reading = Reading("cosine", target)

    def cosine(copies: Tensor) -> Tensor:
        return F.cosine_similarity(model.encode_image(copies), target, dim=-1).unsqueeze(-1)

    method = ReciproCAM(
        loaded.model, loaded.layout, SETTINGS[preset], loaded.input_size, engine=engine, reading=reading
    )
    result = method(x[:2], lambda values: torch.zeros(values.shape[0], 1, dtype=torch.long))
    with torch.no_grad():
        torch.testing.assert_close(result.outputs, model.encode_image(x[:2]), rtol=1e-4, atol=1e-5)
    block, skip, _ = PRESETS[preset]
    for i in range(2):
        expected = textbook_maps(model, x[i : i + 1], cosine, block, skip)
        torch.testing.assert_close(result.maps[i], expected, rtol=1e-4, atol=1e-5)
    assert result.maps.std() > 0


def test_preprocessing_is_open_clips(tmp_path):
    """vitcam's transform is open_clip's eval transform; the streamed input (torch's resize on uint8
    pixels) is within two grey levels of it on a photo-like (smooth) image."""
    model, _, preprocess = open_clip.create_model_and_transforms("vitcam-tiny-clip")
    explainer = Explainer(model, texts=TEXTS, device="cpu")
    for index, (height, width) in enumerate([(45, 61), (90, 40)]):
        path = tmp_path / f"{index}.png"
        Image.fromarray(noise(6, 6, seed=index)).resize((width, height), Image.BILINEAR).save(path)
        picture = Image.open(path)
        expected = preprocess(picture)
        torch.testing.assert_close(explainer.loaded.transform(picture), expected, rtol=0, atol=1e-6)
        streamed, _ = explainer._inputs([path])
        std = torch.tensor(explainer.loaded.data_config["std"]).view(3, 1, 1)
        levels = ((streamed[0] - expected) * std * 255).abs()
        assert levels.max() <= 2.01 and levels.mean() < 0.5


def explainer_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    texts = textbook_texts(model, "vitcam-tiny-clip", TEXTS, ["a photo of a {}."])
    return open_clip_logits(model, x, texts)


def test_every_method_runs_on_the_image_tower():
    model = tiny_clip()
    x = images(2, (32, 32), seed=3)
    for method in ("gradcam", "rollout", "relevance", "reciprocam:discriminative"):
        result = Explainer(model, method, texts=TEXTS, device="cpu")(x, top_k=2)
        assert result.maps.shape == (2, 2, 4, 4) and torch.isfinite(result.maps).all(), method
        torch.testing.assert_close(result.raw.outputs, explainer_logits(model, x))
        # Grad-CAM's ReLU may leave nothing of a random CLIP tower; the others always vary
        assert method == "gradcam" or result.maps.flatten(2).std(-1).min() > 0, method


def test_api_by_name_with_a_checkpoint(tmp_path):
    """``open_clip:ARCH`` with an open_clip state dict on disk: the same logits as the model saved."""
    model = tiny_clip(seed=4)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    explainer = Explainer("open_clip:vitcam-tiny-clip", checkpoint=checkpoint, texts=TEXTS, device="cpu")
    x = images(2, (32, 32), seed=5)
    expected = open_clip_logits(
        model, x, textbook_texts(model, "vitcam-tiny-clip", TEXTS, ["a photo of a {}."])
    )
    with torch.no_grad():
        torch.testing.assert_close(explainer.loaded.model(x), expected, rtol=1e-4, atol=1e-4)
    path = tmp_path / "a.png"
    Image.fromarray(noise(40, 50, seed=6)).save(path)
    result = explainer([path], classes=["red car"])
    assert result.class_names == [["red car"]] and result.maps.shape == (1, 1, 4, 4)
    assert explainer.scores(result)["adcc"].shape == (1, 1)


@pytest.mark.parametrize("name", ["vitcam-tiny-clip", SIGMOID])
def test_img_size_resamples_the_position_embedding(name):
    explainer = Explainer(f"open_clip:{name}", pretrained=False, img_size=(48, 48), texts=TEXTS)
    assert explainer.loaded.input_size == (3, 48, 48) and explainer.loaded.layout.grid == (6, 6)
    assert explainer(images(1, (48, 48)), top_k=2).maps.shape == (1, 2, 6, 6)


def test_api_refusals():
    with pytest.raises(VitcamError, match=r"similarity to references or to embeddings"):
        Explainer(tiny_clip(), device="cpu")  # without texts: an image embedding, which needs targets
    from tests.models import tiny_vit

    with pytest.raises(VitcamError, match="only a zero-shot model"):
        Explainer(tiny_vit("cls"), texts=TEXTS, device="cpu")
    with pytest.raises(UnsupportedModelError, match="pools with attention"):
        Explainer(open_clip.create_model("vitcam-tiny-clip-attnpool"), texts=TEXTS, device="cpu")
    with pytest.raises(VitcamError, match=r"^prompts needs class texts to fill in \(class_names\)"):
        Explainer(tiny_clip(), prompts=PROMPTS, device="cpu")


def test_an_object_with_another_vocabulary_takes_texts_by_name():
    """A model object does not say which tokenizer its text tower needs: CLIP's fits only CLIP's vocabulary
    (SigLIP's text towers have their own). Its image embedding needs no tokenizer."""
    model = tiny_clip(SIGMOID)
    model.vocab_size = 32000
    loaded = wrap_model(model)
    assert loaded.embedding is not None
    with pytest.raises(
        VitcamError, match=r"vocabulary of 32000 tokens, not CLIP's 49408 .*: pass it by name"
    ):
        loaded.with_texts(TEXTS)


def test_the_tokenizer_is_read_only_for_class_texts(monkeypatch):
    """SigLIP's tokenizer comes from the hub: the image embedding loads without it, class texts that need
    it fail in one line."""

    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    spec = ModelSpec(f"open_clip:{SIGMOID}", pretrained=False)
    assert spec.load().embedding is not None
    with pytest.raises(VitcamError) as error:
        ModelSpec(f"open_clip:{SIGMOID}", pretrained=False, texts=("cat",)).load()
    assert str(error.value) == (
        f"model='open_clip:{SIGMOID}': cannot load its tokenizer for the class texts (OSError: We couldn't "
        "connect to 'https://huggingface.co'); offline and not cached? Without class_names the model is its "
        "image embedding and needs none"
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for i in range(4):
        Image.fromarray(noise(36 + 4 * i, 50, seed=10 + i)).save(root / f"{i}.png")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{i}.png,{TEXTS[i]}\n" for i in range(4)))
    (root / "boxes.csv").write_text(
        "file,x1,y1,x2,y2,label\n" + "".join(f"{i}.png,4,4,30,30,{TEXTS[i]}\n" for i in range(4))
    )
    return root


MODEL = ("--model", "open_clip:vitcam-tiny-clip", "--no-pretrained", "--workers", "0", "-q")


def test_explain_with_texts_as_classes(folder, tmp_path, monkeypatch):
    texts = tmp_path / "texts.txt"
    out = tmp_path / "out"
    code, _, stderr = run(
        "explain", folder, *MODEL, "--class-names", texts, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
        "--top-k", "2", "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 8 and {row["class_name"] for row in rows} <= set(TEXTS)
    assert all(row["status"] == "ok" and Path(out, row["overlay"]).is_file() for row in rows)
    calls = []
    encode_text = open_clip.model.CLIP.encode_text
    monkeypatch.setattr(
        open_clip.model.CLIP, "encode_text", lambda *a, **k: calls.append(1) or encode_text(*a, **k)
    )
    code, _, stderr = run(
        "explain", folder, *MODEL, "--class-names", texts, "--class", "red car", "-b", "1", "-o", out / "c"
    )
    assert code == 0, stderr
    assert len(calls) == 1  # the texts' embeddings: once per run, not per batch
    assert {row["class_name"] for row in rows_of(out / "c")} == {"red car"}
    code, _, stderr = run(
        "explain", folder, *MODEL, "--class-names", texts, "--labels", folder / "labels.csv", "-o", out / "l"
    )
    assert code == 0, stderr
    assert {Path(row["path"]).name: row["class_name"] for row in rows_of(out / "l")} == {
        f"{i}.png": TEXTS[i] for i in range(4)
    }
    manifest = json.loads((out / "summary.json").read_text())
    assert "open_clip:vitcam-tiny-clip" in json.dumps(manifest)


def test_evaluate_with_texts_as_classes(folder, tmp_path):
    out = tmp_path / "eval"
    code, _, stderr = run(
        "evaluate", folder, *MODEL, "--class-names", tmp_path / "texts.txt",
        "--labels", folder / "labels.csv", "--boxes", folder / "boxes.csv", "--target", "label",
        "--steps", "3", "--methods", "reciprocam,gradcam", "-o", out,
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for values in metrics["methods"].values():
        for key in ("adcc", "insertion", "deletion", "pointing_game", "energy_in_box"):
            assert values[key] is not None, key
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert {row["class_name"] for row in rows if row["path"].endswith("2.png")} == {"red car"}


def test_bench_on_open_clip(tmp_path):
    (tmp_path / "texts.txt").write_text("cat\ndog\n")
    code, stdout, stderr = run(
        "bench", "--model", "open_clip:vitcam-tiny-clip", "--no-pretrained", "--class-names",
        tmp_path / "texts.txt", "--batch-size", "2", "--repeat", "1", "--warmup", "0", "--json",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, stderr
    assert [run["variant"] for run in json.loads(stdout)["runs"]] == list(PRESETS)


BAD_INPUT = [
    (("--prompt", "a photo of a cat"), "--prompt a photo of a cat: must hold one {} where the class text"),
    (("--prompt", "a {} of {}"), "--prompt a {} of {}: must hold one {}"),
    (("--prompt", "a photo of {{}}"), "--prompt a photo of {{}}: must hold one {}"),  # literal braces
    (("--prompt", "a photo of {0}"), "--prompt a photo of {0}: must hold one {}"),
    (("--prompt", "a {:.0}"), "--prompt a {:.0}: must hold one {}"),  # a format spec cuts every text
    (("--prompt", "a {!r}"), "--prompt a {!r}: must hold one {}"),
    (("--checkpoint", "/dev/zero"), "--checkpoint /dev/zero: not a regular file"),
    (("--model", "open_clip:ViT-B-33"), "--model open_clip:ViT-B-33: not an open_clip architecture (did you"),
    (
        ("--class-names", None, "--prompt", "a {}"),
        "--prompt needs class texts to fill in (--class-names); without",
    ),
    (("--pretrained",), "--pretrained-tag is needed for vitcam-tiny-clip's weights; or pass --checkpoint"),
    (("--pretrained", "--pretrained-tag", "nope"), "--pretrained-tag nope: not a tag of vitcam-tiny-clip"),
    (("--pretrained-tag", "openai"), "--pretrained-tag loads pretrained weights: drop it or --no-pretrained"),
    (("--num-classes", "3"), "--num-classes does not apply to open_clip models"),
    (
        ("--model", "open_clip:vitcam-tiny-clip-attnpool"),
        "its image tower pools with attention: vitcam explains",
    ),
    (
        ("--model", "open_clip:vitcam-tiny-clip-convnext"),
        "its image tower's timm trunk is a ConvNeXt: vitcam explains",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line(folder, tmp_path, args, message):
    options = {"--model": "open_clip:vitcam-tiny-clip", "--class-names": str(tmp_path / "texts.txt")}
    extra = list(args)
    for flag in list(options):
        if flag in extra:
            at = extra.index(flag)
            options[flag] = extra[at + 1]
            del extra[at : at + 2]
    given = [part for flag, value in options.items() if value is not None for part in (flag, value)]
    pretrained = [] if "--pretrained" in extra else ["--no-pretrained"]
    code, _, stderr = run(
        "explain", folder, *given, *pretrained, *extra, "--workers", "0", "-q", "-o", tmp_path / "o"
    )
    assert code == 2
    assert stderr.startswith(f"error: {message}") and stderr.count("\n") == 1, stderr


def _load_as(folder: Path, tmp_path: Path, trained_as: str, loaded_as: str) -> tuple[Path, int, str]:
    """Explain with a checkpoint of ``trained_as`` passed as ``loaded_as``: (checkpoint, code, stderr)."""
    checkpoint = tmp_path / f"{trained_as}.pt"
    torch.save(tiny_clip(trained_as).state_dict(), checkpoint)
    code, _, stderr = run(
        "explain", folder, "--model", f"open_clip:{loaded_as}", "--checkpoint", checkpoint,
        "--class-names", tmp_path / "texts.txt", "--workers", "0", "-q", "-o", tmp_path / "o",
    )  # fmt: skip
    return checkpoint, code, stderr


def test_a_checkpoint_of_another_architecture_names_the_keys_and_the_architecture_it_fits(folder, tmp_path):
    checkpoint, code, stderr = _load_as(folder, tmp_path, "vitcam-tiny-clip-bias", "vitcam-tiny-clip")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr == (
        f"error: --checkpoint {checkpoint}: is not an open_clip state dict of vitcam-tiny-clip: "
        "7 unexpected keys (logit_bias, visual.transformer.resblocks.0.ls_1.gamma, "
        "visual.transformer.resblocks.0.ls_2.gamma, ...); it fits open_clip:vitcam-tiny-clip-bias: pass that "
        "as --model\n"
    )


def test_a_checkpoint_of_another_width_names_the_shapes(folder, tmp_path):
    checkpoint, code, stderr = _load_as(folder, tmp_path, "vitcam-tiny-clip-wide", "vitcam-tiny-clip")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(
        f"error: --checkpoint {checkpoint}: is not an open_clip state dict of vitcam-tiny-clip: "
        "44 tensors of other shapes, the checkpoint's vs the model's (visual.class_embedding: 48 vs 32, "
        "visual.positional_embedding: 17x48 vs 17x32, visual.proj: 48x16 vs 32x16, ...); "
    ), stderr
    assert stderr.endswith("; it fits open_clip:vitcam-tiny-clip-wide: pass that as --model\n"), stderr


def test_a_checkpoint_missing_keys_says_so(folder, tmp_path):
    checkpoint, code, stderr = _load_as(folder, tmp_path, "vitcam-tiny-clip", "vitcam-tiny-clip-bias")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(
        f"error: --checkpoint {checkpoint}: is not an open_clip state dict of vitcam-tiny-clip-bias: "
        "6 missing keys (visual.transformer.resblocks.0.ls_1.gamma, "
    ), stderr
    assert "Error(s) in loading" not in stderr and "it fits open_clip:vitcam-tiny-clip:" in stderr, stderr


def test_without_open_clip_installed_is_one_line(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    code, _, stderr = run(
        "explain", folder, *MODEL, "--class-names", tmp_path / "texts.txt", "-o", tmp_path / "o"
    )
    assert code == 2
    assert stderr == "error: open_clip models need the open_clip_torch package: pip install 'vitcam[clip]'\n"


def test_uncached_weights_with_the_hub_out_of_reach_fail_at_once(folder, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr("vitcam_cli.models.hub.reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, stderr = run(
        "explain", folder, "--model", "open_clip:ViT-B-32", "--pretrained-tag", "openai",
        "--class-names", tmp_path / "texts.txt", "--workers", "0", "-q", "-o", tmp_path / "o",
    )  # fmt: skip
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(
        "error: --pretrained-tag openai: its weights (timm/vit_base_patch32_clip_224.openai) are not cached"
    )
