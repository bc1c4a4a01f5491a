"""Reference points on Emoji-Styles' test half, before any training: raw pixels and the
frozen backbone's ImageNet features.

    python experiments/emoji_reference_points.py [override ...]

Overrides are those of ``python -m see_dml.train`` (default: ``experiment=emoji_styles_lite0``;
e.g. ``dataset.image_size=96``). The test images go through the
same evaluation transform as training uses; every test image is a query against the rest of
the test half (all-vs-all). Rows: the rendered pixels (RGB in [0, 1], flattened), the
backbone's feature map average-pooled (``gap``, timm's own pooling) and average + max pooled
(``avg+max``, what ``model.head.pooling`` defaults to), all compared by cosine similarity.
Prints a Markdown table and, as the last line, the metrics as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from hydra.utils import instantiate

from see_dml.metrics.retrieval import retrieval_metrics
from see_dml.module import build_backbone
from see_dml.runtime.config import compose
from see_dml.training.components import build_datamodule


@torch.no_grad()
def backbone_features(backbone: torch.nn.Module, loader) -> dict[str, np.ndarray]:
    """``{"gap": (N, C), "avg+max": (N, 2C)}`` pooled feature maps, in loader order."""
    pooled: dict[str, list[torch.Tensor]] = {"gap": [], "avg+max": []}
    backbone.eval()
    for images, _, _ in loader:
        fmap = backbone(images)  # (B, C, h, w)
        avg, mx = fmap.mean((2, 3)), fmap.amax((2, 3))
        pooled["gap"].append(avg)
        pooled["avg+max"].append(torch.cat([avg, mx], 1))
    return {k: torch.cat(v).numpy() for k, v in pooled.items()}


def main(overrides: list[str]) -> dict[str, dict[str, float]]:
    cfg = compose(["experiment=emoji_styles_lite0", "paths.run_dir=.", *overrides])
    source = instantiate(cfg.dataset)
    backbone = build_backbone(cfg, source.image_mode)
    dm = build_datamodule(cfg, backbone, source)
    test = dm.eval_dataset("test")
    labels = test.labels
    ks = source.recall_ks
    rows: dict[str, dict[str, float]] = {}
    pixels = test.split.items.reshape(len(test), -1).astype(np.float32) / 255.0
    rows["raw pixels"] = retrieval_metrics(pixels, labels, ks=ks)
    start = time.perf_counter()
    feats = backbone_features(backbone, dm.eval_dataloader(test))
    seconds = time.perf_counter() - start
    for pooling, x in feats.items():
        rows[f"{cfg.model.backbone.name} ImageNet, {pooling}"] = retrieval_metrics(x, labels,
                                                                                   ks=ks)
    size = cfg.data.transforms.image_size or source.image_size
    print(f"Emoji-Styles test half: {len(test)} images, {test.split.num_classes} classes, "
          f"{size} px; backbone features in {seconds:.0f} s\n")
    print("| features | " + " | ".join(f"R@{k}" for k in ks) + " | MAP@R |")
    print("|---|" + "---|" * (len(ks) + 1))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[f'recall@{k}']:.3f}" for k in ks)
              + f" | {m['map@r']:.3f} |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
