"""Faults: a killed run, Ctrl-C, a full disk, non-finite scores, out-of-memory chunks."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import noise, noise_folder
from tests.test_cli import VITCAM, explain, rows_of
from tests.test_distributed import TOLERANCE, assert_same_rows
from vitcam_cli.errors import VitcamError
from vitcam_cli.outputs.atomic import HOST, ensure_writable

# the costliest preset on the dense engine, one image per batch: slow enough to interrupt mid-run
SLOW = ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "112", "--engine", "dense",
        "--variant", "official", "-b", "1", "--workers", "0", "-q"]  # fmt: skip


@pytest.fixture
def many(tmp_path: Path) -> Path:
    return noise_folder(tmp_path / "many", 60, seed=500, size=(120, 160), digits=3)


def _default_sigint() -> None:
    """A shell that starts a job in the background makes it ignore SIGINT, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# the real entry point, held once ``rows`` rows are in results.jsonl until a signal stops it: a test never
# depends on a run being slow enough to interrupt
HELD_AFTER_ROWS = """
import sys, time
from vitcam_cli.cli import main
from vitcam_cli.outputs.manifest import Manifest
write, rows, state = Manifest.write, int(sys.argv.pop(1)), {"written": 0, "held": False}
def write_then_hold(self, batch):
    write(self, batch)
    state["written"] += len(batch)
    if state["written"] >= rows and not state["held"]:
        state["held"] = True
        while True:
            time.sleep(0.05)
Manifest.write = write_then_hold
sys.argv[0] = "vitcam"
main()
"""


def held_command(rows: int, *arguments: str) -> list[str]:
    """``vitcam ARGUMENTS`` that stops making progress once ``rows`` rows are written."""
    return [sys.executable, "-c", HELD_AFTER_ROWS, str(rows), *arguments]


def start(folder: Path, out: Path, rows: int) -> subprocess.Popen:
    return subprocess.Popen(held_command(rows, "explain", str(folder), "-o", str(out), *SLOW),
                            preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def wait_for_rows(out: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 900  # generous: a loaded machine is slow; the run waits once there
    while time.time() < deadline and process.poll() is None:
        jsonl = out / "results.jsonl"
        if jsonl.exists() and jsonl.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the run finished or stalled before it could be interrupted")


def finish(folder: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*VITCAM, "explain", str(folder), "-o", str(out), *SLOW, "--skip-existing"],
                          capture_output=True, text=True)  # fmt: skip


def assert_outputs_whole(out: Path) -> None:
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses: no torn line survives
    assert len({row["path"] for row in rows}) == len(rows)  # no duplicated image
    for row in rows:
        with Image.open(out / row["overlay"]) as image:
            image.verify()
    assert not list(out.rglob("*.tmp"))


def test_kill_9_then_resume_equals_an_uninterrupted_run(many, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert subprocess.run([*VITCAM, "explain", str(many), "-o", str(reference), *SLOW]).returncode == 0
    process = start(many, killed, rows=5)
    wait_for_rows(killed, 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done_before = (killed / "results.jsonl").read_text().count("\n")
    assert done_before < 60
    result = finish(many, killed)
    assert result.returncode == 0, result.stderr
    assert_outputs_whole(killed)
    assert_same_rows(rows_of(killed), rows_of(reference))
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["images"]["skipped"] >= 5 and summary["images"]["ok"] == 60
    reference_adcc = json.loads((reference / "summary.json").read_text())["adcc"]
    assert summary["adcc"]["adcc"] == pytest.approx(reference_adcc["adcc"], abs=TOLERANCE)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(many, tmp_path):
    out = tmp_path / "out"
    process = start(many, out, rows=3)
    wait_for_rows(out, 3, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--skip-existing" in stderr and "Traceback" not in stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert_outputs_whole(out)
    result = finish(many, out)
    assert result.returncode == 0, result.stderr
    assert len(rows_of(out)) == 60


def test_full_disk_is_one_clear_error_and_keeps_what_was_written(tiny_model, many, tmp_path, monkeypatch):
    import vitcam_cli.outputs.writer as pipeline

    real = pipeline.write_atomic
    calls = {"n": 0}

    def filling_up(path, write):
        calls["n"] += 1
        if calls["n"] > 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(pipeline, "write_atomic", filling_up)
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(many), "-o", str(out), "-b", "4")
    assert code == 2
    assert stderr.count("\n") == 1 and "No space left on device" in stderr and "--skip-existing" in stderr
    assert 0 < len(rows_of(out)) < 60
    assert_outputs_whole(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    monkeypatch.setattr(pipeline, "write_atomic", real)
    code, _, stderr = explain(tiny_model, str(many), "-o", str(out), "--skip-existing")
    assert code == 0, stderr
    assert len(rows_of(out)) == 60


def test_non_finite_scores_are_error_rows_not_nan_maps(tiny_model, small_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(tiny_model / "model.safetensors")
    weights["head.bias"] = torch.full_like(weights["head.bias"], float("nan"))
    broken = tmp_path / "broken.safetensors"
    save_file(weights, broken)
    out = tmp_path / "out"
    code, _, _ = explain(
        tiny_model, str(small_folder), "-o", str(out), "--checkpoint", str(broken), "--save-maps"
    )
    assert code == 1
    rows = rows_of(out)
    assert rows and all(row["status"] == "error" and "non-finite" in row["error"] for row in rows)
    assert not (out / "maps").exists() and not (out / "overlays").exists()


def test_out_of_memory_chunks_are_retried_smaller(tiny_model, small_folder, tmp_path, monkeypatch):
    from vitcam_cli.engine.compressed import CompressedEngine

    reference = tmp_path / "reference"
    assert (
        explain(
            tiny_model,
            str(small_folder),
            "-o",
            str(reference),
            "--save-maps",
            "--mask-batch",
            "16",
            "--variant",
            "openvino-xai",
        )[0]
        == 0
    )
    real = CompressedEngine.chunk_logits

    def tight(self, traced, state, image, position):
        if image.numel() > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, traced, state, image, position)

    monkeypatch.setattr(CompressedEngine, "chunk_logits", tight)
    out = tmp_path / "out"
    code, _, stderr = explain(
        tiny_model,
        str(small_folder),
        "-o",
        str(out),
        "--save-maps",
        "--mask-batch",
        "16",
        "--variant",
        "openvino-xai",
    )
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mask_batch_reductions"] == [{"from": 16, "to": 8}, {"from": 8, "to": 4}]
    np.testing.assert_allclose(
        np.load(out / "maps/a.png.npy"), np.load(reference / "maps/a.png.npy"), rtol=1e-5, atol=1e-7
    )


def test_shards_starting_side_by_side_in_one_folder_never_trip_over_each_other(tmp_path):
    out, start_together = tmp_path / "out", threading.Barrier(2)

    def check_many_times() -> int:
        start_together.wait()
        failures = 0
        for _ in range(300):
            try:
                ensure_writable(out)
            except VitcamError:
                failures += 1
        return failures

    with ThreadPoolExecutor(2) as pool:
        assert [job.result() for job in [pool.submit(check_many_times) for _ in range(2)]] == [0, 0]
    assert not list(out.iterdir())


def test_resume_removes_only_the_temporaries_of_processes_that_are_gone(tiny_model, tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(noise(30, 40, seed=7)).save(folder / "a.png")
    finished = subprocess.Popen(["true"])
    finished.wait()
    with subprocess.Popen(["sleep", "60"]) as running:
        (out / "overlays").mkdir(parents=True)
        stale = out / "overlays" / f".a.png.vitcam-{HOST}-{finished.pid}-x1.tmp"
        live = out / f".results.shard-1-of-2.jsonl.vitcam-{HOST}-{running.pid}-x2.tmp"
        elsewhere = out / f".results.shard-1-of-2.jsonl.vitcam-{HOST}.other-{finished.pid}-x3.tmp"
        foreign = out / ".notes.tmp"
        for path in (stale, live, elsewhere, foreign):
            path.write_bytes(b"partial")
        code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--skip-existing")
        running.kill()
    assert code == 0, stderr
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and foreign.exists()
