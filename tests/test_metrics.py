"""The metrics module against plain re-computations from the definitions, on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.models import input_size, tiny_vit
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM
from vitcam_cli.metrics.adcc import adcc_parts, scale_to_input
from vitcam_cli.metrics.aggregate import Totals
from vitcam_cli.metrics.insertion_deletion import area_under, curves
from vitcam_cli.metrics.localization import BoxMasks, discrimination, energy_in_box, pointing_game
from vitcam_cli.metrics.measure import MetricSettings, measure


def bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping (what align_corners=False means)."""
    rows, cols = grid.shape
    ys = np.clip((np.arange(height) + 0.5) * rows / height - 0.5, 0, rows - 1)
    xs = np.clip((np.arange(width) + 0.5) * cols / width - 0.5, 0, cols - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x1] * wx
    bottom = grid[y1][:, x0] * (1 - wx) + grid[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def plain_scale(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    low, high = grid.min(), grid.max()
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    return bilinear(scaled, height, width)


def plain_adcc(p: float, p_masked: float, s: np.ndarray, s_masked: np.ndarray) -> dict[str, float]:
    drop = max(0.0, p - p_masked) / p
    coherency = (np.corrcoef(s.ravel(), s_masked.ravel())[0, 1] + 1) / 2
    complexity = s.mean()
    return {
        "adcc": 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop)),
        "average_drop": drop,
        "increase": float(p_masked > p),
        "coherency": coherency,
        "complexity": complexity,
    }


def test_scale_to_input_matches_a_plain_bilinear_resize():
    rng = np.random.default_rng(0)
    grids = rng.normal(size=(3, 4, 6))
    ours = scale_to_input(torch.tensor(grids), (32, 48)).numpy()
    for grid, result in zip(grids, ours, strict=True):
        np.testing.assert_allclose(result, plain_scale(grid, 32, 48), atol=1e-5)
    assert scale_to_input(torch.ones(1, 3, 3), (6, 6)).abs().max() == 0  # constant map -> zeros


def test_adcc_parts_match_the_definitions_on_random_inputs():
    rng = np.random.default_rng(1)
    batch = 16
    p = rng.uniform(0.05, 1.0, batch)
    p_masked = rng.uniform(0.0, 1.0, batch)
    s = np.stack([plain_scale(rng.normal(size=(5, 5)), 20, 20) for _ in range(batch)])
    s_masked = np.stack([plain_scale(rng.normal(size=(5, 5)), 20, 20) for _ in range(batch)])
    ours = adcc_parts(*(torch.tensor(a, dtype=torch.float32) for a in (p, p_masked, s, s_masked)))
    for i in range(batch):
        expected = plain_adcc(p[i], p_masked[i], s[i], s_masked[i])
        for name, value in expected.items():
            assert float(ours[name][i]) == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_adcc_limits():
    s = torch.rand(1, 8, 8)
    total_drop = adcc_parts(torch.tensor([0.5]), torch.tensor([0.0]), s, s)
    assert float(total_drop["average_drop"]) == 1.0 and float(total_drop["adcc"]) == 0.0
    constant = adcc_parts(torch.tensor([0.5]), torch.tensor([0.6]), s, torch.zeros(1, 8, 8))
    assert float(constant["coherency"]) == 0.5 and float(constant["increase"]) == 1.0


def test_totals_report_both_aggregations():
    rng = np.random.default_rng(2)
    parts = {
        name: rng.uniform(0.1, 0.9, 10) for name in ("average_drop", "coherency", "complexity", "increase")
    }
    per_image = [
        3 / (1 / c + 1 / (1 - x) + 1 / (1 - d))
        for d, c, x in zip(parts["average_drop"], parts["coherency"], parts["complexity"], strict=True)
    ]
    totals = Totals()
    totals.add(
        {name: torch.tensor(values[:4]) for name, values in parts.items()}
        | {"adcc": torch.tensor(per_image[:4])}
    )
    totals.add(
        {name: torch.tensor(values[4:]) for name, values in parts.items()}
        | {"adcc": torch.tensor(per_image[4:])}
    )
    means = totals.means()
    d, c, x = (parts[name].mean() for name in ("average_drop", "coherency", "complexity"))
    assert means["adcc"] == pytest.approx(3 / (1 / c + 1 / (1 - x) + 1 / (1 - d)), rel=1e-6)
    assert means["adcc_mean"] == pytest.approx(np.mean(per_image), rel=1e-6)
    assert means["increase"] == pytest.approx(parts["increase"].mean(), rel=1e-6)


def test_insertion_and_deletion_match_a_plain_loop():
    rng = np.random.default_rng(3)
    images = torch.tensor(rng.normal(size=(2, 3, 8, 8)), dtype=torch.float32)
    saliency = torch.tensor(rng.uniform(size=(2, 8, 8)), dtype=torch.float32)
    weights = torch.tensor(rng.normal(size=(3, 8, 8)), dtype=torch.float32)

    def probability_of(batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((batch * weights).sum((1, 2, 3)) * 0.1 + classes.float())

    steps = 4
    insertion, deletion = curves(probability_of, images, saliency, torch.tensor([0, 1]), steps, "zero", 3)
    for b in range(2):
        order = np.argsort(-saliency[b].numpy().ravel(), kind="stable")
        for step in range(steps + 1):
            top = np.zeros(64, dtype=bool)
            top[order[: round(step / steps * 64)]] = True
            top = torch.tensor(top.reshape(8, 8))
            inserted = torch.where(top, images[b], torch.zeros(()))
            deleted = torch.where(top, torch.zeros(()), images[b])
            assert float(insertion[b, step]) == pytest.approx(
                float(probability_of(inserted[None], torch.tensor([b])))
            )
            assert float(deletion[b, step]) == pytest.approx(
                float(probability_of(deleted[None], torch.tensor([b])))
            )
    expected = [np.trapezoid(curve, dx=1 / steps) for curve in insertion.numpy()]
    np.testing.assert_allclose(area_under(insertion).numpy(), expected, rtol=1e-6)


def test_pointing_game_and_energy_in_box():
    saliency = torch.zeros(2, 10, 10)
    saliency[0, 2, 3] = 1.0  # peak inside the box
    saliency[1, 8, 8] = 1.0  # peak outside
    saliency[1, 2, 3] = 0.5
    box = ((2.0, 1.0, 5.0, 4.0), None)
    mask, every, labelled = BoxMasks.build([[box], [box]], (10, 10)).for_classes(torch.tensor([[0], [3]]))
    assert mask[0].sum() == 9 and bool(mask[0, 2, 3]) and not bool(mask[0, 4, 3])
    assert torch.equal(mask, every) and not labelled.any()  # unlabelled boxes count for every class
    assert pointing_game(saliency, mask).tolist() == [1.0, 0.0]
    assert energy_in_box(saliency, mask).tolist() == pytest.approx([1.0, 0.5 / 1.5])
    assert energy_in_box(torch.zeros(1, 10, 10), mask[:1]).tolist() == [0.0]


def test_labelled_boxes_make_the_metrics_class_specific():
    """Two objects, classes 4 (left box) and 7 (right box); explained: 4, 7, and 1 (not in the image)."""
    boxes = BoxMasks.build([[((0.0, 0.0, 5.0, 10.0), 4), ((5.0, 0.0, 10.0, 10.0), 7)]], (10, 10))
    target, every, labelled = boxes.for_classes(torch.tensor([[4, 7, 1]]))
    assert labelled.tolist() == [True, True, True] and every.all()
    assert target[0, :, :5].all() and not target[0, :, 5:].any() and target[1, :, 5:].all()
    saliency = torch.zeros(3, 10, 10)
    saliency[:, :, :5] = 3.0  # the same map for every class: the left object lit 3x the right one
    saliency[:, :, 5:] = 1.0
    assert pointing_game(saliency, target).tolist()[:2] == [1.0, 0.0]
    assert discrimination(saliency, target, every, labelled).tolist()[:2] == pytest.approx([0.75, 0.25])
    for value in (pointing_game(saliency, target)[2], discrimination(saliency, target, every, labelled)[2]):
        assert torch.isnan(value)  # class 1 has no box here: the metric does not apply
    unlabelled = BoxMasks.build([[((0.0, 0.0, 5.0, 10.0), None)]], (10, 10)).for_classes(torch.tensor([[4]]))
    assert torch.isnan(discrimination(saliency[:1], *unlabelled)).all()


@torch.inference_mode()
def test_measure_re_explains_the_masked_image_for_the_same_class():
    model = tiny_vit("cls")
    layout = token_layout(model)
    explainer = ReciproCAM(model, layout, PRESETS["otx"], input_size(model))
    images = torch.randn(2, *input_size(model), generator=torch.Generator().manual_seed(0))
    explanation = explainer(images, lambda logits: logits.topk(2, -1).indices)
    values = measure(explainer, model, images, explanation, MetricSettings(insertion_deletion=True, steps=3))
    assert set(values) == {
        "adcc",
        "average_drop",
        "increase",
        "coherency",
        "complexity",
        "insertion",
        "deletion",
    }
    assert all(v.shape == (4,) for v in values.values())
    # by hand for image 1, its second class
    size = tuple(images.shape[-2:])
    s = scale_to_input(explanation.maps[1, 1], size)
    masked = images[1:2] * s
    cls = int(explanation.classes[1, 1])
    again = explainer(masked, lambda logits: torch.tensor([[cls]]))
    p = float(torch.softmax(explanation.outputs[1], -1)[cls])
    p_masked = float(torch.softmax(again.outputs[0], -1)[cls])
    expected = plain_adcc(p, p_masked, s.numpy(), scale_to_input(again.maps[0, 0], size).numpy())
    for name, value in expected.items():
        assert float(values[name][3]) == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert all(math.isfinite(float(v)) for v in values["insertion"])
