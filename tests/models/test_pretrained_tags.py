"""Every model file names the ImageNet weights its recipe intends (timm's pretrained config,
read without a download): a bare architecture name resolves to timm's current default tag,
which for ResNet-50 is not the weights Proxy-Anchor's and SEE's code load."""

from __future__ import annotations

import pytest
from timm.models import get_pretrained_cfg

from see_dml.runtime.config import CONFIG_DIR, compose

#: model file -> the weights it must resolve to (docs/method.md, "Training recipe")
INTENDED = {
    # torchvision's V1 weights (torchvision resnet50(pretrained=True), 76.1 % top-1)
    "resnet50": "resnet50.tv_in1k",
    # the SEE authors' timm 0.4.12 names: its only DeiT weights and its augreg ViT-S
    "deit_small": "deit_small_distilled_patch16_224.fb_in1k",
    "vit_small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_small_dino": "vit_small_patch16_224.dino",
    # loaded from a local file (weights_path), the tf port's ImageNet weights
    "efficientnet_lite0": "tf_efficientnet_lite0.in1k",
    "small_cnn": None,  # trained from scratch
}


def test_every_model_file_is_listed():
    assert sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")) == sorted(INTENDED)


@pytest.mark.parametrize("model", sorted(INTENDED))
def test_model_file_resolves_to_the_intended_weights(model):
    name = compose([f"model={model}"]).model.backbone.name
    intended = INTENDED[model]
    if intended is None:
        assert name == "small_cnn"
        return
    cfg = get_pretrained_cfg(name)
    assert cfg is not None, name
    resolved = f"{cfg.architecture}.{cfg.tag}"
    assert resolved == intended, f"conf/model/{model}.yaml: {name} resolves to {resolved}"


def test_resnet50_weights_are_torchvisions_v1():
    cfg = get_pretrained_cfg(compose(["model=resnet50"]).model.backbone.name)
    assert cfg.url.endswith("/resnet50-0676ba61.pth")  # torchvision's IMAGENET1K_V1 file
    assert get_pretrained_cfg("resnet50").tag == "a1_in1k"  # what the bare name would load
