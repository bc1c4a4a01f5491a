"""Backbones: any timm model by name, plus a small ConvNet that trains from scratch on CPU.

A backbone returns *unpooled* features: ``(B, C, H, W)`` for CNNs, ``(B, N, C)`` tokens for
ViTs; the embedding head chooses the pooling. Offline clusters cannot reach a weights hub,
so :func:`load_local_weights` loads a local file into the timm model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Normalisation for backbones trained from scratch on the digit datasets.
DIGIT_STATS = ((0.1307,), (0.3081,))


class SmallConvNet(nn.Module):
    """Four conv blocks (BN + ReLU) for grey digit images on CPU. Output ``(B, 4w, H/8, W/8)``.

    The first convolution has stride 2: full-resolution feature maps cost most of a CPU
    step in memory traffic (BatchNorm, pooling) for little accuracy on 28-pixel digits.
    """

    def __init__(self, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        chans = [in_chans, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for i in range(4):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1,
                                 bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
            if i in (1, 2):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.num_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TimmModel(Protocol):
    """What :class:`Backbone` calls on a timm model. timm's models share these by convention,
    not through a base class, and ``timm.create_model`` is typed as returning any
    ``nn.Module``."""

    num_features: int
    pretrained_cfg: dict[str, Any]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...


class Backbone(nn.Module):
    """A feature extractor with ``num_features``, ``mean``/``std`` and ``num_prefix_tokens``
    (the class / register tokens before a ViT's patch tokens; 0 for CNNs).

    Args:
        name: ``small_cnn`` or a timm model name (``resnet50``,
            ``deit_small_distilled_patch16_224``, ``vit_small_patch16_224``,
            ``tf_efficientnet_lite0``...).
        pretrained: download timm's pretrained weights (needs a hub; off on offline nodes).
        weights_path: a local weights file to load instead (see :func:`load_local_weights`).
        in_chans: input channels (1 for the digit datasets).
        width: channels of the first block of ``small_cnn`` (ignored for timm models).
        trainable_stages: train only the last N stages (see :meth:`stages`) and freeze the
            rest for the whole run; ``None`` trains all, 0 none (a fixed feature extractor).
        frozen: parameter-name prefixes of the body frozen for the whole run, beside
            ``trainable_stages`` (the SEE authors' ViTs: ``[patch_embed]``). A prefix that
            names no parameter is an error.
    """

    def __init__(self, name: str = "small_cnn", pretrained: bool = False,
                 weights_path: str | None = None, in_chans: int = 3, width: int = 32,
                 trainable_stages: int | None = None,
                 frozen: Sequence[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.mean: tuple[float, ...]
        self.std: tuple[float, ...]
        if name == "small_cnn":
            small = SmallConvNet(in_chans, width)
            self.body: nn.Module = small
            self.num_features = small.num_features
            self.mean, self.std = DIGIT_STATS if in_chans == 1 else ((0.5,) * 3, (0.5,) * 3)
            self.is_timm = False
            self.num_prefix_tokens = 0
        else:
            if pretrained and weights_path:
                raise ValueError("model.backbone.pretrained=true and model.backbone.weights_path "
                                 "are exclusive: weights_path already provides the weights")
            try:
                self.body = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                              in_chans=in_chans)
            except RuntimeError as err:
                raise ValueError(f"model.backbone.name='{name}': {err}") from err
            except OSError as err:  # the hub unreachable and the weights not in its cache
                if not pretrained:
                    raise
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ValueError(
                    f"model.backbone.pretrained=true: the pretrained weights of '{name}' could "
                    f"not be fetched ({type(err).__name__}: {first}). On a machine without "
                    "internet: run python -c \"import timm; timm.create_model("
                    f"'{name}', pretrained=True)\" where there is internet and copy the "
                    "Hugging Face cache (~/.cache/huggingface, or $HF_HOME) here; or give a "
                    "weights file, model.backbone.pretrained=false "
                    "model.backbone.weights_path=<file>; or train from scratch, "
                    "model.backbone.pretrained=false") from err
            self.num_features = self._timm_body().num_features
            cfg = self._timm_body().pretrained_cfg
            self.mean, self.std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std",
                                                                                    (0.5,) * 3))
            self.is_timm = True
            self.num_prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)
        if weights_path:
            load_local_weights(self.body, weights_path)
        self.trainable_stages = trainable_stages
        names = self._early_stage_names(trainable_stages)
        names += [n for n in self._prefix_names(list(frozen or [])) if n not in names]
        self._frozen_names = names
        self._frozen_modules = self._freeze()

    def stages(self) -> list[list[str]]:
        """Parameter names of the body, stage by stage from input to output.

        timm models: timm's coarse parameter groups (those of its layer-wise learning-rate
        decay): the stem, then each stage, with what follows the last stage folded into it
        (``tf_efficientnet_lite0``: ``conv_stem``+``bn1``, ``blocks[0]`` ... ``blocks[5]``,
        ``blocks[6]``+``conv_head``+``bn2``: 8 stages; ``resnet50``: stem and ``layer1-4``;
        ViTs: patch embedding and tokens, then one stage per block, the final norm in the last).
        ``small_cnn``: one stage per convolution with its BatchNorm (4).
        """
        if not isinstance(self.body, SmallConvNet):  # a timm model
            from timm.models import group_parameters

            groups = group_parameters(self.body, self._timm_body().group_matcher(coarse=True))
            return [list(names) for names in groups.values()]
        stages: list[list[str]] = []
        for index, layer in enumerate(self.body.features):
            if isinstance(layer, nn.Conv2d):
                stages.append([])
            stages[-1] += [f"features.{index}.{n}" for n, _ in layer.named_parameters()]
        return stages

    def _early_stage_names(self, trainable: int | None) -> list[str]:
        """Parameter names of every stage but the last ``trainable`` (``trainable_stages``)."""
        if trainable is None:
            return []
        stages = self.stages()
        if isinstance(trainable, bool) or not isinstance(trainable, int) or not (
                0 <= trainable <= len(stages)):
            raise ValueError(f"model.backbone.trainable_stages must be null (all) or an integer "
                             f"from 0 to {len(stages)} (the stages of '{self.name}'), got "
                             f"{trainable!r}")
        names = [n for stage in stages[:len(stages) - trainable] for n in stage]
        log.info("model.backbone.trainable_stages=%d: the last %d of %d stages of '%s' train "
                 "(%d parameter tensors frozen)", trainable, trainable, len(stages), self.name,
                 len(names))
        return names

    def _prefix_names(self, prefixes: list[str]) -> list[str]:
        """Parameter names that start with one of ``prefixes`` (``frozen``)."""
        names = [n for n, _ in self.body.named_parameters()]
        out: list[str] = []
        for prefix in prefixes:
            matched = [n for n in names if n == prefix or n.startswith(f"{prefix}.")]
            if not matched:
                raise ValueError(f"model.backbone.frozen: '{prefix}' names no parameter of "
                                 f"'{self.name}' (its parameters start with: "
                                 f"{', '.join(sorted({n.split('.')[0] for n in names}))})")
            out += matched
        if prefixes:
            log.info("model.backbone.frozen=%s: %d parameter tensors of '%s' frozen",
                     prefixes, len(set(out)), self.name)
        return out

    def _freeze(self) -> list[nn.Module]:
        """Freeze the parameters :meth:`frozen_parameters` names (``trainable_stages`` and
        ``frozen`` alike); returns the outermost modules whose parameters are all frozen
        (kept in eval mode by :meth:`train`)."""
        frozen = self.frozen_parameters()
        if not frozen:
            return []
        for p in frozen:
            p.requires_grad_(False)
        frozen_ids = {id(p) for p in frozen}
        modules: list[nn.Module] = []
        covered: list[str] = []
        for name, module in self.body.named_modules():
            if any(c == "" or name.startswith(f"{c}.") for c in covered):
                continue
            ids = [id(p) for p in module.parameters()]
            if ids and all(i in frozen_ids for i in ids):
                modules.append(module)
                covered.append(name)
        return modules

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters frozen for the whole run (``trainable_stages``, ``frozen``)."""
        params = dict(self.body.named_parameters())
        return [params[n] for n in self._frozen_names]

    def _timm_body(self) -> TimmModel:
        """``body`` as the timm model it is (:attr:`is_timm`)."""
        return cast(TimmModel, self.body)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._frozen_modules:  # frozen modules keep their BatchNorm statistics
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_timm:
            return self._timm_body().forward_features(x)
        return self.body(x)

    def timm_pool(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's own pooling (timm ``forward_head(pre_logits=True)``)."""
        if not self.is_timm:
            raise ValueError("model.head.pooling=model needs a timm backbone")
        return self._timm_body().forward_head(features, pre_logits=True)


_STRIP_PREFIXES = ("module.", "model.", "backbone.", "body.")


def _strip(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file into ``model``, by name or else by position.

    By name: keys equal after stripping ``module.``/``model.`` prefixes; a classifier the
    model does not have (``num_classes=0``) is ignored. By position: checkpoints exported
    from other implementations of the same architecture (e.g. ``efficientnet-lite0``'s
    ``_conv_stem``/``_bn0`` names for timm's ``tf_efficientnet_lite0``) hold the same tensors
    in the same order; they load when every tensor of the model matches the file's tensor
    at the same position in shape. Anything else is an error naming the first mismatch.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone.weights_path: no weights file at '{path}'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    target = model.state_dict()
    if all(k in state and state[k].shape == v.shape for k, v in target.items()):
        model.load_state_dict({k: state[k] for k in target})
        log.info("loaded %d tensors by name from %s", len(target), path)
        return
    src = list(state.items())
    if len(src) < len(target):
        raise ValueError(f"model.backbone.weights_path '{path}': {len(src)} tensors, the model has "
                         f"{len(target)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src):
        if tv.shape != sv.shape:
            raise ValueError(
                f"model.backbone.weights_path '{path}' does not fit the model: neither the "
                f"names nor the order match (model '{tk}' {tuple(tv.shape)} vs file '{sk}' "
                f"{tuple(sv.shape)})"
            )
        mapped[tk] = sv
    model.load_state_dict(mapped)
    log.info("loaded %d tensors by position from %s (%d unused: classifier)", len(mapped),
             path, len(src) - len(mapped))
