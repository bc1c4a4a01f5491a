"""Embedding head: pooling -> optional LayerNorm -> Linear -> L2 normalisation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """Map backbone features to unit embeddings ``(B, embed_dim)``.

    Args:
        in_features: backbone channels / token width.
        embed_dim: embedding size.
        pooling: ``avg``, ``max``, ``avg+max`` (GAP + GMP, summed, as Proxy-Anchor's
            ResNet head), ``cls`` (first token of a ViT), ``distilled`` (a distilled DeiT as
            the SEE authors' code embeds it with timm 0.4.12: the class token in training,
            the mean of the class and distillation tokens in eval; docs/method.md) or
            ``model`` (done by the backbone: the head then receives ``(B, C)``).
        layer_norm: LayerNorm without affine parameters before the projection (SEE recipe).
        init: ``orthogonal`` (SEE recipe) or ``kaiming`` for the projection weight.
        num_prefix_tokens: class / register tokens in front of a ViT's patch tokens
            (``Backbone.num_prefix_tokens``): ``avg`` and ``max`` pool the patch tokens only,
            as timm's own ViT pooling does.
    """

    POOLINGS = ("avg", "max", "avg+max", "cls", "distilled", "model")

    def __init__(self, in_features: int, embed_dim: int,
                 pooling: Literal["avg", "max", "avg+max", "cls", "distilled",
                                  "model"] = "avg+max",
                 layer_norm: bool = False, init: Literal["orthogonal", "kaiming"] = "orthogonal",
                 num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim <= 0:
            raise ValueError(f"model.embed_dim must be a positive integer, got {embed_dim!r}")
        if pooling not in self.POOLINGS:
            raise ValueError(f"model.head.pooling must be one of {', '.join(self.POOLINGS)}; "
                             f"got '{pooling}'")
        self.pooling = pooling
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.norm = nn.LayerNorm(in_features, elementwise_affine=False) if layer_norm else None
        self.proj = nn.Linear(in_features, embed_dim)
        if init == "orthogonal":
            nn.init.orthogonal_(self.proj.weight)
        elif init == "kaiming":
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
        else:
            raise ValueError(f"model.head.init must be 'orthogonal' or 'kaiming', got '{init}'")
        nn.init.zeros_(self.proj.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x
        if x.dim() == 3:  # (B, N, C) tokens
            if self.pooling == "cls":
                return x[:, 0]
            if self.pooling == "distilled":
                if x.shape[1] < 2 or self.num_prefix_tokens < 2:
                    raise ValueError("model.head.pooling=distilled needs a distilled ViT "
                                     "(class and distillation tokens), e.g. "
                                     "deit_small_distilled_patch16_224")
                return x[:, 0] if self.training else (x[:, 0] + x[:, 1]) / 2
            x = x[:, self.num_prefix_tokens:]  # patch tokens only
            if self.pooling == "max":
                return x.amax(1)
            if self.pooling == "avg+max":
                return x.mean(1) + x.amax(1)
            return x.mean(1)
        if self.pooling in ("cls", "distilled"):
            raise ValueError(f"model.head.pooling={self.pooling} needs a token backbone (ViT)")
        avg = x.mean((2, 3))
        if self.pooling == "avg":
            return avg
        mx = x.amax((2, 3))
        return mx if self.pooling == "max" else avg + mx

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.pool(features)
        if self.norm is not None:
            x = self.norm(x)
        return F.normalize(self.proj(x), dim=-1)
