"""``--protocol authors``: each step of the ViT-ReciproCAM authors' ADCC and DAUC/IAUC, pinned against
small independent re-implementations written here from the protocol's description."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from tests.test_cli import run
from tests.test_evaluate import evaluate, write_labelled
from vitcam_cli.metrics import authors
from vitcam_cli.metrics.adcc import PARTS


def keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def upsample_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights of a cubic upsampling with pixel centres aligned and the weights that
    fall outside the source dropped and the rest renormalised."""
    scale = source / target
    weights = np.zeros((target, source))
    for out in range(target):
        centre = (out + 0.5) * scale
        for pixel in range(source):
            weights[out, pixel] = keys_cubic(pixel + 0.5 - centre)
        weights[out] /= weights[out].sum()
    return weights


def test_the_mask_is_a_bicubic_upsampling_of_the_grid_map_without_clipping():
    grid = torch.zeros(2, 4, 6)
    grid[0, 1, 2] = 1.0  # a single peak: bicubic overshoots around it
    grid[1] = torch.linspace(0, 1, 24).view(4, 6)
    masks = authors.bicubic_masks(grid, (32, 48)).numpy()
    for item in range(2):
        expected = upsample_weights(4, 32) @ grid[item].double().numpy() @ upsample_weights(6, 48).T
        np.testing.assert_allclose(masks[item], expected, atol=2e-5)
    assert masks[0].min() < 0 and masks[0].max() <= 1.0 + 1e-6  # negative lobes kept, not clipped


def test_complexity_and_coherency_live_on_the_token_grid():
    rng = np.random.default_rng(0)
    raw, again = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 4, 6))
    grid = authors.grid_scaled(torch.from_numpy(raw))
    probability, masked_probability = torch.tensor([0.8, 0.5, 0.2]), torch.tensor([0.4, 0.6, 0.2])
    parts = authors.adcc_parts(probability, masked_probability, grid, torch.from_numpy(again))
    for i in range(3):
        scaled = (raw[i] - raw[i].min()) / (raw[i].max() - raw[i].min())
        complexity = scaled.mean()
        coherency = (1 + np.corrcoef(scaled.ravel(), again[i].ravel())[0, 1]) / 2
        drop = max(0.0, float(probability[i] - masked_probability[i])) / float(probability[i])
        value = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop))
        assert float(parts["complexity"][i]) == pytest.approx(complexity, abs=1e-6)
        assert float(parts["coherency"][i]) == pytest.approx(coherency, abs=1e-6)
        assert float(parts["average_drop"][i]) == pytest.approx(drop, abs=1e-6)
        assert float(parts["adcc"][i]) == pytest.approx(value, abs=1e-5)
    assert parts["increase"].tolist() == [0.0, 1.0, 0.0]


def naive_curves(image: torch.Tensor, grid: np.ndarray, score, original: float) -> tuple[list, list]:
    """The authors' DAUC/IAUC steps in plain loops: 32-pixel cells, one pixel of overlap, the map's flat
    index read as a cell index, deleted cells zero, inserted cells on the image's mean colour."""
    _, height, width = image.shape
    rows, cols = height // 32, width // 32
    order = sorted(range(grid.size), key=lambda k: (-grid.ravel()[k], k))[: rows * cols]
    deleted = image.clone()
    inserted = image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    deletion, insertion = [original], []
    for index in order:
        row, col = index // cols, index % cols
        for y in range(row * 32, min((row + 1) * 32, height - 1) + 1):
            for x in range(col * 32, min((col + 1) * 32, width - 1) + 1):
                if y < height and x < width:
                    deleted[:, y, x] = 0.0
                    inserted[:, y, x] = image[:, y, x]
        deletion.append(score(deleted))
        insertion.append(score(inserted))
    return [*insertion, original], deletion


@pytest.mark.parametrize("grid_shape", [(3, 4), (6, 8)])  # the cell grid itself, and a finer token grid
def test_insertion_and_deletion_follow_the_cells_in_map_order(grid_shape):
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(3, 96, 128, generator=generator)
    grid = torch.rand(1, *grid_shape, generator=generator)
    weights = torch.randn(3, 96, 128, generator=generator)

    def score(batch: torch.Tensor) -> float:
        return float(torch.sigmoid((batch * weights).mean()))

    def probability_of(batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((batch * weights).flatten(1).mean(1))

    original = score(image)
    insertion, deletion = authors.curves(
        probability_of, image[None], grid, torch.tensor([0]), torch.tensor([original]), forward_batch=5
    )
    expected_insertion, expected_deletion = naive_curves(image, grid[0].numpy(), score, original)
    np.testing.assert_allclose(insertion[0].numpy(), expected_insertion, atol=1e-6)
    np.testing.assert_allclose(deletion[0].numpy(), expected_deletion, atol=1e-6)
    assert insertion.shape[1] == 3 * 4 + 1
    for curve in (expected_insertion, expected_deletion):
        area = sum((a + b) / 2 for a, b in itertools.pairwise(curve)) / len(curve)
        assert float(authors.area(torch.tensor([curve]))[0]) == pytest.approx(area, abs=1e-6)


def test_the_mean_colour_and_zero_baselines():
    image = torch.arange(3 * 64 * 64, dtype=torch.float32).view(3, 64, 64) / 1000
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # the top-left cell first
    seen = []

    def probability_of(batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return torch.zeros(batch.shape[0])

    authors.curves(
        probability_of, image[None], grid, torch.tensor([0]), torch.tensor([0.5]), forward_batch=64
    )
    steps = torch.cat(seen)
    first_deleted, first_inserted = steps[0], steps[4]
    assert (first_deleted[:, :33, :33] == 0).all() and torch.equal(
        first_deleted[:, 40:, 40:], image[:, 40:, 40:]
    )
    mean = image.mean(dim=(1, 2))
    assert torch.equal(first_inserted[:, :33, :33], image[:, :33, :33])
    assert torch.allclose(first_inserted[:, 40:, 40:], mean.view(3, 1, 1).expand(3, 24, 24))


def test_evaluate_with_the_authors_protocol(tiny_model, tmp_path):
    data = write_labelled(tmp_path / "data")
    for protocol in ("authors", "poppi"):
        out = tmp_path / protocol
        code, _, stderr = evaluate(tiny_model, data, out, "--labels", str(data / "labels.csv"),
                                   "--protocol", protocol, "--methods", "reciprocam,rollout")  # fmt: skip
        assert code == 0, stderr
    authors_run = json.loads((tmp_path / "authors" / "metrics.json").read_text())
    poppi_run = json.loads((tmp_path / "poppi" / "metrics.json").read_text())
    assert authors_run["settings"]["protocol"] == "authors" and poppi_run["settings"]["protocol"] == "poppi"
    for name in ("reciprocam:fused", "rollout"):
        ours, theirs = authors_run["methods"][name], poppi_run["methods"][name]
        for metric in ("adcc", "average_drop", "coherency", "complexity", "insertion", "deletion"):
            assert 0 <= ours[metric] <= 1 and math.isfinite(ours[metric])
        assert ours["complexity"] != pytest.approx(theirs["complexity"], abs=1e-9)
    assert "the ViT-ReciproCAM authors&#39; code" in (tmp_path / "authors" / "report.html").read_text()
    code, _, stderr = evaluate(tiny_model, data, tmp_path / "bad", "--protocol", "paper")
    assert code == 2 and "--protocol" in stderr


def test_the_api_takes_the_protocol(tiny_model):
    from vitcam_cli import Explainer

    explainer = Explainer(f"local-dir:{tiny_model}", device="cpu")
    result = explainer(torch.randn(2, 3, 32, 48))
    scores = explainer.scores(result, protocol="authors", insertion_deletion=True)
    assert set(scores) == {*PARTS, "insertion", "deletion"}
    grid = authors.grid_scaled(result.maps[:, 0])
    assert torch.allclose(scores["complexity"][:, 0], grid.flatten(1).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="protocol='paper': use one of poppi, authors"):
        explainer.scores(result, protocol="paper")


def test_help_names_the_protocols():
    code, stdout, _ = run("evaluate", "--help")
    assert code == 0 and "poppi|authors" in stdout
