"""Finding images, decoding them robustly, and streaming them through a torch DataLoader."""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from vitcam_cli.defaults import DEFAULT_OVERLAY_SIDE
from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.interrupts import leave_sigterm_to_the_main_process
from vitcam_cli.outputs.folder import is_output_folder
from vitcam_cli.paths import absolute, resolved
from vitcam_cli.preprocessing import Preprocessing, Size, resize_pixels
from vitcam_cli.textfiles import lines_of, open_lines
from vitcam_cli.turns import Turns

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the stored image by 90 degrees


class EmptyFileError(ValueError):
    """A zero-byte file: named as such in the manifest rather than as an unknown format."""


@dataclass(frozen=True)
class ImageItem:
    """One input image: ``path`` as the user gave it; ``rel`` its path below the inputs' common folder
    (what its outputs are named after, see ``outputs.names``); ``file`` the file itself, links followed
    (however the inputs were spelled, one file is one image, and resuming knows it)."""

    path: Path
    rel: PurePosixPath
    file: Path
    target: int | None = None  # the one class to explain, when the run names it per image


def with_targets(items: Sequence[ImageItem], targets: dict[Path, list[int]]) -> list[ImageItem]:
    """One item per (image, class) to explain, in input order. An image without classes in ``targets``
    stays, its target None."""
    expanded = []
    for item in items:
        classes = targets.get(item.path, [])
        expanded.extend(replace(item, target=target) for target in classes)
        if not classes:
            expanded.append(item)
    return expanded


def _scan(root: Path, skip: set[Path], skipped: list[Path]) -> Iterable[Path]:
    """Image files under ``root`` (linked files included, whatever they point at; linked folders not
    entered), never inside the (resolved) folders of ``skip`` nor inside vitcam's output folders (those
    are added to ``skipped``); ``root`` itself an output folder: its overlays and maps are skipped."""
    if is_output_folder(root):  # named as an input: the images in it are, but not vitcam's own
        own = [f for f in output_folders(root)[1:] if f.is_dir() and resolved(f) not in skip]
        skip = skip | {resolved(folder) for folder in own}
        skipped.extend(own)
    for directory, subdirs, files in os.walk(root):
        kept = []
        for name in sorted(subdirs):
            path = Path(directory) / name
            if resolved(path) in skip:
                continue
            if is_output_folder(path):
                skipped.append(path)
                continue
            kept.append(name)
        subdirs[:] = kept
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(directory) / name


def read_path_list(source: str, stdin: IO[bytes] | None = None) -> list[Path]:
    """Paths listed one per line in a file, or on standard input for ``-``; blank lines are skipped.

    A line is a path byte for byte, UTF-8 or not (see ``_listed`` for spaces around it)."""
    if source != "-":
        lines = open_lines(Path(source), "files_from")
    elif stdin is None and sys.stdin is None:
        raise ParameterError("files_from", "standard input is closed: pipe the paths in, or name a file", "-")
    else:
        lines = lines_of(stdin or sys.stdin.buffer, "files_from", "-")
    listed = []
    for number, line in enumerate(lines, start=1):
        if "\0" in line:  # no path holds one: a NUL-separated list (find -print0)
            raise ParameterError(
                "files_from", f"line {number} holds a NUL byte: list one path per line (find -print)", source
            )
        if line.strip():
            listed.append(_listed(line))
    return listed


def _listed(line: str) -> Path:
    """A listed path as written (spaces are legal in names); stray spaces around it are dropped only
    when no file has the name as written and one has it without them."""
    exact, stripped = Path(line.rstrip("\r\n")), Path(line.strip())
    if stripped != exact and not os.path.lexists(exact) and os.path.lexists(stripped):
        return stripped
    return exact


def output_folders(out: Path) -> tuple[Path, ...]:
    """The folders a run writes images into, which discovery must not enter: ``out`` itself when it lies
    inside an input folder, its ``overlays/`` and ``maps/`` when it is the input folder."""
    return out, out / "overlays", out / "maps"


def discover(
    inputs: Sequence[str],
    listed: Sequence[Path] = (),
    skip: Sequence[Path] = (),
    skipped: list[Path] | None = None,
) -> list[ImageItem]:
    """All images under ``inputs`` (files or folders, recursive) plus ``listed`` files, in sorted order.

    Folders are searched without entering the folders of ``skip`` (see ``output_folders``: a run never
    explains its own overlays) nor any earlier run's output folder (recognised by vitcam's marker, see
    ``outputs.folder``; each one is added to ``skipped``); files named explicitly are taken wherever
    they are.

    Each image's ``rel`` is its path relative to the common parent of the inputs, so that two folders
    with the same file names never collide (outputs are named after it, see ``outputs.names``). Paths
    are taken as named, symbolic links not followed: a linked image is named by its link, wherever it
    points, so its outputs stay inside the output folder; a link that leads nowhere (dangling, a loop)
    becomes an error row when decoded. One file named twice (two spellings, a link and its target) is
    one image, under the first name found.
    """
    found: dict[Path, tuple[Path, Path]] = {}  # the file itself -> (absolute name, name as given)
    roots: list[Path] = []
    outputs = {resolved(folder) for folder in skip}
    skipped = [] if skipped is None else skipped

    def add(named: Path) -> None:
        found.setdefault(resolved(named), (absolute(named), named))

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            roots.append(absolute(path))
            for file in _scan(path, outputs, skipped):
                add(file)
        elif path.is_file():
            roots.append(absolute(path).parent)
            add(path)
        else:
            raise VitcamError(f"input {literal(raw)}: no such file or folder")
    for path in listed:
        roots.append(absolute(path).parent)
        add(path)
    if not found:
        return []
    base = Path(os.path.commonpath([str(root) for root in roots]))
    items = [
        ImageItem(named, PurePosixPath(whole.relative_to(base).as_posix()), file)
        for file, (whole, named) in found.items()
    ]
    return sorted(items, key=lambda item: item.rel.parts)


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


def _oriented(size: Size, swapped: bool) -> Size:
    return (size[1], size[0]) if swapped else size


def decode_reduced(
    path: Path, at_least: Callable[[Size], Size | None] | None = None
) -> tuple[Image.Image, Size]:
    """Open any supported image as 8-bit RGB (EXIF orientation applied, first frame, alpha over white),
    and the original's (width, height) after orientation.

    ``at_least(original size)`` may name the smallest (width, height) the caller needs: a JPEG is then
    decoded at the smallest of libjpeg's 1/2, 1/4 and 1/8 scales that still keeps it (Pillow's
    ``draft()``), several times faster on photos much larger than the model's input. Other formats are
    always decoded whole.
    """
    if path.stat().st_size == 0:
        raise EmptyFileError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.seek(0)
            swapped = image.getexif().get(ExifTags.Base.Orientation) in _SWAPPING_ORIENTATIONS
            original = _oriented(image.size, swapped)
            needed = at_least(original) if at_least is not None else None
            if needed is not None:
                image.draft(None, _oriented(needed, swapped))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    return rgb(image), original


def rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any mode: 16-bit and float scaled (not clipped), palettes expanded, alpha over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(path: Path) -> Image.Image:
    """The whole image as 8-bit RGB: see ``decode_reduced``."""
    return decode_reduced(path)[0]


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


def fit_within(size: Size, longest: int | None) -> Size:
    """``size`` scaled down (never up) so that its longest side is at most ``longest`` (None: as is)."""
    width, height = size
    if longest is None or max(width, height) <= longest:
        return size
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _covers(image: Image.Image, size: Size) -> bool:
    return image.width >= size[0] and image.height >= size[1]


@dataclass(frozen=True)
class DecodePlan:
    """What every image becomes: the model's input, and a copy for its overlay whose longest side is at
    most ``overlay_side`` (None: the original size).

    The model's input depends on the file and the model alone, never on the overlay settings: a JPEG is
    decoded at the scale the model and a default-size overlay need, and decoded a second time only when
    the overlay needs more (``--overlay-size original``, or above the default).
    """

    preprocessing: Preprocessing
    overlay_side: int | None = None

    def decode(self, path: Path) -> tuple[torch.Tensor, np.ndarray, Size]:
        """(model input (C, H, W), overlay copy (h, w, 3) uint8, the original's (width, height))."""
        image, original = decode_reduced(path, self.first_decode)
        pixels = np.array(image)
        tensor = self.preprocessing(pixels, original)
        target = fit_within(original, self.overlay_side)
        if not _covers(image, target):  # the overlay needs more pixels than the model did
            pixels = np.array(decode_reduced(path, lambda _: target)[0])
        return tensor, resize_pixels(pixels, target, InterpolationMode.BILINEAR), original

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray, Size]:
        """``decode`` for an image already in memory: EXIF orientation applied, as for a file."""
        image = rgb(ImageOps.exif_transpose(image))
        pixels = np.array(image)
        target = fit_within(image.size, self.overlay_side)
        return (
            self.preprocessing(pixels, image.size),
            resize_pixels(pixels, target, InterpolationMode.BILINEAR),
            image.size,
        )

    def first_decode(self, original: Size) -> Size | None:
        """What the one decode every image gets must keep: the model's need and a default overlay."""
        model = self.preprocessing.needs(original)
        if model is None:
            return None
        shared = fit_within(original, DEFAULT_OVERLAY_SIDE)
        return max(model[0], shared[0]), max(model[1], shared[1])


@dataclass
class Sample:
    index: int
    image: torch.Tensor | None  # the model input (C, H, W), None when decoding failed
    overlay: np.ndarray | None  # the copy overlays are drawn on (h, w, 3) uint8
    size: Size | None  # the original's (width, height), after EXIF orientation
    error: str | None


class ImageFiles(Dataset):
    """Decodes and preprocesses one image per item; a broken file yields an error, never an exception.

    Each image waits for ``turns`` (see ``Turns``): on a CPU, decoding runs between the engine's turns.
    """

    def __init__(self, items: Sequence[ImageItem], plan: DecodePlan, turns: Turns | None = None) -> None:
        self.items = items
        self.plan = plan
        self.turns = turns or Turns(enabled=False)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        self.turns.wait()
        try:
            tensor, overlay, size = self.plan.decode(self.items[index].path)
        except Exception as error:  # any undecodable file becomes an error row
            return Sample(index, None, None, None, describe_decode_error(error))
        return Sample(index, tensor, overlay, size, None)


@dataclass
class Batch:
    indices: list[int]  # indices of decoded images, in the order of ``images``
    images: torch.Tensor | None
    sizes: list[Size]  # the originals' (width, height), after EXIF orientation
    # the overlay copies packed into one buffer: one shared-memory block per batch between processes
    overlay_pixels: torch.Tensor
    overlay_shapes: list[tuple[int, int]]  # (height, width) of each copy
    failures: list[tuple[int, str]]

    def overlay(self, position: int) -> np.ndarray:
        """The (h, w, 3) uint8 copy of the ``position``-th decoded image that overlays are drawn on."""
        start = sum(h * w * 3 for h, w in self.overlay_shapes[:position])
        height, width = self.overlay_shapes[position]
        return self.overlay_pixels[start : start + height * width * 3].numpy().reshape(height, width, 3)

    def pin_memory(self) -> Batch:
        """Page-locked model inputs, so the copy to a GPU runs asynchronously (DataLoader's pin_memory)."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _pack(arrays: list[np.ndarray]) -> torch.Tensor:
    """The arrays' bytes one after the other in one uint8 tensor."""
    packed = torch.empty(sum(array.size for array in arrays), dtype=torch.uint8)
    flat, start = packed.numpy(), 0
    for array in arrays:
        flat[start : start + array.size] = array.reshape(-1)
        start += array.size
    return packed


def collate(samples: list[Sample]) -> Batch:
    good = [s for s in samples if s.error is None]
    return Batch(
        indices=[s.index for s in good],
        images=torch.stack([s.image for s in good]) if good else None,
        sizes=[s.size for s in good],
        overlay_pixels=_pack([s.overlay for s in good]),
        overlay_shapes=[s.overlay.shape[:2] for s in good],
        failures=[(s.index, s.error) for s in samples if s.error is not None],
    )


def default_workers(device: torch.device) -> int:
    """Decoding processes when ``--workers`` is not given: every core (up to 4) on a CPU, where decoding
    takes turns with the engine (see ``Turns``); one core fewer beside a GPU, for the main process."""
    cores = os.cpu_count() or 1
    return min(4, cores if device.type == "cpu" else max(0, cores - 1))


def make_loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """Stream ``dataset`` in order; workers decode ahead of the model so loading overlaps compute, and
    at most ``2 * workers`` batches wait (bounded memory)."""
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
        worker_init_fn=leave_sigterm_to_the_main_process if workers > 0 else None,
        **options,
    )


def _read_csv(path: Path, columns: tuple[str, ...], option: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV whose header has ``columns``; a clear error when it does not."""
    reader = csv.DictReader(open_lines(path, option))
    try:
        header = {name.strip() for name in reader.fieldnames or []}
        if not set(columns) <= header:
            raise ParameterError(option, f"the first line must be the header '{','.join(columns)}'", path)
        return [
            (line, {key.strip(): (value or "").strip() for key, value in row.items() if key})
            for line, row in enumerate(reader, start=2)
        ]
    except csv.Error as error:
        raise ParameterError(option, f"not a CSV file ({literal(error)})", path) from error


class ItemMatcher:
    """Finds the input image a CSV ``file`` cell names: the path as given, the path relative to the
    inputs' common folder or to the CSV's folder, or a bare file name when only one input has it."""

    def __init__(self, items: Sequence[ImageItem], csv_path: Path) -> None:
        self.by_key: dict[str, Path] = {}
        names: dict[str, list[Path]] = {}
        for item in items:
            self.by_key[item.path.as_posix()] = item.path
            self.by_key[str(item.rel)] = item.path
            self.by_key[str(absolute(item.path))] = item.path
            self.by_key.setdefault(str(resolved(item.path)), item.path)
            names.setdefault(item.path.name, []).append(item.path)
        for name, paths in names.items():
            if len(paths) == 1:
                self.by_key.setdefault(name, paths[0])
        self.folder = absolute(csv_path).parent

    def __call__(self, cell: str) -> Path | None:
        cell = cell.replace("\\", "/")
        beside_csv = self.folder / cell
        return (
            self.by_key.get(cell)
            or self.by_key.get(str(absolute(beside_csv)))
            or self.by_key.get(str(resolved(beside_csv)))
        )


def _label_rows(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int]
) -> Iterator[tuple[int, str, Path, int]]:
    """(line, file cell, input, class) of every row of a ``file,label`` CSV that names an input."""
    match = ItemMatcher(items, path)
    for line, row in _read_csv(path, ("file", "label"), "labels"):
        item = match(row["file"])
        if item is None:
            continue
        try:
            yield line, row["file"], item, resolve(row["label"])
        except VitcamError as error:
            raise ParameterError("labels", f"line {line}: {error.template}", path) from error


def read_labels(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int]
) -> dict[Path, int | str]:
    """Each item's ground-truth class from a ``file,label`` CSV; an item without a row maps to an error
    text. ``label`` is a class index or name (``resolve`` decides); see ``ItemMatcher`` for ``file``. A
    file given two different labels is an error naming both lines; a repeated identical row is harmless.
    """
    found: dict[Path, tuple[int, int]] = {}  # the class and the line that gave it
    for line, cell, item, label in _label_rows(path, items, resolve):
        if item in found and found[item][0] != label:
            raise ParameterError(
                "labels",
                f"lines {found[item][1]} and {line} give {literal(cell)} two different labels "
                f"({found[item][0]} and {label}); keep one",
                path,
            )
        found.setdefault(item, (label, line))
    missing = f"no label for this file in {path}"
    return {item.path: found[item.path][0] if item.path in found else missing for item in items}


def read_label_lists(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int]
) -> dict[Path, list[int]]:
    """The classes to explain for each item from a ``file,label`` CSV: several rows of one file ask for
    several classes (in file order, each once). Items without a row are left out."""
    found: dict[Path, list[int]] = {}
    for _, _, item, label in _label_rows(path, items, resolve):
        classes = found.setdefault(item, [])
        if label not in classes:
            classes.append(label)
    return found


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class GroundTruthBox:
    """A box of a boxes file: original-image pixels (x2, y2 exclusive) and the line it came from."""

    x1: float
    y1: float
    x2: float
    y2: float
    line: int = 0
    label: int | None = None  # the class of the object in it, when the file says

    def clipped(self, width: int, height: int) -> Box | None:
        """The part of the box inside a ``width`` x ``height`` image; None when nothing is left."""
        x1, y1 = max(self.x1, 0.0), max(self.y1, 0.0)
        x2, y2 = min(self.x2, float(width)), min(self.y2, float(height))
        return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def image_boxes(boxes: Sequence[GroundTruthBox], size: Size) -> list[tuple[Box, int | None]] | str:
    """An image's boxes clipped to it with their labels, or why they cannot be used (one lies wholly
    outside the image)."""
    clipped = []
    for box in boxes:
        inside = box.clipped(*size)
        if inside is None:
            where = f"{size[0]}x{size[1]}"
            return f"the box on line {box.line} of the boxes file lies outside the image ({where})"
        clipped.append((inside, box.label))
    return clipped


def read_boxes(
    path: Path, items: Sequence[ImageItem], resolve: Callable[[str], int] | None = None
) -> dict[Path, list[GroundTruthBox]]:
    """Ground-truth boxes from a ``file,x1,y1,x2,y2[,label]`` CSV (original-image pixels, x2/y2
    exclusive); several rows per file allowed. With a ``label`` column (a class index or name, which
    ``resolve`` turns into an index) every box names the class of its object. Images without rows get no
    boxes (and no localisation metrics)."""
    match = ItemMatcher(items, path)
    boxes: dict[Path, list[GroundTruthBox]] = {item.path: [] for item in items}
    rows = 0
    for line, row in _read_csv(path, ("file", "x1", "y1", "x2", "y2"), "boxes"):
        rows += 1
        item = match(row["file"])
        if item is None:
            continue
        boxes[item].append(_box(row, line, path, resolve))
    if rows and items and not any(boxes.values()):
        raise ParameterError(
            "boxes",
            f"names none of the {len(items)} input images: give each file as on the command line, "
            "relative to the inputs' folder or to the CSV's folder, or by its bare name",
            path,
        )
    return boxes


def _box(row: dict[str, str], line: int, path: Path, resolve: Callable[[str], int] | None) -> GroundTruthBox:
    try:
        x1, y1, x2, y2 = (float(row[key]) for key in ("x1", "y1", "x2", "y2"))
    except ValueError as error:
        raise ParameterError("boxes", f"line {line}: coordinates must be numbers", path) from error
    if not all(math.isfinite(value) for value in (x1, y1, x2, y2)):
        raise ParameterError("boxes", f"line {line}: coordinates must be finite (no nan or inf)", path)
    if x2 <= x1 or y2 <= y1:
        raise ParameterError("boxes", f"line {line}: needs x1 < x2 and y1 < y2", path)
    if "label" not in row:
        return GroundTruthBox(x1, y1, x2, y2, line)
    if not row["label"] or resolve is None:
        raise ParameterError("boxes", f"line {line}: the label column needs a class on every row", path)
    try:
        return GroundTruthBox(x1, y1, x2, y2, line, resolve(row["label"]))
    except VitcamError as error:
        raise ParameterError("boxes", f"line {line}: {error.template}", path) from error


def read_class_map(path: Path) -> dict[str, str]:
    """``folder,class`` rows: which model class each ImageFolder sub-folder holds."""
    return {row["folder"]: row["class"] for _, row in _read_csv(path, ("folder", "class"), "class_map")}


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
    by_folder: dict[str, int] = {}
    for folder in folders:
        try:
            by_folder[folder] = resolve((class_map or {}).get(folder, folder))
        except VitcamError:
            continue
    if not by_folder:
        return None
    missing = [folder for folder in folders if folder not in by_folder]
    if missing:
        raise VitcamError(
            f"ImageFolder sub-folders {', '.join(missing[:5])} match none of the model's class names: "
            "map them with {class_map} FILE.csv (folder,class) or pass {labels}"
        )
    return {item.path: by_folder[item.rel.parts[0]] for item in items}
