"""``vitcam explain`` end to end, through the Typer app and (for entry points and pipes) a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import BROKEN_IMAGES, CLASS_NAMES, GOOD_IMAGES
from vitcam_cli.cli import app
from vitcam_cli.data import decode_image
from vitcam_cli.outputs.rows import EXPLAIN_COLUMNS as ROW_FIELDS

VITCAM = [sys.executable, "-m", "vitcam_cli"]


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def explain(model: Path, *args: str) -> tuple[int, str, str]:
    return run("explain", "--model", f"local-dir:{model}", "--workers", "0", "--quiet", *args)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_version_through_the_console_script_and_module():
    script = Path(sys.executable).with_name("vitcam")
    for command in ([str(script), "--version"], [*VITCAM, "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert result.stdout.startswith("vitcam ")


def test_help_documents_every_option():
    code, stdout, _ = run("explain", "--help")
    assert code == 0
    for option in (
        "--model", "--checkpoint", "--no-pretrained", "--num-classes", "--img-size", "--files-from",
        "--variant", "--kernel", "--target-block", "--skip", "--score", "--mask-batch", "--class",
        "--top-k", "--labels",
        "--out", "--save-maps", "--no-overlays", "--overlay-format", "--overlay-size", "--colormap",
        "--alpha", "--skip-existing", "--jsonl", "--batch-size",
        "--workers", "--device", "--precision", "--quiet", "--config", "--debug",
    ):  # fmt: skip
        assert option in stdout, option


def test_mixed_folder_end_to_end(tiny_model, image_folder, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(image_folder), "-o", str(out), "--save-maps")
    assert code == 1, stderr  # finished, some inputs failed
    rows = rows_of(out)
    assert len(rows) == len(GOOD_IMAGES) + len(BROKEN_IMAGES)
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows)
    for row in rows:
        assert set(ROW_FIELDS) <= set(row)
        name = Path(row["path"]).relative_to(image_folder).as_posix()
        if name in BROKEN_IMAGES:
            assert row["status"] == "error" and BROKEN_IMAGES[name] in row["error"]
            continue
        assert row["status"] == "ok" and row["rank"] == 1
        assert row["class_name"] == CLASS_NAMES[row["class_index"]]
        original = decode_image(Path(row["path"]))
        overlay = Image.open(out / row["overlay"])
        assert overlay.size == original.size == (row["width"], row["height"])
        saliency = np.load(out / row["map"])
        assert saliency.shape == (4, 6) and saliency.dtype == np.float32
    assert (out / "overlays/nested/deeper/gray.png.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["images"] == {
        "ok": len(GOOD_IMAGES),
        "error": len(BROKEN_IMAGES),
        "skipped": 0,
        "total": len(GOOD_IMAGES) + len(BROKEN_IMAGES),
    }
    assert summary["settings"]["method"]["variant"] == "fused"
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(ROW_FIELDS) and len(csv_lines) == len(rows) + 1
    assert not list(out.rglob("*.tmp"))


def test_all_good_inputs_exit_zero_and_variants_change_maps(tiny_model, small_folder, tmp_path):
    maps = {}
    for variant in ("official", "otx", "openvino-xai"):
        out = tmp_path / variant
        code, _, stderr = explain(
            tiny_model, str(small_folder), "-o", str(out), "--variant", variant, "--save-maps"
        )
        assert code == 0, stderr
        maps[variant] = np.load(out / "maps/a.png.npy")
        assert json.loads((out / "summary.json").read_text())["settings"]["method"]["variant"] == variant
    assert not np.allclose(maps["official"], maps["otx"])
    assert not np.allclose(maps["otx"], maps["openvino-xai"])


def test_explicit_method_options_override_the_preset(tiny_model, small_folder, tmp_path):
    out = tmp_path / "out"
    args = ("--variant", "otx", "--kernel", "single", "--target-block", "0", "--score", "logit")
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(out), *args)
    assert code == 0, stderr
    method = json.loads((out / "summary.json").read_text())["settings"]["method"]
    assert method | {"kernel": "single", "target_block": 0, "skip": "ln", "score": "logit"} == method


def test_top_k_and_classes_name_files_by_class(tiny_model, small_folder, tmp_path):
    out = tmp_path / "top"
    assert explain(tiny_model, str(small_folder), "-o", str(out), "--top-k", "3")[0] == 0
    rows = [row for row in rows_of(out) if row["path"].endswith("a.png")]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert all(row["overlay"] == f"overlays/a.png.{row['class_index']}.png" for row in rows)
    assert rows[0]["probability"] >= rows[1]["probability"] >= rows[2]["probability"]

    out = tmp_path / "classes"
    assert explain(tiny_model, str(small_folder), "-o", str(out), "--class", "dog", "-c", "4")[0] == 0
    assert {row["class_name"] for row in rows_of(out)} == {"dog", "horse"}
    assert (out / "overlays/sub/c.png.1.png").is_file() and (out / "overlays/sub/c.png.4.png").is_file()


def test_labels_choose_the_class_and_missing_labels_are_error_rows(tiny_model, small_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,fish\nsub/c.png,0\n")
    out = tmp_path / "out"
    code, _, _ = explain(tiny_model, str(small_folder), "-o", str(out), "--labels", str(labels))
    assert code == 1
    by_name = {Path(row["path"]).name: row for row in rows_of(out)}
    assert by_name["a.png"]["class_name"] == "fish" and by_name["c.png"]["class_name"] == "cat"
    assert by_name["b.jpg"]["status"] == "error" and "no label" in by_name["b.jpg"]["error"]


def test_resume_processes_only_missing_images(tiny_model, small_folder, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(small_folder), "-o", str(out))[0] == 0
    kept = out / "overlays/b.jpg.jpg"
    kept_time = kept.stat().st_mtime_ns
    (out / "overlays/a.png.png").unlink()  # as if the run died before this file landed
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines) + '\n{"path": "torn')
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(out), "--skip-existing")
    assert code == 0, stderr
    rows = rows_of(out)
    assert sorted(row["path"] for row in rows) == sorted(json.loads(line)["path"] for line in lines)
    assert (out / "overlays/a.png.png").is_file() and kept.stat().st_mtime_ns == kept_time
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"]["skipped"] == 2 and summary["images"]["ok"] == 3


def test_resume_with_other_settings_is_refused(tiny_model, small_folder, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(small_folder), "-o", str(out))[0] == 0
    code, _, stderr = explain(
        tiny_model, str(small_folder), "-o", str(out), "--skip-existing", "--variant", "otx"
    )
    assert code == 2 and "different method settings" in stderr


def test_files_from_stdin_and_jsonl_in_a_real_pipe(tiny_model, small_folder, tmp_path):
    listing = "\n".join(str(p) for p in sorted(small_folder.rglob("*.png"))) + "\n"
    out = tmp_path / "out"
    result = subprocess.run(
        [
            *VITCAM,
            "explain",
            "--files-from",
            "-",
            "--model",
            str(tiny_model),
            "-o",
            str(out),
            "--jsonl",
            "-q",
        ],
        input=listing,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in printed] == [row["path"] for row in rows_of(out)]
    assert {Path(row["path"]).name for row in printed} == {"a.png", "c.png"}


def test_offline_without_cached_weights_is_one_line_and_exit_2(tmp_path, small_folder):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "th"))
    result = subprocess.run(
        [*VITCAM, "explain", str(small_folder), "--model", "vit_tiny_patch16_224", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--checkpoint" in lines[0] and "local-dir:" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(small_folder, tmp_path):
    code, _, stderr = run(
        "explain",
        str(small_folder),
        "-m",
        "resnet18",
        "--no-pretrained",
        "--debug",
        "-o",
        str(tmp_path / "o"),
    )
    assert code == 2 and "Traceback" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-m", "resnet18", "--no-pretrained"), "not supported"),
        (
            (
                "-m",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--precision",
                "fp16",
                "--device",
                "cpu",
            ),
            "fp16 needs a CUDA device",
        ),
        (("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--alpha", "2"), "--alpha"),
        (
            ("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--target-block", "40"),
            "out of range",
        ),
        (("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "3x"), "--img-size"),
        (
            (
                "-m",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--class",
                "zebra-ish",
                "--class",
                "99999",
            ),
            "class",
        ),
        (
            (
                "-m",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--top-k",
                "2",
                "--class",
                "1",
            ),
            "only one of them",
        ),
        (
            ("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--colormap", "nope"),
            "colormap",
        ),
        (
            ("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--device", "cuda:7"),
            "--device",
        ),
        (("-m", "not_a_model_at_all"), "not a bundled or timm model name"),
        ((), "--model is required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(small_folder, tmp_path, args, message):
    code, _, stderr = run("explain", str(small_folder), "-o", str(tmp_path / "o"), "--workers", "0", *args)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_bad_input_paths(tiny_model, tmp_path):
    code, _, stderr = explain(tiny_model, str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert code == 2 and "no such file or folder" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = explain(tiny_model, str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert code == 2 and "no images found" in stderr


def test_unwritable_output_folder_is_refused(tiny_model, small_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(blocker))
    assert code == 2 and "--out" in stderr
    assert blocker.read_text().startswith("a file")


def test_config_file_sets_options_and_flags_win(tiny_model, small_folder, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'model = "local-dir:{tiny_model}"\nworkers = 0\nquiet = true\n\n'
        f'[explain]\nvariant = "otx"\ntop-k = 2\nout = "{tmp_path / "from-config"}"\n'
        f'inputs = ["{small_folder}"]\n'
    )
    code, _, stderr = run("explain", "--config", str(config), "--variant", "openvino-xai")
    assert code == 0, stderr
    summary = json.loads((tmp_path / "from-config" / "summary.json").read_text())
    assert summary["settings"]["method"]["variant"] == "openvino-xai"
    assert summary["settings"]["targets"] == {"mode": "top-k", "k": 2}

    config.write_text('modle = "typo"\n')
    code, _, stderr = run("explain", str(small_folder), "--config", str(config))
    assert code == 2 and "unknown option 'modle'" in stderr


def test_checkpoint_replaces_the_folder_weights(tiny_model, other_tiny_model, small_folder, tmp_path):
    direct, swapped = tmp_path / "direct", tmp_path / "swapped"
    assert explain(other_tiny_model, str(small_folder), "-o", str(direct))[0] == 0
    checkpoint = other_tiny_model / "model.safetensors"
    assert explain(tiny_model, str(small_folder), "-o", str(swapped), "--checkpoint", str(checkpoint))[0] == 0
    pick = lambda rows: [(r["class_index"], r["probability"]) for r in rows]  # noqa: E731
    assert pick(rows_of(direct)) == pick(rows_of(swapped))


def test_bf16_on_cpu_runs_and_batch_size_does_not_change_maps(tiny_model, small_folder, tmp_path):
    one, four, bf16 = tmp_path / "one", tmp_path / "four", tmp_path / "bf16"
    assert explain(tiny_model, str(small_folder), "-o", str(one), "--save-maps", "-b", "1")[0] == 0
    assert explain(tiny_model, str(small_folder), "-o", str(four), "--save-maps", "-b", "4")[0] == 0
    np.testing.assert_allclose(
        np.load(one / "maps/a.png.npy"), np.load(four / "maps/a.png.npy"), rtol=1e-5, atol=1e-7
    )
    assert (
        explain(tiny_model, str(small_folder), "-o", str(bf16), "--save-maps", "--precision", "bf16")[0] == 0
    )
    assert np.isfinite(np.load(bf16 / "maps/a.png.npy")).all()
    assert json.loads((bf16 / "summary.json").read_text())["precision"] == "bf16"


def test_example_configs_are_valid():
    from typer.main import get_command

    from vitcam_cli.config import load_config

    command = get_command(app).commands["explain"]
    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.toml"))
    assert configs
    for config in configs:
        assert load_config(config, command, "explain")


def test_missing_listed_file_is_an_error_row(tiny_model, small_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{small_folder / 'a.png'}\n{small_folder / 'gone.png'}\n")
    out = tmp_path / "out"
    code, _, _ = explain(tiny_model, "--files-from", str(listing), "-o", str(out))
    assert code == 1
    assert [(Path(r["path"]).name, r["status"], r["error"]) for r in rows_of(out)] == [
        ("a.png", "ok", None),
        ("gone.png", "error", "file not found"),
    ]


def test_engine_option_is_recorded_and_both_engines_agree(tiny_model, small_folder, tmp_path):
    maps = {}
    for engine in ("fast", "dense"):
        out = tmp_path / engine
        code, _, stderr = explain(
            tiny_model, str(small_folder), "-o", str(out), "--engine", engine, "--save-maps"
        )
        assert code == 0, stderr
        assert json.loads((out / "summary.json").read_text())["settings"]["engine"] == engine
        maps[engine] = np.load(out / "maps/sub/c.png.npy")
    np.testing.assert_allclose(maps["fast"], maps["dense"], rtol=1e-5, atol=1e-7)
    code, _, _ = explain(tiny_model, str(small_folder), "-o", str(tmp_path / "auto"))
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["settings"]["engine"] == "fast"


def test_adcc_per_row_in_summary_and_report(tiny_model, small_folder, tmp_path):
    out = tmp_path / "out"
    assert explain(tiny_model, str(small_folder), "-o", str(out), "--top-k", "2")[0] == 0
    rows = rows_of(out)
    for row in rows:
        assert 0 <= row["adcc"] <= 1 and 0 <= row["average_drop"] <= 1 and row["increase"] in (0, 1)
        assert 0 <= row["coherency"] <= 1 and 0 <= row["complexity"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    mean = sum(row["adcc"] for row in rows) / len(rows)
    assert summary["adcc"]["adcc_mean"] == pytest.approx(mean, abs=1e-6)
    assert {"adcc", "average_drop", "increase", "coherency", "complexity"} <= set(summary["adcc"])
    assert "adcc" in (out / "results.csv").read_text().splitlines()[0]
    report = (out / "report.html").read_text()
    assert "vitcam explain" in report and "data:image" in report

    quick = tmp_path / "quick"
    assert explain(tiny_model, str(small_folder), "-o", str(quick), "--no-adcc")[0] == 0
    assert all(row["adcc"] is None for row in rows_of(quick))
    assert json.loads((quick / "summary.json").read_text())["adcc"] is None


MODEL_FORMS = (
    "fashion-vit",
    "fashion-swin",
    "hf-hub:ORG/NAME",
    "local-dir:PATH",
    "hf:ORG/NAME",
    "open_clip:ARCH",
)


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("fashon-vit", "fashion-vit"),
        ("Fashion-Swin", "fashion-swin"),
        ("vit_tiny_patch16_22.augreg_in21k", "vit_tiny_patch16_224.augreg_in21k"),
    ],
)
def test_a_misspelt_model_name_gets_a_suggestion_and_every_model_form(
    small_folder, tmp_path, name, suggested
):
    code, _, stderr = run("explain", small_folder, "--model", name, "--workers", "0", "-o", tmp_path / "o")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"error: --model {name}: ") and f"(did you mean {suggested}" in stderr
    assert all(form in stderr for form in MODEL_FORMS), stderr


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("relevanse", "no such method (did you mean relevance?)"),
        ("reciprocam:fussed", "no preset 'fussed' (did you mean fused?)"),
        ("reciprocam:official:kernal=single", "unknown option 'kernal' (did you mean kernel?)"),
    ],
)
def test_a_misspelt_method_gets_a_suggestion(tiny_model, small_folder, tmp_path, method, message):
    code, _, stderr = explain(tiny_model, str(small_folder), "--method", method, "-o", str(tmp_path / "o"))
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"error: --method {method}: {message}; use reciprocam["), stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [("/dev/zero", "not a regular file"), ("dir", "not a regular file"), ("missing.pt", "no such file")],
)
def test_a_checkpoint_that_is_no_file_is_named_as_such(small_folder, tmp_path, checkpoint, message):
    (tmp_path / "dir").mkdir()
    path = Path(checkpoint) if checkpoint.startswith("/") else tmp_path / checkpoint
    code, _, stderr = run(
        "explain", small_folder, "--model", "vit_tiny_patch16_224", "--no-pretrained", "--checkpoint", path,
        "--workers", "0", "-o", tmp_path / "o",
    )  # fmt: skip
    assert code == 2 and stderr.startswith(f"error: --checkpoint {path}: {message}"), stderr
    assert stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_a_misspelt_pretrained_tag_gets_a_suggestion(small_folder, tmp_path):
    name = "vit_tiny_patch16_224.augreg_in21"
    code, _, stderr = run("explain", small_folder, "--model", name, "--workers", "0", "-o", tmp_path / "o")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(
        f"error: --model {name}: not a pretrained tag of vit_tiny_patch16_224 (did you mean "
        "vit_tiny_patch16_224.augreg_in21k"
    ), stderr


def test_help_and_the_missing_model_name_every_model_form(small_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run("explain", "--help")
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "--model" in line)
    last = next(i for i, line in enumerate(lines) if "--checkpoint" in line)
    model_help = " ".join(line.strip("│ ") for line in lines[first:last])
    assert code == 0 and all(form in model_help for form in MODEL_FORMS), model_help
    code, _, stderr = run("explain", small_folder, "-o", tmp_path / "o")
    assert code == 2 and stderr.startswith("error: --model is required: ")
    assert all(form in stderr for form in MODEL_FORMS), stderr


def test_an_unknown_class_lists_the_classes_and_suggests_close_names(tiny_model, small_folder, tmp_path):
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(tmp_path / "o"), "--class", "DOGG")
    assert code == 2
    assert stderr == (
        "error: class 'DOGG' is not one of the model's 5 classes (did you mean 'dog'?); they are 'cat', "
        "'dog', 'bird', 'fish', 'horse', or pass an index from 0 to 4\n"
    )


def test_an_unknown_class_of_many_lists_the_first_ones(small_folder, tmp_path):
    imagenet = ("-m", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--workers", "0")
    code, _, stderr = run("explain", small_folder, *imagenet, "-o", tmp_path / "o", "--class", "Tabby Kat")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(
        "error: class 'Tabby Kat' is not one of the model's 1000 classes (did you mean 'tabby, tabby cat'"
    )
    assert "they are 'tench, Tinca tinca', 'goldfish, Carassius auratus', " in stderr
    assert stderr.endswith(
        "'hen', 'ostrich, Struthio camelus' ... and 990 more, or pass an index from 0 to 999\n"
    ), stderr


def test_an_unknown_class_in_a_labels_file_names_its_line(tiny_model, small_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,dog\nb.jpg,Hors\n")
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(tmp_path / "o"), "--labels", labels)
    assert code == 2
    assert stderr.startswith(
        f"error: --labels {labels}: line 3: class 'Hors' is not one of the model's 5 classes (did you mean "
        "'horse'?); they are 'cat', "
    ), stderr


def test_a_class_name_for_a_model_without_names_says_how_to_name_them(small_folder, tmp_path):
    nameless = ("-m", "vit_tiny_patch16_224", "--no-pretrained", "--num-classes", "5", "--img-size", "32")
    code, _, stderr = run(
        "explain", small_folder, *nameless, "--workers", "0", "-o", tmp_path / "o", "--class", "tapir"
    )
    assert code == 2
    assert stderr == (
        "error: class 'tapir' is not a class name: the model has none; pass an index from 0 to 4, or name "
        "its classes with --class-names\n"
    )


HELP_PAGES = [(), ("explain",), ("evaluate",), ("merge",), ("bench",)]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("page", HELP_PAGES)
def test_help_pages_show_every_option_whole_at_80_and_120_columns(monkeypatch, page, columns):
    from typer.main import get_command

    monkeypatch.setenv("COLUMNS", str(columns))
    code, stdout, _ = run(*page, "--help")
    assert code == 0
    assert all(len(line) <= columns for line in stdout.splitlines())
    assert "…" not in stdout and "<bool>" not in stdout, stdout
    command = get_command(app)
    command = command.commands[page[0]] if page else command
    shown = set(stdout.replace("│", " ").split())
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts):
            assert not name.startswith("-") or name in shown, (name, stdout)


def test_top_level_help_lists_each_command_by_its_summary(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run("--help")
    assert code == 0 and "Exit codes" not in stdout
    summaries = {
        line.split()[1]: line for line in stdout.splitlines() if line.startswith("│ ") and "  " in line
    }
    assert "report.html" in summaries["explain"] and "report.html" in summaries["merge"], stdout


def test_method_help_names_every_preset(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for command, flag in (("explain", "--method"), ("evaluate", "--methods")):
        _, stdout, _ = run(command, "--help")
        lines = stdout.splitlines()
        first = next(i for i, line in enumerate(lines) if line.lstrip("│ ").startswith(flag + " "))
        block = " ".join(line.strip("│ ") for line in lines[first : first + 6])
        assert "official, otx, openvino-xai, discriminative or fused" in block, block


def test_command_descriptions_flow_whatever_the_source_line_breaks(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _, stdout, _ = run("evaluate", "--help")
    assert "Exit codes: 0 ok, 1 some inputs failed or the --fail-under gate failed, 2 usage" in stdout, stdout


def test_the_summary_says_what_each_adcc_is_and_fits_an_80_column_log(tiny_model, small_folder, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # what a log gets: rich draws for 80 columns off a terminal
    out = small_folder.parent / ("a-long-output-folder-name-" * 3)
    code, _, stderr = run(
        "explain", small_folder, "-m", f"local-dir:{tiny_model}", "-o", out, "--workers", "0"
    )
    assert code == 0, stderr
    table = stderr[stderr.index("vitcam explain") :].splitlines()
    assert max(len(line) for line in table) <= 80, stderr
    rows = {line.strip("│ ").split("│")[0].strip(): line for line in table if line.count("│") == 3}
    for label in ("ADCC of the mean parts", "mean of per-image ADCC", "mean coherency / complexity"):
        assert label in rows, stderr
    assert "ADCC (of means / mean)" not in stderr
