"""Hostile inputs and faults through the real entry point: links, two writers, merges of unlike shards,
bad config, boxes and labels files, and the small usage errors."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import export_tiny_model, noise, noise_folder
from tests.test_cli import explain, rows_of, run
from tests.test_evaluate import evaluate, write_labelled


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return noise_folder(tmp_path / "images", 4, seed=700)


def by_name(out: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in rows_of(out)}


def test_symlink_loops_and_dangling_links_become_error_rows(tiny_model, images, tmp_path):
    (images / "l2.png").symlink_to("l1.png")
    (images / "l1.png").symlink_to("l2.png")
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling, absolute
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
    assert code == 1, stderr
    rows = by_name(out)
    assert [rows[f"{i}.png"]["status"] for i in range(4)] == ["ok"] * 4
    assert rows["l1.png"]["status"] == rows["l2.png"]["status"] == "error"
    assert "symbolic links" in rows["l1.png"]["error"]
    assert rows["gone.png"]["error"] == "file not found"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{images / 'l1.png'}\n{images / '0.png'}\n")
    code, _, stderr = explain(tiny_model, "--files-from", str(listed), "-o", str(tmp_path / "listed"))
    assert code == 1, stderr
    assert [row["status"] for row in rows_of(tmp_path / "listed")] == ["ok", "error"]


def test_links_to_files_outside_the_folder_are_explained_inside_out(tiny_model, images, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(noise(30, 40, seed=9)).save(elsewhere / "far.png")
    dataset = tmp_path / "dataset"
    (dataset / "sub").mkdir(parents=True)
    (dataset / "sub" / "linked.png").symlink_to(elsewhere / "far.png")
    (dataset / "relative.png").symlink_to(Path("..") / "images" / "0.png")
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(dataset), "-o", str(out))
    assert code == 0, stderr
    overlays = sorted(path.relative_to(out).as_posix() for path in (out / "overlays").rglob("*.png"))
    assert overlays == ["overlays/relative.png.png", "overlays/sub/linked.png.png"]


HOLD = """
import sys
from pathlib import Path
from vitcam_cli.outputs.lock import OutputLock
with OutputLock(Path(sys.argv[1]), None):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
        assert code == 2 and len(stderr.splitlines()) == 1, stderr
        assert f"--out {out}: in use by another run (pid {holder.pid}" in stderr
        code, _, stderr = explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2")
        assert code == 2 and "in use by another run" in stderr
        assert not (out / "results.jsonl").exists() and not (out / "summary.shard-0-of-2.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: its lock file stays behind
        holder.wait()
    assert (out / ".vitcam.lock").exists()
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
    assert code == 0, stderr
    assert len(rows_of(out)) == 4 and not (out / ".vitcam.lock").exists()


def test_a_run_refused_before_writing_leaves_no_folder(tiny_model, images, tmp_path):
    out = tmp_path / "new"
    code, _, _ = explain(tiny_model, str(images), "-o", str(out), "--class", "no-such-class")
    assert code == 2 and not out.exists()


def test_merge_refuses_shards_given_other_inputs(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2")[0] == 0
    for name in ("new1.png", "new2.png"):
        Image.fromarray(noise(30, 40, seed=len(name))).save(images / name)
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "1/2")[0] == 0
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shard 1/2 was given other inputs than shard 0 (6 inputs, shard 0 4" in stderr


def test_merge_refuses_a_shard_whose_rows_disagree_with_its_summary(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert explain(tiny_model, str(images), "-o", str(out), "--shard", shard)[0] == 0
    part = out / "results.shard-0-of-2.jsonl"
    text = part.read_text()
    part.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 20])  # the last row torn
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shard 0/2" in stderr and "holds 1 whole rows" in stderr
    assert "--shard 0/2 --skip-existing" in stderr
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2", "--skip-existing")[0] == 0
    code, _, stderr = run("merge", str(out))
    assert code == 0, stderr
    assert len(rows_of(out)) == 4


def test_settings_that_change_the_columns_must_match(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2", "--no-adcc")[0] == 0
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "1/2")[0] == 0
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shard 1/2 used other adcc settings than shard 0" in stderr
    resumed = tmp_path / "resumed"
    assert explain(tiny_model, str(images), "-o", str(resumed), "--no-adcc")[0] == 0
    code, _, stderr = explain(tiny_model, str(images), "-o", str(resumed), "--skip-existing")
    assert code == 2 and "different adcc settings" in stderr


def test_a_config_file_that_is_not_utf8_is_one_line(tiny_model, images, tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[explain]\ncolormap = "viridis" # caf\xe9\n'.encode("latin-1"))
    code, _, stderr = explain(tiny_model, str(images), "-o", str(tmp_path / "out"), "--config", str(config))
    assert code == 2 and len(stderr.splitlines()) == 1
    assert "not UTF-8 text (byte 0xe9" in stderr and "save it as UTF-8" in stderr


def write_boxes(path: Path, lines: list[str]) -> Path:
    path.write_text("file,x1,y1,x2,y2\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_box_coordinates_are_usage_errors(tiny_model, tmp_path, value):
    data = write_labelled(tmp_path / "data")
    boxes = write_boxes(tmp_path / "boxes.csv", ["images/00.png,1,1,10,10", f"images/01.png,1,{value},10,10"])
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--boxes", str(boxes))
    assert code == 2 and "--boxes" in stderr and "line 3: coordinates must be finite" in stderr


def per_image(out: Path) -> dict[str, dict]:
    with (out / "per_image.csv").open() as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


def test_boxes_are_clipped_and_images_without_boxes_left_out(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")  # 00.png is 60x40 pixels
    whole = write_boxes(tmp_path / "whole.csv", [f"images/{i:02d}.png,0,0,60,{40 + i}" for i in range(10)])
    spilling = write_boxes(
        tmp_path / "spill.csv",
        ["images/00.png,-100,-50,600,400", "images/01.png,70,0,90,10",
         *(f"images/{i:02d}.png,0,0,60,{40 + i}" for i in range(2, 8))],
    )  # fmt: skip
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "whole", "--boxes", str(whole))
    assert code == 0, stderr
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "spill", "--boxes", str(spilling))
    assert code == 1, stderr  # 01.png's only box lies outside it
    rows = per_image(tmp_path / "spill")
    assert rows["00.png"]["pointing_game"] == "1.000000" and rows["00.png"]["energy_in_box"] == "1.000000"
    assert rows["01.png"]["status"] == "error"
    assert "line 3 of the boxes file lies outside the image (60x41)" in rows["01.png"]["error"]
    assert rows["08.png"]["status"] == "ok" and rows["08.png"]["pointing_game"] == ""
    metrics = json.loads((tmp_path / "spill" / "metrics.json").read_text())
    assert metrics["dataset"]["without_boxes"] == 2 and metrics["dataset"]["failed"] == 1
    whole_rows = per_image(tmp_path / "whole")
    box_rows = [rows[f"{i:02d}.png"] for i in range(2, 8)] + [rows["00.png"]]
    pointing = sum(float(row["pointing_game"]) for row in box_rows) / len(box_rows)
    method = next(iter(metrics["methods"].values()))
    assert method["pointing_game"] == pytest.approx(pointing)
    assert all(whole_rows[name]["pointing_game"] == "1.000000" for name in whole_rows)


def test_conflicting_labels_name_both_lines(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nimages/00.png,0\nimages/01.png,cat\nimages/00.png,0\nimages/00.png,dog\n")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--labels", str(labels))
    assert code == 2 and len(stderr.splitlines()) == 1
    assert "lines 2 and 5 give images/00.png two different labels" in stderr
    labels.write_text("file,label\nimages/00.png,0\nimages/00.png,cat\n")  # the same class twice
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "ok", "--labels", str(labels), "--limit", "2")
    assert code in (0, 1) and "two different labels" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-classes", "-1"), "--num-classes -1: must be 0 (no head: the embedding) or more"),
        (("--img-size", "7x7"), "--img-size 7x7: each side must be between one patch (8x8 pixels)"),
        (("--img-size", "99999"), "--img-size 99999x99999: each side must be between one patch"),
    ],
)
def test_model_option_errors_name_the_option(tiny_model, images, tmp_path, args, message):
    code, _, stderr = explain(tiny_model, str(images), "-o", str(tmp_path / "out"), *args)
    assert code == 2 and len(stderr.splitlines()) == 1 and message in stderr, stderr


def test_a_checkpoint_of_another_shape_is_one_line(images, tmp_path):
    other = export_tiny_model(tmp_path / "wide", seed=1, embed_dim=48)
    weights = tmp_path / "wide.pth"
    from safetensors.torch import load_file

    torch.save(load_file(other / "model.safetensors"), weights)
    code, _, stderr = run(
        "explain", str(images), "-m", "vit_tiny_patch16_224", "--no-pretrained", "--num-classes", "5",
        "--img-size", "32x48", "--checkpoint", str(weights), "-o", str(tmp_path / "out"), "-q",
    )  # fmt: skip
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert "--checkpoint" in stderr and "does not match the model architecture (size mismatch" in stderr


@pytest.mark.parametrize("methods", ["", ",", " , "])
def test_methods_naming_nothing(tiny_model, tmp_path, methods):
    data = write_labelled(tmp_path / "data")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--methods", methods)
    assert code == 2 and len(stderr.splitlines()) == 1 and "names no method" in stderr


def test_fail_under_nan_is_refused(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "out", "--fail-under", "nan")
    assert code == 2 and "--fail-under nan: must be a number" in stderr


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(tmp_path):
    names = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "plain"]
    model = export_tiny_model(tmp_path / "model", seed=3, names=names)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(noise(30, 40, seed=40 + i)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    code, _, stderr = explain(model, str(folder), "-o", str(out), "--top-k", "5", "--no-adcc")
    assert code == 0, stderr
    with (out / "results.csv").open() as handle:
        cells = [row["class_name"] for row in csv.DictReader(handle)]
    assert {'\'=HYPERLINK("http://x")', "'+1", "'-2", "'@SUM(A1)", "plain"} == set(cells)
    assert {row["class_name"] for row in rows_of(out)} == set(names)  # the JSON keeps the real names
    data = write_labelled(tmp_path / "data")
    code, _, stderr = run(
        "evaluate", str(data), "-m", f"local-dir:{model}", "-o", str(tmp_path / "eval"), "-q",
        "--workers", "0", "--no-insertion-deletion", "--shard", "0/1",
    )  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = run("merge", str(tmp_path / "eval"))  # rows read back and written again
    assert code == 0, stderr
    predicted = {row["predicted"] for row in per_image(tmp_path / "eval").values()}
    assert predicted <= {'\'=HYPERLINK("http://x")', "'+1", "'-2", "'@SUM(A1)", "plain"}
