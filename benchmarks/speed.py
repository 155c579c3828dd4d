"""The speed table of docs/speed.md: vitcam's variants vs pytorch-grad-cam's Grad-CAM, same batch and machine.

    pip install -e '.[bench]'
    python benchmarks/speed.py --device cpu            # writes benchmarks/results/speed-cpu.{json,md}

Every row times calls on the same random batch (random weights: speed does not depend on them) after
a warm-up call and reports the median of ``--repeat`` calls; the ``official`` rows, which take minutes
per batch on a CPU, are timed once, and the dense reference path without warm-up. Ratios divide by
the plain forward pass measured in the same ``vitcam bench`` run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from pytorch_grad_cam import GradCAM

from vitcam_cli.commands.bench import BenchOptions, run_bench, time_pair
from vitcam_cli.models import ModelSpec
from vitcam_cli.runtime import autocast, device_name, resolve_device

ROWS = [
    # (label, BenchOptions overrides)
    ("otx (block -1, ln, softmax)", {"variants": ["otx"]}),
    ("openvino-xai (block -1, masked-input, logit)", {"variants": ["openvino-xai"]}),
    ("block -2, ln, softmax", {"variants": ["otx"], "target_block": -2}),
    ("official (block -2, input, softmax)", {"variants": ["official"], "repeat": 1}),
    (
        "official, dense reference path",
        {"variants": ["official"], "engine": "dense", "warmup": 0, "repeat": 1},
    ),
]


def grad_cam_seconds(
    name: str, batch_size: int, device: torch.device, precision: str, repeat: int
) -> tuple[float, float]:
    """Seconds of a forward pass and of pytorch-grad-cam (last block's first LayerNorm, tokens reshaped
    to the grid, top-1 class) on the same batch, timed alternately."""
    model = timm.create_model(name, pretrained=False).eval().to(device)
    prefix, (rows, cols) = model.num_prefix_tokens, model.patch_embed.grid_size

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, prefix:].reshape(tokens.shape[0], rows, cols, -1).permute(0, 3, 1, 2)

    images = torch.randn(
        (batch_size, 3, *model.patch_embed.img_size), generator=torch.Generator().manual_seed(0)
    )
    images = images.to(device)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    layers = [model.blocks[-1].norm1]
    with (
        GradCAM(model=model, target_layers=layers, reshape_transform=to_grid) as cam,
        autocast(precision, device),
    ):
        return time_pair(
            forward, lambda: cam(input_tensor=images, targets=None), device, warmup=1, repeat=repeat
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    device = resolve_device(args.device)
    started = time.time()
    results = []
    for name in args.models:
        common = {
            "model": ModelSpec(name, pretrained=False), "batch_size": args.batch_size, "device": args.device,
            "precision": args.precision, "repeat": args.repeat,
        }  # fmt: skip
        for label, overrides in ROWS:  # a row's own repeat/warm-up win over the command line's
            result = run_bench(BenchOptions(**(common | overrides)))
            run = result["runs"][0]
            forward = round(args.batch_size / run["forward_seconds_per_batch"], 3)
            results.append({"model": name, "row": label, **run, "forward_images_per_s": forward})
            print(
                f"{name:28s} {label:46s} {run['explain_images_per_s']:9.2f} img/s  x{run['ratio']:.2f}",
                flush=True,
            )
        forward_seconds, seconds = grad_cam_seconds(
            name, args.batch_size, device, args.precision, args.repeat
        )
        grad_cam = {
            "model": name, "row": "Grad-CAM (pytorch-grad-cam 1.5, last block norm1)", "engine": "autograd",
            "explain_images_per_s": round(args.batch_size / seconds, 3),
            "ratio": round(seconds / forward_seconds, 3),
            "forward_images_per_s": round(args.batch_size / forward_seconds, 3),
        }  # fmt: skip
        results.append(grad_cam)
        print(f"{name:28s} {grad_cam['row']:46s} {grad_cam['explain_images_per_s']:9.2f} img/s", flush=True)

    machine = device_name(device)
    header = (
        f"Measured on {machine}, {args.precision}, batch {args.batch_size}, torch {torch.__version__}, "
        f"timm {timm.__version__}; random weights, {time.strftime('%Y-%m-%d')}."
    )
    lines = [
        header,
        "",
        "| model | forward img/s | run | engine | explain img/s | x forward time |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['model']} | {row['forward_images_per_s']:.1f} | {row['row']} | {row['engine']} | "
            f"{row['explain_images_per_s']:.2f} | {row['ratio']:.2f} |"
        )
    official = {r["model"]: r for r in results if r["row"].startswith("official (")}
    dense = {r["model"]: r for r in results if r["row"].startswith("official, dense")}
    lines.append("")
    for name in official:
        speedup = dense[name]["ratio"] / official[name]["ratio"]
        lines.append(
            f"- {name}: the fast engine runs the `official` preset {speedup:.1f}x faster than the dense path."
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"speed-{device.type}"
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "rows": results}, indent=2
        )
        + "\n"
    )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
