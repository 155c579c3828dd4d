"""Inputs are never touched, every legal file name works, and resume knows its images and its model:
hostile inputs through the real entry point."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import export_tiny_model, noise, noise_folder
from tests.test_cli import VITCAM, explain, rows_of, run

NAME_MAX = 255


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(30, 40, seed=seed)).save(path, format="PNG" if path.suffix != ".jpg" else "JPEG")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


# -- outputs never land on inputs


def test_an_out_whose_overlays_would_land_on_the_inputs_is_refused(tiny_model, tmp_path):
    folder = tmp_path / "D"
    inputs = noise_folder(folder / "overlays", 3, seed=1)
    before = snapshot(folder)
    code, _, stderr = explain(tiny_model, str(inputs), "-o", str(folder))
    assert code == 2
    assert "overlays" in one_line(stderr) and "--out" in stderr
    assert snapshot(folder) == before  # nothing written, nothing replaced
    code, _, stderr = explain(tiny_model, str(inputs / "0.png"), "-o", str(folder), "--save-maps")
    assert code == 2 and snapshot(folder) == before, stderr


def test_a_linked_overlays_folder_leading_to_the_inputs_is_refused(tiny_model, tmp_path):
    inputs = noise_folder(tmp_path / "images", 2, seed=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").symlink_to(inputs)
    before = snapshot(inputs)
    code, _, stderr = explain(tiny_model, str(inputs), "-o", str(out))
    assert code == 2, stderr
    assert snapshot(inputs) == before


def test_an_input_named_like_a_run_file_is_refused(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "D", 2, seed=3)
    (folder / "report.html").write_bytes((folder / "0.png").read_bytes())
    before = snapshot(folder)
    named = (str(folder / "0.png"), str(folder / "report.html"))
    code, _, stderr = explain(tiny_model, *named, "-o", str(folder))
    assert code == 2 and "report.html" in one_line(stderr)
    assert snapshot(folder) == before


def test_overwrite_never_removes_an_input_even_when_the_journal_names_it(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "D", 2, seed=4)  # the input folder is the output folder
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(folder))
    assert code == 0, stderr
    with (folder / ".vitcam-files").open("a") as journal:  # a hand-edited (or damaged) journal
        journal.write('"0.png"\n"../D/1.png"\n')
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(folder), "--overwrite")
    assert code == 0, stderr
    assert (folder / "0.png").is_file() and (folder / "1.png").is_file()
    assert len(rows_of(folder)) == 2


# -- every legal file name works


def test_names_of_255_bytes_are_explained_resumed_and_given_short_temporaries(tiny_model, tmp_path):
    folder = tmp_path / "long"
    longest = picture(folder / ("x" * (NAME_MAX - 4) + ".png"), seed=5)
    picture(folder / ("é" * 125 + "a.jpg"), seed=6)  # 255 bytes in UTF-8
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--top-k", "2", "--save-maps")
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    links = [row[key] for row in rows for key in ("overlay", "map")]
    assert len(set(links)) == 4 * 2
    for link in links:
        assert (out / link).is_file()
        assert all(len(os.fsencode(part)) <= NAME_MAX for part in Path(link).parts)
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--top-k", "2", "--save-maps",
                              "--skip-existing")  # fmt: skip
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["images"]["skipped"] == 2
    assert longest.is_file()


def test_temporary_names_are_short_whatever_the_name_and_host(monkeypatch, tmp_path):
    import vitcam_cli.outputs.atomic as atomic

    monkeypatch.setattr(atomic, "HOST", "h" * 64 + ".cluster.example.org")
    target = tmp_path / ("y" * NAME_MAX)
    seen = []
    real = atomic.tempfile.mkstemp

    def spy(**kwargs):
        fd, name = real(**kwargs)
        seen.append(Path(name).name)
        return fd, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    atomic.write_atomic(target, lambda handle: handle.write(b"data"))
    assert target.read_bytes() == b"data"
    assert seen and all(len(name) <= 64 for name in seen)


def test_output_names_never_collide(tiny_model, tmp_path):
    folder = tmp_path / "images"
    for seed, name in enumerate(["a.png", "a.jpg", "a.png.png", "x.png", "x.3.png", "x.png.3.png", "b.bmp"]):
        picture(folder / name, seed=10 + seed)
    picture(folder / "b.png" / "inner.png", seed=20)  # a folder named like b.bmp's overlay
    picture(folder / "c.png" / "d.png", seed=21)
    picture(folder / "c.png.png", seed=22)
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--class", "3", "--class", "4",
                              "--save-maps")  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 10 * 2 and all(row["status"] == "ok" for row in rows)
    overlays = [row["overlay"] for row in rows]
    maps = [row["map"] for row in rows]
    assert len(set(overlays)) == len(set(maps)) == 20
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}
    assert set(overlays) | set(maps) <= on_disk
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(tmp_path / "one"))  # one class each
    assert code == 0, stderr
    assert len({row["overlay"] for row in rows_of(tmp_path / "one")}) == 10


def latin1(folder: Path, seed: int) -> Path:
    """A PNG whose file name is not UTF-8 (Latin-1 'café.png')."""
    path = folder / os.fsdecode(b"caf\xe9.png")
    return picture(path, seed=seed)


def test_names_that_are_not_utf8_are_explained_and_recorded_losslessly(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "images", 2, seed=30)
    odd = latin1(folder, seed=31)
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--save-maps")
    assert code == 0, stderr
    rows = rows_of(out)
    assert [row["status"] for row in rows] == ["ok"] * 3
    from vitcam_cli.outputs.rows import Row

    paths = [Row.from_record(row).path for row in rows]
    assert os.fsencode(str(odd)) in [os.fsencode(path) for path in paths]
    text = (out / "results.csv").read_bytes().decode("utf-8")  # still UTF-8
    assert "caf" in text
    for row in rows:
        assert (out / Row.from_record(row).overlay).is_file()
    assert (out / "report.html").read_bytes().decode("utf-8")
    code, _, stderr = explain(tiny_model, str(folder), "-o", str(out), "--save-maps", "--skip-existing")
    assert code == 0, stderr
    assert len(rows_of(out)) == 3


def test_names_that_are_not_utf8_in_files_from_and_on_stdin(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "images", 1, seed=32)
    odd = latin1(folder, seed=33)
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(str(odd)) + b"\n" + os.fsencode(str(folder / "0.png")) + b"\n")
    code, _, stderr = explain(tiny_model, "--files-from", str(listing), "-o", str(tmp_path / "a"))
    assert code == 0, stderr
    assert len(rows_of(tmp_path / "a")) == 2
    script = [*VITCAM, "explain", "--model", f"local-dir:{tiny_model}", "--workers", "0", "-q",
              "--files-from", "-", "-o", str(tmp_path / "b")]  # fmt: skip
    result = subprocess.run(script, input=listing.read_bytes(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert len(rows_of(tmp_path / "b")) == 2


# -- resume knows the file and the model


def test_resume_knows_images_however_the_inputs_are_spelled(tiny_model, tmp_path, monkeypatch):
    noise_folder(tmp_path / "c30", 3, seed=40)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = explain(tiny_model, "c30", "-o", "out")
    assert code == 0, stderr
    code, _, stderr = explain(tiny_model, str(tmp_path / "c30"), "-o", "out", "--skip-existing")
    assert code == 0, stderr
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 3
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"]["skipped"] == 3
    monkeypatch.chdir(tmp_path / "c30")  # relative rows, resumed from elsewhere
    code, _, stderr = explain(tiny_model, ".", "-o", str(tmp_path / "out"), "--skip-existing")
    assert code == 0, stderr
    assert len(rows_of(tmp_path / "out")) == 3


def test_a_resume_whose_inputs_share_a_name_with_earlier_ones_keeps_both(tiny_model, tmp_path):
    """``P/a/x.png`` then ``P/x.png``: each invocation names its image ``x.png``; the newcomer is tagged."""
    picture(tmp_path / "P" / "a" / "x.png", seed=50)
    picture(tmp_path / "P" / "x.png", seed=51)
    out = tmp_path / "out"
    for image in ("P/a/x.png", "P/x.png"):
        code, _, stderr = explain(tiny_model, str(tmp_path / image), "-o", str(out), "--save-maps",
                                  "--skip-existing")  # fmt: skip
        assert code == 0, stderr
    first = (out / "overlays" / "x.png.png").read_bytes()
    rows = rows_of(out)
    assert len(rows) == 2 and len({row["overlay"] for row in rows}) == len({row["map"] for row in rows}) == 2
    assert rows[1]["overlay"].startswith("overlays/x.png%~") and (out / rows[1]["overlay"]).is_file()
    assert (out / rows[0]["overlay"]).read_bytes() == first  # the earlier overlay untouched
    code, _, stderr = explain(
        tiny_model, str(tmp_path / "P"), "-o", str(out), "--save-maps", "--skip-existing"
    )
    assert code == 0, stderr
    assert len(rows_of(out)) == 2  # both known by their files


def test_a_hard_link_is_the_same_image_to_resume(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "images", 2, seed=52)
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("0.png", "1.png"):
        os.link(folder / name, linked / name)
    out = tmp_path / "out"
    assert explain(tiny_model, str(folder), "-o", str(out))[0] == 0
    code, _, stderr = explain(tiny_model, str(linked), "-o", str(out), "--skip-existing")
    assert code == 0, stderr
    assert len(rows_of(out)) == 2


def test_no_input_can_be_named_like_a_shortened_name():
    """A legal name equal to another's shortened form (prefix, mark, hash) still gets its own outputs."""
    from pathlib import PurePosixPath

    from vitcam_cli.outputs.names import output_link

    long_name = "c" * 251 + ".png"
    shortened = output_link("o", PurePosixPath(long_name), "png").split("/")[-1]
    lookalike = shortened.removesuffix(".png")  # its overlay would be exactly the shortened name
    assert len(lookalike.encode()) <= NAME_MAX
    own = output_link("o", PurePosixPath(lookalike), "png")
    assert own != output_link("o", PurePosixPath(long_name), "png")
    tagged = output_link("o", PurePosixPath("x.png"), "png", tag="0" * 16)
    assert tagged != output_link("o", PurePosixPath("x.png%~" + "0" * 16), "png")


def test_one_file_named_twice_is_one_image(tiny_model, tmp_path):
    folder = noise_folder(tmp_path / "images", 2, seed=41)
    (tmp_path / "alias").symlink_to(folder)
    out = tmp_path / "out"
    spellings = (str(folder), str(tmp_path / "alias"), str(folder / "0.png"))
    code, _, stderr = explain(tiny_model, *spellings, "-o", str(out))
    assert code == 0, stderr
    assert len(rows_of(out)) == 2


def test_resume_refuses_other_weights_and_records_their_hash(tmp_path, images_of_three):
    model = export_tiny_model(tmp_path / "model", seed=0)
    out = tmp_path / "out"
    code, _, stderr = explain(model, str(images_of_three), "-o", str(out))
    assert code == 0, stderr
    first = json.loads((out / "summary.json").read_text())["settings"]["model"]["weights_sha256"]
    assert len(first) == 64
    export_tiny_model(model, seed=1)  # new weights, same architecture and path
    code, _, stderr = explain(model, str(images_of_three), "-o", str(out), "--skip-existing")
    assert code == 2
    assert "weights" in one_line(stderr) and first[:12] in stderr
    assert len(rows_of(out)) == 3


@pytest.fixture
def images_of_three(tmp_path: Path) -> Path:
    return noise_folder(tmp_path / "three", 3, seed=42)


def test_resume_refuses_a_changed_labels_file(tiny_model, tmp_path, images_of_three):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n0.png,cat\n1.png,dog\n2.png,bird\n")
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(images_of_three), "--labels", str(labels), "-o", str(out))
    assert code == 0, stderr
    labels.write_text("file,label\n0.png,fish\n1.png,dog\n2.png,bird\n")
    code, _, stderr = explain(tiny_model, str(images_of_three), "--labels", str(labels), "-o", str(out),
                              "--skip-existing")  # fmt: skip
    assert code == 2 and "labels" in one_line(stderr)


# -- every write failure is the documented line, and the summary tells the truth


@pytest.mark.parametrize("failing", ["report.html", "results.csv", "summary.json"])
def test_a_full_disk_at_the_end_is_one_line_and_the_run_resumable(tiny_model, tmp_path, monkeypatch, failing,
                                                                  images_of_three):  # fmt: skip
    import vitcam_cli.outputs.atomic as atomic

    real = atomic._replacing
    state = {"failed": False}

    def filling_up(path):
        last = failing != "summary.json" or (out / "report.html").exists()  # not the first summary
        if path.name == failing and not state["failed"] and last:
            state["failed"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(atomic, "_replacing", filling_up)
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(out))
    assert code == 2
    assert "No space left on device" in one_line(stderr) and "--skip-existing" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] != "complete"
    monkeypatch.setattr(atomic, "_replacing", real)
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(out))
    assert code == 2 and "partial" in stderr  # not "finished"
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(out), "--skip-existing")
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()


def disk_full_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Every atomic write of a file called ``name`` fails as on a full disk."""
    import vitcam_cli.outputs.atomic as atomic

    real = atomic._replacing

    def filling_up(path):
        if path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(atomic, "_replacing", filling_up)


def test_a_full_disk_while_evaluate_writes_its_report_is_one_line(tiny_model, tmp_path, monkeypatch,
                                                                  images_of_three):  # fmt: skip
    disk_full_at(monkeypatch, "report.html")
    out = tmp_path / "eval"
    code, _, stderr = run("evaluate", str(images_of_three), "--model", f"local-dir:{tiny_model}",
                          "--workers", "0", "-q", "--no-insertion-deletion", "-o", str(out))  # fmt: skip
    assert code == 2
    assert "No space left on device" in one_line(stderr)
    assert not (out / "metrics.json").exists()  # never a finished-looking evaluation


# -- the smaller ones


def test_files_from_with_stdin_closed_is_one_line(tiny_model, tmp_path):
    command = [*VITCAM, "explain", "--model", f"local-dir:{tiny_model}", "--files-from", "-", "-q",
               "-o", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *command], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert "standard input" in one_line(result.stderr)


def test_world_size_without_torchrun_is_one_line(tiny_model, tmp_path, images_of_three, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(tmp_path / "out"))
    assert code == 2 and "RANK" in one_line(stderr) and "torchrun" in stderr


def _limited_memory() -> None:
    limit = 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("option", ["--files-from", "--class-names", "--config", "--labels"])
def test_endless_side_files_are_one_line_not_read_whole(tiny_model, tmp_path, images_of_three, option):
    command = [*VITCAM, "explain", str(images_of_three), "--model", f"local-dir:{tiny_model}", "-q",
               "--workers", "0", "-o", str(tmp_path / "out"), option, "/dev/zero"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_limited_memory)
    assert result.returncode == 2, result.stderr
    assert "/dev/zero" in one_line(result.stderr)


# -- the same faults found elsewhere


def test_a_config_file_in_out_is_an_input_and_never_written_over(tiny_model, tmp_path, images_of_three):
    out = tmp_path / "out"
    out.mkdir()
    config = out / "report.html"
    config.write_text("alpha = 0.4\n")
    code, _, stderr = explain(tiny_model, str(images_of_three), "--config", str(config), "-o", str(out))
    assert code == 2 and "has the name of a file this run writes" in one_line(stderr)
    assert config.read_text() == "alpha = 0.4\n"


def test_a_linked_overlays_folder_itself_is_refused(tiny_model, tmp_path, images_of_three):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").symlink_to(elsewhere)
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(out))
    assert code == 2 and "is a link" in one_line(stderr)
    assert list(elsewhere.iterdir()) == []


def test_a_full_disk_at_the_first_write_is_one_line(tiny_model, tmp_path, monkeypatch, images_of_three):
    import vitcam_cli.outputs.atomic as atomic

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_replacing", full)
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(tmp_path / "out"))
    assert code == 2 and "No space left on device" in one_line(stderr) and "OSError" not in stderr


def test_resume_without_a_summary_or_into_unmerged_shards_knows_the_weights(tmp_path, images_of_three):
    model = export_tiny_model(tmp_path / "model", seed=0)
    shards = tmp_path / "shards"
    for index in (0, 1):
        code, _, stderr = explain(model, str(images_of_three), "-o", str(shards), "--shard", f"{index}/2")
        assert code == 0, stderr
    lone = tmp_path / "lone"
    assert explain(model, str(images_of_three), "-o", str(lone))[0] == 0
    (lone / "summary.json").unlink()
    export_tiny_model(model, seed=1)
    code, _, stderr = explain(model, str(images_of_three), "-o", str(shards), "--skip-existing")
    assert code == 2 and "other weights" in one_line(stderr)
    code, _, stderr = explain(model, str(images_of_three), "-o", str(lone), "--skip-existing")
    assert code == 2 and "no summary.json" in one_line(stderr)


def test_a_refused_resume_names_the_setting_that_changed(tiny_model, tmp_path, images_of_three):
    out = tmp_path / "out"
    assert explain(tiny_model, str(images_of_three), "-o", str(out))[0] == 0
    code, _, stderr = explain(tiny_model, str(images_of_three), "-o", str(out), "--skip-existing",
                              "--alpha", "0.3")  # fmt: skip
    assert code == 2 and "alpha 0.5, now 0.3" in one_line(stderr)


def test_a_nul_separated_list_is_one_line(tiny_model, tmp_path, images_of_three):
    listing = tmp_path / "list"
    listing.write_bytes(b"\0".join(os.fsencode(str(p)) for p in sorted(images_of_three.iterdir())) + b"\0")
    code, _, stderr = explain(tiny_model, "--files-from", str(listing), "-o", str(tmp_path / "out"))
    assert code == 2 and "NUL byte" in one_line(stderr)


@pytest.mark.parametrize("name", ["summary.json", ".vitcam-files", "results.jsonl"])
def test_run_files_replaced_by_endless_ones_are_one_line(tiny_model, tmp_path, images_of_three, name):
    out = tmp_path / "out"
    assert explain(tiny_model, str(images_of_three), "-o", str(out))[0] == 0
    (out / name).unlink()
    (out / name).symlink_to("/dev/zero")
    for extra in ("--skip-existing", "--overwrite"):
        command = [*VITCAM, "explain", str(images_of_three), "--model", f"local-dir:{tiny_model}", "-q",
                   "--workers", "0", "-o", str(out), extra]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, preexec_fn=_limited_memory
        )
        assert result.returncode in (0, 2) and "MemoryError" not in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 1, result.stderr
