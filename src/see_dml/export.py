"""Embed a split with a trained module and write the embeddings to disk; export the model.

``python -m see_dml.export ckpt_path=... format=onnx`` writes the checkpoint's backbone,
head and L2 normalisation as one ONNX graph (input ``images`` ``(B, C, H, W)``, output
``embeddings`` ``(B, d)`` unit rows, ``B`` dynamic) and a JSON sidecar with what the graph
expects (:func:`eval_preprocessing`) and which model it is (:func:`config_hash`); unless
``check=false`` it runs the graph with onnxruntime and compares it with PyTorch.

``python -m see_dml.evaluate`` and ``python -m see_dml.retrieve`` embed with
:func:`embed_split` (eval mode, ``torch.no_grad``, dataset order); training embeds in the
module's test loop. Every evaluation writes its embeddings with :func:`save_embeddings`
(through :func:`see_dml.evaluation.report`), so all have the same file layout.

File layout of ``embeddings_<split>.npz`` (and ``.parquet``, one row per image):

- ``embeddings``: ``(N, d)`` float32 unit rows;
- ``labels``: ``(N,)`` int64 class ids as the dataset numbers them;
- ``indices``: ``(N,)`` int64 position of each row in the split;
- ``paths``: ``(N,)`` image file paths — only for datasets read from files (in-memory
  datasets such as Double-MNIST have no paths: ``indices`` identify their images).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from see_dml.config import CONFIG_DIR, warn_ignored_keys
from see_dml.errors import ConfigError

if TYPE_CHECKING:
    from see_dml.data.datamodule import RetrievalDataModule

log = logging.getLogger(__name__)

ExportFormat = Literal["npz", "parquet"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda when available, else cpu; anything else as ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed_split(module: nn.Module, dataset: Dataset, batch_size: int = 256,
                device: str | torch.device | None = "auto", num_workers: int = 0,
                progress: bool = True, desc: str = "embedding"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every image of ``dataset`` (``(image, label, index)`` items) in dataset order.

    The module is put in eval mode (BatchNorm statistics, no dropout) and left there. The
    embeddings stay on ``device``: a search there needs no copy (``knn_backend=auto``
    searches GPU embeddings with torch), and faiss copies them to the host itself.

    Args:
        module: maps ``(B, C, H, W)`` images to ``(B, d)`` embeddings (a ``DMLModule``).
        dataset: a :class:`~see_dml.data.base.RetrievalDataset` or anything that yields
            ``(image, label, index)``.
        batch_size: images per forward pass.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda:1``...
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        ``(embeddings (N, d) float32 on device, labels (N,) int64, indices (N,) int64)``
        (labels and indices on the CPU).

    Raises:
        RuntimeError: when the loop did not see each of the ``len(dataset)`` images exactly
            once (the embeddings would silently describe another set of images).
    """
    dev = resolve_device(device)
    module.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    embs, labels, indices = [], [], []
    for images, label, index in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        embs.append(module(images.to(dev, non_blocking=True)).float())
        labels.append(torch.as_tensor(label))
        indices.append(torch.as_tensor(index))
    n = len(dataset)  # type: ignore[arg-type]
    if not embs:
        raise RuntimeError(f"{desc}: the dataset is empty")
    emb = torch.cat(embs)
    lab = torch.cat(labels).long()
    idx = torch.cat(indices).long()
    if len(idx) != n or not torch.equal(torch.sort(idx).values, torch.arange(n)):
        raise RuntimeError(f"{desc}: embedded {len(idx)} rows for a dataset of {n} images, "
                           "or some index twice; a sampler or a custom dataset is the likely "
                           "cause")
    return emb, lab, idx


def split_paths(items: Sequence[Path | str] | np.ndarray, indices: np.ndarray
                ) -> list[str] | None:
    """File paths of ``items`` at ``indices``, or None for in-memory image arrays."""
    if isinstance(items, np.ndarray):
        return None
    return [str(items[int(i)]) for i in indices]


def save_embeddings(path: str | Path, embeddings: np.ndarray, labels: np.ndarray,
                    items: Sequence[Path | str] | np.ndarray, fmt: ExportFormat = "npz",
                    indices: np.ndarray | None = None) -> Path:
    """Write one split's embeddings as ``.npz`` or ``.parquet`` (the suffix follows ``fmt``).

    Args:
        path: output file; its suffix is replaced by ``.npz`` / ``.parquet``.
        embeddings: ``(N, d)`` embeddings (stored as float32).
        labels: ``(N,)`` class ids.
        items: what identifies each row: ``(N,)`` image paths (strings or Paths), or
            ``(N,)`` integer indices into the split for in-memory datasets.
        fmt: ``npz`` (numpy) or ``parquet`` (pyarrow; column ``embedding`` is a fixed-size
            list of ``d`` float32).
        indices: ``(N,)`` position of each row in its split when ``items`` are paths
            (default ``0..N-1``: rows in split order, as :func:`embed_split` returns them).

    Returns:
        The path written.
    """
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    n = len(emb)
    if emb.ndim != 2 or lab.shape != (n,) or len(items) != n:
        raise ValueError(f"embeddings {emb.shape}, labels {lab.shape} and {len(items)} items "
                         "must describe the same N rows")
    is_index = isinstance(items, np.ndarray) and np.issubdtype(items.dtype, np.integer)
    columns: dict[str, np.ndarray] = {"labels": lab}
    if is_index:
        columns["indices"] = np.asarray(items, dtype=np.int64)
    else:
        columns["indices"] = (np.arange(n, dtype=np.int64) if indices is None
                              else np.asarray(indices, dtype=np.int64))
        columns["paths"] = np.asarray([str(p) for p in items])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        out = out.with_suffix(".npz")
        np.savez(out, embeddings=emb, **columns)
        return out
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = out.with_suffix(".parquet")
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        table = pa.table({**{k: pa.array(v) for k, v in columns.items()},
                          "embedding": embedding})
        pq.write_table(table, out)
        return out
    raise ValueError(f"export.format must be 'npz' or 'parquet', got '{fmt}'")


# -- the model as a deployable graph --------------------------------------------------------
def config_hash(config: Mapping[str, Any] | DictConfig) -> str:
    """A short hash of a checkpoint's ``see_dml_config``: which model made an embedding.

    Index and ONNX sidecars store it; two checkpoints of one run (another epoch) share it.
    ``config``: the stored dict, or the DictConfig :func:`~see_dml.evaluate.
    load_module_from_checkpoint` made of it (same hash).
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(module: Any) -> str:
    """A short hash of the weights that make an embedding (backbone and head; not the loss's
    proxies): two epochs of one run share :func:`config_hash` but not this."""
    digest = hashlib.sha256()
    for part in ("backbone", "head"):
        for name, tensor in sorted(getattr(module, part).state_dict().items()):
            digest.update(f"{part}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(module: Any, ckpt_cfg: DictConfig) -> dict[str, Any]:
    """Which model makes an embedding, as the index and ONNX sidecars record it and
    :meth:`see_dml.index.SavedIndex.check_model` compares it: ``config_hash``,
    ``weights_hash`` and ``embed_dim``."""
    return {"config_hash": config_hash(ckpt_cfg), "weights_hash": weights_hash(module),
            "embed_dim": int(ckpt_cfg.model.embed_dim)}


def eval_preprocessing(dm: RetrievalDataModule) -> dict[str, Any]:
    """What an image must go through before the model sees it (the eval transform).

    Returns:
        ``image_kind``, ``image_mode`` (``L`` / ``RGB``), ``channels``, ``input_size``
        ``[H, W]`` (None where the eval transform keeps each image's size), ``mean`` and
        ``std`` per channel (after ``ToTensor``'s scaling to [0, 1]), and ``transform``: the
        torchvision pipeline as text.
    """
    from see_dml.data.transforms import build_transforms, eval_input_size

    cfg = dm.transform_cfg
    kind = dm.source.image_kind
    size = ([cfg.image_size or 224] * 2 if kind == "natural"
            else list(eval_input_size(cfg) or []) or None)
    _, eval_tf = build_transforms(kind, cfg, dm.mean, dm.std)
    return {"image_kind": kind, "image_mode": dm.source.image_mode,
            "channels": 1 if dm.source.image_mode == "L" else 3, "input_size": size,
            "mean": list(dm.mean), "std": list(dm.std), "transform": repr(eval_tf)}


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


def export_model(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format``; return what the sidecar JSON holds."""
    from see_dml.evaluate import (
        build_eval_datamodule,
        check_ckpt_path,
        load_module_from_checkpoint,
        resolve_dataset_config,
    )

    warn_ignored_keys(cfg, "export")
    if cfg.format != "onnx":
        raise ConfigError(f"format must be onnx, got '{cfg.format}' (embeddings: "
                          "python -m see_dml.evaluate export.enabled=true)")
    ckpt_path = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    ckpt_file = check_ckpt_path(ckpt_path)
    module, ckpt_cfg = load_module_from_checkpoint(ckpt_file, "cpu")
    run_cfg = ckpt_cfg.copy()
    with open_dict(run_cfg):
        run_cfg.dataset = resolve_dataset_config(cfg, ckpt_cfg)
    prep = eval_preprocessing(build_eval_datamodule(run_cfg, module, setup=False))
    size = cfg.get("input_size") or prep["input_size"]
    if not size or len(size) != 2:
        raise ConfigError("input_size=[H,W] is required: this checkpoint's eval transform "
                          f"keeps each image's size (got input_size={size})")
    prep["input_size"] = [int(size[0]), int(size[1])]
    out = Path(cfg.output) if cfg.get("output") else ckpt_file.with_suffix(".onnx")
    export_onnx(module, out, (prep["channels"], *prep["input_size"]), opset=int(cfg.opset))
    sidecar = {"format": "onnx", "ckpt_path": str(ckpt_file.resolve()),
               **model_identity(module, ckpt_cfg), "opset": int(cfg.opset),
               "inputs": {"images": ["batch", prep["channels"], *prep["input_size"]]},
               "outputs": {"embeddings": ["batch", int(ckpt_cfg.model.embed_dim)]},
               "preprocessing": prep}
    if cfg.check:
        images = torch.randn(3, prep["channels"], *prep["input_size"])  # 3: not the traced 2
        sidecar["max_abs_diff"] = onnx_max_abs_diff(module, out, images)
        if sidecar["max_abs_diff"] > 1e-4:
            log.warning("the ONNX graph differs from PyTorch by up to %.2g",
                        sidecar["max_abs_diff"])
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2))
    diff = (f"; onnxruntime vs PyTorch max |diff| {sidecar['max_abs_diff']:.2g}"
            if "max_abs_diff" in sidecar else "")
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out}.json{diff}")
    return sidecar


@hydra.main(config_path=str(CONFIG_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from see_dml.cli import run_cli

    run_cli(export_model, cfg)


if __name__ == "__main__":
    main()
