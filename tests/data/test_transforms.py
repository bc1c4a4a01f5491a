"""Eval transforms bring any image to the size and mode the model was trained at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader

from see_dml.data.base import RetrievalDataset, Split
from see_dml.data.transforms import TransformConfig, build_transforms, eval_input_size


@pytest.mark.parametrize(("image_size", "native", "expected"), [
    (None, (28, 56), (28, 56)),    # native size kept
    (32, (28, 56), (32, 64)),      # shorter side 32, the other as Resize(32) scales it
    (32, (56, 28), (64, 32)),
    (48, None, (48, 48)),
    (None, None, None),            # nothing known: nothing to resize to
])
def test_eval_input_size(image_size, native, expected):
    assert eval_input_size(TransformConfig(image_size=image_size, native_size=native)) == expected


def _user_images(tmp_path) -> list:
    """Files of other sizes and modes than Double-MNIST's 28x56 greyscale."""
    rng = np.random.default_rng(0)
    images = {"odd.png": Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)),
              "native.png": Image.fromarray(rng.integers(0, 255, (28, 56), dtype=np.uint8)),
              "wide.png": Image.fromarray(rng.integers(0, 255, (17, 90, 4), dtype=np.uint8))}
    for name, img in images.items():
        img.save(tmp_path / name)
    return [tmp_path / name for name in images]


@pytest.mark.parametrize(("image_size", "shape"), [(None, (1, 28, 56)), (32, (1, 32, 64))])
def test_retrieve_eval_transform_sizes_mixed_user_images(make_cfg, tmp_path, image_size, shape):
    # What retrieve does with a folder: the run's DataModule, not set up (the dataset is never
    # loaded), its eval transform on files of any size. Mixed sizes used to crash in
    # torch.stack, and a lone odd size was embedded at that size.
    cfg = make_cfg(f"data.transforms.image_size={image_size or 'null'}")
    dm = instantiate(cfg.data, source=instantiate(cfg.dataset), _convert_="all")
    _, eval_tf = build_transforms(dm.source.image_kind, dm.transform_cfg, dm.mean, dm.std)
    files = _user_images(tmp_path)
    dataset = RetrievalDataset(Split(files, np.zeros(len(files)), "query"), eval_tf,
                               dm.source.image_mode)
    images, _, _ = next(iter(DataLoader(dataset, batch_size=len(files))))
    assert tuple(images.shape) == (len(files), *shape)
    # the size the model trained at: the train transform's output on a dataset image
    dm.setup("fit")
    train_image = dm.datasets["train"][0][0]
    assert tuple(train_image.shape) == shape
    assert tuple(dm.datasets["test"][0][0].shape) == shape


def test_native_size_images_are_not_resampled(make_cfg):
    cfg = make_cfg()
    dm = instantiate(cfg.data, source=instantiate(cfg.dataset), _convert_="all")
    dm.setup("fit")
    test = dm.datasets["test"]
    expected = (torch.from_numpy(test.split.items[0]).float() / 255 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(test[0][0][0], expected)


def test_native_size_is_read_from_in_memory_data(make_cfg, monkeypatch):
    # A dataset source that does not declare native_size: taken from its arrays at setup.
    from see_dml.data.mnist import DoubleMNIST

    monkeypatch.setattr(DoubleMNIST, "native_size", None)
    cfg = make_cfg()
    dm = instantiate(cfg.data, source=instantiate(cfg.dataset), _convert_="all")
    dm.setup("fit")
    assert dm.transform_cfg.native_size == (28, 56)
    odd = Image.new("L", (33, 33))
    assert tuple(dm.datasets["test"].transform(odd).shape) == (1, 28, 56)


@pytest.mark.parametrize("name, mode", [("bicubic", "BICUBIC"), ("bilinear", "BILINEAR")])
def test_natural_transforms_use_the_configured_interpolation(name, mode):
    """data.transforms.interpolation reaches the train crop and the eval resize (bilinear:
    Proxy-Anchor's ResNet-50 transforms, PIL's default; docs/method.md)."""
    from torchvision import transforms as T

    train, test = build_transforms("natural", TransformConfig(interpolation=name),
                                   (0.5,) * 3, (0.5,) * 3)
    crop = next(t for t in train.transforms if isinstance(t, T.RandomResizedCrop))
    resize = next(t for t in test.transforms if isinstance(t, T.Resize))
    assert crop.interpolation == resize.interpolation == getattr(T.InterpolationMode, mode)
    with pytest.raises(ValueError, match="data.transforms.interpolation"):
        build_transforms("natural", TransformConfig(interpolation="nearest"), (0.5,), (0.5,))
