"""Does memory stay flat and throughput steady as a folder grows? ``vitcam explain`` on N synthetic images.

    python benchmarks/streaming.py --count 10000          # writes benchmarks/results/streaming.{json,md}

Writes N random-noise PNGs to a temporary folder, runs the real ``vitcam explain`` command on them in
a subprocess, and samples that process tree's resident memory (VmRSS of the command and its DataLoader
workers, from /proc) and the number of finished rows every half second. Reports, per tenth of the
run, the peak memory so far and the images/s within that tenth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (DataLoader workers), in MiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for process in pids:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(sub / f"{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic images, in pixels")
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--model-args", nargs="*", default=["--no-pretrained", "--img-size", "112"])
    parser.add_argument("--explain-args", nargs="*", default=["--batch-size", "16", "--variant", "official"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "out"
        write_images(images, args.count, args.size, seed=0)
        command = [
            sys.executable, "-m", "vitcam_cli", "explain", str(images), "--model", args.model,
            *args.model_args, "-o", str(out), "--quiet", *args.explain_args,
        ]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command)
        samples = []
        while process.poll() is None:
            rows = count_lines(out / "results.jsonl")
            samples.append((time.perf_counter() - started, rows, tree_rss_mb(process.pid)))
            time.sleep(0.5)
        if process.returncode != 0:
            raise SystemExit(f"vitcam explain failed with exit code {process.returncode}")
        wall = time.perf_counter() - started
        samples.append((wall, count_lines(out / "results.jsonl"), samples[-1][2] if samples else 0.0))
        summary = json.loads((out / "summary.json").read_text())

    tenths = []
    for tenth in range(1, 11):
        goal = args.count * tenth // 10
        previous = args.count * (tenth - 1) // 10
        inside = [s for s in samples if s[1] <= goal]
        # the first tenth starts at the first finished row: loading the model is not throughput
        start = next(s for s in samples if s[1] >= max(previous, 1))
        end = next((s for s in samples if s[1] >= goal), samples[-1])
        rate = (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else float("nan")
        tenths.append(
            {
                "images_done": goal,
                "peak_rss_mb": round(max(s[2] for s in inside), 1),
                "images_per_s": round(rate, 2),
            }
        )

    result = {
        "command": " ".join(command[1:]).replace(str(images), "IMAGES").replace(str(out), "OUT"),
        "count": args.count,
        "wall_seconds": round(wall, 1),
        "device": summary["device"],
        "versions": summary["versions"],
        "tenths": tenths,
    }
    lines = [
        f"`vitcam explain` on {args.count} synthetic {args.size}x{args.size} PNGs ({args.model}, "
        f"{' '.join(args.model_args + args.explain_args)}), {summary['device']}, "
        f"{time.strftime('%Y-%m-%d')}: "
        f"{wall:.0f} s in all.",
        "",
        "| images done | peak RSS so far (MiB) | images/s in this tenth |",
        "|---|---|---|",
        *(f"| {t['images_done']} | {t['peak_rss_mb']:.0f} | {t['images_per_s']:.1f} |" for t in tenths),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
