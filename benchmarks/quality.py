"""The quality tables of docs/quality.md: ViT-ReciproCAM variants and the baselines on FashionScenes scenes.

    python benchmarks/quality.py --model fashion-vit --name fashion-vit     # writes results/quality-NAME.*

Builds FashionScenes test images ``--first`` .. ``--first + --count - 1`` (once, into a cache folder),
then runs ``vitcam evaluate`` on them in one pass: ADCC (both aggregations) and its parts,
insertion/deletion AUC, the pointing game and energy-in-box against the pasted garments' boxes, and
seconds per image, with ``--bootstrap`` 95% intervals. The ground-truth class is explained
(``--target label``). The table marks the best method per metric and names the ViT-ReciproCAM
variant that wins by vitcam's rule for its default: best ADCC, then pointing game, then speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vitcam_cli.commands.evaluate import Evaluate, EvaluateOptions
from vitcam_cli.metrics.aggregate import METRICS
from vitcam_cli.models import ModelSpec
from vitcam_cli.runner import RunSettings, run_command

sys.path.insert(0, str(Path(__file__).parent / "fashion_scenes"))
from build import FashionScenes, default_photo_paths, write_split

PRESETS_AND_KERNELS = [
    f"reciprocam:{preset}{kernel}"
    for preset in ("official", "otx", "openvino-xai")
    for kernel in ("", ":single")
]
BASELINES = ["gradcam", "rollout", "relevance"]
LOWER_IS_BETTER = {"average_drop", "complexity", "deletion", "seconds_per_image"}
COLUMNS = [*METRICS, "seconds_per_image"]
RESULTS = Path(__file__).parent / "results"


def test_images(first: int, count: int, cache: Path = Path("/tmp/fashion_scenes")) -> Path:
    """FashionScenes test samples first .. first + count - 1 as PNGs with labels.csv and boxes.csv."""
    data = cache / f"test-{first}-{count}"
    if not (data / "boxes.csv").is_file():
        write_split(
            FashionScenes("test", photo_paths=default_photo_paths()), range(first, first + count), data
        )
    return data


def evaluate(
    model: str, data: Path, methods: list[str], out: Path, bootstrap: int = 0, steps: int = 20
) -> dict[str, Any]:
    """``vitcam evaluate`` in this process; returns metrics.json."""
    options = EvaluateOptions(
        data=data, model=ModelSpec(model), labels=data / "labels.csv", boxes=data / "boxes.csv",
        target="label", methods=methods, steps=steps, out=out, bootstrap=bootstrap,
        run=RunSettings(batch_size=25, workers=1), overwrite=True,
    )  # fmt: skip
    run_command(Evaluate(options), None, "cpu", quiet=True)
    return json.loads((out / "metrics.json").read_text())


def winner(methods: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The ViT-ReciproCAM variant with the best ADCC, then pointing game, then speed; and why."""

    def rank(name: str) -> tuple[float, float, float]:
        values = methods[name]
        return (-round(values["adcc"], 4), -values.get("pointing_game", 0.0), values["seconds_per_image"])

    best, second = sorted((name for name in methods if name.startswith("reciprocam")), key=rank)[:2]
    a, b = methods[best], methods[second]
    reason = f"ADCC {a['adcc']:.4f} against {b['adcc']:.4f} for the runner-up {second}"
    if round(a["adcc"], 4) == round(b["adcc"], 4):
        reason += (
            f"; pointing game {a.get('pointing_game', 0.0):.4f} against {b.get('pointing_game', 0.0):.4f}"
        )
    return best, reason


def cell(values: dict[str, Any], column: str, bold: bool) -> str:
    text = f"{values[column]:.4f}"
    text = f"**{text}**" if bold else text
    interval = values.get("intervals", {}).get(column)
    return text + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


def markdown(metrics: dict[str, Any], title: str, rule: bool = True, columns: list[str] | None = None) -> str:
    """The table (of ``columns``, default all); bold marks the best value per column; optionally the
    default rule's verdict."""
    methods = metrics["methods"]
    columns = [c for c in columns or COLUMNS if all(methods[m].get(c) is not None for m in methods)]
    best = {
        column: (min if column in LOWER_IS_BETTER else max)(methods, key=lambda m, c=column: methods[m][c])
        for column in columns
    }
    lines = [title, "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in methods.items():
        lines.append(f"| {name} | " + " | ".join(cell(values, c, best[c] == name) for c in columns) + " |")
    lines += ["", "Bold: the best value in each column."]
    if rule:
        chosen, reason = winner(methods)
        lines[-1] += (
            f" By vitcam's rule (best ADCC, then pointing game, then speed) **{chosen}** wins ({reason})."
        )
    beaten = sorted(c for c in columns if not best[c].startswith("reciprocam") and c != "seconds_per_image")
    if beaten:
        lines.append(
            "A baseline beats every ViT-ReciproCAM variant on: "
            + ", ".join(f"{c} ({best[c]})" for c in beaten)
            + "."
        )
    return "\n".join(lines)


def describe_run(metrics: dict[str, Any], model: str, first: int, count: int, seconds: float) -> str:
    accuracy = metrics["methods"][metrics["primary"]]["accuracy"]
    return (
        f"FashionScenes test images {first}-{first + count - 1} ({count}), model `{model}` (accuracy on them "
        f"{accuracy:.3f}), ground-truth class explained, {metrics['settings']['steps']}-step "
        f"insertion/deletion with a blurred baseline; {metrics['device']} {metrics['precision']}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-vit", help="any --model vitcam accepts")
    parser.add_argument("--name", default="fashion-vit", help="names the result files")
    parser.add_argument("--first", type=int, default=0, help="first FashionScenes test sample")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--methods", default=",".join(PRESETS_AND_KERNELS + BASELINES))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20, help="insertion/deletion curve steps")
    args = parser.parse_args()

    started = time.time()
    data = test_images(args.first, args.count)
    metrics = evaluate(
        args.model,
        data,
        args.methods.split(","),
        RESULTS / f"quality-{args.name}-run",
        args.bootstrap,
        args.steps,
    )
    table = markdown(
        metrics, describe_run(metrics, args.model, args.first, args.count, time.time() - started)
    )
    (RESULTS / f"quality-{args.name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (RESULTS / f"quality-{args.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
