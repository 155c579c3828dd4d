"""transformers' Swin (``SwinForImageClassification``): converted to timm's Swin exactly, explained
exactly on its stage grids, and loaded by every front end.

The proofs are equalities with transformers itself: the converted logits with the transformers model's
forward, and ViT-ReciproCAM's maps with the textbook loop that masks the transformers block's own
``layernorm_before`` output (``tests/test_transformers.py``), on shifted and unshifted blocks of two stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tests.hf_models import CLASS_NAMES, save_classifier, tiny_swin_classifier
from tests.test_cli import rows_of, run
from tests.test_evaluate import write_labelled
from tests.test_transformers import images_for, one_line, textbook_map
from vitcam_cli.api import Explainer
from vitcam_cli.engine.stages import StageLayout
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings
from vitcam_cli.models import load_model

SWIN = "SwinForImageClassification"
# the three published presets (last stage: block -1 shifts its windows, -2 does not) and a shifted block
# of the middle stage, each skip path
SETTINGS = [PRESETS["official"], PRESETS["otx"], PRESETS["openvino-xai"]] + [
    ReciproCAMSettings(target_block=-3, skip=skip) for skip in ("ln", "masked-input", "input")
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("hf") / SWIN, SWIN, seed=3)


def reference(folder: Path) -> torch.nn.Module:
    return transformers.SwinForImageClassification.from_pretrained(folder).eval()


def test_logits_equal_the_transformers_forward_and_the_stages_are_swins(folder):
    loaded = load_model(str(folder))
    pictures = images_for(loaded.input_size, count=3, seed=5)
    with torch.inference_mode():
        expected = reference(folder)(pixel_values=pictures).logits
        actual = loaded.model(pictures)
    assert (actual - expected).abs().max() <= 1e-4
    assert expected.std(0).mean() > 0.05  # the scores vary from image to image: equality says something
    assert loaded.class_names == CLASS_NAMES
    assert isinstance(loaded.layout, StageLayout)
    assert [stage.grid for stage in loaded.layout.stages] == [(16, 16), (8, 8), (4, 4)]
    assert loaded.info["library"] == "transformers" and loaded.info["grid"] == [4, 4]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.target_block}-{s.skip}-{s.score}")
def test_reciprocam_maps_equal_the_textbook_loop_on_the_transformers_model(folder, settings):
    loaded = load_model(str(folder))
    model = reference(folder)
    method = ReciproCAM(loaded.model, loaded.layout, settings, loaded.input_size)
    assert method.engine.name == "dense"
    pictures = images_for(loaded.input_size, count=2, seed=9)
    explanation = method(pictures, lambda logits: logits.argmax(1, keepdim=True))
    grid = loaded.layout.at_block(loaded.layout.block_index(settings.target_block)).grid
    assert explanation.maps.shape[-2:] == grid
    with torch.inference_mode():
        for i in range(2):
            cls = int(explanation.classes[i, 0])
            expected = textbook_map(model, pictures[i : i + 1], settings, cls, grid)
            assert torch.allclose(explanation.maps[i, 0], expected, rtol=1e-4, atol=1e-5), i
    assert explanation.maps.std() > 1e-4


def test_explain_evaluate_and_bench_on_a_transformers_swin_folder(folder, small_folder, tmp_path):
    out = tmp_path / "explain"
    code, _, stderr = run(
        "explain", str(small_folder), "--model", str(folder), "-o", str(out), "--workers", "0", "-q",
        "--save-maps", "--target-block", "-3",
    )  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)
    assert {row["class_name"] for row in rows} <= set(CLASS_NAMES)
    assert np.load(out / "maps" / f"{Path(rows[0]['path']).name}.npy").shape == (8, 8)
    labelled = write_labelled(tmp_path / "data")
    out = tmp_path / "evaluate"
    code, _, stderr = run(
        "evaluate", str(labelled), "--model", str(folder), "--methods", "reciprocam:otx,gradcam",
        "--labels", str(labelled / "labels.csv"), "--boxes", str(labelled / "boxes.csv"),
        "--steps", "3", "--workers", "0", "-o", str(out), "-q",
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert list(metrics) == ["reciprocam:otx", "gradcam"]
    for values in metrics.values():
        assert values["adcc"] is not None and values["pointing_game"] is not None
    code, stdout, stderr = run(
        "bench", "--model", str(folder), "-b", "2", "--repeat", "1", "--warmup", "0", "--device", "cpu",
        "--variant", "otx", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    figures = json.loads(stdout)["runs"][0]
    assert figures["engine"] == "dense" and figures["grid"] == [4, 4] and figures["ratio"] > 0


def test_the_api_takes_the_model_object_and_refuses_attention_methods(folder, small_folder):
    model, processor = tiny_swin_classifier(seed=3)
    from_object = Explainer(model, image_processor=processor, method="reciprocam:otx", device="cpu")
    from_folder = Explainer(str(folder), method="reciprocam:otx", device="cpu")
    paths = sorted(path for path in small_folder.rglob("*") if path.is_file())
    torch.testing.assert_close(from_object(paths).maps, from_folder(paths).maps)
    rollout = ("--method", "rollout", "-o", small_folder.parent / "rollout")
    code, _, stderr = run("explain", str(small_folder), "--model", str(folder), *rollout)
    assert code == 2 and "window attention" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_stage_grid_that_windows_do_not_tile_gets_one_line(small_folder, tmp_path):
    """40 px in 4x4 patches is a 10x10 grid: 3x3 windows do not tile it (both libraries pad, differently)."""
    model, processor = tiny_swin_classifier(image_size=40, window_size=3)
    model.save_pretrained(tmp_path / "swin")
    processor.save_pretrained(tmp_path / "swin")
    line = one_line(tmp_path / "swin", small_folder, tmp_path)
    assert "10x10 token grid" in line and "3x3 windows" in line
