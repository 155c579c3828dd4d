"""Writing an explain run's images: overlays and maps on worker threads, rows in input order.

Rendering (a table lookup and integer blends) and encoding (Pillow) run mostly outside the GIL, on every
core, between the engine's turns on a CPU (see ``Turns``); at most ``MAX_PENDING`` images wait.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.manifest import Manifest
from vitcam_cli.outputs.overlay import encode_overlay, render_overlay
from vitcam_cli.outputs.report import Card, Gallery, Panel, thumbnail
from vitcam_cli.turns import Turns

WRITER_THREADS = max(2, min(8, os.cpu_count() or 1))
MAX_PENDING = 64  # images rendered or waiting: the submitting loop blocks beyond this


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
        turns: Turns,
    ) -> None:
        self.out = out
        self.manifest = manifest
        self.emit = emit
        self.colormap = colormap
        self.alpha = alpha
        self.method = method
        self.turns = turns
        self.pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="vitcam-writer")
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

    def abandon(self) -> None:
        """Stop after a write failed: rows not yet in the manifest are dropped, their images redone later."""
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _render(self, job: dict[str, Any], saliency: torch.Tensor) -> np.ndarray:
        return render_overlay(job["overlay"], saliency, job["view"], self.colormap, self.alpha)

    def _write(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """Render, encode and write each row's overlay (and map); without an overlay file
        (``--no-overlays``) a row is rendered only when the report's gallery keeps it."""
        self.turns.wait()
        for row, saliency in zip(job["rows"], job["maps"], strict=True):
            image = self._render(job, saliency) if row["overlay"] else None
            if image is not None:
                data = encode_overlay(image, Path(row["overlay"]).suffix[1:])
                write_atomic(self.out / row["overlay"], lambda handle, data=data: handle.write(data))
            if row["map"]:
                raw = saliency.numpy().astype(np.float32)
                write_atomic(self.out / row["map"], lambda handle, raw=raw: np.save(handle, raw))
            self._offer(
                row,
                lambda image=image, saliency=saliency: (
                    self._render(job, saliency) if image is None else image
                ),
            )
        return job["rows"]

    def _offer(self, row: dict[str, Any], render: Callable[[], np.ndarray]) -> None:
        """Offer the row to the report's gallery, sorted by ADCC (by probability with --no-adcc)."""

        def card() -> Card:
            metrics = {name: row[name] for name in PARTS if row.get(name) is not None}
            panel = Panel(
                self.method,
                thumbnail(render()),
                row["overlay"],
                row["class_name"],
                row["probability"],
                metrics,
            )
            return Card(row["path"], None, [panel])

        value = row["adcc"] if row.get("adcc") is not None else row["probability"]
        with self.gallery_lock:
            self.gallery.offer(float(value), card)
