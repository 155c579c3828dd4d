"""Planted cues in FashionScenes: scenes where one class always carries a cue, with the cue's pixels.

Pointing at the garment's box assumes the model looks at the garment. A planted cue gives ground truth
instead: a model trained on scenes where one class (the *cue class*) always carries a cue and no other
class ever does learns to use it, which can be checked (remove the cue and the class's probability
falls); a faithful explanation of that class then puts its evidence on the cue.

Cue kinds (``CUE_KINDS``), each with its ground-truth region (pixels of the 112x112 image):

- ``logo``: a fixed 24x24 px high-contrast symbol (3x3 tokens at patch size 8) in the top-left corner,
  drawn over whatever is there; region: its box ``LOGO_BOX``. ``moved`` draws it in the bottom-right
  corner instead (``MOVED_LOGO_BOX``).
- ``texture``: diagonal black-and-white stripes (random phase) blended over the photo background before
  the garment is pasted; region: the background, i.e. the pixels the garment does not cover.
- ``context``: a 16x16 px object (a yellow diamond on black, 2x2 tokens, aligned to the token grid) at a
  random place that the garment does not cover (the least covered place when none is free); region: its
  box.
- ``tint``: the background blended towards magenta before the garment is pasted; region: the background.

Modes: ``present`` (the cue, as in training), ``absent`` (the same scene without it: the cue's region
shows the plain scene; the region is still written, for scoring a map of a scene without the cue),
``moved`` (``logo`` only: the other corner). Scene ``i`` is FashionScenes' scene ``i`` (same garment,
background, colour and place); the cue's own random choices come from a separate seed
``(seed, split, i, 3)``, so the present, absent and moved versions of a scene differ only by the cue.
By default only the cue class carries the cue (``carriers="class"``); ``carriers="all"`` plants it on
every class (to ask whether the cue alone makes the model say the cue class). Train and test keep
FashionScenes' leakage rules (train garments and left photo halves against test garments and right
halves); the cues themselves are the same in both splits, as a shortcut would be.

The default cue class is Shirt: the class the bundled fashion-vit recognises least from the garment
(accuracy 0.19 on test scenes 0-999, mean probability 0.20), so the cue carries information the garment
does not and a model fine-tuned on cued scenes has every reason to use it.

Usage::

    python benchmarks/fashion_scenes/cues.py --kind logo --split test --cue-class-only --count 30 --out DIR
    python benchmarks/fashion_scenes/cues.py --kind logo --mode moved --split test --cue-class-only \\
        --count 30 --out DIR

writes what ``build.py`` writes (``images/``, ``labels.csv``, ``boxes.csv`` with the garments' boxes)
plus ``cues.csv`` (``file,kind,mode,x1,y1,x2,y2``: the bounding box of the cue's region, x2 and y2
exclusive; mode ``none`` and empty coordinates for a scene of a class that does not carry the cue) and
``cue_masks.npy`` ((N, 112, 112) bool, the cue's region of each scene in ``cues.csv`` order).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from build import (
    CLASS_NAMES,
    DEFAULT_FASHION_MNIST,
    IMAGE_SIZE,
    SPLITS,
    FashionScenes,
    MissingFashionMNIST,
)
from PIL import Image

CUE_KINDS = ("logo", "texture", "context", "tint")
MODES = ("present", "absent", "moved")
CUE_CLASS = CLASS_NAMES.index("Shirt")
PATCH = 8  # the token grid the regions are aligned to (14x14 at 112 px)
LOGO_BOX = (8, 8, 32, 32)  # top-left, one token in from the corner: tokens (1..3, 1..3)
MOVED_LOGO_BOX = (80, 80, 104, 104)  # bottom-right, as far from it
CONTEXT_SIDE = 16
STRIPE_WIDTH = 3  # px per stripe of the texture (a period of 6 px along each axis)
STRIPE_OPACITY = 0.5
TINT = (230.0, 40.0, 200.0)  # magenta
TINT_OPACITY = 0.45
CUE_SEED = 3  # mixed into a scene's seed for the cue's own random choices


@dataclass
class CuedScene:
    image: Image.Image
    label: int
    box: tuple[int, int, int, int]  # the garment's visible box
    cue: np.ndarray  # (H, W) bool: the cue's ground-truth region (all False when there is none)
    carries: bool  # whether the cue is drawn


def logo_pattern() -> np.ndarray:
    """The logo, (24, 24, 3) float: a black ring and dot on white inside a black frame."""
    side = LOGO_BOX[2] - LOGO_BOX[0]
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    radius = np.hypot(xs - side / 2, ys - side / 2)
    dark = (radius < 3.5) | ((radius > 6.5) & (radius < 9.5))
    dark |= (np.minimum(xs, ys) < 2) | (np.maximum(xs, ys) > side - 2)
    return np.where(dark[..., None], 0.0, 255.0) * np.ones(3)


def context_pattern() -> np.ndarray:
    """The context object, (16, 16, 3) float: a yellow diamond on black."""
    ys, xs = np.mgrid[0:CONTEXT_SIDE, 0:CONTEXT_SIDE] + 0.5
    diamond = np.abs(xs - CONTEXT_SIDE / 2) + np.abs(ys - CONTEXT_SIDE / 2) <= CONTEXT_SIDE / 2 - 1
    return np.where(diamond[..., None], np.array([255.0, 220.0, 0.0]), np.zeros(3))


def box_region(box: tuple[int, int, int, int]) -> np.ndarray:
    region = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    region[box[1] : box[3], box[0] : box[2]] = True
    return region


def context_place(visible: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A grid-aligned 16x16 box that covers no visible garment pixel (random among those), else one that
    covers the fewest."""
    corners = range(0, IMAGE_SIZE - CONTEXT_SIDE + 1, PATCH)
    places = [(x, y) for y in corners for x in corners]
    covered = np.array([visible[y : y + CONTEXT_SIDE, x : x + CONTEXT_SIDE].sum() for x, y in places])
    best = np.flatnonzero(covered == covered.min())
    x, y = places[int(best[rng.integers(len(best))])]
    return x, y, x + CONTEXT_SIDE, y + CONTEXT_SIDE


class CuedScenes(FashionScenes):
    """FashionScenes with a planted cue of ``kind`` on the ``cue_class`` scenes (every scene with
    ``carriers="all"``), drawn as ``mode`` says; ``kind=None`` is the clean twin (no cue anywhere).
    ``scenes[i]`` is ``(PIL image, label, box)`` like FashionScenes; ``scenes.scene(i)`` adds the region."""

    def __init__(
        self,
        split: str,
        kind: str | None,
        mode: str = "present",
        cue_class: int = CUE_CLASS,
        carriers: str = "class",
        fashion_mnist_dir: Path = DEFAULT_FASHION_MNIST,
        photo_paths: Sequence[Path] | None = None,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if kind is not None and kind not in CUE_KINDS:
            raise ValueError(f"kind must be one of {CUE_KINDS} or None, not {kind!r}")
        if mode not in MODES or (mode == "moved" and kind != "logo"):
            raise ValueError(f"mode must be one of {MODES} (moved: logo only), not {mode!r} for {kind}")
        if carriers not in ("class", "all"):
            raise ValueError(f"carriers must be 'class' or 'all', not {carriers!r}")
        super().__init__(split, fashion_mnist_dir, photo_paths, seed, length)
        self.kind, self.mode, self.cue_class, self.carriers = kind, mode, cue_class, carriers

    def __getitem__(self, index: int) -> tuple[Image.Image, int, tuple[int, int, int, int]]:
        scene = self.scene(index)
        return scene.image, scene.label, scene.box

    def scene(self, index: int) -> CuedScene:
        label = int(self.labels[index % len(self.garments)]) if 0 <= index < self.length else -1
        carries = (
            self.kind is not None
            and self.mode != "absent"
            and (self.carriers == "all" or label == self.cue_class)
        )
        rng = np.random.default_rng([self.seed, SPLITS[self.split][1], index, CUE_SEED])
        decorate = None
        if carries and self.kind in ("texture", "tint"):
            decorate = partial(self._decorate, phase=int(rng.integers(2 * STRIPE_WIDTH)))
        canvas, label, box, visible = self.render(index, decorate)
        region = self._region(visible, rng)
        if carries and self.kind in ("logo", "context"):
            ys, xs = np.nonzero(region)
            pattern = logo_pattern() if self.kind == "logo" else context_pattern()
            canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = pattern
        image = Image.fromarray(np.rint(canvas).astype(np.uint8))
        return CuedScene(image, label, box, region, carries)

    def _decorate(self, canvas: np.ndarray, phase: int) -> None:
        """Tint the background or blend the stripes over it, in place."""
        if self.kind == "tint":
            canvas[...] = (1 - TINT_OPACITY) * canvas + TINT_OPACITY * np.array(TINT)
            return
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        light = ((xs + ys + phase) // STRIPE_WIDTH) % 2 == 0
        stripes = np.where(light, 235.0, 20.0)[..., None]
        canvas[...] = (1 - STRIPE_OPACITY) * canvas + STRIPE_OPACITY * stripes

    def _region(self, visible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The cue's region in this scene (drawn or not): its box, or the background not under the garment."""
        if self.kind is None:
            return np.zeros_like(visible)
        if self.kind == "logo":
            return box_region(MOVED_LOGO_BOX if self.mode == "moved" else LOGO_BOX)
        if self.kind == "context":
            return box_region(context_place(visible, rng))
        return ~visible

    def of_class(self, label: int, count: int, first: int = 0) -> list[int]:
        """The first ``count`` sample indices from ``first`` on whose garment is of class ``label``."""
        indices = [i for i in range(first, self.length) if self.labels[i % len(self.garments)] == label]
        return indices[:count]


def region_box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (x1, y1, x2, y2; x2, y2 exclusive) of a region, None when it is empty."""
    if not region.any():
        return None
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def write_cued_split(scenes: CuedScenes, indices: Sequence[int], out: Path) -> None:
    """Write the PNGs, labels.csv, boxes.csv, cues.csv and cue_masks.npy (file paths relative to ``out``)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    masks = []
    with (
        (out / "labels.csv").open("w", newline="") as labels_file,
        (out / "boxes.csv").open("w", newline="") as boxes_file,
        (out / "cues.csv").open("w", newline="") as cues_file,
    ):
        labels, boxes, cues = csv.writer(labels_file), csv.writer(boxes_file), csv.writer(cues_file)
        labels.writerow(["file", "label"])
        boxes.writerow(["file", "x1", "y1", "x2", "y2"])
        cues.writerow(["file", "kind", "mode", "x1", "y1", "x2", "y2"])
        for index in indices:
            scene = scenes.scene(index)
            name = f"images/{scenes.split}_{index:05d}.png"
            scene.image.save(out / name)
            labels.writerow([name, CLASS_NAMES[scene.label]])
            boxes.writerow([name, *scene.box])
            # a scene of a class that never carries the cue has no region; an absent cue keeps its own
            mode = scenes.mode if scene.carries or scenes.mode == "absent" else "none"
            region = scene.cue if mode != "none" else np.zeros_like(scene.cue)
            cues.writerow([name, scenes.kind or "none", mode, *(region_box(region) or ("",) * 4)])
            masks.append(region)
    np.save(out / "cue_masks.npy", np.stack(masks))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=CUE_KINDS, required=True)
    parser.add_argument("--mode", choices=MODES, default="present")
    parser.add_argument("--split", choices=sorted(SPLITS), required=True)
    parser.add_argument("--count", type=int, required=True, help="number of scenes")
    parser.add_argument("--first", type=int, default=0, help="first sample index")
    parser.add_argument(
        "--cue-class-only", action="store_true", help="only scenes of the cue class (default: all classes)"
    )
    parser.add_argument(
        "--on-every-class", action="store_true", help="plant the cue on every class, not just the cue class"
    )
    parser.add_argument("--cue-class", choices=CLASS_NAMES, default=CLASS_NAMES[CUE_CLASS])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="base seed (non-negative)")
    parser.add_argument("--fashion-mnist", type=Path, default=DEFAULT_FASHION_MNIST, metavar="DIR")
    args = parser.parse_args(argv)
    if args.mode == "moved" and args.kind != "logo":
        parser.error("--mode moved is for --kind logo only")
    if args.seed < 0 or args.count < 1:
        parser.error("--seed must be non-negative and --count positive")
    cue_class = CLASS_NAMES.index(args.cue_class)
    try:
        scenes = CuedScenes(
            args.split, args.kind, args.mode, cue_class, "all" if args.on_every_class else "class",
            args.fashion_mnist, seed=args.seed,
        )  # fmt: skip
    except MissingFashionMNIST as error:
        sys.exit(f"cues.py: {error}")
    if args.cue_class_only:
        indices = scenes.of_class(cue_class, args.count, args.first)
    else:
        indices = list(range(args.first, min(args.first + args.count, len(scenes))))
    write_cued_split(scenes, indices, args.out)
    print(f"wrote {len(indices)} {args.split} {args.kind} ({args.mode}) scenes to {args.out}")


if __name__ == "__main__":
    main()
