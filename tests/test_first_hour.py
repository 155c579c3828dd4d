"""What a newcomer meets first: any method from explain, class names for any model, the report's charts
and marks, plain progress lines in logs, tables that fit, a fast offline failure, a tidy --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.chromium import rendered_dom
from tests.conftest import noise, noise_folder
from tests.test_cli import VITCAM, explain, rows_of, run
from tests.test_evaluate import evaluate, write_labelled
from tests.test_report import _body_attributes
from vitcam_cli.outputs.report import draw_boxes
from vitcam_cli.runner import ProgressLines


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = noise_folder(tmp_path / "images", 3, seed=800)
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("method", ["relevance", "gradcam", "rollout", "reciprocam:otx:kernel=single,fuse=2"])
def test_explain_runs_any_method(tiny_model, images, tmp_path, method):
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out), "--method", method, "--save-maps")
    assert code == 1, stderr  # broken.png
    rows = [row for row in rows_of(out) if row["status"] == "ok"]
    name = method if ":" not in method else "reciprocam:otx:kernel=single,fuse=2"
    assert len(rows) == 3 and {row["method"] for row in rows} == {name}
    for row in rows:
        assert (out / row["overlay"]).is_file() and np.load(out / row["map"]).shape == (4, 6)
        assert 0 <= row["adcc"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["method"]["label"] == name
    report = (out / "report.html").read_text()
    assert name in report


def test_explain_method_conflicts_are_one_line(tiny_model, images, tmp_path):
    for args, message in (
        (("--method", "gradcam", "--kernel", "single"), "--kernel applies to ViT-ReciproCAM only"),
        (("--method", "rollout", "--variant", "otx"), "--variant applies to ViT-ReciproCAM only"),
        (("--method", "reciprocam:otx", "--variant", "official"), "--method and --variant both choose"),
        (("--method", "nothing"), "--method nothing:"),
    ):
        code, _, stderr = explain(tiny_model, str(images), "-o", str(tmp_path / "o"), *args)
        assert code == 2 and len(stderr.splitlines()) == 1 and message in stderr, stderr


def test_flags_still_shape_the_default_method(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = explain(
        tiny_model, str(images), "-o", str(out), "--variant", "otx", "--kernel", "single"
    )
    assert code == 1, stderr
    assert {row["method"] for row in rows_of(out) if row["status"] == "ok"} == {
        "reciprocam:otx:kernel=single"
    }


@pytest.fixture
def raw_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of a 5-class ViT whose config knows no class names."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=(32, 48))
    path = tmp_path / "weights.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def raw_model_args(checkpoint: Path) -> list[str]:
    return ["-m", "vit_tiny_patch16_224", "--checkpoint", str(checkpoint), "--num-classes", "5",
            "--img-size", "32x48", "--workers", "0", "-q"]  # fmt: skip


NAMES = ["zebra", "okapi", "tapir", "quagga", "eland"]


def test_class_names_for_a_raw_checkpoint(raw_checkpoint, images, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "out"
    code, _, stderr = run("explain", str(images), "-o", str(out), *raw_model_args(raw_checkpoint),
                          "--class-names", str(names), "--class", "tapir")  # fmt: skip
    assert code == 1, stderr
    assert {row["class_name"] for row in rows_of(out) if row["status"] == "ok"} == {"tapir"}
    assert json.loads((out / "summary.json").read_text())["settings"]["model"]["class_names"] == str(names)
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(NAMES))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n0.png,quagga\n1.png,eland\n2.png,0\n")
    data = tmp_path / "labelled"
    data.mkdir()
    for name in ("0.png", "1.png", "2.png"):
        (data / name).write_bytes((images / name).read_bytes())
    model = raw_model_args(raw_checkpoint)
    code, _, stderr = run("evaluate", str(data), "-o", str(tmp_path / "eval"), *model, "--class-names",
                          str(listed), "--labels", str(labels), "--target", "label",
                          "--no-insertion-deletion")  # fmt: skip
    assert code == 0, stderr
    per_image = (tmp_path / "eval" / "per_image.csv").read_text()
    assert "quagga" in per_image and "eland" in per_image and "zebra" in per_image


def test_class_names_of_the_wrong_count_are_one_error(raw_checkpoint, images, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("zebra\nokapi\n")
    model = raw_model_args(raw_checkpoint)
    code, _, stderr = run("explain", str(images), "-o", str(tmp_path / "out"), *model,
                          "--class-names", str(names))  # fmt: skip
    assert code == 2 and len(stderr.splitlines()) == 1
    assert f"--class-names {names}: holds 2 names but the model has 5 classes" in stderr


def test_explain_report_has_the_distribution_colour_bar_and_failures(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    code, _, _ = explain(tiny_model, str(images), "-o", str(out))
    assert code == 1
    report = (out / "report.html").read_text()
    assert 'aria-label="adcc: histogram over 3 images"' in report
    assert 'aria-label="colour scale of the heatmaps"' in report and "inferno" in report
    failures = re.search(r'<section id="failures">(.*?)</section>', report, re.S).group(1)
    assert "Failed images (1)" in failures and "broken.png" in failures and "not an image Pillow" in failures


def labelled_with_boxes(tmp_path: Path) -> Path:
    data = write_labelled(tmp_path / "data")
    (data / "images" / "broken.png").write_bytes(b"")
    return data


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory) -> Path:
    """One evaluate run with labels, boxes, three methods and one failed image."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    data = labelled_with_boxes(tmp_path)
    out = tmp_path / "out"
    code, _, stderr = evaluate(
        tiny_model, data, out, "--labels", str(data / "labels.csv"), "--boxes", str(data / "boxes.csv"),
        "--methods", "reciprocam,rollout,relevance", "--target", "label",
    )  # fmt: skip
    assert code == 1, stderr  # broken.png has no label and no pixels
    return out


def test_evaluate_report_compares_methods_and_marks_wrong_predictions(evaluated):
    report = (evaluated / "report.html").read_text()
    for metric in ("adcc", "insertion", "deletion", "pointing_game", "energy_in_box"):
        assert f'aria-label="{metric} of each method"' in report
    for method in ("reciprocam:fused", "rollout", "relevance"):
        assert f'<h4 class="chart-method">{method}</h4>' in report
    metrics = json.loads((evaluated / "metrics.json").read_text())
    wrong = metrics["dataset"]["labelled"] - metrics["dataset"]["correct"]
    assert wrong > 0 and report.count('<article class="card wrong"') == wrong
    assert "broken.png" in re.search(r'<section id="failures">(.*?)</section>', report, re.S).group(1)


def test_boxes_are_drawn_on_the_thumbnails():
    picture = np.full((40, 60, 3), 100, np.uint8)
    drawn = draw_boxes(picture, [(10, 5, 30, 25)])
    assert (drawn[5, 15] == 255).all() and (drawn[15, 10] == 255).all()  # the top and left edges
    assert (drawn[15, 20] == 100).all() and (drawn[35, 50] == 100).all()  # inside and outside untouched


FILTER_STEPS = """<script>
const record = (name) => {
  document.body.dataset[name] = Array.from(document.querySelectorAll(".card"))
    .filter((card) => !card.hidden).length + "|" + document.getElementById("shown-count").textContent;
};
record("all");
document.getElementById("filter-wrong").click();
record("wrong");
const classes = document.getElementById("filter-class");
classes.value = "cat";
classes.dispatchEvent(new Event("change"));
record("wrongCats");
document.body.dataset.summaryRight = String(document.getElementById("summary").getBoundingClientRect().right);
document.body.dataset.pageWidth = String(document.documentElement.scrollWidth);
</script>
</body>"""


def test_filters_and_the_summary_width_in_a_real_browser(evaluated, tmp_path):
    page = tmp_path / "report.html"
    page.write_text((evaluated / "report.html").read_text().replace("</body>", FILTER_STEPS))
    dom = rendered_dom(page, size=(1400, 900))
    body = _body_attributes(dom)
    for shown in (
        'aria-label="adcc of each method"',
        'aria-label="adcc: histogram over',
        'aria-label="colour scale of the heatmaps"',
        '<article class="card wrong"',
        "✗ wrong",
    ):
        assert shown in dom, shown  # the charts, the colour bar and the marks, as the browser built the page
    metrics = json.loads((evaluated / "metrics.json").read_text())
    evaluated_count = metrics["dataset"]["evaluated"]
    wrong = metrics["dataset"]["labelled"] - metrics["dataset"]["correct"]
    assert body["data-all"] == f"{evaluated_count}|"
    assert body["data-wrong"] == f"{wrong}|{wrong} of {evaluated_count} shown"
    shown_cats = int(body["data-wrong-cats"].split("|")[0])
    assert 0 <= shown_cats <= wrong
    assert float(body["data-summary-right"]) <= 1400 and int(body["data-page-width"]) <= 1400


def test_progress_lines_in_logs(tiny_model, images, tmp_path):
    code, _, stderr = run("explain", str(images), "-m", f"local-dir:{tiny_model}", "-o", str(tmp_path / "o"),
                          "--workers", "0")  # fmt: skip
    assert code == 1
    assert re.search(r"^explaining: 4/4 images, [\d.]+ img/s, 0:00:\d\d elapsed$", stderr, re.M), stderr


def test_progress_lines_come_at_most_every_ten_seconds():
    from rich.console import Console

    now = [0.0]
    console = Console(record=True, width=200)
    lines = ProgressLines(console, "explaining", every=10.0, clock=lambda: now[0])
    lines.add_task("explain", total=100)
    with lines:
        for _ in range(100):
            now[0] += 1.0
            lines.advance(0, 1)
    printed = console.export_text().splitlines()
    assert len(printed) == 10  # at 10, 20, ... 100 s; the end has nothing new to say
    assert printed[0] == "explaining: 10/100 images, 1.0 img/s, 0:00:10 elapsed, 0:01:30 left"
    assert printed[-1] == "explaining: 100/100 images, 1.0 img/s, 0:01:40 elapsed"


def test_the_evaluate_table_keeps_every_name_at_120_columns(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    methods = "reciprocam,reciprocam:otx:kernel=single,fuse=2,gradcam,rollout,relevance"
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(
        [*VITCAM, "evaluate", str(data), "-m", f"local-dir:{tiny_model}", "-o", str(tmp_path / "out"),
         "--workers", "0", "--steps", "2", "--methods", methods, "--boxes", str(data / "boxes.csv")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stderr[result.stderr.index("vitcam evaluate:") :]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 120
    cells = " ".join(re.findall(r"[\w:,=-]+", table))
    for name in ("average_drop", "energy_in_box", "pointing_game", "seconds_per_image", "relevance"):
        assert name in cells
    assert "reciprocam:" in cells and "fused" in cells and "kernel=single," in cells


def test_an_uncached_pretrained_model_without_network_fails_at_once(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(noise(30, 40)).save(folder / "a.png")
    result = subprocess.run([*VITCAM, "explain", str(folder), "-m", "vit_tiny_patch16_224", "-o",
                             str(tmp_path / "out")], capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "are not cached and the hub cannot be reached" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "--checkpoint" in result.stderr


USAGE_LINES = {
    "explain": "vitcam explain [OPTIONS] [INPUTS]...",
    "evaluate": "vitcam evaluate [OPTIONS] DATA",
    "bench": "vitcam bench [OPTIONS]",
    "merge": "vitcam merge [OPTIONS] FOLDERS...",
    "audit": "vitcam audit [OPTIONS] [INPUTS]...",
    "compare": "vitcam compare [OPTIONS] RUN_A RUN_B",
}


@pytest.mark.parametrize("command", list(USAGE_LINES))
def test_help_shows_options_one_way(command):
    code, stdout, _ = run(command, "--help")
    assert code == 0
    assert f"Usage: {USAGE_LINES[command]}" in stdout  # arguments in capitals, as the docs write them
    assert "<bool>" not in stdout and "<list[str]>" not in stdout and "[default:" not in stdout
    if command == "evaluate":
        flat = " ".join(stdout.split())
        for form in ("kernel=", "block=", "skip=", "score=", "subtract=", "fuse="):
            assert form in flat


def test_python_api_takes_class_names(raw_checkpoint, images):
    from vitcam_cli import Explainer

    explainer = Explainer(
        "vit_tiny_patch16_224", checkpoint=raw_checkpoint, num_classes=5, img_size=(32, 48),
        class_names=NAMES, device="cpu",
    )  # fmt: skip
    result = explainer([images / "0.png"], classes=["okapi"])
    assert result.class_names == [["okapi"]] and torch.equal(result.classes, torch.tensor([[1]]))
