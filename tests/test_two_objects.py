"""Scenes with two objects: labelled boxes, class-specific localisation, every labelled class explained,
and the two-garment FashionScenes split."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise
from tests.test_cli import explain, rows_of, run
from tests.test_evaluate import evaluate

REPO = Path(__file__).parents[1]
TWO = REPO / "sample_images" / "fashion_scenes_two"


def per_image(out: Path) -> list[dict[str, str]]:
    with (out / "per_image.csv").open() as handle:
        return list(csv.DictReader(handle))


def evaluate_two(out: Path, *args: str) -> tuple[int, str, str]:
    return run("evaluate", str(TWO), "--model", "fashion-vit", "-o", str(out), "--workers", "0", "-q",
               "--boxes", str(TWO / "boxes.csv"), "--no-insertion-deletion", *args)  # fmt: skip


def test_every_labelled_class_is_explained_and_a_class_agnostic_map_is_capped(tmp_path):
    code, _, stderr = evaluate_two(tmp_path / "out", "--target", "boxes", "--methods", "rollout,relevance")
    assert code == 0, stderr
    rows = per_image(tmp_path / "out")
    with (TWO / "boxes.csv").open() as handle:
        boxed = [(Path(row["file"]).name, row["label"]) for row in csv.DictReader(handle)]
    for method in ("rollout", "relevance"):
        explained = [(Path(row["path"]).name, row["class_name"]) for row in rows if row["method"] == method]
        assert sorted(explained) == sorted(boxed)  # one row per image and labelled class
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["target"] == "boxes"
    rollout = metrics["methods"]["rollout"]
    # rollout gives every class the same map: its peak lies in one of the two disjoint boxes at most, and
    # its mass splits between them, so right-object pointing <= 0.5 and discrimination = 0.5 exactly
    assert rollout["pointing_game"] <= 0.5
    assert rollout["discrimination"] == pytest.approx(0.5, abs=1e-6)
    assert 0 <= metrics["methods"]["relevance"]["discrimination"] <= 1


def test_labelled_boxes_with_the_predicted_class(tmp_path):
    code, _, stderr = evaluate_two(tmp_path / "out", "--methods", "reciprocam")
    assert code == 0, stderr
    rows = per_image(tmp_path / "out")
    assert len(rows) == 12  # one per image: the prediction
    for row in rows:
        if row["pointing_game"] == "":  # the predicted class has no box in the image
            assert row["discrimination"] == "" and row["energy_in_box"] == ""
        else:
            assert float(row["discrimination"]) >= 0


def test_target_boxes_needs_labelled_boxes(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(noise(30, 40)).save(data / "a.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x1,y1,x2,y2\na.png,1,1,10,10\n")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--boxes", str(boxes), "--target", "boxes")
    assert code == 2 and "--target boxes needs --boxes FILE.csv with a label column" in stderr
    boxes.write_text("file,x1,y1,x2,y2,label\na.png,1,1,10,10,cat\na.png,12,1,20,10,unicorn\n")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--boxes", str(boxes), "--target", "boxes")
    assert code == 2 and "line 3:" in stderr and "unicorn" in stderr
    boxes.write_text("file,x1,y1,x2,y2,label\na.png,1,1,10,10,\n")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--boxes", str(boxes))
    assert code == 2 and "line 2: the label column needs a class on every row" in stderr


def test_images_without_a_labelled_box_are_error_rows(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(noise(30, 40, seed=len(name))).save(data / name)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x1,y1,x2,y2,label\na.png,1,1,20,30,cat\na.png,20,1,40,30,dog\n")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--boxes", str(boxes), "--target", "boxes")
    assert code == 1, stderr
    rows = {
        (Path(row["path"]).name, row["class_name"] or row["error"]) for row in per_image(tmp_path / "out")
    }
    assert rows == {
        ("a.png", "cat"),
        ("a.png", "dog"),
        ("b.png", f"no labelled box for this file in {boxes}"),
    }


def test_explain_takes_several_labels_per_file_and_resumes_them(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(noise(30, 40, seed=len(name) + ord(name[0]))).save(data / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,cat\na.png,dog\nb.png,bird\na.png,cat\n")
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(data), "-o", str(out), "--labels", str(labels))
    assert code == 1, stderr  # c.png has no label
    rows = rows_of(out)
    ok = [
        (Path(row["path"]).name, row["class_name"], row["overlay"]) for row in rows if row["status"] == "ok"
    ]
    assert ok == [("a.png", "cat", "overlays/a.png.0.png"), ("a.png", "dog", "overlays/a.png.1.png"),
                  ("b.png", "bird", "overlays/b.png.2.png")]  # fmt: skip
    assert all((out / overlay).is_file() for _, _, overlay in ok)
    (out / "overlays" / "a.png.1.png").unlink()  # a lost output: resuming redoes that class alone
    code, _, stderr = explain(
        tiny_model, str(data), "-o", str(out), "--labels", str(labels), "--skip-existing"
    )
    assert code == 1, stderr
    again = [(Path(row["path"]).name, row["class_name"]) for row in rows_of(out) if row["status"] == "ok"]
    assert sorted(again) == [("a.png", "cat"), ("a.png", "dog"), ("b.png", "bird")]
    assert (out / "overlays" / "a.png.1.png").is_file()


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_the_builder_writes_two_garment_scenes_with_labelled_boxes(tmp_path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    rng = np.random.default_rng(0)
    garments = np.zeros((20, 28, 28), np.uint8)
    garments[:, 4:24, 6:22] = rng.integers(120, 255, (20, 20, 16))
    _idx(mnist / "t10k-images-idx3-ubyte", garments)
    _idx(mnist / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fashion_scenes" / "build.py"), "--split", "test",
         "--objects", "2", "--count", "6", "--out", str(out), "--fashion-mnist", str(mnist)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "boxes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and not (out / "labels.csv").exists()
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert first["file"] == second["file"] and first["label"] != second["label"]
        assert int(first["x2"]) <= 56 <= int(second["x1"])  # one garment in each half
        with Image.open(out / first["file"]) as image:
            assert image.size == (112, 112)


def test_the_discriminative_preset_is_otx_on_block_minus_2_with_the_prefix_reset():
    from vitcam_cli import Explainer
    from vitcam_cli.methods.reciprocam import PRESETS

    assert PRESETS["discriminative"] == PRESETS["otx"].with_overrides(target_block=-2, prefix="reset")
    images = sorted((TWO / "images").glob("*.png"))[:3]
    named = Explainer("fashion-vit", method="reciprocam:discriminative", device="cpu")(images)
    spelled = Explainer("fashion-vit", method="reciprocam:otx:block=-2,prefix=reset", engine="dense")(images)
    np.testing.assert_allclose(named.maps.numpy(), spelled.maps.numpy(), rtol=1e-4, atol=1e-6)
