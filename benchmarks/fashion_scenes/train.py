"""Train a small timm ViT or Swin on streamed FashionScenes with the DeiT recipe; export it in timm's format.

The export (``OUT/export/``: config.json with the class names and preprocessing, model.safetensors) is
what vitcam loads as ``--model local-dir:OUT/export``; its scenes have known garment boxes, so its
explanations can be scored. ``--no-occlusion`` drops CutMix and random erasing (the augmentations that
hide parts of the object) for a comparison model; mixup and label smoothing stay, and ``--mixup 0`` drops
mixup too (with ``--no-occlusion``, only label smoothing is left). ``--arch swin`` trains a
hierarchical Swin instead (``--depths`` blocks per stage, ``--heads`` doubling per stage, ``--embed-dim`` the
first stage's width, each later stage twice as wide).

``--cue KIND`` trains on scenes with a planted cue (``cues.py``: every ``--cue-class`` scene carries it, no
other does; the test accuracy is then on scenes with the same rule); ``--init FOLDER`` starts from the
weights of a timm export of the same architecture (fine-tuning); ``--no-flip`` drops the horizontal flips
(which would move a corner logo to the other corner).

Samples are generated on the fly (nothing is written but the log, checkpoint and export). Epoch ``e``
uses train samples ``e*N .. (e+1)*N-1`` (new backgrounds, colours and positions each epoch), shuffled
and augmented from seeds derived from ``(--seed, e)``, so a run resumed with ``--resume`` after any
epoch continues as if it had never stopped.

Usage::

    python benchmarks/fashion_scenes/train.py --out runs/fs_vit --epochs 30 --threads 2
    python benchmarks/fashion_scenes/train.py --out runs/fs_vit --epochs 30 --threads 2 --resume
    python benchmarks/fashion_scenes/train.py --out runs/fs_swin --arch swin --patch-size 8 --depths 2,2 \
        --window-size 7 --embed-dim 48 --heads 2 --no-occlusion --mixup 0 --threads 2
    python benchmarks/fashion_scenes/train.py --out runs/logo --cue logo \
        --init vitcam_cli/assets/fashion-vit --embed-dim 96 --depth 4 --heads 3 --epochs 3 \
        --samples-per-epoch 10000 --no-occlusion --mixup 0 --no-flip --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from build import CLASS_NAMES, DEFAULT_FASHION_MNIST, IMAGE_SIZE, FashionScenes, MissingFashionMNIST
from cues import CUE_CLASS, CUE_KINDS, CuedScenes
from safetensors.torch import load_file
from timm.data import Mixup, create_transform, resolve_input_data_config
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler
from torchvision import transforms

# preprocessing recorded in the export: a 112x112 scene is resized to itself, never cropped
MEAN = STD = (0.5, 0.5, 0.5)
PRETRAINED_CFG = {
    "tag": "fashion_scenes",
    "license": "mit",
    "input_size": (3, IMAGE_SIZE, IMAGE_SIZE),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "interpolation": "bilinear",
    "mean": MEAN,
    "std": STD,
}
# arguments that define a run: --resume refuses to continue a checkpoint made with other values
DEFAULTS = {
    "patch_size": 8, "arch": "vit", "depths": (2, 2), "window_size": 7, "mixup": 0.8,
    "cue": None, "cue_class": CLASS_NAMES[CUE_CLASS], "init": None, "no_flip": False,
}  # fmt: skip
RUN_ARGS = (
    "arch",
    "depths",
    "window_size",
    "patch_size",
    "embed_dim",
    "depth",
    "heads",
    "drop_path",
    "no_occlusion",
    "mixup",
    "seed",
    "epochs",
    "samples_per_epoch",
    "batch_size",
    "lr",
    "warmup_epochs",
    "cue",
    "cue_class",
    "init",
    "no_flip",
)


class Transformed(Dataset):
    """FashionScenes as ``(tensor, label)`` pairs; training does not use the box."""

    def __init__(self, scenes: FashionScenes, transform: Callable[[Any], torch.Tensor]) -> None:
        self.scenes = scenes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label, _ = self.scenes[index]
        return self.transform(image), label


def seed_all(*parts: int) -> torch.Generator:
    """Seed python, numpy and torch from ``parts``; return a torch generator for shuffling and workers."""
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_model(args: argparse.Namespace) -> nn.Module:
    """A ViT-Tiny-style model for 112x112 inputs with a CLS-token head: 8x8 patches make a 14x14 grid."""
    if args.arch == "swin":
        return build_swin(args)
    return timm.create_model(
        "vit_tiny_patch16_224",
        **_common_kwargs(args),
        depth=args.depth,
        num_heads=args.heads,
        global_pool="token",
    )


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What every trained architecture shares: random init, the scenes' size and classes, the options."""
    return {
        "pretrained": False,
        "img_size": IMAGE_SIZE,
        "patch_size": args.patch_size,
        "embed_dim": args.embed_dim,
        "num_classes": len(CLASS_NAMES),
        "drop_path_rate": args.drop_path,
        "pretrained_cfg_overlay": PRETRAINED_CFG,
    }


def build_swin(args: argparse.Namespace) -> nn.Module:
    """A small Swin for 112x112 inputs: its first stage is 112 / patch size tokens a side, each later half."""
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        **_common_kwargs(args),
        window_size=args.window_size,
        depths=args.depths,
        num_heads=tuple(args.heads * 2**stage for stage in range(len(args.depths))),
    )


def mix_targets(
    mixup_alpha: float, cutmix_alpha: float
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Mixup/CutMix with label smoothing 0.1; only the smoothing when both are off (Mixup needs one)."""
    if mixup_alpha > 0 or cutmix_alpha > 0:
        return Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            label_smoothing=0.1,
            num_classes=len(CLASS_NAMES),
        )

    def smooth(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, mixup_target(labels, len(CLASS_NAMES), smoothing=0.1)

    return smooth


def parse_depths(text: str) -> tuple[int, ...]:
    """``2,2`` -> ``(2, 2)``: blocks per Swin stage."""
    return tuple(int(part) for part in text.split(","))


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary file, so an interrupted save never leaves a broken checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(model: nn.Module, out: Path) -> None:
    """Write timm's export to ``out/export``, replacing each file atomically (never half a file)."""
    tmp, final = out / ".export.tmp", out / "export"
    shutil.rmtree(tmp, ignore_errors=True)
    timm.models.save_for_hf(
        model, tmp, model_config={"label_names": list(CLASS_NAMES)}, safe_serialization=True
    )
    final.mkdir(exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        os.replace(tmp / name, final / name)
    tmp.rmdir()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        predictions = model(images.to(device)).argmax(dim=1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    return correct / total


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the log, checkpoint and export")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples-per-epoch", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=128, help="even (mixup pairs samples)")
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="peak learning rate for batch 512, scaled linearly"
    )
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--patch-size", type=int, default=DEFAULTS["patch_size"], help="8: a 14x14 grid, 16: 7x7"
    )
    parser.add_argument("--arch", choices=("vit", "swin"), default=DEFAULTS["arch"])
    parser.add_argument(
        "--depths", type=parse_depths, default=DEFAULTS["depths"], help="swin: blocks per stage, e.g. 2,2"
    )
    parser.add_argument("--window-size", type=int, default=DEFAULTS["window_size"], help="swin: window side")
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (DeiT: 0.1)")
    parser.add_argument("--no-occlusion", action="store_true", help="train without CutMix and random erasing")
    parser.add_argument(
        "--mixup", type=float, default=0.8, help="Mixup alpha (0: none; with --no-occlusion, no mixing)"
    )
    parser.add_argument("--cue", choices=CUE_KINDS, help="plant this cue on every --cue-class scene")
    parser.add_argument("--cue-class", choices=CLASS_NAMES, default=DEFAULTS["cue_class"])
    parser.add_argument("--init", help="start from the weights of this timm export folder (fine-tune)")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    parser.add_argument("--test-samples", type=int, default=2000, help="first N test samples, for accuracy")
    parser.add_argument("--seed", type=int, default=0, help="non-negative")
    parser.add_argument("--fashion-mnist", type=Path, default=DEFAULT_FASHION_MNIST, metavar="DIR")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes generating samples")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--progress-every", type=int, default=50, help="steps between progress lines (stderr)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pth if it exists")
    args = parser.parse_args(argv)
    if args.batch_size % 2 or args.samples_per_epoch < args.batch_size:
        parser.error("--batch-size must be even and at most --samples-per-epoch")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    if not 0 < args.test_samples <= 10000:
        parser.error("--test-samples must be between 1 and 10000 (the Fashion-MNIST test set)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = args.out / "last.pth", args.out / "train_log.jsonl"
    if checkpoint_path.exists() and not args.resume:
        sys.exit(f"train.py: {checkpoint_path} exists: pass --resume to continue it, or choose another --out")

    seed_all(args.seed)
    model = build_model(args).to(device)
    if args.init:
        model.load_state_dict(load_file(Path(args.init) / "model.safetensors"))
    steps_per_epoch = args.samples_per_epoch // args.batch_size
    optimizer = create_optimizer_v2(model, "adamw", lr=args.lr * args.batch_size / 512, weight_decay=0.05)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=args.epochs * steps_per_epoch,
        warmup_t=args.warmup_epochs * steps_per_epoch,
        warmup_lr_init=1e-6,
        lr_min=1e-5,
        t_in_epochs=False,
    )
    start_epoch, elapsed = 0, 0.0
    if args.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        changed = [key for key in RUN_ARGS if state["args"].get(key, DEFAULTS.get(key)) != vars(args)[key]]
        if changed:
            sys.exit(
                f"train.py: {checkpoint_path} was made with other {', '.join(changed)}; use the same values"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, elapsed = state["epoch"], state["elapsed_s"]
        print(f"resuming after epoch {start_epoch} of {args.epochs}", file=sys.stderr)

    try:
        cue = {"kind": args.cue, "cue_class": CLASS_NAMES.index(args.cue_class)}
        train_scenes: FashionScenes = CuedScenes(
            "train", **cue, fashion_mnist_dir=args.fashion_mnist, seed=args.seed,
            length=args.epochs * args.samples_per_epoch,
        )  # fmt: skip
        test_scenes: FashionScenes = CuedScenes(
            "test", **cue, fashion_mnist_dir=args.fashion_mnist, seed=args.seed, length=args.test_samples
        )
    except MissingFashionMNIST as error:
        sys.exit(f"train.py: {error}")
    train_transform = [
        *([] if args.no_flip else [transforms.RandomHorizontalFlip()]),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ]
    if not args.no_occlusion:
        train_transform.append(RandomErasing(probability=0.25, mode="pixel", device="cpu"))
    train_data = Transformed(train_scenes, transforms.Compose(train_transform))
    # evaluate exactly as vitcam will preprocess: timm's eval transform from the model's own config
    eval_transform = create_transform(**resolve_input_data_config(model), is_training=False)
    test_loader = DataLoader(
        Transformed(test_scenes, eval_transform),
        batch_size=256,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    mix = mix_targets(args.mixup, 0.0 if args.no_occlusion else 1.0)
    criterion = SoftTargetCrossEntropy()

    for epoch in range(start_epoch, args.epochs):
        generator = seed_all(args.seed, epoch + 1)
        first = epoch * args.samples_per_epoch
        loader = DataLoader(
            train_data,
            batch_size=args.batch_size,
            sampler=SubsetRandomSampler(range(first, first + args.samples_per_epoch), generator=generator),
            num_workers=args.workers,
            generator=generator,
            drop_last=True,
            pin_memory=device.type == "cuda",
        )
        model.train()
        started, loss_sum = time.perf_counter(), 0.0
        for step, (images, labels) in enumerate(loader):
            images, targets = mix(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(epoch * steps_per_epoch + step + 1)
            loss_sum += loss.item()
            if (step + 1) % args.progress_every == 0:
                rate = (step + 1) * args.batch_size / (time.perf_counter() - started)
                print(
                    f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} loss {loss.item():.4f} "
                    f"{rate:.1f} images/s",
                    file=sys.stderr,
                    flush=True,
                )
        train_s = time.perf_counter() - started
        accuracy = evaluate(model, test_loader, device)
        epoch_s = time.perf_counter() - started
        elapsed += epoch_s
        record = {
            "epoch": epoch + 1,
            "epochs": args.epochs,
            "train_loss": round(loss_sum / steps_per_epoch, 4),
            "test_acc": round(accuracy, 4),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": round(steps_per_epoch * args.batch_size / train_s, 1),
            "epoch_s": round(epoch_s, 1),
            "elapsed_s": round(elapsed, 1),
        }
        print(json.dumps(record), flush=True)
        with log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "elapsed_s": elapsed,
                "args": {key: vars(args)[key] for key in RUN_ARGS},
            },
            checkpoint_path,
        )
        export(model, args.out)


if __name__ == "__main__":
    main()
