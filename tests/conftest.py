"""Shared fixtures: a tiny exported timm model (timm's local-dir format) and a folder of awkward images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image
from timm.models import save_for_hf

from tests.models import scramble

CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse"]
TINY_ARGS = {
    "img_size": (32, 48),
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "num_classes": len(CLASS_NAMES),
}


def export_tiny_model(folder: Path, seed: int, names: list[str] = CLASS_NAMES, **overrides: object) -> Path:
    kwargs = {**TINY_ARGS, "num_classes": len(names), **overrides}
    model = scramble(timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs), seed=seed)
    save_for_hf(model, folder, model_config={"label_names": names}, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class ViT (grid 4x6, one CLS token) as a folder with config.json and model.safetensors."""
    return export_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with different weights."""
    return export_tiny_model(tmp_path_factory.mktemp("other_tiny_model"), seed=1)


FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]  # fmt: skip
SAMPLE_SCENES = Path(__file__).parents[1] / "sample_images" / "fashion_scenes"


@pytest.fixture(scope="session")
def fashion_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights with the sample dataset's 10 class names and its 112x112 input (7x7 grid)."""
    return export_tiny_model(
        tmp_path_factory.mktemp("fashion_tiny"), seed=2, names=FASHION_NAMES, img_size=112, patch_size=16
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def decompression_bomb_png(path: Path) -> None:
    """A valid PNG header claiming 40000x40000 pixels: Pillow refuses it before decoding anything."""
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def noise_folder(
    root: Path, count: int, seed: int, size: tuple[int, int] = (30, 40), digits: int = 1
) -> Path:
    """``root`` with ``count`` noise PNGs named 0.png, 1.png, ... (zero-padded to ``digits``)."""
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(noise(*size, seed=seed + i)).save(root / f"{i:0{digits}d}.png")
    return root


GOOD_IMAGES = {
    "rgb.jpg": (60, 90),
    "nested/deeper/gray.png": (40, 40),
    "nested/rgba.png": (50, 30),
    "nested/palette.gif": (33, 47),
    "cmyk.jpg": (48, 64),
    "sixteen.png": (36, 52),
    "rotated.jpg": (40, 70),  # stored 40x70 with EXIF orientation 6: decoded as 70 high, 40 wide
    "photo.webp": (45, 45),
    "photo.bmp": (30, 60),
    "photo.tiff": (64, 32),
}
BROKEN_IMAGES = {
    "zero.jpg": "empty file",
    "truncated.jpg": "cannot decode",
    "text.png": "not an image",
    "bomb.png": "decompression-bomb",
}


def make_image_folder(root: Path) -> Path:
    """Every supported format and colour mode, plus four broken files."""
    for name in GOOD_IMAGES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(60, 90, seed=1)).save(root / "rgb.jpg", quality=90)
    Image.fromarray(noise(40, 40, 1, seed=2)).save(root / "nested/deeper/gray.png")
    Image.fromarray(noise(50, 30, 4, seed=3), "RGBA").save(root / "nested/rgba.png")
    frames = [Image.fromarray(noise(33, 47, seed=s)).convert("P") for s in (4, 5)]
    frames[0].save(root / "nested/palette.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(noise(48, 64, 4, seed=6), "CMYK").save(root / "cmyk.jpg")
    sixteen = noise(36, 52, 1, seed=7).astype(np.uint16) * 257
    Image.fromarray(sixteen).save(root / "sixteen.png")
    rotated = Image.fromarray(noise(40, 70, seed=8))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(noise(45, 45, seed=9)).save(root / "photo.webp")
    Image.fromarray(noise(30, 60, seed=10)).save(root / "photo.bmp")
    Image.fromarray(noise(64, 32, seed=11)).save(root / "photo.tiff")
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((root / "rgb.jpg").read_bytes()[:400])
    (root / "text.png").write_text("this is not an image\n")
    decompression_bomb_png(root / "bomb.png")
    (root / "notes.txt").write_text("not an image extension: never picked up from a folder\n")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """Three plain images, for tests about options rather than formats."""
    root = tmp_path / "small"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(noise(40, 60, seed=20)).save(root / "a.png")
    Image.fromarray(noise(50, 50, seed=21)).save(root / "b.jpg")
    Image.fromarray(noise(30, 45, seed=22)).save(root / "sub" / "c.png")
    return root
