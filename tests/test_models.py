"""Model loading: names, folders, checkpoints, class names, refusals."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import CLASS_NAMES, TINY_ARGS
from tests.models import tiny_vit
from vitcam_cli.engine.geometry import token_layout
from vitcam_cli.errors import UnsupportedModelError, VitcamError
from vitcam_cli.models import load_model, resolve_class
from vitcam_cli.models.timm import class_names_for, resolve_model_name


def test_resolve_model_name(tiny_model, tmp_path):
    assert resolve_model_name("vit_base_patch16_224") == "vit_base_patch16_224"
    assert resolve_model_name("hf-hub:timm/vit_base_patch16_224.augreg_in21k").startswith("hf-hub:")
    assert resolve_model_name(str(tiny_model)) == f"local-dir:{tiny_model}"
    with pytest.raises(VitcamError, match="did you mean"):
        resolve_model_name("vit_base_patch16_244")
    with pytest.raises(VitcamError, match=r"no config\.json"):
        resolve_model_name(str(tmp_path))
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(VitcamError, match="is a file: pass the architecture as model and the file as"):
        resolve_model_name(str(tmp_path / "weights.pth"))


def test_local_dir_model_has_label_names_and_preprocessing(tiny_model):
    loaded = load_model(f"local-dir:{tiny_model}")
    assert loaded.class_names == CLASS_NAMES
    assert loaded.input_size == (3, 32, 48)
    assert loaded.layout.grid == (4, 6) and loaded.layout.num_prefix == 1


def test_class_names_fall_back_to_imagenet_then_indices():
    imagenet = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=1)
    assert class_names_for(imagenet)[281].startswith("tabby")
    assert class_names_for(tiny_vit("cls")) == [str(i) for i in range(7)]


def test_resolve_class():
    names = ["tabby, tabby cat", "tiger cat", "dog"]
    assert resolve_class("2", names) == 2
    assert resolve_class("Tiger Cat", names) == 1
    assert resolve_class("tabby cat", names) == 0  # a comma-separated synonym
    with pytest.raises(VitcamError, match="out of range"):
        resolve_class("3", names)
    with pytest.raises(VitcamError, match="did you mean"):
        resolve_class("tiger kat", names)


@pytest.mark.parametrize("name", ["resnet18", "swinv2_tiny_window8_256", "convnext_atto"])
def test_non_vit_models_are_refused(name):
    with pytest.raises(UnsupportedModelError, match="not supported"):
        load_model(name, pretrained=False)


def test_token_layout_of_each_family():
    assert token_layout(tiny_vit("distilled")).num_prefix == 2
    assert token_layout(tiny_vit("registers")).num_prefix == 4
    assert token_layout(tiny_vit("avg")).num_prefix == 0
    assert token_layout(tiny_vit("nonsquare")).grid == (7, 10)


def _tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **TINY_ARGS).state_dict()


@pytest.mark.parametrize("container", ["plain", "state_dict", "model", "module_prefix", "safetensors"])
def test_checkpoint_containers(tiny_model, tmp_path, container):
    weights = _tiny_state_dict(3)
    if container == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(weights, path)
    else:
        path = tmp_path / "weights.pth"
        payload = {
            "plain": weights,
            "state_dict": {"state_dict": weights, "epoch": 3},
            "model": {"model": weights},
            "module_prefix": {"state_dict": {f"module.{k}": v for k, v in weights.items()}},
        }[container]
        torch.save(payload, path)
    loaded = load_model(f"local-dir:{tiny_model}", checkpoint=path)
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, weights[key])


def test_checkpoint_with_other_head_names_the_fix(tiny_model, tmp_path):
    weights = _tiny_state_dict(3)
    weights["head.weight"] = torch.zeros(9, weights["head.weight"].shape[1])
    weights["head.bias"] = torch.zeros(9)
    torch.save(weights, tmp_path / "w.pt")
    with pytest.raises(VitcamError, match="add num_classes 9"):
        load_model(f"local-dir:{tiny_model}", checkpoint=tmp_path / "w.pt")


def test_checkpoint_that_is_not_weights(tiny_model, tmp_path):
    (tmp_path / "w.bin").write_bytes(b"garbage")
    with pytest.raises(VitcamError, match="cannot read it"):
        load_model(f"local-dir:{tiny_model}", checkpoint=tmp_path / "w.bin")
    with pytest.raises(VitcamError, match="no such file"):
        load_model(f"local-dir:{tiny_model}", checkpoint=tmp_path / "missing.safetensors")


def test_random_weights_are_reproducible():
    first = load_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32)).model
    second = load_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 32)).model
    torch.testing.assert_close(first.state_dict(), second.state_dict())


def test_imagenet_wordnet_ids_name_classes_too():
    from vitcam_cli.models.timm import class_ids_for

    imagenet = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=1)
    ids = class_ids_for(imagenet)
    assert ids[0] == "n01440764" and len(ids) == 1000
    assert resolve_class("n01440764", class_names_for(imagenet), ids) == 0
    assert class_ids_for(tiny_vit("cls")) == []
