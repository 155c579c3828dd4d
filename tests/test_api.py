"""The Python API: the README's example, the same maps as the command line, typed errors, a light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.conftest import SAMPLE_SCENES
from tests.test_cli import run
from vitcam_cli import Explainer
from vitcam_cli.errors import ParameterError, VitcamError
from vitcam_cli.models import BUNDLED_MODELS

PHOTOS = Path(__file__).parents[1] / "sample_images" / "photos"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer("fashion-vit", method="reciprocam", device="cpu")


@pytest.fixture(scope="module")
def scenes() -> list[Path]:
    return sorted((SAMPLE_SCENES / "images").glob("*.png"))[:6]


def test_the_readme_example_on_the_bundled_model(explainer, scenes):
    result = explainer([str(SAMPLE_SCENES / "images" / "test_00000.png")])  # as in the README
    assert result.maps.shape == (1, 1, 14, 14) and result.class_names == [["Ankle boot"]]
    result = explainer([str(scenes[0]), scenes[1]])
    assert result.maps.shape == (2, 1, 14, 14) and result.maps.dtype == torch.float32
    assert result.classes.shape == (2, 1) and result.probabilities.shape == (2, 1)
    assert result.class_names[0][0] == explainer.class_names[int(result.classes[0, 0])]
    heatmaps = result.heatmaps()
    assert heatmaps.shape == (2, 1, 112, 112) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    overlays = result.overlays()
    assert len(overlays) == 2 and overlays[0].size == (112, 112) and overlays[0].mode == "RGB"
    scores = explainer.scores(result)
    assert set(scores) == {"adcc", "average_drop", "increase", "coherency", "complexity"}
    assert all(value.shape == (2, 1) for value in scores.values())


def test_maps_equal_the_command_lines_saved_maps(explainer, scenes, tmp_path):
    files = [*scenes, *sorted(PHOTOS.glob("*.jpg"))]
    folder = tmp_path / "in"
    folder.mkdir()
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    code, _, stderr = run(
        "explain", str(folder), "--model", "fashion-vit", "-o", str(tmp_path / "out"), "--save-maps",
        "--no-adcc", "--workers", "0", "-q",
    )  # fmt: skip
    assert code == 0, stderr
    saved = np.stack([np.load(tmp_path / "out" / "maps" / f"{Path(file.name).name}.npy") for file in files])
    from_paths = explainer([folder / file.name for file in files])
    np.testing.assert_allclose(from_paths.maps[:, 0].numpy(), saved, rtol=1e-4, atol=1e-5)
    model = timm.create_model(f"local-dir:{BUNDLED_MODELS['fashion-vit']}", pretrained=True)
    from_object = Explainer(model, device="cpu")([str(folder / file.name) for file in files])
    np.testing.assert_allclose(from_object.maps[:, 0].numpy(), saved, rtol=1e-4, atol=1e-5)


def test_images_in_memory_and_tensors_give_the_same_maps(explainer, scenes):
    from_paths = explainer(scenes[:3])
    from_images = explainer([Image.open(scene) for scene in scenes[:3]])
    from_tensor = explainer(from_paths.inputs)
    torch.testing.assert_close(from_images.maps, from_paths.maps)
    torch.testing.assert_close(from_tensor.maps, from_paths.maps)
    assert len(from_tensor.overlays()) == 3 and from_tensor.heatmaps(original=True)[0].shape == (1, 112, 112)


def test_choosing_classes(explainer, scenes):
    fixed = explainer(scenes[:2], classes=["Bag", 0])
    assert fixed.class_names == [["Bag", "T-shirt/top"]] * 2 and fixed.maps.shape[1] == 2
    top = explainer(scenes[:2], top_k=3)
    assert top.probabilities[:, 0].ge(top.probabilities[:, 1]).all() and top.maps.shape[1] == 3
    labelled = explainer(scenes[:2], labels=["Dress", 5])
    assert labelled.class_names == [["Dress"], ["Sandal"]]
    assert len(explainer(scenes[:2], top_k=2).overlays()) == 4


def test_library_errors_name_parameters_and_the_command_line_flags(explainer, scenes, small_folder, tmp_path):
    with pytest.raises(ParameterError, match="fuse must be at least 1") as caught:
        Explainer("fashion-vit", method="reciprocam:otx:fuse=0")
    assert caught.value.parameter == "method"
    with pytest.raises(ParameterError, match="method='reciprocam::fuse=0': fuse must be at least 1"):
        Explainer("fashion-vit", method="reciprocam::fuse=0")  # as in the README
    with pytest.raises(ParameterError, match="top_k=99: must be between 1 and 10"):
        explainer(scenes[:1], top_k=99)
    with pytest.raises(VitcamError, match="classes, top_k, labels and threshold choose the targets"):
        explainer(scenes[:1], top_k=1, classes=[0])
    with pytest.raises(ParameterError, match="images must be"):
        explainer(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ParameterError, match=r"checkpoint='.*missing.pth': no such file"):
        Explainer("vit_tiny_patch16_224", checkpoint=tmp_path / "missing.pth", pretrained=True)
    for args, message in (
        (("--fuse-blocks", "0"), "--fuse-blocks must be at least 1"),
        (("--fuse-blocks", "9"), "--fuse-blocks 9: only 4 blocks up to the target block"),
        (("--top-k", "99"), "--top-k 99: must be between 1 and 10"),
        (("--checkpoint", str(tmp_path / "missing.pth")), "--checkpoint"),
    ):
        code, _, stderr = run(
            "explain", str(small_folder), "-m", "fashion-vit", "-o", str(tmp_path / "o"), *args
        )
        assert code == 2 and message in stderr and len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize(
    "command",
    [
        ["-c", "import vitcam_cli"],
        ["-m", "vitcam_cli", "--version"],
        ["-m", "vitcam_cli", "--help"],
        ["-m", "vitcam_cli", "explain", "--help"],
    ],
)
def test_the_light_entry_points_do_not_import_torch(command):
    result = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert not imported & {"torch", "timm", "matplotlib", "torchvision", "numpy"}, imported & {
        "torch",
        "timm",
    }
