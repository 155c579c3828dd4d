"""Writing an explain run's images: overlays and maps on worker threads, rows in input order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.manifest import Manifest
from vitcam_cli.outputs.overlay import render_overlay
from vitcam_cli.outputs.report import Card, Gallery, Panel, thumbnail


class OutputWriter:
    """Renders overlays and saves maps on worker threads; rows leave in input order, after their files."""

    def __init__(
        self,
        out: Path,
        manifest: Manifest,
        emit: Callable[[list[dict[str, Any]]], None],
        colormap: str,
        alpha: float,
        method: str,
    ) -> None:
        self.out = out
        self.manifest = manifest
        self.emit = emit
        self.colormap = colormap
        self.alpha = alpha
        self.method = method
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vitcam-writer")
        self.pending: deque[Future[list[dict[str, Any]]]] = deque()
        self.gallery = Gallery(limit=100)  # the report's worst and best rows by ADCC
        self.gallery_lock = threading.Lock()

    def submit_rows(self, rows: list[dict[str, Any]]) -> None:
        future: Future[list[dict[str, Any]]] = Future()
        future.set_result(rows)
        self._enqueue(future)

    def submit(self, job: dict[str, Any]) -> None:
        self._enqueue(self.pool.submit(self._write, job))

    def _enqueue(self, future: Future[list[dict[str, Any]]]) -> None:
        self.pending.append(future)
        self.flush(wait=len(self.pending) > 64)

    def flush(self, wait: bool = False) -> None:
        while self.pending and (wait or self.pending[0].done()):
            rows = self.pending.popleft().result()
            self.manifest.write(rows)
            self.emit(rows)
            wait = wait and len(self.pending) > 32

    def drain(self) -> None:
        while self.pending:
            self.flush(wait=True)
        self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop after a write failed: rows not yet in the manifest are dropped, their images redone later."""
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        original: np.ndarray = job["original"]
        for row, saliency in zip(job["rows"], job["maps"], strict=True):
            image = render_overlay(original, saliency, job["box"], self.colormap, self.alpha)
            write_atomic(
                self.out / row["overlay"],
                lambda handle, image=image: Image.fromarray(image).save(
                    handle, format="PNG", compress_level=3
                ),
            )
            if row["map"]:
                raw = saliency.numpy().astype(np.float32)
                write_atomic(self.out / row["map"], lambda handle, raw=raw: np.save(handle, raw))
            self._offer(row, image)
        return job["rows"]

    def _offer(self, row: dict[str, Any], image: np.ndarray) -> None:
        """Offer the row to the report's gallery, sorted by ADCC (by probability with --no-adcc)."""

        def card() -> Card:
            metrics = {name: row[name] for name in PARTS if row.get(name) is not None}
            panel = Panel(
                self.method, thumbnail(image), row["overlay"], row["class_name"], row["probability"], metrics
            )
            return Card(row["path"], None, [panel])

        value = row["adcc"] if row.get("adcc") is not None else row["probability"]
        with self.gallery_lock:
            self.gallery.offer(float(value), card)
