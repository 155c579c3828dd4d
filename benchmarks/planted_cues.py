"""Ground-truth faithfulness with planted cues: does a saliency map find the evidence a model really uses?

    python benchmarks/planted_cues.py --models benchmarks/planted_cues/models --count 30 \
        --out benchmarks/results

Each model folder under ``--models`` is a timm export with a ``cue.json`` (``{"kind": "logo", "cue_class":
"Shirt", "twin": "clean"}``; ``"kind": null`` for a clean twin trained the same way without a cue). The
models are made by ``benchmarks/fashion_scenes/train.py --cue KIND`` on the scenes of
``benchmarks/fashion_scenes/cues.py``, where every scene of the cue class carries the cue and no other does.

1. Reliance (``OUT/cue-reliance.{json,md}``, forward passes only): accuracy on FashionScenes test scenes
   ``0 .. --reliance-scenes - 1`` with the cue (as in training) and without it (every cue removed), for
   the cue class and the others; the mean probability of the cue class on its first ``--class-scenes``
   test scenes with the cue present, blanked (the same scene without it) and, for the logo, moved to the
   opposite corner; and how often the cue planted on the other classes' scenes makes the model say the
   cue class. Clean twins and the bundled model are measured on every cue kind, as controls.
2. Saliency (``OUT/planted-cues.{json,md}``): for each cue model, on the cue class's first ``--count``
   test scenes with the cue present, every method of ``METHODS`` (or ``--methods``) explains the cue
   class; scored on the map's token grid: how often the map's peak cell (the first, row-major, on ties)
   lies on the cue (a cell counts as on the cue when at least half of its pixels are in the cue's
   region), and the share of the map's mass on the cue's cells after min-max scaling (a constant map
   counts as uniform), against the cue's area share (its cells / all cells). The clean twin is explained
   on the same scenes as a control: it was never trained with the cue, so mass it puts there is not
   evidence the model used. 95% bootstrap intervals over scenes.
3. On the clean twins and the bundled ``fashion-vit``: the one-garment pointing game, energy-in-box and
   ADCC against the garment's box, through ``vitcam evaluate`` as ``quality.py`` runs it, on FashionScenes
   test scenes ``0 .. --garment-scenes - 1`` (insertion/deletion left out), with 95% bootstrap intervals.

To add a setting, add its method string to ``METHODS`` (or pass ``--methods``) and rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from quality import test_images
from timm.data import create_transform, resolve_input_data_config

from vitcam_cli import Explainer
from vitcam_cli.commands.evaluate import Evaluate, EvaluateOptions
from vitcam_cli.methods.factory import canonical_name
from vitcam_cli.models import ModelSpec
from vitcam_cli.runner import RunSettings, run_command

sys.path.insert(0, str(Path(__file__).parent / "fashion_scenes"))
from build import CLASS_NAMES
from cues import CUE_KINDS, CuedScenes

# one method string per line: a new setting is one more line
METHODS = [
    "reciprocam:official",
    "reciprocam:official:single",
    "reciprocam:otx",
    "reciprocam:otx:single",
    "reciprocam:openvino-xai",
    "reciprocam:openvino-xai:single",
    "reciprocam:discriminative",
    "reciprocam:discriminative:single",
    "reciprocam:openvino-xai:block=2,prefix=reset",
    "reciprocam:openvino-xai:block=1,prefix=reset",
    "reciprocam:openvino-xai:fuse=2",
    "reciprocam:openvino-xai:fuse=4",
    "reciprocam:openvino-xai:fuse=3,prefix=reset",
    "reciprocam:openvino-xai:fuse=3",
    "reciprocam:otx:fuse=4",
    "reciprocam:fused",  # the default: openvino-xai, single-token kernel, up to 4 blocks fused
    "gradcam",
    "rollout",
    "relevance",
]
BUNDLED = "fashion-vit"
ON_CUE = 0.5  # a grid cell is on the cue when at least this share of its pixels is in the cue's region
GRID = 14


def load_models(folder: Path) -> dict[str, dict[str, Any]]:
    """Each model folder's cue.json, with its path; cue models first, by kind, then the clean twins."""
    models = {}
    for config in sorted(folder.glob("*/cue.json")):
        models[config.parent.name] = {**json.loads(config.read_text()), "path": config.parent}
    order = {kind: i for i, kind in enumerate(CUE_KINDS)}
    return dict(sorted(models.items(), key=lambda item: (order.get(item[1]["kind"], 99), item[0])))


def interval(values: np.ndarray, resamples: int, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over the first axis (None without resamples)."""
    if resamples <= 0 or len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(resamples, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def model_folder(spec: str | Path) -> Path:
    """The export folder of a model folder or of the bundled model's name."""
    if str(spec) == BUNDLED:
        return Path(__file__).parents[1] / "vitcam_cli" / "assets" / "fashion-vit"
    return Path(spec)


def digest(spec: str | Path) -> str:
    """A short hash of a model's weights: cached results are reused only for the same weights."""
    return hashlib.sha256((model_folder(spec) / "model.safetensors").read_bytes()).hexdigest()[:12]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def cached(cache: Path | None, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its result saved under ``key`` in ``cache`` by an earlier run (one JSON file per
    unit of work: a rerun after an interruption, or with one more method, redoes only what is missing)."""
    if cache is None:
        return compute()
    path = cache / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, default=str))
    os.replace(tmp, path)
    return value


class Classifier:
    """A timm export, preprocessed as vitcam and train.py preprocess it; softmax probabilities."""

    def __init__(self, spec: str) -> None:
        self.model = timm.create_model(f"local-dir:{model_folder(spec)}", pretrained=True).eval()
        self.transform = create_transform(**resolve_input_data_config(self.model), is_training=False)

    @torch.inference_mode()
    def probabilities(self, images: list[Any], batch: int = 250) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), batch):
            inputs = torch.stack([self.transform(image) for image in images[start : start + batch]])
            chunks.append(torch.softmax(self.model(inputs), -1).numpy())
        return np.concatenate(chunks)


@cache
def test_scenes(kind: str | None, mode: str = "present", carriers: str = "class") -> CuedScenes:
    return CuedScenes("test", kind, mode, carriers=carriers)


def render(
    kind: str | None, mode: str, indices: list[int], carriers: str = "class"
) -> tuple[list, np.ndarray]:
    scenes = test_scenes(kind, mode, carriers)
    rendered = [scenes.scene(i) for i in indices]
    return [s.image for s in rendered], np.array([s.label for s in rendered])


def reliance(model: Classifier, kind: str, cue_class: int, args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy with and without the cue, the cue class's probability with it present, blanked and
    moved, and how often the cue alone (on other classes' scenes) makes the model say the cue class."""
    everything = list(range(args.reliance_scenes))
    of_class = test_scenes(kind).of_class(cue_class, args.class_scenes)
    result: dict[str, Any] = {"kind": kind, "scenes": len(everything), "class_scenes": len(of_class)}
    for mode in ("present", "absent"):
        images, labels = render(kind, mode, everything)
        predicted = model.probabilities(images).argmax(1)
        right = predicted == labels
        ours = labels == cue_class
        key = "with_cue" if mode == "present" else "without_cue"
        result[key] = {
            "accuracy": float(right.mean()),
            "cue_class_accuracy": float(right[ours].mean()),
            "other_classes_accuracy": float(right[~ours].mean()),
            "cue_class_scenes": int(ours.sum()),
        }
    modes = ("present", "absent", "moved") if kind == "logo" else ("present", "absent")
    for mode in modes:
        images, _ = render(kind, mode, of_class)
        probability = model.probabilities(images)
        p = probability[:, cue_class]
        result[f"probability_{mode}"] = {
            "mean": float(p.mean()),
            "interval": interval(p, args.bootstrap),
            "predicted_as_cue_class": int((probability.argmax(1) == cue_class).sum()),
            "n": len(p),
        }
    labels = test_scenes(None).labels
    others = [i for i in everything if labels[i % len(labels)] != cue_class]
    for carriers, key in (("all", "cue_on_other_classes"), ("class", "other_classes_plain")):
        images, _ = render(kind, "present", others, carriers)
        probability = model.probabilities(images)
        result[key] = {
            "predicted_as_cue_class": int((probability.argmax(1) == cue_class).sum()),
            "mean_probability": float(probability[:, cue_class].mean()),
            "n": len(others),
        }
    return result


def cue_cells(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the grid cells at least ON_CUE of whose pixels are in the region."""
    rows, cols = grid
    height, width = mask.shape
    cover = mask.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))
    return cover >= ON_CUE


def score_maps(maps: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: whether the peak cell is on the cue, and the min-max scaled map's mass share on it."""
    flat, on = maps.reshape(len(maps), -1), cells.reshape(len(cells), -1)
    peak = on[np.arange(len(flat)), flat.argmax(1)]
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    scaled = np.where(high > low, (flat - low) / np.maximum(high - low, 1e-12), 1.0)
    share = (scaled * on).sum(1) / np.maximum(scaled.sum(1), 1e-12)
    return peak.astype(float), share


def explain(model_path: Path, method: str, images: list, cue_class: int) -> tuple[np.ndarray, float]:
    explainer = Explainer(f"local-dir:{model_path}", method=method, device="cpu")
    started = time.perf_counter()
    result = explainer(images, labels=[CLASS_NAMES[cue_class]] * len(images))
    return result.maps[:, 0].numpy(), (time.perf_counter() - started) / len(images)


def measure_maps(
    path: Path, method: str, images: list, cue_class: int, cells: np.ndarray, who: str, bootstrap: int
) -> dict[str, Any]:
    """One method on one model: peak-on-cue and mass share per scene, their means and intervals."""
    maps, seconds = explain(path, method, images, cue_class)
    peak, share = score_maps(maps, cells)
    return {
        f"{who}peak_on_cue": float(peak.mean()),
        f"{who}peak_count": int(peak.sum()),
        f"{who}peak_interval": interval(peak, bootstrap),
        f"{who}mass_share": float(share.mean()),
        f"{who}mass_interval": interval(share, bootstrap),
        f"{who}seconds_per_image": seconds,
    }


def saliency(
    cue_model: dict[str, Any],
    twin: dict[str, Any] | None,
    methods: list[str],
    args: argparse.Namespace,
    mode: str = "present",
) -> dict[str, Any]:
    """Peak-on-cue and mass share of every method on the cue model (and its clean twin) on cue scenes
    (``mode`` "moved": the logo in the other corner, where a faithful map should follow it)."""
    kind, cue_class = cue_model["kind"], CLASS_NAMES.index(cue_model["cue_class"])
    scenes = test_scenes(kind, mode)
    indices = scenes.of_class(cue_class, args.count)
    rendered = [scenes.scene(i) for i in indices]
    images = [s.image for s in rendered]
    cells = np.stack([cue_cells(s.cue, (GRID, GRID)) for s in rendered])
    predicted = Classifier(str(cue_model["path"])).probabilities(images).argmax(1)
    out: dict[str, Any] = {
        "model": cue_model["path"].name,
        "kind": kind,
        "mode": mode,
        "twin": twin["path"].name if twin else None,
        "scenes": len(images),
        "indices": indices,
        "predicted_as_cue_class": int((predicted == cue_class).sum()),
        "area_share": float(cells.reshape(len(cells), -1).mean(1).mean()),
        "methods": {},
    }
    for method in methods:
        name = canonical_name(method)
        row: dict[str, Any] = {}
        for who, model in (("", cue_model), ("twin_", twin)):
            if model is None:
                continue

            key = (
                f"saliency-{kind}-{mode}-{digest(cue_model['path'])}-{digest(model['path'])}-{who or 'cue'}-"
                f"{args.count}-{args.bootstrap}-{slug(name)}"
            )
            work = partial(measure_maps, model["path"], method, images, cue_class, cells, who, args.bootstrap)
            row |= cached(args.cache, key, work)
        out["methods"][name] = row
        print(
            f"{kind} {mode} {name}: peak {row['peak_count']}/{len(images)} share {row['mass_share']:.3f}"
            + (f" (twin {row['twin_peak_count']}, {row['twin_mass_share']:.3f})" if twin else ""),
            flush=True,
        )
    return out


def garments(model: str, methods: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``vitcam evaluate`` with the garment boxes: pointing game, energy-in-box and ADCC, one run per
    method (each cached)."""
    folder = model_folder(model.removeprefix("local-dir:"))
    results = {}
    for method in methods:
        key = (
            f"garments-{digest(folder)}-{args.garment_scenes}-{args.bootstrap}-{slug(canonical_name(method))}"
        )
        results |= cached(args.cache, key, lambda m=method: evaluate_garments(model, [m], args, out))
    return results


def evaluate_garments(model: str, methods: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = test_images(0, args.garment_scenes)
    options = EvaluateOptions(
        data=data, model=ModelSpec(model), labels=data / "labels.csv", boxes=data / "boxes.csv",
        target="label", methods=methods, insertion_deletion=False, out=out, bootstrap=args.bootstrap,
        run=RunSettings(batch_size=25, workers=1), overwrite=True,
    )  # fmt: skip
    run_command(Evaluate(options), None, "cpu", quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("pointing_game", "energy_in_box", "adcc", "accuracy", "n", "seconds_per_image")
    return {
        name: {
            **{key: values[key] for key in keep if key in values},
            "intervals": {
                k: v
                for k, v in values.get("intervals", {}).items()
                if k in ("pointing_game", "energy_in_box", "adcc")
            },
        }
        for name, values in metrics["methods"].items()
    }


def fmt(value: float, bounds: list[float] | None, digits: int = 3) -> str:
    text = f"{value:.{digits}f}"
    return text + (f" ({bounds[0]:.{digits}f}-{bounds[1]:.{digits}f})" if bounds else "")


def reliance_line(r: dict[str, Any]) -> str:
    p = [
        f"{r['probability_present']['mean']:.3f} with the cue",
        f"{r['probability_absent']['mean']:.3f} blanked",
    ]
    if "probability_moved" in r:
        p.append(f"{r['probability_moved']['mean']:.3f} moved")
    return f"cue-class probability {', '.join(p)} (n = {r['probability_present']['n']})"


def reliance_markdown(results: dict[str, dict[str, dict[str, Any]]], header: str) -> str:
    lines = [
        "# Reliance on the planted cues",
        "",
        header,
        "",
        "| model | cue scenes | accuracy with cue | without | cue class with cue | without | "
        "P(cue class): present | blanked | moved | cue on other classes → cue class |",
        "|---" * 10 + "|",
    ]
    for model, kinds in results.items():
        for kind, r in kinds.items():
            moved = r.get("probability_moved")
            alone, plain = r["cue_on_other_classes"], r["other_classes_plain"]
            lines.append(
                f"| {model} | {kind} | {r['with_cue']['accuracy']:.3f} | "
                f"{r['without_cue']['accuracy']:.3f} | "
                f"{r['with_cue']['cue_class_accuracy']:.3f} | {r['without_cue']['cue_class_accuracy']:.3f} | "
                f"{fmt(r['probability_present']['mean'], r['probability_present']['interval'])} | "
                f"{fmt(r['probability_absent']['mean'], r['probability_absent']['interval'])} | "
                + (f"{fmt(moved['mean'], moved['interval'])} | " if moved else "- | ")
                + f"{alone['predicted_as_cue_class']}/{alone['n']} "
                f"(plain {plain['predicted_as_cue_class']}) |"
            )
    return "\n".join(lines)


def saliency_markdown(
    cues: dict[str, Any], clean: dict[str, Any], relied: dict[str, Any], header: str
) -> str:
    lines = ["# Planted cues: where does each method put the evidence?", "", header, ""]
    kinds = list(cues)
    if kinds:
        methods = list(next(iter(cues.values()))["methods"])
        lines += [
            "## Summary: peak on the cue (scenes) / mass share on the cue's cells",
            "",
            "| method | " + " | ".join(kinds) + " |",
            "|---" * (len(kinds) + 1) + "|",
            "| *area share* | " + " | ".join(f"*{cues[k]['area_share']:.3f}*" for k in kinds) + " |",
        ]
        for method in methods:
            cells = []
            for k in kinds:
                row = cues[k]["methods"].get(method)
                cells.append(
                    f"{row['peak_count']}/{cues[k]['scenes']} · {row['mass_share']:.3f}" if row else "-"
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for result in cues.values():
        r = relied[result["model"]][result["kind"]]
        moved = result["mode"] == "moved"
        lines += [
            f"## {result['kind']}{', moved' if moved else ''}: model `{result['model']}`",
            "",
            f"Reliance: {reliance_line(r)}. Scenes: the first {result['scenes']} test scenes of the cue "
            f"class with the cue{' moved to the bottom-right corner' if moved else ''} "
            f"({result['predicted_as_cue_class']} predicted as the cue class); the cue's "
            f"area share {result['area_share']:.3f}. Control: the clean twin `{result['twin']}` on the same "
            "scenes.",
            "",
            "| method | peak on cue | mass share on cue | twin: peak on cue | twin: mass share | s/image |",
            "|---|---|---|---|---|---|",
        ]
        for method, row in result["methods"].items():
            n = result["scenes"]
            twin = (
                f"{row['twin_peak_count']}/{n} | {fmt(row['twin_mass_share'], row['twin_mass_interval'])}"
                if "twin_peak_count" in row
                else "- | -"
            )
            lines.append(
                f"| {method} | {row['peak_count']}/{n} {fmt(row['peak_on_cue'], row['peak_interval'], 2)} | "
                f"{fmt(row['mass_share'], row['mass_interval'])} | {twin} | {row['seconds_per_image']:.4f} |"
            )
        lines.append("")
    for model, methods in clean.items():
        accuracy = next(iter(methods.values())).get("accuracy", float("nan"))
        n = next(iter(methods.values())).get("n", 0)
        lines += [
            f"## No cue: `{model}` against the garment's box ({n} one-garment test scenes, "
            f"accuracy {accuracy:.3f})",
            "",
            "| method | pointing game | energy in box | ADCC |",
            "|---|---|---|---|",
        ]
        for method, values in methods.items():
            intervals = values.get("intervals", {})
            lines.append(
                f"| {method} | "
                + " | ".join(
                    fmt(values[k], intervals.get(k)) for k in ("pointing_game", "energy_in_box", "adcc")
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).parent
    parser.add_argument("--models", type=Path, default=here / "planted_cues" / "models")
    parser.add_argument("--out", type=Path, default=here / "results")
    parser.add_argument("--count", type=int, default=30, help="cue scenes explained per cue model")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="method strings (default: METHODS)")
    parser.add_argument("--only", nargs="+", help="only these model folders (and their twins)")
    parser.add_argument("--reliance-scenes", type=int, default=1000, help="test scenes for accuracy")
    parser.add_argument("--class-scenes", type=int, default=200, help="cue-class scenes for probabilities")
    parser.add_argument("--garment-scenes", type=int, default=100, help="scenes for the clean models' table")
    parser.add_argument(
        "--bundled", default=BUNDLED, help="the model without a cue besides the twins ('' none)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--reliance-only", action="store_true")
    parser.add_argument("--skip-garments", action="store_true", help="leave out the clean models' table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/planted_cues/cache"),
        help="one JSON per unit of work (model weights, settings, method), reused by later runs",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    models = load_models(args.models)
    if args.only:
        wanted = set(args.only) | {models[m].get("twin") for m in args.only if m in models}
        models = {name: model for name, model in models.items() if name in wanted}
    if not models:
        sys.exit(f"planted_cues.py: no model folder with a cue.json in {args.models}")
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), fp32"
    stamp = time.strftime("%Y-%m-%d")
    repo = Path(__file__).resolve().parents[1]
    settings = {  # paths inside the repository as relative paths
        key: (str(value.resolve().relative_to(repo)) if value.resolve().is_relative_to(repo) else str(value))
        if isinstance(value, Path)
        else value
        for key, value in vars(args).items()
    }
    args.out.mkdir(parents=True, exist_ok=True)

    relied: dict[str, dict[str, Any]] = {}
    controls = {name: model for name, model in models.items() if model["kind"] is None}
    if args.bundled:
        controls[args.bundled] = {"kind": None, "cue_class": "Shirt", "path": args.bundled}
    for name, model in {**models, **controls}.items():
        classifier = Classifier(str(model["path"]))
        cue_class = CLASS_NAMES.index(model["cue_class"])
        kinds = CUE_KINDS if model["kind"] is None else (model["kind"],)
        relied[name] = {
            kind: cached(
                args.cache,
                f"reliance-{kind}-{digest(model['path'])}-{args.reliance_scenes}-{args.class_scenes}-"
                f"{args.bootstrap}",
                partial(reliance, classifier, kind, cue_class, args),
            )
            for kind in kinds
        }
        for kind, r in relied[name].items():
            print(f"reliance {name} on {kind}: {reliance_line(r)}", flush=True)
    header = (
        f"FashionScenes test scenes with planted cues (`benchmarks/fashion_scenes/cues.py`); accuracy on "
        f"test scenes 0-{args.reliance_scenes - 1}, probabilities on the cue class's first "
        f"{args.class_scenes} test scenes, 95% bootstrap intervals ({args.bootstrap} resamples); {machine}, "
        f"{stamp}."
    )
    (args.out / "cue-reliance.json").write_text(
        json.dumps({"settings": settings | {"machine": machine, "date": stamp}, "models": relied},
                   indent=2, default=str) + "\n"
    )  # fmt: skip
    (args.out / "cue-reliance.md").write_text(reliance_markdown(relied, header) + "\n")
    if args.reliance_only:
        return

    cues = {}
    for name, model in models.items():
        if model["kind"] is None:
            continue
        twin = models.get(model.get("twin"))
        for mode in ("present", "moved") if model["kind"] == "logo" else ("present",):
            cues[name if mode == "present" else f"{name}, moved"] = saliency(
                model, twin, args.methods, args, mode
            )
    clean = {}
    if not args.skip_garments:
        for name, model in controls.items():
            spec = str(model["path"]) if name == args.bundled else f"local-dir:{model['path']}"
            clean[name] = garments(spec, args.methods, args, Path("/tmp/planted_cues") / f"garments-{name}")
            print(f"garments {name}: done", flush=True)
    seconds = time.time() - started
    header = (
        f"Each cue model explains its cue class on the class's first {args.count} FashionScenes test scenes "
        f"with the cue; peak on cue: scenes whose map peaks on a cue cell; mass share: the min-max scaled "
        f"map's share on the cue's cells (a cell is on the cue when half its pixels are); 95% bootstrap "
        f"intervals over scenes ({args.bootstrap} resamples); {machine}, {stamp}. s/image: seconds per "
        f"scene explaining, as timed when the unit ran (the machine is shared, so timings are rough)."
    )
    summary = {
        "settings": settings | {"machine": machine, "date": stamp, "seconds": seconds},
        "reliance": relied,
        "cues": cues,
        "clean": clean,
    }
    (args.out / "planted-cues.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.out / "planted-cues.md").write_text(saliency_markdown(cues, clean, relied, header) + "\n")
    print(f"wrote {args.out / 'planted-cues.md'} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
