"""Real-size photos: reduced JPEG decoding, overlay formats and sizes, --no-overlays, the run's outputs."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image
from timm.data import create_transform

from tests.conftest import noise
from tests.test_cli import explain, rows_of, run
from vitcam_cli.data import DecodePlan, decode_image, decode_reduced, discover, output_folders
from vitcam_cli.models import load_model
from vitcam_cli.outputs.overlay import heat_indices, min_max, render_overlay, view_in
from vitcam_cli.preprocessing import Preprocessing
from vitcam_cli.turns import Turns


def ramp(width: int, height: int) -> np.ndarray:
    """Red encodes x, green y (0..255), blue a checker of 100-px cells: any flip or turn shows."""
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    cells = ((np.arange(height)[:, None] // 100 + np.arange(width)[None, :] // 100) % 2) * 255
    return np.stack([xs, ys, cells], -1).round().astype(np.uint8)


def phone_jpeg(path: Path, width: int = 1600, height: int = 1200, turned: bool = True) -> np.ndarray:
    """A JPEG shown as ``width`` x ``height``; with ``turned``, stored on its side with EXIF orientation 6
    (as phones store portrait shots). Returns the pixels as shown."""
    shown = ramp(width, height)
    stored = Image.fromarray(shown)
    exif = Image.Exif()
    if turned:
        stored = stored.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back clockwise
        exif[ExifTags.Base.Orientation] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return shown


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Two large JPEGs (one stored on its side), a small JPEG and a small PNG."""
    root = tmp_path / "photos"
    root.mkdir()
    phone_jpeg(root / "portrait.jpg", 1200, 1600)
    phone_jpeg(root / "landscape.jpg", 1600, 1200, turned=False)
    Image.fromarray(noise(60, 90, seed=1)).save(root / "small.jpg", quality=90)
    Image.fromarray(noise(40, 50, seed=2)).save(root / "small.png")
    return root


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_reduced_decode_keeps_orientation_and_the_model_view(tmp_path, crop_mode):
    shown = phone_jpeg(tmp_path / "p.jpg", 1200, 1600)
    transform = create_transform(input_size=(3, 48, 32), crop_pct=0.875, crop_mode=crop_mode)
    preprocessing = Preprocessing(transform)
    plan = DecodePlan(preprocessing, overlay_side=200)

    image, size = decode_reduced(tmp_path / "p.jpg", plan.first_decode)
    assert size == (1200, 1600) and image.size[0] < 1200  # the decoder reduced it, the size is the shown one
    tensor, copy, original = plan.decode(tmp_path / "p.jpg")
    assert original == (1200, 1600) and copy.shape == (200, 150, 3)
    reference = transform(Image.fromarray(shown))  # the whole original, as timm would read it
    # one model pixel of misalignment moves the ramp by about 5 levels; rounding and draft() by at most 2
    difference = (preprocessing.finish(tensor[None])[0] - reference).abs() * 0.229 * 255
    assert difference.max() < 2.5, difference.max()
    # the overlay copy is the shown image, scaled: the same ramp at the same places
    expected = np.asarray(Image.fromarray(shown).resize((150, 200), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(copy[..., :2].astype(int) - expected[..., :2]).max() <= 3


def test_maps_do_not_depend_on_the_overlay_settings(tiny_model, photos, tmp_path):
    maps = {}
    for name, args in {
        "default": (),
        "none": ("--no-overlays",),
        "original": ("--overlay-size", "original", "--overlay-format", "png"),
        "small": ("--overlay-size", "40"),
    }.items():
        out = tmp_path / name
        assert explain(tiny_model, str(photos), "-o", str(out), "--save-maps", *args)[0] == 0
        maps[name] = {path.name: np.load(path) for path in (out / "maps").glob("*.npy")}
    assert len(maps["default"]) == 4
    for name in ("none", "original", "small"):
        for file, values in maps["default"].items():
            assert np.array_equal(maps[name][file], values), (name, file)


def test_default_overlays_jpeg_for_jpeg_inputs_and_bounded_in_size(tiny_model, photos, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(photos), "-o", str(out))[0] == 0
    rows = {Path(row["path"]).name: row for row in rows_of(out)}
    expected = {
        "portrait.jpg": ("overlays/portrait.jpg.jpg", "JPEG", (576, 768), (1200, 1600)),
        "landscape.jpg": ("overlays/landscape.jpg.jpg", "JPEG", (768, 576), (1600, 1200)),
        "small.jpg": ("overlays/small.jpg.jpg", "JPEG", (90, 60), (90, 60)),  # stems shared: names keep
        "small.png": ("overlays/small.png.png", "PNG", (50, 40), (50, 40)),  # the source's full name
    }
    for name, (link, kind, overlay_size, original) in expected.items():
        row = rows[name]
        assert row["overlay"] == link and (row["width"], row["height"]) == original
        with Image.open(out / link) as overlay:
            assert overlay.format == kind and overlay.size == overlay_size


@pytest.mark.parametrize(("choice", "kind"), [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_overlay_format_and_size_options(tiny_model, photos, tmp_path, choice, kind):
    out = tmp_path / choice
    code, _, stderr = explain(
        tiny_model, str(photos), "-o", str(out), "--overlay-format", choice, "--overlay-size", "64"
    )
    assert code == 0, stderr
    for row in rows_of(out):
        assert row["overlay"].endswith(f".{choice}")
        with Image.open(out / row["overlay"]) as overlay:
            assert overlay.format == kind and max(overlay.size) == min(64, max(row["width"], row["height"]))
    assert json.loads((out / "summary.json").read_text())["settings"]["overlays"] == {
        "format": choice,
        "size": 64,
    }


def test_original_size_overlays_line_up_with_the_original(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    phone_jpeg(folder / "p.jpg", 1200, 1600)
    out = tmp_path / "out"
    args = ("--overlay-size", "original", "--overlay-format", "png", "--alpha", "0")
    assert explain(tiny_model, str(folder), "-o", str(out), *args)[0] == 0
    overlay = np.asarray(Image.open(out / "overlays/p.jpg.png")).astype(int)
    assert overlay.shape == (1600, 1200, 3)
    # alpha 0: the image itself inside the model's view, dimmed outside it
    original = np.asarray(decode_image(folder / "p.jpg")).astype(int)
    transform = load_model(f"local-dir:{tiny_model}").transform
    x0, y0, x1, y1 = (round(v) for v in Preprocessing(transform).view((1200, 1600)))
    inside = (slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))
    assert np.abs(overlay[inside] - original[inside]).max() <= 1
    assert np.abs(overlay[:, : x0 - 1] - (original[:, : x0 - 1] + 1) // 2).max() <= 1


def test_no_overlays_writes_rows_maps_and_a_report_with_thumbnails(tiny_model, photos, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(photos), "-o", str(out), "--no-overlays", "--save-maps")
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 4 and all(row["overlay"] is None and row["map"] for row in rows)
    assert not (out / "overlays").exists()
    assert (out / "report.html").read_text().count("data:image/jpeg;base64") == 8  # each photo, its map
    (out / rows[0]["map"]).unlink()  # resuming redoes what lacks a file, and needs no overlays
    code, _, stderr = explain(
        tiny_model, str(photos), "-o", str(out), "--no-overlays", "--save-maps", "--skip-existing"
    )
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["skipped"] == 3 and summary["settings"]["overlays"] is None
    code, _, stderr = explain(tiny_model, str(photos), "-o", str(out), "--save-maps", "--skip-existing")
    assert code == 2 and "different overlays settings" in stderr


@pytest.mark.parametrize("choice", ["png", "jpg", "webp"])
def test_resume_and_merge_with_every_format(tiny_model, photos, tmp_path, choice):
    out = tmp_path / "out"
    args = ("--overlay-format", choice, "--overlay-size", "100")
    for index in range(2):
        assert explain(tiny_model, str(photos), "-o", str(out), "--shard", f"{index}/2", *args)[0] == 0
    first = next(out.glob(f"overlays/*.{choice}"))
    first.unlink()
    assert (
        explain(tiny_model, str(photos), "-o", str(out), "--shard", "0/2", "--skip-existing", *args)[0] == 0
    )
    assert (
        explain(tiny_model, str(photos), "-o", str(out), "--shard", "1/2", "--skip-existing", *args)[0] == 0
    )
    assert first.is_file()
    code, _, stderr = run("merge", str(out), "-q")
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 4 and all((out / row["overlay"]).is_file() for row in rows)
    assert all(row["overlay"].endswith(f".{choice}") for row in rows)


def test_bad_overlay_options_are_one_line(tiny_model, photos, tmp_path):
    for args, message in (
        (("--overlay-size", "0"), "--overlay-size 0"),
        (("--overlay-size", "huge"), "--overlay-size huge"),
        (("--overlay-format", "gif"), "--overlay-format"),
    ):
        code, _, stderr = explain(tiny_model, str(photos), "-o", str(tmp_path / "o"), *args)
        assert code == 2 and message in stderr, stderr


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_outputs_inside_an_input_folder_are_not_explained(tiny_model, photos, where):
    out = photos / "results" if where == "inside" else photos
    for again in ([], ["--overwrite"]):
        code, _, stderr = explain(tiny_model, str(photos), "-o", str(out), "--save-maps", *again)
        assert code == 0, stderr
        assert len(rows_of(out)) == 4
    assert len(discover([str(photos)], skip=output_folders(out))) == 4
    assert len(discover([str(photos)])) == 4  # an earlier run's folder is known by its marker too
    (out / ".vitcam-output").unlink()
    assert len(discover([str(photos)])) == 8  # without either rule, the overlays would be inputs


def test_heat_indices_equal_torch_bilinear_upsampling():
    saliency = torch.rand(5, 7, generator=torch.Generator().manual_seed(0))
    for size in ((5, 7), (31, 17), (224, 300), (3, 2)):
        reference = F.interpolate(
            min_max(saliency)[None, None], size=size, mode="bilinear", align_corners=False
        )
        expected = (reference[0, 0] * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        assert np.abs(heat_indices(saliency, size).astype(int) - expected).max() <= 1


def test_overlay_on_a_reduced_copy_lines_up_like_on_the_original():
    original = np.full((400, 600, 3), 200, dtype=np.uint8)
    saliency = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    view = (150.0, 0.0, 450.0, 400.0)
    full = render_overlay(original, saliency, view, "gray", alpha=1.0)
    copy = render_overlay(original[::4, ::4], saliency, view_in((150, 100), (600, 400), view), "gray", 1.0)
    assert np.abs(full[::4, ::4].astype(int) - copy.astype(int)).mean() < 3


def _wait_then_report(turns: Turns, started: multiprocessing.Event, done: multiprocessing.Event) -> None:
    started.set()
    turns.wait()
    done.set()


def test_turns_hold_workers_while_the_engine_runs():
    turns = Turns(enabled=True)
    started, done = multiprocessing.Event(), multiprocessing.Event()
    with turns.engine():
        worker = multiprocessing.get_context("fork").Process(
            target=_wait_then_report, args=(turns, started, done)
        )
        worker.start()
        assert started.wait(10)
        assert not done.wait(0.3)  # held while the engine has its turn
    assert done.wait(10)  # released when the turn ends
    worker.join(10)
    Turns(enabled=False).wait()  # on a GPU nothing waits


def test_explain_with_decoding_workers_on_the_cpu(tiny_model, photos, tmp_path):
    out = tmp_path / "out"  # the workers take turns with the engine, batch after batch
    code, _, stderr = run(
        "explain", str(photos), "--model", f"local-dir:{tiny_model}", "-o", str(out), "-q", "--workers", "2",
        "-b", "1",
    )  # fmt: skip
    assert code == 0, stderr
    assert len(rows_of(out)) == 4
