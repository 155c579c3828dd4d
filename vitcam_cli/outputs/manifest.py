"""results.jsonl (appended and flushed per image), results.csv (the same rows), and resuming."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.metrics.aggregate import Totals
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.rows import EXPLAIN_COLUMNS, Row, csv_cell
from vitcam_cli.paths import FileId, absolute, file_id, resolved
from vitcam_cli.textfiles import written_lines

if TYPE_CHECKING:
    from vitcam_cli.data import ImageItem


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file; a torn last line (from a killed run) is skipped."""
    if not path.exists():
        return
    for line in written_lines(path, "out"):
        if not line.endswith("\n"):
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "path" in record:
            yield Row.from_record(record)


def jsonl(rows: Iterable[Row]) -> str:
    return "".join(json.dumps(row.record()) + "\n" for row in rows)


@dataclass
class Counts:
    images_ok: int = 0
    images_error: int = 0
    rows: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # dataset means of the rows' ADCC parts
    histograms: dict[str, list[int]] = field(default_factory=dict)  # of the rows' ADCC parts
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image, error), the first few


class Manifest:
    """The per-image result rows of one output folder.

    Rows of one image are written with a single write and flushed, so after a crash the file holds
    whole images only (at most a torn final line, which resuming drops).
    """

    def __init__(
        self,
        out: Path,
        resume: bool,
        needs_map: bool,
        part: str = "",
        needs_overlay: bool = True,
        origin: Path | None = None,
    ) -> None:
        """``part`` names a shard's own files (``results.shard-0-of-4.jsonl``); empty for a whole run.
        ``origin``: the working folder the earlier rows' relative paths were written from (None: this
        one)."""
        self.out = out
        self.jsonl = out / f"results{part}.jsonl"
        self.csv = out / "results.csv"
        self.done_classes: set[tuple[Path | FileId, int | None]] = set()
        self.taken: dict[str, Path] = {}  # the overlays and maps the kept rows hold, by their image's file
        self.done: set[Path | FileId] = self._recover(needs_overlay, needs_map, origin) if resume else set()
        if not resume:
            write_atomic(self.jsonl, lambda handle: None)
        self.handle = self.jsonl.open("a", encoding="utf-8")

    def _complete(self, rows: list[Row], needs: tuple[str, ...]) -> bool:
        """Every row ok, and every file it must have (``needs``: overlay, map) on disk (a row that says
        why an image explained nothing has none)."""
        return all(
            row.ok
            and (
                row.note is not None
                or all((link := getattr(row, key)) and (self.out / link).is_file() for key in needs)
            )
            for row in rows
        )

    def _recover(self, needs_overlay: bool, needs_map: bool, origin: Path | None) -> set[Path | FileId]:
        """Keep the rows of images whose outputs are all on disk; everything else is redone. Images are
        known by their files (links followed, hard links too), however their paths were spelled; rows
        written from another working folder get absolute paths, so that every kept row still names its
        file."""
        by_file: dict[Path, list[Row]] = {}
        moved = origin is not None and absolute(origin) != absolute(Path.cwd())
        for row in read_rows(self.jsonl):
            named = absolute((origin or Path.cwd()) / row.path)
            if moved and not Path(row.path).is_absolute():
                row.path = str(named)
            by_file.setdefault(resolved(named), []).append(row)
        needs = ("overlay",) * needs_overlay + ("map",) * needs_map
        done = {file for file, rows in by_file.items() if self._complete(rows, needs)}
        kept = [(file, row) for file in done for row in by_file[file]]
        self.taken = {link: file for file, row in kept for link in (row.overlay, row.map) if link}
        known = [(key, row) for file, row in kept for key in (file, file_id(file)) if key is not None]
        self.done_classes = {(key, row.class_index) for key, row in known}
        lines = jsonl(row for file, rows in by_file.items() if file in done for row in rows)
        write_atomic(self.jsonl, lambda handle: handle.write(lines.encode()))
        return {key for key, _ in known}

    def finished(self, item: ImageItem) -> bool:
        """Whether resuming keeps an image (or, for a run that names a class per item, that class of it)."""
        if not self.done:
            return False
        if item.target is None:
            return item.file in self.done or file_id(item.file) in self.done
        done = self.done_classes
        return (item.file, item.target) in done or (file_id(item.file), item.target) in done

    def write(self, rows: list[Row]) -> None:
        self.handle.write(jsonl(rows))
        self.handle.flush()

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()

    def finish(self, csv_too: bool = True) -> Counts:
        """Close the JSONL, count what it holds and, unless a shard's, write results.csv from it."""
        self.close()
        if not csv_too:
            counts = Counts()
            for _ in tally(read_rows(self.jsonl), counts):
                pass
            return counts
        return write_results_csv(self.csv, read_rows(self.jsonl))


FAILURES_KEPT = 200  # failed images listed by name in the report (all of them are in the rows)


def tally(rows: Iterable[Row], counts: Counts) -> Iterator[Row]:
    """Pass ``rows`` through, counting images and rows and summing the ADCC parts into ``counts``."""
    image_ok: dict[str, bool] = {}
    totals = Totals()
    for row in rows:
        counts.rows += 1
        image_ok[row.path] = image_ok.get(row.path, True) and row.ok
        if row.ok:
            totals.add({name: row.metrics.get(name) for name in PARTS})
        elif len(counts.failures) < FAILURES_KEPT:
            counts.failures.append((row.path, row.error or ""))
        yield row
    counts.images_ok = sum(image_ok.values())
    counts.images_error = len(image_ok) - counts.images_ok
    counts.metrics = totals.means()
    counts.histograms = totals.histograms


def write_results_csv(path: Path, rows: Iterable[Row]) -> Counts:
    """results.csv from rows (streamed, atomic); returns their counts."""
    counts = Counts()

    def write_csv(handle: Any) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=EXPLAIN_COLUMNS)
        writer.writeheader()
        for row in tally(rows, counts):
            writer.writerow({key: csv_cell(value) for key, value in row.record().items()})
        text.flush()
        text.detach()

    write_atomic(path, write_csv)
    return counts
