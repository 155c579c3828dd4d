"""The explain run's sink: overlays and maps written on worker threads, rows in input order after them.

Rendering (a table lookup and integer blends) and encoding (Pillow) run mostly outside the GIL, on every
core, between the engine's turns on a CPU (see ``Turns``); at most ``MAX_PENDING`` images wait.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitcam_cli.data import ImageItem
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.folder import Journal
from vitcam_cli.outputs.manifest import Manifest
from vitcam_cli.outputs.names import file_tag, output_link
from vitcam_cli.outputs.overlay import OverlaySettings, encode_overlay, overlay_extension, render_overlay
from vitcam_cli.outputs.report import Card, Gallery, file_thumbnail, row_panel, thumbnail
from vitcam_cli.outputs.results import ImageResult, MethodOutput
from vitcam_cli.outputs.rows import Row, target_fields
from vitcam_cli.turns import Turns

WRITER_THREADS = max(2, min(8, os.cpu_count() or 1))
MAX_PENDING = 64  # images rendered or waiting: the submitting loop blocks beyond this
GALLERY_LIMIT = 100  # the report keeps this many worst and best rows


@dataclass(frozen=True)
class Outputs:
    """Which files each explained target gets, how they look, whether their names carry the target (a
    run that may explain several of an image names every output by its target), whether the targets
    are similarity targets (rows name the reference), and what a row says for an image that explained
    none (a threshold no class reached)."""

    overlays: bool
    maps: bool
    overlay: OverlaySettings
    per_class: bool = False
    similarity: bool = False
    nothing: str = "no target reached the threshold"


def explained_rows(
    image: ImageResult,
    output: MethodOutput,
    class_names: list[str],
    outputs: Outputs,
    method: str,
    taken: Mapping[str, Path] | None = None,
) -> list[Row]:
    """One row per explained target of ``image`` (one row that says so when it has none). ``taken``:
    the outputs earlier rows of a resumed run hold, by file: an image whose name meets another file's
    has its names tagged (see ``outputs.names``)."""
    size = {"width": image.size[0], "height": image.size[1]}
    if not output.classes:
        return [Row(path=str(image.item.path), method=method, note=outputs.nothing, **size)]
    rows = _target_rows(image, output, class_names, outputs, method, None)
    owners = {(taken or {}).get(link) for row in rows for link in (row.overlay, row.map) if link}
    if owners - {None, image.item.file}:
        rows = _target_rows(image, output, class_names, outputs, method, file_tag(image.item.file))
    return rows


def _target_rows(
    image: ImageResult, output: MethodOutput, class_names: list[str], outputs: Outputs, method: str,
    tag: str | None,
) -> list[Row]:  # fmt: skip
    extension = overlay_extension(outputs.overlay.format, image.item.path)
    size = {"width": image.size[0], "height": image.size[1]}
    rows = []
    for t, target in enumerate(output.classes):
        named = target if outputs.per_class else None
        overlay = output_link("overlays", image.item.rel, extension, named, tag)
        rows.append(
            Row(
                path=str(image.item.path),
                method=method,
                rank=output.ranks[t],
                overlay=overlay if outputs.overlays else None,
                map=output_link("maps", image.item.rel, "npy", named, tag) if outputs.maps else None,
                metrics={name: values[t] for name, values in output.values.items()},
                **size,
                **target_fields(outputs.similarity, class_names, target, output.readings[t]),
            )
        )
    return rows


class ExplainWriter:
    """Renders overlays and saves maps on worker threads; rows leave in input order, after their files.

    ``emit`` sees every group of rows once they are in the manifest (stdout JSON lines).
    """

    def __init__(
        self,
        out: Path,
        manifest: Manifest,
        emit: Callable[[list[Row]], None],
        outputs: Outputs,
        method: str,
        class_names: list[str],
        turns: Turns,
        labelled: bool = False,
        journal: Journal | None = None,
    ) -> None:
        """``labelled``: the explained classes are the images' labels (cards mark wrong predictions);
        ``journal`` records every file before it is written (``--overwrite`` later removes them all)."""
        self.out = out
        self.manifest = manifest
        self.emit = emit
        self.outputs = outputs
        self.method = method
        self.class_names = class_names
        self.turns = turns
        self.labelled = labelled
        self.journal = journal or Journal(out)
        self.pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="vitcam-writer")
        self.pending: deque[Future[list[Row]]] = deque()
        self.gallery = Gallery(limit=GALLERY_LIMIT)  # the report's worst and best rows by ADCC
        self.gallery_lock = threading.Lock()

    def failed(self, item: ImageItem, message: str) -> None:
        future: Future[list[Row]] = Future()
        future.set_result([Row.failed(str(item.path), message, self.method)])
        self._enqueue(future)

    def explained(self, image: ImageResult) -> None:
        output = image.methods[self.method]
        rows = explained_rows(image, output, self.class_names, self.outputs, self.method, self.manifest.taken)
        if not output.classes:  # nothing to draw: the row says why
            future: Future[list[Row]] = Future()
            future.set_result(rows)
            self._enqueue(future)
            return
        predicted = self.class_names[output.predicted]
        self._enqueue(self.pool.submit(self._write, image, list(output.maps), rows, predicted))

    def _enqueue(self, future: Future[list[Row]]) -> None:
        self.pending.append(future)
        self.flush(wait=len(self.pending) > MAX_PENDING)

    def flush(self, wait: bool = False) -> None:
        while self.pending and (wait or self.pending[0].done()):
            rows = self.pending.popleft().result()
            self.manifest.write(rows)
            self.emit(rows)
            wait = wait and len(self.pending) > MAX_PENDING // 2

    def drain(self) -> None:
        while self.pending:
            self.flush(wait=True)
        self.pool.shutdown(wait=True)
        self.journal.close()

    def abandon(self) -> None:
        """Stop after a write failed: rows not yet in the manifest are dropped, their images redone later."""
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.journal.close()

    def _render(self, image: ImageResult, saliency: torch.Tensor) -> np.ndarray:
        overlay = self.outputs.overlay
        return render_overlay(image.copy, saliency, image.view, overlay.colormap, overlay.alpha)

    def _write(
        self, image: ImageResult, maps: list[torch.Tensor], rows: list[Row], predicted: str
    ) -> list[Row]:
        """Render, encode and write each row's overlay (and map); without an overlay file
        (``--no-overlays``) a row is rendered only when the report's gallery keeps it."""
        self.turns.wait()
        for row, saliency in zip(rows, maps, strict=True):
            rendered = self._render(image, saliency) if row.overlay else None
            if row.overlay and rendered is not None:
                data = encode_overlay(rendered, Path(row.overlay).suffix[1:])
                self.journal.add(row.overlay)
                write_atomic(self.out / row.overlay, lambda handle, data=data: handle.write(data))
            if row.map:
                raw = saliency.numpy().astype(np.float32)
                self.journal.add(row.map)
                write_atomic(self.out / row.map, lambda handle, raw=raw: np.save(handle, raw))
            self._offer(row, image, functools.partial(self._picture, image, saliency, rendered), predicted)
        return rows

    def _picture(self, image: ImageResult, saliency: torch.Tensor, rendered: np.ndarray | None) -> np.ndarray:
        return self._render(image, saliency) if rendered is None else rendered

    def _offer(self, row: Row, image: ImageResult, render: Callable[[], np.ndarray], predicted: str) -> None:
        """Offer the row to the report's gallery, sorted by ADCC (by probability without ADCC): the image
        beside its overlay."""

        def card() -> Card:
            panel = row_panel(self.method, thumbnail(render()), row)
            original = thumbnail(image.copy)
            if self.labelled:
                return Card(row.path, row.class_name, [panel], predicted, original)
            reference = file_thumbnail(Path(row.reference)) if row.reference is not None else b""
            return Card(row.path, None, [panel], original=original, reference=reference)

        value = row.metrics.get("adcc", row.probability if row.reference is None else row.similarity)
        with self.gallery_lock:
            self.gallery.offer(float(value if value is not None else float("nan")), card)
