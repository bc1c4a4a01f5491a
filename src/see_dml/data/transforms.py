"""Train and eval transforms, per the field's recipe.

Natural images: train ``RandomResizedCrop(size, scale)`` + horizontal flip, eval
``Resize(resize)`` + ``CenterCrop(size)``, both with ``interpolation`` (bicubic, the SEE
authors' ViT recipe; bilinear, PIL's default that Proxy-Anchor's ResNet-50 code uses).
Digits: a small random shift for training (no flip: a mirrored digit is not a digit), none
for evaluation. Icons (rendered drawings on
white, e.g. emoji): a small random shift and scale with white fill, never a flip or a colour
change, whatever ``hflip`` says (left/right hands and arrows, red/blue hearts are different
classes), none for evaluation. Normalisation matches the backbone (timm's pretrained config:
ImageNet stats, or 0.5 / 0.5 for ``vit_*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
INTERPOLATIONS = {"bicubic": T.InterpolationMode.BICUBIC,
                  "bilinear": T.InterpolationMode.BILINEAR}


@dataclass(frozen=True)
class TransformConfig:
    """Knobs of the recipe; ``image_size=None`` keeps the dataset's native size."""

    image_size: int | None = 224
    resize: int | None = 256
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    augment_digits: bool = True  # digits: small random rotation / shift / scale when training
    interpolation: str = "bicubic"  # natural images' resizing: bicubic | bilinear
    # (height, width) of the dataset's images where they all share one (digits, icons); set
    # by the DataModule, not by config: the size the eval transform resizes any image to
    native_size: tuple[int, int] | None = None


def eval_input_size(cfg: TransformConfig) -> tuple[int, int] | None:
    """``(height, width)`` the model sees digits / icons at, which every eval image is
    resized to (so images of other sizes neither crash a batch nor embed at the wrong size).

    ``image_size=None``: the native size; ``image_size=s``: the native size after
    ``Resize(s)`` (shorter side ``s``, the other scaled as torchvision does); without a known
    native size, ``(s, s)``. None when neither is known.
    """
    native, side = cfg.native_size, cfg.image_size
    if side is None:
        return (int(native[0]), int(native[1])) if native else None
    if native is None:
        return (side, side)
    height, width = native
    if height <= width:
        return (side, int(side * width / height))
    return (int(side * height / width), side)


def build_transforms(image_kind: str, cfg: TransformConfig, mean: Sequence[float],
                     std: Sequence[float]) -> tuple[T.Compose, T.Compose]:
    """``(train_transform, eval_transform)`` for ``image_kind`` ``natural``/``digits``/``icons``.

    The dataset declares its kind (``DatasetSource.image_kind``); the kind decides which
    augmentations keep an image's class.
    """
    normalize = T.Normalize(mean=list(mean), std=list(std))
    size = eval_input_size(cfg)
    if image_kind == "digits":
        resize = [T.Resize(cfg.image_size)] if cfg.image_size else []
        augment = [T.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.9, 1.1))]
        train = [*resize, *(augment if cfg.augment_digits else [])]
        return (T.Compose([*train, T.ToTensor(), normalize]),
                T.Compose([*([T.Resize(size)] if size else []), T.ToTensor(), normalize]))
    if image_kind == "icons":
        bicubic = T.InterpolationMode.BICUBIC
        resize = [T.Resize(cfg.image_size, interpolation=bicubic)] if cfg.image_size else []
        augment = T.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.85, 1.05),
                                 fill=255)
        eval_resize = [T.Resize(size, interpolation=bicubic)] if size else []
        return (T.Compose([*resize, augment, T.ToTensor(), normalize]),
                T.Compose([*eval_resize, T.ToTensor(), normalize]))
    if image_kind != "natural":
        raise ValueError(f"unknown image kind '{image_kind}' (natural, digits or icons)")
    crop_size = cfg.image_size or 224
    resize_size = cfg.resize or crop_size
    if cfg.interpolation not in INTERPOLATIONS:
        raise ValueError(f"data.transforms.interpolation must be one of "
                         f"{', '.join(INTERPOLATIONS)}; got '{cfg.interpolation}'")
    mode = INTERPOLATIONS[cfg.interpolation]
    train = [T.RandomResizedCrop(crop_size, scale=tuple(cfg.crop_scale), interpolation=mode)]
    if cfg.hflip:
        train.append(T.RandomHorizontalFlip())
    return (
        T.Compose([*train, T.ToTensor(), normalize]),
        T.Compose([T.Resize(resize_size, interpolation=mode), T.CenterCrop(crop_size),
                   T.ToTensor(), normalize]),
    )
