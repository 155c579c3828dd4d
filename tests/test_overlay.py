"""Overlays: colormaps, alignment with the preprocessing crop, and the original size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from vitcam_cli.errors import VitcamError
from vitcam_cli.outputs.overlay import colormap_table, min_max, render_overlay
from vitcam_cli.preprocessing import model_view


def _column_ramp(width: int, height: int) -> Image.Image:
    """Red encodes the x coordinate, green the y coordinate (scaled to 0..255)."""
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize(("width", "height"), [(300, 200), (120, 360), (64, 64)])
@pytest.mark.parametrize("input_size", [(3, 32, 32), (3, 32, 48)])
def test_model_view_matches_what_the_transform_shows(crop_mode, width, height, input_size):
    transform = create_transform(
        input_size=input_size, crop_pct=0.875, crop_mode=crop_mode, interpolation="bilinear"
    )
    shown = transform(_column_ramp(width, height))
    box = model_view(transform, width, height)
    assert box is not None
    x0, y0, x1, y1 = box
    # un-normalise the centre row/column and compare with the ramp value at the predicted box edges
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pixels = (shown * std + mean) * 255
    out_h, out_w = pixels.shape[1:]
    seen_x = pixels[0, out_h // 2, [0, out_w - 1]]
    seen_y = pixels[1, [0, out_h - 1], out_w // 2]
    inside_x = torch.tensor([max(x0, 0), min(x1, width)])
    inside_y = torch.tensor([max(y0, 0), min(y1, height)])
    expected_x = inside_x.clamp(0, width - 1) / (width - 1) * 255
    expected_y = inside_y.clamp(0, height - 1) / (height - 1) * 255
    if crop_mode != "border":  # padding shows black, not the ramp
        # an edge pixel samples half an output pixel inside the box: allow one output pixel plus rounding
        slack_x = ((x1 - x0) / out_w + 1.5) * 255 / (width - 1)
        slack_y = ((y1 - y0) / out_h + 1.5) * 255 / (height - 1)
        assert torch.allclose(seen_x, expected_x, atol=slack_x), (seen_x, expected_x)
        assert torch.allclose(seen_y, expected_y, atol=slack_y), (seen_y, expected_y)


def test_model_view_unknown_geometry_is_none():
    assert model_view(lambda image: image, 10, 10) is None


def test_colormap_table_and_unknown_name():
    table = colormap_table("viridis")
    assert table.shape == (256, 3) and table.dtype == np.uint8
    with pytest.raises(VitcamError, match="matplotlib colormap"):
        colormap_table("no-such-map")


def test_min_max_constant_map_is_zero():
    assert min_max(torch.full((3, 3), 2.0)).abs().max() == 0
    scaled = min_max(torch.tensor([[1.0, 3.0]]))
    assert scaled.tolist() == [[0.0, 1.0]]


def test_render_overlay_keeps_size_and_dims_outside_the_view():
    original = np.full((100, 200, 3), 200, dtype=np.uint8)
    saliency = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    overlay = render_overlay(original, saliency, (50.0, 0.0, 150.0, 100.0), "gray", alpha=1.0)
    assert overlay.shape == original.shape
    assert (overlay[:, :50] == 100).all() and (overlay[:, 150:] == 100).all()  # dimmed, not coloured
    # alpha 1 shows the colormap alone: dark at the weakest corner, bright at the strongest
    assert overlay[2, 52, 0] < 30 and overlay[97, 147, 0] > 225
