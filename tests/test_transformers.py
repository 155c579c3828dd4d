"""transformers classifiers: converted to timm exactly, explained exactly, loaded by every front end.

The proofs are equalities with transformers itself: the converted model's logits with the
transformers model's own forward, ViT-ReciproCAM's maps with a textbook loop that masks the
transformers model's own target-layer LayerNorm output, and vitcam's model input with
``AutoImageProcessor``'s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.utils import ModelOutput

from tests.conftest import noise
from tests.hf_models import CLASS_NAMES, CLASSES, FIVE, save_classifier, tiny_classifier
from tests.models import tiny_vit
from tests.test_cli import rows_of, run
from tests.test_distributed import assert_same_rows, torchrun
from tests.test_evaluate import write_labelled
from vitcam_cli.api import Explainer
from vitcam_cli.defaults import PUBLISHED_PRESETS
from vitcam_cli.errors import ParameterError
from vitcam_cli.methods.factory import create_method
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAMSettings
from vitcam_cli.models import load_model
from vitcam_cli.models.hf_weights import KEY_ALIASES, canonical_state
from vitcam_cli.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: save_classifier(root / name, name, seed=i) for i, name in enumerate(FIVE)}


def reference(folder: Path) -> nn.Module:
    """The transformers model as transformers itself loads it."""
    config = transformers.AutoConfig.from_pretrained(folder)
    return getattr(transformers, config.architectures[0]).from_pretrained(folder).eval()


def images_for(size: tuple[int, ...], count: int = 2, seed: int = 0) -> Tensor:
    return torch.randn((count, *size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FIVE)
def test_logits_equal_the_transformers_forward(folders, name):
    loaded = load_model(str(folders[name]))
    images = images_for(loaded.input_size, count=3, seed=5)
    with torch.inference_mode():
        expected = reference(folders[name])(pixel_values=images).logits
        actual = loaded.model(images)
    assert actual.shape == (3, len(CLASS_NAMES))
    assert (actual - expected).abs().max() <= 1e-4
    assert loaded.class_names == CLASS_NAMES


# ---- the textbook dense loop, on the transformers model itself ----


def gaussian_weight(k: tuple[int, int], j: tuple[int, int]) -> float:
    """The 3x3 kernel centred on grid cell k, at cell j: 1/4 centre, 1/8 edge, 1/16 corner, else 0."""
    dy, dx = abs(k[0] - j[0]), abs(k[1] - j[1])
    if dy > 1 or dx > 1:
        return 0.0
    return {0: 1 / 4, 1: 1 / 8, 2: 1 / 16}[dy + dx]


def hf_layers(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in the order they run (a Swin's numbered across its stages)."""
    base = model.base_model
    if hasattr(base, "layers"):
        return list(base.layers)
    if hasattr(base.encoder, "layer"):
        return list(base.encoder.layer)
    if not hasattr(base.encoder.layers[0], "blocks"):  # CLIP's and SigLIP's vision towers
        return list(base.encoder.layers)
    return [block for stage in base.encoder.layers for block in stage.blocks]


def first_norm(layer: nn.Module) -> nn.Module:
    for name in ("layernorm_before", "layer_norm1", "norm1"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise AssertionError(f"{type(layer).__name__} has no first LayerNorm")


def layer_input(model: nn.Module, layer: nn.Module, image: Tensor) -> Tensor:
    captured: list[Tensor] = []

    def keep(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])

    handle = layer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(pixel_values=image)
    finally:
        handle.remove()
    return captured[0]


def masked_outputs(
    model: nn.Module, image: Tensor, settings: ReciproCAMSettings, grid: tuple[int, int]
) -> ModelOutput:
    """ViT-ReciproCAM's masked copies by their definition, run by the transformers model itself: for each
    grid cell k, the target layer's LayerNorm output with patch token j scaled by the kernel at k (prefix
    tokens kept), the skip path as the preset says, the rest of the model run on it. Returns the model's
    own output on the h*w copies, in cell order. ``grid`` is the target layer's token grid (a Swin
    stage's)."""
    layer = hf_layers(model)[settings.target_block]
    x = layer_input(model, layer, image)[0]
    features = first_norm(layer)(x)
    prefix = x.shape[0] - grid[0] * grid[1]
    cells = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    masked_features, residuals = [], []
    for k in cells:
        weights = torch.tensor([1.0] * prefix + [gaussian_weight(k, j) for j in cells])[:, None]
        masked_features.append(features * weights)
        residuals.append({"ln": features * weights, "masked-input": x * weights, "input": x}[settings.skip])
    masked, residual = torch.stack(masked_features), torch.stack(residuals)

    def replace_input(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (residual, *args[1:]), kwargs
        return args, kwargs | {"hidden_states": residual}

    with ExitStack() as stack:
        stack.callback(layer.register_forward_pre_hook(replace_input, with_kwargs=True).remove)
        stack.callback(first_norm(layer).register_forward_hook(lambda _m, _i, _o: masked).remove)
        return model(pixel_values=image.expand(len(cells), -1, -1, -1))


def textbook_map(
    model: nn.Module, image: Tensor, preset: str | ReciproCAMSettings, cls: int, grid: tuple[int, int]
) -> Tensor:
    """ViT-ReciproCAM by its definition: the class's score from masked copy k is the saliency at k."""
    settings = PRESETS[preset] if isinstance(preset, str) else preset
    logits = masked_outputs(model, image, settings, grid).logits
    scores = logits.softmax(-1) if settings.score == "softmax" else logits
    return scores[:, cls].view(grid)


@pytest.mark.parametrize("preset", PUBLISHED_PRESETS)
@pytest.mark.parametrize("name", FIVE)
def test_reciprocam_maps_equal_the_textbook_loop_on_the_transformers_model(folders, name, preset):
    """Both engines where the fast one applies (ViT, DeiT), the dense one everywhere."""
    loaded = load_model(str(folders[name]))
    model = reference(folders[name])
    images = images_for(loaded.input_size, count=2, seed=9)
    engines = ("fast", "dense") if name.startswith(("ViT", "DeiT")) else ("dense",)
    for engine in engines:
        method = create_method(f"reciprocam:{preset}", loaded, engine=engine)
        explanation = method(images, lambda logits: logits.argmax(1, keepdim=True))
        with torch.inference_mode():
            for i in range(2):
                cls = int(explanation.classes[i, 0])
                expected = textbook_map(model, images[i : i + 1], preset, cls, loaded.layout.grid)
                close = torch.allclose(explanation.maps[i, 0], expected, rtol=1e-4, atol=1e-5)
                assert close, (engine, i, cls)


def test_vit_and_deit_take_the_fast_engine_and_beit_and_dinov2_the_dense_one(folders, images, tmp_path):
    """timm's fast path is exact for standard Blocks with token or average pooling: not BEiT's relative
    position bias, nor DINOv2's CLS-and-mean head (``auto`` falls back to dense, ``fast`` is refused)."""
    for name in FIVE:
        method = create_method("reciprocam:otx", load_model(str(folders[name])))
        expected = "fast" if name.startswith(("ViT", "DeiT")) else "dense"
        assert method.engine.name == expected, name
    code, _, stderr = run(
        "explain", str(images), "--model", str(folders["Dinov2ForImageClassification"]),
        "--engine", "fast", "-o", str(tmp_path / "out"), "-q",
    )  # fmt: skip
    assert code == 2 and "--engine fast" in stderr and "token+mean" in stderr


# ---- preprocessing: vitcam's model input is the image processor's ----


@pytest.mark.parametrize("name", FIVE)
def test_model_input_equals_the_image_processor(folders, name):
    assert_input_is_the_processors(folders[name])


def assert_input_is_the_processors(folder: Path) -> None:
    """vitcam's model input for images of several shapes is what the folder's image processor makes."""
    loaded = load_model(str(folder))
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    preprocessing = Preprocessing(loaded.transform)
    std = torch.tensor(loaded.data_config["std"]).view(-1, 1, 1)
    for size in ((45, 61), (80, 50), (32, 32)):
        picture = Image.fromarray(noise(*size, seed=size[0])).filter(ImageFilter.GaussianBlur(2))
        pixels = np.asarray(picture)
        ours = preprocessing.finish(preprocessing(pixels, (size[1], size[0]))[None])[0]
        theirs = processor(images=picture, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape, size
        # resize filters differ by a grey level on a few pixels at most: compare in 0..255 units
        levels = ((ours - theirs) * std * 255).abs()
        assert levels.max() <= 2.5 and levels.mean() <= 0.5, (size, float(levels.max()), float(levels.mean()))


# ---- every command, on a transformers folder, through the real entry point ----


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        Image.fromarray(noise(40 + 5 * i, 50, seed=70 + i)).save(root / f"{i}.png")
    return root


def test_explain_evaluate_and_bench_on_a_transformers_folder(folders, images, tmp_path):
    for name, method in (
        ("DeiTForImageClassificationWithTeacher", "reciprocam"),
        ("Dinov2WithRegistersForImageClassification", "gradcam"),
    ):
        out = tmp_path / f"explain-{name}"
        code, _, stderr = run(
            "explain", str(images), "--model", str(folders[name]), "-o", str(out), "--workers", "0", "-q",
            "--method", method,
        )  # fmt: skip
        assert code == 0, stderr
        rows = rows_of(out)
        assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
        assert {row["class_name"] for row in rows} <= set(CLASS_NAMES)
    labelled = write_labelled(tmp_path / "data")
    for name, methods in (("BeitForImageClassification", "reciprocam,gradcam"),
                          ("ViTForImageClassification", "rollout,relevance")):  # fmt: skip
        out = tmp_path / f"evaluate-{name}"
        code, _, stderr = run(
            "evaluate", str(labelled), "--model", str(folders[name]), "--methods", methods,
            "--labels", str(labelled / "labels.csv"), "--boxes", str(labelled / "boxes.csv"),
            "--steps", "3", "--workers", "0", "-o", str(out), "-q",
        )  # fmt: skip
        assert code == 0, stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert [key.split(":")[0] for key in metrics["methods"]] == methods.split(",")
    code, stdout, stderr = run(
        "bench", "--model", str(folders["ViTForImageClassification"]), "-b", "2", "--repeat", "1",
        "--warmup", "0", "--device", "cpu", "--json", "--no-pretrained",  # seeded random weights
    )  # fmt: skip
    assert code == 0, stderr
    assert all(run_["engine"] == "fast" and run_["ratio"] > 0 for run_ in json.loads(stdout)["runs"])


def test_shards_merge_and_torchrun_on_a_transformers_folder(folders, images, tmp_path):
    model = str(folders["ViTForImageClassification"])
    common = ["--model", model, "--workers", "0", "-q", "--device", "cpu"]
    single, sharded, ranked = tmp_path / "single", tmp_path / "sharded", tmp_path / "ranked"
    assert run("explain", str(images), *common, "-o", str(single))[0] == 0
    for index in range(2):
        code, _, stderr = run("explain", str(images), *common, "-o", str(sharded), "--shard", f"{index}/2")
        assert code == 0, stderr
    code, _, stderr = run("merge", str(sharded), "-q")
    assert code == 0, stderr
    assert_same_rows(rows_of(sharded), rows_of(single))
    result = torchrun("explain", images, *common, "-o", ranked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(rows_of(ranked), rows_of(single))


def test_python_api_takes_the_model_object_with_or_without_its_processor(folders, images):
    model, processor = tiny_classifier("ViTForImageClassification", seed=0)
    from_object = Explainer(model, image_processor=processor)
    from_folder = Explainer(str(folders["ViTForImageClassification"]))
    loaded = transformers.ViTForImageClassification.from_pretrained(folders["ViTForImageClassification"])
    from_loaded = Explainer(loaded)  # the processor is read from the folder it was loaded from
    paths = sorted(images.iterdir())
    first, second, third = (explainer(paths) for explainer in (from_object, from_folder, from_loaded))
    assert torch.allclose(first.heatmaps(), second.heatmaps(), atol=1e-5)
    assert torch.allclose(first.heatmaps(), third.heatmaps(), atol=1e-5)
    assert from_object.class_names == CLASS_NAMES
    with pytest.raises(ParameterError, match=r"image_processor.*not loaded from a folder"):
        Explainer(tiny_classifier("ViTForImageClassification")[0])
    with pytest.raises(ParameterError, match=r"image_processor.*does not apply to a VisionTransformer"):
        Explainer(tiny_vit("cls"), image_processor=processor)


def test_older_transformers_key_names_read_the_same(folders):
    """Checkpoints written by transformers 4.x (``encoder.layer``, ``attention.attention.query``) map to
    the same tensors as today's names."""
    model = reference(folders["ViTForImageClassification"])
    today = canonical_state(model)
    older = {
        key.replace("layers.", "encoder.layer.")
        .replace("attention.q_proj.", "attention.attention.query.")
        .replace("attention.o_proj.", "attention.output.dense.")
        .replace("mlp.fc1.", "intermediate.dense.")
        .replace("mlp.fc2.", "output.dense."): value
        for key, value in today.items()
    }
    assert len(KEY_ALIASES) >= 5
    renamed = canonical_state(FakeModel(older))
    assert renamed.keys() == today.keys()


class FakeModel(nn.Module):
    base_model_prefix = "vit"

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__()
        self.tensors = {f"vit.{key}": value for key, value in state.items()}

    def state_dict(self, *args: object, **kwargs: object) -> dict[str, Tensor]:
        return self.tensors


# ---- the Hub id form ----


def _cache(root: Path, repository: str, folder: Path) -> None:
    """``folder``'s files laid out as huggingface_hub's cache holds a downloaded repository."""
    base = root / f"models--{repository.replace('/', '--')}"
    snapshot = base / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)


def test_hub_ids_load_from_the_cache_offline_and_fail_fast_when_not_cached(folders, images, tmp_path):
    cache = tmp_path / "cache"
    _cache(cache, "tiny-org/tiny-vit", folders["ViTForImageClassification"])
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "vitcam_cli", "explain", str(images), "--workers", "0", "-q"]
    result = subprocess.run(
        [*command, "--model", "hf:tiny-org/tiny-vit", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(rows_of(tmp_path / "out")) == 4
    result = subprocess.run(
        [*command, "--model", "hf:tiny-org/not-cached", "-o", str(tmp_path / "out2")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--model hf:tiny-org/not-cached" in result.stderr
    assert "not cached" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


# ---- bad input: one line each ----


def one_line(folder: Path, images: Path, tmp_path: Path) -> str:
    code, _, stderr = run("explain", str(images), "--model", str(folder), "-o", str(tmp_path / "o"), "-q")
    assert code == 2, stderr
    assert stderr.strip().count("\n") == 0, stderr
    return stderr


def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    target.mkdir()
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_unsupported_class_gets_one_line(folders, images, tmp_path):
    folder = _copy(folders["ViTForImageClassification"], tmp_path, "swin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["ViTForMaskedImageModeling"]}))
    message = one_line(folder, images, tmp_path)
    assert "ViTForMaskedImageModeling is not supported" in message and "DeiTForImageClassification" in message


def test_missing_weights_get_one_line(folders, images, tmp_path):
    folder = _copy(folders["BeitForImageClassification"], tmp_path, "no-weights")
    weights = load_file(folder / "model.safetensors")
    kept = {key: value for key, value in weights.items() if not re.search(r"\.layers?\.1\.", key)}
    assert len(kept) < len(weights)
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    assert "its weights lack beit." in one_line(folder, images, tmp_path)
    (folder / "model.safetensors").unlink()
    assert "cannot load its weights" in one_line(folder, images, tmp_path)


def test_processor_that_does_not_fit_the_model_gets_one_line(folders, images, tmp_path):
    folder = _copy(folders["ViTForImageClassification"], tmp_path, "mismatch")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["size"] = {"height": 48, "width": 48}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    assert "do not belong together" in one_line(folder, images, tmp_path)
    (folder / "preprocessor_config.json").unlink()
    assert "image processor" in one_line(folder, images, tmp_path)


def test_damaged_config_gets_one_line(folders, images, tmp_path):
    folder = _copy(folders["DeiTForImageClassification"], tmp_path, "damaged")
    (folder / "config.json").write_text('{"model_type": "deit", ')
    assert "config.json is damaged" in one_line(folder, images, tmp_path)


def test_without_transformers_a_folder_names_the_extra(folders, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    message = one_line(folders["ViTForImageClassification"], images, tmp_path)
    assert "pip install 'vitcam[transformers]'" in message


def test_timm_export_folders_stay_with_timm(tiny_model):
    from vitcam_cli.models import adapter_for

    assert adapter_for(str(tiny_model)).__name__ == "vitcam_cli.models.timm"
    assert adapter_for(f"local-dir:{tiny_model}").__name__ == "vitcam_cli.models.timm"
    assert adapter_for("fashion-vit").__name__ == "vitcam_cli.models.timm"
    assert adapter_for("hf:google/vit-base-patch16-224").__name__ == "vitcam_cli.models.transformers"
    assert set(CLASSES) == set(FIVE)
