"""transformers embedding models (ViTModel, DINOv2, SigLIP's and CLIP's vision towers): converted to timm
exactly, their embedding as their class defines it, explained exactly against target embeddings.

The proofs are equalities with transformers itself: the converted model's output with the transformers
model's own embedding output, and ViT-ReciproCAM's maps read by cosine with the textbook loop that masks
the transformers model's own target-layer LayerNorm output (``tests/test_transformers.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

from tests.hf_models import (
    CLASS_NAMES,
    EMBEDDERS,
    save_classifier,
    save_embedder,
    tiny_classifier,
    tiny_embedder,
)
from tests.test_transformers import (
    _copy,
    assert_input_is_the_processors,
    images_for,
    masked_outputs,
    one_line,
    reference,
)
from vitcam_cli.defaults import PUBLISHED_PRESETS
from vitcam_cli.methods.factory import create_method
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM
from vitcam_cli.models import LoadedModel, load_model, wrap_model
from vitcam_cli.targets import Reading

NAMES = list(EMBEDDERS)
# the output each class defines as its embedding, read from its forward's result
OUTPUT = {
    "ViTModel": "pooler_output",
    "Dinov2Model": "pooler_output",
    "Dinov2WithRegistersModel": "pooler_output",
    "SiglipVisionModel": "pooler_output",
    "CLIPVisionModelWithProjection": "image_embeds",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-embeddings")
    return {name: save_embedder(root / name, name, seed=10 + i) for i, name in enumerate(NAMES)}


def embedding_of(model: nn.Module, images: Tensor) -> Tensor:
    with torch.inference_mode():
        return getattr(model(pixel_values=images), OUTPUT[type(model).__name__])


def assert_embedding_model(loaded: LoadedModel, model: nn.Module, field: str) -> None:
    """The converted model's output is the transformers model's embedding, and says so."""
    images = images_for(loaded.input_size, count=3, seed=5)
    expected = embedding_of(model, images)
    with torch.inference_mode():
        actual = loaded.model(images)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-4
    assert expected.std(0).mean() > 0.01  # the embeddings vary from image to image: equality says something
    assert loaded.embedding is not None
    assert field in loaded.embedding and type(model).__name__ in loaded.embedding
    assert loaded.info["embedding"] == loaded.embedding
    assert loaded.class_names == [] and loaded.info["num_classes"] == 0
    assert int(loaded.model.num_classes) == 0


@pytest.mark.parametrize("name", NAMES)
def test_embedding_equals_the_transformers_output_from_a_folder_and_an_object(folders, name):
    assert_embedding_model(load_model(str(folders[name])), reference(folders[name]), OUTPUT[name])
    model, processor = tiny_embedder(name, seed=3)
    assert_embedding_model(wrap_model(model, image_processor=processor), model.eval(), OUTPUT[name])


def test_a_vit_model_without_its_pooler_gives_the_final_layernorm_cls_token(tmp_path):
    """DINO's ViTs ship without the pooler's weights: the model is read as built without it."""
    folder = save_embedder(tmp_path / "no-pooler", "ViTModel", seed=4, pooler=False)
    model = transformers.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    model_object, processor = tiny_embedder("ViTModel", seed=4, pooler=False)
    for loaded in (load_model(str(folder)), wrap_model(model_object, image_processor=processor)):
        images = images_for(loaded.input_size, count=3, seed=6)
        with torch.inference_mode():
            expected = model(pixel_values=images).last_hidden_state[:, 0]
            assert (loaded.model(images) - expected).abs().max() <= 1e-4
        assert "last_hidden_state[:, 0]" in loaded.embedding and "no pooling layer" in loaded.embedding


@pytest.mark.parametrize("name", ["SiglipVisionModel", "CLIPVisionModelWithProjection"])
def test_model_input_equals_siglips_and_clips_image_processors(folders, name):
    assert_input_is_the_processors(folders[name])


# ---- ViT-ReciproCAM against a target embedding, by its definition on the transformers model ----


def textbook_cosine_map(model: nn.Module, image: Tensor, preset: str, target: Tensor, grid: tuple[int, int]):
    """The cosine of each masked copy's embedding (transformers' own output) with the target embedding."""
    outputs = masked_outputs(model, image, PRESETS[preset], grid)
    embeddings = getattr(outputs, OUTPUT[type(model).__name__])
    return F.cosine_similarity(embeddings, target[None], dim=-1).view(grid)


def assert_same_map(actual: Tensor, expected: Tensor, label: object) -> None:
    """Equal within 1e-4, and within 1% of the map's own contrast (cosines of copies of one image differ by
    little, so equality must be measured against how much they differ)."""
    contrast = float(expected.max() - expected.min())
    error = float((actual - expected).abs().max())
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-5), (label, error)
    assert contrast > 1e-4 and error <= 0.01 * contrast, (label, error, contrast)


@pytest.mark.parametrize("preset", PUBLISHED_PRESETS)
@pytest.mark.parametrize("name", NAMES)
def test_cosine_maps_equal_the_textbook_loop_on_the_transformers_model(folders, name, preset):
    """Both engines where the fast one applies (token pooling), the dense one for SigLIP's attention pool."""
    loaded = load_model(str(folders[name]))
    model = reference(folders[name])
    target = embedding_of(model, images_for(loaded.input_size, count=1, seed=21))
    similar = loaded.with_targets(target, ["reference"], {"kind": "embeddings"})
    images = images_for(loaded.input_size, count=2, seed=9)
    engines = ("fast", "dense")  # the fast engine takes SigLIP's attention pool too
    assert create_method(f"reciprocam:{preset}", similar).engine.name == engines[0]
    for engine in engines:
        method = create_method(f"reciprocam:{preset}", similar, engine=engine)
        explanation = method(images, lambda values: torch.zeros(values.shape[0], 1, dtype=torch.long))
        with torch.inference_mode():
            for i in range(2):
                image = images[i : i + 1]
                expected = textbook_cosine_map(model, image, preset, target[0], loaded.layout.grid)
                assert_same_map(explanation.maps[i, 0], expected, (engine, i))


def test_the_method_takes_a_cosine_reading_directly(folders):
    """``ReciproCAM(..., reading=Reading("cosine", table))`` is what ``with_targets`` hands the factory."""
    name = "Dinov2WithRegistersModel"
    loaded = load_model(str(folders[name]))
    model = reference(folders[name])
    table = F.normalize(embedding_of(model, images_for(loaded.input_size, count=2, seed=22)), dim=-1)
    images = images_for(loaded.input_size, count=2, seed=9)
    method = ReciproCAM(
        loaded.model, loaded.layout, PRESETS["otx"], loaded.input_size, reading=Reading("cosine", table)
    )
    explanation = method(images, lambda values: torch.ones(values.shape[0], 1, dtype=torch.long))
    with torch.inference_mode():
        for i in range(2):
            expected = textbook_cosine_map(model, images[i : i + 1], "otx", table[1], loaded.layout.grid)
            assert_same_map(explanation.maps[i, 0], expected, i)


# ---- multi-label classifiers, and what is refused ----


def test_a_multi_label_classifier_is_read_through_a_sigmoid(tmp_path):
    name = "ViTForImageClassification"
    model, processor = tiny_classifier(name)
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(tmp_path / "multi")
    processor.save_pretrained(tmp_path / "multi")
    for loaded in (load_model(str(tmp_path / "multi")), wrap_model(model, image_processor=processor)):
        assert loaded.reading.kind == "sigmoid" and loaded.info["reading"] == "sigmoid"
        assert loaded.class_names == CLASS_NAMES and loaded.embedding is None
    single = load_model(str(save_classifier(tmp_path / "single", name)))
    assert single.reading.kind == "softmax" and "reading" not in single.info


def test_unsupported_base_models_get_one_line(folders, small_folder, tmp_path):
    folder = _copy(folders["CLIPVisionModelWithProjection"], tmp_path, "no-projection")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["CLIPVisionModel"]}))
    message = one_line(folder, small_folder, tmp_path)
    assert "CLIPVisionModel is not supported" in message and "CLIPVisionModelWithProjection" in message
    headless = save_embedder(tmp_path / "headless", "SiglipVisionModel", vision_use_head=False)
    message = one_line(headless, small_folder, tmp_path)
    assert "vision_use_head" in message and "pooler_output" in message
