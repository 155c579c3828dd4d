"""Does a whole ``vitcam explain`` run keep up with its engine on real-size photos?

    python benchmarks/pipeline.py                  # writes benchmarks/results/pipeline-cpu.{json,md}

Makes two folders of JPEGs from ``sample_images/photos`` (random crops and flips, resized): ImageNet-size
photos (longest side 375-640 px) and 12-MP phone photos (4032x3024, every second one stored on its side
with an EXIF orientation, as phones do). Then, for each folder:

- the engine alone: ``vitcam bench`` on random tensors, same model, batch and method;
- end to end: ``vitcam explain`` on the folder, its finished rows counted every 0.1 s; the rate is
  taken between 15% and 95% of the rows, so that start-up (imports, the model, worker processes) and
  the last overlays do not count;
- the bytes of the overlays against the bytes of the inputs;
- where the time goes: every stage of the run timed alone, per image, in this process (decode,
  preprocessing, engine, colour mapping and blending, encoding, writing, rows).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image

PHOTOS = Path(__file__).parents[1] / "sample_images" / "photos"
ENGINE_ARGS = ["--no-pretrained", "-b", "16"]
EXPLAIN_ARGS = [*ENGINE_ARGS, "--no-adcc", "--quiet"]


def make_folder(folder: Path, kind: str, count: int, seed: int = 0) -> None:
    """``count`` JPEGs made from the bundled photos: random crops and flips, resized for ``kind``."""
    rng = random.Random(seed)
    sources = sorted(PHOTOS.glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        with Image.open(sources[index % len(sources)]) as source:
            image = source.convert("RGB")
        fraction = rng.uniform(0.75, 1.0)
        width, height = round(image.width * fraction), round(image.height * fraction)
        left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
        image = image.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        exif = Image.Exif()
        if kind == "imagenet":
            scale = rng.randint(375, 640) / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            quality = 90
        else:
            image = image.resize((4032, 3024), Image.BICUBIC)
            quality = 92
            if index % 2:  # stored on its side; the EXIF orientation turns it upright
                image = image.transpose(Image.Transpose.ROTATE_90)
                exif[ExifTags.Base.Orientation] = 6
        image.save(folder / f"{kind}_{index:05d}.jpg", quality=quality, exif=exif.tobytes())


def vitcam(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vitcam_cli", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"vitcam {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def engine_rate(model: str, engine_args: list[str] = ENGINE_ARGS) -> float:
    """Images/s of the engine alone (``vitcam bench``) on random tensors."""
    bench = vitcam("bench", "--model", model, *engine_args, "--json")
    return json.loads(bench.stdout)["explain_images_per_s"]


def count_rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Images/s between the first sample with 15% of the rows and the first with 95%: start-up (imports,
    the model, the first batch) and the end (the last overlays) are left out."""
    start = next(s for s in samples if s[1] >= 0.15 * total)
    end = next(s for s in samples if s[1] >= 0.95 * total)
    return (end[1] - start[1]) / (end[0] - start[0])


def end_to_end(
    model: str, folder: Path, out: Path, extra: list[str], explain_args: list[str] = EXPLAIN_ARGS
) -> dict[str, Any]:
    """Steady-state images/s of one ``vitcam explain`` run (finished rows counted every 0.1 s) and the
    bytes its overlays take against the inputs' bytes."""
    files = sorted(folder.rglob("*.jpg"))
    command = [sys.executable, "-m", "vitcam_cli", "explain", str(folder), "--model", model, "-o", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen([*command, *explain_args, *extra], stderr=subprocess.PIPE, text=True)
    samples = []
    while process.poll() is None:
        samples.append((time.perf_counter() - started, count_rows(out / "results.jsonl")))
        time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"vitcam explain failed ({process.returncode}): {process.stderr.read()}")
    samples.append((time.perf_counter() - started, count_rows(out / "results.jsonl")))
    overlays = sum(path.stat().st_size for path in (out / "overlays").rglob("*") if path.is_file())
    inputs = sum(file.stat().st_size for file in files)
    return {
        "images": len(files),
        "wall_seconds": round(samples[-1][0], 2),
        "images_per_s": round(steady_rate(samples, len(files)), 2),
        "overlay_bytes_per_input_byte": round(overlays / inputs, 3),
        "input_mb": round(inputs / 2**20, 1),
    }


def _per_image(action: Callable[[], object], repeat: int = 5) -> float:
    action()
    started = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - started) / repeat * 1000


def stages(
    model: str, folder: Path, engine_images_per_s: float, overlay_args: dict[str, Any]
) -> dict[str, float]:
    """Milliseconds per image of each stage of an explain run, each timed alone (one thread for the
    image work, as in a decoding worker; the engine with every thread, from ``vitcam bench``)."""
    from torchvision.transforms import InterpolationMode

    from vitcam_cli.data import DecodePlan, decode_reduced, fit_within
    from vitcam_cli.models import load_model
    from vitcam_cli.outputs.atomic import write_atomic
    from vitcam_cli.outputs.manifest import Manifest
    from vitcam_cli.outputs.overlay import encode_overlay, render_overlay, view_in
    from vitcam_cli.outputs.rows import Row
    from vitcam_cli.preprocessing import Preprocessing, resize_pixels

    loaded = load_model(model, pretrained=False)
    preprocessing = Preprocessing(loaded.transform)
    plan = DecodePlan(preprocessing, overlay_args["side"])
    files = sorted(folder.glob("*.jpg"))[:8]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timings: dict[str, list[float]] = {}

    def add(name: str, action: Callable[[], object]) -> None:
        timings.setdefault(name, []).append(_per_image(action))

    saliency = torch.rand(loaded.layout.grid)
    with tempfile.TemporaryDirectory() as scratch:
        manifest = Manifest(Path(scratch), resume=False, needs_overlay=True, needs_map=False)
        for file in files:
            add("decode, full size (before)", lambda file=file: decode_reduced(file))
            pixels, original = decode_reduced(file, plan.first_decode)
            pixels = np.array(pixels)
            add("decode, reduced (draft)", lambda file=file: decode_reduced(file, plan.first_decode))
            add("preprocess for the model", lambda p=pixels, o=original: preprocessing(p, o))
            target = fit_within(original, overlay_args["side"])
            add(
                "resize the overlay copy",
                lambda p=pixels, t=target: resize_pixels(p, t, InterpolationMode.BILINEAR),
            )
            add("all of the decoding worker's work", lambda file=file: plan.decode(file))
            _, copy, size = plan.decode(file)
            view = view_in((copy.shape[1], copy.shape[0]), size, preprocessing.view(size))
            add(
                "colour mapping and blending",
                lambda c=copy, v=view: render_overlay(c, saliency, v, "inferno", 0.5),
            )
            overlay = render_overlay(copy, saliency, view, "inferno", 0.5)
            add(
                f"encoding ({overlay_args['format']})",
                lambda o=overlay: encode_overlay(o, overlay_args["format"]),
            )
            data = encode_overlay(overlay, overlay_args["format"])
            add("writing (temporary file, rename)",
                lambda d=data: write_atomic(Path(scratch) / "o.jpg", lambda h: h.write(d)))  # fmt: skip
            row = Row(path=str(file), overlay="overlays/o.jpg", probability=0.5)
            add("rows (results.jsonl)", lambda r=row: manifest.write([r]))
        manifest.close()
    torch.set_num_threads(threads)
    result = {name: round(statistics.mean(values), 2) for name, values in timings.items()}
    result["engine (vitcam bench, all threads)"] = round(1000 / engine_images_per_s, 2)
    return result


def measure_folder(
    model: str, folder: Path, work: Path, repeat: int, method: list[str], extra: list[str]
) -> dict[str, Any]:
    """``repeat`` pairs of (engine alone, end to end) with the same ``method`` options, each pair run
    back to back so that the machine's drift hits both alike; the medians of the rates and the ratios."""
    pairs = []
    for index in range(repeat):
        engine = engine_rate(model, [*ENGINE_ARGS, *method])
        run = end_to_end(model, folder, work / f"out-{folder.name}-{index}", [*method, *extra])
        pairs.append((engine, run))
    run = pairs[-1][1]
    return {
        **{key: run[key] for key in ("images", "input_mb", "overlay_bytes_per_input_byte")},
        "engine_images_per_s": round(statistics.median(engine for engine, _ in pairs), 2),
        "images_per_s": round(statistics.median(run["images_per_s"] for _, run in pairs), 2),
        "ratio_to_engine": round(statistics.median(run["images_per_s"] / engine for engine, run in pairs), 3),
        "runs": [{"engine_images_per_s": engine, **run} for engine, run in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--imagenet", type=int, default=480, help="ImageNet-size photos in the folder")
    parser.add_argument("--phone", type=int, default=160, help="12-MP photos in the folder")
    parser.add_argument("--repeat", type=int, default=3, help="(engine, end to end) pairs per folder")
    parser.add_argument("--variant", help="the preset of both the engine and explain (default: vitcam's)")
    parser.add_argument("--explain-args", nargs="*", default=[], help="extra options for vitcam explain")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="pipeline-cpu")
    args = parser.parse_args()

    from vitcam_cli.defaults import DEFAULT_OVERLAY_SIDE, DEFAULT_PRESET
    from vitcam_cli.runtime import device_name, library_versions

    variant = args.variant or DEFAULT_PRESET
    method = ["--variant", variant]  # named to both: bench's own default is every published preset
    folders: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, count in (("imagenet", args.imagenet), ("phone", args.phone)):
            folder = work / kind
            make_folder(folder, kind, count)
            run = measure_folder(args.model, folder, work, args.repeat, method, args.explain_args)
            overlay = {"side": DEFAULT_OVERLAY_SIDE, "format": "jpg"}
            run["stages_ms_per_image"] = stages(args.model, folder, run["engine_images_per_s"], overlay)
            folders[kind] = run
    result = {
        "model": args.model,
        "variant": variant,
        "explain_args": EXPLAIN_ARGS + args.explain_args,
        "device": device_name(torch.device("cpu")),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "folders": folders,
        "versions": library_versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    repeats = len(next(iter(result["folders"].values()))["runs"])
    lines = [
        f"`vitcam explain` end to end against its engine (`vitcam bench`, run just before each explain "
        f"run), both with the `{result['variant']}` preset: {result['model']}, "
        f"`{' '.join(result['explain_args'])}`, "
        f"{result['device']}, {result['date']}. Medians of {repeats} pairs.",
        "",
        "| folder | images | engine images/s | explain images/s | vs the engine "
        "| overlay bytes / input bytes "
        "|",
        "|---|---|---|---|---|---|",
    ]
    names = {"imagenet": "ImageNet-size JPEGs (375-640 px)", "phone": "12-MP phone JPEGs (4032x3024)"}
    for kind, run in result["folders"].items():
        lines.append(
            f"| {names[kind]} | {run['images']} | {run['engine_images_per_s']:.1f} "
            f"| {run['images_per_s']:.1f} | {run['ratio_to_engine']:.2f} "
            f"| {run['overlay_bytes_per_input_byte']:.2f} |"
        )
    lines += ["", "Milliseconds per image of each stage, timed alone:", ""]
    kinds = list(result["folders"])
    lines += ["| stage | " + " | ".join(names[k] for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for stage in result["folders"][kinds[0]]["stages_ms_per_image"]:
        cells = " | ".join(f"{result['folders'][k]['stages_ms_per_image'][stage]:.1f}" for k in kinds)
        lines.append(f"| {stage} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
