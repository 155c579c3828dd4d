"""Discovery, decoding of every supported format and mode, and the labels file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BROKEN_IMAGES, GOOD_IMAGES, make_image_folder, noise
from vitcam_cli.data import (
    DecodePlan,
    ImageFiles,
    decode_image,
    describe_decode_error,
    discover,
    read_labels,
    read_path_list,
)
from vitcam_cli.errors import VitcamError
from vitcam_cli.preprocessing import Preprocessing


def test_discover_is_sorted_recursive_and_filters_extensions(image_folder):
    items = discover([str(image_folder)])
    names = [str(item.rel) for item in items]
    assert [item.rel.parts for item in items] == sorted(item.rel.parts for item in items)
    assert "notes.txt" not in names
    assert len(items) == len(GOOD_IMAGES) + len(BROKEN_IMAGES)
    assert "nested/deeper/gray.png" in names


def test_two_folders_with_the_same_names_do_not_collide(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        Image.fromarray(noise(8, 8)).save(tmp_path / folder / "x.png")
    names = [str(item.rel) for item in discover([str(tmp_path / "one"), str(tmp_path / "two")])]
    assert names == ["one/x.png", "two/x.png"]


def test_explicit_files_and_duplicates(tmp_path):
    Image.fromarray(noise(8, 8)).save(tmp_path / "a.png")
    items = discover([str(tmp_path / "a.png"), str(tmp_path)], [tmp_path / "a.png"])
    assert len(items) == 1 and str(items[0].rel) == "a.png"


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(VitcamError, match="no such file or folder"):
        discover([str(tmp_path / "nope")])


def test_read_path_list_skips_blank_lines_and_keeps_spaces_that_name_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b.jpg", " spaced.png "):
        Path(name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n\n  b.jpg  \n spaced.png \r\n")
    assert read_path_list(str(listing)) == [Path("a.png"), Path("b.jpg"), Path(" spaced.png ")]
    with pytest.raises(VitcamError, match="cannot read"):
        read_path_list(str(tmp_path / "missing.txt"))


def test_every_good_image_decodes_to_rgb_with_its_displayed_size(image_folder):
    for name, (height, width) in GOOD_IMAGES.items():
        image = decode_image(image_folder / name)
        assert image.mode == "RGB", name
        if name == "rotated.jpg":
            height, width = width, height  # EXIF orientation 6 turns it upright
        assert image.size == (width, height), name


def test_sixteen_bit_is_scaled_not_clipped(image_folder):
    decoded = np.asarray(decode_image(image_folder / "sixteen.png"))[..., 0]
    expected = noise(36, 52, 1, seed=7)
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (np.asarray(decode_image(tmp_path / "clear.png")) == 255).all()


@pytest.mark.parametrize(("name", "message"), sorted(BROKEN_IMAGES.items()))
def test_broken_files_become_error_samples(tmp_path, name, message):
    folder = make_image_folder(tmp_path / "images")
    item = next(item for item in discover([str(folder)]) if item.path.name == name)
    sample = ImageFiles([item], DecodePlan(Preprocessing(lambda image: image)))[0]
    assert sample.image is None and message in sample.error


def test_describe_decode_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        decode_image(tmp_path / "gone.png")
    assert describe_decode_error(caught.value) == "file not found"


def test_read_labels_matches_relative_paths_names_and_indices(small_folder, tmp_path):
    items = discover([str(small_folder)])
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,dog\nsub/c.png,2\n")
    names = ["cat", "dog", "bird"]

    def resolve(value: str) -> int:
        return int(value) if value.isdigit() else names.index(value)

    result = read_labels(labels, items, resolve)
    by_name = {item.path.name: result[item.path] for item in items}
    assert by_name["a.png"] == 1
    assert by_name["c.png"] == 2
    assert "no label" in by_name["b.jpg"]


def test_read_labels_needs_a_header(small_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("a.png,1\n")
    with pytest.raises(VitcamError, match="header"):
        read_labels(labels, discover([str(small_folder)]), int)
