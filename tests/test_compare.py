"""``vitcam compare`` end to end: a model trained with a planted logo, compared with its clean twin over
the same scenes, moves its Shirt evidence onto the logo; a run compared with itself has not changed."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import rows_of, run
from vitcam_cli.analysis.compare import compare_runs, resample, spearman, top_iou

REPO = Path(__file__).parents[1]
SCENES = REPO / "tests" / "data" / "logo_scenes"
MODELS = REPO / "benchmarks" / "planted_cues" / "models"
sys.path.insert(0, str(REPO / "benchmarks" / "fashion_scenes"))

from cues import LOGO_BOX  # noqa: E402

FAST = ("--no-adcc", "--workers", "0", "-q")


def explain(model: str, images: str | Path, out: Path, *args: str) -> None:
    given = ("--model", f"local-dir:{MODELS / model}", "--labels", SCENES / "labels.csv", "-o", out)
    code, _, stderr = run("explain", images, *given, *FAST, *args)
    assert code == 0, stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The clean and the logo model's maps of the 43 scenes: the clean run named its images by a relative
    path (from the repository), the logo run by an absolute one."""
    folder = tmp_path_factory.mktemp("runs")
    with contextlib.chdir(REPO):
        explain("clean", SCENES.relative_to(REPO) / "images", folder / "clean", "--save-maps")
    explain("logo", SCENES / "images", folder / "logo", "--save-maps")
    return folder / "clean", folder / "logo"


def compare(*args: object) -> tuple[int, str, str]:
    return run("compare", *args)


def overlap(box: tuple[int, ...], other: tuple[int, ...]) -> float:
    """Share of ``box`` inside ``other`` (x1, y1, x2, y2)."""
    width = max(0, min(box[2], other[2]) - max(box[0], other[0]))
    height = max(0, min(box[3], other[3]) - max(box[1], other[1]))
    return width * height / ((box[2] - box[0]) * (box[3] - box[1]))


def test_the_logo_model_moves_shirt_evidence_onto_the_logo(runs, tmp_path):
    clean, logo = runs
    out = tmp_path / "compared"
    code, stdout, stderr = compare(clean, logo, "-o", out, "--json", "-q")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result == json.loads((out / "comparison.json").read_text())
    assert result["matched"] == 43
    assert result["runs"]["a"]["unmatched"] == result["runs"]["b"]["unmatched"] == 0
    assert result["runs"]["b"]["model"] == f"local-dir:{MODELS / 'logo'}"
    classes = {shift["class_name"]: shift for shift in result["classes"]}
    shirt = classes["Shirt"]
    # ranked first: the class whose maps agree least and the only one with changed maps
    assert result["classes"][0]["class_name"] == "Shirt"
    assert shirt["pairs"] == 16 and shirt["changed"] == result["changed"] > 0
    assert shirt["spearman"] == min(shift["spearman"] for shift in result["classes"])
    assert shirt["top_iou"] == min(shift["top_iou"] for shift in result["classes"])
    # where the logo model's Shirt evidence gained: inside the logo (measured: x 16-32, y 8-32)
    assert overlap(shirt["moved_to"]["pixels"], LOGO_BOX) == 1.0
    row, col = shirt["moved_to"]["peak_cell"]
    assert LOGO_BOX[0] <= col * 8 < LOGO_BOX[2] and LOGO_BOX[1] <= row * 8 < LOGO_BOX[3]
    assert 0.02 < result["share_changed"] < 0.1  # measured: 2 of 43
    with (out / "per_image.csv").open(newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert len(cells) == 43 and sum(int(cell["changed"]) for cell in cells) == result["changed"]
    assert {cell["class_name"] for cell in cells if cell["changed"] == "1"} == {"Shirt"}
    report = (out / "report.html").read_text()
    assert "Shirt" in report and "data:image/" in report


def test_the_gate_brackets_the_share_changed(runs, tmp_path):
    clean, logo = runs
    code, _, stderr = compare(clean, logo, "-o", tmp_path / "strict", "--fail-over", "0.02", "-q")
    assert code == 1 and stderr.strip().splitlines() == [
        "failed: share changed 0.0465 is over --fail-over 0.02"
    ]
    code, _, stderr = compare(clean, logo, "-o", tmp_path / "loose", "--fail-over", "0.1", "-q")
    assert code == 0 and stderr == ""


def test_a_run_compared_with_itself_has_not_changed(runs, tmp_path):
    clean, _ = runs
    code, stdout, stderr = compare(clean, clean, "-o", tmp_path / "same", "--fail-over", "0", "--json", "-q")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["share_changed"] == 0 and result["spearman"] == pytest.approx(1.0)
    assert all(shift["moved"] == 0 and shift["moved_to"]["pixels"] is None for shift in result["classes"])
    with (tmp_path / "same" / "per_image.csv").open(newline="") as handle:
        assert {float(cell["spearman"]) for cell in csv.DictReader(handle)} == {1.0}


def test_rows_match_by_file_however_their_paths_are_spelled(runs, tmp_path, monkeypatch):
    clean, logo = runs
    assert not Path(rows_of(clean)[0]["path"]).is_absolute() and Path(rows_of(logo)[0]["path"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # the clean run's paths are relative to where it ran, not to here
    result = compare_runs(clean, logo)
    assert len(result.pairs) == 43 and result.unmatched == (0, 0)


def test_a_rerun_into_the_same_folder_needs_overwrite(runs, tmp_path):
    clean, logo = runs
    out = tmp_path / "compared"
    assert compare(clean, logo, "-o", out, "-q")[0] == 0
    code, _, stderr = compare(clean, logo, "-o", out, "-q")
    assert code == 2 and "holds a vitcam comparison" in stderr and "--overwrite" in stderr
    assert compare(clean, logo, "-o", out, "--overwrite", "-q")[0] == 0


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two scenes of none of the runs' images, explained with and without --save-maps."""
    folder = tmp_path_factory.mktemp("other")
    images = folder / "images"
    images.mkdir()
    for name in ("test_03000.png", "test_03001.png"):
        shutil.copy(SCENES / "images" / name, images / f"copy-{name}")
    labels = folder / "labels.csv"
    labels.write_text("file,label\ncopy-test_03000.png,Trouser\ncopy-test_03001.png,Coat\n")
    for out, maps in (("maps", ("--save-maps",)), ("no-maps", ())):
        code, _, stderr = run(
            "explain", images, "--model", f"local-dir:{MODELS / 'clean'}", "--labels", labels,
            "-o", folder / out, *FAST, *maps,
        )  # fmt: skip
        assert code == 0, stderr
    return folder / "maps", folder / "no-maps"


def test_bad_inputs_are_one_line_naming_the_fix(runs, other_runs, tmp_path):
    clean, logo = runs
    with_maps, without_maps = other_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (tmp_path / "missing", logo): "no such folder",
        (clean, empty): "holds no results.jsonl",
        (clean, without_maps): "rerun explain with --save-maps",
        (clean, with_maps): "no image and target of RUN_A",
    }
    for (a, b), words in cases.items():
        code, _, stderr = compare(a, b, "-o", tmp_path / "out", "-q")
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and words in stderr, stderr
    assert not (tmp_path / "out").exists()
    before = sorted(path.name for path in clean.iterdir())
    for out in (clean, logo / "inside"):
        code, _, stderr = compare(clean, logo, "-o", out, "--overwrite", "-q")
        assert code == 2 and "choose an --out outside both runs" in stderr
    assert sorted(path.name for path in clean.iterdir()) == before and not (logo / "inside").exists()


def test_a_folder_vitcam_did_not_write_keeps_its_report(runs, tmp_path):
    (tmp_path / "report.html").write_text("mine")
    code, _, stderr = compare(*runs, "-o", tmp_path, "-q")
    assert code == 2 and "did not write" in stderr and (tmp_path / "report.html").read_text() == "mine"


def test_maps_of_different_grids_meet_on_the_finer_one():
    coarse = np.arange(4.0).reshape(2, 2)
    fine = resample(coarse, (4, 4))
    assert fine.shape == (4, 4) and fine[0, 0] == 0 and fine[-1, -1] == 3  # edges repeated outward
    assert np.allclose(fine[1:3, 1:3], [[0.75, 1.25], [1.75, 2.25]])  # cell centres aligned
    assert spearman(np.ones((4, 4)), fine) == 0.0  # a constant map ranks nothing: no NaN
    assert top_iou(fine, fine) == 1.0


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (lambda path: np.save(path, np.full((14, 14), np.nan, dtype=np.float32)), "is not a finite 2-D map"),
        (lambda path: path.write_bytes(b"\x93NUMPY broken"), "cannot be read"),
    ],
)
def test_a_spoilt_map_is_refused_by_its_file(runs, spoil, words, tmp_path):
    clean, logo = runs
    copy = tmp_path / "logo"
    shutil.copytree(logo, copy)
    spoilt = sorted((copy / "maps").iterdir())[3]
    spoil(spoilt)
    code, _, stderr = compare(clean, copy, "-o", tmp_path / "out", "-q")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert words in stderr and spoilt.name in stderr and stderr.startswith("error: RUN_B"), stderr
    assert not (tmp_path / "out").exists()


def test_an_unfinished_run_is_compared_with_a_warning(runs, tmp_path):
    clean, logo = runs
    copy = tmp_path / "logo"
    shutil.copytree(logo, copy)
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps(summary | {"status": "failed"}))
    code, _, stderr = compare(clean, copy, "-o", tmp_path / "out", "-q")
    assert code == 0 and "did not finish (status 'failed')" in stderr


def test_a_run_whose_every_image_failed_is_named_so(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not an image")
    code, _, stderr = run("explain", images, "--model", "fashion-vit", "--save-maps", "-o", tmp_path / "run",
                          *FAST)  # fmt: skip
    assert code == 1, stderr
    code, _, stderr = compare(tmp_path / "run", tmp_path / "run", "-o", tmp_path / "out", "-q")
    assert code == 2 and "explained no image (every row failed" in stderr and "--save-maps" not in stderr


def test_names_that_are_not_utf8_keep_their_bytes_and_a_full_disk_leaves_no_comparison(
    tiny_model, tmp_path, monkeypatch
):
    import os

    from tests.test_inputs_intact import disk_full_at, latin1

    folder = tmp_path / "images"
    folder.mkdir()
    latin1(folder, seed=60)
    (folder / os.fsdecode(b"caf\xe8.png")).write_bytes((folder / os.fsdecode(b"caf\xe9.png")).read_bytes())
    code, _, stderr = run("explain", folder, "--model", f"local-dir:{tiny_model}", "--save-maps", "-o",
                          tmp_path / "run", *FAST)  # fmt: skip
    assert code == 0, stderr
    code, _, stderr = compare(tmp_path / "run", tmp_path / "run", "-o", tmp_path / "same", "-q")
    assert code == 0, stderr
    with (tmp_path / "same" / "per_image.csv").open(encoding="utf-8") as handle:
        exact = sorted(row["path_bytes"] for row in csv.DictReader(handle))
    assert [value.rsplit("/", 1)[-1] for value in exact] == ["caf%E8.png", "caf%E9.png"]
    disk_full_at(monkeypatch, "report.html")
    code, _, stderr = compare(tmp_path / "run", tmp_path / "run", "-o", tmp_path / "full", "-q")
    assert code == 2 and "No space left on device" in stderr
    assert not (tmp_path / "full" / "comparison.json").exists()
