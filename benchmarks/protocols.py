"""The two metric protocols side by side: vitcam's (``poppi``) and the ViT-ReciproCAM authors' (``authors``).

    python benchmarks/protocols.py --model fashion-vit     # writes results/protocols-fashion-vit.{md,json}

Runs ``vitcam evaluate --protocol poppi`` and ``--protocol authors`` on the same FashionScenes test scenes
(``--first`` .. ``--first + --count - 1``), ground-truth class explained, for the authors' preset, the
default preset and relevance, and writes one table with both protocols' numbers per method.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from quality import RESULTS, test_images

from vitcam_cli.commands.evaluate import Evaluate, EvaluateOptions
from vitcam_cli.models import ModelSpec
from vitcam_cli.runner import RunSettings, run_command

METHODS = ["reciprocam:official", "reciprocam:openvino-xai", "relevance"]
COLUMNS = ["adcc", "average_drop", "increase", "coherency", "complexity", "insertion", "deletion"]


def run(model: str, data: Path, protocol: str, out: Path) -> dict:
    options = EvaluateOptions(
        data=data, model=ModelSpec(model), labels=data / "labels.csv", target="label", methods=METHODS,
        protocol=protocol, out=out, run=RunSettings(batch_size=25, workers=1),
        overwrite=True,
    )  # fmt: skip
    started = time.perf_counter()
    run_command(Evaluate(options), None, "cpu", quiet=True)
    print(f"{protocol}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-vit")
    parser.add_argument("--name", default="fashion-vit")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    data = test_images(args.first, args.count)
    runs = {
        protocol: run(args.model, data, protocol, RESULTS / f"protocols-{protocol}-{args.name}-run")
        for protocol in ("poppi", "authors")
    }
    lines = [
        f"FashionScenes test scenes {args.first}-{args.first + args.count - 1}, model `{args.model}`, the "
        f"ground-truth class explained; {runs['poppi']['device']}, {time.strftime('%Y-%m-%d')}. "
        "Each cell: poppi / authors.",
        "",
        "| method | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for method in METHODS:
        poppi, authors = runs["poppi"]["methods"][method], runs["authors"]["methods"][method]
        cells = [f"{poppi[column]:.4f} / {authors[column]:.4f}" for column in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (RESULTS / f"protocols-{args.name}.md").write_text("\n".join(lines) + "\n")
    summary = {protocol: metrics["methods"] for protocol, metrics in runs.items()}
    (RESULTS / f"protocols-{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
