"""An output folder and the run it holds: vitcam's marker, the files it wrote, and reusing the folder.

Every run marks its folder with ``.vitcam-output`` when it starts writing, and records each overlay and
map in ``.vitcam-files`` (a shard in ``.vitcam-files.shard-I-of-N``) before writing it, so that the files
of a run are known even when it was killed between a file and its row. A folder with the marker:

- is never searched for input images (see ``data.discover``);
- is used by a new run only when the user says how: ``resume`` (``--skip-existing``) or ``overwrite``
  (``--overwrite``: every file vitcam wrote there goes, nothing else). Without either the run is
  refused with one line naming the folder, what it holds and the choices.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitcam_cli.errors import ParameterError, literal
from vitcam_cli.outputs import counted
from vitcam_cli.outputs.atomic import remove_stale_temporaries, write_atomic
from vitcam_cli.paths import resolved
from vitcam_cli.textfiles import SUMMARY_LIMIT, read_whole, written_lines

if TYPE_CHECKING:
    from vitcam_cli.distributed import Shard

MARKER = ".vitcam-output"
JOURNAL = ".vitcam-files"
MARKER_TEXT = (
    "This folder holds the outputs of a vitcam run. vitcam does not search it for input images, and a new "
    "run writes here only with --skip-existing (resume) or --overwrite (replace every file vitcam wrote "
    "here, listed in .vitcam-files*).\n"
)
# the files of a whole run (a single process, or merged shards)
RUN_FILES = (
    "results.jsonl", "results.csv", "summary.json", "report.html", "metrics.json", "per_image.csv",
    "findings.json", "comparison.json",
)  # fmt: skip
# the part files of a shard, named with its suffix
PART_FILES = ("results{part}.jsonl", "summary{part}.json", "metrics{part}.json", "per_image{part}.csv")
PART_GLOBS = tuple(name.format(part=".shard-*-of-*") for name in PART_FILES)
WRITTEN_FOLDERS = ("overlays", "maps", "evidence")  # every other file a run writes lies below one of these


def is_output_folder(folder: Path) -> bool:
    """Whether vitcam wrote a run into ``folder`` (its marker is there)."""
    return (folder / MARKER).is_file()


def mark(out: Path) -> None:
    """Mark ``out`` as an output folder (done once, when a run starts writing there)."""
    if not is_output_folder(out):
        write_atomic(out / MARKER, lambda handle: handle.write(MARKER_TEXT.encode()))


class Journal:
    """``.vitcam-files{part}``: every overlay and map a run writes, recorded before it is written.

    One JSON string per line (any file name survives), appended from the writer threads.
    """

    def __init__(self, out: Path, part: str = "") -> None:
        self.path = out / f"{JOURNAL}{part}"
        self.lock = threading.Lock()
        self.handle: Any = None

    def add(self, link: str) -> None:
        with self.lock:
            if self.handle is None:  # appended in place: never through a link planted in its name
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
                self.handle = os.fdopen(fd, "a", encoding="utf-8")
            self.handle.write(json.dumps(link) + "\n")
            self.handle.flush()

    def close(self) -> None:
        with self.lock:
            if self.handle is not None:
                self.handle.close()
                self.handle = None


def _recorded(journal: Path) -> Iterator[str]:
    """The links a journal lists (a torn last line skipped)."""
    if not journal.is_file():
        return
    for line in written_lines(journal, "out"):
        with contextlib.suppress(json.JSONDecodeError):
            link = json.loads(line)
            if isinstance(link, str):
                yield link


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object a run wrote (summary, metrics, comparison), read bounded; None when there is none."""
    try:
        data = json.loads(read_whole(path, "out", SUMMARY_LIMIT).decode("utf-8"))
    except (OSError, ValueError):  # too large (a ParameterError) included
        return None
    return data if isinstance(data, dict) else None


def _count_lines(path: Path) -> int:
    with contextlib.suppress(OSError), path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return 0


def _state(data: dict[str, Any]) -> str:
    """``finished 2026-12-02T06:30:00+00:00`` or ``partial (interrupted), started ...``."""
    status = data.get("status", "complete")
    if status == "complete":
        return f"finished {data.get('finished', 'at an unknown time')}"
    return f"partial ({status}), started {data.get('started', 'at an unknown time')}"


def describe(out: Path) -> str:
    """What an output folder holds, in a few words: the run, its rows, finished or partial, when."""
    summary = read_json(out / "summary.json")
    if summary is not None:
        rows = summary.get("rows", _count_lines(out / "results.jsonl"))
        return f"a vitcam explain run: {counted(rows, 'row')}, {_state(summary)}"
    metrics = read_json(out / "metrics.json")
    if metrics is not None:
        images = metrics.get("dataset", {}).get("images", "?")
        state = _state(metrics | {"status": "complete"})
        return f"a vitcam evaluate run: {counted(images, 'image')}, {state}"
    comparison = read_json(out / "comparison.json")
    if comparison is not None:
        return f"a vitcam comparison: {comparison.get('matched', '?')} images and targets compared"
    parts = sorted({path.name for pattern in PART_GLOBS[1:3] for path in out.glob(pattern)})
    if parts:
        rows = sum(_count_lines(path) for path in out.glob(PART_GLOBS[0]))
        return f"shards of a vitcam run ({', '.join(parts)}; {counted(rows, 'row')}), not merged"
    return "a vitcam run that stopped before writing its first rows"


def _own_parts(out: Path, part: str) -> list[Path]:
    return [out / name.format(part=part) for name in PART_FILES if (out / name.format(part=part)).exists()]


def _whole_run_here(out: Path) -> bool:
    """Whether ``out`` holds a run of one process (not the merge of shards)."""
    if (out / JOURNAL).exists():
        return True
    done = read_json(out / "summary.json") or read_json(out / "metrics.json")
    return done is not None and not done.get("shards")


def _held_by_run(out: Path, shard: Shard | None) -> bool:
    """Whether a new run (or shard) would replace something in ``out``: for a whole run anything vitcam
    wrote; for a shard its own part files or a run of one process or merged shards (not its siblings')."""
    if shard is None:
        return True
    whole = [*RUN_FILES, JOURNAL]
    return bool(_own_parts(out, shard.suffix)) or any((out / name).exists() for name in whole)


def refuse_reuse(out: Path, shard: Shard | None, resume: bool, overwrite: bool, resumable: bool) -> None:
    """Refuse to write into a folder that holds an earlier run unless the user said how (``resume``:
    keep it and add to it; ``overwrite``: replace it); ``resumable`` False for a command that cannot
    resume. ``shard`` None: a whole run, or every rank of torchrun."""
    if resume and overwrite:
        raise ParameterError("overwrite", "and {skip_existing} exclude each other: use one of them")
    if overwrite and shard is not None and is_output_folder(out) and _whole_run_here(out):
        raise ParameterError(
            "out",
            f"holds {describe(out)}, written by one process: replace it with {{overwrite}} without "
            "{shard}, or choose another {out}",
            out,
        )
    if resume or overwrite or not is_output_folder(out) or not _held_by_run(out, shard):
        return
    choices = "resume it with {skip_existing}, replace it" if resumable else "replace it"
    raise ParameterError(
        "out", f"holds {describe(out)}: {choices} with {{overwrite}}, or choose another {{out}}", out
    )


def _run_file(root: Path, file: Path) -> bool:
    """Whether ``file`` (links followed) is one a run writes directly in its (resolved) folder ``root``."""
    if file.parent != root:
        return False
    name = file.name
    return name in RUN_FILES or name.startswith(".vitcam") or any(fnmatch(name, glob) for glob in PART_GLOBS)


def _linked_folder(out: Path) -> Path | None:
    """A folder below the run's own folders (``overlays/``, ...) that is a symbolic link (vitcam never makes
    one), if any."""
    for name in WRITTEN_FOLDERS:
        if (out / name).is_symlink():
            return out / name
        for folder, subfolders, _ in os.walk(out / name):
            for sub in subfolders:
                if (Path(folder) / sub).is_symlink():
                    return Path(folder) / sub
    return None


def refuse_outputs_over_inputs(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse, before anything is written, an ``out`` where an output could land on one of ``inputs``
    (the run's images and the files named beside them, links followed): an input below ``out``'s
    ``overlays/`` or ``maps/``, an input named like one of the run's own files, or a linked folder in
    ``overlays/`` or ``maps/`` that could lead anywhere."""
    root = resolved(out)
    written = [resolved(out / name) for name in WRITTEN_FOLDERS]
    for file in inputs:
        inside = next((folder for folder in written if file.is_relative_to(folder)), None)
        if inside is not None or _run_file(root, file):
            where = (
                f"lies in {literal(inside)}, where this run writes its outputs"
                if inside is not None
                else "has the name of a file this run writes"
            )
            raise ParameterError(
                "out",
                f"the input {literal(file)} {where}: choose an {{out}} that does not hold the inputs (or "
                "move them out of it)",
                out,
            )
    linked = _linked_folder(out)
    if linked is not None:
        raise ParameterError(
            "out",
            f"{literal(linked)} is a link: outputs written through it could land anywhere; remove it",
            out,
        )


def start_writing(out: Path, shard: Shard | None, overwrite: bool) -> None:
    """Called by a run just before its first write into ``out`` (so that a run refused for a bad option
    or model replaces nothing): with ``overwrite`` the earlier run's files go; then the marker."""
    if overwrite and is_output_folder(out):
        clear(out, shard)
    mark(out)


def clear(out: Path, shard: Shard | None) -> None:
    """Remove every file vitcam wrote into ``out`` (a shard: its own, and the merged run's), and the
    folders that leaves empty; files vitcam did not write stay (see ``refuse_reuse`` for when a shard
    may). A recorded overlay or map is removed only where vitcam writes them, below ``overlays/`` or
    ``maps/``: a journal edited by hand (or damaged) never removes anything else."""
    part = shard.suffix if shard else ".shard-*-of-*"
    journals = sorted(out.glob(f"{JOURNAL}{part}")) + ([out / JOURNAL] if shard is None else [])
    links = {link for journal in journals for link in _recorded(journal)}
    files = [out / link for link in sorted(links) if _ours(out, link)]
    files += [out / name for name in RUN_FILES] + journals
    files += [path for name in PART_FILES for path in out.glob(name.format(part=part))]
    remove_stale_temporaries(out)
    _remove(out, files)
    if shard is None:
        (out / MARKER).unlink(missing_ok=True)


def _ours(out: Path, link: str) -> bool:
    """A recorded link is removed only below the run's own folders and never leads out of them."""
    parts = Path(link).parts
    if len(parts) < 2 or parts[0] not in WRITTEN_FOLDERS or ".." in parts:
        return False
    return resolved((out / link).parent).is_relative_to(resolved(out / parts[0]))


def _remove(out: Path, files: Iterable[Path]) -> None:
    """Remove ``files`` and then each of their folders below ``out`` that is left empty."""
    folders = set()
    for path in files:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
        folders.update(parent for parent in path.parents if parent != out and out in parent.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: anything else in it stays
