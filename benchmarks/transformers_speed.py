"""A transformers ViT-B folder against timm's vit_base_patch16_224: the same explain/forward ratio?

    pip install -e '.[transformers]'
    python benchmarks/transformers_speed.py --device cpu   # writes results/transformers-speed-cpu.{json,md}

Both models have random weights (speed does not depend on them): the transformers one is
``ViTForImageClassification(ViTConfig(num_labels=1000))`` with ``ViTImageProcessor()`` (224 px), saved with
``save_pretrained`` and loaded as ``--model FOLDER`` is; the timm one is ``vit_base_patch16_224``. The
two alternate, ``--rounds`` times, so that a shared machine's drifting speed hits both alike; each
``vitcam bench`` run times forward and explain calls alternately and reports their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import timm
import torch
import transformers

from vitcam_cli.commands.bench import BenchOptions, run_bench
from vitcam_cli.models import ModelSpec
from vitcam_cli.runtime import device_name, resolve_device

VARIANTS = ["otx", "openvino-xai"]  # the last-block presets


def save_vit_base(folder: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(folder)
    transformers.ViTImageProcessor().save_pretrained(folder)
    return folder


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
    with tempfile.TemporaryDirectory() as folder:
        models = {
            "transformers ViTForImageClassification (folder)": ModelSpec(str(save_vit_base(Path(folder)))),
            "timm vit_base_patch16_224": ModelSpec("vit_base_patch16_224", pretrained=False),
        }
        for round_ in range(args.rounds):
            for label, spec in models.items():
                options = BenchOptions(
                    model=spec, variants=VARIANTS, batch_size=args.batch_size, device=args.device,
                    repeat=args.repeat,
                )  # fmt: skip
                for run in run_bench(options)["runs"]:
                    rows.append({"model": label, "round": round_, **run})
                    print(f"{label:48s} {run['variant']:13s} x{run['ratio']:.3f}", flush=True)

    machine = device_name(resolve_device(args.device))
    header = (
        f"Measured on {machine}, fp32, batch {args.batch_size}, torch {torch.__version__}, timm "
        f"{timm.__version__}, transformers {transformers.__version__}; random weights, "
        f"{time.strftime('%Y-%m-%d')}."
    )
    lines = [header, "", "| model | round | run | engine | forward img/s | explain img/s | x forward time |"]
    lines.append("|---|---|---|---|---|---|---|")
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['round'] + 1} | {row['variant']} | {row['engine']} | "
            f"{row['forward_images_per_s']:.3f} | {row['explain_images_per_s']:.3f} | {row['ratio']:.3f} |"
        )
    stem = f"transformers-speed-{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
