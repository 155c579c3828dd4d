"""The audit's report.html: its verified findings with their evidence, each class's evidence, and each
class's strategies; self-contained like every vitcam page (pictures as data: URIs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitcam_cli.analysis.audit import AuditResult
from vitcam_cli.analysis.shortcuts import DROP, GAIN, Test, pixels
from vitcam_cli.data import DecodePlan
from vitcam_cli.models import LoadedModel
from vitcam_cli.outputs import counted
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.overlay import colormap_table
from vitcam_cli.outputs.report import PAGE_STYLE, TEMPLATES, draw_boxes, picture_view, thumbnail
from vitcam_cli.paths import fs_text
from vitcam_cli.preprocessing import Preprocessing

EXEMPLARS = 4
STYLE = (
    PAGE_STYLE
    + """
.finding { background: var(--paper); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  margin: 0 0 14px; }
.finding.verified { border-color: #cf222e; }
.strip { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.strip figure { margin: 0; width: 128px; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.strip img { display: block; width: 128px; height: auto; border-radius: 4px; }
.classes { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
.class { background: var(--paper); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.class h3, .finding h3 { margin: 0 0 6px; font-size: 15px; }
"""
)


def evidence_picture(distribution: np.ndarray, size: tuple[int, int], colormap: str) -> np.ndarray:
    """A mean distribution as an (H, W, 3) uint8 coloured picture at the model's input size (H, W)."""
    values = torch.from_numpy(np.asarray(distribution, dtype=np.float32))[None, None]
    upsampled = F.interpolate(values, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = upsampled.min(), upsampled.max()
    scaled = (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)
    return colormap_table(colormap)[(scaled * 255).astype(np.uint8)]


def _heatmap(distribution: np.ndarray, size: tuple[int, int], colormap: str) -> bytes:
    return thumbnail(evidence_picture(distribution, size, colormap), 128)


def _named(encoded: bytes, name: str) -> dict[str, Any]:
    return picture_view(encoded, name) | {"name": name}


class Pictures:
    """The model's view of an image (its input, denormalised), with a region drawn when given."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.preprocessing = Preprocessing(loaded.transform)
        self.plan = DecodePlan(self.preprocessing, None)
        self.mean = np.asarray(loaded.data_config["mean"], dtype=np.float32)
        self.std = np.asarray(loaded.data_config["std"], dtype=np.float32)

    def __call__(self, path: str, box: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
        try:
            tensor = self.preprocessing.finish(self.plan.decode(Path(path))[0][None])[0]
        except Exception:  # moved or changed since it was explained: the name alone
            return {"source": None, "name": fs_text(Path(path).name)}
        pixels = np.clip(tensor.permute(1, 2, 0).numpy() * self.std + self.mean, 0, 1)
        image = (pixels * 255 + 0.5).astype(np.uint8)
        if box is not None:
            image = draw_boxes(image, [tuple(float(v) for v in box)])
        return _named(thumbnail(image, 128), fs_text(Path(path).name))


def _finding(test: Test, result: AuditResult, pictures: Pictures) -> dict[str, Any]:
    evidence = test.candidate.evidence
    box = pixels(test.candidate.cells, result.grid, result.input_size)
    own = evidence.images[: len(test.examples)]
    return {
        "name": evidence.class_name,
        "verified": test.verified,
        "region": box,
        "drop": test.relative_drop,
        "absolute": test.drop,
        "gain": test.gain,
        "flips": test.flips,
        "examples": [pictures(result.paths[own[i]], box) for i in test.examples[:EXEMPLARS]],
    }


def write_audit_report(path: Path, result: AuditResult, summary: dict[str, Any], loaded: LoadedModel) -> None:
    pictures = Pictures(loaded)
    colormap = summary["settings"]["colormap"]
    findings = [_finding(test, result, pictures) for test in result.tests]
    classes = [
        {
            "name": evidence.class_name,
            "count": evidence.count,
            "outside": evidence.outside_boxes,
            "evidence": _named(_heatmap(evidence.mean, result.input_size, colormap), "mean evidence"),
            "exemplars": [pictures(result.paths[i]) for i in evidence.images[:EXEMPLARS]],
            "strategies": [
                {
                    "size": len(strategy.images),
                    "evidence": _named(
                        _heatmap(strategy.mean, result.input_size, colormap),
                        counted(len(strategy.images), "image"),
                    ),
                    "exemplars": [pictures(result.paths[i]) for i in strategy.images[:3]],
                }
                for strategy in result.strategies.get(evidence.class_index, [])
            ],
        }
        for evidence in result.classes
    ]
    facts = [
        ("model", summary["settings"]["model"]["model"]),
        ("maps", summary["settings"]["method"]["label"]),
        ("images", f"{len(result.paths)}, each for its {result.context.get('targets', 'explained')} class"),
        ("verified findings", str(len(result.findings))),
    ]
    page = TEMPLATES.get_template("audit.html.j2").render(
        title="vitcam audit", style=STYLE, facts=facts, findings=findings, classes=classes,
        rule={"drop": DROP, "gain": GAIN}, boxes=result.boxes,
    )  # fmt: skip
    write_atomic(path, lambda handle: handle.write(fs_text(page).encode("utf-8")))
