"""A trained model as one ONNX graph: images in, unit embeddings out.

``python -m see_dml.export`` writes the graph with :func:`export_onnx` and checks it against
PyTorch with :func:`onnx_max_abs_diff`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


class EmbeddingNet(nn.Module):
    """``(B, C, H, W)`` images -> ``(B, d)`` unit embeddings: the module's own forward
    (backbone, head, L2 normalisation), without its loss and proxies."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


def export_onnx(module: nn.Module, path: str | Path, input_shape: Sequence[int],
                opset: int = 17, batch_size: int = 2) -> Path:
    """Write ``module`` (images -> unit embeddings) as one ONNX graph with a dynamic batch.

    The TorchScript exporter (``dynamo=False``) needs no onnxscript and handles timm's
    CNNs; the batch axis of ``images`` and ``embeddings`` is named ``batch``.

    Args:
        module: a ``DMLModule`` (or anything mapping images to embeddings), on the CPU.
        path: the ``.onnx`` file to write.
        input_shape: ``(C, H, W)`` of one image, as the eval transform produces it.
        opset: the ONNX opset.
        batch_size: rows of the random input the graph is traced with.
    """
    import warnings

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = EmbeddingNet(module).eval().cpu()
    example = torch.randn(batch_size, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        # The deprecation notice of the TorchScript exporter: chosen on purpose (see above).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(net, (example,), str(out), input_names=["images"],
                          output_names=["embeddings"], opset_version=opset, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    return out


def onnx_max_abs_diff(module: nn.Module, path: str | Path, images: torch.Tensor) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over the embeddings of ``images`` ``(B, C, H, W)``,
    the graph run on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": images.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        want = EmbeddingNet(module).eval().cpu()(images).numpy()
    return float(np.abs(got - want).max())
