"""``vitcam evaluate`` end to end on small labelled folders, through the Typer app."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import CLASS_NAMES, SAMPLE_SCENES, noise
from tests.test_cli import run

METHODS = "reciprocam,reciprocam:otx,gradcam,rollout,relevance"


def write_labelled(root: Path) -> Path:
    """Ten images with labels.csv (names and indices mixed) and boxes.csv (two boxes for one image)."""
    (root / "images").mkdir(parents=True)
    labels, boxes = ["file,label"], ["file,x1,y1,x2,y2"]
    for i in range(10):
        name = f"images/{i:02d}.png"
        Image.fromarray(noise(40 + i, 60, seed=100 + i)).save(root / name)
        labels.append(f"{name},{CLASS_NAMES[i % 5] if i % 2 else i % 5}")
        boxes.append(f"{name},{5 + i},4,{30 + i},28")
    boxes.append("images/03.png,40,20,58,38")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "boxes.csv").write_text("\n".join(boxes) + "\n")
    return root


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return write_labelled(tmp_path / "data")


def evaluate(model: Path, data: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return run("evaluate", str(data), "--model", f"local-dir:{model}", "-o", str(out), "--workers", "0", "-q",
               "--steps", "4", *args)  # fmt: skip


def test_all_methods_all_metrics(tiny_model, labelled, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = evaluate(
        tiny_model, labelled, out, "--labels", str(labelled / "labels.csv"),
        "--boxes", str(labelled / "boxes.csv"), "--methods", METHODS, "--markdown", "--target", "label",
        "--save-overlays",
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == [
        "reciprocam:fused",
        "reciprocam:otx",
        "gradcam",
        "rollout",
        "relevance",
    ]
    for name, values in metrics["methods"].items():
        for key in ("adcc", "adcc_mean", "average_drop", "increase", "coherency", "complexity", "insertion",
                    "deletion", "pointing_game", "energy_in_box", "n", "accuracy", "seconds"):  # fmt: skip
            assert values[key] is not None, (name, key)
        assert 0 <= values["adcc"] <= 1 and values["n"] == 10
    assert metrics["dataset"]["labelled"] == 10 and metrics["target"] == "label"
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 50 and all(row["status"] == "ok" for row in rows)
    assert {row["class_name"] for row in rows if row["path"].endswith("01.png")} == {"dog"}
    assert (out / "overlays" / "reciprocam-otx" / "images" / "03.png.png").is_file()
    assert (out / "report.html").is_file()
    assert stdout.startswith("| method | adcc |") and "| relevance |" in stdout


def test_same_seed_same_numbers_and_limit(tiny_model, labelled, tmp_path):
    args = (
        "--labels",
        str(labelled / "labels.csv"),
        "--limit",
        "4",
        "--seed",
        "3",
        "--methods",
        "reciprocam,rollout",
    )
    first, second = tmp_path / "a", tmp_path / "b"
    assert evaluate(tiny_model, labelled, first, *args)[0] == 0
    assert evaluate(tiny_model, labelled, second, *args)[0] == 0
    a, b = (json.loads((path / "metrics.json").read_text()) for path in (first, second))
    for method in a["methods"]:
        for key in ("adcc", "adcc_mean", "insertion", "deletion", "accuracy"):
            assert a["methods"][method][key] == b["methods"][method][key]
    assert a["dataset"]["evaluated"] == 4
    assert (first / "per_image.csv").read_text() == (second / "per_image.csv").read_text()


def test_fail_under_gates_the_first_method_and_json_prints_metrics(tiny_model, labelled, tmp_path):
    code, stdout, _ = evaluate(tiny_model, labelled, tmp_path / "o", "--fail-under", "0", "--json",
                               "--no-insertion-deletion")  # fmt: skip
    assert code == 0
    metrics = json.loads(stdout)
    value = metrics["methods"]["reciprocam:fused"]["adcc"]
    assert metrics["gate"] == {"metric": "adcc", "threshold": 0.0, "value": value, "passed": True}
    assert "insertion" not in metrics["methods"]["reciprocam:fused"]
    code, _, stderr = evaluate(
        tiny_model, labelled, tmp_path / "p", "--fail-under", "1.01", "--metric", "coherency"
    )
    assert code == 1 and "below --fail-under 1.01" in stderr


def test_image_folder_tree_and_class_map(tiny_model, tmp_path):
    data = tmp_path / "tree"
    for folder in ("cat", "Dog", "stallion"):
        (data / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(noise(30, 40, seed=hash(folder) % 1000 + i)).save(data / folder / f"{i}.png")
    class_map = tmp_path / "map.csv"
    class_map.write_text("folder,class\nstallion,horse\n")
    out = tmp_path / "out"
    code, _, stderr = evaluate(tiny_model, data, out, "--class-map", str(class_map), "--target", "label",
                               "--no-insertion-deletion")  # fmt: skip
    assert code == 0, stderr
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert {Path(r["path"]).parent.name: r["label"] for r in rows} == {
        "cat": "cat",
        "Dog": "dog",
        "stallion": "horse",
    }
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "o2", "--target", "label")
    assert code == 2 and "--class-map" in stderr


def test_unlabelled_folder_and_its_errors(tiny_model, small_folder, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = evaluate(tiny_model, small_folder, out, "--no-insertion-deletion")
    assert code == 0, stderr
    methods = json.loads((out / "metrics.json").read_text())["methods"]
    assert methods["reciprocam:fused"]["accuracy"] is None
    code, _, stderr = evaluate(tiny_model, small_folder, tmp_path / "o2", "--target", "label")
    assert code == 2 and "--target label needs ground truth" in stderr
    code, _, stderr = evaluate(tiny_model, small_folder, tmp_path / "o3", "--methods", "gradcam,saliency")
    assert code == 2 and "--methods saliency" in stderr


def test_broken_and_unlabelled_images_are_error_rows(tiny_model, labelled, tmp_path):
    (labelled / "images" / "broken.png").write_bytes(b"nope")
    Image.fromarray(noise(20, 20)).save(labelled / "images" / "extra.png")
    out = tmp_path / "out"
    code, _, _ = evaluate(
        tiny_model, labelled, out, "--labels", str(labelled / "labels.csv"), "--no-insertion-deletion"
    )
    assert code == 1
    errors = {
        Path(r["path"]).name: r["error"] for r in csv.DictReader((out / "per_image.csv").open()) if r["error"]
    }
    assert "no label" in errors["broken.png"] and "no label" in errors["extra.png"]
    assert json.loads((out / "metrics.json").read_text())["dataset"]["failed"] == 2


def test_the_bundled_sample_dataset_runs_end_to_end(fashion_tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = evaluate(
        fashion_tiny_model, SAMPLE_SCENES, out, "--labels", str(SAMPLE_SCENES / "labels.csv"),
        "--boxes", str(SAMPLE_SCENES / "boxes.csv"), "--target", "label", "--limit", "6",
        "--methods", "reciprocam,rollout", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert metrics["dataset"]["evaluated"] == 6 and metrics["dataset"]["labelled"] == 6
    assert metrics["methods"]["reciprocam:fused"]["pointing_game"] is not None


def test_evaluate_report_renders_in_a_real_browser(tiny_model, labelled, tmp_path):
    """The report of a real run: its table and every thumbnail render; a screenshot is kept for people."""
    from tests.chromium import rendered_dom, screenshot
    from tests.test_report import _body_attributes

    out = tmp_path / "out"
    code, _, stderr = evaluate(
        tiny_model, labelled, out, "--labels", str(labelled / "labels.csv"),
        "--methods", "reciprocam,gradcam,rollout", "--no-insertion-deletion",
    )  # fmt: skip
    assert code == 0, stderr
    dom = rendered_dom(out / "report.html")
    body = _body_attributes(dom)
    assert body["data-ready"] == "1"
    assert (
        body["data-images-loaded"] == body["data-images-total"] == "40"
    )  # 10 images x (original + 3 methods)
    assert '<table id="summary"' in dom and "reciprocam:fused" in dom and "rollout" in dom
    png = Path(__file__).parents[1] / "test-artifacts" / "evaluate-report.png"
    screenshot(out / "report.html", png)
    assert png.stat().st_size > 10_000


def test_method_names():
    from vitcam_cli.methods.factory import canonical_name

    assert canonical_name("reciprocam") == "reciprocam:fused"
    assert canonical_name("ReciproCAM:otx:gaussian") == "reciprocam:otx"
    assert canonical_name("reciprocam:openvino-xai:single") == "reciprocam:openvino-xai:kernel=single"
    assert (
        canonical_name("reciprocam:otx:fuse=2,score=contrast,skip=ln")
        == "reciprocam:otx:score=contrast,fuse=2"
    )
    assert canonical_name("rollout") == "rollout"
    bad_names = (
        "reciprocam:fast",
        "reciprocam:otx:box",
        "reciprocam:otx:fuse=two",
        "reciprocam:otx:colour=red",
    )
    for bad in (*bad_names, "gradcam:x", "saliency"):
        with pytest.raises(Exception, match="method="):
            canonical_name(bad)


def test_bootstrap_intervals(tiny_model, labelled, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = evaluate(tiny_model, labelled, out, "--bootstrap", "200", "--markdown",
                                    "--methods", "reciprocam,rollout")  # fmt: skip
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for values in metrics["methods"].values():
        for name, (low, high) in values["intervals"].items():
            assert (low <= values[name] + 1e-9 and values[name] <= high + 1e-9) or name == "adcc", name
            assert low <= high
    assert " [" in stdout  # the markdown table shows the intervals


def test_bootstrap_matches_a_plain_resampling():
    import numpy as np

    from vitcam_cli.metrics.aggregate import bootstrap_intervals

    rng = np.random.default_rng(0)
    values = {
        name: rng.uniform(0.1, 0.9, 50) for name in ("average_drop", "coherency", "complexity", "increase")
    }
    values["adcc"] = 3 / (
        1 / values["coherency"] + 1 / (1 - values["complexity"]) + 1 / (1 - values["average_drop"])
    )
    intervals = bootstrap_intervals(values, 500, seed=3)
    picks = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    means = values["coherency"][picks].mean(1)
    assert intervals["coherency"] == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)))
    d, c, x = (values[name][picks].mean(1) for name in ("average_drop", "coherency", "complexity"))
    combined = 3 / (1 / c + 1 / (1 - x) + 1 / (1 - d))
    assert intervals["adcc"] == pytest.approx(
        (np.percentile(combined, 2.5), np.percentile(combined, 97.5)), rel=1e-5
    )


def test_a_log_gets_each_progress_line_once_and_the_header_whole(tiny_model, labelled, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # what a log gets: rich draws for 80 columns off a terminal
    monkeypatch.setattr("vitcam_cli.runner.PROGRESS_EVERY_S", 0.0)  # a line after every batch
    code, _, stderr = run(
        "evaluate", labelled / "images", "--model", f"local-dir:{tiny_model}", "-o", tmp_path / "out",
        "--workers", "0", "--steps", "2", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, stderr
    lines = stderr.splitlines()
    progress = [line.split(" images,")[0] for line in lines if line.startswith("evaluating: ")]
    assert progress == ["evaluating: 4/10", "evaluating: 8/10", "evaluating: 10/10"], stderr
    assert "vitcam evaluate: 10 images, target predicted, poppi protocol" in lines, stderr
    legend = " ".join(lines[lines.index(next(line for line in lines if line.startswith("└"))) + 1 :])
    assert "adcc: ADCC of the mean parts" in legend and "adcc_mean: the mean of per-image ADCC" in legend, (
        stderr
    )
    assert max(len(line) for line in lines if not line.startswith("evaluating: ")) <= 80, stderr


def test_report_cards_show_the_original_once_and_each_methods_name(tiny_model, labelled, tmp_path):
    from tests.test_report import _cards, _heading, _original_size

    out = tmp_path / "out"
    code, _, stderr = evaluate(tiny_model, labelled, out, "--methods", "reciprocam,gradcam", "--limit", "3",
                               "--no-insertion-deletion", "--shard", "0/1")  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = run("merge", out, "-q")  # the cards travel through the shard's part file
    assert code == 0, stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    cards = _cards(page)
    assert len(cards) == 3
    for path, card in cards.items():
        assert _heading(card) == Path(path).name and card.count('<figure class="original">') == 1
        assert _original_size(card) == Image.open(path).size
        methods = re.findall(r'<div class="method">(.*?)</div>', card)
        assert methods == ["reciprocam:fused", "gradcam"]
    assert "<dt>methods</dt><dd>reciprocam:fused, gradcam</dd>" in page
