"""Sharded runs: --shard by hand plus ``vitcam merge``, and torchrun with gloo on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import noise
from tests.test_cli import explain, rows_of, run
from tests.test_evaluate import write_labelled

FLOATS = ("probability", "adcc", "average_drop", "increase", "coherency", "complexity")
# images batched differently round differently; min-max scaling of a random-weight model's nearly flat
# logit maps magnifies that to a few 1e-5 in ADCC, so "equal" means equal to 1e-4
TOLERANCE = 1e-4


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(7):
        Image.fromarray(noise(30 + i, 40, seed=300 + i)).save(
            root / ("sub" if i % 3 == 0 else ".") / f"{i}.png"
        )
    (root / "broken.png").write_bytes(b"not a png")
    return root


def by_key(rows: list[dict]) -> dict[tuple[str, object], dict]:
    return {(row["path"], row["class_index"]): row for row in rows}


def assert_same_rows(merged: list[dict], single: list[dict]) -> None:
    assert [row["path"] for row in merged] == sorted(row["path"] for row in single)
    merged_rows, single_rows = by_key(merged), by_key(single)
    assert merged_rows.keys() == single_rows.keys()
    for key, row in single_rows.items():
        other = merged_rows[key]
        for field, value in row.items():
            if field in FLOATS and value is not None:
                assert other[field] == pytest.approx(value, abs=TOLERANCE), (key, field)
            elif field not in ("overlay", "map"):
                assert other[field] == value, (key, field)


def assert_same_summary(merged: dict, single: dict) -> None:
    assert merged["images"] | {"skipped": 0} == single["images"]
    assert merged["rows"] == single["rows"]
    for name, value in single["adcc"].items():
        assert merged["adcc"][name] == pytest.approx(value, abs=TOLERANCE), name


def test_shards_merged_equal_a_single_process_run(tiny_model, folder, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert explain(tiny_model, str(folder), "-o", str(single), "--top-k", "2")[0] == 1
    for index in range(3):
        code, _, stderr = explain(
            tiny_model, str(folder), "-o", str(sharded), "--top-k", "2", "--shard", f"{index}/3"
        )
        assert code in (0, 1), stderr
        assert not (sharded / "results.jsonl").exists()  # only part files until the merge
    code, _, stderr = run("merge", str(sharded), "-q")
    assert code == 1, stderr  # the broken file is an error row in the merged run too
    assert_same_rows(rows_of(sharded), rows_of(single))
    assert_same_summary(*(json.loads((path / "summary.json").read_text()) for path in (sharded, single)))
    assert (sharded / "results.csv").read_text().count("\n") == len(rows_of(single)) + 1
    assert (sharded / "report.html").is_file()


def test_shards_in_separate_folders_merge_into_a_third(tiny_model, folder, tmp_path):
    parts = [tmp_path / f"machine{i}" for i in range(2)]
    for index, part in enumerate(parts):
        explain(tiny_model, str(folder), "-o", str(part), "--shard", f"{index}/2", "--save-maps")
    merged = tmp_path / "merged"
    code, _, stderr = run("merge", *map(str, parts), "-o", str(merged), "-q")
    assert code == 1, stderr
    for row in rows_of(merged):
        if row["status"] == "ok":
            assert (merged / row["overlay"]).is_file() and (merged / row["map"]).is_file()
            assert row["overlay"].startswith("../machine")


def test_merge_refuses_incomplete_or_mixed_shards(tiny_model, folder, tmp_path):
    out = tmp_path / "out"
    explain(tiny_model, str(folder), "-o", str(out), "--shard", "0/3")
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shards 1, 2 of 3 are missing" in stderr
    explain(tiny_model, str(folder), "-o", str(out), "--shard", "1/3", "--variant", "otx")
    explain(tiny_model, str(folder), "-o", str(out), "--shard", "2/3")
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shard 1/3 used other method settings" in stderr
    explain(tiny_model, str(folder), "-o", str(out), "--shard", "1/3", "--overwrite")
    summary = out / "summary.shard-2-of-3.json"
    summary.write_text(summary.read_text().replace('"status": "complete"', '"status": "interrupted"'))
    code, _, stderr = run("merge", str(out))
    assert code == 2 and "shard 2/3" in stderr and "--skip-existing" in stderr
    code, _, stderr = run("merge", str(tmp_path / "nothing-here"))
    assert code == 2 and "no shard summaries" in stderr
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--shard", "3/3")
    assert code == 2 and "--shard 3/3" in stderr


def torchrun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``vitcam ARGS`` under torchrun: two CPU processes on this machine, one thread each."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "vitcam_cli", *map(str, args)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300,
    )  # fmt: skip


def test_torchrun_two_cpu_processes_equal_a_single_process_run(tiny_model, folder, tmp_path):
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    assert explain(tiny_model, str(folder), "-o", str(single))[0] == 1
    model = ("--model", f"local-dir:{tiny_model}")
    result = torchrun("explain", folder, *model, "-o", ranked, "--device", "cpu", "--workers", "0", "-q")
    assert result.returncode == 1, result.stderr[-3000:]  # 1: the broken file, as in the single run
    assert sorted(p.name for p in ranked.glob("summary*.json")) == [
        "summary.json", "summary.shard-0-of-2.json", "summary.shard-1-of-2.json"
    ], result.stderr[-3000:]  # fmt: skip
    assert_same_rows(rows_of(ranked), rows_of(single))
    assert_same_summary(*(json.loads((path / "summary.json").read_text()) for path in (ranked, single)))


def _evaluate_args(model: Path, labelled: Path) -> list[str]:
    return ["evaluate", str(labelled), "--model", f"local-dir:{model}",
            "--labels", str(labelled / "labels.csv"), "--boxes", str(labelled / "boxes.csv"),
            "--methods", "reciprocam,rollout", "--steps", "3", "--workers", "0", "-q"]  # fmt: skip


def assert_same_metrics(merged: dict, single: dict) -> None:
    assert merged["dataset"] == single["dataset"]
    for name, values in single["methods"].items():
        for key, value in values.items():
            if key in ("seconds", "seconds_per_image"):
                continue
            if isinstance(value, float):
                assert merged["methods"][name][key] == pytest.approx(value, abs=TOLERANCE), (name, key)
            else:
                assert merged["methods"][name][key] == value, (name, key)


def sorted_rows(path: Path) -> list[dict]:
    import csv

    rows = list(csv.DictReader(path.open()))
    return sorted(rows, key=lambda row: (row["path"], row["method"]))


def test_evaluate_shards_merge_to_the_single_process_numbers(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run(*_evaluate_args(tiny_model, data), "-o", str(single))[0] == 0
    for index in range(2):
        code, _, stderr = run(*_evaluate_args(tiny_model, data), "-o", str(sharded), "--shard", f"{index}/2")
        assert code == 0, stderr
    assert not (sharded / "metrics.json").exists()
    code, _, stderr = run("merge", str(sharded), "-q")
    assert code == 0, stderr
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (sharded, single)]
    assert_same_metrics(*metrics)
    merged_rows, single_rows = sorted_rows(sharded / "per_image.csv"), sorted_rows(single / "per_image.csv")
    assert [r["path"] for r in merged_rows] == [r["path"] for r in single_rows]
    for a, b in zip(merged_rows, single_rows, strict=True):
        assert a["class_index"] == b["class_index"] and float(a["adcc"]) == pytest.approx(
            float(b["adcc"]), abs=TOLERANCE
        )
    assert (sharded / "report.html").is_file()


def test_evaluate_under_torchrun(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    assert run(*_evaluate_args(tiny_model, data), "-o", str(single))[0] == 0
    result = torchrun(*_evaluate_args(tiny_model, data), "-o", ranked, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (ranked, single)]
    assert_same_metrics(*metrics)
    assert metrics[0]["shards"] == 2
