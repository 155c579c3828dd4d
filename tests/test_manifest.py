"""The manifest survives interruption: torn lines are dropped and incomplete images redone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.manifest import Manifest, read_rows
from vitcam_cli.outputs.rows import Row


def _record(path: str, overlay: str | None, status: str = "ok") -> dict:
    return {"path": path, "status": status, "overlay": overlay, "map": None}


def _row(path: str, overlay: str | None, status: str = "ok") -> Row:
    return Row(path, status=status, overlay=overlay)


def test_resume_keeps_complete_images_and_drops_torn_lines(tmp_path):
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "a.png").write_bytes(b"png")
    lines = [
        json.dumps(_record("a.jpg", "overlays/a.png")),
        json.dumps(_record("b.jpg", "overlays/b.png")),  # its overlay is missing: redo
        json.dumps(_record("c.jpg", None, status="error")),  # errors are retried
    ]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + '\n{"path": "d.jpg", "sta')
    manifest = Manifest(tmp_path, resume=True, needs_map=False)
    assert manifest.done == {Path("a.jpg").resolve()}
    manifest.write([_row("b.jpg", "overlays/b.png")])
    counts = manifest.finish()
    assert [row.path for row in read_rows(tmp_path / "results.jsonl")] == ["a.jpg", "b.jpg"]
    assert counts.rows == 2 and counts.images_ok == 2
    assert (tmp_path / "results.csv").read_text().count("\n") == 3


def test_resume_redoes_images_without_maps_when_maps_are_wanted(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "results.jsonl").write_text(json.dumps(_record("a.jpg", "a.png")) + "\n")
    assert Manifest(tmp_path, resume=True, needs_map=True).done == set()


def test_fresh_manifest_replaces_old_rows(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(_record("old.jpg", None)) + "\n")
    manifest = Manifest(tmp_path, resume=False, needs_map=False)
    manifest.finish()
    assert list(read_rows(tmp_path / "results.jsonl")) == []


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    target = tmp_path / "report.html"
    write_atomic(target, lambda handle: handle.write(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
