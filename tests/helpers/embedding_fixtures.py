"""Toy embeddings for metric, report and plot tests: unit vectors in well-separated classes."""

from __future__ import annotations

import numpy as np


def unit_clusters(n_classes: int = 4, per_class: int = 15, dim: int = 8, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (N, dim) float32 unit rows, labels (N,))``, classes in blocks of
    ``per_class``, each class a tight cluster around its own random centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    emb = centres[labels] + rng.normal(size=(len(labels), dim)) * 0.3
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), labels
