"""Does ViT-ReciproCAM tell classes apart? Candidates on two-garment and one-garment FashionScenes.

    python benchmarks/discrimination.py --model fashion-vit=fashion-vit \\
        --model deep=local-dir:runs/fs_vit_d8/export          # writes results/discrimination.{md,json}

Two-garment scenes (``build.py --objects 2``: one garment in each half, two different classes) are
evaluated with ``--target boxes``: both garments' classes are explained, and the labelled boxes make
the pointing game class-specific ("right-object pointing": the peak falls in the explained class's
box) and add ``discrimination`` (the map's mass in the explained class's box / in both boxes). One-garment
scenes are evaluated as in the quality study (``--target label``). Insertion/deletion AUC is left out
to keep the study within a CPU session.

Candidates are the published presets and settings of vitcam's own options (``prefix=reset`` or
``zero``, the contrast score, empty-window subtraction, fusion). They are compared on validation
splits (two-garment test samples 6000-6199, one-garment 5000-5249), never reported as results. A
candidate qualifies when, on every model, it tells the garments apart better than the default
(higher discrimination, and right-object pointing at least the default's) and keeps the one-garment
pointing game and ADCC (two- and one-garment) within 0.02 of the default's. The qualifier with the best
mean discrimination (then right-object pointing) is then reported on the test splits
(two-garment 7000-7199, one-garment 0-499) with 95% bootstrap intervals, beside the default, the other
presets and the baselines. It would become the default only if it also won by vitcam's quality rule
(best ADCC, then pointing game) on both kinds of scenes on every model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quality import BASELINES, RESULTS, markdown

from vitcam_cli.commands.evaluate import Evaluate, EvaluateOptions
from vitcam_cli.defaults import DEFAULT_PRESET
from vitcam_cli.methods.factory import canonical_name
from vitcam_cli.models import ModelSpec
from vitcam_cli.runner import RunSettings, run_command

sys.path.insert(0, str(Path(__file__).parent / "fashion_scenes"))
from build import FashionScenes, default_photo_paths, write_split, write_two_garment_split

DEFAULT = canonical_name(f"reciprocam:{DEFAULT_PRESET}")
OPTIONS = (
    "prefix=reset", "prefix=zero", "prefix=reset,score=contrast", "subtract=empty",
    "prefix=reset,subtract=empty", "prefix=reset,fuse=2",
)  # fmt: skip
CANDIDATES = list(
    dict.fromkeys(
        [canonical_name(f"reciprocam:{preset}") for preset in ("openvino-xai", "otx", "official")]
        + [canonical_name(f"reciprocam:{p}:prefix=reset") for p in ("otx", "official")]
        + [
            canonical_name(f"reciprocam:{spec}")
            for spec in (
                "otx:block=-2,prefix=reset",
                "openvino-xai:block=-2,prefix=reset",
                "openvino-xai:block=-3,prefix=reset",
            )
        ]
        + [canonical_name(f"reciprocam:openvino-xai:{options}") for options in OPTIONS]
    )
)
SPLITS = {  # name: (first sample, count, garments per scene)
    "two-val": (6000, 200, 2), "one-val": (5000, 250, 1), "two-test": (7000, 200, 2), "one-test": (0, 500, 1),
}  # fmt: skip
TWO_COLUMNS = ["pointing_game", "discrimination", "energy_in_box", "adcc", "complexity", "seconds_per_image"]
ONE_COLUMNS = ["pointing_game", "energy_in_box", "adcc", "complexity", "seconds_per_image"]


def scenes(split: str, cache: Path) -> Path:
    """The split's scenes as PNGs with boxes.csv (and labels.csv for one-garment scenes), built once."""
    first, count, objects = SPLITS[split]
    data = cache / f"{split}-{first}-{count}"
    if not (data / "boxes.csv").is_file():
        source = FashionScenes("test", photo_paths=default_photo_paths())
        write = write_two_garment_split if objects == 2 else write_split
        write(source, range(first, first + count), data)
    return data


def evaluate(model: str, split: str, methods: list[str], out: Path, cache: Path, bootstrap: int = 0) -> dict:
    """``vitcam evaluate`` on a split (the finished run in ``out`` when its arguments match)."""
    done = out / "metrics.json"
    if done.is_file():
        metrics = json.loads(done.read_text())
        same = (metrics["model"]["model"], list(metrics["methods"]), metrics.get("bootstrap", 0))
        if same == (model, methods, bootstrap):
            print(f"reusing {out}", flush=True)
            return metrics
    data = scenes(split, cache)
    two = SPLITS[split][2] == 2
    options = EvaluateOptions(
        data=data, model=ModelSpec(model), boxes=data / "boxes.csv",
        labels=None if two else data / "labels.csv", target="boxes" if two else "label",
        methods=methods, insertion_deletion=False, out=out, bootstrap=bootstrap,
        run=RunSettings(batch_size=25, workers=1), overwrite=True,
    )  # fmt: skip
    started = time.perf_counter()
    run_command(Evaluate(options), None, "cpu", quiet=True)
    print(f"{model} {split}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(done.read_text())


def qualifies(name: str, runs: dict[str, dict[str, dict]]) -> bool:
    """Better discrimination, and right-object pointing at least the default's, on every model; nothing
    else lost beyond 0.02."""
    for model in runs.values():
        two, one = model["two-val"]["methods"], model["one-val"]["methods"]
        if two[name]["discrimination"] <= two[DEFAULT]["discrimination"]:
            return False
        if two[name]["pointing_game"] < two[DEFAULT]["pointing_game"]:
            return False
        kept = [
            (one[name]["pointing_game"], one[DEFAULT]["pointing_game"]),
            (one[name]["adcc"], one[DEFAULT]["adcc"]),
            (two[name]["adcc"], two[DEFAULT]["adcc"]),
        ]
        if any(value < reference - 0.02 for value, reference in kept):
            return False
    return True


def wins_quality_rule(name: str, runs: dict[str, dict[str, dict]]) -> bool:
    """Best ADCC (then pointing game) against the default, on both kinds of test scenes, every model."""
    for model in runs.values():
        for split in ("two-test", "one-test"):
            values = model[split]["methods"]
            ours = (round(values[name]["adcc"], 4), values[name]["pointing_game"])
            theirs = (round(values[DEFAULT]["adcc"], 4), values[DEFAULT]["pointing_game"])
            if ours <= theirs:
                return False
    return True


def validation_table(runs: dict[str, dict[str, dict]]) -> list[str]:
    lines = ["| method | " + " | ".join(
        f"{model}: {column}" for model in runs for column in ("two: pointing", "two: discrimination",
                                                             "two: adcc", "one: pointing", "one: adcc")
    ) + " | qualifies |"]  # fmt: skip
    lines.append("|---" * (5 * len(runs) + 2) + "|")
    for name in [*CANDIDATES, *BASELINES]:
        cells = []
        for model in runs.values():
            two, one = model["two-val"]["methods"][name], model["one-val"]["methods"][name]
            values = (
                two["pointing_game"],
                two["discrimination"],
                two["adcc"],
                one["pointing_game"],
                one["adcc"],
            )
            cells += [f"{value:.3f}" for value in values]
        verdict = "" if name in BASELINES else ("yes" if qualifies(name, runs) else "no")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fashion_scenes"))
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="METHOD",
        help="a candidate to report on the test splits too",
    )
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    runs: dict[str, dict[str, dict]] = {name: {} for name in models}
    methods = [*CANDIDATES, *BASELINES]
    for name, model in models.items():
        for split in ("two-val", "one-val"):
            out = RESULTS / f"discrimination-{split}-{name}-run"
            runs[name][split] = evaluate(model, split, methods, out, args.cache)
    qualified = [name for name in CANDIDATES if name != DEFAULT and qualifies(name, runs)]

    def mean_two(name: str) -> tuple[float, float]:
        values = [run["two-val"]["methods"][name] for run in runs.values()]
        return tuple(sum(v[key] for v in values) / len(values) for key in ("discrimination", "pointing_game"))

    chosen = max(qualified, key=mean_two) if qualified else None
    also = [canonical_name(method) for method in args.also]
    reported = list(
        dict.fromkeys([DEFAULT, *([chosen] if chosen else []), *also, *CANDIDATES[:3], *BASELINES])
    )
    for name, model in models.items():
        for split in ("two-test", "one-test"):
            out = RESULTS / f"discrimination-{split}-{name}-run"
            runs[name][split] = evaluate(model, split, reported, out, args.cache, args.bootstrap)
    default_worthy = chosen is not None and wins_quality_rule(chosen, runs)
    write_results(runs, models, chosen, default_worthy)


def write_results(
    runs: dict[str, dict[str, dict]], models: dict[str, str], chosen: str | None, default: bool
) -> None:
    lines = [
        "# Telling classes apart: ViT-ReciproCAM on two-garment and one-garment FashionScenes",
        "",
        "Generated by `python benchmarks/discrimination.py "
        + " ".join(f"--model {name}={model}" for name, model in models.items())
        + "`. Insertion/deletion AUC left out; ADCC on the explained class.",
        "",
        "## Validation (two-garment test samples 6000-6199, one-garment 5000-5249)",
        "",
        *validation_table(runs),
        "",
        f"Chosen on validation: {chosen or 'none qualifies'}.",
    ]
    for name in runs:
        for split, columns, title in (
            ("two-test", TWO_COLUMNS, "two-garment test scenes 7000-7199, both classes explained"),
            ("one-test", ONE_COLUMNS, "one-garment test scenes 0-499, the labelled class explained"),
        ):
            metrics = runs[name][split]
            lines += ["", f"## {name}: {title}", "", markdown(metrics, "", rule=False, columns=columns)]
    verdict = (
        f"{chosen} wins by the quality rule on both kinds of scenes on every model: it can be the default."
        if default
        else "No candidate wins by the quality rule (best ADCC, then pointing game) on both kinds of scenes "
        "on every model: the default stays" + (f", and {chosen} ships as a named choice." if chosen else ".")
    )
    lines += ["", "## Verdict", "", verdict]
    (RESULTS / "discrimination.md").write_text("\n".join(lines) + "\n")
    summary = {
        name: {split: run["methods"] for split, run in model_runs.items()}
        for name, model_runs in runs.items()
    }
    (RESULTS / "discrimination.json").write_text(
        json.dumps({"chosen": chosen, "default_worthy": default, "runs": summary}, indent=2) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
