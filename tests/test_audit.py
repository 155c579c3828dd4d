"""``vitcam audit`` through the real entry point: on a model trained to rely on a planted logo it reports
the logo's class first, proven by intervention, over the logo; on its clean twin and the bundled model,
nothing; strategies split a class explained two ways; the Python API finds the same.

The scenes are FashionScenes test scenes 3000-3188 with the logo on every Shirt (16 Shirts, 3 of every
other class; ``plain/`` the same scenes without it), rendered by ``benchmarks/fashion_scenes/cues.py``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_SCENES
from tests.test_cli import rows_of, run
from vitcam_cli import Explainer
from vitcam_cli.errors import ParameterError

REPO = Path(__file__).parents[1]
SCENES = Path(__file__).parent / "data" / "logo_scenes"
MODELS = REPO / "benchmarks" / "planted_cues" / "models"
LOGO = (8, 8, 32, 32)  # x1, y1, x2, y2 of the logo in the 112 x 112 scenes


def audit(model: str, images: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return run("audit", str(images), "--model", model, "--labels", str(SCENES / "labels.csv"), "--workers",
               "0", "-q", "-o", str(out), *args)  # fmt: skip


def findings(out: Path) -> dict:
    return json.loads((out / "findings.json").read_text())


def verified(out: Path) -> list[dict]:
    return [item for item in findings(out)["shortcuts"] if item["verified"]]


def covers(region: list[int], box: tuple[int, int, int, int]) -> bool:
    return region[0] <= box[0] and region[1] <= box[1] and region[2] >= box[2] and region[3] >= box[3]


@pytest.mark.parametrize("model", ["logo", "logo-d6"])
def test_the_planted_logo_is_the_first_verified_finding(model, tmp_path):
    out = tmp_path / "audit"
    code, _, stderr = audit(f"local-dir:{MODELS / model}", SCENES / "images", out)
    assert code == 0, stderr
    found = verified(out)
    assert found and found[0]["class_name"] == "Shirt" and covers(found[0]["region"], LOGO)
    first = found[0]
    assert first["relative_drop"]["low"] >= 0.5 and first["pasted_gain"]["low"] >= 0.1
    assert first["probability_drop"]["mean"] > 0.5 and len(first["images"]) > 0
    result = findings(out)
    assert len(result["classes"]) == 10 and result["classes"][0]["class_name"] == "Shirt"  # most images first
    shirt = next(item for item in result["classes"] if item["class_name"] == "Shirt")
    assert shirt["images"] == 16 and np.load(out / shirt["evidence"]).shape == (14, 14)
    assert Image.open(out / shirt["picture"]).size == (112, 112)
    assert result["method"]["label"] == "reciprocam:fused" and len(rows_of(out)) == 43
    page = (out / "report.html").read_text()
    assert "verified shortcut" in page and "Shirt" in page


@pytest.mark.parametrize(("model", "images"), [("clean", SCENES / "plain"), ("clean-d6", SCENES / "plain")])
def test_the_clean_twins_have_no_verified_finding(model, images, tmp_path):
    code, _, stderr = audit(f"local-dir:{MODELS / model}", images, tmp_path / "audit")
    assert code == 0, stderr
    assert verified(tmp_path / "audit") == []


def test_the_bundled_model_has_no_verified_finding_and_boxes_share_its_evidence(tmp_path):
    out = tmp_path / "audit"
    code, _, stderr = run("audit", str(SAMPLE_SCENES / "images"), "--model", "fashion-vit", "--labels",
                          str(SAMPLE_SCENES / "labels.csv"), "--boxes", str(SAMPLE_SCENES / "boxes.csv"),
                          "--workers", "0", "-q", "-o", str(out))  # fmt: skip
    assert code == 0, stderr
    assert verified(out) == []
    classes = findings(out)["classes"]
    outside = [item["outside_boxes"] for item in classes]
    assert len(classes) == 10 and all(0.0 <= share <= 1.0 for share in outside)
    assert outside == sorted(outside, reverse=True)  # ranked: the most evidence outside the objects first


def test_a_class_explained_two_ways_gets_two_strategies(tmp_path):
    """Half the Shirts carry the logo and half do not: the audit groups them apart."""
    with (SCENES / "labels.csv").open() as handle:
        labels = {row["file"]: row["label"] for row in csv.DictReader(handle)}
    shirts = sorted(name for name, label in labels.items() if label == "Shirt")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, name in enumerate(shirts):
        source = SCENES / ("images" if index < 8 else "plain") / name
        (mixed / name).write_bytes(source.read_bytes())
    explainer = Explainer(f"local-dir:{MODELS / 'logo'}")
    result = explainer.audit(sorted(mixed.iterdir()), labels=["Shirt"] * 16)
    groups = [sorted(strategy.images) for strategy in next(iter(result.strategies.values()))]
    assert sorted(groups) == [list(range(8)), list(range(8, 16))]
    assert result.tests == []  # a single class: nothing to stand out from


def test_the_api_finds_the_logo_too(tmp_path):
    with (SCENES / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    explainer = Explainer(f"local-dir:{MODELS / 'logo'}")
    result = explainer.audit(
        [SCENES / "images" / row["file"] for row in rows], labels=[row["label"] for row in rows]
    )
    assert result.findings and result.findings[0].candidate.evidence.class_name == "Shirt"
    data = result.to_json()
    assert data["shortcuts"][0]["verified"] and covers(data["shortcuts"][0]["region"], LOGO)


def test_resume_reruns_the_analysis_and_overwrite_removes_its_files(tmp_path):
    out = tmp_path / "audit"
    model = f"local-dir:{MODELS / 'logo'}"
    assert audit(model, SCENES / "images", out)[0] == 0
    first = findings(out)
    code, _, stderr = audit(model, SCENES / "images", out, "--skip-existing")
    assert code == 0, stderr
    assert findings(out)["shortcuts"] == first["shortcuts"]  # the same maps, the same interventions
    code, _, stderr = audit(model, SCENES / "images", out)
    assert code == 2 and "--skip-existing" in stderr
    (out / "notes.txt").write_text("mine")
    code, _, stderr = audit(model, SCENES / "plain", out, "--overwrite", "--candidates", "0")
    assert code == 0, stderr
    assert findings(out)["shortcuts"] == [] and (out / "notes.txt").is_file()
    code, _, stderr = audit("fashion-vit", SCENES / "plain", tmp_path / "o2", "--images-per-test", "1")
    assert code == 2 and stderr.count("\n") == 1 and "--images-per-test" in stderr


def test_relevance_maps_with_labels_through_the_api():
    explainer = Explainer("fashion-vit", method="relevance")
    files = sorted((SAMPLE_SCENES / "images").iterdir())[:2]
    result = explainer(files, labels=["Trouser", "Dress"])
    assert result.class_names == [["Trouser"], ["Dress"]] and result.maps.std() > 0


def test_shards_merged_then_resumed_give_the_single_run_findings(tmp_path):
    """Shards explain their parts; after 'vitcam merge', a resumed audit of the merged folder analyses
    every map, and finds what a single process finds."""
    model = f"local-dir:{MODELS / 'logo'}"
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert audit(model, SCENES / "images", single)[0] == 0
    for shard in ("0/2", "1/2"):
        code, _, stderr = audit(model, SCENES / "images", sharded, "--shard", shard)
        assert code == 0, stderr
    assert not (sharded / "findings.json").exists()  # a shard alone has too few images to audit
    assert run("merge", str(sharded), "-q")[0] == 0
    code, _, stderr = audit(model, SCENES / "images", sharded, "--skip-existing")
    assert code == 0, stderr
    assert findings(sharded)["shortcuts"] == findings(single)["shortcuts"]


def test_audit_under_torchrun_analyses_on_rank_zero(tmp_path):
    from tests.test_distributed import torchrun

    ranked = tmp_path / "ranked"
    labels = ("--labels", SCENES / "labels.csv")
    model = ("--model", f"local-dir:{MODELS / 'logo'}")
    result = torchrun("audit", SCENES / "images", *model, *labels, "-o", ranked, "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    found = verified(ranked)
    assert found and found[0]["class_name"] == "Shirt" and covers(found[0]["region"], LOGO)
    assert len(rows_of(ranked)) == 43


def test_a_resumed_audit_analyses_only_the_images_still_given(tmp_path):
    """A row kept from an image no longer among the inputs cannot be intervened on: it is left out."""
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((SCENES / "images").iterdir()):
        (images / source.name).write_bytes(source.read_bytes())
    out, model = tmp_path / "audit", f"local-dir:{MODELS / 'logo'}"
    assert audit(model, images, out)[0] == 0
    (images / "test_03045.png").unlink()  # a Shirt
    code, _, stderr = audit(model, images, out, "--skip-existing")
    assert code == 0, stderr
    result = findings(out)
    assert result["images"] == 42 and len(rows_of(out)) == 43  # the kept row stays in the rows
    assert all("test_03045" not in path for item in result["shortcuts"] for path in item["images"])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("name,x1\nx.png,1\n", "must be the header"),
        ("file,x1,y1,x2,y2\ntest_03045.png,9,1,2,10\n", "needs x1 < x2"),
        ("file,x1,y1,x2,y2\nnot_there.png,1,1,10,10\n", "names none of the 43 input images"),
    ],
)
def test_a_bad_boxes_file_is_refused_before_any_image_is_explained(content, words, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(content)
    out = tmp_path / "audit"
    code, _, stderr = audit("fashion-vit", SCENES / "images", out, "--boxes", str(boxes))
    assert code == 2 and stderr.count("\n") == 1 and words in stderr and "--boxes" in stderr, stderr
    assert not (out / "results.jsonl").exists() and not (out / "maps").exists()


def test_an_audit_with_no_image_explained_says_so(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"not an image")
    out = tmp_path / "audit"
    code, _, stderr = run("audit", str(images), "--model", "fashion-vit", "--workers", "0", "-o", str(out))
    assert code == 1 and "no findings.json was written" in stderr
    assert not (out / "findings.json").exists() and (out / "report.html").is_file()


def test_the_api_checks_its_arguments_as_the_command_line_does():
    explainer = Explainer("fashion-vit")
    images = sorted((SCENES / "images").iterdir())[:4]
    cases = [
        ({"images": []}, "images"),
        ({"images": images, "images_per_test": 1}, "images_per_test=1"),
        ({"images": images, "candidates": -1}, "candidates=-1"),
        ({"images": images, "boxes": [[(9, 1, 2, 10)], [], [], []]}, "x1 < x2"),
        ({"images": images, "boxes": [[(1, 2)], [], [], []]}, "each box is"),
        ({"images": images, "boxes": [[]]}, "one list of boxes per image"),
    ]
    for arguments, words in cases:
        with pytest.raises(ParameterError, match=re.escape(words)):
            explainer.audit(**arguments)
    with pytest.raises(ParameterError, match="each box is"):
        explainer.scores(explainer(images[:1]), boxes=[[(1, 2)]])


def test_the_audit_names_itself_and_counts_in_words(tmp_path):
    """Its summary is titled as the audit's, and a class of one image is "1 image" on its page."""
    with (SCENES / "labels.csv").open() as handle:
        first_of_each = {row["label"]: row["file"] for row in reversed(list(csv.DictReader(handle)))}
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(first_of_each.values())[:3]:
        (few / name).write_bytes((SCENES / "images" / name).read_bytes())
    out = tmp_path / "audit"
    code, _, stderr = run("audit", str(few), "--model", f"local-dir:{MODELS / 'logo'}", "--labels",
                          str(SCENES / "labels.csv"), "--workers", "0", "-o", str(out))  # fmt: skip
    assert code == 0, stderr
    assert "vitcam audit" in stderr and "vitcam explain" not in stderr, stderr
    page = (out / "report.html").read_text()
    assert " · 1 image</h3>" in page and "1 images" not in page
