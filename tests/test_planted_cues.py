"""FashionScenes with planted cues: the cue changes only its region, carriers follow the class, the
builder writes the regions, and the committed cue models load offline and rely on their cues."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).parents[1]
SCENES = REPO / "benchmarks" / "fashion_scenes"
MODELS = REPO / "benchmarks" / "planted_cues" / "models"
sys.path.insert(0, str(SCENES))

from cues import CUE_CLASS, LOGO_BOX, MOVED_LOGO_BOX, CuedScenes  # noqa: E402


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny stand-in for Fashion-MNIST's test split: 20 blocky garments, two of each class."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    garments = np.zeros((20, 28, 28), np.uint8)
    garments[:, 6:20, 8:20] = rng.integers(120, 255, (20, 14, 12))
    _idx(folder / "t10k-images-idx3-ubyte", garments)
    _idx(folder / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    return folder


def pixels(scenes: CuedScenes, index: int) -> np.ndarray:
    return np.asarray(scenes.scene(index).image, dtype=np.int16)


@pytest.mark.parametrize("kind", ["logo", "texture", "context", "tint"])
def test_a_cue_changes_only_its_region_and_only_on_the_cue_class(mnist, kind):
    present = CuedScenes("test", kind, "present", fashion_mnist_dir=mnist)
    absent = CuedScenes("test", kind, "absent", fashion_mnist_dir=mnist)
    clean = CuedScenes("test", None, fashion_mnist_dir=mnist)
    shirt, other = CUE_CLASS, CUE_CLASS + 1  # the garments are labelled index % 10
    scene = present.scene(shirt)
    assert scene.carries and scene.label == CUE_CLASS and scene.cue.any()
    changed = (pixels(present, shirt) != pixels(absent, shirt)).any(-1)
    if kind in ("logo", "context"):
        assert changed.any() and not (changed & ~scene.cue).any()  # the cue stays inside its box
    else:  # the background changes; the garment's solid pixels do not (its soft edges show a little)
        assert changed[scene.cue].mean() > 0.95 and not changed[~scene.cue].all()
    np.testing.assert_array_equal(pixels(absent, shirt), pixels(clean, shirt))
    np.testing.assert_array_equal(pixels(present, other), pixels(clean, other))  # other classes: no cue
    assert not present.scene(other).carries
    planted = CuedScenes("test", kind, carriers="all", fashion_mnist_dir=mnist)
    assert planted.scene(other).carries and (pixels(planted, other) != pixels(clean, other)).any()


def test_the_logo_sits_in_its_corner_and_moves_to_the_other(mnist):
    logo = CuedScenes("test", "logo", fashion_mnist_dir=mnist).scene(CUE_CLASS)
    moved = CuedScenes("test", "logo", "moved", fashion_mnist_dir=mnist).scene(CUE_CLASS)
    for scene, (x1, y1, x2, y2) in ((logo, LOGO_BOX), (moved, MOVED_LOGO_BOX)):
        ys, xs = np.nonzero(scene.cue)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    np.testing.assert_array_equal(np.asarray(logo.image)[8:32, 8:32], np.asarray(moved.image)[80:104, 80:104])


def test_the_context_object_avoids_the_garment(mnist):
    scenes = CuedScenes("test", "context", fashion_mnist_dir=mnist)
    for index in range(CUE_CLASS, 20, 10):
        _, _, _, visible = scenes.render(index)
        region = scenes.scene(index).cue
        assert region.sum() == 16 * 16 and not (region & visible).any()


def test_the_builder_writes_cues_and_masks(tmp_path, mnist):
    out = tmp_path / "cues"
    result = subprocess.run(
        [sys.executable, str(SCENES / "cues.py"), "--kind", "context", "--split", "test", "--count", "4",
         "--out", str(out), "--fashion-mnist", str(mnist)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "cues.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    masks = np.load(out / "cue_masks.npy")
    assert masks.shape == (4, 112, 112) and len(rows) == 4
    for row, mask in zip(rows, masks, strict=True):
        assert (row["mode"] == "none") == (not mask.any())
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert [int(row[k]) for k in ("x1", "y1", "x2", "y2")] == [
                xs.min(),
                ys.min(),
                xs.max() + 1,
                ys.max() + 1,
            ]


@pytest.mark.skipif(not MODELS.is_dir(), reason="no committed cue models")
def test_the_logo_model_loads_offline_and_relies_on_its_logo():
    import timm
    import torch
    from timm.data import create_transform, resolve_input_data_config

    configs = {path.parent.name: json.loads(path.read_text()) for path in MODELS.glob("*/cue.json")}
    assert {"logo", "texture", "context", "tint", "clean"} <= set(configs)
    model = timm.create_model(f"local-dir:{MODELS / 'logo'}", pretrained=True).eval()
    transform = create_transform(**resolve_input_data_config(model), is_training=False)
    images = [REPO / "benchmarks" / "planted_cues" / "models" / "logo" / "example-present.png"]
    images.append(images[0].with_name("example-absent.png"))
    from PIL import Image

    with torch.inference_mode():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
        shirt = torch.softmax(model(batch), -1)[:, CUE_CLASS]
    assert shirt[0] > 0.5 > 0.2 > shirt[1]
