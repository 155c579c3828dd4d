"""``vitcam compare``: two finished runs over the same images, compared map by map, into one folder:
comparison.json, per_image.csv and report.html (see ``analysis.compare`` for what is computed)."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from vitcam_cli.analysis.compare import CHANGED_BELOW, Comparison, compare_runs
from vitcam_cli.errors import ParameterError, literal, render
from vitcam_cli.outputs.atomic import atomic_text_stream, ensure_writable, write_json_atomic, writing
from vitcam_cli.outputs.compare_report import write_compare_report
from vitcam_cli.outputs.folder import is_output_folder, refuse_reuse, start_writing
from vitcam_cli.outputs.rows import csv_cell
from vitcam_cli.paths import fs_text, resolved
from vitcam_cli.runner import EXIT_OK, EXIT_SOME_FAILED

PER_IMAGE_COLUMNS = (
    "path", "class_index", "class_name", "reference", "spearman", "top_iou", "changed", "path_bytes",
)  # fmt: skip
WRITTEN = ("comparison.json", "per_image.csv", "report.html")
CLASSES_LISTED = 5  # classes in the table on the terminal (every one is in comparison.json)


@dataclass(frozen=True)
class CompareOptions:
    run_a: Path
    run_b: Path
    out: Path = Path("vitcam-compare")
    changed_below: float = CHANGED_BELOW
    fail_over: float | None = None  # exit 1 when the share of changed pairs is above it
    overwrite: bool = False
    as_json: bool = False  # comparison.json on stdout
    quiet: bool = False

    def check(self) -> None:
        if not (math.isfinite(self.changed_below) and -1 <= self.changed_below <= 1):
            raise ParameterError("changed_below", "must be a correlation, from -1 to 1", self.changed_below)
        if self.fail_over is not None and not 0 <= self.fail_over <= 1:
            raise ParameterError("fail_over", "must be a share of the pairs, from 0 to 1", self.fail_over)


def refuse_out_in_runs(out: Path, runs: dict[str, Path]) -> None:
    """The comparison never writes into either run: ``out`` may be neither of them nor inside one."""
    target = resolved(out)
    for parameter, folder in runs.items():
        if target.is_relative_to(resolved(folder)):
            raise ParameterError(
                "out", f"lies in {{{parameter}}} {literal(folder)}: choose an {{out}} outside both runs", out
            )


def refuse_foreign_files(out: Path) -> None:
    """A folder vitcam did not write keeps its files: refuse one that holds a file of ours by name."""
    if is_output_folder(out):
        return
    for name in WRITTEN:
        if (out / name).exists():
            raise ParameterError(
                "out", f"holds a {name} that vitcam did not write: choose another {{out}}", out
            )


def write_per_image(path: Path, comparison: Comparison) -> None:
    with atomic_text_stream(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_IMAGE_COLUMNS)
        writer.writeheader()
        for pair in comparison.pairs:
            cells = pair.cells()
            writer.writerow({name: csv_cell(_text(cells[name])) for name in PER_IMAGE_COLUMNS})


def _text(value: object) -> object:
    return fs_text(value) if isinstance(value, str) else value


def summary_table(comparison: Comparison) -> Table:
    """The comparison in a few lines: the totals, then the classes whose maps agree least."""
    table = Table(title="vitcam compare", title_justify="left")
    for name in ("class", "pairs", "changed", "Spearman", "top IoU", "moved", "moved to (x1,y1,x2,y2)"):
        table.add_column(name, justify="left" if name == "class" else "right")
    changed = f"{comparison.changed} ({comparison.share_changed:.1%})"
    table.add_row(
        "all", str(len(comparison.pairs)), changed, f"{comparison.spearman:.3f}", f"{comparison.top_iou:.3f}",
        "", "", end_section=True,
    )  # fmt: skip
    for shift in comparison.classes[:CLASSES_LISTED]:
        region = ",".join(map(str, shift.region_pixels)) if shift.region_pixels else "-"
        table.add_row(
            shift.name, str(shift.pairs), str(shift.changed), f"{shift.spearman:.3f}", f"{shift.top_iou:.3f}",
            f"{shift.moved:.4f}", region,
        )  # fmt: skip
    unmatched = comparison.unmatched
    table.caption = render(f"unmatched: {unmatched[0]} in {{run_a}}, {unmatched[1]} in {{run_b}}")
    return table


def _record(comparison: Comparison, options: CompareOptions) -> dict[str, Any]:
    """comparison.json: the comparison, and the gate it was held to."""
    data = comparison.to_json()
    data["settings"]["fail_over"] = options.fail_over
    return data


def _write(options: CompareOptions, comparison: Comparison, record: dict[str, Any]) -> None:
    out = options.out
    ensure_writable(out)
    with writing(out, "free space or fix the folder, then rerun with {overwrite}"):
        start_writing(out, None, options.overwrite)
        write_per_image(out / "per_image.csv", comparison)
        write_compare_report(out / "report.html", comparison)
        write_json_atomic(out / "comparison.json", record)  # last: there only when everything is


def run_compare(options: CompareOptions, stdout: TextIO | None = None) -> int:
    """Compare, write the folder, show the table; 1 when the share of changed pairs is over the gate."""
    options.check()
    refuse_out_in_runs(options.out, {"run_a": options.run_a, "run_b": options.run_b})
    comparison = compare_runs(options.run_a, options.run_b, options.changed_below)
    for run in comparison.runs:
        if not run.finished:  # even when quiet: a gate passed on half a run must not pass unseen
            status = run.summary.get("status")
            warning = f"warning: {{{run.parameter}}} {literal(run.folder)} did not finish (status {status!r})"
            print(render(f"{warning}: only its finished rows are compared"), file=sys.stderr)
    refuse_reuse(options.out, None, resume=False, overwrite=options.overwrite, resumable=False)
    refuse_foreign_files(options.out)
    record = _record(comparison, options)
    _write(options, comparison, record)
    Console(stderr=True, quiet=options.quiet).print(summary_table(comparison))
    if options.as_json:
        print(json.dumps(record, indent=2), file=stdout or sys.stdout)
    if options.fail_over is not None and comparison.share_changed > options.fail_over:
        # even when quiet: this line is why a CI job failed
        share = f"{comparison.share_changed:.4f}"
        gate = render(f"failed: share changed {share} is over {{fail_over}} {options.fail_over}")
        print(gate, file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
