"""Similarity targets, multi-label heads and models without a head: the maps equal a textbook loop (a
DINOv2 with registers, a SigLIP-style attention-pool tower, a sigmoid multi-label ViT), and every target
kind runs through the command line, evaluate, bench and the API."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from tests.conftest import export_tiny_model, noise_folder
from tests.models import scramble
from tests.test_cli import explain, rows_of, run
from tests.test_engine import GAUSSIAN
from vitcam_cli import Explainer
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.methods.reciprocam import PRESETS, ReciproCAM, ReciproCAMSettings
from vitcam_cli.metrics.measure import MetricSettings, measure
from vitcam_cli.targets import Reading

TOWERS = {
    # a DINOv2 with four registers (five prefix tokens), CLS pooling, LayerScale
    "dinov2-registers": ("vit_small_patch14_reg4_dinov2", {"init_values": 0.5}),
    # SigLIP: no prefix token, an attention-pool ("map") head: a latent query over the patch tokens
    "siglip": ("vit_base_patch16_siglip_224", {}),
}
TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": (32, 48), "patch_size": 8}


def tower(name: str, seed: int = 0) -> torch.nn.Module:
    architecture, kwargs = TOWERS[name]
    return scramble(timm.create_model(architecture, pretrained=False, num_classes=0, **TINY, **kwargs), seed)


def window(rows: int, cols: int, r: int, c: int) -> torch.Tensor:
    """The 3x3 Gaussian around (r, c): 1/4, 1/8, 1/16, truncated at the border, never renormalised."""
    weight = torch.zeros(rows, cols)
    for dr, dc in itertools.product((-1, 0, 1), repeat=2):
        if 0 <= r + dr < rows and 0 <= c + dc < cols:
            weight[r + dr, c + dc] = GAUSSIAN[dr + 1][dc + 1]
    return weight.reshape(1, -1, 1)


def textbook_map(model, image, read, settings: ReciproCAMSettings) -> torch.Tensor:
    """ViT-ReciproCAM by hand on a timm model: for every cell, the target block's first LayerNorm output
    masked (prefix tokens kept), the skip path as the preset says, the rest of the network, ``read`` of
    its output (the model's own head and pooling)."""
    t = settings.target_block % len(model.blocks)
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image))))
    for block in model.blocks[:t]:
        x = block(x)
    block, prefix = model.blocks[t], model.num_prefix_tokens
    features = block.norm1(x)
    rows, cols = model.patch_embed.grid_size
    saliency = torch.zeros(rows, cols)
    for r, c in itertools.product(range(rows), range(cols)):
        weight = window(rows, cols, r, c)
        masked = torch.cat([features[:, :prefix], features[:, prefix:] * weight], 1)
        skip = {"ln": masked, "masked-input": torch.cat([x[:, :prefix], x[:, prefix:] * weight], 1)}
        y = skip.get(settings.skip, x) + block.ls1(block.attn(masked))
        y = y + block.ls2(block.mlp(block.norm2(y)))
        for later in model.blocks[t + 1 :]:
            y = later(y)
        saliency[r, c] = read(model.forward_head(model.norm(y))[0])
    return saliency


def images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, *TINY["img_size"], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("engine", ["auto", "dense"])
@pytest.mark.parametrize("preset", ["official", "otx", "openvino-xai"])
@pytest.mark.parametrize("name", sorted(TOWERS))
@torch.inference_mode()
def test_similarity_maps_equal_the_textbook_loop(name, preset, engine):
    model = tower(name)
    references = model(images(2, seed=5))
    table = F.normalize(references, dim=-1)
    settings = PRESETS[preset]
    method = ReciproCAM(model, token_layout(model), settings, (3, *TINY["img_size"]), engine=engine,
                        reading=Reading("cosine", table))  # fmt: skip
    batch = images(2, seed=6)
    result = method(batch, lambda values: torch.tensor([[1, 0], [0, 1]]))
    for b, t in itertools.product(range(2), range(2)):
        target = table[int(result.classes[b, t])]
        expected = textbook_map(
            model, batch[b : b + 1], lambda out, target=target: F.cosine_similarity(out, target, 0), settings
        )
        torch.testing.assert_close(result.maps[b, t], expected, rtol=1e-4, atol=1e-5)
    assert result.maps.std() > 1e-4  # the maps carry signal
    if engine == "auto" and preset != "official":
        assert method.engine.name == "fast"  # the attention pool too: exact on the short sequences


@pytest.mark.parametrize("engine", ["auto", "dense"])
@torch.inference_mode()
def test_sigmoid_maps_equal_the_textbook_loop_on_a_multi_label_head(engine):
    model = scramble(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=6, **TINY))
    settings = PRESETS["otx"].with_overrides(score="sigmoid")
    method = ReciproCAM(model, token_layout(model), settings, (3, *TINY["img_size"]), engine=engine,
                        reading=Reading("sigmoid"))  # fmt: skip
    batch = images(2, seed=7)
    result = method(batch, lambda values: values.topk(2, -1).indices)
    logits = model(batch)
    chosen = torch.sigmoid(logits).topk(2, -1).indices
    assert torch.equal(result.classes, chosen)  # ranked by each class's own probability
    for b, t in itertools.product(range(2), range(2)):
        target = int(result.classes[b, t])
        expected = textbook_map(
            model, batch[b : b + 1], lambda out, t=target: torch.sigmoid(out[t]), settings
        )
        torch.testing.assert_close(result.maps[b, t], expected, rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_adcc_reads_a_similarity_as_one_plus_cosine_over_two_and_a_multi_label_head_by_sigmoid():
    model = tower("siglip")
    layout = token_layout(model)
    batch = images(2, seed=8)
    table = F.normalize(model(images(1, seed=9)), dim=-1)
    for reading, probability in (
        (Reading("cosine", table), lambda out: (1 + F.cosine_similarity(out, table[0], -1)) / 2),
    ):
        method = ReciproCAM(model, layout, PRESETS["otx"], (3, *TINY["img_size"]), reading=reading)
        explanation = method(batch, lambda values: torch.zeros(2, 1, dtype=torch.long))
        values = measure(method, model, batch, explanation, MetricSettings(insertion_deletion=True, steps=2))
        from vitcam_cli.metrics.adcc import masked_inputs, scale_to_input

        saliency = scale_to_input(explanation.maps[:, 0], batch.shape[-2:])
        before, after = probability(model(batch)), probability(model(masked_inputs(batch, saliency)))
        drop = (before - after).clamp_min(0) / before
        torch.testing.assert_close(values["average_drop"], drop, rtol=1e-4, atol=1e-5)
        assert torch.isfinite(values["insertion"]).all() and torch.isfinite(values["deletion"]).all()


# -- the command line


@pytest.fixture(scope="module")
def headless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINOv2-style model without a head, exported as timm does: its outputs are an embedding."""
    folder = tmp_path_factory.mktemp("headless")
    model = tower("dinov2-registers")
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    return folder


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    return noise_folder(tmp_path / "pictures", 4, seed=900, size=(32, 48))


def test_a_model_without_a_head_and_no_target_is_one_line(headless, pictures, tmp_path):
    code, _, stderr = explain(headless, str(pictures), "-o", str(tmp_path / "out"))
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    for option in ("--reference", "--embeddings", "--num-classes", "--checkpoint"):
        assert option in stderr
    assert not (tmp_path / "out").exists()


def test_reference_images_are_targets(headless, pictures, tmp_path):
    out = tmp_path / "out"
    reference = pictures / "0.png"
    code, _, stderr = explain(headless, str(pictures), "--reference", str(reference), "--reference",
                              str(pictures / "1.png"), "-o", str(out), "--save-maps")  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 4 * 2
    for row in rows:
        assert row["class_index"] is None and row["class_name"] is None and row["probability"] is None
        assert row["reference"] in (str(reference), str(pictures / "1.png"))
        assert -1.0 <= row["similarity"] <= 1.0 and row["adcc"] is not None
    own = next(row for row in rows if row["path"] == str(reference) and row["reference"] == str(reference))
    assert own["similarity"] == pytest.approx(1.0, abs=1e-5)  # an image is its own best match
    assert len({row["overlay"] for row in rows}) == 8 and len({row["map"] for row in rows}) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["method"]["score"] == "cosine"
    assert "pooled features" in summary["settings"]["model"]["embedding"]
    assert summary["settings"]["model"]["targets"]["kind"] == "references"
    code, _, stderr = explain(headless, str(pictures), "--reference", str(pictures / "2.png"), "-o", str(out),
                              "--save-maps", "--skip-existing")  # fmt: skip
    assert code == 2 and "other target embeddings" in stderr  # resume knows its targets


def test_a_folder_of_references_and_the_most_similar_one(headless, pictures, tmp_path):
    references = noise_folder(tmp_path / "refs", 3, seed=950, size=(32, 48))
    code, _, stderr = explain(headless, str(pictures), "--reference", str(references), "--top-k", "1",
                              "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 4 and all(row["rank"] == 1 for row in rows)
    assert {Path(row["reference"]).parent for row in rows} == {references}


def test_pairs_are_explained_both_ways(headless, pictures, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"query,reference\n{pictures / '0.png'},{pictures / '1.png'}\n2.png,3.png\n")
    (tmp_path / "2.png").write_bytes((pictures / "2.png").read_bytes())  # relative to the CSV's folder
    (tmp_path / "3.png").write_bytes((pictures / "3.png").read_bytes())
    out = tmp_path / "out"
    code, _, stderr = explain(headless, "--pairs", str(pairs), "-o", str(out))
    assert code == 0, stderr
    found = {(Path(row["path"]).name, Path(row["reference"]).name) for row in rows_of(out)}
    assert found == {("0.png", "1.png"), ("1.png", "0.png"), ("2.png", "3.png"), ("3.png", "2.png")}
    code, _, stderr = explain(headless, str(pictures), "--pairs", str(pairs), "-o", str(tmp_path / "o2"))
    assert code == 2 and "--pairs" in stderr


def test_embeddings_computed_elsewhere_are_targets(headless, pictures, tmp_path):
    table = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    np.save(tmp_path / "protos.npy", table)
    (tmp_path / "names.txt").write_text("round\nsquare\nstriped\n")
    out = tmp_path / "out"
    code, _, stderr = explain(headless, str(pictures), "--embeddings", str(tmp_path / "protos.npy"),
                              "--class-names", str(tmp_path / "names.txt"), "-o", str(out))  # fmt: skip
    assert code == 0, stderr
    rows = rows_of(out)
    assert len(rows) == 4 * 3 and {row["reference"] for row in rows} == {"round", "square", "striped"}
    np.save(tmp_path / "wide.npy", np.ones((2, 33), np.float32))
    code, _, stderr = explain(headless, str(pictures), "--embeddings", str(tmp_path / "wide.npy"),
                              "-o", str(tmp_path / "o2"))  # fmt: skip
    assert code == 2 and "33 values but the model's embedding has 32" in stderr


def test_a_classifier_gets_similarity_targets_without_its_head(tiny_model, pictures, tmp_path):
    code, _, stderr = explain(tiny_model, str(pictures), "--reference", str(pictures / "0.png"),
                              "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 2 and "classifier head" in stderr and "--num-classes 0" in stderr
    code, _, stderr = explain(tiny_model, str(pictures), "--reference", str(pictures / "0.png"),
                              "--num-classes", "0", "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, stderr


def test_sigmoid_scores_and_a_threshold_on_a_multi_label_head(tmp_path, pictures):
    model = export_tiny_model(tmp_path / "multi", seed=3)
    out = tmp_path / "out"
    code, _, stderr = explain(
        model, str(pictures), "--score", "sigmoid", "--threshold", "0.6", "-o", str(out)
    )
    assert code == 0, stderr
    rows = rows_of(out)
    net = timm.create_model(f"local-dir:{model}", pretrained=True).eval()
    explainer = Explainer(f"local-dir:{model}")
    for path in sorted({row["path"] for row in rows}):
        inputs, _ = explainer._inputs([path])
        with torch.inference_mode():
            expected = torch.sigmoid(net(inputs))[0]
        mine = [row for row in rows if row["path"] == path]
        wanted = {i for i, p in enumerate(expected.tolist()) if p >= 0.6}
        if not wanted:
            assert len(mine) == 1 and mine[0]["status"] == "ok" and "0.6" in mine[0]["note"]
            continue
        assert {row["class_index"] for row in mine} == wanted
        for row in mine:
            assert row["probability"] == pytest.approx(float(expected[row["class_index"]]), abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["method"]["score"] == "sigmoid"
    assert summary["settings"]["targets"] == {"mode": "threshold", "threshold": 0.6}
    code, _, stderr = explain(model, str(pictures), "--threshold", "1.5", "-o", str(tmp_path / "o2"))
    assert code == 2 and "between 0 and 1" in stderr


def test_evaluate_scores_similarity_maps(headless, pictures, tmp_path):
    out = tmp_path / "eval"
    code, _, stderr = run("evaluate", str(pictures), "--model", f"local-dir:{headless}", "--workers", "0",
                          "-q", "--reference", str(pictures / "0.png"), "--methods", "reciprocam,gradcam",
                          "--steps", "2", "-o", str(out))  # fmt: skip
    assert code == 0, stderr
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and all(row["reference"] == str(pictures / "0.png") for row in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"]["gradcam"]["adcc"] is not None
    code, _, stderr = run("evaluate", str(pictures), "--model", f"local-dir:{headless}", "--workers", "0",
                          "-q", "--reference", str(pictures / "0.png"), "--target", "label",
                          "-o", str(tmp_path / "e2"))  # fmt: skip
    assert code == 2 and "most similar" in stderr


def test_bench_times_a_model_without_a_head_on_its_similarity(headless):
    code, stdout, stderr = run("bench", "--model", f"local-dir:{headless}", "--batch-size", "2", "--repeat",
                               "1", "--warmup", "0", "--json", "--device", "cpu")  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["target"] == "similarity to a reference image"
    assert all(run["score"] == "cosine" for run in result["runs"])


def test_the_api_takes_references_and_embeddings(headless, pictures):
    explainer = Explainer(f"local-dir:{headless}", references=[pictures / "0.png", pictures / "1.png"])
    result = explainer([pictures / "0.png"])
    assert result.maps.shape[:2] == (1, 2)
    assert result.class_names == [[str(pictures / "0.png"), str(pictures / "1.png")]]
    assert float(result.probabilities[0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert explainer.scores(result)["adcc"].shape == (1, 2)
    table = np.random.default_rng(1).normal(size=(2, 32)).astype(np.float32)
    by_rows = Explainer(f"local-dir:{headless}", embeddings=table, class_names=["a", "b"])
    assert by_rows([pictures / "1.png"], top_k=1).class_names[0][0] in ("a", "b")
    with pytest.raises(Exception, match="references"):
        Explainer(f"local-dir:{headless}")
