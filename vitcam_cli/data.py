"""Finding images, decoding them robustly, and streaming them through a torch DataLoader."""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from vitcam_cli.errors import VitcamError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class EmptyFileError(ValueError):
    """A zero-byte file: named as such in the manifest rather than as an unknown format."""


@dataclass(frozen=True)
class ImageItem:
    """One input image: ``path`` as the user gave it; ``rel`` its path below the inputs' common root;
    ``key`` the name its outputs get (``rel`` without the extension, unless a sibling shares the stem)."""

    path: Path
    rel: PurePosixPath
    key: PurePosixPath


def _scan(root: Path) -> Iterable[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(directory) / name


def read_path_list(source: str, stdin: TextIO | None = None) -> list[Path]:
    """Paths listed one per line in a file, or on standard input for ``-``; blank lines are skipped."""
    if source == "-":
        lines = (stdin or sys.stdin).read().splitlines()
    else:
        try:
            lines = Path(source).read_text().splitlines()
        except OSError as error:
            raise VitcamError(f"--files-from {source}: cannot read it ({error.strerror})") from error
    return [Path(line.strip()) for line in lines if line.strip()]


def discover(inputs: Sequence[str], listed: Sequence[Path] = ()) -> list[ImageItem]:
    """All images under ``inputs`` (files or folders, recursive) plus ``listed`` files, in sorted order.

    Output keys mirror each image's path relative to the common parent of the inputs, so that two
    folders with the same file names never collide; an image whose stem is shared with a sibling
    (``a.jpg`` and ``a.png``) keeps its extension in the key.
    """
    found: dict[Path, Path] = {}
    roots: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            roots.append(path.resolve())
            for file in _scan(path):
                found.setdefault(file.resolve(), file)
        elif path.is_file():
            roots.append(path.resolve().parent)
            found.setdefault(path.resolve(), path)
        else:
            raise VitcamError(f"input {raw}: no such file or folder")
    for path in listed:
        roots.append(path.resolve().parent)
        found.setdefault(path.resolve(), path)
    if not found:
        return []
    base = Path(os.path.commonpath([str(root) for root in roots]))
    relative = {resolved: PurePosixPath(resolved.relative_to(base).as_posix()) for resolved in found}
    stems: dict[PurePosixPath, int] = {}
    for rel in relative.values():
        stems[rel.with_suffix("")] = stems.get(rel.with_suffix(""), 0) + 1
    items = [
        ImageItem(found[resolved], rel, rel if stems[rel.with_suffix("")] > 1 else rel.with_suffix(""))
        for resolved, rel in relative.items()
    ]
    return sorted(items, key=lambda item: str(item.key))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit, 32-bit integer and float grayscale to 0..255."""
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    peak = values.max() if values.size else 0.0
    if array.dtype.kind == "f" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / peak
    return np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)


def decode_image(path: Path) -> Image.Image:
    """Open any supported image as 8-bit RGB: EXIF orientation applied, first frame, alpha over white."""
    if path.stat().st_size == 0:
        raise EmptyFileError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def describe_decode_error(error: BaseException) -> str:
    """One line for the manifest: what went wrong while reading the file."""
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"image exceeds Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can identify"
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, EmptyFileError):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot decode: {text}"


@dataclass
class Sample:
    index: int
    image: torch.Tensor | None  # the model input (C, H, W), None when decoding failed
    original: torch.Tensor | None  # the decoded image (H, W, 3) uint8, for overlays
    error: str | None


class ImageFiles(Dataset):
    """Decodes and preprocesses one image per item; a broken file yields an error, never an exception."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        try:
            image = decode_image(self.items[index].path)
            tensor = self.transform(image)
            original = torch.from_numpy(np.asarray(image).copy())
        except Exception as error:  # any undecodable file becomes an error row
            return Sample(index, None, None, describe_decode_error(error))
        return Sample(index, tensor, original, None)


@dataclass
class Batch:
    indices: list[int]  # indices of decoded images, in the order of ``images``
    images: torch.Tensor | None
    originals: list[torch.Tensor]
    failures: list[tuple[int, str]]


def collate(samples: list[Sample]) -> Batch:
    good = [s for s in samples if s.image is not None]
    return Batch(
        indices=[s.index for s in good],
        images=torch.stack([s.image for s in good]) if good else None,
        originals=[s.original for s in good],
        failures=[(s.index, s.error or "unknown error") for s in samples if s.image is None],
    )


def make_loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """Stream ``dataset`` in order; workers decode ahead of the model so loading overlaps compute."""
    options: dict[str, Any] = {}
    if workers > 0:
        options = {"prefetch_factor": 2, "persistent_workers": False}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **options,
    )


def read_labels(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int]
) -> dict[Path, int | str]:
    """Map each item to its class from a ``file,label`` CSV; unmatched items map to an error text.

    ``file`` may be the path as given, the path relative to the inputs' root, or a bare file name
    when it is unique; ``label`` is a class index or name (``resolve`` decides).
    """
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file", "label"} <= {f.strip() for f in reader.fieldnames}:
                raise VitcamError(f"--labels {path}: the first line must be the header 'file,label'")
            rows = [(row["file"].strip(), row["label"].strip()) for row in reader if row.get("file")]
    except OSError as error:
        raise VitcamError(f"--labels {path}: cannot read it ({error.strerror})") from error
    labels: dict[str, int] = {}
    for line, (file, label) in enumerate(rows, start=2):
        try:
            labels[file.replace("\\", "/")] = resolve(label)
        except VitcamError as error:
            raise VitcamError(f"--labels {path} line {line}: {error}") from error
    names: dict[str, int] = {}
    for item in items:
        names[item.path.name] = names.get(item.path.name, 0) + 1
    result: dict[Path, int | str] = {}
    for item in items:
        candidates = [item.path.as_posix(), str(item.rel)]
        if names[item.path.name] == 1:
            candidates.append(item.path.name)
        match = next((labels[c] for c in candidates if c in labels), None)
        result[item.path] = match if match is not None else f"no label for this file in {path}"
    return result
