"""Explaining an embedding model's similarity to a reference, next to its forward pass: DINOv2 and SigLIP.

    python benchmarks/embedding_speed.py --device cpu   # writes results/embedding-speed-cpu.{json,md}

``vitcam bench`` on a model without a head times explaining the similarity of every image of a random
batch to a reference (the batch's first image) with the last-block presets, against the plain forward
pass, called alternately. The models have random weights (speed does not depend on them):
``vit_small_patch14_dinov2`` at 224 px (a 16x16 grid, CLS pooling) and ``vit_base_patch16_siglip_224``
(no class token, an attention-pool head: a latent query over the patch tokens). The classifiers of the
earlier speed table (``deit_small_patch16_224``, ``vit_base_patch16_224``) run in the same rounds, so the
classes' ratios can be compared on the same machine. ``--rounds`` alternates the models, so that a
shared machine's drifting speed hits them alike.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch

from vitcam_cli.commands.bench import BenchOptions, run_bench
from vitcam_cli.models import ModelSpec
from vitcam_cli.runtime import device_name, resolve_device

VARIANTS = ["otx", "openvino-xai"]  # the last-block presets
MODELS = {
    "vit_small_patch14_dinov2 (224 px, similarity)": ModelSpec(
        "vit_small_patch14_dinov2", pretrained=False, img_size=(224, 224)
    ),
    "vit_base_patch16_siglip_224 (similarity)": ModelSpec("vit_base_patch16_siglip_224", pretrained=False),
    "deit_small_patch16_224 (top-1 class)": ModelSpec("deit_small_patch16_224", pretrained=False),
    "vit_base_patch16_224 (top-1 class)": ModelSpec("vit_base_patch16_224", pretrained=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    rows = []
    for round_ in range(args.rounds):
        for label, spec in MODELS.items():
            options = BenchOptions(
                model=spec,
                variants=VARIANTS,
                batch_size=args.batch_size,
                device=args.device,
                repeat=args.repeat,
            )
            result = run_bench(options)
            for run in result["runs"]:
                rows.append({"model": label, "round": round_, "target": result["target"], **run})
                print(f"{label:48s} {run['variant']:13s} {run['engine']:5s} x{run['ratio']:.3f}", flush=True)

    machine = device_name(resolve_device(args.device))
    header = (
        f"Measured on {machine}, fp32, batch {args.batch_size}, torch {torch.__version__}, timm "
        f"{timm.__version__}; random weights, {time.strftime('%Y-%m-%d')}. Medians of {args.repeat} "
        "alternate forward/explain calls per run."
    )
    lines = [
        header,
        "",
        "| model | round | run | score | engine | forward img/s | explain img/s | x forward time |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['round'] + 1} | {row['variant']} | {row['score']} | {row['engine']} | "
            f"{row['forward_images_per_s']:.3f} | {row['explain_images_per_s']:.3f} | {row['ratio']:.3f} |"
        )
    stem = f"embedding-speed-{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
