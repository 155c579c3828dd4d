"""``vitcam audit`` on the planted-cue models and their clean twins: what it finds, and what it costs.

    python benchmarks/audit.py --count 300     # writes benchmarks/results/audit.{json,md}

For each model of ``benchmarks/planted_cues/models`` and the bundled ``fashion-vit``, FashionScenes test
scenes ``--first`` .. ``--first + --count - 1`` are built (the cue on every scene of the cue class, as
in training, for a cue model; plain scenes for a clean one), then explained twice, each timed as a
whole command in a fresh process: ``vitcam explain`` with the audit's method and its maps saved, and
``vitcam audit`` (the same explanation, then the analysis and its interventions). Reported: the
verified findings in order, whether the first is the cue class and its region covers the cue's box
(a logo's), and the audit's time against the explain run's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "fashion_scenes"))
from cues import LOGO_BOX  # noqa: E402

MODELS = HERE / "planted_cues" / "models"


def build(kind: str | None, folder: Path, count: int, first: int) -> Path:
    if (folder / "labels.csv").is_file():
        return folder
    command = [sys.executable, str(HERE / "fashion_scenes" / "cues.py"), "--kind", kind or "logo", "--split",
               "test", "--count", str(count), "--first", str(first), "--out", str(folder)]  # fmt: skip
    if kind is None:
        command += ["--mode", "absent"]
    subprocess.run(command, check=True, capture_output=True)
    return folder


def timed(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitcam_cli", *arguments], check=True, capture_output=True)
    return time.perf_counter() - started


def covers(region: list[int], box: tuple[int, int, int, int]) -> bool:
    return region[0] <= box[0] and region[1] <= box[1] and region[2] >= box[2] and region[3] >= box[3]


def audit_model(name: str, model: str, kind: str | None, scenes: Path, work: Path) -> dict[str, Any]:
    images, labels = str(scenes / "images"), str(scenes / "labels.csv")
    common = [images, "--model", model, "--labels", labels, "-q", "--overwrite"]
    explain = timed(["explain", *common, "--method", "reciprocam:fused", "--save-maps", "--no-overlays",
                     "--no-adcc", "-o", str(work / f"{name}-explain")])  # fmt: skip
    audit = timed(["audit", *common, "-o", str(work / f"{name}-audit")])
    findings = json.loads((work / f"{name}-audit" / "findings.json").read_text())
    verified = [item for item in findings["shortcuts"] if item["verified"]]
    first = verified[0] if verified else None
    return {
        "model": name,
        "cue": kind,
        "images": findings["images"],
        "verified": [(item["class_name"], item["region"]) for item in verified],
        "first_is_cue_class": bool(first and kind and first["class_name"] == "Shirt"),
        "covers_logo": bool(first and kind == "logo" and covers(first["region"], LOGO_BOX)),
        "tested": len(findings["shortcuts"]),
        "explain_seconds": round(explain, 2),
        "audit_seconds": round(audit, 2),
        "analysis_seconds": findings["analysis_seconds"],
        "ratio": round(audit / explain, 3),
    }


def table(rows: list[dict[str, Any]], header: str) -> str:
    columns = (
        "model | cue | images | verified findings (class, region) | first is the cue class | covers the "
        "logo | candidates tested | explain s | audit s | of which analysis s | audit / explain"
    )
    lines = [header, "", f"| {columns} |", "|---" * 11 + "|"]
    for row in rows:
        found = "; ".join(f"{name} {region}" for name, region in row["verified"]) or "none"
        lines.append(
            f"| {row['model']} | {row['cue'] or '-'} | {row['images']} | {found} | "
            f"{row['first_is_cue_class']} | {row['covers_logo']} | {row['tested']} | "
            f"{row['explain_seconds']} | {row['audit_seconds']} | {row['analysis_seconds']} | "
            f"{row['ratio']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument(
        "--first", type=int, default=2000, help="first test scene (the saliency tables use 0..)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitcam-audit-benchmark"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows = []
    for folder in sorted(MODELS.iterdir()):
        kind = json.loads((folder / "cue.json").read_text())["kind"]
        scenes = build(kind, args.work / f"scenes-{kind or 'plain'}", args.count, args.first)
        rows.append(audit_model(folder.name, f"local-dir:{folder}", kind, scenes, args.work))
        print(rows[-1], flush=True)
    plain = build(None, args.work / "scenes-plain", args.count, args.first)
    rows.append(audit_model("fashion-vit", "fashion-vit", None, plain, args.work))
    header = (
        f"`vitcam audit` with its defaults (reciprocam:fused maps, 10 candidates, 48 images per test) on "
        f"FashionScenes test scenes {args.first}-{args.first + args.count - 1}, labels given; "
        f"{platform.processor() or platform.machine()}, 2 CPU threads, {time.strftime('%Y-%m-%d')}. Times "
        "are whole commands in a fresh process (start-up included)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audit.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    (args.out / "audit.md").write_text(table(rows, header))
    print(table(rows, header))


if __name__ == "__main__":
    main()
