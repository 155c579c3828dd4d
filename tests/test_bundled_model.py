"""The bundled, trained FashionScenes ViT: the README's offline quickstart and evaluate on the sample set."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_SCENES
from tests.test_cli import VITCAM, rows_of, run
from vitcam_cli.models import BUNDLED_MODELS

REPO = Path(__file__).parents[1]


def sample_labels() -> dict[str, str]:
    rows = csv.DictReader((SAMPLE_SCENES / "labels.csv").open())
    return {str((SAMPLE_SCENES / r["file"]).resolve()): r["label"] for r in rows}


@pytest.mark.parametrize(
    ("name", "architecture"),
    [("fashion-vit", "vit_tiny_patch16_224"), ("fashion-swin", "swin_tiny_patch4_window7_224")],
)
def test_the_bundled_exports_are_small_and_self_describing(name, architecture):
    folder = BUNDLED_MODELS[name]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == architecture
    assert len(config["label_names"]) == config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [3, 112, 112]
    assert (folder / "model.safetensors").stat().st_size <= 15 * 2**20
    assert (folder / "README.md").is_file()  # the model card


def test_quickstart_runs_offline_and_the_model_is_really_trained(tmp_path):
    """The README's quickstart command, as a subprocess with the hub switched off."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9"}
    command = [*VITCAM, "explain", "sample_images/fashion_scenes", "--model", "fashion-vit", "-o", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = rows_of(out)
    labels = sample_labels()
    assert len(rows) == len(labels) == 30 and all(r["status"] == "ok" for r in rows)
    correct = sum(labels[str((REPO / r["path"]).resolve())] == r["class_name"] for r in rows)
    assert correct >= 15, f"{correct}/30 predictions match the labels (chance is 3/30)"
    assert all(0.0 <= r["adcc"] <= 1.0 for r in rows)
    assert all((out / r["overlay"]).is_file() for r in rows)
    # the overlays the README shows are the ones this command writes (a change of default redraws them)
    for shown in sorted((REPO / "docs" / "quickstart").glob("*.png")):
        written = np.asarray(Image.open(out / "overlays" / "images" / f"{shown.name}.png").convert("RGB"))
        expected = np.asarray(Image.open(shown).convert("RGB"))
        assert written.shape == expected.shape
        assert np.abs(written.astype(int) - expected).max() <= 2, f"redraw {shown} with the quickstart"


def test_the_readme_is_short_and_shows_the_tested_quickstart():
    """The README stays a page read in minutes (details live in docs/), and its one set-up command
    explains the folder the test above explains."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    quickstart = "pip install -e '.[dev]' && vitcam explain sample_images/fashion_scenes --model fashion-vit"
    assert quickstart in readme


def evaluate_samples(out: Path, *args: str, model: str = "fashion-vit") -> tuple[int, str, str]:
    labels = SAMPLE_SCENES / "labels.csv"
    return run("evaluate", str(SAMPLE_SCENES), "--model", model, "--labels", str(labels),
               "--workers", "0", "-q", "-o", str(out), *args)  # fmt: skip


def test_evaluate_on_the_sample_set_with_the_bundled_model(tmp_path):
    code, stdout, stderr = evaluate_samples(
        tmp_path / "out", "--boxes", str(SAMPLE_SCENES / "boxes.csv"), "--target", "label",
        "--methods", "reciprocam,rollout", "--steps", "8", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert metrics["dataset"]["evaluated"] == metrics["dataset"]["labelled"] == 30
    first = metrics["methods"]["reciprocam:fused"]
    assert first["accuracy"] >= 0.5
    assert 0.0 < first["adcc"] < 1.0 and 0.0 <= first["pointing_game"] <= 1.0
    # the gate a CI pipeline would use: an unreachable bar fails the run with exit 1
    code, _, stderr = evaluate_samples(tmp_path / "gate", "--no-insertion-deletion", "--fail-under", "0.99")
    assert code == 1 and "0.99" in stderr


def test_the_bundled_swin_is_trained_and_its_maps_point_at_the_garment(tmp_path):
    """On the 30 sample scenes: most predictions right (chance: 3/30), and the saliency peak inside the
    garment's box more often than a random point would be (the boxes cover 31% of a scene on average)."""
    code, stdout, stderr = evaluate_samples(
        tmp_path / "out", "--boxes", str(SAMPLE_SCENES / "boxes.csv"), "--target", "label",
        "--methods", "reciprocam,gradcam", "--steps", "4", "--json", model="fashion-swin",
    )  # fmt: skip
    assert code == 0, stderr
    methods = json.loads(stdout)["methods"]
    assert list(methods) == ["reciprocam:fused", "gradcam"]
    for values in methods.values():
        assert values["accuracy"] >= 0.66
        assert values["pointing_game"] >= 0.45
    out = tmp_path / "first-stage"
    code, _, stderr = run("explain", str(SAMPLE_SCENES), "--model", "fashion-swin", "--target-block", "-3",
                          "--save-maps", "--workers", "0", "-q", "-o", str(out))  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 30 and all(np.load(out / row["map"]).shape == (14, 14) for row in rows)
