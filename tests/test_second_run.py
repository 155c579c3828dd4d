"""Nothing lost on a second run: a used output folder is reused only as the user says, earlier output
folders are never explained as images, SIGTERM stops a run as Ctrl-C does, the lock is never held by a
dead run's children, damaged model files are named, and the Python API raises typed errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import noise, noise_folder
from tests.test_cli import VITCAM, explain, rows_of, run
from tests.test_evaluate import evaluate, write_labelled
from tests.test_faults import assert_outputs_whole, held_command
from vitcam_cli import Explainer
from vitcam_cli.errors import MissingFileError, NonFiniteError, ParameterError, VitcamError


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_a_used_folder_is_refused_until_resumed_or_overwritten(tiny_model, tmp_path):
    first, second, out = (
        noise_folder(tmp_path / "a", 6, 800),
        noise_folder(tmp_path / "b", 3, 900),
        tmp_path / "o",
    )
    code, _, stderr = explain(tiny_model, str(first), "-o", str(out), "--save-maps")
    assert code == 0, stderr
    (out / "notes.txt").write_text("mine")  # the user's files in the folder are never touched
    (out / "overlays" / "mine.txt").write_text("mine too")
    before = {name: (out / name).read_bytes() for name in files_under(out) if not name.startswith(".")}
    code, _, stderr = explain(tiny_model, str(second), "-o", str(out))
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert f"--out {out}: holds a vitcam explain run: 6 rows, finished 20" in stderr
    assert "resume it with --skip-existing, replace it with --overwrite, or choose another --out" in stderr
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing changed
    code, _, stderr = explain(tiny_model, str(second), "-o", str(out), "--overwrite", "--skip-existing")
    assert code == 2 and "--overwrite and --skip-existing exclude each other" in stderr
    code, _, stderr = explain(tiny_model, str(second), "-o", str(out), "--overwrite", "--class", "unicorn")
    assert code == 2 and {name: (out / name).read_bytes() for name in before} == before  # refused: kept
    code, _, stderr = explain(tiny_model, str(second), "-o", str(out), "--overwrite")
    assert code == 0, stderr
    assert [Path(row["path"]).parent for row in rows_of(out)] == [second] * 3
    visible = {name for name in files_under(out) if not name.startswith(".")}
    assert visible == {
        "notes.txt",
        "overlays/mine.txt",
        "overlays/0.png.png",
        "overlays/1.png.png",
        "overlays/2.png.png",
        "results.jsonl",
        "results.csv",
        "summary.json",
        "report.html",
    }  # fmt: skip  (a's six overlays and maps are gone: maps/ with them, as nothing else was in it)


def test_resuming_keeps_the_run_and_new_images_join_it(tiny_model, tmp_path):
    images, out = noise_folder(tmp_path / "a", 4, 810), tmp_path / "o"
    assert explain(tiny_model, str(images), "-o", str(out))[0] == 0
    Image.fromarray(noise(30, 40, seed=99)).save(images / "new.png")
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out), "--skip-existing")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"ok": 5, "error": 0, "skipped": 4, "total": 5}
    assert len(rows_of(out)) == 5


def test_an_interrupted_run_is_named_partial(tiny_model, tmp_path):
    images, out = noise_folder(tmp_path / "a", 3, 820), tmp_path / "o"
    assert explain(tiny_model, str(images), "-o", str(out))[0] == 0
    summary = out / "summary.json"
    summary.write_text(summary.read_text().replace('"status": "complete"', '"status": "interrupted"'))
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
    assert code == 2 and "holds a vitcam explain run: 3 rows, partial (interrupted), started 20" in stderr


def test_evaluate_is_refused_too_and_overwrite_replaces_its_overlays(tiny_model, tmp_path):
    data, out = write_labelled(tmp_path / "data"), tmp_path / "eval"
    code, _, stderr = evaluate(tiny_model, data, out, "--save-overlays", "--methods", "reciprocam,rollout")
    assert code == 0, stderr
    assert len(list((out / "overlays").rglob("*.png"))) == 20
    code, _, stderr = evaluate(tiny_model, data, out, "--limit", "2")
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert "holds a vitcam evaluate run: 10 images, finished 20" in stderr
    assert (
        "replace it with --overwrite, or choose another --out" in stderr and "--skip-existing" not in stderr
    )
    code, _, stderr = evaluate(tiny_model, data, out, "--limit", "2", "--overwrite")
    assert code == 0, stderr
    assert not (out / "overlays").exists()  # no orphan of the first run is left
    assert json.loads((out / "metrics.json").read_text())["dataset"]["images"] == 2


def test_shards_share_a_folder_but_a_finished_shard_or_run_is_not_replaced_silently(tiny_model, tmp_path):
    images, out = noise_folder(tmp_path / "a", 4, 830), tmp_path / "o"
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2")[0] == 0
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "1/2")[0] == 0  # a sibling: fine
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out), "--shard", "1/2")
    assert (
        code == 2
        and "holds shards of a vitcam run (summary.shard-0-of-2.json, summary.shard-1-of-2" in stderr
    )
    assert explain(tiny_model, str(images), "-o", str(out), "--shard", "1/2", "--overwrite")[0] == 0
    assert run("merge", str(out), "-q")[0] == 0
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
    assert code == 2 and "holds a vitcam explain run: 4 rows, finished" in stderr
    code, _, stderr = explain(tiny_model, str(images), "-o", str(out), "--shard", "0/2")
    assert code == 2 and "holds a vitcam explain run" in stderr
    whole = tmp_path / "whole"
    assert explain(tiny_model, str(images), "-o", str(whole))[0] == 0
    code, _, stderr = explain(tiny_model, str(images), "-o", str(whole), "--shard", "0/2", "--overwrite")
    assert code == 2 and "written by one process: replace it with --overwrite without --shard" in stderr
    assert explain(tiny_model, str(images), "-o", str(out), "--overwrite")[0] == 0  # a whole run replaces all
    assert not list(out.glob("*.shard-*")) and len(rows_of(out)) == 4


def test_earlier_output_folders_are_not_explained_as_images(tiny_model, tmp_path):
    photos = noise_folder(tmp_path / "photos", 3, 840)
    assert explain(tiny_model, str(photos), "-o", str(photos / "vitcam-out"), "--save-maps")[0] == 0
    renamed = photos / "any-name"  # recognised by its marker, not by its name
    assert explain(tiny_model, str(photos), "-o", str(renamed))[0] == 0
    elsewhere = tmp_path / "elsewhere"
    code, _, stderr = run("explain", str(photos), "--model", f"local-dir:{tiny_model}", "--workers", "0",
                          "-o", str(elsewhere), "--no-adcc")  # fmt: skip
    assert code == 0, stderr
    assert sorted(Path(row["path"]).name for row in rows_of(elsewhere)) == ["0.png", "1.png", "2.png"]
    assert stderr.count("skipped 2 vitcam output folders among the inputs") == 1
    assert json.loads((elsewhere / "summary.json").read_text())["output_folders_skipped"] == 2
    overlay = photos / "vitcam-out" / "overlays" / "0.png.png"  # named explicitly: explained
    code, _, stderr = explain(tiny_model, str(overlay), "-o", str(tmp_path / "named"))
    assert code == 0 and len(rows_of(tmp_path / "named")) == 1, stderr
    data = write_labelled(tmp_path / "data")
    assert explain(tiny_model, str(data), "-o", str(data / "images" / "out"))[0] == 0
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "eval")
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"]["images"] == 10 and metrics["output_folders_skipped"] == 1


def test_the_api_raises_typed_errors_for_nan_and_missing_files(tiny_model, tmp_path):
    explainer = Explainer(f"local-dir:{tiny_model}", device="cpu")
    with pytest.raises(NonFiniteError) as raised:
        explainer(torch.full((1, 3, 32, 48), float("nan")))
    assert isinstance(raised.value, ParameterError) and raised.value.parameter == "images"
    assert "NaN or inf" in str(raised.value)
    with pytest.raises(MissingFileError) as missing:
        explainer(["/missing.png"])
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, VitcamError)
    assert missing.value.parameter == "images" and missing.value.filename == "/missing.png"
    assert str(missing.value) == "images='/missing.png': no such file"
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ParameterError, match="not an image Pillow can identify"):
        explainer([text])
    from safetensors.torch import load_file, save_file

    weights = load_file(tiny_model / "model.safetensors")
    weights["head.bias"] = torch.full_like(weights["head.bias"], float("nan"))
    broken = tmp_path / "broken.safetensors"
    save_file(weights, broken)
    nan_model = Explainer(f"local-dir:{tiny_model}", device="cpu", checkpoint=broken)
    with pytest.raises(NonFiniteError) as results:
        nan_model(torch.zeros(2, 3, 32, 48))
    assert results.value.parameter == "model" and "image 0, 1" in str(results.value)


def damaged(tiny_model: Path, folder: Path, config: str | None = None, cut: int | None = None) -> Path:
    folder.mkdir()
    text = (tiny_model / "config.json").read_text()
    (folder / "config.json").write_text(config if config is not None else text)
    weights = (tiny_model / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:cut] if cut is not None else weights)
    return folder


def test_damaged_model_files_are_named_not_blamed_on_the_network(tiny_model, tmp_path):
    images = noise_folder(tmp_path / "images", 1, 850)
    lines = (tiny_model / "config.json").read_text().splitlines()
    lines[2] = lines[2].rstrip(",")  # a missing comma
    bad_json = damaged(tiny_model, tmp_path / "bad-json", config="\n".join(lines))
    code, _, stderr = explain(bad_json, str(images), "-o", str(tmp_path / "o1"))
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert f"{bad_json / 'config.json'} is not valid JSON (line 4, column " in stderr
    assert "offline" not in stderr and "cached" not in stderr
    truncated = damaged(tiny_model, tmp_path / "truncated", cut=-100)
    code, _, stderr = explain(truncated, str(images), "-o", str(tmp_path / "o2"))
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert f"{truncated / 'model.safetensors'} is truncated or not a safetensors file" in stderr
    assert "offline" not in stderr and "cached" not in stderr
    garbage = damaged(tiny_model, tmp_path / "garbage", cut=0)
    code, _, stderr = run("explain", str(images), "--model", str(garbage), "-o", str(tmp_path / "o3"), "-q")
    assert code == 2 and "model.safetensors is truncated or not a safetensors file" in stderr
    code, _, stderr = explain(truncated, str(images), "-o", str(tmp_path / "o4"), "--no-pretrained")
    assert code == 0, stderr  # random weights: the weights file is not read


def rows_written(out: Path, count: int, process: subprocess.Popen, seconds: float = 900) -> None:
    """Wait until the run has written ``count`` rows (a generous limit: a loaded machine is slow)."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        jsonl = out / "results.jsonl"
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    process.kill()
    _, stderr = process.communicate()
    raise AssertionError(f"{count} rows not written (exit {process.returncode}): {stderr[-2000:]}")


def test_sigterm_stops_like_ctrl_c_and_an_immediate_resume_finishes(tiny_model, tmp_path):
    """Decoding in two worker processes, which must not keep the folder locked for the resume."""
    many, out = noise_folder(tmp_path / "many", 8, seed=860, size=(120, 160)), tmp_path / "out"
    arguments = [
        "explain",
        str(many),
        "--model",
        str(tiny_model),
        "-o",
        str(out),
        "-b",
        "2",
        "--workers",
        "2",
    ]
    command = held_command(1, *arguments, "-q")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows_written(out, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr
    assert "rerun the same command with --skip-existing" in stderr and "Traceback" not in stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / ".vitcam.lock").exists()
    assert_outputs_whole(out)
    done = len(rows_of(out))
    assert 0 < done < 8
    result = subprocess.run([*VITCAM, *arguments, "-q", "--skip-existing"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # at once
    assert len(rows_of(out)) == 8
    assert json.loads((out / "summary.json").read_text())["images"]["skipped"] == done


HOLD_AND_FORK = """
import os, sys, time
from pathlib import Path
from vitcam_cli.outputs.lock import OutputLock
with OutputLock(Path(sys.argv[1]), None):
    child = os.fork()
    if child == 0:  # a child that outlives the run, as a DataLoader worker may
        time.sleep(120)
        os._exit(0)
    print("held", child, flush=True)
    sys.stdin.read()
"""


def test_a_dead_runs_lock_is_taken_over_while_its_children_live_on(tiny_model, tmp_path):
    images, out = noise_folder(tmp_path / "images", 2, 870), tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    held, child = holder.stdout.readline().split()
    try:
        assert held == "held"
        code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
        assert code == 2 and "in use by another run" in stderr
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(int(child), 0)  # the child still runs
        code, _, stderr = explain(tiny_model, str(images), "-o", str(out))
        assert code == 0, stderr
    finally:
        holder.kill()
        os.kill(int(child), signal.SIGKILL)
