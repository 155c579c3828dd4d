"""Swin: the stage layout, ViT-ReciproCAM against a textbook loop on shifted windows, Grad-CAM, refusals,
and every command on a tiny random-weight Swin through the real entry points."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import save_for_hf

from tests.conftest import CLASS_NAMES
from tests.models import scramble
from tests.test_cli import explain, rows_of, run
from tests.test_distributed import assert_same_rows, torchrun
from tests.test_evaluate import evaluate, write_labelled
from vitcam_cli import Explainer
from vitcam_cli.engine.geometry import trace
from vitcam_cli.engine.stages import StageLayout, model_layout
from vitcam_cli.errors import ParameterError, UnsupportedModelError
from vitcam_cli.methods.gradcam import GradCAM
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings
from vitcam_cli.methods.relevance import AttentionRelevance
from vitcam_cli.methods.rollout import AttentionRollout

# 4x4 patches of a 24x32 image: stages of 6x8, 3x4 and 2x2 tokens with 2x2 windows, so the second block
# of the first two stages shifts its windows by (1, 1) (the second stage's 3 rows padded to 4); the
# last stage is a single window
IMAGE = (3, 24, 32)
TINY_SWIN = {"img_size": IMAGE[1:], "patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": (2, 2, 2),
             "num_heads": (1, 2, 2), "num_classes": 5}  # fmt: skip


def tiny_swin(seed: int = 0) -> torch.nn.Module:
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY_SWIN)
    return scramble(model, seed, std=0.3)


def window_weight(rows: int, cols: int, r: int, c: int, kernel: str) -> torch.Tensor:
    """The (rows, cols) mask centred on (r, c): the 3x3 Gaussian truncated at the border, or one token."""
    weight = torch.zeros(rows, cols)
    for dr, dc in itertools.product((-1, 0, 1), repeat=2):
        if 0 <= r + dr < rows and 0 <= c + dc < cols:
            if kernel == "gaussian":
                weight[r + dr, c + dc] = 0.25 / 2 ** (abs(dr) + abs(dc))
            elif dr == dc == 0:
                weight[r + dr, c + dc] = 1.0
    return weight


def score(logits: torch.Tensor, target: int, kind: str) -> float:
    return float(torch.softmax(logits, -1)[target] if kind == "softmax" else logits[target])


def naive_swin(model, image: torch.Tensor, target: int, settings: ReciproCAMSettings) -> torch.Tensor:
    """Textbook ViT-ReciproCAM for a timm Swin, one grid position at a time: run the network up to the
    target block, mask its norm1 output, finish that block by hand (residual + shifted window attention,
    residual + MLP) and run the rest of its stage, the later stages, the final norm and the head."""
    positions = [(s, j) for s, layer in enumerate(model.layers) for j in range(len(layer.blocks))]
    stage, index = positions[settings.target_block % len(positions)]
    x = model.patch_embed(image)
    for s, layer in enumerate(model.layers[: stage + 1]):
        x = layer.downsample(x)
        for block in layer.blocks[: index if s == stage else None]:
            x = block(x)
    block = model.layers[stage].blocks[index]
    features = block.norm1(x)  # (1, H, W, C)
    rows, cols = x.shape[1:3]
    saliency = torch.zeros(rows, cols)
    for r, c in itertools.product(range(rows), range(cols)):
        weight = window_weight(rows, cols, r, c, settings.kernel)[None, :, :, None]
        masked = features * weight
        residual = {"ln": masked, "masked-input": x * weight, "input": x}[settings.skip]
        y = residual + block._attn(masked)
        y = y + block.mlp(block.norm2(y))
        for later in model.layers[stage].blocks[index + 1 :]:
            y = later(y)
        for layer in model.layers[stage + 1 :]:
            y = layer.blocks(layer.downsample(y))
        saliency[r, c] = score(model.forward_head(model.norm(y))[0], target, settings.score)
    return saliency


def test_stage_layout_counts_blocks_across_stages():
    model = tiny_swin()
    layout = model_layout(model)
    assert isinstance(layout, StageLayout) and layout.num_prefix == 0 and layout.depth == 6
    assert layout.grid == (2, 2) and [stage.grid for stage in layout.stages] == [(6, 8), (3, 4), (2, 2)]
    assert layout.at_block(layout.block_index(-3)).grid == (3, 4)
    assert layout.at_block(layout.block_index(-5)).grid == (6, 8)
    assert layout.blocks(model)[1] is model.layers[0].blocks[1]
    assert model.layers[0].blocks[1].shift_size == (1, 1) and model.layers[1].blocks[1].shift_size == (1, 1)
    with pytest.raises(ParameterError, match="6 blocks"):
        layout.block_index(-7)


@torch.inference_mode()
def test_trace_sees_the_stage_grid_and_the_replay_equals_the_forward_pass():
    model = tiny_swin()
    layout = model_layout(model)
    images = torch.randn(2, *IMAGE, generator=torch.Generator().manual_seed(0))
    for start in range(layout.depth):
        traced = trace(model, images, start, layout)
        torch.testing.assert_close(traced.logits, model(images))
        seen = layout.at_block(start)
        assert traced.block_input.shape == (2, seen.num_patches, seen.dim)
        norm1 = layout.blocks(model)[start].norm1(traced.block_input)
        replayed = layout.run_blocks(model, traced.block_input, start, traced.block_extras, norm1)
        torch.testing.assert_close(replayed, traced.logits, rtol=1e-5, atol=1e-5)


SETTINGS = [
    ReciproCAMSettings(kernel=kernel, target_block=block, skip=skip, score=score)
    for block in (-1, -3)
    for skip in ("ln", "masked-input", "input")
    for kernel, score in (("gaussian", "softmax"), ("single", "logit"))
] + [  # the finest grid: a few settings, its loop is the longest
    ReciproCAMSettings(target_block=-5, skip="ln", score="softmax"),
    ReciproCAMSettings(kernel="single", target_block=-5, skip="masked-input", score="logit"),
]


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: f"{s.kernel}-{s.target_block}-{s.skip}-{s.score}"
)
@torch.inference_mode()
def test_maps_equal_the_textbook_loop(settings):
    model = tiny_swin()
    layout = model_layout(model)
    images = torch.randn(2, *IMAGE, generator=torch.Generator().manual_seed(1))
    explainer = ReciproCAM(model, layout, settings, IMAGE, mask_batch=7)
    assert explainer.engine.name == "dense"
    result = explainer(images, lambda logits: logits.topk(2, dim=-1).indices)
    grid = layout.at_block(layout.block_index(settings.target_block)).grid
    assert result.maps.shape == (2, 2, *grid)
    for b, t in itertools.product(range(2), range(2)):
        expected = naive_swin(model, images[b : b + 1], int(result.classes[b, t]), settings)
        torch.testing.assert_close(result.maps[b, t], expected, rtol=1e-5, atol=1e-6)
    assert result.maps.std() > 1e-4  # the maps carry signal


@torch.inference_mode()
def test_prefix_options_are_no_ops_and_fusing_stays_within_a_stage():
    model = tiny_swin()
    layout = model_layout(model)
    images = torch.randn(1, *IMAGE, generator=torch.Generator().manual_seed(2))

    def maps(**overrides: object) -> torch.Tensor:
        settings = PRESETS["otx"].with_overrides(**overrides)
        return ReciproCAM(model, layout, settings, IMAGE)(images, lambda x: x.argmax(-1, keepdim=True)).maps

    torch.testing.assert_close(maps(prefix="reset"), maps())
    torch.testing.assert_close(maps(fuse=2), (maps() + maps(target_block=-2)) / 2)
    with pytest.raises(ParameterError, match="earlier stage"):
        ReciproCAM(model, layout, PRESETS["otx"].with_overrides(fuse=3), IMAGE)


def test_fast_engine_is_refused_and_auto_takes_dense():
    model = tiny_swin()
    layout = model_layout(model)
    assert ReciproCAM(model, layout, PRESETS["otx"], IMAGE, engine="auto").engine.name == "dense"
    with pytest.raises(ParameterError, match="fast is not exact") as error:
        ReciproCAM(model, layout, PRESETS["otx"], IMAGE, engine="fast")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", [AttentionRollout, AttentionRelevance])
def test_attention_methods_are_refused_in_one_line(method):
    model = tiny_swin()
    with pytest.raises(UnsupportedModelError, match="window attention has none") as error:
        method(model, model_layout(model))
    assert "\n" not in str(error.value)


def test_gradcam_equals_a_hand_computation():
    model = tiny_swin()
    layout = model_layout(model)
    images = torch.randn(2, *IMAGE, generator=torch.Generator().manual_seed(3))
    result = GradCAM(model, layout)(images, lambda logits: logits.topk(2, dim=-1).indices)
    assert result.maps.shape == (2, 2, 2, 2)
    x = model.patch_embed(images)
    for layer in model.layers[:-1]:
        x = layer(x)
    last = model.layers[-1]
    x = last.blocks[0](last.downsample(x))
    block = last.blocks[1]
    features = block.norm1(x).detach().requires_grad_()
    y = x + block._attn(features)
    logits = model.forward_head(model.norm(y + block.mlp(block.norm2(y))))
    torch.testing.assert_close(logits.detach(), result.outputs)
    for t in range(2):
        chosen = logits.gather(1, result.classes[:, t : t + 1]).sum()
        (grad,) = torch.autograd.grad(chosen, features, retain_graph=True)
        expected = (features.detach() * grad.mean((1, 2), keepdim=True)).sum(-1).clamp_min(0)
        torch.testing.assert_close(result.maps[:, t], expected)
    assert result.maps.std() > 0


def test_other_hierarchical_models_keep_their_one_line_refusal():
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=64, window_size=4,
                              embed_dim=16, depths=(1, 1), num_heads=(1, 1), num_classes=3)  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="not supported") as error:
        model_layout(model)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def swin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Swin in timm's export format, with class names."""
    folder = tmp_path_factory.mktemp("tiny_swin")
    save_for_hf(tiny_swin(), folder, model_config={"label_names": CLASS_NAMES}, safe_serialization=True)
    return folder


def test_explain_saves_maps_on_the_target_stage(swin_folder, small_folder, tmp_path):
    for block, grid in (("-1", (2, 2)), ("-5", (6, 8))):
        out = tmp_path / f"out{block}"
        code, _, stderr = explain(
            swin_folder, str(small_folder), "-o", str(out), "--save-maps", "--target-block", block
        )
        assert code == 0, stderr
        rows = rows_of(out)
        assert rows and all(row["status"] == "ok" for row in rows)
        assert json.loads((out / "summary.json").read_text())["settings"]["engine"] == "dense"
        assert np.load(out / "maps" / f"{Path(rows[0]['path']).name}.npy").shape == grid
    code, _, stderr = explain(
        swin_folder, str(small_folder), "-o", str(tmp_path / "fast"), "--engine", "fast"
    )
    assert code == 2 and "--engine fast is not exact" in stderr and len(stderr.strip().splitlines()) == 1


def test_evaluate_scores_reciprocam_and_gradcam_and_refuses_rollout(swin_folder, tmp_path):
    data = write_labelled(tmp_path / "data")
    out = tmp_path / "out"
    boxes = ("--labels", str(data / "labels.csv"), "--boxes", str(data / "boxes.csv"), "--target", "label")
    code, _, stderr = evaluate(
        swin_folder, data, out, *boxes, "--methods", "reciprocam,reciprocam:otx,gradcam"
    )
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert list(metrics) == ["reciprocam:fused", "reciprocam:otx", "gradcam"]
    for values in metrics.values():
        for key in ("adcc", "insertion", "deletion", "pointing_game", "energy_in_box"):
            assert values[key] is not None, key
        assert values["n"] == 10
    code, _, stderr = evaluate(swin_folder, data, tmp_path / "rollout", *boxes, "--methods", "rollout")
    assert code == 2 and "window attention has none" in stderr and len(stderr.strip().splitlines()) == 1


def test_bench_on_an_export_folder_and_a_registry_name(swin_folder):
    code, stdout, stderr = run("bench", "--model", f"local-dir:{swin_folder}", "-b", "2", "--warmup", "0",
                               "--repeat", "1", "--variant", "otx", "--target-block", "-3",
                               "--json")  # fmt: skip
    assert code == 0, stderr
    figures = json.loads(stdout)["runs"][0]
    assert figures["engine"] == "dense" and figures["ratio"] > 0 and figures["grid"] == [3, 4]
    code, stdout, stderr = run("bench", "--model", "swin_tiny_patch4_window7_224", "--no-pretrained",
                               "--img-size", "64", "-b", "1", "--warmup", "0", "--repeat", "1", "--variant",
                               "openvino-xai", "--json")  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["runs"][0]["grid"] == [2, 2]  # 64 px: stages of 16, 8, 4 and 2 tokens a side


def test_the_api_on_a_folder_and_on_a_model_object(swin_folder, small_folder):
    files = sorted(path for path in small_folder.rglob("*") if path.is_file())[:2]
    explainer = Explainer(f"local-dir:{swin_folder}", method="reciprocam:otx", device="cpu")
    from_folder = explainer(files)
    assert from_folder.maps.shape == (2, 1, 2, 2) and from_folder.class_names[0][0] in CLASS_NAMES
    assert explainer.scores(from_folder)["adcc"].shape == (2, 1)
    model = timm.create_model(f"local-dir:{swin_folder}", pretrained=True)
    from_object = Explainer(model, method="reciprocam:otx", device="cpu")(files)
    torch.testing.assert_close(from_object.maps, from_folder.maps)
    gradcam = Explainer(model, method="gradcam", device="cpu")(files)
    assert gradcam.maps.shape == (2, 1, 2, 2)


def test_shards_merge_and_torchrun_as_one_run_on_a_swin(swin_folder, small_folder, tmp_path):
    common = ["--model", f"local-dir:{swin_folder}", "--workers", "0", "-q", "--device", "cpu"]
    single, sharded, ranked = tmp_path / "single", tmp_path / "sharded", tmp_path / "ranked"
    assert run("explain", str(small_folder), *common, "-o", str(single))[0] == 0
    for index in range(2):
        shard = ("--shard", f"{index}/2")
        code, _, stderr = run("explain", str(small_folder), *common, "-o", str(sharded), *shard)
        assert code == 0, stderr
    code, _, stderr = run("merge", str(sharded), "-q")
    assert code == 0, stderr
    assert_same_rows(rows_of(sharded), rows_of(single))
    result = torchrun("explain", small_folder, *common, "-o", ranked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(rows_of(ranked), rows_of(single))


def test_checkpoint_on_a_registry_swin_and_its_class_count_checked(small_folder, tmp_path):
    """A Swin's classifier is ``head.fc``: a checkpoint with another class count gets the one-line fix."""
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, img_size=64)
    save_file(scramble(model, seed=2, std=0.05).state_dict(), tmp_path / "swin.safetensors")
    common = ["--model", "swin_tiny_patch4_window7_224", "--checkpoint", str(tmp_path / "swin.safetensors"),
              "--img-size", "64", "--workers", "0", "-q"]  # fmt: skip
    out = tmp_path / "out"
    code, _, stderr = run("explain", str(small_folder), *common, "--num-classes", "5", "-o", str(out))
    assert code == 0, stderr
    assert rows_of(out) and all(row["status"] == "ok" for row in rows_of(out))
    code, _, stderr = run("explain", str(small_folder), *common, "--num-classes", "7", "-o", str(out) + "7")
    assert code == 2 and "has a 5-class head but the model has 7: add --num-classes 5" in stderr
