"""FashionScenes: Fashion-MNIST garments pasted onto crops of real photos, with the box of each paste.

A classifier explanation (a CAM) should light up the object that decides the class. On plain datasets
we cannot check that; here the class is the garment's and the garment's box is known exactly, so a
heat map can be scored against it.

Each 112x112 RGB image (a 14x14 token grid at patch size 8) is a random square crop of a random photo,
resized and with its contrast halved, with one Fashion-MNIST garment upscaled to 56-100 px, tinted, and
blended on top at a random position up to 16 px off centre: its grey level times OPACITY_GAIN (capped
at 1) is its opacity, so the garment is solid with soft edges. These ranges keep the task learnable for
a ViT trained from scratch in a few CPU hours (with garments anywhere, at 40-84 px, on full-contrast
photos, a small ViT stayed at chance level for its first 60,000 samples).
Sample ``i`` of a split is drawn from its own seed ``(seed, split, i)``, so any sample can be
regenerated alone and a training run can stream samples without writing files.

Leakage: train samples use Fashion-MNIST train garments and the left half of every photo, test samples
use Fashion-MNIST test garments and the right half. Adding or removing a photo changes every sample.

Usage::

    python benchmarks/fashion_scenes/build.py --split test --count 1000 --out DIR
    python benchmarks/fashion_scenes/build.py --split test --per-class 3 --out sample_images/fashion_scenes

writes ``DIR/images/<split>_<index:05d>.png``, ``DIR/labels.csv`` (``file,label``: class name) and
``DIR/boxes.csv`` (``file,x1,y1,x2,y2``: pixels of the 112x112 image, x2 and y2 exclusive).

``--objects 2`` makes the two-garment variant (``FashionScenes.two_garments``): one garment in each
half, of two different classes, and ``DIR/boxes.csv`` with a ``label`` column naming each box's class::

    python benchmarks/fashion_scenes/build.py --split test --objects 2 --count 200 --out DIR
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import gzip
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIZE = 112
GARMENT_SIZE = (56, 100)  # inclusive range of the pasted garment's side, px
TWO_GARMENT_SIZE = (44, 56)  # in two-garment scenes: each garment fits its half of the image
POSITION_JITTER = 16  # px the garment's centre may move from the image centre, each way
BACKGROUND_CONTRAST = 0.5  # the photo's contrast around mid-grey: still a real scene, the garment stands out
CROP_FRACTION = (0.3, 1.0)  # background crop side, as a fraction of the photo half's shorter side
OPACITY_GAIN = 3.0  # grey level x gain = opacity: mid-grey Fashion-MNIST garments paste solid, not ghostly
VISIBLE_ALPHA = 0.25  # a garment pixel counts for the box when its opacity exceeds this
SPLITS = {"train": ("train", 0), "test": ("t10k", 1)}  # idx file prefix, id mixed into the seed

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


class MissingFashionMNIST(FileNotFoundError):
    """Fashion-MNIST's idx files are not where we looked."""


def default_photo_paths() -> list[Path]:
    """The public-domain/CC0 photos used as backgrounds (see the ATTRIBUTION.md files next to them)."""
    return sorted((REPO / "sample_images" / "photos").glob("*.jpg")) + sorted(
        (HERE / "backgrounds").glob("*.jpg")
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file of unsigned bytes (Fashion-MNIST's format), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, one big-endian
    uint32 per dimension, then the data in C order.
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {values.size} values")
    return values.reshape(shape)


def load_fashion_mnist(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of one split, from ``*-idx?-ubyte[.gz]`` files."""
    prefix = SPLITS[split][0]
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [directory / f"{prefix}-{kind}-ubyte{suffix}" for suffix in (".gz", "")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise MissingFashionMNIST(
                f"Fashion-MNIST not found in {directory} (no {candidates[0].name}): "
                "run `sudo apt-get install dataset-fashion-mnist` or pass --fashion-mnist DIR"
            )
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(
            f"{directory}: unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}"
        )
    return images, labels


class FashionScenes:
    """One split of FashionScenes; ``scenes[i]`` is ``(PIL image, label index, (x1, y1, x2, y2))``.

    ``length`` defaults to the number of garments in the split; a longer length cycles through the
    garments (sample ``i`` shows garment ``i % garments``) with fresh backgrounds, colours and positions,
    so every training epoch can see new scenes.
    """

    def __init__(
        self,
        split: str,
        fashion_mnist_dir: Path = DEFAULT_FASHION_MNIST,
        photo_paths: Sequence[Path] | None = None,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
        self.split = split
        self.seed = seed
        self.garments, self.labels = load_fashion_mnist(Path(fashion_mnist_dir), split)
        self.length = len(self.garments) if length is None else length
        paths = default_photo_paths() if photo_paths is None else list(photo_paths)
        if not paths:
            raise FileNotFoundError("no background photos found")
        self.backgrounds = [self._photo_half(Path(path)) for path in paths]

    def _photo_half(self, path: Path) -> Image.Image:
        """The left (train) or right (test) half of a photo, so the splits never share background pixels."""
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
        half = photo.width // 2
        return photo.crop(
            (0, 0, half, photo.height) if self.split == "train" else (half, 0, photo.width, photo.height)
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Image.Image, int, tuple[int, int, int, int]]:
        canvas, label, box, _ = self.render(index)
        return Image.fromarray(np.rint(canvas).astype(np.uint8)), label, box

    def render(
        self, index: int, decorate: Callable[[np.ndarray], None] | None = None
    ) -> tuple[np.ndarray, int, tuple[int, int, int, int], np.ndarray]:
        """Sample ``index`` as a float (H, W, 3) canvas, with its label, its garment's box and the mask
        (H, W) of the garment's visible pixels. ``decorate`` may change the background in place before
        the garment is pasted (the planted cues of ``cues.py``); it draws nothing from the sample's seed,
        so the rest of the scene is the same with or without it."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, SPLITS[self.split][1], index])
        garment = index % len(self.garments)
        canvas = self._background(rng)
        if decorate is not None:
            decorate(canvas)
        size = int(rng.integers(GARMENT_SIZE[0], GARMENT_SIZE[1] + 1))
        visible = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        box = self._paste(
            canvas, garment, size, (IMAGE_SIZE - size) / 2, (IMAGE_SIZE - size) / 2, rng, visible=visible
        )
        return canvas, int(self.labels[garment]), box, visible

    def two_garments(self, index: int) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
        """Scene ``index`` of the two-garment variant: one garment in each half of the image, of two
        different classes, 44-56 px; returns the image and each garment's (label, box), left first.

        Drawn from its own seeds (``(seed, split, index, 2)``): no two-garment scene repeats a
        one-garment scene's background or placement.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, SPLITS[self.split][1], index, 2])
        first = index % len(self.garments)
        others = np.flatnonzero(self.labels != self.labels[first])
        second = int(others[rng.integers(len(others))])
        canvas = self._background(rng)
        objects = []
        for half, garment in enumerate(rng.permutation([first, second])):
            size = int(rng.integers(TWO_GARMENT_SIZE[0], TWO_GARMENT_SIZE[1] + 1))
            centre_x = half * IMAGE_SIZE / 2 + (IMAGE_SIZE / 2 - size) / 2
            box = self._paste(canvas, int(garment), size, centre_x, (IMAGE_SIZE - size) / 2, rng, half)
            objects.append((int(self.labels[garment]), box))
        return Image.fromarray(np.rint(canvas).astype(np.uint8)), objects

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A random square crop of a random photo at the image size, contrast reduced, as float RGB."""
        photo = self.backgrounds[rng.integers(len(self.backgrounds))]
        side = max(1, round(rng.uniform(*CROP_FRACTION) * min(photo.size)))
        x0, y0 = rng.integers(photo.width - side + 1), rng.integers(photo.height - side + 1)
        background = photo.crop((x0, y0, x0 + side, y0 + side)).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR
        )
        return 127.5 + BACKGROUND_CONTRAST * (np.asarray(background, dtype=np.float32) - 127.5)

    def _paste(
        self,
        canvas: np.ndarray,
        garment: int,
        size: int,
        centre_x: float,
        centre_y: float,
        rng: np.random.Generator,
        half: int | None = None,
        visible: np.ndarray | None = None,
    ) -> tuple[int, int, int, int]:
        """Blend a tinted garment of ``size`` px onto ``canvas`` near (``centre_x``, ``centre_y``), its top
        left corner; within one half of the image when ``half`` is given. Returns its visible box, and
        marks its visible pixels in ``visible`` (an (H, W) bool array) when given."""
        mask = Image.fromarray(self.garments[garment]).resize((size, size), Image.BILINEAR)
        intensity = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        alpha = np.minimum(1.0, intensity * OPACITY_GAIN)
        tint = 255.0 * np.array(
            colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.6, 1.0))
        )
        x_range = (
            (0, IMAGE_SIZE - size)
            if half is None
            else (half * IMAGE_SIZE // 2, (half + 1) * IMAGE_SIZE // 2 - size)
        )
        left = int(rng.integers(*_jittered(centre_x, x_range)))
        top = int(rng.integers(*_jittered(centre_y, (0, IMAGE_SIZE - size))))
        region = canvas[top : top + size, left : left + size]
        # colour = tint x grey level: dark seams and edges stay dark
        region[...] = (1.0 - alpha) * region + alpha * (intensity * tint)
        shown = alpha[..., 0] > VISIBLE_ALPHA
        if visible is not None:
            visible[top : top + size, left : left + size] |= shown
        rows, cols = np.flatnonzero(shown.any(axis=1)), np.flatnonzero(shown.any(axis=0))
        return left + int(cols[0]), top + int(rows[0]), left + int(cols[-1]) + 1, top + int(rows[-1]) + 1

    def first_of_each_class(self, per_class: int) -> list[int]:
        """The first ``per_class`` sample indices of every class, in index order (a balanced small set)."""
        chosen = [
            int(i)
            for label in range(len(CLASS_NAMES))
            for i in np.flatnonzero(self.labels == label)[:per_class]
        ]
        return sorted(chosen)


def _jittered(centre: float, bounds: tuple[int, int]) -> tuple[int, int]:
    """The [low, high + 1) range of positions up to POSITION_JITTER from ``centre`` within ``bounds``."""
    low = max(bounds[0], round(centre - POSITION_JITTER))
    high = min(bounds[1], round(centre + POSITION_JITTER))
    return low, max(low, high) + 1


def write_split(scenes: FashionScenes, indices: Sequence[int], out: Path) -> None:
    """Write the PNGs and the two CSVs (file paths relative to ``out``)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (
        (out / "labels.csv").open("w", newline="") as labels_file,
        (out / "boxes.csv").open("w", newline="") as boxes_file,
    ):
        labels, boxes = csv.writer(labels_file), csv.writer(boxes_file)
        labels.writerow(["file", "label"])
        boxes.writerow(["file", "x1", "y1", "x2", "y2"])
        for index in indices:
            image, label, box = scenes[index]
            name = f"images/{scenes.split}_{index:05d}.png"
            image.save(out / name)
            labels.writerow([name, CLASS_NAMES[label]])
            boxes.writerow([name, *box])


def write_two_garment_split(scenes: FashionScenes, indices: Sequence[int], out: Path) -> None:
    """Write two-garment scenes and ``boxes.csv`` with a ``label`` column (each garment's class name);
    there is no labels.csv: each scene holds two classes."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (out / "boxes.csv").open("w", newline="") as boxes_file:
        boxes = csv.writer(boxes_file)
        boxes.writerow(["file", "x1", "y1", "x2", "y2", "label"])
        for index in indices:
            image, objects = scenes.two_garments(index)
            name = f"images/{scenes.split}_two_{index:05d}.png"
            image.save(out / name)
            for label, box in objects:
                boxes.writerow([name, *box, CLASS_NAMES[label]])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(SPLITS), required=True)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--count", type=int, help="write samples 0..N-1 (default: the whole split)")
    which.add_argument("--per-class", type=int, metavar="K", help="write the first K samples of each class")
    which.add_argument("--range", nargs=2, type=int, metavar=("START", "STOP"), help="samples START..STOP-1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--objects", type=int, choices=(1, 2), default=1,
        help="garments per scene: 2 puts one in each half, of two different classes, with labelled boxes",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="base seed (non-negative)")
    parser.add_argument("--fashion-mnist", type=Path, default=DEFAULT_FASHION_MNIST, metavar="DIR")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    try:
        scenes = FashionScenes(args.split, args.fashion_mnist, seed=args.seed)
    except MissingFashionMNIST as error:
        sys.exit(f"build.py: {error}")
    if args.per_class is not None:
        indices = scenes.first_of_each_class(args.per_class)
    elif args.range is not None:
        start, stop = args.range
        if not 0 <= start < stop <= len(scenes):
            parser.error(f"--range must satisfy 0 <= START < STOP <= {len(scenes)}")
        indices = list(range(start, stop))
    else:
        count = len(scenes) if args.count is None else args.count
        if not 0 < count <= len(scenes):
            parser.error(f"--count must be between 1 and {len(scenes)}")
        indices = list(range(count))
    (write_two_garment_split if args.objects == 2 else write_split)(scenes, indices, args.out)
    print(f"wrote {len(indices)} {args.split} images to {args.out}")


if __name__ == "__main__":
    main()
