"""``vitcam bench`` through the Typer app: the table, the JSON object and its errors."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run


def test_bench_json_has_the_documented_fields(tiny_model):
    code, stdout, stderr = run(
        "bench", "--model", f"local-dir:{tiny_model}", "-b", "2", "--warmup", "0", "--repeat", "1", "--json"
    )
    assert code == 0, stderr
    result = json.loads(stdout)
    for key in ("forward_images_per_s", "explain_images_per_s", "ratio", "peak_memory_mb", "device_name"):
        assert result[key], key
    assert [run["variant"] for run in result["runs"]] == ["official", "otx", "openvino-xai"]
    assert all(run["engine"] == "fast" and run["ratio"] > 0 for run in result["runs"])
    assert result["ratio"] == result["runs"][0]["ratio"]
    # the summary's rates and ratio come from the same timed calls: the first variant's
    first = result["runs"][0]
    for key in ("forward_seconds_per_batch", "forward_images_per_s", "explain_images_per_s", "ratio"):
        assert result[key] == first[key], key
    for figures in result["runs"]:
        rates = figures["forward_images_per_s"] / figures["explain_images_per_s"]
        assert rates == pytest.approx(figures["ratio"], rel=0.01)


def test_bench_table_with_overrides_and_dense_engine(tiny_model):
    args = ("--variant", "otx", "--target-block", "-2", "--engine", "dense", "--repeat", "1", "-b", "1")
    code, stdout, stderr = run("bench", "--model", f"local-dir:{tiny_model}", *args)
    assert code == 0, stderr
    assert "forward" in stdout and "otx (block -2, skip ln," in stdout and "dense" in stdout


def test_bench_errors(tiny_model):
    code, _, stderr = run("bench", "--model", f"local-dir:{tiny_model}", "--variant", "nope")
    assert code == 2 and "--variant" in stderr
    code, _, stderr = run(
        "bench", "--model", "beit_base_patch16_224", "--no-pretrained", "--engine", "fast", "--img-size", "32"
    )
    assert code == 2 and "--engine fast is not exact" in stderr


def test_bench_adcc_cost(tiny_model):
    code, stdout, stderr = run(
        "bench", "--model", f"local-dir:{tiny_model}", "-b", "2", "--repeat", "1", "--variant", "otx",
        "--adcc", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    run_ = json.loads(stdout)["runs"][0]
    assert (
        run_["adcc_cost_ratio"] > 0 and run_["explain_with_adcc_images_per_s"] > 0
    )  # figures, not a timing test
