"""The README's quality table: every ViT-ReciproCAM preset and kernel and the baselines on FashionScenes.

    python benchmarks/quality.py --model fashion-vit --name fashion-vit     # writes results/quality-NAME.*

Builds the first ``--count`` FashionScenes test images (once, into ``--data``), then runs
``vitcam evaluate`` on them in one pass: ADCC (both aggregations) and its parts, insertion/deletion
AUC, the pointing game and energy-in-box against the pasted garments' boxes, seconds per image.
The ground-truth class is explained (``--target label``). The table names the best method per
metric, and which ViT-ReciproCAM variant wins by the default's rule: best ADCC, then pointing game,
then speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vitcam_cli.evaluate import EvaluateOptions, run_evaluate
from vitcam_cli.metrics.aggregate import METRICS
from vitcam_cli.models import ModelSpec

sys.path.insert(0, str(Path(__file__).parent / "fashion_scenes"))
from build import FashionScenes, default_photo_paths, write_split

RECIPROCAM = [
    f"reciprocam:{preset}{kernel}"
    for preset in ("official", "otx", "openvino-xai")
    for kernel in ("", ":single")
]
BASELINES = ["gradcam", "rollout", "relevance"]
LOWER_IS_BETTER = {"average_drop", "complexity", "deletion", "seconds_per_image"}
COLUMNS = [*METRICS, "seconds_per_image"]


def build_test_split(data: Path, count: int, fashion_mnist: Path | None) -> None:
    if (data / "labels.csv").is_file() and len(list((data / "images").glob("*.png"))) == count:
        return
    kwargs = {"fashion_mnist_dir": fashion_mnist} if fashion_mnist else {}
    write_split(FashionScenes("test", photo_paths=default_photo_paths(), **kwargs), range(count), data)


def winner(methods: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The ViT-ReciproCAM variant with the best ADCC, then pointing game, then speed; and why."""

    def rank(name: str) -> tuple[float, float, float]:
        values = methods[name]
        return (-values["adcc"], -values.get("pointing_game", 0.0), values["seconds_per_image"])

    best, second = sorted((name for name in methods if name.startswith("reciprocam")), key=rank)[:2]
    a, b = methods[best], methods[second]
    reason = f"ADCC {a['adcc']:.4f} against {b['adcc']:.4f} for the runner-up {second}"
    if round(a["adcc"], 4) == round(b["adcc"], 4):
        reason += (
            f"; pointing game {a.get('pointing_game', 0.0):.4f} against {b.get('pointing_game', 0.0):.4f}"
        )
    return best, reason


def markdown(metrics: dict, title: str) -> str:
    methods = metrics["methods"]
    columns = [c for c in COLUMNS if any(methods[m].get(c) is not None for m in methods)]
    best = {
        column: (min if column in LOWER_IS_BETTER else max)(methods, key=lambda m, c=column: methods[m][c])
        for column in columns
    }
    lines = [title, "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in methods.items():
        cells = [f"**{values[c]:.4f}**" if best[c] == name else f"{values[c]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chosen, reason = winner(methods)
    lines += ["", f"Bold: the best in each column. By vitcam's rule the default is **{chosen}** ({reason})."]
    beaten = sorted({c for c in columns if not best[c].startswith("reciprocam") and c != "seconds_per_image"})
    if beaten:
        lines.append(
            "A baseline beats every ViT-ReciproCAM variant on: "
            + ", ".join(f"{c} ({best[c]})" for c in beaten)
            + "."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="fashion-vit", help="any --model vitcam accepts")
    parser.add_argument("--name", default="fashion-vit", help="names the result files")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion_scenes_test"))
    parser.add_argument("--fashion-mnist", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20, help="insertion/deletion curve steps")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    build_test_split(args.data, args.count, args.fashion_mnist)
    run_out = args.out / f"quality-{args.name}-run"
    started = time.time()
    options = EvaluateOptions(
        data=args.data, model=ModelSpec(args.model), labels=args.data / "labels.csv",
        boxes=args.data / "boxes.csv", target="label", methods=RECIPROCAM + BASELINES, steps=args.steps,
        batch_size=args.batch_size, out=run_out, workers=1, quiet=True,
    )  # fmt: skip
    code = run_evaluate(options)
    metrics = json.loads((run_out / "metrics.json").read_text())
    accuracy = metrics["methods"][RECIPROCAM[0]]["accuracy"]
    title = (
        f"FashionScenes test images 0-{args.count - 1} ({args.count}), model `{args.model}` (test accuracy "
        f"{accuracy:.3f}), ground-truth class explained, {args.steps}-step insertion/deletion with a blurred "
        f"baseline; {metrics['device']} {metrics['precision']}, {time.strftime('%Y-%m-%d')}, "
        f"{time.time() - started:.0f} s."
    )
    table = markdown(metrics, title)
    (args.out / f"quality-{args.name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out / f"quality-{args.name}.md").write_text(table + "\n")
    print(table)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
