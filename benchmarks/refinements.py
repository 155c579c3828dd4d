"""Do vitcam's own refinements make ViT-ReciproCAM maps sharper without making them less right?

    python benchmarks/refinements.py --model NAME=MODEL [--model NAME=MODEL ...]

Candidates are the published presets and the refinements on top of the two last-block presets:
the contrast score, empty-window subtraction and fusion of the last two blocks, alone and combined.
They are compared on a validation split (FashionScenes test samples 5000-5249, never reported) on
every model; a refinement qualifies when it beats the current default on ADCC, energy-in-box and
deletion AUC without losing pointing game, on every model. The qualifier with the best mean ADCC (if
any) is then reported with 95% bootstrap intervals on the test split (samples 0-499) beside the
default, the presets and the baselines. Writes results/refinements.{md,json}.

Each evaluation keeps its output in results/refinements-{val,test}-NAME-run/; a rerun reads a finished
one back when its model, images, methods and settings match (so models can be added one at a time).
Delete those folders after retraining a model under the same name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from quality import BASELINES, RESULTS, describe_run, evaluate, markdown, test_images

from vitcam_cli.defaults import DEFAULT_PRESET
from vitcam_cli.methods.factory import canonical_name
from vitcam_cli.methods.reciprocam import PRESETS

REFINEMENTS = (
    "score=contrast", "subtract=empty", "fuse=2", "subtract=empty,score=contrast", "subtract=empty,fuse=2",
    "score=contrast,subtract=empty,fuse=2",
)  # fmt: skip
CANDIDATES = [f"reciprocam:{preset}" for preset in PRESETS] + [
    canonical_name(f"reciprocam:{preset}:{options}")
    for preset in ("otx", "openvino-xai")
    for options in REFINEMENTS
]
VALIDATION, TEST = (5000, 250), (0, 500)


def evaluate_once(
    model: str, data: Path, methods: list[str], out: Path, bootstrap: int = 0, steps: int = 20
) -> dict[str, Any]:
    """``evaluate``, or the finished run in ``out`` when it was made with the same arguments."""
    done = out / "metrics.json"
    if done.is_file():
        metrics = json.loads(done.read_text())
        if (
            metrics["model"]["model"] == model
            and Path(metrics["data"]) == data
            and list(metrics["methods"]) == [canonical_name(m) for m in methods]
            and metrics["settings"]["steps"] == steps
            and metrics["bootstrap"] == bootstrap
        ):
            print(f"reusing {out}", flush=True)
            return metrics
    return evaluate(model, data, methods, out, bootstrap=bootstrap, steps=steps)


def qualifies(candidate: dict[str, float], default: dict[str, float]) -> bool:
    """Better ADCC, energy-in-box and deletion AUC, and at least the same pointing game."""
    return (
        candidate["adcc"] > default["adcc"]
        and candidate["energy_in_box"] > default["energy_in_box"]
        and candidate["deletion"] < default["deletion"]
        and candidate["pointing_game"] >= default["pointing_game"]
    )


def validation_table(runs: dict[str, dict[str, Any]], default: str) -> list[str]:
    keys = ("adcc", "energy_in_box", "deletion", "pointing_game")
    header = (
        "| method | " + " | ".join(f"{model}: {key}" for model in runs for key in keys) + " | qualifies |"
    )
    lines = [header, "|---" * (len(runs) * len(keys) + 2) + "|"]
    for name in CANDIDATES:
        cells = [f"{runs[model]['methods'][name][key]:.4f}" for model in runs for key in keys]
        passes = all(qualifies(runs[m]["methods"][name], runs[m]["methods"][default]) for m in runs)
        verdict = "default" if name == default else ("yes" if passes else "no")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", action="append", required=True, help="NAME=MODEL, e.g. occlusion=fashion-vit"
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--validation-only", action="store_true", help="stop after the validation table and the verdict"
    )
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    default = canonical_name(f"reciprocam:{DEFAULT_PRESET}")

    runs = {}
    for name, model in models.items():
        started = time.time()
        out = RESULTS / f"refinements-val-{name}-run"
        runs[name] = evaluate_once(model, test_images(*VALIDATION), CANDIDATES, out, steps=10)
        print(f"validation {name}: {time.time() - started:.0f} s", flush=True)
    qualified = [
        candidate
        for candidate in CANDIDATES
        if candidate != default
        and all(qualifies(runs[m]["methods"][candidate], runs[m]["methods"][default]) for m in runs)
    ]
    chosen = max(qualified, key=lambda c: sum(runs[m]["methods"][c]["adcc"] for m in runs), default=None)

    listed = ", ".join(f"`{c}`" for c in qualified)
    verdict = (
        f"Qualifying on every model: {listed}; best mean ADCC: `{chosen}`."
        if chosen
        else ("No refinement qualifies on every model.")
    )
    lines = [
        "### Validation (FashionScenes test samples 5000-5249, 10-step deletion)",
        "",
        *validation_table(runs, default),
        "",
        f"Current default: `{default}`. " + verdict,
    ]
    report: dict[str, Any] = {
        "default": default,
        "qualified": qualified,
        "chosen": chosen,
        "validation": runs,
    }
    # on the test split: the default, every refinement of it, the other presets, the winner, the baselines
    shown = [default, *(c for c in CANDIDATES if c.startswith(f"{default}:"))]
    shown += [c for c in CANDIDATES[: len(PRESETS)] if c != default]
    shown += [*([chosen] if chosen and chosen not in shown else []), *BASELINES]
    for name, model in {} if args.validation_only else models.items():
        out = RESULTS / f"refinements-test-{name}-run"
        metrics = evaluate_once(model, test_images(*TEST), shown, out, bootstrap=args.bootstrap)
        report[f"test-{name}"] = metrics
        title = f"### Test, model {name}\n\n" + describe_run(metrics, model, *TEST, metrics["wall_seconds"])
        lines += ["", markdown(metrics, title, rule=False)]
    (RESULTS / "refinements.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "refinements.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
