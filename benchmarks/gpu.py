"""Engine and end-to-end images/s on a CUDA GPU, in one short run that writes one JSON file.

    python benchmarks/gpu.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu.py --device cpu --models vit_tiny_patch16_224 --precisions fp32 --images 64
                                                  # the same script as a quick check anywhere

For each model and precision: the engine alone (``vitcam bench`` on random tensors, the default
method) and a whole ``vitcam explain`` run over synthetic ImageNet-size JPEGs made from
``sample_images/photos`` (random weights, ``--no-adcc``, default overlays), its rate taken between 15%
and 95% of the rows as in ``pipeline.py``. Writes ``benchmarks/results/gpu-<device name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from pipeline import end_to_end, engine_rate, make_folder  # benchmarks/pipeline.py, beside this script


def make_images(folder: Path, count: int) -> None:
    """``count`` ImageNet-size JPEGs, made in parallel on every core (different seeds per part)."""
    parts = max(1, min(os.cpu_count() or 1, count // 50))
    with ProcessPoolExecutor(parts) as pool:
        for index in range(parts):
            share = count // parts + (index < count % parts)
            pool.submit(make_folder, folder / f"part{index:02d}", "imagenet", share, seed=index)
        pool.shutdown(wait=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "deit_small_patch16_224"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4000, help="synthetic JPEGs for the end-to-end runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from vitcam_cli.runtime import device_name, library_versions

    device = torch.device(args.device)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imagenet"
        make_images(folder, args.images)
        for model in args.models:
            for precision in args.precisions:
                common = ["--no-pretrained", "-b", str(args.batch_size), "--device", args.device,
                          "--precision", precision]  # fmt: skip
                engine = engine_rate(model, common)
                run = end_to_end(
                    model,
                    folder,
                    Path(tmp) / f"out-{model}-{precision}",
                    [],
                    [*common, "--no-adcc", "--quiet"],
                )
                runs.append(
                    {
                        "model": model,
                        "precision": precision,
                        "engine_images_per_s": engine,
                        **run,
                        "ratio_to_engine": round(run["images_per_s"] / engine, 3),
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    name = device_name(device)
    result = {
        "device": name,
        "cpu_cores": os.cpu_count(),
        "batch_size": args.batch_size,
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "versions": library_versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (args.out / f"gpu-{slug}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
