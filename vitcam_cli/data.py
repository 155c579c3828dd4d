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


def _read_csv(path: Path, columns: tuple[str, ...], option: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV whose header has ``columns``; a clear error when it does not."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip() for name in reader.fieldnames or []}
            if not set(columns) <= header:
                raise VitcamError(f"{option} {path}: the first line must be the header '{','.join(columns)}'")
            return [
                (line, {key.strip(): (value or "").strip() for key, value in row.items() if key})
                for line, row in enumerate(reader, start=2)
            ]
    except OSError as error:
        raise VitcamError(f"{option} {path}: cannot read it ({error.strerror})") from error


class ItemMatcher:
    """Finds the input image a CSV ``file`` cell names: the path as given, the path relative to the
    inputs' common folder or to the CSV's folder, or a bare file name when only one input has it."""

    def __init__(self, items: Sequence[ImageItem], csv_path: Path) -> None:
        self.by_key: dict[str, Path] = {}
        names: dict[str, list[Path]] = {}
        for item in items:
            self.by_key[item.path.as_posix()] = item.path
            self.by_key[str(item.rel)] = item.path
            self.by_key[str(item.path.resolve())] = item.path
            names.setdefault(item.path.name, []).append(item.path)
        for name, paths in names.items():
            if len(paths) == 1:
                self.by_key.setdefault(name, paths[0])
        self.folder = csv_path.resolve().parent

    def __call__(self, cell: str) -> Path | None:
        cell = cell.replace("\\", "/")
        return self.by_key.get(cell) or self.by_key.get(str((self.folder / cell).resolve()))


def read_labels(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int]
) -> dict[Path, int | str]:
    """Each item's class from a ``file,label`` CSV; an item without a row maps to an error text.

    ``label`` is a class index or name (``resolve`` decides); see ``ItemMatcher`` for ``file``.
    """
    match = ItemMatcher(items, path)
    found: dict[Path, int] = {}
    for line, row in _read_csv(path, ("file", "label"), "--labels"):
        item = match(row["file"])
        if item is None:
            continue
        try:
            found[item] = resolve(row["label"])
        except VitcamError as error:
            raise VitcamError(f"--labels {path} line {line}: {error}") from error
    return {item.path: found.get(item.path, f"no label for this file in {path}") for item in items}


Box = tuple[float, float, float, float]


def read_boxes(path: Path, items: Sequence[ImageItem]) -> dict[Path, list[Box]]:
    """Ground-truth boxes from a ``file,x1,y1,x2,y2`` CSV (original-image pixels, x2/y2 exclusive);
    several rows per file allowed. Images without rows get no boxes."""
    match = ItemMatcher(items, path)
    boxes: dict[Path, list[Box]] = {item.path: [] for item in items}
    for line, row in _read_csv(path, ("file", "x1", "y1", "x2", "y2"), "--boxes"):
        item = match(row["file"])
        if item is None:
            continue
        try:
            x1, y1, x2, y2 = (float(row[key]) for key in ("x1", "y1", "x2", "y2"))
        except ValueError as error:
            raise VitcamError(f"--boxes {path} line {line}: coordinates must be numbers") from error
        if x2 <= x1 or y2 <= y1:
            raise VitcamError(f"--boxes {path} line {line}: needs x1 < x2 and y1 < y2")
        boxes[item].append((x1, y1, x2, y2))
    return boxes


def read_class_map(path: Path) -> dict[str, str]:
    """``folder,class`` rows: which model class each ImageFolder sub-folder holds."""
    return {row["folder"]: row["class"] for _, row in _read_csv(path, ("folder", "class"), "--class-map")}


def folder_labels(
    items: Sequence[ImageItem], resolve: Callable[[str], int], class_map: dict[str, str] | None = None
) -> dict[Path, int] | None:
    """Labels of an ImageFolder tree (``class_name/image.jpg``), or None when the tree is not one.

    Sub-folder names are matched to the model's class names (or through ``class_map``). A tree whose
    folders match no class is treated as unlabelled; one where only some match is an error.
    """
    if not items or any(len(item.rel.parts) < 2 for item in items):
        return None
    folders = sorted({item.rel.parts[0] for item in items})
    resolved: dict[str, int] = {}
    for folder in folders:
        try:
            resolved[folder] = resolve((class_map or {}).get(folder, folder))
        except VitcamError:
            continue
    if not resolved:
        return None
    missing = [folder for folder in folders if folder not in resolved]
    if missing:
        raise VitcamError(
            f"ImageFolder sub-folders {', '.join(missing[:5])} match none of the model's class names: "
            "map them with --class-map FILE.csv (folder,class) or pass --labels"
        )
    return {item.path: resolved[item.rel.parts[0]] for item in items}
